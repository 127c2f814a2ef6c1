//! Admission: the guards of one planned call decided together, and the
//! reservations that hold what an allowed call took until its outcome is reported.
//!
//! Architecture Invariant: an admission is all-or-nothing. Every guard runs under the
//! one `Engine` lock, in order, with early return; when a guard denies, everything
//! the earlier guards took (rate cells, a half-open trial slot) is put back before the
//! lock is released, so a denied admission changes nothing and no concurrent
//! admission can see a half-taken state. The lock is a `std::sync::Mutex` held for
//! microseconds and never across an `.await`.
//!
//! Architecture Invariant: a reservation belongs to the session that made it. When the
//! session ends without reporting, its reservations are closed without counting as a
//! success or a failure, and trial slots go back to their breaker.

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::clock::SharedClock;
use crate::config::{Config, Mode};
use crate::guard::breaker::{Breaker, BreakerSnapshot, Force, Pass, Phase, Transition};
use crate::guard::rate::{Cells, RateDenial, RateRule};
use crate::guard::BreakerDenial;

/// How many closed reservation ids are remembered to recognise a repeated report.
const RECENTLY_CLOSED: usize = 65_536;

/// The admission engine: guards, breakers and open reservations.
pub struct Admission {
    engine: Mutex<Engine>,
}

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub session: u64,
    pub agent: &'a str,
}

/// A planned call.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a> {
    pub service: &'a str,
    pub units: NonZeroU32,
}

/// The verdict on a planned call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reservation: Option<u64>,
    pub votes: Vec<GuardVote>,
    /// Index in `votes` of the vote that denied.
    pub decisive: Option<usize>,
    /// Breaker state changes this admission caused (Open → HalfOpen by time).
    pub transitions: Vec<(String, Phase, Phase)>,
}

/// Which guard voted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    Rate,
    Breaker,
}

/// One guard's vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardVote {
    pub guard: Guard,
    pub rule: String,
    pub allow: bool,
    pub shadow: bool,
    pub reason: String,
    pub retry_after: Option<Duration>,
}

/// An outcome to record.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub failure: bool,
    pub units: Option<u32>,
    pub latency: Option<Duration>,
}

/// What a report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The reservation was closed before; nothing was counted.
    pub duplicate: bool,
    pub service: String,
    pub phase: Phase,
    pub transition: Option<(Phase, Phase)>,
}

/// Why an admission or report could not be carried out at all (as opposed to a
/// denial, which is a normal answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    #[error("unknown service {0:?}; declare it under [services.{0}] in the config, or set daemon.allow_unknown_services = true")]
    UnknownService(String),
    #[error("the daemon already tracks {0} services (daemon.max_services); refusing a new one")]
    TooManyServices(usize),
    #[error("this connection already holds {0} open reservations (daemon.max_reservations_per_connection); report outcomes before admitting more")]
    TooManyReservations(usize),
    #[error("reservation {0} was never issued by this daemon, or was closed too long ago to tell")]
    UnknownReservation(u64),
}

struct Engine {
    config: Arc<Config>,
    rules: Vec<Arc<RateRule>>,
    breakers: HashMap<String, Breaker>,
    reservations: HashMap<u64, Reservation>,
    by_session: HashMap<u64, HashSet<u64>>,
    recently_closed: RecentlyClosed,
    next_reservation: u64,
}

/// What an allowed admission took, held until its outcome is known.
struct Reservation {
    session: u64,
    service: String,
    pass: Pass,
    cells: Vec<(Arc<RateRule>, Cells)>,
}

/// A bounded memory of closed reservation ids (FIFO eviction).
#[derive(Default)]
struct RecentlyClosed {
    order: VecDeque<u64>,
    ids: HashSet<u64>,
}

// === impl Admission ===

