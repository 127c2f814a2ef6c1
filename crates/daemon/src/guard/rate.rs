//! Rate limits: GCRA from `governor`, over a keyed state store of our own.
//!
//! governor does the arithmetic (theoretical arrival times, `NotUntil`, the "more
//! than the burst can ever hold" error). Its state lives in [`RateStore`], which we
//! own, for two things governor does not offer: undoing a check exactly when another
//! guard of the same admission says no (admission is all-or-nothing), and giving
//! back the unused part of a weighted estimate when the call reports what it really
//! used (tokens per minute are admitted on an estimate).
//!
//! Undo and adjust are only exact while nothing else touches the key in between; the
//! admission layer guarantees that by running every guard under one short lock.

use std::any::Any;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

use super::index::RuleIndex;
use crate::clock::SharedClock;

/// What a rule is keyed by: one bucket for everyone, or one per agent, per service,
/// or per agent and service pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Global,
    Agent,
    Service,
    AgentService,
}

/// What one admission costs against a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weight {
    /// Every admission takes one cell (requests per period).
    Requests,
    /// An admission takes as many cells as its `units` (tokens per period).
    Units,
}

/// The validated description of a rule, from config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateSpec {
    pub name: String,
    pub scope: Scope,
    /// Services the rule applies to; empty means every service.
    pub services: Vec<String>,
    /// Agents the rule applies to; empty means every agent.
    pub agents: Vec<String>,
    pub weight: Weight,
    /// Cells replenished per `per`.
    pub rate: NonZeroU32,
    pub per: Duration,
    /// Cells available at once.
    pub burst: NonZeroU32,
    pub shadow: bool,
}

/// One configured rate limit and its buckets.
pub struct RateRule {
    spec: RateSpec,
    /// The rule's name, shared with every vote it casts.
    name: Arc<str>,
    /// Time to replenish one cell.
    interval: Duration,
    limiter: RateLimiter<BucketKey, RateStore, CallClock, NoOpMiddleware<Duration>>,
    store: RateStore,
}

/// Cells an admission took from one rule, kept in its reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cells {
    pub key: BucketKey,
    pub taken: u32,
    /// The bucket's state before the take, for an exact undo ([`NO_BUCKET`]:
    /// the bucket did not exist). A plain number rather than an `Option`, so
    /// that a one-rule take fits the reservation's inline space.
    before: u64,
}

/// `Cells::before` of a bucket the take created: no arrival time is this late
/// (it is 584 years after the limiter's start).
const NO_BUCKET: u64 = u64::MAX;

/// Why a rule refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RateDenial {
    /// Not now: the bucket is short; the same request fits after `retry_after`.
    #[error("rate limit of {rate} per {} (burst {burst}) exceeded", Per(*per))]
    NotUntil {
        rate: u32,
        per: Duration,
        burst: u32,
        retry_after: Duration,
    },
    /// Never: the request asks for more cells than the bucket can ever hold.
    #[error("a weight of {asked} can never pass a limit with burst {burst}; split the call or raise the burst")]
    Never { asked: u32, burst: u32 },
}

/// A rule's period as `Duration`'s `Debug` writes it ("1s", "3600s", "100ms"),
/// without its general formatting for the usual whole seconds or milliseconds:
/// every denial's reason names it, and a client hammering a limit it exceeds
/// must not cost more per request than one that is let through.
pub struct Per(pub Duration);

impl Per {
    /// The period as a whole number and its unit ("3600", "s"), when it is
    /// whole seconds or whole milliseconds (every period a config can give
    /// but the odd one).
    pub fn whole(&self) -> Option<(u64, &'static str)> {
        let (secs, nanos) = (self.0.as_secs(), self.0.subsec_nanos());
        if nanos == 0 {
            Some((secs, "s"))
        } else if secs == 0 && nanos % 1_000_000 == 0 {
            Some((u64::from(nanos / 1_000_000), "ms"))
        } else {
            None
        }
    }
}

