//! The ordered reply queue of one connection and the writes that drain it.
//!
//! Requests are decided in arrival order ([`answer`]); their replies are sent in
//! the same order. Most are ready at once; those waiting for the ledger's group
//! commit wait concurrently in a `FuturesOrdered`, so one connection's pipelined
//! requests share commits. A reply that would not fit in a frame is answered with
//! errors instead ([`fit`]).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::stream::FuturesOrdered;

use crate::cmd;
use crate::connection::{Connection, WriteError};
use crate::protocol::{
    encode_reply_into, encoded_len, ClientFrame, EncodeError, ErrorCode, ErrorReply, ReplyEnvelope,
    Response, ServerFrame, MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use crate::state::{Limit, Session, State};

/// Most requests (or batches) of one connection being answered at once.
pub(super) const MAX_IN_FLIGHT: usize = 256;

/// A reply frame, possibly still waiting for the ledger.
type PendingFrame = Pin<Box<dyn Future<Output = ServerFrame> + Send>>;

/// A reply in the connection's queue: ready (most are: only what waits for the
/// ledger is not), or still pending. Ready ones cost no allocation of their own
/// (hence the large variant, not boxed).
#[allow(clippy::large_enum_variant)]
pub(super) enum Queued {
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

/// The replies of one connection, in request order.
pub(super) type ReplyQueue = FuturesOrdered<Queued>;

/// Decides the requests of a frame now (in arrival order) and returns its reply
/// frame, or the wait for it.
pub(super) fn answer(state: &State, session: &Session, frame: ClientFrame) -> Queued {
    match frame {
        ClientFrame::Batch(envelopes) => {
            let replies: Vec<(u64, Result<Response, cmd::ReplyFuture>)> = envelopes
                .into_iter()
                .map(|envelope| (envelope.id, cmd::dispatch(state, session, envelope.request)))
                .collect();
            Queued::Pending(Box::pin(async move {
                let mut out = Vec::with_capacity(replies.len());
                for (id, reply) in replies {
                    out.push(ReplyEnvelope {
                        id,
                        response: match reply {
                            Ok(response) => response,
                            Err(future) => future.await,
                        },
                    });
                }
                ServerFrame::Batch(out)
            }))
        }
        ClientFrame::Request(envelope) => {
            let id = envelope.id;
            match cmd::dispatch(state, session, envelope.request) {
                Ok(response) => {
                    Queued::Ready(Some(ServerFrame::Reply(ReplyEnvelope { id, response })))
                }
                Err(future) => pending(id, future),
            }
        }
        ClientFrame::Hello(_) => Queued::Ready(Some(ServerFrame::Error(ErrorReply::new(
            ErrorCode::HandshakeRequired,
            "a second Hello on one connection; the handshake happens once",
        )))),
    }
}

/// The reply to request `id`, when `future` has it.
pub(super) fn pending(id: u64, future: cmd::ReplyFuture) -> Queued {
    Queued::Pending(Box::pin(async move {
        ServerFrame::Reply(ReplyEnvelope {
            id,
            response: future.await,
        })
    }))
}

/// Writes `first` (when there is one: a reply already encoded by [`encode`]
/// has none) and every further frame `more` hands out, then flushes unless
/// another request is already buffered (its reply will follow, and one write
/// can carry both). Returns false when the connection is to be closed: a write
/// failed, or the client did not read its replies for the idle timeout (a
/// client that stops reading gets backpressure, then is disconnected: it must
/// not hold its slot forever).
pub(super) async fn write(
    conn: &mut Connection,
    state: &State,
    session: &Session,
    idle: Duration,
    first: Option<&ServerFrame>,
    in_flight: &mut ReplyQueue,
    mut more: impl FnMut(&mut ReplyQueue) -> Option<ServerFrame>,
) -> bool {
    let write_ready = async {
        if let Some(first) = first {
            feed(conn, state, session, first).await?;
        }
        while let Some(frame) = more(in_flight) {
            feed(conn, state, session, &frame).await?;
        }
        conn.flush_unless_busy().await.map_err(WriteError::Io)
    };
    within_idle(state, session, idle, std::pin::pin!(write_ready)).await
}

/// Writes out what is queued when the write buffer is past its boundary
/// (before a reply is encoded into it), under the same idle timeout as every
/// write. Returns false when the connection is to be closed.
pub(super) async fn make_room(
    conn: &mut Connection,
    state: &State,
    session: &Session,
    idle: Duration,
) -> bool {
    let room = async { conn.make_room().await.map_err(WriteError::Io) };
    within_idle(state, session, idle, std::pin::pin!(room)).await
}

/// Runs a write, giving up after `idle` (a client that stops reading gets
/// backpressure, then is disconnected). False when the connection is to be
/// closed. The write is pinned where the caller built it: moving a write's
/// future (it holds the reply being written) was a copy per request.
async fn within_idle(
    state: &State,
    session: &Session,
    idle: Duration,
    mut write: Pin<&mut impl Future<Output = Result<(), WriteError>>>,
) -> bool {
    // Almost always the socket takes the bytes at once: try that before arming a
    // timer (building the timeout costs more than the write).
    let written = match futures_util::poll!(write.as_mut()) {
        std::task::Poll::Ready(result) => Ok(result),
        std::task::Poll::Pending => tokio::time::timeout(idle, write).await,
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
                session = session.id, agent = &*session.agent, peer_uid = session.peer.uid, peer_pid = session.peer.pid;
                "closing session {} (agent {:?}): it has not read its replies for {idle:?}", session.id, session.agent
            );
            false
        }
    }
}

