//! Dispatch: a decoded request and the session that sent it become a reply.
//!
//! One file per request kind. The decision itself is synchronous and happens when
//! `dispatch` is called, so requests are decided in the order they arrived; what
//! must then wait for the ledger (a reservation, a charge) comes back as a
//! [`Reply::Pending`] future that the handler awaits concurrently with other
//! requests while keeping replies in order. Commands never write to the socket.
//! This is also the edge where admission and guard types become wire types.

mod admin;
mod admit;
mod breakers;
mod budget;
pub mod check;
mod force_breaker;
mod lease;
mod ping;
mod quotas;
mod reload;
mod report;
mod route;
mod status;
mod text;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::access::AccessDenied;
use crate::admission::{AdmissionError, Decision};
use crate::alerts::Alert;
use crate::clock::Moment;
use crate::guard::breaker::Phase;
use crate::money::Usd;
use crate::protocol::{BreakerState, ErrorCode, ErrorReply, Name, Request, Response};
use crate::state::{Limit, Session, State};
use crate::store::StoreError;

/// A response still waiting for the ledger.
pub type ReplyFuture = Pin<Box<dyn Future<Output = Response> + Send + 'static>>;

/// The answer to a request: now, or once the ledger has made it durable.
///
/// `Ready` is large (an admission's votes are held in place, `protocol::Votes`)
/// and not boxed: most replies are ready, and a box would be an allocation each.
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    Ready(Response),
    /// An admission decided now, into the caller's [`Decision`] (the one it
    /// gave [`decide_at`]), in the engine's types: the handler writes its
    /// frame straight from it ([`Reply::encode_admitted`]), its votes made
    /// text as they are written; anywhere else it becomes a `Response`. The
    /// decision stays where the engine wrote it: a few hundred bytes, which
    /// were copied at each of the eight layers a returned value crossed.
    Admitted,
    Pending(ReplyFuture),
}

/// Decides one request now; returns its response, or the wait for it.
///
/// The clock is read once to decide (the request's [`Moment`], which its
/// duration is also measured from) and once when the reply is ready.
///
/// # Errors
/// The future of a reply waiting for the ledger (or a permit, or a scan).
pub fn dispatch(
    state: &State,
    session: &Session,
    request: Request,
) -> Result<Response, ReplyFuture> {
    let kind = request.kind();
    let now = state.moment();
    let mut decision = Decision::default();
    let mut request = request;
    let reply = decide_at(state, session, &mut request, now, &mut decision);
    match reply.now_or_later(&mut decision) {
        Ok(response) => {
            record_duration(kind, now, state.now());
            Ok(response)
        }
        Err(future) => Err(timed(state, kind, now, future)),
    }
}

/// Decides one request at `now`, a reading the caller took; an admission's
/// decision is written into `decision` ([`Reply::Admitted`]). An admit or a
/// report is decided where it lies (its fields may be taken); the other kinds
/// take the request whole. The caller records the request's duration: a
/// waiting reply's through [`timed`], a ready one's ([`record_duration`])
/// with the reading it takes when it is done with the reply: a connection
/// answering pipelined requests takes one reading per request, the end of one
/// standing as the start of the next (`server::handler`), instead of a start
/// and an end each.
pub fn decide_at(
    state: &State,
    session: &Session,
    request: &mut Request,
    now: Moment,
    decision: &mut Decision,
) -> Reply {
    crate::metrics::hot().request(request.kind());
    // The two kinds every call sends are decided where they lie: passed down
    // by value, a request (a couple of hundred bytes) was copied at each layer.
    match request {
        Request::Admit(req) => admit::apply(state, session, req, now, decision),
        Request::Report(req) => report::apply(state, session, req, now),
        other => {
            let request = std::mem::replace(other, Request::Ping);
            decide_owned(state, session, request, now, decision)
        }
    }
}

/// A waiting reply's future, made to record the request's duration when it
/// is ready. The caller's to apply: [`decide_at`] returns its reply as each
/// kind made it, where a reply taken apart and built again to wrap the
/// future was copied whole (a few hundred bytes) on every request.
pub fn timed(state: &State, kind: usize, started: Moment, future: ReplyFuture) -> ReplyFuture {
    let state = state.clone();
    Box::pin(async move {
        let response = future.await;
        record_duration(kind, started, state.now());
        response
    })
}

/// Counts a request of `kind` (`Request::kind`) decided at `started` and
/// answered at `ended` (the state clock's monotonic time).
pub fn record_duration(kind: usize, started: Moment, ended: Duration) {
    let took = ended.saturating_sub(started.mono);
    crate::metrics::hot().duration(kind, took.as_secs_f64());
}

/// The health document, for `/health`.
pub fn health(state: &State) -> crate::protocol::StatusReport {
    status::report(state, state.moment())
}

