//! Admission: the guards of one planned call decided together, and the
//! reservations that hold what an allowed call took until its outcome is known.
//!
//! Architecture Invariant: an admission is all-or-nothing. Every guard (breaker,
//! rate limits, quotas, budgets: the pipeline in `engine.rs`, each guard a
//! [`crate::guard::Guard`]) runs under the one `Engine` lock, in order, with early
//! return; when a guard denies, everything the earlier guards took is put back
//! before the lock is released. The lock is a `std::sync::Mutex` held for
//! microseconds and never across an `.await`. A reservation holds what each guard
//! took, and every way a call ends (report, abort, release, disconnect) hands it
//! back to the guard that took it, through the pipeline.
//!
//! Architecture Invariant: nothing is acknowledged before it is durable. Whatever
//! must survive a crash (a reservation against a budget, durable quota usage, a
//! charge) comes back from the engine as ledger entries; the caller writes them
//! (group commit, outside the lock) and only then confirms. If the write fails the
//! engine undoes the admission and the caller answers `Unavailable`: budgets fail
//! closed.
//!
//! Architecture Invariant: a reservation belongs to the session that made it. When
//! the session ends, trial slots go back to their breaker at once; a reservation
//! that holds money becomes an orphan, still reportable after a reconnect, and is
//! settled by `budget.orphan_policy` after `budget.orphan_timeout`.

mod closed;
mod commit;
mod engine;
mod ledger;
mod occupancy;
mod operator;
mod orphans;
mod pipeline;
mod reconfigure;
mod reservation;
mod types;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use crate::alerts::Alerts;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::guard::breaker::{Breaker, BreakerSnapshot, Force, Transition};
use crate::store::{Opening, Outcome as LedgerOutcome, Snapshot, Store, StoreError};

/// The admission engine: guards, breakers, budgets and open reservations.
pub struct Admission {
    engine: Mutex<Engine>,
    /// How often a caller found the engine locked, and how long it waited:
    /// what tells whether the one lock (ARCHITECTURE.md: "Sharding the
    /// engine lock") has become the bottleneck. Counted only when it was
    /// held, so an uncontended lock costs nothing more.
    waits: AtomicU64,
    waited_nanos: AtomicU64,
}

pub use crate::clock::Moment;

/// Maps on the decision path: foldhash is seeded per process (so keys chosen by a
/// client cannot be made to collide ahead of time) and several times cheaper than
/// the standard SipHash for short keys.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;

struct Engine {
    config: Arc<Config>,
    /// The guards' state; `guards.stages()` is the pipeline.
    guards: pipeline::Guards,
    /// Budgets whose limit an admin set (restored from the ledger or by
    /// `SetLimit`): a reload leaves their limit alone.
    admin_limited: HashSet<String>,
    /// The highest alert threshold logged per budget, with its period.
    thresholds_logged: HashMap<String, (u64, u8)>,
    /// Where crossed thresholds and exhausted quotas are raised; raising never
    /// blocks (`alerts.rs`), so it is safe under the lock.
    alerts: Alerts,
    reservations: Reservations,
    by_session: FastMap<u64, FastSet<u64>>,
    recently_closed: RecentlyClosed,
    /// The service of the last admission, whose breaker and retry budget
    /// exist (`Engine::service` makes both before it sets this, and only a
    /// reload removes either, clearing it), and where they are: the next
    /// admission is usually for the same service, and comparing two names
    /// costs a fraction of the two lookups under the lock.
    last_service: Option<(Arc<str>, crate::guard::Places)>,
    /// Reservation ids are `epoch << 32 | counter`, so they never repeat across
    /// restarts and a stale id can never close a new reservation.
    epoch: u64,
    next_reservation: u64,
}

// === impl Admission ===

