//! The message types of the wire protocol.
//!
//! bincode encodes an enum by variant index and a struct as its fields in order, so:
//! new variants go at the end, fields are never reordered, and anything else bumps
//! `PROTOCOL_VERSION`. Serde attributes that need self-describing formats (`flatten`,
//! `tag`, `untagged`, `skip_serializing_if`) must not appear here. `#[serde(default)]`
//! and `deny_unknown_fields` only matter to the JSON form used by
//! `automation-framework session`; bincode never reads field names.

use serde::{Deserialize, Serialize};

use super::handshake::{Hello, Welcome};
use super::text::Text;

/// A name a request carries (agent, service, model, lease, route, idempotency
/// key): up to 24 bytes in place, longer on the heap. Decoded from a frame, a
/// short name costs no allocation (`deserialize_str` lends the bytes and
/// `CompactString` copies them in place); on the wire it is a plain string.
/// Made from a `&str` or a `String` with `.into()`.
pub type Name = compact_str::CompactString;

/// The votes of an admission: the usual one or two in place. On the wire the
/// same bytes as a `Vec` (u64 count, then the votes); `.into()` from a `Vec`.
pub type Votes = smallvec::SmallVec<[Vote; 2]>;

/// Everything a client may send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ClientFrame {
    /// Must be the first frame, and only the first.
    Hello(Hello),
    /// One request; the reply carries the same id.
    Request(Envelope),
    /// Several requests answered by one `ServerFrame::Batch`, in the same order.
    Batch(Vec<Envelope>),
}

impl ClientFrame {
    /// Variant index of `ClientFrame::Request` on the wire.
    pub const REQUEST_VARIANT: u32 = 1;

    /// A frame that stands where one was taken out (`std::mem::replace`): a
    /// `Ping`, cheap to make and to drop.
    pub const PLACEHOLDER: ClientFrame = ClientFrame::Request(Envelope {
        id: 0,
        request: Request::Ping,
    });
}

/// Everything the daemon may send.
///
/// A `Reply` is a few hundred bytes because an admission's votes are held in
/// place (`Votes`); boxing it would be the heap allocation per reply that holding
/// them in place avoids, so the size difference between variants is accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[allow(clippy::large_enum_variant)]
pub enum ServerFrame {
    Welcome(Welcome),
    Reply(ReplyEnvelope),
    Batch(Vec<ReplyEnvelope>),
    /// A connection-level error (bad handshake, malformed frame, shutdown); the
    /// daemon closes the connection after sending it.
    Error(ErrorReply),
}

/// `ServerFrame::Reply(ReplyEnvelope { id, response })` for encoding, with the
/// response borrowed: byte for byte the owned frame's encoding (a test holds
/// them equal), without first moving a response of a few hundred bytes into a
/// frame. The daemon writes its usual reply this way.
#[derive(Debug, Clone, Copy)]
pub struct ReplyRef<'a> {
    pub id: u64,
    pub response: &'a Response,
}

impl Serialize for ReplyRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Envelope<'a>(&'a ReplyRef<'a>);
        impl Serialize for Envelope<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut envelope = serializer.serialize_struct("ReplyEnvelope", 2)?;
                envelope.serialize_field("id", &self.0.id)?;
                envelope.serialize_field("response", self.0.response)?;
                envelope.end()
            }
        }
        // `Reply` is `ServerFrame`'s variant 1.
        serializer.serialize_newtype_variant("ServerFrame", 1, "Reply", &Envelope(self))
    }
}

/// A request with the id the client chose for it. Ids need not be unique or ordered;
/// they are echoed so a pipelining client can match replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Envelope {
    pub id: u64,
    pub request: Request,
}

/// A reply to the request with the same id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ReplyEnvelope {
    pub id: u64,
    pub response: Response,
}

/// The request kinds. Append only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Request {
    Ping,
    Status,
    Admit(AdmitRequest),
    Report(ReportRequest),
    Breakers(BreakersRequest),
    Budget(BudgetRequest),
    Quotas(QuotasRequest),
    /// Admin only: change limits, reset windows, refund charges.
    Admin(AdminRequest),
    /// Admin only: override a service's breaker.
    ForceBreaker(ForceBreakerRequest),
    /// Admin only: re-read the daemon's config file, as SIGHUP does.
    Reload,
    /// Scan a text for dangerous calls, secrets and hostile arguments with the
    /// daemon's content rules; changes nothing.
    Check(Payload),
    /// Acquire, renew or release a named exclusive lease (protocol version 3).
    Lease(LeaseRequest),
    /// Which service of a chain to call now (protocol version 3); takes nothing.
    Route(RouteRequest),
}

