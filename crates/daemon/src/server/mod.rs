//! The agent socket's server: the accept loop and the connection caps.
//!
//! `run` takes an already-bound listener and a shutdown token: `main` passes the
//! systemd-activated or freshly bound socket and the signal-driven token, tests pass
//! a temp-dir socket and their own token.
//!
//! Who may connect is decided from the kernel's peer credentials before a single
//! byte is read (`access::Policy::check_connect`); what the client then claims in
//! its `Hello` is decided by the pure [`handshake::accept`].
//!
//! Files: this one accepts and caps connections and says why one is turned away;
//! `slots.rs` holds the per-uid caps, `opening.rs` a connection up to its
//! session (peer check, slot, handshake), `handler.rs` its request loop,
//! `replies.rs` the ordered reply queue and the writes, `handshake.rs` the
//! handshake's pure decision.

mod handler;
pub mod handshake;
mod opening;
mod replies;
mod slots;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::Connection;
use crate::protocol::{ErrorCode, ErrorReply, ServerFrame};
use crate::state::{Limit, Session, State};
use handshake::Refusal;
use slots::PerUid;

/// How long a refused connection gets to read its error before we hang up.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves `listener` until `shutdown` fires, then drains in-flight connections for
/// at most the configured drain timeout.
pub async fn run(listener: UnixListener, state: State, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let limit = Arc::new(Semaphore::new(state.config().daemon.max_connections));
    let per_uid = Arc::new(PerUid::new(state.config().daemon.max_connections_per_uid));
    tracker.spawn(state.clone().maintain(shutdown.clone()));

    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    log::warn!("accept failed: {err}; retrying in 100ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        match Arc::clone(&limit).try_acquire_owned() {
            Ok(permit) => {
                let state = state.clone();
                // A token of the connection's own: a handler looks at it before
                // each buffered frame, and a look locks the token's node, which
                // all connections shared (a mutex every request took). A
                // child is cancelled with its parent, in the same call.
                let shutdown = shutdown.child_token();
                let per_uid = Arc::clone(&per_uid);
                tracker.spawn(async move {
                    opening::serve(stream, state, shutdown, permit, per_uid).await
                });
            }
            Err(_) => {
                state.counters().hit(Limit::MaxConnections);
                let max = state.config().daemon.max_connections;
                tracker.spawn(refuse_over_cap(stream, max));
            }
        }
    }

    drop(listener);
    tracker.close();
    let grace = state.config().daemon.drain_timeout;
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        log::warn!(
            "graceful shutdown did not complete in {grace:?}; {} connection task(s) abandoned",
            tracker.len()
        );
    }
    // Until the counters are exported as metrics, the log is where they show.
    let hits: Vec<String> = state
        .counters()
        .snapshot()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(limit, n)| format!("{}={n}", limit.name()))
        .collect();
    if !hits.is_empty() {
        log::info!(
            "limits and access rules hit since start: {}",
            hits.join(", ")
        );
    }
}

/// Tells a client over the connection cap why it is being turned away.
async fn refuse_over_cap(stream: UnixStream, max: usize) {
    let Ok(mut conn) = Connection::new(stream) else {
        return;
    };
    refuse(
        &mut conn,
        Refusal::new(
            ErrorCode::TooManyConnections,
            format!("the daemon is serving its maximum of {max} connections (daemon.max_connections); retry later"),
        ),
    )
    .await;
}

/// Turns a connection away before any session exists: logs who it was (uid, gid,
/// pid: the kernel's word, not the client's) and why, then sends the error frame.
async fn refuse(conn: &mut Connection, refusal: Refusal) {
    let peer = conn.peer();
    // Refusals by policy or limit are what an operator looks for; a client that
    // times out or speaks garbage is routine.
    let level = match refusal.code {
        ErrorCode::NotPermitted | ErrorCode::TooManyConnections => log::Level::Warn,
        _ => log::Level::Info,
    };
    log::log!(
        level,
        peer_uid = peer.uid, peer_gid = peer.gid, peer_pid = peer.pid, code = format!("{:?}", refusal.code), reason = refusal.message.as_str();
        "refusing connection from uid {} gid {} pid {}: {}",
        peer.uid, peer.gid, peer.pid, refusal.message
    );
    let frame = ServerFrame::Error(ErrorReply::new(refusal.code, refusal.message));
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, conn.write_last(&frame)).await;
}

/// Sends a final error frame and logs why the connection ends.
async fn close(conn: &mut Connection, session: &Session, code: ErrorCode, message: String) {
    log::info!(
        session = session.id, agent = &*session.agent, peer_uid = session.peer.uid, peer_pid = session.peer.pid, reason = message.as_str();
        "closing session {} (agent {:?}, uid {}, pid {}): {message}",
        session.id, session.agent, session.peer.uid, session.peer.pid
    );
    let frame = ServerFrame::Error(ErrorReply::new(code, message));
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, conn.write_last(&frame)).await;
}
