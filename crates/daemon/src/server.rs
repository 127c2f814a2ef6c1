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

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::FutureExt;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cmd;
use crate::connection::{Connection, ReadError, WriteError};
use crate::protocol::{
    encoded_len, ClientFrame, DecodeError, ErrorCode, ErrorReply, PeerIdentity, ReplyEnvelope,
    Response, ServerFrame, Welcome, MAX_FRAME_LEN, MAX_HELLO_LEN, PROTOCOL_VERSION,
};
use crate::state::{Limit, Session, State};
use handshake::Refusal;

/// How long a refused connection gets to read its error before we hang up.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Open connections per uid (`daemon.max_connections_per_uid`).
struct PerUid {
    max: usize,
    open: Mutex<HashMap<u32, usize>>,
}

/// One uid's connection slot, held for the connection's lifetime.
struct UidSlot {
    per_uid: Arc<PerUid>,
    uid: u32,
}

/// Serves `listener` until `shutdown` fires, then drains in-flight connections for
/// at most the configured drain timeout.
pub async fn run(listener: UnixListener, state: State, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let limit = Arc::new(Semaphore::new(state.config().daemon.max_connections));
    let per_uid = Arc::new(PerUid {
        max: state.config().daemon.max_connections_per_uid,
        open: Mutex::new(HashMap::new()),
    });
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
                let per_uid = Arc::clone(&per_uid);
                tracker.spawn(async move { serve(stream, state, shutdown, permit, per_uid).await });
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

/// One connection, from accept to close. The semaphore permit and the uid slot are
/// held for the connection's lifetime, so dropping them frees the slots.
async fn serve(
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
    if let Err(denied) = state.access().check_connect(conn.peer()) {
        drop(permit);
        state.counters().hit(Limit::NotPermitted);
        refuse(
            &mut conn,
            Refusal::new(ErrorCode::NotPermitted, denied.to_string()),
        )
        .await;
        return;
    }
    let uid = conn.peer().uid;
    let Some(_uid_slot) = per_uid.try_acquire(uid) else {
        drop(permit);
        state.counters().hit(Limit::MaxConnectionsPerUid);
        let max = per_uid.max;
        refuse(
            &mut conn,
            Refusal::new(
                ErrorCode::TooManyConnections,
                format!("uid {uid} already holds {max} connections (daemon.max_connections_per_uid); close some or retry later"),
            ),
        )
        .await;
        return;
    };
    conn.set_max_frame_len(MAX_HELLO_LEN);
    let Some(session) = handshake(&mut conn, &state).await else {
        return;
    };
    conn.set_max_frame_len(MAX_FRAME_LEN);
    log::debug!(
        session = session.id, agent = session.agent.as_str(), peer_uid = session.peer.uid, peer_gid = session.peer.gid, peer_pid = session.peer.pid;
        "session {} opened by uid {} gid {} pid {} as agent {:?}",
        session.id, session.peer.uid, session.peer.gid, session.peer.pid, session.agent
    );
    let idle = state.config().daemon.idle_timeout;
    let max_batch = state.config().daemon.max_batch;
    // Replies in the order their requests arrived; those waiting for the ledger
    // wait concurrently. Bounded, so a client that pipelines without reading gets
    // backpressure instead of unbounded buffering. A reply that is ready when
    // nothing is queued ahead of it skips the queue and is written at once.
    let mut in_flight: FuturesOrdered<Queued> = FuturesOrdered::new();
    let mut draining = false;
    let mut eof = false;
    // One idle timer for the connection's life, pushed back lazily: arming a timer
    // per read would cost more than the decision.
    let mut last_active = coarse_now();
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
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
        let reading = !draining && !eof && in_flight.len() < MAX_IN_FLIGHT;
        tokio::select! {
            biased;
            _ = &mut cancelled, if !draining => draining = true,
            Some(frame) = in_flight.next(), if !in_flight.is_empty() => {
                // Write every reply that is ready now, then flush once.
                let next_ready = |in_flight: &mut FuturesOrdered<Queued>| match in_flight.next().now_or_never() {
                    Some(Some(ready)) => Some(ready),
                    _ => None,
                };
                if !write(&mut conn, &state, &session, idle, frame, &mut in_flight, next_ready).await {
                    return;
                }
                last_active = coarse_now();
            }
            () = &mut idle_timer, if reading && in_flight.is_empty() => {
                let quiet = coarse_now().saturating_sub(last_active);
                if quiet < idle {
                    idle_timer.as_mut().reset(tokio::time::Instant::now() + (idle - quiet));
                    continue;
                }
                state.counters().hit(Limit::IdleTimeout);
                close(&mut conn, &session, ErrorCode::Timeout, format!("no request for {idle:?} (daemon.idle_timeout); reconnect when needed")).await;
                return;
            }
            read = conn.read_frame(), if reading => {
                last_active = coarse_now();
                let frame = match read {
                    Ok(Some(frame)) => frame,
                    Ok(None) => {
                        // The client is done sending; answer what it already sent.
                        eof = true;
                        continue;
                    }
                    Err(ReadError::Decode(DecodeError::UnknownRequest { id, kind })) => {
                        in_flight.push_back(Queued::Ready(Some(unknown_request(id, kind))));
                        continue;
                    }
                    Err(ReadError::Decode(DecodeError::VersionMismatch { .. })) => {
                        // Only a Hello carries a version; after the handshake this is garbage.
                        state.counters().hit(Limit::Malformed);
                        close(&mut conn, &session, ErrorCode::Malformed, "malformed message: a handshake frame after the handshake".into()).await;
                        return;
                    }
                    Err(err) => {
                        read_failed(&mut conn, &state, &session, err).await;
                        return;
                    }
                };
                let reply = match frame {
                    // Refused whole, none of it run, and the connection closed:
                    // answering each envelope could not fit in one reply frame (a
                    // 1 MiB batch holds ~87,000 requests), and running part of it
                    // would leave the client guessing which part.
                    ClientFrame::Batch(envelopes) if envelopes.len() > max_batch => {
                        let n_requests = envelopes.len();
                        drop(envelopes);
                        state.counters().hit(Limit::MaxBatch);
                        close(
                            &mut conn,
                            &session,
                            ErrorCode::InvalidArgument,
                            format!("a batch of {n_requests} requests exceeds daemon.max_batch = {max_batch}; none of it was run; send at most {max_batch} requests per batch"),
                        )
                        .await;
                        return;
                    }
                    ClientFrame::Hello(_) => {
                        close(&mut conn, &session, ErrorCode::HandshakeRequired, "a second Hello on one connection; the handshake happens once".into()).await;
                        return;
                    }
                    frame => answer(&state, &session, frame),
                };
                match reply {
                    // Nothing queued ahead of it: write it now, without the queue.
                    Queued::Ready(Some(frame)) if in_flight.is_empty() => {
                        if !write(&mut conn, &state, &session, idle, frame, &mut in_flight, |_| None).await {
                            return;
                        }
                    }
                    reply => in_flight.push_back(reply),
                }
            }
        }
    }
}