impl Request {
    /// How many request kinds this build knows; a higher variant index is
    /// answered with `ErrorCode::UnknownRequest` instead of closing the connection.
    pub const KIND_COUNT: u32 = 13;

    /// Every kind's name, as used in logs, metrics and the JSON `"op"` field,
    /// by variant index.
    pub const OPS: [&'static str; Request::KIND_COUNT as usize] = [
        "ping",
        "status",
        "admit",
        "report",
        "breakers",
        "budget",
        "quotas",
        "admin",
        "force_breaker",
        "reload",
        "check",
        "lease",
        "route",
    ];

    /// The variant index on the wire.
    pub fn kind(&self) -> usize {
        match self {
            Request::Ping => 0,
            Request::Status => 1,
            Request::Admit(_) => 2,
            Request::Report(_) => 3,
            Request::Breakers(_) => 4,
            Request::Budget(_) => 5,
            Request::Quotas(_) => 6,
            Request::Admin(_) => 7,
            Request::ForceBreaker(_) => 8,
            Request::Reload => 9,
            Request::Check(_) => 10,
            Request::Lease(_) => 11,
            Request::Route(_) => 12,
        }
    }

    /// The request kind's name, as used in logs and in the JSON `"op"` field.
    pub fn op(&self) -> &'static str {
        Self::OPS[self.kind()]
    }
}

/// The reply kinds. Append only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Response {
    Pong(Pong),
    Status(StatusReport),
    Admit(AdmitReply),
    Report(ReportReply),
    Breakers(BreakersReply),
    /// The request could not be carried out; nothing changed.
    Error(ErrorReply),
    Budget(BudgetReply),
    Quotas(QuotasReply),
    Admin(AdminReply),
    /// The breaker after `ForceBreaker`.
    ForceBreaker(BreakerInfo),
    /// A successful `Reload`; a failed one is answered with `Error`.
    Reload(ReloadReply),
    /// What a `Check` found.
    Check(CheckReply),
    /// The lease after a `Lease` request, or who holds it.
    Lease(LeaseReply),
    /// The service a `Route` chose, or why none.
    Route(RouteReply),
}

/// Reply to `Ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Pong {
    pub ok: bool,
    /// The daemon's software version.
    pub version: String,
    pub session: u64,
    /// The agent name of this session.
    pub agent: String,
}

/// "May I make this call now?" — runs every applicable guard at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct AdmitRequest {
    /// Agent the call is made for; `None` means the session's agent.
    #[serde(default)]
    pub agent: Option<Name>,
    /// The upstream service (breakers are per service; limits may be). Empty when
    /// `route` names a route instead.
    #[serde(default)]
    pub service: Name,
    /// Weight of the call for rate limits and quotas counted in units (e.g.
    /// estimated tokens); those counted in requests take 1. Must be at least 1.
    #[serde(default = "one")]
    pub units: u32,
    /// Estimated cost in USD, reserved against every budget that applies. `None`:
    /// computed from the price table (or 0 when no price applies).
    #[serde(default)]
    pub cost: Option<f64>,
    /// Selects the price entry `"service/model"` before the service's own.
    #[serde(default)]
    pub model: Option<Name>,
    /// Estimated input and output units, priced per input/output unit.
    #[serde(default)]
    pub input_units: u32,
    #[serde(default)]
    pub output_units: u32,
    /// The code or text the call will run or send: scanned by the content guard,
    /// which then votes (protocol version 2).
    #[serde(default)]
    pub payload: Option<Payload>,
    /// 1 for a first call, `n` for its `n - 1`th retry: an admission with
    /// `attempt > 1` is a retry and counts against the service's retry budget.
    #[serde(default = "one")]
    pub attempt: u32,
    /// When a bulkhead is full, wait up to this long for a permit (first come,
    /// first served) instead of being denied at once; bounded by the daemon's
    /// `concurrency.max_wait`. `None` or 0: do not wait.
    #[serde(default)]
    pub wait_ms: Option<u64>,
    /// A lease the call needs: denied while another session holds it; when free,
    /// the admission holds it until reported (with the lease's default TTL).
    #[serde(default)]
    pub lease: Option<Name>,
    /// A route (a chain of services in the config) to admit against instead of
    /// `service`: the first service of the chain that would be admitted is, and
    /// the reply's `service` names it.
    #[serde(default)]
    pub route: Option<Name>,
}