/// Queues one reply frame, encoded from where it lies: a reply is a few hundred
/// bytes (an admission's votes are held in place), and every move of it on the
/// way to the socket was a copy. One that would not fit in a frame is answered
/// with errors instead ([`fit`]).
async fn feed(
    conn: &mut Connection,
    state: &State,
    session: &Session,
    frame: &ServerFrame,
) -> Result<(), WriteError> {
    conn.make_room().await.map_err(WriteError::Io)?;
    let encoded = match frame {
        ServerFrame::Reply(envelope) => {
            conn.encode_with(|buf| encode_reply_into(buf, envelope.id, &envelope.response))
        }
        frame => conn.encode_frame(frame),
    };
    if let Err(WriteError::TooLarge) = encoded {
        too_large_counted(state, session);
        conn.encode_frame(&fit(frame))?;
    }
    Ok(())
}

/// Encodes the reply to request `id` with `encode` (which appends one whole
/// frame, or fails leaving the buffer as it was) without waiting (the caller
/// made room, [`make_room`]): the usual reply, ready when it is decided, is
/// written from where it lies, not moved into a frame first. One that would
/// not fit in a frame is answered with an error instead, as [`feed`] does.
pub(super) fn encode_now(
    conn: &mut Connection,
    state: &State,
    session: &Session,
    id: u64,
    encode: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
) -> Result<(), WriteError> {
    if let Err(WriteError::TooLarge) = conn.encode_with(encode) {
        too_large_counted(state, session);
        conn.encode_frame(&too_large_reply(id))?;
    }
    Ok(())
}

/// A reply did not fit in a frame: counted and logged, however it was written.
fn too_large_counted(state: &State, session: &Session) {
    state.counters().hit(Limit::ReplyTooLarge);
    log::info!(
        session = session.id, peer_uid = session.peer.uid, peer_pid = session.peer.pid;
        "session {}: a reply exceeded {MAX_FRAME_LEN} bytes; answered with frame_too_large errors", session.id
    );
}

/// The reply to request `id` when its own does not fit in a frame.
fn too_large_reply(id: u64) -> ServerFrame {
    ServerFrame::Reply(ReplyEnvelope {
        id,
        response: too_large(id),
    })
}

/// The answer to request `id` when its reply does not fit in a frame.
fn too_large(id: u64) -> Response {
    Response::Error(ErrorReply::new(
        ErrorCode::FrameTooLarge,
        format!("the reply to request {id} does not fit in a {MAX_FRAME_LEN}-byte frame; it was carried out, but ask for less (e.g. breakers --service) or split the batch"),
    ))
}

/// Makes a reply that did not fit in a frame fit, by answering its largest
/// responses with `FrameTooLarge` errors instead. The requests were carried out;
/// only their answers are lost (the large ones are the read-only `status` and
/// `breakers` with thousands of services; an admission's reservation stays held by
/// the session until it is reported or the connection closes).
fn fit(reply: &ServerFrame) -> ServerFrame {
    match reply {
        ServerFrame::Reply(envelope) => too_large_reply(envelope.id),
        ServerFrame::Batch(replies) => {
            let mut replies = replies.clone();
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
        other => other.clone(),
    }
}

/// The reply to a request kind this daemon does not know: the connection survives.
pub(super) fn unknown_request(id: u64, kind: u32) -> ServerFrame {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{BreakerInfo, BreakerState, BreakersReply, Pong};

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
        let fitted = fit(&frame);
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