impl std::fmt::Display for Per {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.whole() {
            Some((n, unit)) => {
                f.write_str(itoa::Buffer::new().format(n))?;
                f.write_str(unit)
            }
            None => write!(f, "{:?}", self.0),
        }
    }
}

/// The keyed GCRA state: theoretical arrival time per key, in nanoseconds since the
/// limiter's start.
#[derive(Debug, Clone, Default)]
pub struct RateStore(Arc<Mutex<Buckets>>);

/// Keys come from clients (agent names): foldhash is seeded per process, and
/// several times cheaper than SipHash on these short keys.
type Buckets = HashMap<BucketKey, Nanos, foldhash::fast::RandomState>;

std::thread_local! {
    /// The value `measure_and_replace` found, for the `check` that called it on
    /// this thread: one lookup per check instead of a `get` and then governor's.
    static FOUND: std::cell::Cell<Option<Nanos>> = const { std::cell::Cell::new(None) };

    /// The request's `now`, while [`RateRule::check`] runs on this thread.
    static CALL_NOW: std::cell::Cell<Option<Duration>> = const { std::cell::Cell::new(None) };
}

/// governor's clock for a rule: the `now` the request was decided at while a
/// check runs (a request reads the clock once, not once more per rule), the
/// daemon's clock otherwise (a purge).
#[derive(Debug, Clone)]
struct CallClock(SharedClock);

/// [`CALL_NOW`] set for as long as this lives, cleared however the check
/// ends (a panic included), so a later purge on the thread reads the clock.
struct CallNow;

impl CallNow {
    fn set(now: Duration) -> CallNow {
        CALL_NOW.with(|call_now| call_now.set(Some(now)));
        CallNow
    }
}

impl Drop for CallNow {
    fn drop(&mut self) {
        CALL_NOW.with(|call_now| call_now.set(None));
    }
}

impl governor::clock::Clock for CallClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        CALL_NOW
            .with(std::cell::Cell::get)
            .unwrap_or_else(|| self.0.now())
    }
}

/// The longest key kept inside the table itself.
const INLINE: usize = 30;

/// A bucket's key as the store keeps it: inside the table when it is short (an
/// agent or service name, or `agent\0service`, of up to 30 bytes: the usual case),
/// on the heap otherwise. A million agents are then one allocation (the table)
/// instead of a million small ones scattered among everything else the daemon
/// allocated meanwhile, which glibc can give back only where whole pages are
/// free: the table goes back to the kernel the moment a purge shrinks it. Looked
/// up by its bytes (`Borrow<[u8]>`), so hashing and equality are those of the
/// key's bytes, whichever way it is stored.
#[derive(Debug, Clone)]
pub enum BucketKey {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

/// Buckets forgotten by the purges of every rule since the last [`take_forgotten`].
/// Process-wide because what it stands for is: heap memory the allocator may now
/// hold on to (glibc keeps small freed blocks), which the maintenance task hands
/// back to the kernel when enough was freed to be worth a walk of the heap.
static FORGOTTEN: AtomicUsize = AtomicUsize::new(0);

/// Buckets forgotten by purges since the last call, and starts counting afresh.
pub fn take_forgotten() -> usize {
    FORGOTTEN.swap(0, Ordering::Relaxed)
}

// === impl RateRule ===

impl RateRule {
    /// Builds the rule and its empty buckets on `clock`.
    ///
    /// # Errors
    /// When `per / rate` is below one nanosecond (governor cannot represent it).
    pub fn new(spec: RateSpec, clock: SharedClock) -> Result<RateRule, String> {
        let interval = spec.per / spec.rate.get();
        let quota = Quota::with_period(interval)
            .ok_or_else(|| {
                format!(
                    "rate {} per {:?} is faster than one per nanosecond",
                    spec.rate, spec.per
                )
            })?
            .allow_burst(spec.burst);
        let store = RateStore::default();
        let limiter = RateLimiter::new(quota, store.clone(), CallClock(clock));
        Ok(RateRule {
            name: Arc::from(spec.name.as_str()),
            spec,
            interval,
            limiter,
            store,
        })
    }