/// A text for the content scanner: the body of a `Check`, or an `Admit`'s payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// `python`, `javascript`, `typescript`, `shell`, `rust`, `go` or `text` (and
    /// their usual aliases: `py`, `js`, `ts`, `sh`, `bash`, `rs`, `golang`, `txt`);
    /// `None`: guessed from the text.
    #[serde(default)]
    pub lang: Option<String>,
    /// At most `content.max_payload` bytes (default and most 1 MiB, `MAX_PAYLOAD_LEN`).
    pub text: String,
}

/// Reply to `Check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct CheckReply {
    /// The language the text was scanned as (given, or guessed).
    pub lang: String,
    /// What was found, in the order of the text; empty when clean.
    pub violations: Vec<Violation>,
    /// Violations found but not listed, so the reply fits a frame (at most
    /// 500 are listed).
    pub omitted: u32,
}

/// One thing the content scanner found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Violation {
    /// `dangerous_call`, `secret`, `path_traversal`, `shell_injection` or `sql_injection`.
    pub kind: String,
    /// The rule's id (`python-eval`, `aws-access-key-id`, …).
    pub rule: String,
    /// `low`, `medium`, `high` or `critical`.
    pub severity: String,
    /// 1-based line of the match.
    pub line: u32,
    /// 1-based column, in characters (not bytes).
    pub column: u32,
    /// The matched text on its line, at most 120 characters; a secret shows at
    /// most its first four characters and its length (`AKIA***(20 chars)`).
    pub excerpt: String,
    pub message: String,
}

/// The combined verdict of an admission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AdmitReply {
    pub allowed: bool,
    /// Present when allowed: hand it back in `report`. It holds what the admission
    /// took (a half-open trial slot, rate units) until reported or disconnected.
    pub reservation: Option<u64>,
    /// The deciding guard when denied.
    pub guard: Option<GuardKind>,
    /// The deciding rule (rate-limit name, or the service of a breaker) when denied.
    pub rule: Option<String>,
    /// Why the call was denied, for humans.
    pub reason: Option<String>,
    /// When denied: how long until the same request can succeed, if it ever can.
    pub retry_after_ms: Option<u64>,
    /// Every guard that looked at the call, in the order they ran.
    #[cfg_attr(
        test,
        proptest(
            strategy = "proptest::strategy::Strategy::prop_map(proptest::collection::vec(proptest::prelude::any::<Vote>(), 0..4), Votes::from_vec)"
        )
    )]
    pub votes: Votes,
    /// The estimate reserved against the budgets, in USD (when allowed).
    pub cost: Option<f64>,
    /// The service the admission was decided for: the one a route chose, or
    /// `None` when the request named its service.
    pub service: Option<String>,
}

/// One guard's opinion on an admission.
///
/// On the wire both texts are plain strings. In memory the rule is shared with
/// the daemon's rule (an `Arc` clone, not a copy) and the reason is a [`Text`]:
/// a fixed reason is a `&'static str`, a formatted one ("1 of burst 100
/// taken") is held in place. Every admission carries a vote per guard, and
/// copying or allocating their texts was the largest part of building a reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Vote {
    pub guard: GuardKind,
    #[cfg_attr(
        test,
        proptest(
            strategy = "proptest::strategy::Strategy::prop_map(proptest::prelude::any::<String>(), std::sync::Arc::from)"
        )
    )]
    pub rule: std::sync::Arc<str>,
    pub allow: bool,
    /// A shadow guard records its decision but never denies.
    pub shadow: bool,
    #[cfg_attr(
        test,
        proptest(
            strategy = "proptest::strategy::Strategy::prop_map(proptest::prelude::any::<String>(), |s| Text::from(s.as_str()))"
        )
    )]
    pub reason: Text,
    pub retry_after_ms: Option<u64>,
}

/// Guard kinds that can vote. Append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum GuardKind {
    Rate,
    Breaker,
    Budget,
    Quota,
    /// The content scanner, on an `Admit`'s payload.
    Content,
    /// Bulkheads (calls in flight per service or agent) and the cap on active agents.
    Concurrency,
    /// A named lease held by another session.
    Lease,
    /// The service's shared retry budget, on an admission with `attempt > 1`.
    Retry,
}

