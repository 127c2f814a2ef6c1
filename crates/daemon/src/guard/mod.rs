//! Guards: the decisions, each in its own file, each a stage of the admission
//! pipeline.
//!
//! A guard holds its own state and implements [`Guard`]: its `check` of a
//! planned call (one vote per rule that applies, and what an allowed check
//! took), how to put that back exactly when a later guard denies (`undo`), how
//! to give it back when the admission could not be made durable (`abort`), what
//! a reported outcome does with it (`settle`), and what happens to it when the
//! call ends without an outcome (`release`) or its connection goes away
//! (`disconnect`). The admission engine runs the guards in a fixed order and a
//! reservation keeps what each one took, type-erased ([`Taken`]); nothing
//! outside a guard's file knows what that is.
//!
//! Architecture Invariant: guards never do I/O, log, sleep or read the clock.
//! `now` comes in the [`Call`]; votes carry numbers and typed denials, and are
//! turned into text by `cmd/` after the engine lock is released.

pub mod breaker;
pub mod budget;
pub mod concurrency;
pub mod content;
pub mod index;
pub mod lease;
pub mod period;
pub mod quota;
pub mod rate;
pub mod retry;

use std::any::Any;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

pub use breaker::{Breaker, BreakerConfig, BreakerDenial, Force, Pass, Transition, Trip};
pub use rate::{Cells, RateDenial, RateRule, Scope, Weight};

pub use crate::clock::Moment;
pub use crate::protocol::GuardKind;

use crate::money::Usd;
use period::Period;

/// A planned call, as every guard sees it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub agent: &'a str,
    pub service: &'a str,
    pub model: Option<&'a str>,
    pub units: NonZeroU32,
    /// What the call is estimated to cost (priced before the guards run).
    pub estimate: Usd,
    pub now: Moment,
    /// The whole daemon runs in shadow mode: decide and record, never deny.
    pub shadow_all: bool,
    /// The payload's scan, made before the lock was taken (`None`: no payload).
    pub content: Option<&'a content::Scanned>,
    /// 1 for a first call, more for a retry (the retry budget's business).
    pub attempt: u32,
    /// The connection asking, and its peer's pid and uid (a lease's holder).
    pub session: u64,
    pub pid: u32,
    pub uid: u32,
    /// The lease the call needs, if any.
    pub lease: Option<&'a str>,
    /// The caller's place in the bulkheads' lines, when it already waits.
    pub waiter: Option<u64>,
    /// Where the service's breaker and retry budget are.
    pub places: Places,
}

/// Where the engine found the call's service in the breakers' and the retry
/// budgets' tables, when it made sure both exist: so the service's name is
/// hashed once per admission, not once per guard. The engine's call names its
/// service by the tables' own shared name, so a guard checks a place holds
/// the call's service by comparing pointers; it looks the name up when the
/// place does not (a call the engine did not prepare, as in the guards' tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Places {
    pub breaker: Option<usize>,
    pub retry: Option<usize>,
}

/// A per-service map with places (the breakers', the retry budgets').
pub(crate) type ServiceMap<V> = indexmap::IndexMap<Arc<str>, V, foldhash::fast::RandomState>;

/// Where `service` is in `map`: at `hint` when the entry there is the one
/// named by the same shared name (the engine's call, a reservation's take),
/// else by lookup.
#[inline]
pub(crate) fn place_of<V>(
    map: &ServiceMap<V>,
    hint: Option<usize>,
    service: &str,
) -> Option<usize> {
    hint.filter(|&place| {
        map.get_index(place)
            .is_some_and(|(name, _)| std::ptr::eq(&**name, service))
    })
    .or_else(|| map.get_index_of(service))
}

/// A guard's answer to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// A vote that is not in shadow mode said no: the admission stops here.
    Deny,
}

/// One rule's vote on a call.
#[derive(Debug)]
pub struct Vote {
    pub guard: GuardKind,
    /// The rule's name (rate limit, quota, budget) or the breaker's service:
    /// shared, so a vote costs no copy of it.
    pub rule: Arc<str>,
    pub allow: bool,
    /// A shadow rule records its decision but never denies.
    pub shadow: bool,
    pub reason: Reason,
    pub retry_after: Option<Duration>,
}

