//! The circuit breaker of one upstream service, shared by every agent on the host.
//!
//! Closed → Open when `failure_threshold` consecutive failures are reported, or when
//! the failure rate over the last `window` calls reaches `failure_rate` percent after
//! `min_calls`. Open → HalfOpen lazily, on the first look after `open_for`. HalfOpen lets
//! at most `half_open_trials` trial calls be in flight host-wide; `success_threshold`
//! successful trials close it, any failed trial re-opens it. A trial that is released
//! (its connection dropped) or never reported within `trial_timeout` gives its slot
//! back without counting, so a vanished agent cannot wedge the breaker half-open.
//!
//! An operator can force a breaker open, closed or disabled twice over: in the config
//! (`force`, replaced by a reload) and at runtime (`set_override`, kept across
//! `reconfigure` until set back to `None`). The runtime override wins; the state
//! machine underneath keeps its state while forced.

use std::any::Any;
use std::collections::VecDeque;

use std::sync::Arc;
use std::time::Duration;

/// Validated settings of one breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker; 0 turns the count trip off.
    pub failure_threshold: u32,
    /// Calls in the count-based sliding window; 0 turns the rate trip off.
    pub window: u32,
    /// Failure percentage (1..=100) over the window that opens the breaker.
    pub failure_rate: u8,
    /// No rate is computed over fewer calls than this.
    pub min_calls: u32,
    /// A call reported slower than this counts as a failure.
    pub slow_call: Option<Duration>,
    pub open_for: Duration,
    /// Trial calls that may be in flight at once while half-open (at least 1).
    pub half_open_trials: u32,
    /// Successful trials that close the breaker (at least 1).
    pub success_threshold: u32,
    /// A trial not reported within this is forgotten and its slot reused.
    pub trial_timeout: Duration,
    pub force: Force,
    /// Decide and record, never deny.
    pub shadow: bool,
}

/// Operator override of the automatic state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Force {
    Auto,
    Open,
    Closed,
    Disabled,
}

/// What a caller sees of a breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Closed,
    Open,
    HalfOpen,
    ForcedOpen,
    ForcedClosed,
    Disabled,
}

/// What an admission holds from the breaker until its outcome is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Admitted while closed (or forced closed): the outcome counts normally.
    Normal,
    /// A half-open trial slot with its id.
    Trial(u64),
    /// Admitted without taking anything (disabled, or shadow while denying).
    Free,
}

/// Why the breaker refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BreakerDenial {
    #[error("circuit open: {cause}")]
    Open { cause: Trip, retry_after: Duration },
    #[error("circuit half-open and all {trials} trial calls are in flight")]
    TrialsBusy { trials: u32, retry_after: Duration },
    #[error("circuit forced open by the operator")]
    ForcedOpen,
}

/// Why a breaker opened, for denial messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Trip {
    #[error("{0} consecutive failures")]
    Consecutive(u32),
    #[error("{failures} of the last {calls} calls failed")]
    Rate { failures: u32, calls: u32 },
    #[error("a trial call failed while half-open")]
    TrialFailed,
}

/// A state change, for logs and alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: Phase,
    pub to: Phase,
}

/// A snapshot for `breakers` and health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerSnapshot {
    pub phase: Phase,
    pub consecutive_failures: u32,
    pub window_failures: u32,
    pub window_calls: u32,
    pub trials_in_flight: u32,
    pub trial_successes: u32,
    pub open_remaining: Option<Duration>,
    pub times_opened: u64,
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    /// The operator's runtime override; wins over `config.force`.
    runtime_force: Option<Force>,
    state: State,
    consecutive_failures: u32,
    /// Why the breaker opened the last time, for the denial message.
    trip: Trip,
    /// Outcomes of the last `config.window` calls, `true` = failure.
    window: VecDeque<bool>,
    window_failures: u32,
    times_opened: u64,
    next_trial: u64,
}

#[derive(Debug)]
enum State {
    Closed,
    Open { until: Duration },
    HalfOpen { trials: Vec<Trial>, successes: u32 },
}

