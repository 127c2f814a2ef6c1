//! The admission's vocabulary: who asks, what is planned, what was decided, what
//! a report says and what it did, and why a request could not be carried out.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use super::commit::{Durable, PendingAdmit, PendingReport};
use crate::guard::breaker::Phase;
use crate::money::Usd;

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub session: u64,
    /// The connection's kernel uid: open reservations are capped per uid, and
    /// a lease's holder is named by it.
    pub uid: u32,
    pub agent: &'a str,
    /// The peer's pid (from the kernel), to name a lease's holder.
    pub pid: u32,
}

/// A planned call.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a> {
    pub service: &'a str,
    pub units: NonZeroU32,
    pub input_units: u32,
    pub output_units: u32,
    /// The caller's own estimate; `None` prices the call from the config.
    pub cost: Option<Usd>,
    pub model: Option<&'a str>,
    /// The payload's scan, made outside the lock (`guard::content`).
    pub content: Option<&'a crate::guard::content::Scanned>,
    /// 1 for a first call; more is a retry, counted against the retry budget.
    pub attempt: u32,
    /// A `[[routes]]` name to admit against instead of `service`: the first
    /// service of its chain that admits the call is chosen.
    pub route: Option<&'a str>,
    /// The lease the call needs.
    pub lease: Option<&'a str>,
    /// The caller will wait for a bulkhead permit rather than be refused.
    pub wait: Option<Wait<'a>>,
}

/// An admission that waits its turn when a bulkhead is full.
#[derive(Clone, Copy)]
pub struct Wait<'a> {
    /// Its place in line from an earlier try; `None` the first time.
    pub ticket: Option<u64>,
    /// How it is told it may have room now.
    pub wake: &'a Arc<dyn crate::guard::concurrency::Wake>,
}

impl std::fmt::Debug for Wait<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wait")
            .field("ticket", &self.ticket)
            .finish()
    }
}

/// The verdict on a planned call.
#[derive(Debug, Default)]
pub struct Decision {
    pub allowed: bool,
    pub reservation: Option<u64>,
    /// Every rule's vote, in the order the guards ran; typed (numbers and
    /// denials), made text by `cmd/` outside the engine lock.
    pub votes: Votes,
    /// Index in `votes` of the vote that denied.
    pub decisive: Option<usize>,
    /// Breaker state changes this admission caused (Open → HalfOpen by time).
    pub transitions: Vec<(Arc<str>, Phase, Phase)>,
    /// The estimate reserved against the budgets.
    pub estimate: Usd,
    /// The service a route chose (or tried last, when denied); `None` when
    /// the plan named its service.
    pub service: Option<String>,
    /// The services of a route passed over before it, each with the vote that
    /// ruled it out.
    pub skipped: Vec<(String, Vote)>,
    /// Refused for want of a bulkhead permit, and standing in line under this
    /// ticket ([`Plan::wait`]): wait to be woken, then try again with it.
    pub waiting: Option<u64>,
}

pub use crate::guard::{Reason, Vote, Votes};

/// What a route found: the service to call now, and why each before it (all
/// of them, when none fits) was passed over.
#[derive(Debug, Default)]
pub struct Routed {
    pub service: Option<String>,
    /// Each service passed over, with the vote that ruled it out.
    pub skipped: Vec<(String, Vote)>,
    /// Breaker state changes looking caused (Open → HalfOpen by time).
    pub transitions: Vec<(Arc<str>, Phase, Phase)>,
}

/// Where an admission's decision is, once made into the caller's
/// [`Decision`] ([`Admission::admit_into`]).
#[derive(Debug)]
pub enum Filed {
    /// In the caller's decision: denied, or allowed with nothing to write;
    /// answer now.
    Decided,
    /// Allowed, holding money or durable quota usage: the decision moved into
    /// the pending commit; [`Admission::commit`] it, and answer with what the
    /// commit yields. Boxed: inline, the decision in it would make every
    /// `Filed` (and each `Result` it passes through) as large as a decision,
    /// and this path writes to the ledger, which costs far more than a box.
    Durable(Box<Durable<PendingAdmit>>),
}

/// A decision, and whether it must be made durable before it may be
/// acknowledged.
#[derive(Debug)]
pub enum Admitted {
    /// Denied, or allowed with nothing to write: answer now.
    Decided(Decision),
    /// Allowed, holding money or durable quota usage: [`Admission::commit`] it,
    /// and answer with what the commit yields.
    Durable(Durable<PendingAdmit>),
}

/// An outcome to record.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub failure: bool,
    pub units: Option<u32>,
    pub input_units: Option<u32>,
    pub output_units: Option<u32>,
    pub cost: Option<Usd>,
    pub latency: Option<Duration>,
    /// A failure that may succeed if tried again: the settlement carries advice.
    pub retryable: bool,
    /// The attempt that was made; `None`: the admission's (1 without one).
    pub attempt: Option<u32>,
    /// The upstream's own Retry-After.
    pub upstream_after: Option<Duration>,
}