impl GuardKind {
    /// Every kind, in wire order: `ALL[kind.index()] == kind`.
    pub const ALL: [GuardKind; 8] = [
        GuardKind::Rate,
        GuardKind::Breaker,
        GuardKind::Budget,
        GuardKind::Quota,
        GuardKind::Content,
        GuardKind::Concurrency,
        GuardKind::Lease,
        GuardKind::Retry,
    ];

    /// The kind's position in [`GuardKind::ALL`] (its wire index), for tables
    /// indexed by guard such as metric handles.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The kind's name in logs, JSON and the `guard` metric label.
    pub fn name(self) -> &'static str {
        match self {
            GuardKind::Rate => "rate",
            GuardKind::Breaker => "breaker",
            GuardKind::Budget => "budget",
            GuardKind::Quota => "quota",
            GuardKind::Content => "content",
            GuardKind::Concurrency => "concurrency",
            GuardKind::Lease => "lease",
            GuardKind::Retry => "retry",
        }
    }
}

/// "Here is how the call went." Closes a reservation, or reports on a service
/// without one (a call made without admission still tells the breaker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    /// The reservation from `admit`. Exactly one of `reservation` and `service`.
    #[serde(default)]
    pub reservation: Option<u64>,
    /// The service, for an outcome without a reservation.
    #[serde(default)]
    pub service: Option<Name>,
    pub outcome: Outcome,
    /// Units actually used; fewer than admitted gives the difference back to
    /// unit-counted rate limits, more takes the excess.
    #[serde(default)]
    pub units: Option<u32>,
    /// How long the call took; calls slower than the breaker's `slow_call` count as
    /// failures.
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Actual cost in USD. `None`: computed from the price table and the reported
    /// units, or the reserved estimate when neither is known.
    #[serde(default)]
    pub cost: Option<f64>,
    #[serde(default)]
    pub input_units: Option<u32>,
    #[serde(default)]
    pub output_units: Option<u32>,
    /// Makes the charge idempotent: a report repeated with the same key is
    /// acknowledged and counted once, across reconnects and restarts. Defaults to
    /// the reservation id; required for a charge without a reservation.
    #[serde(default)]
    pub idempotency_key: Option<Name>,
    /// The agent a charge without reservation is made for (default: the session's).
    #[serde(default)]
    pub agent: Option<Name>,
    /// The failure may succeed if tried again (a timeout, a 429 or 5xx): the reply
    /// then carries retry advice.
    #[serde(default)]
    pub retryable: bool,
    /// Which attempt this was (1 for the first call); `None`: the admission's.
    #[serde(default)]
    pub attempt: Option<u32>,
    /// The upstream's own Retry-After, when it sent one: advice is never sooner.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
}

/// Reply to `Report`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ReportReply {
    pub ok: bool,
    /// The reservation had already been reported; nothing was counted again.
    pub duplicate: bool,
    /// The service's breaker state after this report (`None` for a duplicate).
    pub breaker: Option<BreakerState>,
    /// USD committed to the budgets by this report (`None` for a duplicate).
    pub charged: Option<f64>,
    /// For a retryable failure: whether to retry, and when.
    pub retry: Option<RetryAdvice>,
}

/// The daemon's answer to a retryable failure: backoff, the upstream's
/// Retry-After, the breaker and the service's shared retry budget, combined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RetryAdvice {
    /// Retry, or give up (attempts used up, or the retry budget is spent).
    pub retry: bool,
    /// When retrying: wait this long first.
    pub after_ms: Option<u64>,
    /// The `attempt` to send on the retry's `admit` and `report`.
    pub attempt: u32,
    /// Why, for humans.
    pub reason: String,
}

/// Acquire (or renew, when this session holds it) or release a named lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    pub name: String,
    /// How long the lease lasts unless renewed; `None`: the configured default.
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    /// Give the lease back instead of taking it.
    #[serde(default)]
    pub release: bool,
    /// The agent holding it (default: the session's).
    #[serde(default)]
    pub agent: Option<String>,
}

/// Reply to `Lease`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct LeaseReply {
    /// This session holds the lease now (false after a release).
    pub granted: bool,
    pub name: String,
    /// Time left on the lease when granted.
    pub expires_in_ms: Option<u64>,
    /// Who holds it, when refused.
    pub holder: Option<LeaseHolder>,
    /// A release found the lease held by this session and gave it back.
    pub released: bool,
}

/// The session holding a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct LeaseHolder {
    pub agent: String,
    pub pid: u32,
    pub uid: u32,
    pub session: u64,
    pub expires_in_ms: u64,
}