/// Every other request, taken whole: none of them is on a call's path, and
/// the admin check is made here, once.
fn decide_owned(
    state: &State,
    session: &Session,
    request: Request,
    now: Moment,
    decision: &mut Decision,
) -> Reply {
    if needs_admin(&request) {
        if let Err(denied) = state.require_admin(&session.peer) {
            return Reply::Ready(Response::Error(not_permitted(state, session, &denied)));
        }
    }
    match request {
        Request::Ping => Reply::Ready(ping::apply(state, session)),
        Request::Status => Reply::Ready(Response::Status(status::report(state, now))),
        Request::Admit(mut req) => admit::apply(state, session, &mut req, now, decision),
        Request::Report(mut req) => report::apply(state, session, &mut req, now),
        Request::Breakers(req) => Reply::Ready(breakers::apply(state, req, now.mono)),
        Request::Budget(req) => Reply::Ready(budget::apply(state, req, now)),
        Request::Quotas(req) => Reply::Ready(quotas::apply(state, req, now)),
        Request::Admin(req) => admin::apply(state, session, req, now),
        Request::ForceBreaker(req) => {
            Reply::Ready(force_breaker::apply(state, session, req, now.mono))
        }
        Request::Reload => reload::apply(state, session),
        Request::Check(payload) => check::apply(state, payload),
        Request::Route(req) => Reply::Ready(route::apply(state, session, req, now)),
        Request::Lease(req) => Reply::Ready(lease::apply(state, session, req, now)),
    }
}

/// Requests that change the daemon for every agent, and so need an admin peer
/// ([`State::is_admin`]). Exhaustive on purpose: a new request kind must decide.
fn needs_admin(request: &Request) -> bool {
    match request {
        Request::Ping
        | Request::Status
        | Request::Admit(_)
        | Request::Report(_)
        | Request::Breakers(_)
        | Request::Budget(_)
        | Request::Quotas(_)
        | Request::Check(_)
        | Request::Lease(_)
        | Request::Route(_) => false,
        Request::Admin(_) | Request::ForceBreaker(_) | Request::Reload => true,
    }
}

/// Refuses a request the peer's credentials do not allow, and logs who asked (the
/// kernel's uid, gid and pid). The connection goes on.
fn not_permitted(state: &State, session: &Session, denied: &AccessDenied) -> ErrorReply {
    state.counters().hit(match denied {
        AccessDenied::NotAllowed { .. } => Limit::NotPermitted,
        AccessDenied::AgentBound { .. } => Limit::AgentName,
        AccessDenied::NotAdmin { .. } => Limit::AdminOnly,
    });
    let peer = &session.peer;
    let reason = denied.to_string();
    log::warn!(
        session = session.id, agent = &*session.agent, peer_uid = peer.uid, peer_gid = peer.gid, peer_pid = peer.pid, reason = reason.as_str();
        "refused a request of session {} (uid {} gid {} pid {}): {reason}",
        session.id, peer.uid, peer.gid, peer.pid
    );
    ErrorReply::new(ErrorCode::NotPermitted, reason)
}

// === impl Reply ===

impl Reply {
    /// The response, waiting for the ledger if needed; `decision` is the one
    /// the reply was decided into.
    pub async fn into_response(self, decision: &mut Decision) -> Response {
        match self.now_or_later(decision) {
            Ok(response) => response,
            Err(future) => future.await,
        }
    }

    /// The response when it is ready, else the wait for it; `decision` is the
    /// one the reply was decided into.
    ///
    /// # Errors
    /// The future of a reply waiting for the ledger (or a permit, or a scan).
    pub fn now_or_later(self, decision: &mut Decision) -> Result<Response, ReplyFuture> {
        match self {
            Reply::Ready(response) => Ok(response),
            Reply::Admitted => Ok(Response::Admit(admit::into_reply(std::mem::take(decision)))),
            Reply::Pending(future) => Err(future),
        }
    }

