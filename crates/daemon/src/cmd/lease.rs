//! `Lease`: acquire, renew or release a named, exclusive lease for this
//! connection (`guard/lease.rs` holds the table and its rules).

use std::time::Duration;

use super::invalid;
use crate::admission::Moment;
use crate::guard::lease::{Holder, LeaseOp};
use crate::names::{check_name, shown};
use crate::protocol::{LeaseHolder, LeaseReply, LeaseRequest, Response};
use crate::state::{Session, State};

pub(super) fn apply(state: &State, session: &Session, req: LeaseRequest, now: Moment) -> Response {
    if let Err(e) = check_name(&req.name) {
        return Response::Error(invalid(format!("lease name {} {e}", shown(&req.name))));
    }
    let agent = req.agent.as_deref().unwrap_or(&session.agent);
    if let Err(e) = check_name(agent) {
        return Response::Error(invalid(format!("agent name {} {e}", shown(agent))));
    }
    // As for `admit`: a per-request agent passes the `[[agents]]` binding.
    if req.agent.is_some() {
        if let Err(denied) = session.access().check_agent(&session.peer, agent) {
            return Response::Error(super::not_permitted(state, session, &denied));
        }
    }
    let op = if req.release {
        LeaseOp::Release
    } else {
        LeaseOp::Acquire {
            ttl: req.ttl_ms.map(Duration::from_millis),
        }
    };
    let holder = Holder {
        session: session.id,
        agent: agent.to_owned(),
        pid: u32::try_from(session.peer.pid).unwrap_or(0),
        uid: session.peer.uid,
    };
    let outcome = match state.admission().lease(&req.name, op, holder, now.mono) {
        Ok(outcome) => outcome,
        Err(err) => return Response::Error(invalid(err.to_string())),
    };
    if let Some((holder, left)) = &outcome.holder {
        log::info!(
            session = session.id, agent = &*session.agent, lease = req.name.as_str(), holder_agent = holder.agent.as_str(), holder_pid = holder.pid;
            "lease {:?} refused to session {}: held by agent {:?} (pid {}, session {}) for another {} ms",
            req.name, session.id, holder.agent, holder.pid, holder.session, left.as_millis()
        );
    }
    Response::Lease(LeaseReply {
        granted: outcome.granted,
        name: req.name,
        expires_in_ms: outcome.expires_in.map(millis),
        holder: outcome.holder.map(|(holder, left)| LeaseHolder {
            agent: holder.agent,
            pid: holder.pid,
            uid: holder.uid,
            session: holder.session,
            expires_in_ms: millis(left),
        }),
        released: outcome.released,
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