/// Which service of a chain to use now: a route named in the config, or a chain
/// given here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct RouteRequest {
    /// A `[[routes]]` name. Exactly one of `route` and `chain`.
    #[serde(default)]
    pub route: Option<String>,
    /// Services in order of preference.
    #[serde(default)]
    pub chain: Vec<String>,
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default = "one")]
    pub units: u32,
    /// Estimated cost in USD; `None`: from the price table, per service.
    #[serde(default)]
    pub cost: Option<f64>,
    #[serde(default)]
    pub model: Option<String>,
}

/// Reply to `Route`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RouteReply {
    /// The service to call now; `None` when every one was skipped.
    pub service: Option<String>,
    /// The services before it (all of them when none fits), and why each was skipped.
    pub skipped: Vec<RouteSkip>,
    /// When none fits: how long until the soonest one might, if known.
    pub retry_after_ms: Option<u64>,
}

/// A service a route passed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RouteSkip {
    pub service: String,
    pub guard: GuardKind,
    pub reason: String,
    pub retry_after_ms: Option<u64>,
}

/// Ask for breaker states: one service, or every known one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct BreakersRequest {
    #[serde(default)]
    pub service: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct BreakersReply {
    pub breakers: Vec<BreakerInfo>,
}

/// A snapshot of one service's circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct BreakerInfo {
    pub service: String,
    pub state: BreakerState,
    /// Consecutive failures counted while closed.
    pub failures: u32,
    /// Failures among the last `window` calls while closed.
    pub window_failures: u32,
    pub window_calls: u32,
    /// Trial calls admitted and not yet reported (half-open).
    pub trials_in_flight: u32,
    /// Successful trial calls so far (half-open).
    pub trial_successes: u32,
    /// Time left before an open breaker lets trial calls through.
    pub open_remaining_ms: Option<u64>,
    /// How many times this breaker has opened since the daemon started.
    pub times_opened: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
    /// Forced by the operator: every call is denied, no transitions.
    ForcedOpen,
    /// Forced by the operator: every call is allowed, outcomes still recorded.
    ForcedClosed,
    /// No breaker: every call is allowed, nothing recorded.
    Disabled,
}

/// Admin only: the operator's override of a service's breaker (SPEC §3.2). A
/// runtime override outlives config changes until it is set back to `auto`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct ForceBreakerRequest {
    pub service: String,
    pub force: BreakerForce,
}

/// What to force a breaker to. Append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum BreakerForce {
    /// Drop the runtime override: the breaker follows its config again (automatic
    /// operation, unless the config's `force` says otherwise).
    Auto,
    /// Deny every call.
    Open,
    /// Allow every call, still recording outcomes.
    Closed,
    /// No breaker: allow every call, record nothing.
    Disabled,
}

/// Ask for the budgets: all of them, or those that apply to one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct BudgetRequest {
    #[serde(default)]
    pub agent: Option<String>,
}

/// Money, in USD. The top-level figures are those of the most specific budget asked
/// for (the agent's own when `agent` was given and has one, else the global one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct BudgetReply {
    pub spent: f64,
    pub reserved: f64,
    pub limit: f64,
    pub remaining: f64,
    pub budgets: Vec<BudgetInfo>,
}

/// One budget in its current period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct BudgetInfo {
    /// `global`, `agent:NAME` or `service:NAME`.
    pub name: String,
    pub spent: f64,
    /// Held by open reservations (admitted, not yet reported).
    pub reserved: f64,
    pub limit: f64,
    /// `limit - spent - reserved`, never below 0.
    pub remaining: f64,
    /// Open reservations whose connection is gone, waiting to be settled by policy
    /// (includes those recovered after a restart).
    pub orphaned: u32,
    /// `never`, `daily`, `weekly`, `monthly`, or a duration like `6h`.
    pub reset: String,
    /// Seconds until the period ends and spending starts again from 0.
    pub resets_in_s: Option<u64>,
}

/// Ask for quota counters: all of them, or one quota's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct QuotasRequest {
    #[serde(default)]
    pub quota: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct QuotasReply {
    pub quotas: Vec<QuotaInfo>,
}

/// One quota counter (one key of one quota) in its current window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct QuotaInfo {
    pub quota: String,
    /// The counter's key (agent, service, `agent/service`, or empty for global).
    pub key: String,
    pub used: u64,
    pub limit: u64,
    /// `minute`, `hour`, `day`, `week`, `month` or `lifetime`.
    pub window: String,
    pub resets_in_s: Option<u64>,
}