#[derive(Debug, Clone, Copy)]
struct Trial {
    id: u64,
    started: Duration,
}

// === impl BreakerConfig ===

impl Default for BreakerConfig {
    /// The defaults of SPEC §3.2.
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            window: 0,
            failure_rate: 50,
            min_calls: 20,
            slow_call: None,
            open_for: Duration::from_secs(60),
            half_open_trials: 3,
            success_threshold: 3,
            trial_timeout: Duration::from_secs(30),
            force: Force::Auto,
            shadow: false,
        }
    }
}

// === impl Breaker ===

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            runtime_force: None,
            state: State::Closed,
            consecutive_failures: 0,
            trip: Trip::Consecutive(0),
            window: VecDeque::new(),
            window_failures: 0,
            times_opened: 0,
            next_trial: 1,
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The force in effect: the runtime override if any, else the config's.
    pub fn force(&self) -> Force {
        self.runtime_force.unwrap_or(self.config.force)
    }

    /// Sets (`Some`) or drops (`None`) the operator's runtime override. Returns the
    /// phase change it caused, if any.
    pub fn set_override(&mut self, force: Option<Force>) -> Option<Transition> {
        let from = self.phase();
        self.runtime_force = force;
        let to = self.phase();
        (from != to).then_some(Transition { from, to })
    }

    /// Replaces the settings, keeping the state and the runtime override (used by
    /// reload when a service's breaker settings changed but its history should not
    /// be forgotten).
    pub fn reconfigure(&mut self, config: BreakerConfig) {
        self.config = config;
        while self.window.len() > self.config.window as usize {
            if self.window.pop_front() == Some(true) {
                self.window_failures -= 1;
            }
        }
    }

    /// Applies the transitions that only depend on time: Open → HalfOpen once
    /// `open_for` has passed, and forgetting trials older than `trial_timeout`.
    pub fn advance(&mut self, now: Duration) -> Option<Transition> {
        match &mut self.state {
            State::Open { until } if now >= *until => {
                self.state = State::HalfOpen {
                    trials: Vec::new(),
                    successes: 0,
                };
                Some(Transition {
                    from: Phase::Open,
                    to: Phase::HalfOpen,
                })
            }
            State::HalfOpen { trials, .. } => {
                let timeout = self.config.trial_timeout;
                trials.retain(|trial| now < trial.started + timeout);
                None
            }
            _ => None,
        }
    }

    /// May a call go through now? On success the returned [`Pass`] must be given back
    /// through [`Breaker::record`] or [`Breaker::release`]. Call [`Breaker::advance`]
    /// first so time-driven transitions are seen (and logged) by the caller.
    ///
    /// # Errors
    /// A [`BreakerDenial`] with the time after which asking again makes sense.
    pub fn check(&mut self, now: Duration) -> Result<Pass, BreakerDenial> {
        match self.force() {
            Force::Disabled => return Ok(Pass::Free),
            Force::Open => return Err(BreakerDenial::ForcedOpen),
            Force::Closed => return Ok(Pass::Normal),
            Force::Auto => {}
        }
        let trials_allowed = self.config.half_open_trials;
        let trial_timeout = self.config.trial_timeout;
        match &mut self.state {
            State::Closed => Ok(Pass::Normal),
            State::Open { until } => Err(BreakerDenial::Open {
                cause: self.trip,
                retry_after: until.saturating_sub(now),
            }),
            State::HalfOpen { trials, .. } => {
                if trials.len() as u32 >= trials_allowed {
                    let oldest = trials.iter().map(|t| t.started).min().unwrap_or(now);
                    let expiry = (oldest + trial_timeout).saturating_sub(now);
                    return Err(BreakerDenial::TrialsBusy {
                        trials: trials_allowed,
                        retry_after: expiry.min(Duration::from_secs(1)),
                    });
                }
                let id = self.next_trial;
                self.next_trial += 1;
                trials.push(Trial { id, started: now });
                Ok(Pass::Trial(id))
            }
        }
    }

    /// Gives a pass back without counting an outcome: the admission was denied by
    /// another guard, or its connection went away before reporting.
    pub fn release(&mut self, pass: Pass) {
        if let (Pass::Trial(id), State::HalfOpen { trials, .. }) = (pass, &mut self.state) {
            trials.retain(|trial| trial.id != id);
        }
    }

    /// Records the outcome of a call. `pass` is what its admission got, or `None` for
    /// an outcome reported without admission. Returns the state change it caused.
    pub fn record(
        &mut self,
        pass: Option<Pass>,
        failure: bool,
        latency: Option<Duration>,
        now: Duration,
    ) -> Option<Transition> {
        let slow =
            matches!((self.config.slow_call, latency), (Some(max), Some(took)) if took > max);
        let failure = failure || slow;
        match self.force() {
            Force::Disabled | Force::Open => return None,
            Force::Closed => {
                self.count(failure);
                return None;
            }
            Force::Auto => {}
        }
        match &mut self.state {
            State::Closed => {
                self.count(failure);
                let trip = self.should_trip()?;
                Some(self.open(Phase::Closed, trip, now))
            }
            // Outcomes of calls admitted before the breaker opened say nothing new.
            State::Open { .. } => None,
            State::HalfOpen { trials, successes } => {
                let Some(Pass::Trial(id)) = pass else {
                    return None;
                };
                let before = trials.len();
                trials.retain(|trial| trial.id != id);
                if trials.len() == before {
                    // Timed out and forgotten already; a late report must not count.
                    return None;
                }
                if failure {
                    return Some(self.open(Phase::HalfOpen, Trip::TrialFailed, now));
                }
                *successes += 1;
                if *successes >= self.config.success_threshold {
                    self.close();
                    return Some(Transition {
                        from: Phase::HalfOpen,
                        to: Phase::Closed,
                    });
                }
                None
            }
        }
    }

    pub fn phase(&self) -> Phase {
        match (self.force(), &self.state) {
            (Force::Disabled, _) => Phase::Disabled,
            (Force::Open, _) => Phase::ForcedOpen,
            (Force::Closed, _) => Phase::ForcedClosed,
            (Force::Auto, State::Closed) => Phase::Closed,
            (Force::Auto, State::Open { .. }) => Phase::Open,
            (Force::Auto, State::HalfOpen { .. }) => Phase::HalfOpen,
        }
    }

    pub fn snapshot(&self, now: Duration) -> BreakerSnapshot {
        let (trials_in_flight, trial_successes, open_remaining) = match &self.state {
            State::Closed => (0, 0, None),
            State::Open { until } => (0, 0, Some(until.saturating_sub(now))),
            State::HalfOpen { trials, successes } => (trials.len() as u32, *successes, None),
        };
        BreakerSnapshot {
            phase: self.phase(),
            consecutive_failures: self.consecutive_failures,
            window_failures: self.window_failures,
            window_calls: self.window.len() as u32,
            trials_in_flight,
            trial_successes,
            open_remaining,
            times_opened: self.times_opened,
        }
    }

    fn count(&mut self, failure: bool) {
        if failure {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        } else {
            self.consecutive_failures = 0;
        }
        if self.config.window == 0 {
            return;
        }
        if self.window.len() == self.config.window as usize && self.window.pop_front() == Some(true)
        {
            self.window_failures -= 1;
        }
        self.window.push_back(failure);
        self.window_failures += u32::from(failure);
    }

    /// The reason to open now, if any.
    fn should_trip(&self) -> Option<Trip> {
        if self.config.failure_threshold > 0
            && self.consecutive_failures >= self.config.failure_threshold
        {
            return Some(Trip::Consecutive(self.consecutive_failures));
        }
        let calls = self.window.len() as u64;
        let by_rate = self.config.window > 0
            && calls >= u64::from(self.config.min_calls.max(1))
            && u64::from(self.window_failures) * 100 >= u64::from(self.config.failure_rate) * calls;
        by_rate.then_some(Trip::Rate {
            failures: self.window_failures,
            calls: calls as u32,
        })
    }

    fn open(&mut self, from: Phase, trip: Trip, now: Duration) -> Transition {
        self.trip = trip;
        self.state = State::Open {
            until: now + self.config.open_for,
        };
        self.times_opened += 1;
        self.consecutive_failures = 0;
        self.window.clear();
        self.window_failures = 0;
        Transition {
            from,
            to: Phase::Open,
        }
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.consecutive_failures = 0;
        self.window.clear();
        self.window_failures = 0;
    }
}