    /// Appends the frame of an admission's reply to request `id` to `buf`,
    /// byte for byte the frame of its `Response` (see [`Reply::Admitted`]).
    ///
    /// # Errors
    /// Fails, leaving `buf` as it was, when the frame would exceed the frame
    /// limit.
    pub fn encode_admitted(
        buf: &mut bytes::BytesMut,
        id: u64,
        decision: &Decision,
    ) -> Result<(), crate::protocol::EncodeError> {
        admit::encode(buf, id, decision)
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error(ErrorReply::new(code, message))
}

/// The answer when the ledger could not make something durable: nothing was
/// acknowledged, so the caller can retry.
fn unavailable(err: &StoreError) -> Response {
    if let StoreError::Refused(_) = err {
        // Not a failure of the ledger: this charge will never be filed.
        return error(ErrorCode::InvalidArgument, err.to_string());
    }
    error(
        ErrorCode::Unavailable,
        format!("{err}; budget-governed requests are refused until the ledger recovers (fail closed), retry later"),
    )
}

/// Parses a dollar amount from the wire.
fn dollars(field: &str, value: f64) -> Result<Usd, ErrorReply> {
    Usd::from_dollars(value).map_err(|e| invalid(format!("{field}: {e}")))
}

/// The fields `admit` and `route` share, checked alike: the agent the call is
/// for (a per-request agent must pass the same `[[agents]]` binding as the
/// handshake's, or the override would be a way around it), the model's name,
/// `units` ≥ 1 and the cost estimate. The agent comes back as a [`Name`],
/// inline up to 24 bytes: no allocation, whether it is the session's or the
/// request's.
fn call_fields(
    state: &State,
    session: &Session,
    agent: Option<&str>,
    model: Option<&str>,
    units: u32,
    cost: Option<f64>,
) -> Result<(Name, std::num::NonZeroU32, Option<Usd>), ErrorReply> {
    let name = agent.unwrap_or(&session.agent);
    crate::names::check_name(name)
        .map_err(|e| invalid(format!("agent name {} {e}", crate::names::shown(name))))?;
    if agent.is_some() {
        if let Err(denied) = session.access().check_agent(&session.peer, name) {
            return Err(not_permitted(state, session, &denied));
        }
    }
    if let Some(model) = model {
        crate::names::check_name(model)
            .map_err(|e| invalid(format!("model name {} {e}", crate::names::shown(model))))?;
    }
    let units = std::num::NonZeroU32::new(units)
        .ok_or_else(|| invalid("units must be at least 1, got 0"))?;
    let cost = cost.map(|c| dollars("cost", c)).transpose()?;
    Ok((Name::from(name), units, cost))
}

fn invalid(message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(ErrorCode::InvalidArgument, message)
}

/// The single mapping from admission errors to wire error codes.
impl From<AdmissionError> for ErrorReply {
    fn from(err: AdmissionError) -> ErrorReply {
        let code = match err {
            AdmissionError::UnknownService(_) | AdmissionError::TooManyServices(_) => {
                ErrorCode::UnknownService
            }
            AdmissionError::UnknownReservation(_) | AdmissionError::Released(_) => {
                ErrorCode::UnknownReservation
            }
            AdmissionError::Busy(_)
            | AdmissionError::TooManyReservationsForUid { .. }
            | AdmissionError::TooManyOpenReservations(_) => ErrorCode::Unavailable,
            AdmissionError::NotOwner { .. } => ErrorCode::NotPermitted,
            AdmissionError::TooManyReservations(_)
            | AdmissionError::UnknownRoute { .. }
            | AdmissionError::KeyRequired
            | AdmissionError::Invalid(_)
            | AdmissionError::UnknownBudget(_)
            | AdmissionError::UnknownQuota(_)
            | AdmissionError::NothingToRefund(_) => ErrorCode::InvalidArgument,
        };
        ErrorReply::new(code, err.to_string())
    }
}

impl From<AdmissionError> for Response {
    fn from(err: AdmissionError) -> Response {
        Response::Error(err.into())
    }
}

impl From<Phase> for BreakerState {
    fn from(phase: Phase) -> BreakerState {
        match phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open => BreakerState::Open,
            Phase::HalfOpen => BreakerState::HalfOpen,
            Phase::ForcedOpen => BreakerState::ForcedOpen,
            Phase::ForcedClosed => BreakerState::ForcedClosed,
            Phase::Disabled => BreakerState::Disabled,
        }
    }
}

/// Logs a breaker state change: openings at warning level, everything else at info.
/// Openings, and closings after being open, are raised as alerts.
fn log_transition(state: &State, service: &str, from: Phase, to: Phase) {
    match (from, to) {
        (_, Phase::Open) => state.alerts().raise(Alert::BreakerOpened {
            service: service.to_owned(),
            from: format!("{:?}", BreakerState::from(from)),
        }),
        (Phase::Open | Phase::HalfOpen, Phase::Closed) => {
            state.alerts().raise(Alert::BreakerClosed {
                service: service.to_owned(),
            });
        }
        _ => {}
    }
    let (from, to) = (BreakerState::from(from), BreakerState::from(to));
    let state_name = serde_json::to_value(to)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    metrics::counter!(crate::metrics::BREAKER_TRANSITIONS, "service" => service.to_owned(), "state" => state_name).increment(1);
    if to == BreakerState::Open {
        log::warn!(message_id = crate::logging::message_id::BREAKER_OPENED, service = service, breaker_from = format!("{from:?}"), breaker_to = format!("{to:?}"); "breaker of {service:?} opened (was {from:?})");
    } else {
        log::info!(message_id = crate::logging::message_id::BREAKER_CHANGED, service = service, breaker_from = format!("{from:?}"), breaker_to = format!("{to:?}"); "breaker of {service:?}: {from:?} -> {to:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_guard_labels_match_the_guard_names() {
        for guard in crate::protocol::GuardKind::ALL {
            assert_eq!(crate::protocol::GuardKind::ALL[guard.index()], guard);
            let json = serde_json::to_value(guard).unwrap();
            assert_eq!(json.as_str(), Some(guard.name()), "the wire name");
        }
    }

    #[test]
    fn every_request_kind_index_names_its_op() {
        let requests = [
            Request::Ping,
            Request::Status,
            Request::Reload,
            Request::Admit(Default::default()),
            Request::Report(Default::default()),
        ];
        for request in requests {
            let body = crate::protocol::frame::encode(&request).unwrap();
            let index = u32::from_le_bytes(body[..4].try_into().unwrap()) as usize;
            assert_eq!(request.kind(), index, "{request:?}");
        }
    }
}
