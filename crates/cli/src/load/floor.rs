//! The floor: what the Unix socket and the frame codec alone cost on this machine.
//!
//! An in-process server on a temporary socket that speaks just enough of the
//! protocol for the benchmark driver: it answers a `Hello` with a `Welcome` and
//! every request with a pre-encoded reply of the kind and size the daemon sends
//! (only the request id is patched in). It decodes nothing and decides nothing, and
//! writes like the daemon does (every ready reply, then one flush), on its own
//! multi-threaded runtime as the daemon has. The daemon's figures divided by the
//! floor's are the cost of deciding.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use automation_framework_protocol::frame::{encode, length_codec};
use automation_framework_protocol::{
    AdmitReply, BreakerState, ClientFrame, GuardKind, PeerIdentity, Pong, ReplyEnvelope,
    ReportReply, Request, Response, ServerFrame, Vote, Welcome, PROTOCOL_VERSION,
};

/// A running floor server; dropped, it stops and removes its socket.
pub struct Floor {
    socket: PathBuf,
    shutdown: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

/// The request kinds (variant indices) the floor answers besides `Ping`, as the
/// protocol numbers them.
const ADMIT: usize = 2;
const REPORT: usize = 3;

/// Pre-encoded replies, by request kind.
struct Replies {
    welcome: Bytes,
    pong: Bytes,
    admit: Bytes,
    report: Bytes,
}

impl Floor {
    /// Starts the floor server on a fresh socket in the temp directory, on its own
    /// runtime with `workers` threads.
    ///
    /// # Errors
    /// When the socket cannot be bound or the runtime started.
    pub fn start(workers: usize) -> anyhow::Result<Floor> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let socket = std::env::temp_dir().join(format!(
            "automation-framework-floor-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&socket);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("af-floor")
            .enable_all()
            .build()
            .context("starting the floor's runtime")?;
        let listener = {
            let _guard = runtime.enter();
            UnixListener::bind(&socket)
                .with_context(|| format!("binding the floor socket {}", socket.display()))?
        };
        let replies = std::sync::Arc::new(Replies::new()?);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name("af-floor-main".into())
            .spawn(move || {
                runtime.block_on(async move {
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            accepted = listener.accept() => {
                                let Ok((stream, _)) = accepted else { continue };
                                let replies = std::sync::Arc::clone(&replies);
                                let stop = stop.clone();
                                tokio::spawn(async move {
                                    tokio::select! {
                                        _ = stop.cancelled() => {}
                                        _ = echo(stream, &replies) => {}
                                    }
                                });
                            }
                        }
                    }
                });
                runtime.shutdown_background();
            })
            .context("starting the floor's thread")?;
        Ok(Floor {
            socket,
            shutdown,
            thread: Some(thread),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Answers one connection until it closes.
async fn echo(stream: UnixStream, replies: &Replies) {
    let mut framed = Framed::new(stream, length_codec());
    let mut next = framed.next().await;
    while let Some(Ok(body)) = next {
        let Ok(reply) = replies.to(&body) else {
            return;
        };
        if framed.feed(reply).await.is_err() {
            return;
        }
        next = match framed.next().now_or_never() {
            Some(more) => more,
            None => {
                if SinkExt::<Bytes>::flush(&mut framed).await.is_err() {
                    return;
                }
                framed.next().await
            }
        };
    }
}

impl Replies {
    /// Replies as the daemon words them for a service with a breaker and one rate
    /// limit (the comparison's configuration), so the bytes on the wire match.
    fn new() -> anyhow::Result<Replies> {
        let reply = |response: Response| -> anyhow::Result<Bytes> {
            Ok(Bytes::from(encode(&ServerFrame::Reply(ReplyEnvelope {
                id: 0,
                response,
            }))?))
        };
        let vote = |guard, rule: &str, reason: &str| Vote {
            guard,
            rule: rule.into(),
            allow: true,
            shadow: false,
            reason: reason.into(),
            retry_after_ms: None,
        };
        Ok(Replies {
            welcome: Bytes::from(encode(&ServerFrame::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                server: env!("CARGO_PKG_VERSION").to_owned(),
                session: 1,
                peer: PeerIdentity {
                    uid: 0,
                    gid: 0,
                    pid: 0,
                },
            }))?),
            pong: reply(Response::Pong(Pong {
                ok: true,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                session: 1,
                agent: "bench".to_owned(),
            }))?,
            admit: reply(Response::Admit(AdmitReply {
                allowed: true,
                reservation: Some(1 << 32),
                guard: None,
                rule: None,
                reason: None,
                retry_after_ms: None,
                votes: [
                    vote(GuardKind::Breaker, "bench", "circuit closed"),
                    vote(GuardKind::Rate, "bench", "1 of burst 100000000 taken"),
                ]
                .into(),
                cost: Some(0.0),
                service: None,
            }))?,
            report: reply(Response::Report(ReportReply {
                ok: true,
                duplicate: false,
                breaker: Some(BreakerState::Closed),
                charged: Some(0.0),
                retry: None,
            }))?,
        })
    }

    /// The reply to one frame body: the template of its kind with its id.
    fn to(&self, body: &[u8]) -> anyhow::Result<Bytes> {
        let word = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?))
        };
        let frame = word(0).context("short frame")?;
        if frame == 0 {
            return Ok(self.welcome.clone());
        }
        if frame != ClientFrame::REQUEST_VARIANT {
            // A batch: one report reply per envelope (the driver batches only
            // releases), encoded here; it is off the measured path.
            let n = u64::from_le_bytes(body.get(4..12).context("short batch")?.try_into()?);
            let one = &self.report[4..];
            let mut out = BytesMut::with_capacity(12 + one.len() * n as usize);
            out.extend_from_slice(&2u32.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
            for _ in 0..n {
                out.extend_from_slice(one);
            }
            return Ok(out.freeze());
        }
        let kind = word(12).context("short request")? as usize;
        let template = match kind {
            k if k == Request::Ping.kind() => &self.pong,
            k if k == ADMIT => &self.admit,
            k if k == REPORT => &self.report,
            _ => anyhow::bail!("the floor answers ping, admit and report, not kind {kind}"),
        };
        let mut out = BytesMut::from(&template[..]);
        out[4..12].copy_from_slice(&body[4..12]);
        Ok(out.freeze())
    }
}