/// A monotonic time good to a few milliseconds (`CLOCK_MONOTONIC_COARSE`), for
/// the idle timeout: reading it costs a fraction of a precise clock read, and it is
/// read on every request.
fn coarse_now() -> Duration {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE).map_or(Duration::ZERO, Duration::from)
}

/// Writes `first` and every further frame `more` hands out, then flushes unless
/// another request is already buffered (its reply will follow, and one write can
/// carry both). Returns false when the connection is to be closed: a write failed,
/// or the client did not read its replies for the idle timeout (a client that stops
/// reading gets backpressure, then is disconnected: it must not hold its slot
/// forever).
async fn write(
    conn: &mut Connection,
    state: &State,
    session: &Session,
    idle: Duration,
    first: ServerFrame,
    in_flight: &mut FuturesOrdered<Queued>,
    mut more: impl FnMut(&mut FuturesOrdered<Queued>) -> Option<ServerFrame>,
) -> bool {
    let write_ready = async {
        let mut next = Some(first);
        while let Some(frame) = next.take() {
            if let Err(WriteError::TooLarge) = conn.feed_frame(&frame).await {
                state.counters().hit(Limit::ReplyTooLarge);
                log::info!(
                    session = session.id, peer_uid = session.peer.uid, peer_pid = session.peer.pid;
                    "session {}: a reply exceeded {MAX_FRAME_LEN} bytes; answered with frame_too_large errors", session.id
                );
                conn.feed_frame(&fit(frame)).await?;
            }
            next = more(in_flight);
        }
        conn.flush_unless_busy().await.map_err(WriteError::Io)
    };
    // Almost always the socket takes the bytes at once: try that before arming a
    // timer (building the timeout costs more than the write).
    let mut write_ready = std::pin::pin!(write_ready);
    let written = match futures_util::poll!(write_ready.as_mut()) {
        std::task::Poll::Ready(result) => Ok(result),
        std::task::Poll::Pending => tokio::time::timeout(idle, write_ready).await,
    };
    match written {
        Ok(Ok(())) => true,
        Ok(Err(err)) => {
            log::debug!(session = session.id; "session {}: write failed: {err}", session.id);
            false
        }
        Err(_) => {
            state.counters().hit(Limit::SlowReader);
            log::info!(
                session = session.id, agent = session.agent.as_str(), peer_uid = session.peer.uid, peer_pid = session.peer.pid;
                "closing session {} (agent {:?}): it has not read its replies for {idle:?}", session.id, session.agent
            );
            false
        }
    }
}

