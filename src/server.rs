//! The accept loop and the per-connection handler.
//!
//! `run` takes an already-bound listener and a shutdown token: `main` passes the
//! systemd-activated or freshly bound socket and the signal-driven token, tests pass
//! a temp-dir socket and their own token.
//!
//! Who may connect is decided from the kernel's peer credentials before a single
//! byte is read (`access::Policy::check_connect`); what the client then claims in
//! its `Hello` is decided by the pure [`handshake::accept`].
//!
//! Architecture Invariant: a connection's errors stop at its task. A client that
//! sends garbage, an oversized length or half a frame gets an error frame where one
//! can still be sent, is disconnected, and nothing it did reaches another client.

pub mod handshake;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cmd;
use crate::connection::{Connection, Peer, ReadError};
use crate::protocol::{
    ClientFrame, DecodeError, ErrorCode, ErrorReply, PeerIdentity, ReplyEnvelope, Response,
    ServerFrame, Welcome, PROTOCOL_VERSION,
};
use crate::state::{Session, State};
use handshake::Refusal;

/// How long a refused connection gets to read its error before we hang up.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves `listener` until `shutdown` fires, then drains in-flight connections for
/// at most the configured drain timeout.
pub async fn run(listener: UnixListener, state: State, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let limit = Arc::new(Semaphore::new(state.config().daemon.max_connections));
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
                let shutdown = shutdown.clone();
                tracker.spawn(async move { serve(stream, state, shutdown, permit).await });
            }
            Err(_) => {
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

/// One connection, from accept to close. The semaphore permit is held for the
/// connection's lifetime, so dropping it frees the slot.
async fn serve(
    stream: UnixStream,
    state: State,
    shutdown: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let mut conn = match Connection::new(stream) {
        Ok(conn) => conn,
        Err(err) => {
            log::debug!("dropping a connection whose peer credentials cannot be read: {err}");
            return;
        }
    };
    if let Err(denied) = state.access().check_connect(conn.peer()) {
        drop(permit);
        refuse(
            &mut conn,
            Refusal::new(ErrorCode::NotPermitted, denied.to_string()),
        )
        .await;
        return;
    }
    let Some(session) = handshake(&mut conn, &state).await else {
        return;
    };
    log::debug!(
        session = session.id, agent = session.agent.as_str(), peer_uid = session.peer.uid, peer_gid = session.peer.gid, peer_pid = session.peer.pid;
        "session {} opened by uid {} gid {} pid {} as agent {:?}",
        session.id, session.peer.uid, session.peer.gid, session.peer.pid, session.agent
    );
    let idle = state.config().daemon.idle_timeout;
    loop {
        let read = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                close(&mut conn, &session, ErrorCode::ShuttingDown, "the daemon is shutting down; reconnect to its successor".into()).await;
                return;
            }
            read = tokio::time::timeout(idle, conn.read_frame()) => read,
        };
        let frame = match read {
            Err(_elapsed) => {
                close(
                    &mut conn,
                    &session,
                    ErrorCode::Timeout,
                    format!("no request for {idle:?} (daemon.idle_timeout); reconnect when needed"),
                )
                .await;
                return;
            }
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) => return,
            Ok(Err(ReadError::Decode(DecodeError::UnknownRequest { id, kind }))) => {
                if conn.write_frame(&unknown_request(id, kind)).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(Err(err)) => {
                read_failed(&mut conn, &session, err).await;
                return;
            }
        };
        let reply = match frame {
            ClientFrame::Request(envelope) => ServerFrame::Reply(ReplyEnvelope {
                id: envelope.id,
                response: cmd::dispatch(&state, &session, envelope.request),
            }),
            ClientFrame::Batch(envelopes) => ServerFrame::Batch(
                envelopes
                    .into_iter()
                    .map(|envelope| ReplyEnvelope {
                        id: envelope.id,
                        response: cmd::dispatch(&state, &session, envelope.request),
                    })
                    .collect(),
            ),
            ClientFrame::Hello(_) => {
                close(
                    &mut conn,
                    &session,
                    ErrorCode::HandshakeRequired,
                    "a second Hello on one connection; the handshake happens once".into(),
                )
                .await;
                return;
            }
        };
        // A client that stops reading gets backpressure, then, after the idle
        // timeout, disconnected: it must not hold its slot and reservations forever.
        match tokio::time::timeout(idle, conn.write_frame(&reply)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                log::debug!(session = session.id; "session {}: write failed: {err}", session.id);
                return;
            }
            Err(_) => {
                log::info!(
                    session = session.id, agent = session.agent.as_str(), peer_uid = session.peer.uid, peer_pid = session.peer.pid;
                    "closing session {} (agent {:?}): it has not read its replies for {idle:?}", session.id, session.agent
                );
                return;
            }
        }
    }
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
        Ok(Ok(Some(frame))) => handshake::accept(Ok(frame), conn.peer(), state.access()),
        Ok(Err(ReadError::Decode(err))) => handshake::accept(Err(err), conn.peer(), state.access()),
        Ok(Err(err)) => match read_error_reply(&err) {
            Some(refusal) => Err(refusal),
            None => return None,
        },
    };
    let hello = match first {
        Ok(hello) => hello,
        Err(refusal) => {
            refuse(conn, refusal).await;
            return None;
        }
    };
    let peer: Peer = conn.peer().clone();
    let session = state.open_session(hello.agent, peer.clone());
    let welcome = ServerFrame::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        server: env!("CARGO_PKG_VERSION").to_owned(),
        session: session.id,
        peer: PeerIdentity {
            uid: peer.uid,
            gid: peer.gid,
            pid: peer.pid,
        },
    });
    conn.write_frame(&welcome).await.ok().map(|()| session)
}

/// The error frame for a read failure, when the stream can still carry one.
fn read_error_reply(err: &ReadError) -> Option<Refusal> {
    match err {
        ReadError::TooLarge { .. } => Some(Refusal::new(
            ErrorCode::FrameTooLarge,
            format!("{err}; split the batch or shorten the payload"),
        )),
        ReadError::Decode(err) => Some(handshake::decode_refusal(err)),
        ReadError::Truncated | ReadError::Io(_) => None,
    }
}

/// A read failed after the handshake: the connection ends, with an error frame
/// when the stream can still carry one.
async fn read_failed(conn: &mut Connection, session: &Session, err: ReadError) {
    match read_error_reply(&err) {
        Some(refusal) => close(conn, session, refusal.code, refusal.message).await,
        None => log::debug!(session = session.id; "session {}: {err}", session.id),
    }
}

/// Sends a final error frame and logs why the connection ends.
async fn close(conn: &mut Connection, session: &Session, code: ErrorCode, message: String) {
    log::info!(
        session = session.id, agent = session.agent.as_str(), peer_uid = session.peer.uid, peer_pid = session.peer.pid, reason = message.as_str();
        "closing session {} (agent {:?}, uid {}, pid {}): {message}",
        session.id, session.agent, session.peer.uid, session.peer.pid
    );
    let frame = ServerFrame::Error(ErrorReply::new(code, message));
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, conn.write_last(&frame)).await;
}

/// The reply to a request kind this daemon does not know: the connection survives.
fn unknown_request(id: u64, kind: u32) -> ServerFrame {
    ServerFrame::Reply(ReplyEnvelope {
        id,
        response: Response::Error(ErrorReply::new(
            ErrorCode::UnknownRequest,
            format!(
                "request kind {kind} is not known to this daemon ({}, protocol {PROTOCOL_VERSION}); upgrade the daemon or avoid this request",
                env!("CARGO_PKG_VERSION")
            ),
        )),
    })
}