    pub fn spec(&self) -> &RateSpec {
        &self.spec
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn shadow(&self) -> bool {
        self.spec.shadow
    }

    /// Does this rule govern a call by `agent` to `service`?
    pub fn applies(&self, agent: &str, service: &str) -> bool {
        let matches =
            |list: &[String], name: &str| list.is_empty() || list.iter().any(|n| n == name);
        matches(&self.spec.services, service) && matches(&self.spec.agents, agent)
    }

    /// The bucket a call by `agent` to `service` counts against: built in
    /// place, without a heap allocation for names of the usual length.
    pub fn key(&self, agent: &str, service: &str) -> BucketKey {
        BucketKey::of(self.spec.scope, agent, service)
    }

    /// Cells a call of `units` takes from this rule.
    pub fn weight_of(&self, units: NonZeroU32) -> NonZeroU32 {
        match self.spec.weight {
            Weight::Requests => NonZeroU32::MIN,
            Weight::Units => units,
        }
    }

    /// Takes `n` cells from `key`'s bucket, or says when (or that never) they fit.
    /// Nothing is taken on a denial.
    ///
    /// # Errors
    /// [`RateDenial::NotUntil`] with the wait, or [`RateDenial::Never`].
    pub fn check(
        &self,
        key: impl Into<BucketKey>,
        n: NonZeroU32,
        now: Duration,
    ) -> Result<Cells, RateDenial> {
        let key = key.into();
        FOUND.with(|found| found.set(None));
        let checked = {
            let _now = CallNow::set(now);
            self.limiter.check_key_n(&key, n)
        };
        match checked {
            Ok(Ok(())) => Ok(Cells {
                key,
                taken: n.get(),
                // What the store held before (set by `measure_and_replace`, which
                // governor called just now on this thread).
                before: FOUND
                    .with(std::cell::Cell::take)
                    .map_or(NO_BUCKET, Nanos::as_u64),
            }),
            Ok(Err(not_until)) => Err(RateDenial::NotUntil {
                rate: self.spec.rate.get(),
                per: self.spec.per,
                burst: self.spec.burst.get(),
                retry_after: not_until.wait_time_from(now),
            }),
            Err(governor::InsufficientCapacity(burst)) => Err(RateDenial::Never {
                asked: n.get(),
                burst,
            }),
        }
    }

    /// Puts the bucket back exactly as it was before `cells` were taken.
    pub fn undo(&self, cells: &Cells) {
        self.store.restore(&cells.key, cells.before);
    }

    /// Settles a weighted admission: gives back cells not used, or takes the excess
    /// (spend is a fact, so an overrun delays the next calls).
    pub fn settle(&self, cells: &Cells, used: u32) {
        if self.spec.weight != Weight::Units || used == cells.taken {
            return;
        }
        let step = u64::try_from(self.interval.as_nanos()).unwrap_or(u64::MAX);
        let delta = step.saturating_mul(u64::from(used.abs_diff(cells.taken)));
        self.store.shift(&cells.key, delta, used > cells.taken);
    }

    /// Gives `cells` back arithmetically (other checks may have run since they
    /// were taken, so the bucket cannot simply be restored).
    pub fn refund(&self, cells: &Cells) {
        let step = u64::try_from(self.interval.as_nanos()).unwrap_or(u64::MAX);
        self.store.shift(
            &cells.key,
            step.saturating_mul(u64::from(cells.taken)),
            false,
        );
    }

    /// Forgets buckets that are full again (indistinguishable from new ones), so key
    /// churn cannot grow memory without bound (governor#171).
    pub fn purge(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Buckets currently held.
    pub fn bucket_count(&self) -> usize {
        self.limiter.len()
    }
}

impl std::fmt::Debug for RateRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateRule")
            .field("spec", &self.spec)
            .finish()
    }
}

/// The configured rate limits: the pipeline's second stage.
#[derive(Debug, Default)]
pub struct RateLimits {
    rules: Vec<Arc<RateRule>>,
    /// Which rules may apply to a call (`guard/index.rs`), so an admission never
    /// visits the rules written for other services or agents.
    index: RuleIndex,
}

/// What an admission took from the rate limits that apply to it. Each entry
/// holds its rule, so what a reload replaced is still given back to the buckets
/// it was taken from.
type Held = smallvec::SmallVec<[(Arc<RateRule>, Cells); 1]>;

// The usual take (one rule) is kept inline in the reservation.
const _: () = assert!(super::fits_inline::<Held>());

// === impl RateLimits ===

impl RateLimits {
    pub fn new(rules: Vec<Arc<RateRule>>) -> RateLimits {
        let index = index_of(&rules);
        RateLimits { rules, index }
    }

