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
}

/// Everything the daemon may send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ServerFrame {
    Welcome(Welcome),
    Reply(ReplyEnvelope),
    Batch(Vec<ReplyEnvelope>),
    /// A connection-level error (bad handshake, malformed frame, shutdown); the
    /// daemon closes the connection after sending it.
    Error(ErrorReply),
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
    /// Admin only: override a service's breaker.
    ForceBreaker(ForceBreakerRequest),
}

impl Request {
    /// How many request kinds this build knows; a higher variant index is
    /// answered with `ErrorCode::UnknownRequest` instead of closing the connection.
    pub const KIND_COUNT: u32 = 6;

    /// The request kind's name, as used in logs and in the JSON `"op"` field.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Status => "status",
            Request::Admit(_) => "admit",
            Request::Report(_) => "report",
            Request::Breakers(_) => "breakers",
            Request::ForceBreaker(_) => "force_breaker",
        }
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
    /// The breaker after `ForceBreaker`.
    ForceBreaker(BreakerInfo),
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct AdmitRequest {
    /// Agent the call is made for; `None` means the session's agent.
    #[serde(default)]
    pub agent: Option<String>,
    /// The upstream service (breakers are per service; limits may be).
    pub service: String,
    /// Weight of the call for rate limits counted in units (e.g. estimated tokens);
    /// limits counted in requests take 1. Must be at least 1.
    #[serde(default = "one")]
    pub units: u32,
}

/// The combined verdict of an admission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    pub votes: Vec<Vote>,
}

/// One guard's opinion on an admission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Vote {
    pub guard: GuardKind,
    pub rule: String,
    pub allow: bool,
    /// A shadow guard records its decision but never denies.
    pub shadow: bool,
    pub reason: String,
    pub retry_after_ms: Option<u64>,
}

/// Guard kinds that can vote. Append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum GuardKind {
    Rate,
    Breaker,
}

/// "Here is how the call went." Closes a reservation, or reports on a service
/// without one (a call made without admission still tells the breaker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    /// The reservation from `admit`. Exactly one of `reservation` and `service`.
    #[serde(default)]
    pub reservation: Option<u64>,
    /// The service, for an outcome without a reservation.
    #[serde(default)]
    pub service: Option<String>,
    pub outcome: Outcome,
    /// Units actually used; fewer than admitted gives the difference back to
    /// unit-counted rate limits, more takes the excess.
    #[serde(default)]
    pub units: Option<u32>,
    /// How long the call took; calls slower than the breaker's `slow_call` count as
    /// failures.
    #[serde(default)]
    pub latency_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
}

/// Reply to `Report`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ReportReply {
    pub ok: bool,
    /// The reservation had already been reported; nothing was counted again.
    pub duplicate: bool,
    /// The service's breaker state after this report (`None` for a duplicate).
    pub breaker: Option<BreakerState>,
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

/// The daemon's health: the same document `/health` will serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

#[cfg(test)]
mod tests;
