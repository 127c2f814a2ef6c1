//! The accept loop and the per-connection handler.
//!
//! `run` takes an already-bound listener and a shutdown token: `main` passes the
//! systemd-activated or freshly bound socket and the signal-driven token, tests pass
//! a temp-dir socket and their own token.
//!
//! Architecture Invariant: a connection's errors stop at its task. A client that
//! sends garbage, an oversized length or half a frame gets an error frame where one
//! can still be sent, is disconnected, and nothing it did reaches another client.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::FutureExt;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cmd;
use crate::connection::{Connection, ReadError};
use crate::names::check_name;
use crate::protocol::{
    ClientFrame, DecodeError, ErrorCode, ErrorReply, PeerIdentity, ReplyEnvelope, Response,
    ServerFrame, Welcome, MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use crate::state::{Session, State};

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
                tracker.spawn(refuse(stream, max));
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
async fn refuse(stream: UnixStream, max: usize) {
    let Ok(mut conn) = Connection::new(stream) else {
        return;
    };
    let peer = conn.peer();
    log::warn!(
        peer_uid = peer.uid, peer_pid = peer.pid;
        "refusing connection from uid {} pid {}: {max} connections already open",
        peer.uid, peer.pid
    );
    let frame = ServerFrame::Error(ErrorReply::new(
        ErrorCode::TooManyConnections,
        format!("the daemon is serving its maximum of {max} connections (daemon.max_connections); retry later"),
    ));
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, conn.write_last(&frame)).await;
}

/// One connection, from accept to close. The semaphore permit is held for the
/// connection's lifetime, so dropping it frees the slot.
async fn serve(
    stream: UnixStream,
    state: State,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let mut conn = match Connection::new(stream) {
        Ok(conn) => conn,
        Err(err) => {
            log::debug!("dropping a connection whose peer credentials cannot be read: {err}");
            return;
        }
    };
    let Some(session) = handshake(&mut conn, &state).await else {
        return;
    };
    log::debug!(
        session = session.id, agent = session.agent.as_str(), peer_uid = session.peer.uid, peer_pid = session.peer.pid;
        "session {} opened by uid {} pid {} as agent {:?}",
        session.id, session.peer.uid, session.peer.pid, session.agent
    );
    let idle = state.config().daemon.idle_timeout;
    // Replies in the order their requests arrived; those waiting for the ledger
    // wait concurrently. Bounded, so a client that pipelines without reading gets
    // backpressure instead of unbounded buffering.
    let mut in_flight: FuturesOrdered<PendingFrame> = FuturesOrdered::new();
    let mut draining = false;
    let mut eof = false;
    loop {
        if eof && in_flight.is_empty() {
            return;
        }
        if draining && in_flight.is_empty() {
            close(
                &mut conn,
                &session,
                ErrorCode::ShuttingDown,
                "the daemon is shutting down; reconnect to its successor".into(),
            )
            .await;
            return;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if !draining => draining = true,
            Some(frame) = in_flight.next(), if !in_flight.is_empty() => {
                // Write every reply that is ready now, then flush once. A client
                // that stops reading gets backpressure, then, after the idle
                // timeout, disconnected: it must not hold its slot forever.
                let write_ready = async {
                    let mut next = Some(frame);
                    while let Some(frame) = next.take() {
                        conn.feed_frame(&frame).await?;
                        if let Some(Some(ready)) = in_flight.next().now_or_never() {
                            next = Some(ready);
                        }
                    }
                    conn.flush_unless_busy().await
                };
                match tokio::time::timeout(idle, write_ready).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) if err.kind() == std::io::ErrorKind::InvalidInput => {
                        close(&mut conn, &session, ErrorCode::InvalidArgument, format!("the reply would exceed the maximum frame length of {MAX_FRAME_LEN} bytes ({err}); send smaller batches")).await;
                        return;
                    }
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
            read = tokio::time::timeout(idle, conn.read_frame()), if !draining && !eof && in_flight.len() < MAX_IN_FLIGHT => {
                let frame = match read {
                    Err(_elapsed) => {
                        if !in_flight.is_empty() {
                            continue;
                        }
                        close(&mut conn, &session, ErrorCode::Timeout, format!("no request for {idle:?} (daemon.idle_timeout); reconnect when needed")).await;
                        return;
                    }
                    Ok(Ok(Some(frame))) => frame,
                    Ok(Ok(None)) => {
                        // The client is done sending; answer what it already sent.
                        eof = true;
                        continue;
                    }
                    Ok(Err(ReadError::Decode(DecodeError::UnknownRequest { id, kind }))) => {
                        in_flight.push_back(Box::pin(std::future::ready(unknown_request(id, kind))));
                        continue;
                    }
                    Ok(Err(ReadError::Decode(DecodeError::VersionMismatch { .. }))) => {
                        // Only a Hello carries a version; after the handshake this is garbage.
                        close(&mut conn, &session, ErrorCode::Malformed, "malformed message: a handshake frame after the handshake".into()).await;
                        return;
                    }
                    Ok(Err(err)) => {
                        read_failed(&mut conn, &session, err).await;
                        return;
                    }
                };
                match answer(&state, &session, frame) {
                    Some(pending) => in_flight.push_back(pending),
                    None => {
                        close(&mut conn, &session, ErrorCode::HandshakeRequired, "a second Hello on one connection; the handshake happens once".into()).await;
                        return;
                    }
                }
            }
        }
    }
}