/// What a report asks the caller to do next.
#[derive(Debug)]
pub enum Reporting {
    /// Done in memory; nothing to write.
    Settled(Settlement),
    /// [`Admission::commit`] it; the commit yields the settlement.
    Durable(Durable<PendingReport>),
    /// The reservation is not in memory: ask the ledger whether `key` was charged
    /// (a report repeated after a restart), then answer duplicate or unknown.
    Lookup { key: String, reservation: u64 },
}

/// What a report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The charge was made before; nothing was counted again.
    pub duplicate: bool,
    /// The service, when there is a `transition` to log (empty otherwise: most
    /// reports change nothing, and need not copy the name).
    pub service: String,
    pub phase: Option<Phase>,
    pub transition: Option<(Phase, Phase)>,
    /// Committed to the budgets.
    pub charged: Option<Usd>,
    /// For a retryable failure: whether and when to retry.
    pub advice: Option<crate::guard::retry::Advice>,
    /// The service the report was about, for the advice's metrics (empty for
    /// a duplicate).
    pub advised_service: String,
}

/// Why a request could not be carried out at all (as opposed to a denial, which is
/// a normal answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    // The service name was checked (at most 128 bytes) before it got here, so the
    // config hint may repeat it whole.
    #[error("unknown service {shown}; declare it under [services.{name}] in the config, or set daemon.allow_unknown_services = true", shown = crate::names::shown(.0), name = .0)]
    UnknownService(String),
    #[error("the daemon already tracks {0} services (daemon.max_services); refusing a new one")]
    TooManyServices(usize),
    #[error("this connection already holds {0} open reservations (daemon.max_reservations_per_connection); report outcomes before admitting more")]
    TooManyReservations(usize),
    #[error("uid {uid} already holds {cap} open reservations, orphans of its closed connections included (daemon.max_reservations_per_uid); report outcomes, or wait for orphans to settle after budget.orphan_timeout, before admitting more")]
    TooManyReservationsForUid { uid: u32, cap: usize },
    #[error("the daemon holds {0} open reservations, its limit (daemon.max_reservations); retry once outcomes are reported or orphans settle after budget.orphan_timeout")]
    TooManyOpenReservations(usize),
    #[error("reservation {0} was never issued by this daemon, or was closed too long ago to tell")]
    UnknownReservation(u64),
    #[error(
        "reservation {0} was released when its connection closed; its outcome was not counted"
    )]
    Released(u64),
    #[error("reservation {0} is being committed right now; retry in a moment")]
    Busy(u64),
    #[error("a charge without a reservation needs an idempotency_key, so that a repeated report is counted once")]
    KeyRequired,
    #[error("{0}")]
    Invalid(String),
    #[error("no route named {}; routes are the [[routes]] of the config{}", crate::names::shown(.name), known_routes(.known))]
    UnknownRoute { name: String, known: Vec<String> },
    #[error("no budget named {}; budgets are \"global\", \"agent:NAME\" and \"service:NAME\" as configured", crate::names::shown(.0))]
    UnknownBudget(String),
    #[error("no quota named {}", crate::names::shown(.0))]
    UnknownQuota(String),
    #[error("no charge with idempotency key {} to refund (never charged, or already refunded)", crate::names::shown(.0))]
    NothingToRefund(String),
    #[error("reservation {reservation} was admitted for agent {}; report it from a connection acting as that agent", crate::names::shown(owner))]
    NotOwner { reservation: u64, owner: String },
}

// === impl Decision ===

impl Decision {
    /// Overwrites this with a denial by the last of its votes (the pipeline
    /// wrote them in place).
    pub(super) fn deny(&mut self, transitions: Vec<(Arc<str>, Phase, Phase)>) {
        self.allowed = false;
        self.reservation = None;
        self.decisive = Some(self.votes.len().saturating_sub(1));
        self.transitions = transitions;
        self.estimate = Usd::ZERO;
        self.service = None;
        self.skipped.clear();
        self.waiting = None;
    }

    /// Overwrites this with an admission holding reservation `id`, by its
    /// votes (the pipeline wrote them in place). Field by field: a struct
    /// expression assigned whole is built aside and copied.
    pub(super) fn allow(
        &mut self,
        id: u64,
        transitions: Vec<(Arc<str>, Phase, Phase)>,
        estimate: Usd,
    ) {
        self.allowed = true;
        self.reservation = Some(id);
        self.decisive = None;
        self.transitions = transitions;
        self.estimate = estimate;
        self.service = None;
        self.skipped.clear();
        self.waiting = None;
    }

    /// The vote that denied, if any.
    pub fn decisive_vote(&self) -> Option<&Vote> {
        self.decisive.and_then(|idx| self.votes.get(idx))
    }
}

// === impl Settlement ===

impl Settlement {
    /// A repeated report: acknowledged, counted nowhere.
    pub fn duplicate() -> Settlement {
        Settlement {
            duplicate: true,
            service: String::new(),
            phase: None,
            transition: None,
            charged: None,
            advice: None,
            advised_service: String::new(),
        }
    }
}

/// `: a, b` listing the configured routes, or a hint when there are none.
fn known_routes(known: &[String]) -> String {
    if known.is_empty() {
        " (none is configured)".to_owned()
    } else {
        format!(": {}", known.join(", "))
    }
}
