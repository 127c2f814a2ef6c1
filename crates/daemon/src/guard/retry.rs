//! Retries: the advice a retryable failure gets (backoff with jitter, the
//! upstream's Retry-After, the breaker), and each service's retry budget, shared
//! by every agent on the host, which both the advice and the admission of a
//! retry (`attempt > 1`) answer to.
//!
//! Why a budget: a fleet of agents that each retry three times turns an outage
//! into four times the load on the service that is down. Following Envoy's
//! retry budget, retries may be at most `budget_percent` of the service's recent
//! calls (the calls admitted over the last `budget_window`), with a floor of
//! `budget_min_retries` retries at once so that a service with little traffic
//! can still retry at all.
//!
//! Advice *promises* a retry: a promise counts against the budget until the
//! retry's admission redeems it (or it expires, `budget_window` after the
//! advised wait), so twenty agents failing at the same instant are not all told
//! to retry on the strength of the same spare room. A retry admitted without a
//! promise (the agent retried on its own) must find room itself, or is denied
//! with a `Retry` vote.
//!
//! Like every guard, this one reads no clock and no config: `now` comes with
//! the call, settings are handed in when a service is first seen and on
//! reload. Its jitter comes from its own small generator, seeded by the caller.

use std::any::Any;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use std::sync::Arc;
use std::time::Duration;

use super::{Call, Checked, GuardKind, Keep, Reason, Report, Settled, Verdict, Vote};

/// How many slots the budget's window is counted in: a call leaves the window
/// at most a tenth of it late.
const SLOTS: usize = 10;

/// Promises one service may hold at once: bounds memory whatever the traffic.
const MAX_PROMISES: usize = 100_000;

/// Validated retry settings of one service (`[retry]`, `[services.NAME.retry]`).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Attempts in all, the first call included: 3 means at most two retries.
    pub attempts: u32,
    /// The wait before the first retry.
    pub initial: Duration,
    /// Each further retry waits this many times longer (at least 1).
    pub multiplier: f64,
    /// No wait is longer than this (the upstream's Retry-After and an open
    /// breaker excepted: those are facts, not guesses).
    pub max: Duration,
    /// Each wait is spread by up to this percentage either way.
    pub jitter: u8,
    /// Retries may be at most this percentage of the calls in `budget_window`.
    pub budget_percent: u8,
    pub budget_window: Duration,
    /// Retries (in flight or promised) always allowed at once, whatever the ratio.
    pub budget_min_retries: u32,
}

/// What the breaker of the failed call's service says about calling it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerView {
    /// Closed or half-open: a call may be admitted.
    Admits,
    /// Open: trial calls are let through after this long.
    OpenFor(Duration),
    /// Forced open by the operator: no call will be admitted until it is not.
    ForcedOpen,
}

/// A retryable failure, as the advice needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// The attempt that failed (1 for a first call).
    pub attempt: u32,
    /// The upstream's own Retry-After.
    pub upstream_after: Option<Duration>,
}

/// The daemon's answer to a retryable failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advice {
    pub retry: bool,
    /// When retrying: wait this long first.
    pub after: Option<Duration>,
    /// The attempt number the retry carries.
    pub attempt: u32,
    pub why: Why,
}

/// Why the advice is what it is; made text by `cmd/`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Why {
    #[error("retry {next} of at most {retries} after exponential backoff")]
    Backoff { next: u32, retries: u32 },
    #[error("retry {next} of at most {retries}, after the upstream's Retry-After")]
    UpstreamAfter { next: u32, retries: u32 },
    #[error("retry {next} of at most {retries} once the circuit half-opens")]
    BreakerOpen { next: u32, retries: u32 },
    #[error("attempt {attempt} was the last of {attempts}: give up")]
    AttemptsUsed { attempt: u32, attempts: u32 },
    #[error("circuit forced open by the operator: give up")]
    ForcedOpen,
    #[error("{0}: give up")]
    Budget(BudgetSpent),
}

/// The service's retry budget has no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("retry budget spent: {used} retries made or promised against {calls} calls in the last {}ms (at most {percent}%), {at_once} at once (at least {floor} allowed)", window.as_millis())]
pub struct BudgetSpent {
    pub used: u32,
    pub calls: u32,
    pub percent: u8,
    pub window: Duration,
    pub at_once: u32,
    pub floor: u32,
}

/// A tiny, fast generator for jitter (SplitMix64): jitter needs spread, not
/// secrecy, and must be reproducible in tests.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

/// Every service's retry budget: a stage of the admission pipeline.
#[derive(Debug)]
pub struct Retries {
    /// With places, as the breakers are (see `Breakers`): a call's place
    /// comes from the engine, a retry's is kept until it ends.
    by_service: super::ServiceMap<ServiceRetries>,
    jitter: Jitter,
}