/// Why a rule voted as it did: numbers and typed denials, made text only when
/// a reply or a log line needs it (outside the engine lock).
#[derive(Debug)]
pub enum Reason {
    Fixed(&'static str),
    /// `taken` of a burst of `burst` cells.
    Burst {
        taken: u32,
        burst: u32,
    },
    /// `n` taken of `limit` per `window`.
    Counted {
        n: u64,
        limit: u64,
        window: Period,
    },
    /// `estimate` reserved, `left` left of `limit`.
    Reserved {
        estimate: Usd,
        left: Usd,
        limit: Usd,
    },
    /// `n` calls (or agents) in flight of at most `max`.
    InFlight {
        n: u32,
        max: u32,
    },
    /// A rate limit of `rate` per `per` (burst `burst`) had no room now: the
    /// usual denial, typed here rather than boxed (no allocation, and no
    /// `fmt` machinery for its text), as a client hammering a limit it
    /// exceeds meets it on every request. Reads as
    /// [`rate::RateDenial::NotUntil`] does.
    RateExceeded {
        rate: u32,
        per: Duration,
        burst: u32,
    },
    /// The guard's typed denial.
    Denied(Box<dyn std::error::Error + Send + Sync>),
}

/// What one guard took for one call, held by the reservation until the call
/// is settled. Only the guard that made it looks inside.
pub struct Taken {
    /// The guard's place in the pipeline.
    pub(crate) guard: usize,
    pub(crate) what: Stash,
}

/// A guard's take, type-erased, kept inline (up to 64 bytes, the largest take
/// of the built-in guards) rather than in a box of its own: a heap allocation
/// per guard per admission was the largest share of the hot path's.
pub(crate) type Stash = smallbox::SmallBox<dyn Any + Send, smallbox::space::S8>;

/// The bytes a take may have and still be kept inline ([`Stash`]'s space:
/// eight words). Guards assert at compile time that their usual take fits.
pub(crate) const INLINE_TAKE: usize = 64;

/// Whether a take of type `T` is kept inline, for the guards' compile-time checks.
pub(crate) const fn fits_inline<T>() -> bool {
    std::mem::size_of::<T>() <= INLINE_TAKE && std::mem::align_of::<T>() <= 8
}

/// Every rule's vote on one admission: inline for up to five (the breaker's,
/// a rate limit's, and a bulkhead's, the active-agent cap's and a lease's
/// when those are configured). Written where the decision lies
/// ([`Checked::new`] borrows it), so its size is not copied per admission.
pub type Votes = smallvec::SmallVec<[Vote; 5]>;

/// What every guard of one admission took, in pipeline order: inline up to
/// six (the breaker, a retry count, a lease, bulkhead permits, rate cells and
/// a budget hold, when all of them are configured).
pub type TakenList = smallvec::SmallVec<[Taken; 6]>;

/// What a guard's check hands back to the admission. The votes go straight
/// into the list the caller lends (an admission's decision's own).
pub struct Checked<'v> {
    pub votes: &'v mut Votes,
    /// Breaker phase changes the check caused (Open → HalfOpen by time).
    pub transitions: Vec<(Arc<str>, breaker::Phase, breaker::Phase)>,
    pub taken: TakenList,
    /// The guard being run, so `take` files under the right one.
    pub(crate) current: usize,
}

/// An outcome reported for a call.
#[derive(Debug, Clone)]
pub struct Report {
    pub failure: bool,
    /// Units actually used, when known.
    pub units: Option<u32>,
    pub latency: Option<Duration>,
    pub now: Moment,
}

/// What settling did that the reply reports.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settled {
    pub phase: Option<breaker::Phase>,
    pub transition: Option<(breaker::Phase, breaker::Phase)>,
}

/// Whether what a guard took must outlive the connection that took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Nothing left to hold (or it went back at once).
    No,
    /// Money: it stays reserved, as an orphan, until settled by policy.
    Money,
}

/// One stage of the admission pipeline.
///
/// Every method runs under the engine lock, in microseconds, and allocates only
/// what it must keep.
pub trait Guard: Send {
    /// Votes on `call`; takes what an allowed call needs ([`Checked::take`]).
    /// On [`Verdict::Deny`] the guard itself has taken nothing.
    fn check(&mut self, call: &Call<'_>, out: &mut Checked) -> Verdict;

    /// Puts back exactly what `check` took: a later guard denied the same call,
    /// under the same lock, so nothing else ran in between.
    fn undo(&mut self, taken: &mut (dyn Any + Send));

    /// Gives back what was taken when the admission could not be made durable;
    /// other calls may have run since, so arithmetically, not by restoring.
    fn abort(&mut self, taken: &mut (dyn Any + Send));

    /// The call's outcome is known.
    fn settle(&mut self, taken: &mut (dyn Any + Send), report: &Report, out: &mut Settled);

    /// The call ends without an outcome: released, a repeated report, an orphan
    /// settled by policy. What a guard holds on the caller's behalf goes back;
    /// what was consumed stays consumed.
    fn release(&mut self, taken: &mut (dyn Any + Send));

    /// The connection that made the call is gone. Gives back at once what must
    /// not wait for a report that will never come (a breaker's trial slot); says
    /// whether the rest must outlive the connection.
    fn disconnect(&mut self, taken: &mut (dyn Any + Send)) -> Keep;

    /// The ledger entries that make what was taken survive a crash (a budget
    /// reservation, durable quota usage), for the allowed admission `reservation`.
    fn entries(
        &self,
        _taken: &(dyn Any + Send),
        _reservation: u64,
        _call: &Call<'_>,
        _out: &mut Vec<crate::store::Entry>,
    ) {
    }
}

// === impl Vote ===

impl Vote {
    /// A rule's "yes", and why.
    pub fn allow(guard: GuardKind, rule: Arc<str>, shadow: bool, reason: Reason) -> Vote {
        Vote {
            guard,
            rule,
            allow: true,
            shadow,
            reason,
            retry_after: None,
        }
    }