    pub fn rules(&self) -> &[Arc<RateRule>] {
        &self.rules
    }

    /// Replaces the rules (a reload keeps the `Arc`s of unchanged ones).
    pub fn replace(&mut self, rules: Vec<Arc<RateRule>>) {
        *self = RateLimits::new(rules);
    }

    /// The rules that may apply to a call by `agent` to `service`, by index.
    pub fn candidates<'a>(
        &'a self,
        agent: &str,
        service: &str,
    ) -> impl Iterator<Item = &'a Arc<RateRule>> + 'a {
        let rules = &self.rules;
        self.index
            .candidates(agent, service)
            .map(move |pos| &rules[pos])
    }
}

fn index_of(rules: &[Arc<RateRule>]) -> RuleIndex {
    RuleIndex::new(
        rules
            .iter()
            .map(|rule| (rule.spec.services.as_slice(), rule.spec.agents.as_slice())),
    )
}

impl super::Guard for RateLimits {
    fn check(&mut self, call: &super::Call<'_>, out: &mut super::Checked) -> super::Verdict {
        let mut held = Held::new();
        for rule in self.candidates(call.agent, call.service) {
            if !rule.applies(call.agent, call.service) {
                continue;
            }
            let shadow = call.shadow_all || rule.shadow();
            let key = rule.key(call.agent, call.service);
            match rule.check(key, rule.weight_of(call.units), call.now.mono) {
                Ok(cells) => {
                    out.vote(super::Vote::allow(
                        super::GuardKind::Rate,
                        Arc::clone(&rule.name),
                        shadow,
                        super::Reason::Burst {
                            taken: cells.taken,
                            burst: rule.spec.burst.get(),
                        },
                    ));
                    held.push((Arc::clone(rule), cells));
                }
                Err(denial) => {
                    let vote = match denial {
                        RateDenial::NotUntil {
                            rate,
                            per,
                            burst,
                            retry_after,
                        } => super::Vote::deny_for(
                            super::GuardKind::Rate,
                            Arc::clone(&rule.name),
                            shadow,
                            super::Reason::RateExceeded { rate, per, burst },
                            Some(retry_after),
                        ),
                        never @ RateDenial::Never { .. } => super::Vote::deny(
                            super::GuardKind::Rate,
                            Arc::clone(&rule.name),
                            shadow,
                            never,
                            None,
                        ),
                    };
                    out.vote(vote);
                    if !shadow {
                        for (rule, cells) in held.iter().rev() {
                            rule.undo(cells);
                        }
                        return super::Verdict::Deny;
                    }
                }
            }
        }
        if !held.is_empty() {
            out.take(held);
        }
        super::Verdict::Allow
    }

    fn undo(&mut self, taken: &mut (dyn Any + Send)) {
        for (rule, cells) in super::own::<Held>(taken).iter().rev() {
            rule.undo(cells);
        }
    }

    fn abort(&mut self, taken: &mut (dyn Any + Send)) {
        for (rule, cells) in super::own::<Held>(taken).iter() {
            rule.refund(cells);
        }
    }

    fn settle(
        &mut self,
        taken: &mut (dyn Any + Send),
        report: &super::Report,
        _out: &mut super::Settled,
    ) {
        if let Some(used) = report.units {
            for (rule, cells) in super::own::<Held>(taken).iter() {
                rule.settle(cells, used);
            }
        }
    }