/// One service's settings and budget.
#[derive(Debug)]
pub struct ServiceRetries {
    service: Arc<str>,
    config: RetryConfig,
    slots: [Slot; SLOTS],
    /// Retries admitted and not yet ended.
    in_flight: u32,
    /// Advice to retry not yet taken up, by expiry.
    promises: BinaryHeap<Reverse<Duration>>,
}

/// Calls and retries admitted in one slot of the window.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    id: u64,
    calls: u32,
    retries: u32,
}

/// What an admission took from its service's budget.
struct Counted {
    service: Arc<str>,
    /// Where its budget was at the admission (a hint, checked before use).
    place: usize,
    slot: u64,
    retry: bool,
    /// The promise a retry redeemed.
    promise: Option<Duration>,
    /// The retry still counts as in flight.
    in_flight: bool,
}

// Kept inline in the reservation (no heap allocation per admission).
const _: () = assert!(super::fits_inline::<Counted>());

// === impl RetryConfig ===

impl Default for RetryConfig {
    /// SPEC §3.3 and Envoy's retry budget: 3 attempts, 100 ms ×2 up to 30 s,
    /// ±20 %; retries at most 20 % of the calls of the last 10 s, 3 at once
    /// always.
    fn default() -> Self {
        RetryConfig {
            attempts: 3,
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max: Duration::from_secs(30),
            jitter: 20,
            budget_percent: 20,
            budget_window: Duration::from_secs(10),
            budget_min_retries: 3,
        }
    }
}

impl RetryConfig {
    /// The wait before retrying after attempt `attempt` failed, before jitter
    /// and cap: `initial × multiplier^(attempt − 1)`.
    fn base(&self, attempt: u32) -> f64 {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        self.initial.as_secs_f64() * self.multiplier.powi(exponent)
    }

    /// The jittered, capped wait; `unit` is uniform in `[0, 1)`.
    pub fn backoff(&self, attempt: u32, unit: f64) -> Duration {
        let spread = f64::from(self.jitter) / 100.0;
        let secs = self.base(attempt) * (1.0 + spread * (2.0 * unit - 1.0));
        let cap = self.max.as_secs_f64();
        // An overflowing power is +inf, which the cap takes care of.
        Duration::from_secs_f64(if secs.is_finite() {
            secs.clamp(0.0, cap)
        } else {
            cap
        })
    }
}

// === impl Jitter ===

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed)
    }

    /// A seed that differs per process, so daemons on different hosts do not
    /// jitter in step.
    pub fn from_entropy() -> Jitter {
        use std::hash::BuildHasher;
        Jitter(std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64))
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // The top 53 bits make an exact f64 fraction.
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

// === impl Retries ===

impl Retries {
    pub fn new(jitter: Jitter) -> Retries {
        Retries {
            by_service: super::ServiceMap::default(),
            jitter,
        }
    }

    /// The budget of `service`, made with `config` on first use, and its
    /// place (the admission's hint to the check).
    pub fn get_or_insert(
        &mut self,
        service: &str,
        config: impl FnOnce() -> RetryConfig,
    ) -> (usize, &mut ServiceRetries) {
        // One lookup for a known service; the name is copied only for a new one.
        let place = match self.by_service.get_index_of(service) {
            Some(place) => place,
            None => {
                let service: Arc<str> = Arc::from(service);
                let budget = ServiceRetries::new(Arc::clone(&service), config());
                self.by_service.insert_full(service, budget).0
            }
        };
        let (_, budget) = self
            .by_service
            .get_index_mut(place)
            .expect("the place just found or filed");
        (place, budget)
    }

    /// The budget a retry took from, at its place if that still holds it.
    fn at(&mut self, counted: &Counted) -> Option<&mut ServiceRetries> {
        let place = super::place_of(&self.by_service, Some(counted.place), &counted.service)?;
        self.by_service
            .get_index_mut(place)
            .map(|(_, budget)| budget)
    }

    pub fn get(&self, service: &str) -> Option<&ServiceRetries> {
        self.by_service.get(service)
    }

    /// Keeps the budgets of the services `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.by_service.retain(|service, _| keep(service));
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut ServiceRetries)> {
        self.by_service.iter_mut().map(|(s, b)| (&**s, b))
    }

    /// The advice for a retryable failure of a call to `service` (whose budget
    /// exists: the engine makes it before asking). An advice to retry promises
    /// the retry a place in the budget.
    pub fn advise(
        &mut self,
        service: &str,
        ask: Ask,
        breaker: BreakerView,
        now: Duration,
    ) -> Option<Advice> {
        let budget = self.by_service.get_mut(service)?;
        let unit = self.jitter.unit();
        Some(budget.advise(ask, breaker, unit, now))
    }
}

