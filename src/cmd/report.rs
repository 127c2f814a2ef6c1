//! `Report`: the outcome of a call, which closes its reservation and feeds the
//! service's breaker.

use std::time::Duration;

use super::{error, log_transition};
use crate::admission::Outcome;
use crate::names::check_name;
use crate::protocol::{ErrorCode, ErrorReply, ReportReply, ReportRequest, Response};
use crate::state::{Session, State};

pub(super) fn apply(
    state: &State,
    session: &Session,
    req: ReportRequest,
    now: Duration,
) -> Response {
    let outcome = Outcome {
        failure: req.outcome == crate::protocol::Outcome::Failure,
        units: req.units,
        latency: req.latency_ms.map(Duration::from_millis),
    };
    let settled = match (req.reservation, req.service.as_deref()) {
        (Some(id), None) => {
            // A reservation is its session's: another connection (perhaps another
            // user's) must not settle it. Once closed it cannot change hands, so
            // checking before reporting is enough.
            if let Some(holder) = state.admission().holder(id) {
                if holder != session.id {
                    let peer = &session.peer;
                    log::warn!(
                        session = session.id, reservation = id, peer_uid = peer.uid, peer_gid = peer.gid, peer_pid = peer.pid;
                        "refused a report of session {} (uid {} gid {} pid {}): reservation {id} belongs to session {holder}",
                        session.id, peer.uid, peer.gid, peer.pid
                    );
                    return error(
                        ErrorCode::NotPermitted,
                        format!("reservation {id} belongs to another connection; report it on the connection that admitted it"),
                    );
                }
            }
            state.admission().report(id, outcome, now)
        }
        (None, Some(service)) => {
            if let Err(err) = check_name(service) {
                return error(ErrorCode::InvalidArgument, format!("service name {service:?} {err}"));
            }
            state.admission().report_unreserved(service, outcome, now)
        }
        (Some(_), Some(_)) => {
            return error(
                ErrorCode::InvalidArgument,
                "give either reservation (for an admitted call) or service (for a call made without admission), not both",
            )
        }
        (None, None) => {
            return error(
                ErrorCode::InvalidArgument,
                "missing reservation: give the reservation id from admit, or service for a call made without admission",
            )
        }
    };
    match settled {
        Ok(settlement) => {
            if let Some((from, to)) = settlement.transition {
                log_transition(&settlement.service, from, to);
            }
            Response::Report(ReportReply {
                ok: true,
                duplicate: settlement.duplicate,
                breaker: (!settlement.duplicate).then(|| settlement.phase.into()),
            })
        }
        Err(err) => Response::Error(ErrorReply::from(err)),
    }
}