/// Admin operations. Each is recorded in the ledger's audit table with the peer's
/// uid and pid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum AdminRequest {
    /// Change a budget's limit (USD). Stored in the ledger: it outlives restarts
    /// and overrides the config's limit for that budget.
    SetLimit { budget: String, limit: f64 },
    /// Start the budget's current period over from 0 spent.
    ResetBudget { budget: String },
    /// Give back a committed charge, named by its idempotency key.
    Refund { key: String },
    /// Start a quota counter's window over from 0.
    ResetQuota { quota: String, key: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AdminReply {
    pub ok: bool,
    /// What was done, for the operator.
    pub message: String,
}

/// Reply to `Reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ReloadReply {
    pub ok: bool,
    /// What the reload kept, rebuilt, and left for a restart.
    pub message: String,
}

/// The daemon's health: the same document `/health` will serve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct StatusReport {
    pub status: Health,
    /// Why the status is not healthy (empty when healthy).
    pub reasons: Vec<String>,
    pub version: String,
    pub uptime_s: u64,
    pub mode: String,
    pub connections: u32,
    /// Distinct agent names with at least one open connection.
    pub active_agents: u32,
    /// Admissions not yet reported.
    pub open_reservations: u64,
    pub circuit_breakers: BreakerCounts,
    /// `ok`, or why the ledger store is failing.
    pub store: String,
    /// The global budget's spending in its current period (USD).
    pub budget_spent: f64,
    pub budget_limit: f64,
    /// Named leases held right now.
    pub leases_held: u32,
    /// Calls in flight per bulkhead key (only keys with calls in flight or waiting).
    pub in_flight: Vec<InFlight>,
}

/// One bulkhead key's occupancy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct InFlight {
    pub bulkhead: String,
    /// The service, agent or `agent/service` the permits are counted for.
    pub key: String,
    pub in_flight: u32,
    pub limit: u32,
    /// Admissions waiting for a permit.
    pub waiting: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    Degraded,
    Unhealthy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct BreakerCounts {
    pub closed: u32,
    pub open: u32,
    pub half_open: u32,
}

/// A typed error: what went wrong and what to do, for a request or a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

/// Error kinds. Append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not one valid message. Connection closed.
    Malformed,
    /// The length prefix exceeded the maximum frame length. Connection closed.
    FrameTooLarge,
    /// The client's protocol version is not this daemon's. Connection closed.
    VersionMismatch,
    /// A request came before the handshake, or a second handshake came. Connection closed.
    HandshakeRequired,
    /// The request kind is unknown to this daemon (newer client). Connection goes on.
    UnknownRequest,
    /// A field had an invalid value; the message says which.
    InvalidArgument,
    /// `report` named a reservation that this daemon never issued or already closed
    /// long ago.
    UnknownReservation,
    /// The service is not declared and the config does not accept unknown services.
    UnknownService,
    /// The daemon is at its connection limit. Connection closed.
    TooManyConnections,
    /// The client was silent for too long (handshake or idle). Connection closed.
    Timeout,
    /// The daemon is shutting down. Connection closed.
    ShuttingDown,
    /// A bug or an unexpected failure inside the daemon.
    Internal,
    /// The peer's credentials do not allow this (connecting, this agent name, or an
    /// admin operation). The message names the uid and the rule.
    NotPermitted,
    /// Temporarily impossible (the ledger store failed, or the same charge is being
    /// committed right now); nothing changed. Retry later.
    Unavailable,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
        ErrorReply {
            code,
            message: message.into(),
        }
    }
}

fn one() -> u32 {
    1
}

impl Default for AdmitRequest {
    /// One unit, no cost estimate (priced by the daemon), the session's agent; set
    /// at least `service`.
    fn default() -> Self {
        AdmitRequest {
            agent: None,
            service: Name::default(),
            units: 1,
            cost: None,
            model: None,
            input_units: 0,
            output_units: 0,
            payload: None,
            attempt: 1,
            wait_ms: None,
            lease: None,
            route: None,
        }
    }
}

impl Default for ReportRequest {
    /// A success with nothing else known; set `reservation` or `service`.
    fn default() -> Self {
        ReportRequest {
            reservation: None,
            service: None,
            outcome: Outcome::Success,
            units: None,
            latency_ms: None,
            cost: None,
            input_units: None,
            output_units: None,
            idempotency_key: None,
            agent: None,
            retryable: false,
            attempt: None,
            retry_after_ms: None,
        }
    }
}

#[cfg(test)]
mod tests;
