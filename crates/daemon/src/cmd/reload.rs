//! `Reload`: the admin's way to do what SIGHUP does, with the outcome in the reply
//! (admin only; `dispatch` has checked the peer). Reading the file blocks, so it
//! runs on the blocking pool; `State::reload_from_file` logs the outcome either way.

use super::{error, Reply};
use crate::protocol::{ErrorCode, ReloadReply, Response};
use crate::state::{Session, State};

pub(super) fn apply(state: &State, session: &Session) -> Reply {
    let peer = session.peer.clone();
    log::info!(
        session = session.id, peer_uid = peer.uid, peer_pid = peer.pid;
        "configuration reload requested by uid {} pid {}", peer.uid, peer.pid
    );
    let state = state.clone();
    Reply::Pending(Box::pin(async move {
        let done = tokio::task::spawn_blocking(move || state.reload_from_file()).await;
        match done {
            Ok(Ok(summary)) => Response::Reload(ReloadReply {
                ok: true,
                message: format!("configuration reloaded: {summary}"),
            }),
            Ok(Err(err)) => error(
                ErrorCode::InvalidArgument,
                format!("reload refused, the old configuration stays in force: {err}"),
            ),
            Err(err) => error(
                ErrorCode::Internal,
                format!("the reload task failed: {err}; the old configuration stays in force"),
            ),
        }
    }))
}