// === impl ServiceRetries ===

impl ServiceRetries {
    pub fn new(service: Arc<str>, config: RetryConfig) -> ServiceRetries {
        ServiceRetries {
            service,
            config,
            slots: [Slot::default(); SLOTS],
            in_flight: 0,
            promises: BinaryHeap::new(),
        }
    }

    pub fn config(&self) -> &RetryConfig {
        &self.config
    }

    /// New settings; what was counted stays (a reload is not a way out of a
    /// spent budget).
    pub fn reconfigure(&mut self, config: RetryConfig) {
        if config.budget_window != self.config.budget_window {
            // Slot ids are measured in the old width; start the window over.
            self.slots = [Slot::default(); SLOTS];
        }
        self.config = config;
    }

    /// The advice for attempt `ask.attempt`'s retryable failure; `unit` is
    /// uniform in `[0, 1)`, for the jitter.
    pub fn advise(&mut self, ask: Ask, breaker: BreakerView, unit: f64, now: Duration) -> Advice {
        self.expire(now);
        let attempts = self.config.attempts;
        let attempt = ask.attempt.max(1);
        let next = attempt.saturating_add(1);
        let give_up = |why| Advice {
            retry: false,
            after: None,
            attempt: next,
            why,
        };
        if attempt >= attempts {
            return give_up(Why::AttemptsUsed { attempt, attempts });
        }
        let open_for = match breaker {
            BreakerView::ForcedOpen => return give_up(Why::ForcedOpen),
            BreakerView::OpenFor(left) => Some(left),
            BreakerView::Admits => None,
        };
        if let Err(spent) = self.room(now) {
            return give_up(Why::Budget(spent));
        }
        let retries = attempts - 1;
        let mut after = self.config.backoff(attempt, unit);
        let mut why = Why::Backoff { next, retries };
        if let Some(upstream) = ask.upstream_after.filter(|u| *u > after) {
            after = upstream;
            why = Why::UpstreamAfter { next, retries };
        }
        if let Some(left) = open_for.filter(|left| *left > after) {
            after = left;
            why = Why::BreakerOpen { next, retries };
        }
        if self.promises.len() < MAX_PROMISES {
            self.promises
                .push(Reverse(now + after + self.config.budget_window));
        }
        Advice {
            retry: true,
            after: Some(after),
            attempt: next,
            why,
        }
    }

    /// Is there room for one more retry now?
    ///
    /// # Errors
    /// [`BudgetSpent`] with the figures, when neither the ratio nor the floor
    /// leaves room.
    pub fn room(&self, now: Duration) -> Result<(), BudgetSpent> {
        let (calls, retries) = self.totals(now);
        let promised = u32::try_from(self.promises.len()).unwrap_or(u32::MAX);
        let used = retries.saturating_add(promised);
        let at_once = self.in_flight.saturating_add(promised);
        let by_floor = at_once < self.config.budget_min_retries;
        let by_ratio =
            u64::from(used + 1) * 100 <= u64::from(self.config.budget_percent) * u64::from(calls);
        if by_floor || by_ratio {
            return Ok(());
        }
        Err(BudgetSpent {
            used,
            calls,
            percent: self.config.budget_percent,
            window: self.config.budget_window,
            at_once,
            floor: self.config.budget_min_retries,
        })
    }

    /// Calls and retries admitted in the window ending `now`.
    pub fn totals(&self, now: Duration) -> (u32, u32) {
        let current = self.slot_id(now);
        self.slots
            .iter()
            .filter(|s| s.id + SLOTS as u64 > current && s.id <= current)
            .fold((0, 0), |(c, r), s| {
                (c.saturating_add(s.calls), r.saturating_add(s.retries))
            })
    }

    /// Retries admitted and not yet reported.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Advice to retry not yet taken up.
    pub fn promised(&self) -> usize {
        self.promises.len()
    }

    /// How long until a denied retry may find room: when the oldest retry
    /// counted leaves the window, or the soonest promise expires.
    fn room_in(&self, now: Duration) -> Duration {
        let current = self.slot_id(now);
        let width = self.width();
        let oldest = self
            .slots
            .iter()
            .filter(|s| s.retries > 0 && s.id + SLOTS as u64 > current && s.id <= current)
            .map(|s| s.id)
            .min();
        let by_window = oldest.map(|id| {
            let leaves = width.as_nanos() * u128::from(id + SLOTS as u64);
            Duration::from_nanos(u64::try_from(leaves).unwrap_or(u64::MAX)).saturating_sub(now)
        });
        let by_promise = self.promises.peek().map(|p| p.0.saturating_sub(now));
        [by_window, by_promise]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(width)
            .max(Duration::from_millis(1))
    }