/// The breakers of every service the daemon has seen: the first stage of the
/// admission pipeline, because it is the cheapest "no" and the one shared by
/// every agent.
#[derive(Debug, Default)]
pub struct Breakers {
    /// In a map with places (`IndexMap`): the engine finds a service once per
    /// admission and hands its place on in the [`super::Call`], and a
    /// reservation keeps it for the report; each checks the place still
    /// holds its service (a reload's `retain` moves them) before using it.
    by_service: super::ServiceMap<Named>,
}

/// A breaker with its service's name, so that a vote can name it without a
/// second lookup or a copy.
#[derive(Debug)]
struct Named {
    service: Arc<str>,
    breaker: Breaker,
}

/// What an admission holds from its service's breaker.
struct Held {
    service: Arc<str>,
    /// Where its breaker was at the admission (a hint; see `Breakers`).
    place: usize,
    pass: Pass,
}

// Kept inline in the reservation (no heap allocation per admission).
const _: () = assert!(super::fits_inline::<Held>());

// === impl Breakers ===

impl Breakers {
    /// The breaker of `service`, if the service was seen.
    pub fn get_mut(&mut self, service: &str) -> Option<&mut Breaker> {
        self.by_service
            .get_mut(service)
            .map(|named| &mut named.breaker)
    }