/// The request kinds the floor answers, checked against the protocol's indices.
#[cfg(test)]
mod tests {
    use super::*;
    use automation_framework_protocol::frame::decode;
    use automation_framework_protocol::{AdmitRequest, Envelope, ReportRequest};

    #[test]
    fn the_floors_kind_numbers_are_the_protocols() {
        assert_eq!(Request::Admit(AdmitRequest::default()).kind(), ADMIT);
        assert_eq!(Request::Report(ReportRequest::default()).kind(), REPORT);
    }

    #[test]
    fn the_floor_answers_each_kind_with_its_reply_and_the_request_id() {
        let replies = Replies::new().unwrap();
        for (request, want) in [
            (Request::Ping, "pong"),
            (Request::Admit(AdmitRequest::default()), "admit"),
            (Request::Report(ReportRequest::default()), "report"),
        ] {
            let body = encode(&ClientFrame::Request(Envelope { id: 4242, request })).unwrap();
            let reply: ServerFrame = decode(&replies.to(&body).unwrap()).unwrap();
            let ServerFrame::Reply(envelope) = reply else {
                panic!("a reply frame")
            };
            assert_eq!(envelope.id, 4242);
            let got = match envelope.response {
                Response::Pong(_) => "pong",
                Response::Admit(_) => "admit",
                Response::Report(_) => "report",
                other => panic!("{other:?}"),
            };
            assert_eq!(got, want);
        }
        let batch = encode(&ClientFrame::Batch(vec![
            Envelope {
                id: 0,
                request: Request::Report(ReportRequest::default()),
            };
            3
        ]))
        .unwrap();
        let reply: ServerFrame = decode(&replies.to(&batch).unwrap()).unwrap();
        assert!(matches!(reply, ServerFrame::Batch(r) if r.len() == 3));
    }
}