    fn expire(&mut self, now: Duration) {
        while self.promises.peek().is_some_and(|p| p.0 <= now) {
            self.promises.pop();
        }
    }

    fn width(&self) -> Duration {
        (self.config.budget_window / SLOTS as u32).max(Duration::from_nanos(1))
    }

    fn slot_id(&self, now: Duration) -> u64 {
        u64::try_from(now.as_nanos() / self.width().as_nanos()).unwrap_or(u64::MAX)
    }

    fn slot_mut(&mut self, now: Duration) -> &mut Slot {
        let id = self.slot_id(now);
        let slot = &mut self.slots[(id % SLOTS as u64) as usize];
        if slot.id != id {
            *slot = Slot {
                id,
                calls: 0,
                retries: 0,
            };
        }
        slot
    }

    /// Takes back a count made in slot `id`, if that slot is still counted.
    fn uncount(&mut self, counted: &Counted) {
        let slot = &mut self.slots[(counted.slot % SLOTS as u64) as usize];
        if slot.id == counted.slot {
            slot.calls = slot.calls.saturating_sub(1);
            slot.retries = slot.retries.saturating_sub(u32::from(counted.retry));
        }
    }
}

// === impl Retries as a guard ===

impl Retries {
    /// A retry ended (reported, released, disconnected): it is no longer in flight.
    fn end(&mut self, counted: &mut Counted) {
        if std::mem::take(&mut counted.in_flight) {
            if let Some(budget) = self.at(counted) {
                budget.in_flight = budget.in_flight.saturating_sub(1);
            }
        }
    }

    /// Puts back what `check` took: the call's count, the retry in flight, the
    /// promise it redeemed.
    fn give_back(&mut self, counted: &mut Counted) {
        self.end(counted);
        let Some(budget) = self.at(counted) else {
            return;
        };
        budget.uncount(counted);
        if let Some(expiry) = counted.promise.take() {
            budget.promises.push(Reverse(expiry));
        }
    }
}

impl super::Guard for Retries {
    fn check(&mut self, call: &Call<'_>, out: &mut Checked) -> Verdict {
        // The engine made the budget before the pipeline ran; a service without
        // one is not governed by it.
        let place = super::place_of(&self.by_service, call.places.retry, call.service);
        let Some(place) = place else {
            return Verdict::Allow;
        };
        let (_, budget) = self
            .by_service
            .get_index_mut(place)
            .expect("a place just checked");
        let now = call.now.mono;
        budget.expire(now);
        let retry = call.attempt > 1;
        let mut promise = None;
        if retry {
            let service = Arc::clone(&budget.service);
            let shadow = call.shadow_all;
            if let Some(Reverse(expiry)) = budget.promises.pop() {
                promise = Some(expiry);
                out.vote(Vote::allow(
                    GuardKind::Retry,
                    service,
                    shadow,
                    Reason::Fixed("a retry the daemon advised"),
                ));
            } else {
                match budget.room(now) {
                    Ok(()) => out.vote(Vote::allow(
                        GuardKind::Retry,
                        service,
                        shadow,
                        Reason::Fixed("a retry within the service's retry budget"),
                    )),
                    Err(spent) => {
                        let retry_after = budget.room_in(now);
                        out.vote(Vote::deny(
                            GuardKind::Retry,
                            service,
                            shadow,
                            spent,
                            Some(retry_after),
                        ));
                        if !shadow {
                            return Verdict::Deny;
                        }
                    }
                }
            }
            budget.in_flight += 1;
        }
        let slot = budget.slot_mut(now);
        slot.calls = slot.calls.saturating_add(1);
        slot.retries = slot.retries.saturating_add(u32::from(retry));
        let slot = slot.id;
        out.take(Counted {
            service: Arc::clone(&budget.service),
            place,
            slot,
            retry,
            promise,
            in_flight: retry,
        });
        Verdict::Allow
    }

    fn undo(&mut self, taken: &mut (dyn Any + Send)) {
        self.give_back(super::own(taken));
    }

    fn abort(&mut self, taken: &mut (dyn Any + Send)) {
        self.give_back(super::own(taken));
    }

    fn settle(&mut self, taken: &mut (dyn Any + Send), _report: &Report, _out: &mut Settled) {
        self.end(super::own(taken));
    }

    fn release(&mut self, taken: &mut (dyn Any + Send)) {
        self.end(super::own(taken));
    }

    fn disconnect(&mut self, taken: &mut (dyn Any + Send)) -> Keep {
        self.end(super::own(taken));
        Keep::No
    }
}

#[cfg(test)]
mod tests;