impl Admission {
    /// Builds the guards described by `config`, on `clock`.
    ///
    /// # Errors
    /// When a rate limit cannot be represented (validated configs never fail here).
    pub fn new(config: Arc<Config>, clock: &SharedClock) -> Result<Admission, String> {
        let rules = config
            .rate_limits
            .iter()
            .map(|spec| RateRule::new(spec.clone(), clock.clone()).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Admission {
            engine: Mutex::new(Engine {
                config,
                rules,
                breakers: HashMap::new(),
                reservations: HashMap::new(),
                by_session: HashMap::new(),
                recently_closed: RecentlyClosed::default(),
                next_reservation: 1,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Engine> {
        // Every mutation under this lock completes or is undone before unlock, so a
        // poisoned lock (a panic elsewhere) holds consistent state.
        self.engine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs every applicable guard for `plan` at `now`, all or nothing.
    ///
    /// # Errors
    /// [`AdmissionError`] when the request cannot be decided at all.
    pub fn admit(
        &self,
        caller: Caller<'_>,
        plan: Plan<'_>,
        now: Duration,
    ) -> Result<Decision, AdmissionError> {
        self.lock().admit(caller, plan, now)
    }

    /// Records the outcome of a reserved call and closes its reservation.
    ///
    /// # Errors
    /// [`AdmissionError::UnknownReservation`].
    pub fn report(
        &self,
        reservation: u64,
        outcome: Outcome,
        now: Duration,
    ) -> Result<Settlement, AdmissionError> {
        self.lock().report(reservation, outcome, now)
    }

    /// The session that holds reservation `id`, while it is open.
    pub fn holder(&self, id: u64) -> Option<u64> {
        self.lock().reservations.get(&id).map(|r| r.session)
    }

    /// Records the outcome of a call made without admission.
    ///
    /// # Errors
    /// As for admissions: unknown service, too many services.
    pub fn report_unreserved(
        &self,
        service: &str,
        outcome: Outcome,
        now: Duration,
    ) -> Result<Settlement, AdmissionError> {
        self.lock().report_unreserved(service, outcome, now)
    }

    /// Closes every reservation of a session that ended without reporting them.
    /// Returns how many were closed.
    pub fn release_session(&self, session: u64) -> usize {
        self.lock().release_session(session)
    }

    /// Snapshots of breakers: one service, or all of them sorted by name.
    pub fn breakers(&self, service: Option<&str>, now: Duration) -> Vec<(String, BreakerSnapshot)> {
        let mut engine = self.lock();
        let mut out: Vec<_> = engine
            .breakers
            .iter_mut()
            .filter(|(name, _)| service.is_none_or(|s| s == name.as_str()))
            .map(|(name, breaker)| {
                breaker.advance(now);
                (name.clone(), breaker.snapshot(now))
            })
            .collect();
        if out.is_empty() {
            // A service never admitted still has a (closed) breaker to show.
            if let Some(service) = service {
                let breaker = Breaker::new(engine.config.breaker_for(service).clone());
                out.push((service.to_owned(), breaker.snapshot(now)));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Sets (`Some`) or drops (`None`) the operator's runtime override of a service's
    /// breaker, creating the breaker if the service is new. Returns the breaker's
    /// snapshot afterwards and the phase change the override caused.
    ///
    /// # Errors
    /// As for admissions: unknown service, too many services.
    pub fn force_breaker(
        &self,
        service: &str,
        force: Option<Force>,
        now: Duration,
    ) -> Result<(BreakerSnapshot, Option<Transition>), AdmissionError> {
        let mut engine = self.lock();
        let breaker = engine.breaker(service)?;
        breaker.advance(now);
        let transition = breaker.set_override(force);
        Ok((breaker.snapshot(now), transition))
    }

    /// Reservations not yet reported.
    pub fn open_reservations(&self) -> u64 {
        self.lock().reservations.len() as u64
    }

    /// Forgets full rate-limit buckets; called periodically.
    pub fn purge(&self) {
        let rules = self.lock().rules.clone();
        for rule in rules {
            rule.purge();
        }
    }
}

// === impl Engine ===

impl Engine {
    fn admit(
        &mut self,
        caller: Caller<'_>,
        plan: Plan<'_>,
        now: Duration,
    ) -> Result<Decision, AdmissionError> {
        let held = self.by_session.get(&caller.session).map_or(0, HashSet::len);
        let cap = self.config.daemon.max_reservations_per_connection;
        if held >= cap {
            return Err(AdmissionError::TooManyReservations(cap));
        }
        let shadow_all = self.config.daemon.mode == Mode::Shadow;
        let mut votes = Vec::new();
        let mut transitions = Vec::new();

        // Breaker first: it is the cheapest "no" and the one shared by every agent.
        let breaker = self.breaker(plan.service)?;
        if let Some(t) = breaker.advance(now) {
            transitions.push((plan.service.to_owned(), t.from, t.to));
        }
        let shadow = shadow_all || breaker.config().shadow;
        let pass = match breaker.check(now) {
            Ok(pass) => {
                if breaker.phase() != Phase::Disabled {
                    votes.push(GuardVote {
                        guard: Guard::Breaker,
                        rule: plan.service.to_owned(),
                        allow: true,
                        shadow,
                        reason: breaker_allow_reason(pass),
                        retry_after: None,
                    });
                }
                pass
            }
            Err(denial) => {
                votes.push(GuardVote {
                    guard: Guard::Breaker,
                    rule: plan.service.to_owned(),
                    allow: false,
                    shadow,
                    reason: denial.to_string(),
                    retry_after: breaker_retry_after(denial),
                });
                if !shadow {
                    return Ok(Decision::denied(votes, transitions));
                }
                Pass::Free
            }
        };

        let mut cells = Vec::new();
        for rule in &self.rules {
            if !rule.applies(caller.agent, plan.service) {
                continue;
            }
            let shadow = shadow_all || rule.shadow();
            let key = rule.key(caller.agent, plan.service);
            match rule.check(key, rule.weight_of(plan.units), now) {
                Ok(taken) => {
                    votes.push(GuardVote {
                        guard: Guard::Rate,
                        rule: rule.name().to_owned(),
                        allow: true,
                        shadow,
                        reason: format!("{} of burst {} taken", taken.taken, rule.spec().burst),
                        retry_after: None,
                    });
                    cells.push((Arc::clone(rule), taken));
                }
                Err(denial) => {
                    votes.push(GuardVote {
                        guard: Guard::Rate,
                        rule: rule.name().to_owned(),
                        allow: false,
                        shadow,
                        reason: denial.to_string(),
                        retry_after: match denial {
                            RateDenial::NotUntil { retry_after, .. } => Some(retry_after),
                            RateDenial::Never { .. } => None,
                        },
                    });
                    if !shadow {
                        // Put back what this admission took, newest first.
                        for (rule, taken) in cells.iter().rev() {
                            rule.undo(taken);
                        }
                        if let Some(breaker) = self.breakers.get_mut(plan.service) {
                            breaker.release(pass);
                        }
                        return Ok(Decision::denied(votes, transitions));
                    }
                }
            }
        }

        let id = self.next_reservation;
        self.next_reservation += 1;
        self.reservations.insert(
            id,
            Reservation {
                session: caller.session,
                service: plan.service.to_owned(),
                pass,
                cells,
            },
        );
        self.by_session
            .entry(caller.session)
            .or_default()
            .insert(id);
        Ok(Decision {
            allowed: true,
            reservation: Some(id),
            votes,
            decisive: None,
            transitions,
        })
    }

    fn report(
        &mut self,
        id: u64,
        outcome: Outcome,
        now: Duration,
    ) -> Result<Settlement, AdmissionError> {
        let Some(reservation) = self.reservations.remove(&id) else {
            if self.recently_closed.contains(id) {
                return Ok(Settlement::duplicate());
            }
            return Err(AdmissionError::UnknownReservation(id));
        };
        self.forget(id, reservation.session);
        if let Some(used) = outcome.units {
            for (rule, cells) in &reservation.cells {
                rule.settle(cells, used);
            }
        }
        let breaker = self.breaker(&reservation.service)?;
        let transition = breaker.record(
            Some(reservation.pass),
            outcome.failure,
            outcome.latency,
            now,
        );
        Ok(Settlement {
            duplicate: false,
            phase: breaker.phase(),
            service: reservation.service,
            transition: transition.map(|t| (t.from, t.to)),
        })
    }

    fn report_unreserved(
        &mut self,
        service: &str,
        outcome: Outcome,
        now: Duration,
    ) -> Result<Settlement, AdmissionError> {
        let breaker = self.breaker(service)?;
        breaker.advance(now);
        let transition = breaker.record(None, outcome.failure, outcome.latency, now);
        Ok(Settlement {
            duplicate: false,
            service: service.to_owned(),
            phase: breaker.phase(),
            transition: transition.map(|t| (t.from, t.to)),
        })
    }

    fn release_session(&mut self, session: u64) -> usize {
        let Some(ids) = self.by_session.remove(&session) else {
            return 0;
        };
        for id in &ids {
            if let Some(reservation) = self.reservations.remove(id) {
                if let Some(breaker) = self.breakers.get_mut(&reservation.service) {
                    breaker.release(reservation.pass);
                }
                self.recently_closed.insert(*id);
            }
        }
        ids.len()
    }

    fn forget(&mut self, id: u64, session: u64) {
        if let Some(ids) = self.by_session.get_mut(&session) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_session.remove(&session);
            }
        }
        self.recently_closed.insert(id);
    }

    /// The breaker of `service`, created on first use.
    fn breaker(&mut self, service: &str) -> Result<&mut Breaker, AdmissionError> {
        if !self.breakers.contains_key(service) {
            if !self.config.knows_service(service) {
                return Err(AdmissionError::UnknownService(service.to_owned()));
            }
            if self.breakers.len() >= self.config.daemon.max_services {
                return Err(AdmissionError::TooManyServices(
                    self.config.daemon.max_services,
                ));
            }
            let breaker = Breaker::new(self.config.breaker_for(service).clone());
            self.breakers.insert(service.to_owned(), breaker);
        }
        Ok(self.breakers.get_mut(service).expect("inserted above"))
    }
}

// === impl Settlement ===

impl Settlement {
    /// A repeated report: acknowledged, counted nowhere.
    fn duplicate() -> Settlement {
        Settlement {
            duplicate: true,
            service: String::new(),
            phase: Phase::Closed,
            transition: None,
        }
    }
}

// === impl Decision ===

impl Decision {
    fn denied(votes: Vec<GuardVote>, transitions: Vec<(String, Phase, Phase)>) -> Decision {
        Decision {
            allowed: false,
            reservation: None,
            decisive: Some(votes.len() - 1),
            votes,
            transitions,
        }
    }

    /// The vote that denied, if any.
    pub fn decisive_vote(&self) -> Option<&GuardVote> {
        self.decisive.and_then(|idx| self.votes.get(idx))
    }
}

// === impl RecentlyClosed ===

impl RecentlyClosed {
    fn insert(&mut self, id: u64) {
        if self.ids.insert(id) {
            self.order.push_back(id);
            if self.order.len() > RECENTLY_CLOSED {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }

    fn contains(&self, id: u64) -> bool {
        self.ids.contains(&id)
    }
}

fn breaker_allow_reason(pass: Pass) -> String {
    match pass {
        Pass::Normal => "circuit closed".into(),
        Pass::Trial(_) => "circuit half-open: admitted as a trial call".into(),
        Pass::Free => "circuit not enforced".into(),
    }
}

fn breaker_retry_after(denial: BreakerDenial) -> Option<Duration> {
    match denial {
        BreakerDenial::Open { retry_after, .. } | BreakerDenial::TrialsBusy { retry_after, .. } => {
            Some(retry_after)
        }
        BreakerDenial::ForcedOpen => None,
    }
}

#[cfg(test)]
mod tests;