    /// The breaker at `place` if it is still `service`'s, else found by name:
    /// the usual case costs a comparison of the shared names, not a hash.
    fn at(&mut self, place: usize, service: &str) -> Option<&mut Named> {
        let place = super::place_of(&self.by_service, Some(place), service)?;
        self.by_service.get_index_mut(place).map(|(_, named)| named)
    }

    /// The breaker of `service`, made with `config` on first use.
    pub fn get_or_insert(
        &mut self,
        service: &str,
        config: impl FnOnce() -> BreakerConfig,
    ) -> &mut Breaker {
        let made: Result<_, std::convert::Infallible> = self.named(service, |_| Ok(config()));
        match made {
            Ok((_, _, breaker)) => breaker,
        }
    }

    /// The breaker of `service` with the service's shared name and its place
    /// (the admission's hint to [`Breakers::check`]), made from `config`
    /// (which is told how many breakers exist, and may refuse) when it has
    /// none yet.
    pub fn named<E>(
        &mut self,
        service: &str,
        config: impl FnOnce(usize) -> Result<BreakerConfig, E>,
    ) -> Result<(usize, &Arc<str>, &mut Breaker), E> {
        // One lookup for a known service; the name is copied only for a new one.
        let place = match self.by_service.get_index_of(service) {
            Some(place) => place,
            None => {
                let breaker = Breaker::new(config(self.by_service.len())?);
                let service: Arc<str> = Arc::from(service);
                let named = Named {
                    service: Arc::clone(&service),
                    breaker,
                };
                self.by_service.insert_full(service, named).0
            }
        };
        let (_, named) = self
            .by_service
            .get_index_mut(place)
            .expect("the place just found or filed");
        Ok((place, &named.service, &mut named.breaker))
    }

    pub fn len(&self) -> usize {
        self.by_service.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_service.is_empty()
    }

    pub fn contains(&self, service: &str) -> bool {
        self.by_service.contains_key(service)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&Arc<str>, &mut Breaker)> {
        self.by_service
            .iter_mut()
            .map(|(service, named)| (service, &mut named.breaker))
    }

