//! Dispatch: a decoded request and the session that sent it become a `Response`.
//!
//! One file per request kind, each a function of `(state, session, request, now)`.
//! Commands never write to the socket, which lets the handler answer single requests,
//! pipelined requests and batches the same way. This is also the edge where guard
//! and admission types are translated into wire types.

mod admit;
mod breakers;
mod force_breaker;
mod ping;
mod report;
mod status;

use crate::access::AccessDenied;
use crate::admission::AdmissionError;
use crate::guard::breaker::Phase;
use crate::protocol::{BreakerState, ErrorCode, ErrorReply, Request, Response};
use crate::state::{Limit, Session, State};

/// Carries out one request.
pub fn dispatch(state: &State, session: &Session, request: Request) -> Response {
    let now = state.now();
    if needs_admin(&request) {
        if let Err(denied) = state.require_admin(&session.peer) {
            return not_permitted(state, session, &denied);
        }
    }
    match request {
        Request::Ping => ping::apply(state, session),
        Request::Status => Response::Status(status::report(state, now)),
        Request::Admit(req) => admit::apply(state, session, req, now),
        Request::Report(req) => report::apply(state, session, req, now),
        Request::Breakers(req) => breakers::apply(state, req, now),
        Request::ForceBreaker(req) => force_breaker::apply(state, session, req, now),
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
        | Request::Breakers(_) => false,
        Request::ForceBreaker(_) => true,
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error(ErrorReply::new(code, message))
}

/// Refuses a request the peer's credentials do not allow, and logs who asked (the
/// kernel's uid, gid and pid). The connection goes on.
fn not_permitted(state: &State, session: &Session, denied: &AccessDenied) -> Response {
    state.counters().hit(match denied {
        AccessDenied::NotAllowed { .. } => Limit::NotPermitted,
        AccessDenied::AgentBound { .. } => Limit::AgentName,
        AccessDenied::NotAdmin { .. } => Limit::AdminOnly,
    });
    let peer = &session.peer;
    let reason = denied.to_string();
    log::warn!(
        session = session.id, agent = session.agent.as_str(), peer_uid = peer.uid, peer_gid = peer.gid, peer_pid = peer.pid, reason = reason.as_str();
        "refused a request of session {} (uid {} gid {} pid {}): {reason}",
        session.id, peer.uid, peer.gid, peer.pid
    );
    error(ErrorCode::NotPermitted, reason)
}

/// The single mapping from admission errors to wire error codes.
impl From<AdmissionError> for ErrorReply {
    fn from(err: AdmissionError) -> ErrorReply {
        let code = match err {
            AdmissionError::UnknownService(_) | AdmissionError::TooManyServices(_) => {
                ErrorCode::UnknownService
            }
            AdmissionError::TooManyReservations(_) => ErrorCode::InvalidArgument,
            AdmissionError::UnknownReservation(_) => ErrorCode::UnknownReservation,
        };
        ErrorReply::new(code, err.to_string())
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
fn log_transition(service: &str, from: Phase, to: Phase) {
    let (from, to) = (BreakerState::from(from), BreakerState::from(to));
    if to == BreakerState::Open {
        log::warn!(service = service, breaker_from = format!("{from:?}"), breaker_to = format!("{to:?}"); "breaker of {service:?} opened (was {from:?})");
    } else {
        log::info!(service = service, breaker_from = format!("{from:?}"), breaker_to = format!("{to:?}"); "breaker of {service:?}: {from:?} -> {to:?}");
    }
}