    fn release(&mut self, _taken: &mut (dyn Any + Send)) {
        // Cells are spent by the attempt, reported or not.
    }

    fn disconnect(&mut self, _taken: &mut (dyn Any + Send)) -> super::Keep {
        super::Keep::No
    }
}

// === impl RateStore ===

impl RateStore {
    fn lock(&self) -> MutexGuard<'_, Buckets> {
        // A panic while holding this lock cannot leave a half-written entry.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn restore(&self, key: &BucketKey, before: u64) {
        let mut map = self.lock();
        if before == NO_BUCKET {
            map.remove(key.as_bytes());
        } else {
            map.insert(key.clone(), Nanos::new(before));
        }
    }

    /// Moves a key's arrival time later (`later`) or earlier by `delta` nanoseconds.
    fn shift(&self, key: &BucketKey, delta: u64, later: bool) {
        if let Some(tat) = self.lock().get_mut(key.as_bytes()) {
            let value = tat.as_u64();
            let value = if later {
                value.saturating_add(delta)
            } else {
                value.saturating_sub(delta)
            };
            *tat = Nanos::new(value);
        }
    }
}

impl StateStore for RateStore {
    type Key = BucketKey;

    fn measure_and_replace<T, F, E>(&self, key: &BucketKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut map = self.lock();
        match map.get_mut(key.as_bytes()) {
            Some(tat) => {
                FOUND.with(|found| found.set(Some(*tat)));
                let (out, next) = f(Some(*tat))?;
                *tat = next;
                Ok(out)
            }
            None => {
                let (out, next) = f(None)?;
                map.insert(key.clone(), next);
                Ok(out)
            }
        }
    }
}

impl ShrinkableKeyedStateStore<BucketKey> for RateStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, tat| *tat > drop_below);
        FORGOTTEN.fetch_add(before - map.len(), Ordering::Relaxed);
    }

    /// Gives the table back when at most a quarter of it is used: a burst of keys
    /// leaves a table sized for the burst (33 bytes a slot) after its keys are
    /// forgotten. A steady set of keys, which would fill it again, is left alone,
    /// so it is not rehashed at every purge.
    fn shrink_to_fit(&self) {
        let mut map = self.lock();
        if map.len() <= map.capacity() / 4 {
            map.shrink_to_fit();
        }
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

// === impl BucketKey ===

impl BucketKey {
    /// The bucket a call by `agent` to `service` falls under for `scope`: the
    /// same bytes as [`super::scope_key`], built in place.
    pub fn of(scope: Scope, agent: &str, service: &str) -> BucketKey {
        let parts: [&[u8]; 3] = match scope {
            Scope::Global => [b"", b"", b""],
            Scope::Agent => [agent.as_bytes(), b"", b""],
            Scope::Service => [service.as_bytes(), b"", b""],
            Scope::AgentService => [agent.as_bytes(), b"\0", service.as_bytes()],
        };
        let len: usize = parts.iter().map(|p| p.len()).sum();
        match u8::try_from(len) {
            Ok(short) if len <= INLINE => {
                let mut bytes = [0; INLINE];
                let mut at = 0;
                for part in parts {
                    bytes[at..at + part.len()].copy_from_slice(part);
                    at += part.len();
                }
                BucketKey::Inline { len: short, bytes }
            }
            _ => BucketKey::Heap(parts.concat().into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            BucketKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            BucketKey::Heap(bytes) => bytes,
        }
    }
}

impl std::borrow::Borrow<[u8]> for BucketKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// As the bytes hash, so a lookup by `&[u8]` finds the key (`Borrow`'s contract).
impl std::hash::Hash for BucketKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq for BucketKey {
    fn eq(&self, other: &BucketKey) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for BucketKey {}

impl From<&str> for BucketKey {
    fn from(key: &str) -> BucketKey {
        BucketKey::of(Scope::Agent, key, "")
    }
}

impl From<String> for BucketKey {
    fn from(key: String) -> BucketKey {
        BucketKey::from(key.as_str())
    }
}

impl PartialEq<&str> for BucketKey {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

#[cfg(test)]
mod tests;
