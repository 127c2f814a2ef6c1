//! `Admin`: set a budget's limit, reset a budget's period or a quota's window,
//! refund a charge. Admin peers only (checked by `dispatch`); each operation is written to the ledger's
//! audit table with the peer's uid and pid before it takes effect.

use super::{dollars, unavailable, Reply};
use crate::admission::{AdminAction, AdminKind, Moment};
use crate::protocol::{AdminReply, AdminRequest, Response};
use crate::state::{Session, State};

pub(super) fn apply(state: &State, session: &Session, req: AdminRequest, now: Moment) -> Reply {
    // `dispatch` has checked that the peer is an admin.
    let peer = session.peer.clone();
    let kind = match req {
        AdminRequest::SetLimit { budget, limit } => match dollars("limit", limit) {
            Ok(limit) => AdminKind::SetLimit { budget, limit },
            Err(err) => return Reply::Ready(Response::Error(err)),
        },
        AdminRequest::ResetBudget { budget } => AdminKind::ResetBudget { budget },
        AdminRequest::Refund { key } => AdminKind::Refund { key },
        AdminRequest::ResetQuota { quota, key } => AdminKind::ResetQuota { quota, key },
    };
    let action = AdminAction {
        uid: peer.uid,
        pid: peer.pid,
        kind,
    };
    let durable = match state.admission().admin(action, now) {
        Ok(durable) => durable,
        Err(err) => return Reply::Ready(err.into()),
    };
    // The commit applies the change when the ledger answers, whether or not this
    // reply is still wanted then.
    let committed = state.commit(durable);
    Reply::Pending(Box::pin(async move {
        match committed.await {
            Ok(done) => match done {
                Ok(message) => {
                    log::warn!(peer_uid = peer.uid, peer_pid = peer.pid; "admin operation by uid {} pid {}: {message}", peer.uid, peer.pid);
                    Response::Admin(AdminReply { ok: true, message })
                }
                Err(err) => err.into(),
            },
            Err(err) => unavailable(&err),
        }
    }))
}