    /// Keeps the breakers of the services `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.by_service.retain(|service, _| keep(service));
    }

    /// Records an outcome on `service`'s breaker, if it has one.
    pub fn record(
        &mut self,
        service: &str,
        pass: Option<Pass>,
        report: &super::Report,
    ) -> super::Settled {
        match self.get_mut(service) {
            Some(breaker) => Breakers::record_on(breaker, pass, report),
            None => super::Settled::default(),
        }
    }

    fn record_on(
        breaker: &mut Breaker,
        pass: Option<Pass>,
        report: &super::Report,
    ) -> super::Settled {
        breaker.advance(report.now.mono);
        let transition = breaker.record(pass, report.failure, report.latency, report.now.mono);
        super::Settled {
            phase: Some(breaker.phase()),
            transition: transition.map(|t| (t.from, t.to)),
        }
    }

    fn release_pass(&mut self, held: &mut Held) {
        let pass = std::mem::replace(&mut held.pass, Pass::Free);
        if let Some(Named { breaker, .. }) = self.at(held.place, &held.service) {
            breaker.release(pass);
        }
    }
}

impl super::Guard for Breakers {
    fn check(&mut self, call: &super::Call<'_>, out: &mut super::Checked) -> super::Verdict {
        // The engine made the breaker before the pipeline ran (it knows the
        // config); a service without one is not governed by a breaker.
        let place = super::place_of(&self.by_service, call.places.breaker, call.service);
        let Some(place) = place else {
            return super::Verdict::Allow;
        };
        let (_, Named { service, breaker }) = self
            .by_service
            .get_index_mut(place)
            .expect("a place just checked");
        let service = Arc::clone(service);
        if let Some(t) = breaker.advance(call.now.mono) {
            out.transitions.push((Arc::clone(&service), t.from, t.to));
        }
        let shadow = call.shadow_all || breaker.config().shadow;
        let pass = match breaker.check(call.now.mono) {
            Ok(pass) => {
                if breaker.phase() != Phase::Disabled {
                    out.vote(super::Vote::allow(
                        super::GuardKind::Breaker,
                        Arc::clone(&service),
                        shadow,
                        super::Reason::Fixed(allow_reason(pass)),
                    ));
                }
                pass
            }
            Err(denial) => {
                let retry_after = match denial {
                    BreakerDenial::Open { retry_after, .. }
                    | BreakerDenial::TrialsBusy { retry_after, .. } => Some(retry_after),
                    BreakerDenial::ForcedOpen => None,
                };
                out.vote(super::Vote::deny(
                    super::GuardKind::Breaker,
                    Arc::clone(&service),
                    shadow,
                    denial,
                    retry_after,
                ));
                if !shadow {
                    return super::Verdict::Deny;
                }
                Pass::Free
            }
        };
        // Taken even when free: the outcome is recorded at report time.
        out.take(Held {
            service,
            place,
            pass,
        });
        super::Verdict::Allow
    }

    fn undo(&mut self, taken: &mut (dyn Any + Send)) {
        self.release_pass(super::own(taken));
    }

    fn abort(&mut self, taken: &mut (dyn Any + Send)) {
        self.release_pass(super::own(taken));
    }

    fn settle(
        &mut self,
        taken: &mut (dyn Any + Send),
        report: &super::Report,
        out: &mut super::Settled,
    ) {
        let held: &mut Held = super::own(taken);
        let pass = std::mem::replace(&mut held.pass, Pass::Free);
        *out = match self.at(held.place, &held.service) {
            Some(Named { breaker, .. }) => Breakers::record_on(breaker, Some(pass), report),
            None => super::Settled::default(),
        };
    }

    fn release(&mut self, taken: &mut (dyn Any + Send)) {
        self.release_pass(super::own(taken));
    }

    fn disconnect(&mut self, taken: &mut (dyn Any + Send)) -> super::Keep {
        // A vanished agent is no evidence about the service, and must not wedge
        // a half-open breaker: the trial slot goes back at once.
        self.release_pass(super::own(taken));
        super::Keep::No
    }
}

fn allow_reason(pass: Pass) -> &'static str {
    match pass {
        Pass::Normal => "circuit closed",
        Pass::Trial(_) => "circuit half-open: admitted as a trial call",
        Pass::Free => "circuit not enforced",
    }
}

#[cfg(test)]
mod tests;
