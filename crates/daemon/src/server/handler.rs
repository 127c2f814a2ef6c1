//! A handshaken connection's request loop (`opening.rs` comes before it), one
//! function per thing that can happen (shutdown, a reply ready, the idle
//! timer, a frame read), and the read path: a frame's body decoded, decided
//! and, when its reply is ready, encoded in one plain function.
//!
//! Architecture Invariant: a connection's errors stop at its task. A client that
//! sends garbage, an oversized length or half a frame gets an error frame where one
//! can still be sent, is disconnected, and nothing it did reaches another client.

use std::time::Duration;

use bytes::BytesMut;
use futures_util::stream::StreamExt;
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use super::close;
use super::handshake::{self, Refusal};
use super::replies::{self, answer, unknown_request, Queued, ReplyQueue, MAX_IN_FLIGHT};
use crate::admission::Decision;
use crate::clock::Moment;
use crate::cmd;
use crate::connection::{Connection, ReadError, WriteError};
use crate::protocol::{
    decode_client_frame, encode_reply_into, ClientFrame, DecodeError, Envelope, ErrorCode, Request,
    ServerFrame,
};
use crate::state::{Limit, Session, State};

/// The error frame for a read failure, when the stream can still carry one.
pub(super) fn read_error_reply(err: &ReadError) -> Option<Refusal> {
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

/// A handshaken connection's request loop and what it keeps between requests.
pub(super) struct Handler {
    conn: Connection,
    state: State,
    session: Session,
    idle: Duration,
    max_batch: usize,
    /// Replies in the order their requests arrived; those waiting for the ledger
    /// wait concurrently. Bounded ([`MAX_IN_FLIGHT`]), so a client that pipelines
    /// without reading gets backpressure instead of unbounded buffering. A reply
    /// that is ready when nothing is queued ahead of it skips the queue and is
    /// written at once.
    replies: ReplyQueue,
    /// Shutdown began: read nothing more, answer what was asked, then say goodbye.
    draining: bool,
    /// The client is done sending; answer what it already sent.
    eof: bool,
    /// When the connection last read a request or wrote replies ([`coarse_now`]).
    last_active: Duration,
    /// The clock reading taken when the last request's reply was done with:
    /// the next request's start when it was already buffered (nothing was
    /// awaited, nothing written to the socket, in between), so a pipelined
    /// request costs one reading instead of a start and an end. Cleared by
    /// anything that may wait.
    reading: Option<Moment>,
    /// Where an admission's decision is written, reused request after
    /// request: its frame is encoded from here (`cmd::Reply::Admitted`).
    decision: Decision,
}

/// What woke the loop. A reply that waited (for the ledger, or behind one
/// that did) comes by value: boxing it would allocate per such reply.
#[allow(clippy::large_enum_variant)]
enum Event {
    ShuttingDown,
    Reply(ServerFrame),
    IdleTimer,
    Read(Result<Option<BytesMut>, ReadError>),
}

/// What became of a frame's body ([`Handler::take`]).
enum Took {
    /// Queued behind replies still waiting, or waiting itself.
    Queued,
    /// Its reply is encoded; write it out.
    Encoded,
    /// The connection ends with this error frame.
    Close(ErrorCode, String),
    /// The body did not decode.
    Unreadable(ReadError),
    WriteFailed(WriteError),
}

/// Whether the connection goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

// === impl Handler ===

impl Handler {
    pub(super) fn new(conn: Connection, state: State, session: Session) -> Handler {
        let config = state.config();
        Handler {
            conn,
            idle: config.daemon.idle_timeout,
            max_batch: config.daemon.max_batch,
            state,
            session,
            replies: ReplyQueue::new(),
            draining: false,
            eof: false,
            last_active: coarse_now(),
            reading: None,
            decision: Decision::default(),
        }
    }

    pub(super) async fn run(mut self, shutdown: CancellationToken) {
        // One idle timer for the connection's life, pushed back lazily: arming a
        // timer per read would cost more than the decision.
        let idle_timer = tokio::time::sleep(self.idle);
        tokio::pin!(idle_timer);
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        loop {
            if self.eof && self.replies.is_empty() {
                return;
            }
            if self.draining && self.replies.is_empty() {
                self.close(
                    ErrorCode::ShuttingDown,
                    "the daemon is shutting down; reconnect to its successor".into(),
                )
                .await;
                return;
            }
            let reading = !self.draining && !self.eof && self.replies.len() < MAX_IN_FLIGHT;
            // A frame already buffered is taken at once, as the biased select
            // below would take it, without polling the branches ahead of it: a
            // cheap look at the signal stands in for the first, and the other two
            // wait only when no reply is queued, which is checked here too.
            let at_once = reading && self.replies.is_empty() && !shutdown.is_cancelled();
            // A frame already whole in the read buffer is decoded where it
            // lies; when its reply will need room in the write buffer, the room
            // is made first, as `body` makes it for a frame read from the socket.
            if at_once {
                if self.conn.needs_room() && self.conn.has_buffered_frame() {
                    self.reading = None;
                    if !replies::make_room(&mut self.conn, &self.state, &self.session, self.idle)
                        .await
                    {
                        return;
                    }
                }
                if let Some(took) = self.take_buffered() {
                    if self.after(took).await == Flow::Close {
                        return;
                    }
                    continue;
                }
            }
            self.reading = None;
            let event = tokio::select! {
                biased;
                _ = &mut cancelled, if !self.draining => Event::ShuttingDown,
                Some(frame) = self.replies.next(), if !self.replies.is_empty() => Event::Reply(frame),
                () = &mut idle_timer, if reading && self.replies.is_empty() => Event::IdleTimer,
                read = self.conn.read_body(), if reading => Event::Read(read),
            };
            let flow = match event {
                Event::ShuttingDown => {
                    self.draining = true;
                    Flow::Continue
                }
                Event::Reply(frame) => self.write_ready(frame).await,
                Event::IdleTimer => match self.idle_left() {
                    Some(left) => {
                        idle_timer
                            .as_mut()
                            .reset(tokio::time::Instant::now() + left);
                        Flow::Continue
                    }
                    None => self.idle_timeout().await,
                },
                Event::Read(read) => {
                    self.last_active = coarse_now();
                    self.read(read).await
                }
            };
            if flow == Flow::Close {
                return;
            }
        }
    }

    /// Writes `first` and every further reply that is ready now, then flushes once.
    async fn write_ready(&mut self, first: ServerFrame) -> Flow {
        let next_ready = |replies: &mut ReplyQueue| match replies.next().now_or_never() {
            Some(Some(ready)) => Some(ready),
            _ => None,
        };
        if !self.write(Some(&first), next_ready).await {
            return Flow::Close;
        }
        self.last_active = coarse_now();
        Flow::Continue
    }

    /// [`replies::write`] on this connection.
    async fn write(
        &mut self,
        first: Option<&ServerFrame>,
        more: impl FnMut(&mut ReplyQueue) -> Option<ServerFrame>,
    ) -> bool {
        replies::write(
            &mut self.conn,
            &self.state,
            &self.session,
            self.idle,
            first,
            &mut self.replies,
            more,
        )
        .await
    }

    /// How much longer the connection may stay quiet, `None` when its idle time is
    /// up: the timer fires at the deadline it was armed with, and activity since
    /// then pushes the deadline back.
    fn idle_left(&self) -> Option<Duration> {
        let quiet = coarse_now().saturating_sub(self.last_active);
        (quiet < self.idle).then(|| self.idle - quiet)
    }

    async fn idle_timeout(&mut self) -> Flow {
        self.state.counters().hit(Limit::IdleTimeout);
        let idle = self.idle;
        self.close(
            ErrorCode::Timeout,
            format!("no request for {idle:?} (daemon.idle_timeout); reconnect when needed"),
        )
        .await;
        Flow::Close
    }

    /// A read finished: a frame to answer, the end of the client's requests, or an
    /// error that ends the connection (an unknown request kind does not).
    async fn read(&mut self, read: Result<Option<BytesMut>, ReadError>) -> Flow {
        match read {
            Ok(Some(body)) => self.body(body).await,
            Ok(None) => {
                // Gone for good: nobody will read the replies still waiting
                // (an admission in a bulkhead's line would otherwise wait out
                // its `wait_ms` first); dropping them gives back their places.
                if !self.replies.is_empty() && self.conn.peer_hung_up() {
                    return Flow::Close;
                }
                self.eof = true;
                Flow::Continue
            }
            Err(err) => self.unreadable(err).await,
        }
    }

    async fn unreadable(&mut self, err: ReadError) -> Flow {
        match err {
            ReadError::Decode(DecodeError::UnknownRequest { id, kind }) => {
                self.replies
                    .push_back(Queued::Ready(Some(unknown_request(id, kind))));
                Flow::Continue
            }
            ReadError::Decode(DecodeError::VersionMismatch { .. }) => {
                // Only a Hello carries a version; after the handshake this is garbage.
                self.state.counters().hit(Limit::Malformed);
                self.close(
                    ErrorCode::Malformed,
                    "malformed message: a handshake frame after the handshake".into(),
                )
                .await;
                Flow::Close
            }
            err => {
                read_failed(&mut self.conn, &self.state, &self.session, err).await;
                Flow::Close
            }
        }
    }

    /// Answers a frame's body, writing a ready reply at once when nothing is
    /// queued ahead of it.
    async fn body(&mut self, body: BytesMut) -> Flow {
        // Checked here, not in `make_room`: an await on the usual path (room
        // enough) costs the connection's future a state of its own.
        if self.replies.is_empty() && self.conn.needs_room() {
            self.reading = None;
            if !replies::make_room(&mut self.conn, &self.state, &self.session, self.idle).await {
                return Flow::Close;
            }
        }
        let took = self.take(&body);
        self.after(took).await
    }

    /// What follows a frame's decision: its reply written, the connection
    /// closed, or the frame found unreadable.
    async fn after(&mut self, took: Took) -> Flow {
        match took {
            Took::Queued => Flow::Continue,
            // The next request is already here: its reply will follow this
            // one in the same write (`flush_unless_busy` would wait for it),
            // so no write is started for this one.
            Took::Encoded if self.conn.has_buffered_frame() => Flow::Continue,
            Took::Encoded => {
                if self.write(None, |_| None).await {
                    Flow::Continue
                } else {
                    Flow::Close
                }
            }
            Took::Close(code, message) => {
                self.close(code, message).await;
                Flow::Close
            }
            Took::Unreadable(err) => self.unreadable(err).await,
            Took::WriteFailed(err) => {
                log::debug!(session = self.session.id; "session {}: write failed: {err}", self.session.id);
                Flow::Close
            }
        }
    }

    /// Decodes a frame and decides its requests now; a ready reply with
    /// nothing queued ahead of it is encoded into the write buffer, any other
    /// is queued. Not async, and kept out of the connection's future on
    /// purpose: a request or a reply (a few hundred bytes each) that passes
    /// through an async function's body is copied in and out of the future's
    /// state at each step — eight copies per request.
    #[inline(never)]
    fn take(&mut self, body: &[u8]) -> Took {
        let mut decoded = decode_client_frame(body);
        self.take_decoded(&mut decoded)
    }

    /// A decoded frame decided where it was decoded to: the protocol's own
    /// decoder's `Result`, its error made the connection's only when there
    /// is one, so the frame is not moved from one `Result` to another, or
    /// out of it, first (a couple of hundred bytes each time).
    #[inline(always)]
    fn take_decoded(&mut self, decoded: &mut Result<ClientFrame, DecodeError>) -> Took {
        match decoded {
            Ok(frame) => self.take_frame(frame),
            Err(_) => match std::mem::replace(decoded, Ok(ClientFrame::PLACEHOLDER)) {
                Err(err) => Took::Unreadable(err.into()),
                Ok(_) => unreachable!("matched an error above"),
            },
        }
    }

    /// [`Self::take`] of the next frame when all of it is in the read
    /// buffer, decoded where it lies (`Connection::buffered`); `None`
    /// when it is not. One function, as `take` is, so the decoded frame is
    /// not moved from one to the next.
    #[inline(never)]
    fn take_buffered(&mut self) -> Option<Took> {
        let body = match self.conn.buffered()? {
            Ok(body) => body,
            Err(err) => return Some(Took::Unreadable(err)),
        };
        let len = body.len();
        let mut decoded = decode_client_frame(body);
        self.conn.consume(len);
        Some(self.take_decoded(&mut decoded))
    }

    /// [`Self::take`] of a decoded frame, borrowed: the usual request is
    /// decided where it lies, any other frame taken whole.
    #[inline(always)]
    fn take_frame(&mut self, frame: &mut ClientFrame) -> Took {
        // A reload since the last frame: this one is decided with the new
        // config and policy.
        self.session.refresh();
        // Nothing queued ahead: decided where it lies and, when ready,
        // encoded now.
        if let ClientFrame::Request(Envelope { id, request }) = frame {
            if self.replies.is_empty() {
                return self.decide_now(*id, request);
            }
        }
        let max_batch = self.max_batch;
        match std::mem::replace(frame, ClientFrame::PLACEHOLDER) {
            // Refused whole, none of it run, and the connection closed: answering
            // each envelope could not fit in one reply frame (a 1 MiB batch holds
            // ~87,000 requests), and running part of it would leave the client
            // guessing which part.
            ClientFrame::Batch(envelopes) if envelopes.len() > max_batch => {
                let n_requests = envelopes.len();
                drop(envelopes);
                self.state.counters().hit(Limit::MaxBatch);
                Took::Close(
                    ErrorCode::InvalidArgument,
                    format!("a batch of {n_requests} requests exceeds daemon.max_batch = {max_batch}; none of it was run; send at most {max_batch} requests per batch"),
                )
            }
            ClientFrame::Hello(_) => Took::Close(
                ErrorCode::HandshakeRequired,
                "a second Hello on one connection; the handshake happens once".into(),
            ),
            // Behind replies still waiting, or a batch (answered when all its
            // requests are): in line.
            frame => {
                self.replies
                    .push_back(answer(&self.state, &self.session, frame));
                Took::Queued
            }
        }
    }

    /// Decides a request with nothing queued ahead of it and, when its reply
    /// is ready, encodes it; the clock reading it ends with is the start of
    /// the next request if that one is already buffered.
    fn decide_now(&mut self, id: u64, request: &mut Request) -> Took {
        let kind = request.kind();
        let started = self.reading.take().unwrap_or_else(|| self.state.moment());
        let reply = cmd::decide_at(
            &self.state,
            &self.session,
            request,
            started,
            &mut self.decision,
        );
        let (conn, state, session) = (&mut self.conn, &self.state, &self.session);
        let encoded = match reply {
            // By reference: a response is a few hundred bytes.
            cmd::Reply::Ready(ref response) => {
                replies::encode_now(conn, state, session, id, |buf| {
                    encode_reply_into(buf, id, response)
                })
            }
            cmd::Reply::Admitted => replies::encode_now(conn, state, session, id, |buf| {
                cmd::Reply::encode_admitted(buf, id, &self.decision)
            }),
            cmd::Reply::Pending(future) => {
                let future = cmd::timed(&self.state, kind, started, future);
                self.replies.push_back(replies::pending(id, future));
                return Took::Queued;
            }
        };
        let took = match encoded {
            Ok(()) => Took::Encoded,
            Err(err) => Took::WriteFailed(err),
        };
        let ended = self.state.moment();
        cmd::record_duration(kind, started, ended.mono);
        self.reading = Some(ended);
        took
    }

    async fn close(&mut self, code: ErrorCode, message: String) {
        close(&mut self.conn, &self.session, code, message).await;
    }
}

/// A monotonic time good to a few milliseconds (`CLOCK_MONOTONIC_COARSE`), for
/// the idle timeout: reading it costs a fraction of a precise clock read, and it is
/// read on every request.
fn coarse_now() -> Duration {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE).map_or(Duration::ZERO, Duration::from)
}