/// Most requests (or batches) of one connection being answered at once.
const MAX_IN_FLIGHT: usize = 256;

/// A reply frame, possibly still waiting for the ledger.
type PendingFrame = Pin<Box<dyn Future<Output = ServerFrame> + Send>>;

/// Decides the requests of a frame now and returns the wait for its reply frame;
/// `None` for a second `Hello`.
fn answer(state: &State, session: &Session, frame: ClientFrame) -> Option<PendingFrame> {
    match frame {
        ClientFrame::Request(envelope) => {
            let reply = cmd::dispatch(state, session, envelope.request);
            let id = envelope.id;
            Some(Box::pin(async move {
                ServerFrame::Reply(ReplyEnvelope {
                    id,
                    response: reply.into_response().await,
                })
            }))
        }
        ClientFrame::Batch(envelopes) => {
            let replies: Vec<(u64, cmd::Reply)> = envelopes
                .into_iter()
                .map(|envelope| (envelope.id, cmd::dispatch(state, session, envelope.request)))
                .collect();
            Some(Box::pin(async move {
                let mut out = Vec::with_capacity(replies.len());
                for (id, reply) in replies {
                    out.push(ReplyEnvelope {
                        id,
                        response: reply.into_response().await,
                    });
                }
                ServerFrame::Batch(out)
            }))
        }
        ClientFrame::Hello(_) => None,
    }
}

/// Reads and answers the `Hello`. Returns the session, or `None` after telling the
/// client why not.
async fn handshake(conn: &mut Connection, state: &State) -> Option<Session> {
    let peer = conn.peer();
    let limit = state.config().daemon.handshake_timeout;
    let refusal = match tokio::time::timeout(limit, conn.read_frame()).await {
        Err(_) => Some((
            ErrorCode::Timeout,
            format!("no handshake within {limit:?} (daemon.handshake_timeout); send Hello first"),
        )),
        Ok(Ok(None)) => return None,
        Ok(Ok(Some(ClientFrame::Hello(hello)))) => {
            if hello.version != PROTOCOL_VERSION {
                Some(version_mismatch(hello.version))
            } else if let Err(err) = check_name(&hello.agent) {
                Some((
                    ErrorCode::InvalidArgument,
                    format!("agent name {:?} {err}", hello.agent),
                ))
            } else if let Err(err) = check_name(&hello.client) {
                Some((
                    ErrorCode::InvalidArgument,
                    format!("client name {:?} {err}", hello.client),
                ))
            } else {
                let session = state.open_session(hello.agent, peer);
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
                let sent = async {
                    conn.feed_frame(&welcome).await?;
                    conn.flush_unless_busy().await
                };
                return sent.await.ok().map(|()| session);
            }
        }
        Ok(Ok(Some(_))) => Some((
            ErrorCode::HandshakeRequired,
            "the first frame must be Hello (protocol handshake)".into(),
        )),
        Ok(Err(ReadError::Decode(DecodeError::VersionMismatch { version }))) => {
            Some(version_mismatch(version))
        }
        Ok(Err(err)) => read_error_reply(&err),
    };
    if let Some((code, message)) = refusal {
        log::info!(
            peer_uid = peer.uid, peer_pid = peer.pid, reason = message.as_str();
            "handshake refused for uid {} pid {}: {message}", peer.uid, peer.pid
        );
        let _ = tokio::time::timeout(
            REFUSAL_WRITE_TIMEOUT,
            conn.write_last(&ServerFrame::Error(ErrorReply::new(code, message))),
        )
        .await;
    }
    None
}

fn version_mismatch(version: u16) -> (ErrorCode, String) {
    (
        ErrorCode::VersionMismatch,
        format!(
            "client speaks protocol version {version}, this daemon ({}) speaks version {PROTOCOL_VERSION}; use a client and daemon of matching versions",
            env!("CARGO_PKG_VERSION")
        ),
    )
}

/// The error frame for a read failure, when the stream can still carry one.
fn read_error_reply(err: &ReadError) -> Option<(ErrorCode, String)> {
    match err {
        ReadError::TooLarge => Some((
            ErrorCode::FrameTooLarge,
            format!("{err}; split the batch or shorten the payload"),
        )),
        ReadError::Decode(DecodeError::UnknownRequest { .. })
        | ReadError::Decode(DecodeError::Malformed { .. }) => Some((
            ErrorCode::Malformed,
            format!("{err}; the frame is not a valid protocol message"),
        )),
        ReadError::Decode(DecodeError::VersionMismatch { version }) => {
            Some(version_mismatch(*version))
        }
        ReadError::Truncated | ReadError::Io(_) => None,
    }
}

/// A read failed after the handshake: the connection ends, with an error frame
/// when the stream can still carry one.
async fn read_failed(conn: &mut Connection, session: &Session, err: ReadError) {
    match read_error_reply(&err) {
        Some((code, message)) => close(conn, session, code, message).await,
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