impl Admission {
    /// Builds the guards described by `config` on `clock`, with what the ledger
    /// holds (`snapshot`) restored: spending of the current periods, durable quota
    /// usage, admin-set limits, and reservations left open by the previous run (as
    /// orphans). Crossed budget thresholds and exhausted quotas are raised on
    /// `alerts`.
    ///
    /// # Errors
    /// When a rate limit cannot be represented (validated configs never fail here).
    pub fn new(
        config: Arc<Config>,
        clock: &SharedClock,
        snapshot: &Snapshot,
        alerts: Alerts,
    ) -> Result<Admission, String> {
        let guards = pipeline::Guards::new(&config, clock)?;
        let mut engine = Engine {
            config,
            guards,
            admin_limited: HashSet::new(),
            thresholds_logged: HashMap::new(),
            alerts,
            reservations: Reservations::default(),
            by_session: FastMap::default(),
            recently_closed: RecentlyClosed::default(),
            last_service: None,
            epoch: snapshot.epoch,
            next_reservation: 1,
        };
        engine.restore(snapshot, Moment::read(clock));
        Ok(Admission {
            engine: Mutex::new(engine),
            waits: AtomicU64::new(0),
            waited_nanos: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Engine> {
        // Every mutation under this lock completes or is undone before unlock, so a
        // poisoned lock (a panic elsewhere) holds consistent state.
        match self.engine.try_lock() {
            Ok(engine) => engine,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => {
                let started = Instant::now();
                let engine = self.engine.lock().unwrap_or_else(PoisonError::into_inner);
                let waited = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                self.waits.fetch_add(1, Ordering::Relaxed);
                self.waited_nanos.fetch_add(waited, Ordering::Relaxed);
                engine
            }
        }
    }

    /// How many times a caller found the engine locked, and the time they
    /// waited in all, since start.
    pub fn lock_waits(&self) -> (u64, Duration) {
        (
            self.waits.load(Ordering::Relaxed),
            Duration::from_nanos(self.waited_nanos.load(Ordering::Relaxed)),
        )
    }

    /// Runs every applicable guard for `plan`, all or nothing.
    ///
    /// # Errors
    /// [`AdmissionError`] when the request cannot be decided at all.
    pub fn admit(
        &self,
        caller: Caller<'_>,
        plan: Plan<'_>,
        now: Moment,
    ) -> Result<Admitted, AdmissionError> {
        let mut decision = Decision::default();
        Ok(match self.admit_into(caller, plan, now, &mut decision)? {
            Filed::Decided => Admitted::Decided(decision),
            Filed::Durable(durable) => Admitted::Durable(*durable),
        })
    }

    /// [`Admission::admit`], the decision written into `out` (overwritten
    /// whole) rather than returned: the hot path's form, which moves no
    /// decision between the engine and the reply's encoder.
    ///
    /// # Errors
    /// [`AdmissionError`] when the request cannot be decided at all.
    pub fn admit_into(
        &self,
        caller: Caller<'_>,
        plan: Plan<'_>,
        now: Moment,
        out: &mut Decision,
    ) -> Result<Filed, AdmissionError> {
        // The last decision's votes go before the lock is taken: each holds
        // its rule's shared name, and giving one back is an atomic write to a
        // line every worker writes.
        out.votes.clear();
        self.lock().admit(caller, plan, now, out)
    }

    /// Which service of a chain (`chain`, or the route `plan.route`) would admit
    /// `plan` now; takes nothing.
    ///
    /// # Errors
    /// An unknown route or service, too many services.
    pub fn route(
        &self,
        caller: Caller<'_>,
        plan: Plan<'_>,
        chain: Option<&[String]>,
        now: Moment,
    ) -> Result<Routed, AdmissionError> {
        self.lock().route(caller, plan, chain, now)
    }

    /// Starts closing a reservation with its outcome, whoever asks (the tests;
    /// the daemon reports through [`Admission::report_by`]).
    ///
    /// # Errors
    /// Unknown, released or busy reservations.
    pub fn report(
        &self,
        reservation: u64,
        key: Option<String>,
        outcome: Outcome,
        now: Moment,
    ) -> Result<Reporting, AdmissionError> {
        self.report_by(reservation, |_| true, key, outcome, now)
    }

    /// [`Admission::report`], if `may_settle` says yes for the agent the
    /// reservation was admitted for; checked under the same lock as the report
    /// (one lock per report, and no window between the check and the close).
    ///
    /// # Errors
    /// [`AdmissionError::NotOwner`], and those of [`Admission::report`].
    pub fn report_by(
        &self,
        reservation: u64,
        may_settle: impl FnOnce(&str) -> bool,
        key: Option<String>,
        outcome: Outcome,
        now: Moment,
    ) -> Result<Reporting, AdmissionError> {
        self.lock()
            .report(reservation, may_settle, key, outcome, now)
    }

    /// Records an outcome, and possibly a charge, for a call made without
    /// admission.
    ///
    /// # Errors
    /// Unknown service, or a charge without an idempotency key.
    pub fn report_unreserved(
        &self,
        agent: &str,
        service: &str,
        key: Option<String>,
        outcome: Outcome,
        now: Moment,
    ) -> Result<Reporting, AdmissionError> {
        self.lock()
            .report_unreserved(agent, service, key, outcome, now)
    }

    /// Ends a session: trial slots go back, money-holding reservations become
    /// orphans, the rest are released. Returns (released, orphaned).
    pub fn end_session(&self, session: u64, now: Moment) -> (usize, usize) {
        self.lock().end_session(session, now)
    }

    /// Orphans whose timeout passed, marked settling, in batches with the
    /// entries that settle them by policy: [`Admission::commit`] each batch.
    pub fn due_orphans(&self, now: Moment) -> Vec<Durable<PendingOrphans>> {
        self.lock().due_orphans(now)
    }

    /// A service's retry budget now: calls and retries in its window, retries
    /// in flight, promised retries (`None` for a service not seen yet).
    pub fn retry_budget(&self, service: &str, now: Duration) -> Option<(u32, u32, u32, usize)> {
        let engine = self.lock();
        let budget = engine.guards.retries.get(service)?;
        let (calls, retries) = budget.totals(now);
        Some((calls, retries, budget.in_flight(), budget.promised()))
    }

    /// Snapshots of breakers: one service, or all of them sorted by name.
    pub fn breakers(&self, service: Option<&str>, now: Duration) -> Vec<(String, BreakerSnapshot)> {
        let mut engine = self.lock();
        let mut out: Vec<_> = engine
            .guards
            .breakers
            .iter_mut()
            .filter(|(name, _)| service.is_none_or(|s| s == &***name))
            .map(|(name, breaker)| {
                breaker.advance(now);
                (name.to_string(), breaker.snapshot(now))
            })
            .collect();
        if out.is_empty() {
            if let Some(service) = service {
                if engine.config.knows_service(service) {
                    // A service never used still has a (closed) breaker to show.
                    let breaker = Breaker::new(engine.config.breaker_for(service).clone());
                    out.push((service.to_owned(), breaker.snapshot(now)));
                }
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

    /// Closes a reservation without an outcome, as if its connection had ended
    /// (`cmd::admit` refusing a $0 admission while the ledger fails).
    pub fn release(&self, id: u64) {
        self.lock().close(id, Closed::Released);
    }

    /// Reservations not yet reported.
    pub fn open_reservations(&self) -> u64 {
        self.lock().reservations.len() as u64
    }

    /// The budgets `config` adds or gives another period, whose books
    /// ([`crate::store::Store::books`]) [`Admission::reconfigure`] needs.
    pub fn budgets_to_load(&self, config: &Config, now: Moment) -> Opening {
        self.lock().budgets_to_load(config, now)
    }

    /// Records, once a reload is applied, the resets of the budgets it
    /// opened (`store/periods.rs`). Queued after the switch, so every charge
    /// filed under an old reset is queued before it: the record moves those
    /// filed after the reload's read, and memory counts them when it
    /// completes (the budgets opened from the read did not). One lost (a
    /// failing disk) only makes the next start move the budget's charges
    /// again, which moves nothing twice.
    pub fn record_resets(
        self: &Arc<Self>,
        store: &Store,
        opening: &Opening,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        let admission = Arc::clone(self);
        store.commit(opening.records(), move |result| match result {
            Ok(LedgerOutcome::Refiled(moved)) => admission.lock().count_refiled(&moved),
            Ok(_) => {}
            Err(err) => log::warn!(
                "the ledger did not record the resets of the budgets a reload opened ({err}); the next start moves their charges again, which changes nothing already moved"
            ),
        })
    }

    /// Applies a new validated config to the guards, under the engine lock: equal
    /// rate rules, quotas and breakers keep their state, budgets take the new limits
    /// unless an admin set theirs; a budget added or given another period is
    /// opened from `loaded`, a removed one taken out. All or nothing: a refused
    /// reload changes nothing.
    ///
    /// # Errors
    /// [`ReloadError::Refused`] when a rate limit cannot be built, or `loaded`
    /// lacks a budget the config opens.
    pub fn reconfigure(
        &self,
        config: Arc<Config>,
        clock: &SharedClock,
        now: Moment,
        loaded: &LoadedBooks,
    ) -> Result<Reconfigured, ReloadError> {
        self.lock().reconfigure(config, clock, now, loaded)
    }

    /// Forgets full rate-limit buckets and past quota windows; called periodically.
    pub fn purge(&self, now: Moment) {
        let rules = {
            let mut engine = self.lock();
            for quota in engine.guards.quotas.rules_mut() {
                quota.purge(now.unix);
            }
            engine.guards.leases.purge(now.mono);
            engine.guards.rates.rules().to_vec()
        };
        for rule in rules {
            rule.purge();
        }
    }
}

use closed::{Closed, RecentlyClosed};
pub use commit::{Durable, Pending, PendingAdmit, PendingReport};
pub use ledger::{AdminAction, AdminKind, BudgetView, PendingAdmin, QuotaView};
pub use operator::{BudgetGauge, Gauges, ListedQuota, QuotaListing};
pub use orphans::PendingOrphans;
pub use reconfigure::{opening, LoadedBooks, Reconfigured, ReloadError};
pub use reservation::reservation_key;
use reservation::{Reservation, Reservations, Stage};
pub use types::{
    AdmissionError, Admitted, Caller, Decision, Filed, Outcome, Plan, Reason, Reporting, Routed,
    Settlement, Vote, Wait,
};

// === impl Admission (budgets, quotas, admin) ===

impl Admission {
    /// Budgets in their current periods: all, or those that apply to `agent`.
    pub fn budgets(&self, agent: Option<&str>, now: Moment) -> Vec<BudgetView> {
        self.lock().budget_views(agent, now)
    }

    /// Quota counters of the current windows.
    pub fn quotas(
        &self,
        quota: Option<&str>,
        now: Moment,
    ) -> Result<Vec<QuotaView>, AdmissionError> {
        self.lock().quota_views(quota, now)
    }

    /// Validates an admin action and returns what to write; [`Admission::commit`]
    /// it, and the commit yields what was done (or
    /// [`AdmissionError::NothingToRefund`]).
    ///
    /// # Errors
    /// Unknown budgets or quotas, invalid amounts.
    pub fn admin(
        &self,
        action: AdminAction,
        now: Moment,
    ) -> Result<Durable<PendingAdmin>, AdmissionError> {
        self.lock().admin(action, now)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod retry_route_tests;