    /// A rule's "no" with a reason of numbers, and when the same call could pass.
    pub fn deny_for(
        guard: GuardKind,
        rule: Arc<str>,
        shadow: bool,
        reason: Reason,
        retry_after: Option<Duration>,
    ) -> Vote {
        Vote {
            guard,
            rule,
            allow: false,
            shadow,
            reason,
            retry_after,
        }
    }

    /// A rule's "no" with its typed denial, and when the same call could pass.
    pub fn deny(
        guard: GuardKind,
        rule: Arc<str>,
        shadow: bool,
        denial: impl std::error::Error + Send + Sync + 'static,
        retry_after: Option<Duration>,
    ) -> Vote {
        Vote::deny_for(
            guard,
            rule,
            shadow,
            Reason::Denied(Box::new(denial)),
            retry_after,
        )
    }
}

// === impl Checked ===

impl<'v> Checked<'v> {
    /// A check whose votes are pushed onto `votes` (emptied first).
    pub(crate) fn new(votes: &'v mut Votes) -> Checked<'v> {
        votes.clear();
        Checked {
            votes,
            transitions: Vec::new(),
            taken: TakenList::new(),
            current: 0,
        }
    }

    /// Keeps what the running guard took, for the reservation.
    pub fn take(&mut self, what: impl Any + Send) {
        self.taken.push(Taken {
            guard: self.current,
            what: stash(what),
        });
    }

    /// Records a vote. Past the inline five, room for eight is made at once,
    /// so the list grows on the heap once.
    pub fn vote(&mut self, vote: Vote) {
        if self.votes.len() == self.votes.inline_size() {
            self.votes
                .reserve_exact(8_usize.saturating_sub(self.votes.len()));
        }
        self.votes.push(vote);
    }
}

// === impl Taken ===

impl fmt::Debug for Taken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Taken").field("guard", &self.guard).finish()
    }
}

// === impl Reason ===

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Fixed(text) => f.write_str(text),
            Reason::Burst { taken, burst } => write!(f, "{taken} of burst {burst} taken"),
            Reason::Counted { n, limit, window } => {
                write!(f, "{n} of {limit} per {} taken", window.window_name())
            }
            Reason::Reserved {
                estimate,
                left,
                limit,
            } => write!(f, "{estimate} reserved, {left} left of {limit}"),
            Reason::InFlight { n, max } => write!(f, "{n} of {max} in flight"),
            // The typed denial's words, once.
            Reason::RateExceeded { rate, per, burst } => rate::RateDenial::NotUntil {
                rate: *rate,
                per: *per,
                burst: *burst,
                retry_after: Duration::ZERO,
            }
            .fmt(f),
            Reason::Denied(denial) => write!(f, "{denial}"),
        }
    }
}

impl Reason {
    /// The typed denial, for callers that act on its kind.
    pub fn denial<T: std::error::Error + 'static>(&self) -> Option<&T> {
        match self {
            Reason::Denied(denial) => denial.downcast_ref(),
            _ => None,
        }
    }
}

/// The counter key a call by `agent` to `service` falls under for a keyed guard.
/// NUL cannot appear in validated names, so the pair is unambiguous.
pub fn scope_key(scope: rate::Scope, agent: &str, service: &str) -> String {
    match scope {
        Scope::Global => String::new(),
        Scope::Agent => agent.to_owned(),
        Scope::Service => service.to_owned(),
        Scope::AgentService => {
            // Not format!: this runs on every admission.
            let mut key = String::with_capacity(agent.len() + 1 + service.len());
            key.push_str(agent);
            key.push('\0');
            key.push_str(service);
            key
        }
    }
}

/// A rule's filter: an empty list matches every name.
pub fn filter_matches(list: &[String], name: &str) -> bool {
    list.is_empty() || list.iter().any(|n| n == name)
}

/// How a counter key reads in replies and logs (`agent/service` for pairs).
pub fn display_key(key: &str) -> String {
    key.replace('\0', "/")
}

/// Type-erases what a guard took, inline when it fits.
pub(crate) fn stash(what: impl Any + Send) -> Stash {
    smallbox::smallbox!(what)
}

/// Downcasts what a guard took back to the type it took; a mismatch is a bug
/// in the pipeline's bookkeeping.
pub(crate) fn own<T: 'static>(taken: &mut (dyn Any + Send)) -> &mut T {
    taken
        .downcast_mut::<T>()
        .expect("a guard is only handed back what it took")
}