/// Most requests (or batches) of one connection being answered at once.
const MAX_IN_FLIGHT: usize = 256;

/// A reply frame, possibly still waiting for the ledger.
type PendingFrame = Pin<Box<dyn Future<Output = ServerFrame> + Send>>;

/// A reply in the connection's queue: ready (most are: only what waits for the
/// ledger is not), or still pending. Ready ones cost no allocation of their own.
enum Queued {
    /// Taken when polled; `None` after that.
    Ready(Option<ServerFrame>),
    Pending(PendingFrame),
}

impl Future for Queued {
    type Output = ServerFrame;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<ServerFrame> {
        match self.get_mut() {
            Queued::Ready(frame) => {
                std::task::Poll::Ready(frame.take().expect("a ready reply is polled once"))
            }
            Queued::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

/// Decides the requests of a frame now (in arrival order) and returns its reply
/// frame, or the wait for it.
fn answer(state: &State, session: &Session, frame: ClientFrame) -> Queued {
    match frame {
        ClientFrame::Batch(envelopes) => {
            let replies: Vec<(u64, cmd::Reply)> = envelopes
                .into_iter()
                .map(|envelope| (envelope.id, cmd::dispatch(state, session, envelope.request)))
                .collect();
            Queued::Pending(Box::pin(async move {
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
        ClientFrame::Request(envelope) => {
            let id = envelope.id;
            match cmd::dispatch(state, session, envelope.request) {
                cmd::Reply::Ready(response) => {
                    Queued::Ready(Some(ServerFrame::Reply(ReplyEnvelope { id, response })))
                }
                cmd::Reply::Pending(future) => Queued::Pending(Box::pin(async move {
                    ServerFrame::Reply(ReplyEnvelope {
                        id,
                        response: future.await,
                    })
                })),
            }
        }
        ClientFrame::Hello(_) => Queued::Ready(Some(ServerFrame::Error(ErrorReply::new(
            ErrorCode::HandshakeRequired,
            "a second Hello on one connection; the handshake happens once",
        )))),
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
async fn read_failed(conn: &mut Connection, state: &State, session: &Session, err: ReadError) {
    match &err {
        ReadError::TooLarge { .. } => state.counters().hit(Limit::FrameTooLarge),
        ReadError::Decode(_) => state.counters().hit(Limit::Malformed),
        ReadError::Truncated | ReadError::Io(_) => {}
    }
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

/// Makes a reply that did not fit in a frame fit, by answering its largest
/// responses with `FrameTooLarge` errors instead. The requests were carried out;
/// only their answers are lost (the large ones are the read-only `status` and
/// `breakers` with thousands of services; an admission's reservation stays held by
/// the session until it is reported or the connection closes).
fn fit(reply: ServerFrame) -> ServerFrame {
    let too_large = |id: u64| {
        Response::Error(ErrorReply::new(
            ErrorCode::FrameTooLarge,
            format!("the reply to request {id} does not fit in a {MAX_FRAME_LEN}-byte frame; it was carried out, but ask for less (e.g. breakers --service) or split the batch"),
        ))
    };
    match reply {
        ServerFrame::Reply(envelope) => ServerFrame::Reply(ReplyEnvelope {
            id: envelope.id,
            response: too_large(envelope.id),
        }),
        ServerFrame::Batch(mut replies) => {
            // The frame variant and the vector's length prefix.
            let overhead = 4 + 8;
            let sizes: Vec<u64> = replies
                .iter()
                .map(|r| encoded_len(r).unwrap_or(u64::MAX))
                .collect();
            let mut order: Vec<usize> = (0..replies.len()).collect();
            order.sort_by_key(|&idx| std::cmp::Reverse(sizes[idx]));
            let mut total: u64 = sizes.iter().fold(overhead, |sum, &n| sum.saturating_add(n));
            for idx in order {
                if total <= MAX_FRAME_LEN as u64 {
                    break;
                }
                let id = replies[idx].id;
                replies[idx].response = too_large(id);
                let now = encoded_len(&replies[idx]).unwrap_or(0);
                total = total.saturating_sub(sizes[idx]).saturating_add(now);
            }
            ServerFrame::Batch(replies)
        }
        other => other,
    }
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

// === impl PerUid ===

impl PerUid {
    /// Takes one of `uid`'s slots, if it has one left.
    fn try_acquire(self: &Arc<Self>, uid: u32) -> Option<UidSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(uid).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(UidSlot {
            per_uid: Arc::clone(self),
            uid,
        })
    }
}

// === impl UidSlot ===

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut open = self
            .per_uid
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.uid) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{BreakerInfo, BreakerState, BreakersReply, Pong};

    #[test]
    fn uid_slots_are_counted_per_uid_and_given_back() {
        let per_uid = Arc::new(PerUid {
            max: 2,
            open: Mutex::new(HashMap::new()),
        });
        let a1 = per_uid.try_acquire(1).unwrap();
        let _a2 = per_uid.try_acquire(1).unwrap();
        assert!(per_uid.try_acquire(1).is_none());
        let _b1 = per_uid
            .try_acquire(2)
            .expect("another uid has its own slots");
        drop(a1);
        assert!(per_uid.try_acquire(1).is_some());
    }

    #[test]
    fn an_oversized_batch_reply_keeps_the_small_answers() {
        let breaker = |n: usize| BreakerInfo {
            service: format!("{n:0>100}"),
            state: BreakerState::Closed,
            failures: 0,
            window_failures: 0,
            window_calls: 0,
            trials_in_flight: 0,
            trial_successes: 0,
            open_remaining_ms: None,
            times_opened: 0,
        };
        let big = Response::Breakers(BreakersReply {
            breakers: (0..4_000).map(breaker).collect(),
        });
        let pong = Response::Pong(Pong {
            ok: true,
            version: "v".into(),
            session: 1,
            agent: "a".into(),
        });
        let replies = vec![
            ReplyEnvelope {
                id: 1,
                response: pong.clone(),
            },
            ReplyEnvelope {
                id: 2,
                response: big.clone(),
            },
            ReplyEnvelope {
                id: 3,
                response: big,
            },
        ];
        let frame = ServerFrame::Batch(replies);
        assert!(encoded_len(&frame).is_err(), "the test reply must not fit");
        let fitted = fit(frame);
        assert!(encoded_len(&fitted).is_ok(), "it fits now");
        let ServerFrame::Batch(replies) = fitted else {
            panic!("still a batch");
        };
        assert_eq!(replies[0].response, pong, "small answers survive");
        let codes: Vec<_> = replies
            .iter()
            .map(|r| match &r.response {
                Response::Error(err) => Some(err.code),
                _ => None,
            })
            .collect();
        // Each large answer (~560 KB) fits alone, the two together do not: one of
        // them is replaced, no more.
        assert_eq!(codes[0], None);
        let replaced = codes
            .iter()
            .filter(|c| **c == Some(ErrorCode::FrameTooLarge))
            .count();
        assert_eq!(replaced, 1, "{codes:?}");
    }
}
