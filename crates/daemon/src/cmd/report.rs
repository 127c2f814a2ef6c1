//! `Report`: the outcome of a call. Closes its reservation, commits the actual
//! cost durably (idempotently, by key), and feeds the service's breaker.

use std::time::Duration;

use super::{dollars, invalid, log_transition, unavailable, Reply};
use crate::admission::{Moment, Outcome, Reporting, Settlement};
use crate::guard::retry::{Advice, Why};
use crate::names::{check_name, shown};
use crate::protocol::{ErrorReply, Name, ReportReply, ReportRequest, Response, RetryAdvice};
use crate::state::{Session, State};

/// Longest idempotency key, in bytes.
const MAX_KEY_LEN: usize = 256;

/// Decides `req` where it lies (its idempotency key is taken).
pub(super) fn apply(
    state: &State,
    session: &Session,
    req: &mut ReportRequest,
    now: Moment,
) -> Reply {
    match start(state, session, req, now) {
        Ok(Reporting::Settled(settlement)) => Reply::Ready(reply(state, settlement)),
        Ok(Reporting::Durable(durable)) => {
            // The commit settles the reservation and counts the charge when the
            // ledger answers, whether or not this reply is still wanted then.
            let committed = state.commit(durable);
            let state = state.clone();
            Reply::Pending(Box::pin(async move {
                match committed.await {
                    Ok(settlement) => reply(&state, settlement),
                    Err(err) => unavailable(&err),
                }
            }))
        }
        Ok(Reporting::Lookup { key, reservation }) => {
            // Not in memory: a report repeated after a restart is in the ledger.
            let charged = state.store().is_charged(&key);
            let state = state.clone();
            Reply::Pending(Box::pin(async move {
                match charged.await {
                    Ok(true) => reply(&state, Settlement::duplicate()),
                    Ok(false) => {
                        crate::admission::AdmissionError::UnknownReservation(reservation).into()
                    }
                    Err(err) => unavailable(&err),
                }
            }))
        }
        Err(err) => Reply::Ready(Response::Error(err)),
    }
}

fn start(
    state: &State,
    session: &Session,
    req: &mut ReportRequest,
    now: Moment,
) -> Result<Reporting, ErrorReply> {
    if let Some(key) = &req.idempotency_key {
        if key.is_empty() || key.len() > MAX_KEY_LEN || key.chars().any(char::is_control) {
            return Err(invalid(format!(
                "idempotency_key must be 1 to {MAX_KEY_LEN} printable bytes"
            )));
        }
    }
    if req.attempt == Some(0) {
        return Err(invalid(
            "attempt is 1-based: 1 for a first call, 2 for its first retry; got 0",
        ));
    }
    let outcome = Outcome {
        failure: req.outcome == crate::protocol::Outcome::Failure,
        units: req.units,
        input_units: req.input_units,
        output_units: req.output_units,
        cost: req.cost.map(|c| dollars("cost", c)).transpose()?,
        latency: req.latency_ms.map(Duration::from_millis),
        retryable: req.retryable,
        attempt: req.attempt,
        upstream_after: req.retry_after_ms.map(Duration::from_millis),
    };
    // The admission keeps the key (in the reservation, then the ledger).
    let key = req.idempotency_key.take().map(Name::into_string);
    let admission = state.admission();
    let result = match (req.reservation, req.service.as_deref()) {
        (Some(id), None) => {
            // A reservation is its agent's: only a peer that may act as that agent
            // (the `[[agents]]` bindings, as at the handshake) may settle it, so it
            // stays reportable after a reconnect or a restart, and a per-request
            // agent override can report what it admitted. Admins may settle any.
            let may_settle = |owner: &str| {
                *owner == *session.agent
                    || session.access().check_agent(&session.peer, owner).is_ok()
                    || state.is_admin(&session.peer)
            };
            let result = admission.report_by(id, may_settle, key, outcome, now);
            if let Err(crate::admission::AdmissionError::NotOwner { owner, .. }) = &result {
                let peer = &session.peer;
                log::warn!(
                    session = session.id, reservation = id, peer_uid = peer.uid, peer_gid = peer.gid, peer_pid = peer.pid;
                    "refused a report of session {} (uid {} pid {}, agent {:?}): reservation {id} belongs to agent {owner:?}",
                    session.id, peer.uid, peer.pid, session.agent
                );
            }
            result
        }
        (None, Some(service)) => {
            check_name(service).map_err(|e| invalid(format!("service name {} {e}", shown(service))))?;
            let agent = req.agent.as_deref().unwrap_or(&session.agent);
            if req.agent.is_some() {
                if let Err(denied) = session.access().check_agent(&session.peer, agent) {
                    return Err(super::not_permitted(state, session, &denied));
                }
            }
            check_name(agent).map_err(|e| invalid(format!("agent name {} {e}", shown(agent))))?;
            admission.report_unreserved(agent, service, key, outcome, now)
        }
        (Some(_), Some(_)) => {
            return Err(invalid("give either reservation (for an admitted call) or service (for a call made without admission), not both",
            ))
        }
        (None, None) => {
            return Err(invalid("missing reservation: give the reservation id from admit, or service for a call made without admission",
            ))
        }
    };
    result.map_err(ErrorReply::from)
}

fn reply(state: &State, settlement: Settlement) -> Response {
    if let Some((from, to)) = settlement.transition {
        log_transition(state, &settlement.service, from, to);
    }
    let retry = settlement
        .advice
        .map(|advice| advice_reply(&settlement.advised_service, advice));
    Response::Report(ReportReply {
        ok: true,
        duplicate: settlement.duplicate,
        breaker: settlement.phase.map(Into::into),
        charged: settlement.charged.map(|c| c.dollars()),
        retry,
    })
}

/// The wire form of retry advice, counted per service in the metrics.
fn advice_reply(service: &str, advice: Advice) -> RetryAdvice {
    let service = service.to_owned();
    if advice.retry {
        metrics::counter!(crate::metrics::RETRIES_ADVISED, "service" => service).increment(1);
    } else {
        let why = match advice.why {
            Why::AttemptsUsed { .. } => "attempts",
            Why::Budget(_) => "budget",
            _ => "breaker",
        };
        metrics::counter!(crate::metrics::RETRIES_REFUSED, "service" => service, "reason" => why)
            .increment(1);
    }
    RetryAdvice {
        retry: advice.retry,
        after_ms: advice.after.map(super::text::millis_up),
        attempt: advice.attempt,
        reason: advice.why.to_string(),
    }
}
