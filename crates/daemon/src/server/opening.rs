//! A connection from accept to its handshake: the peer check and per-uid slot,
//! then the `Hello` and the `Welcome`; the request loop (`handler.rs`) takes it
//! from there.
//!
//! Architecture Invariant: a connection's errors stop at its task. A client that
//! sends garbage, an oversized length or half a frame gets an error frame where one
//! can still be sent, is disconnected, and nothing it did reaches another client.

use std::sync::Arc;

use tokio::net::UnixStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::handler::{read_error_reply, Handler};
use super::handshake::{self, Refusal};
use super::refuse;
use super::slots::{PerUid, UidSlot};
use crate::connection::{Connection, ReadError, WriteError};
use crate::protocol::{
    ErrorCode, PeerIdentity, ServerFrame, Welcome, MAX_FRAME_LEN, MAX_HELLO_LEN, PROTOCOL_VERSION,
};
use crate::state::{Limit, Session, State};

/// One connection, from accept to close. The semaphore permit and the uid slot are
/// held for the connection's lifetime, so dropping them frees the slots.
pub(super) async fn serve(
    stream: UnixStream,
    state: State,
    shutdown: CancellationToken,
    permit: OwnedSemaphorePermit,
    per_uid: Arc<PerUid>,
) {
    let mut conn = match Connection::new(stream) {
        Ok(conn) => conn,
        Err(err) => {
            log::debug!("dropping a connection whose peer credentials cannot be read: {err}");
            return;
        }
    };
    let _uid_slot = match let_in(&conn, &state, &per_uid) {
        Ok(slot) => slot,
        Err((limit, refusal)) => {
            drop(permit);
            state.counters().hit(limit);
            refuse(&mut conn, refusal).await;
            return;
        }
    };
    conn.set_max_frame_len(MAX_HELLO_LEN);
    let Some(session) = handshake(&mut conn, &state).await else {
        return;
    };
    conn.set_max_frame_len(MAX_FRAME_LEN);
    log::debug!(
        session = session.id, agent = &*session.agent, peer_uid = session.peer.uid, peer_gid = session.peer.gid, peer_pid = session.peer.pid;
        "session {} opened by uid {} gid {} pid {} as agent {:?}",
        session.id, session.peer.uid, session.peer.gid, session.peer.pid, session.agent
    );
    Handler::new(conn, state, session).run(shutdown).await;
}

/// May this peer connect (the access policy), and has its uid a slot left? The
/// refusal says which limit turned it away.
fn let_in(
    conn: &Connection,
    state: &State,
    per_uid: &Arc<PerUid>,
) -> Result<UidSlot, (Limit, Refusal)> {
    if let Err(denied) = state.access().check_connect(conn.peer()) {
        return Err((
            Limit::NotPermitted,
            Refusal::new(ErrorCode::NotPermitted, denied.to_string()),
        ));
    }
    let uid = conn.peer().uid;
    per_uid.try_acquire(uid).ok_or_else(|| {
        let max = per_uid.max;
        (
            Limit::MaxConnectionsPerUid,
            Refusal::new(
                ErrorCode::TooManyConnections,
                format!("uid {uid} already holds {max} connections (daemon.max_connections_per_uid); close some or retry later"),
            ),
        )
    })
}

/// Reads and answers the `Hello`. Returns the session, or `None` after telling the
/// client why not.
async fn handshake(conn: &mut Connection, state: &State) -> Option<Session> {
    let limit = state.config().daemon.handshake_timeout;
    let first = match tokio::time::timeout(limit, conn.read_frame()).await {
        Err(_) => Err(Refusal::new(
            ErrorCode::Timeout,
            format!("no handshake within {limit:?} (daemon.handshake_timeout); send Hello first"),
        )),
        Ok(Ok(None)) => return None,
        Ok(Ok(Some(frame))) => handshake::accept(Ok(frame), conn.peer(), &state.access()),
        Ok(Err(ReadError::Decode(err))) => {
            handshake::accept(Err(err), conn.peer(), &state.access())
        }
        Ok(Err(err @ ReadError::TooLarge { .. })) => Err(Refusal::new(
            ErrorCode::FrameTooLarge,
            format!("{err} before the handshake; the first frame must be a Hello"),
        )),
        Ok(Err(err)) => match read_error_reply(&err) {
            Some(refusal) => Err(refusal),
            None => return None,
        },
    };
    let hello = match first {
        Ok(hello) => hello,
        Err(refusal) => {
            let counted = match refusal.code {
                ErrorCode::Timeout => Some(Limit::HandshakeTimeout),
                ErrorCode::NotPermitted => Some(Limit::AgentName),
                ErrorCode::FrameTooLarge => Some(Limit::FrameTooLarge),
                ErrorCode::Malformed => Some(Limit::Malformed),
                _ => None,
            };
            if let Some(limit) = counted {
                state.counters().hit(limit);
            }
            refuse(conn, refusal).await;
            return None;
        }
    };
    let session = state.open_session(hello.agent, conn.peer().clone());
    let welcome = ServerFrame::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        server: env!("CARGO_PKG_VERSION").to_owned(),
        session: session.id,
        peer: PeerIdentity {
            uid: session.peer.uid,
            gid: session.peer.gid,
            pid: session.peer.pid,
        },
    });
    let sent = async {
        conn.feed_frame(&welcome).await?;
        conn.flush_unless_busy().await.map_err(WriteError::Io)
    };
    tokio::time::timeout(limit, sent)
        .await
        .ok()?
        .ok()
        .map(|()| session)
}
