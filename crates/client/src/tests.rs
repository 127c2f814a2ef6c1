//! The client against a fake daemon that breaks the protocol: a library an
//! agent links must say what went wrong, not hand back another request's
//! answer.

use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;

use super::*;
use automation_framework_protocol::frame::MAX_FRAME_LEN;
use automation_framework_protocol::{ErrorCode, PeerIdentity, ReplyEnvelope, Welcome};

/// A fake daemon for one connection. It answers each frame it reads, the
/// `Hello` too, by writing the bytes `answer` returns (whole frames, length
/// prefix included, so a test can break the framing as well), or hangs up
/// when `answer` returns `None`. It records every frame it read and hands them
/// back when the connection ends, so a test sees exactly what the client sent.
async fn fake_peer(
    answer: impl Fn(&ClientFrame) -> Option<Vec<u8>> + Send + 'static,
) -> (
    tempfile::TempDir,
    PathBuf,
    tokio::task::JoinHandle<Vec<ClientFrame>>,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fake.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let seen = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut framed = Framed::new(stream, length_codec());
        let mut seen = Vec::new();
        while let Some(frame) = recv_client(&mut framed).await {
            let bytes = answer(&frame);
            seen.push(frame);
            match bytes {
                // The client may have gone already; what it read is the test's business.
                Some(bytes) => {
                    let _ = framed.get_mut().write_all(&bytes).await;
                }
                None => break,
            }
        }
        seen
    });
    (dir, path, seen)
}

/// A daemon that welcomes one client, then answers each frame it reads with
/// `answer`'s frame.
async fn fake_daemon(
    answer: impl Fn(ClientFrame) -> ServerFrame + Send + 'static,
) -> (
    tempfile::TempDir,
    PathBuf,
    tokio::task::JoinHandle<Vec<ClientFrame>>,
) {
    fake_peer(move |frame| {
        Some(match frame {
            ClientFrame::Hello(_) => frame_bytes(&welcome()),
            other => frame_bytes(&answer(other.clone())),
        })
    })
    .await
}

/// A daemon that answers every request with its own id, as the real one does.
async fn echo_daemon() -> (
    tempfile::TempDir,
    PathBuf,
    tokio::task::JoinHandle<Vec<ClientFrame>>,
) {
    fake_daemon(|frame| match frame {
        ClientFrame::Request(envelope) => pong_for(envelope.id),
        ClientFrame::Batch(envelopes) => ServerFrame::Batch(
            envelopes
                .iter()
                .map(|e| ReplyEnvelope {
                    id: e.id,
                    response: pong(),
                })
                .collect(),
        ),
        ClientFrame::Hello(_) => welcome(),
    })
    .await
}

async fn recv_client(framed: &mut Framed<UnixStream, LengthDelimitedCodec>) -> Option<ClientFrame> {
    let body = framed.next().await?.ok()?;
    decode(&body).ok()
}

/// `body` as a frame: its length, big-endian, then the body.
fn raw_frame(body: &[u8]) -> Vec<u8> {
    let mut bytes = u32::try_from(body.len())
        .expect("a body under 4 GiB")
        .to_be_bytes()
        .to_vec();
    bytes.extend_from_slice(body);
    bytes
}

fn frame_bytes(frame: &ServerFrame) -> Vec<u8> {
    raw_frame(&encode(frame).expect("encode"))
}

fn welcome() -> ServerFrame {
    ServerFrame::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        server: "fake".into(),
        session: 1,
        peer: PeerIdentity {
            uid: 0,
            gid: 0,
            pid: 0,
        },
    })
}

fn pong() -> Response {
    Response::Pong(automation_framework_protocol::Pong {
        ok: true,
        version: "fake".into(),
        session: 1,
        agent: "a".into(),
    })
}

fn pong_for(id: u64) -> ServerFrame {
    ServerFrame::Reply(ReplyEnvelope {
        id,
        response: pong(),
    })
}

fn error_reply(code: ErrorCode, message: &str) -> ErrorReply {
    ErrorReply {
        code,
        message: message.into(),
    }
}

/// The ids of the requests among `frames`, in the order they were sent.
fn request_ids(frames: &[ClientFrame]) -> Vec<u64> {
    frames
        .iter()
        .flat_map(|frame| match frame {
            ClientFrame::Request(envelope) => vec![envelope.id],
            ClientFrame::Batch(envelopes) => envelopes.iter().map(|e| e.id).collect(),
            ClientFrame::Hello(_) => vec![],
        })
        .collect()
}

#[tokio::test]
async fn a_reply_to_another_request_is_a_protocol_violation() {
    let (_dir, path, _) = fake_daemon(|frame| match frame {
        ClientFrame::Request(envelope) => pong_for(envelope.id + 1),
        _ => pong_for(0),
    })
    .await;
    let mut client = Client::connect(&path, "a", "t").await.expect("welcomed");
    let err = client.call(Request::Ping).await.expect_err("wrong id");
    assert!(
        matches!(&err, ClientError::Protocol(why) if why.contains("reply id 2 for request 1")),
        "{err}"
    );
}

/// A caller that pipelined a request with `send` and then used `call` before
/// reading its reply gets the earlier request's reply first: `call` must say so,
/// not hand the Pong of request 1 back as the answer to request 2 (an `Admit`'s
/// reply taken for another `Admit`'s would spend the wrong reservation).
#[tokio::test]
async fn a_reply_to_an_earlier_request_is_a_protocol_violation() {
    let (_dir, path, _) = echo_daemon().await;
    let mut client = Client::connect(&path, "a", "t").await.expect("welcomed");
    assert_eq!(client.send(Request::Ping).await.expect("sent"), 1);
    let err = client.call(Request::Ping).await.expect_err("stale reply");
    assert!(
        matches!(&err, ClientError::Protocol(why) if why.contains("reply id 1 for request 2")),
        "{err}"
    );
}

#[tokio::test]
async fn a_batch_answered_out_of_order_is_a_protocol_violation() {
    let (_dir, path, _) = fake_daemon(|frame| match frame {
        ClientFrame::Batch(envelopes) => ServerFrame::Batch(
            envelopes
                .iter()
                .rev()
                .map(|e| match pong_for(e.id) {
                    ServerFrame::Reply(reply) => reply,
                    _ => unreachable!("pong_for makes a reply"),
                })
                .collect(),
        ),
        _ => pong_for(0),
    })
    .await;
    let mut client = Client::connect(&path, "a", "t").await.expect("welcomed");
    let err = client
        .batch(vec![Request::Ping, Request::Ping])
        .await
        .expect_err("reversed");
    assert!(
        matches!(&err, ClientError::Protocol(why) if why.contains("batch reply ids [2, 1] for requests [1, 2]")),
        "{err}"
    );
}

/// The client numbers its requests 1, 2, 3, … per connection, whichever way
/// they are sent (PROTOCOL.md 4.4): `send`, `call` and each request of a
/// `batch` take the next number, so no two requests of a connection share an
/// id and the id check can tell their replies apart.
#[tokio::test]
async fn requests_are_numbered_from_one_across_send_call_and_batch() {
    let (_dir, path, seen) = echo_daemon().await;
    let mut client = Client::connect(&path, "a", "t").await.expect("welcomed");
    assert_eq!(client.send(Request::Ping).await.expect("sent"), 1);
    assert_eq!(client.recv().await.expect("reply").id, 1);
    client.ping().await.expect("pong");
    let replies = client
        .batch(vec![Request::Ping, Request::Ping])
        .await
        .expect("batch");
    assert_eq!(replies.len(), 2);
    client.ping().await.expect("pong");
    drop(client);
    assert_eq!(request_ids(&seen.await.expect("fake")), [1, 2, 3, 4, 5]);
}

/// `feed` only queues; `flush` is what writes the queue. Requests fed and
/// flushed reach the daemon, each with its own id, before the connection is
/// closed (a queue dropped unwritten would lose them without an error).
#[tokio::test]
async fn fed_requests_reach_the_daemon_when_flushed() {
    let (_dir, path, seen) = echo_daemon().await;
    let mut client = Client::connect(&path, "a", "t").await.expect("welcomed");
    assert_eq!(client.feed(Request::Ping).await.expect("fed"), 1);
    assert_eq!(client.feed(Request::Status).await.expect("fed"), 2);
    client.flush().await.expect("flushed");
    drop(client);
    let seen = seen.await.expect("fake");
    assert_eq!(request_ids(&seen), [1, 2]);
    assert!(
        matches!(&seen[2], ClientFrame::Request(e) if e.request == Request::Status),
        "{seen:?}"
    );
}

/// The `Hello` carries this protocol version, the agent the connection acts
/// as, and the program's name, each in its own field: the daemon decides the
/// agent's budgets and bindings by that name, so a swap acts as another agent.
#[tokio::test]
async fn the_hello_names_the_version_the_agent_and_the_client() {
    let (_dir, path, seen) = echo_daemon().await;
    let client = Client::connect(&path, "planner", "tool/1.0")
        .await
        .expect("welcomed");
    assert_eq!(client.welcome().server, "fake");
    drop(client);
    assert_eq!(
        seen.await.expect("fake")[0],
        ClientFrame::Hello(Hello {
            version: PROTOCOL_VERSION,
            client: "tool/1.0".into(),
            agent: "planner".into(),
        })
    );
}

/// The blocking client's `connect` takes the same `agent` and `client` as the
/// async one, in that order, and sends them in the same fields.
#[tokio::test]
async fn the_blocking_client_sends_the_same_hello() {
    let (_dir, path, seen) = echo_daemon().await;
    // A thread of its own: the blocking client runs its own runtime, which may
    // not be started inside this test's.
    let blocking = tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || {
            let mut client =
                BlockingClient::connect(&path, "planner", "tool/1.0").expect("welcomed");
            assert_eq!(client.welcome().server, "fake");
            assert!(client.ping().expect("pong").ok);
        })
        .join()
    });
    blocking.await.expect("joined").expect("blocking client");
    assert_eq!(
        seen.await.expect("fake")[0],
        ClientFrame::Hello(Hello {
            version: PROTOCOL_VERSION,
            client: "tool/1.0".into(),
            agent: "planner".into(),
        })
    );
}

/// A daemon that turns a connection away (access policy, connection caps)
/// writes its `Error` and closes without reading the `Hello`, so sending the
/// `Hello` fails with a broken pipe. The client must still read the reason
/// waiting on the socket (PROTOCOL.md 4.2) and report it, not the broken pipe.
/// The `Hello` here is 1 MiB long, more than the socket buffers hold, so its
/// write is still under way when the daemon closes, whichever runs first.
#[tokio::test]
async fn a_refusal_sent_before_the_hello_is_read_is_reported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fake.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let refusal = ServerFrame::Error(error_reply(ErrorCode::NotPermitted, "uid 7 may not"));
        stream
            .write_all(&frame_bytes(&refusal))
            .await
            .expect("refusal written");
        // Dropped unread: the client's pending write fails.
    });
    let long_name = "c".repeat(1 << 20);
    let err = Client::connect(&path, "a", &long_name)
        .await
        .err()
        .expect("refused");
    assert_closed_with(&err, ErrorCode::NotPermitted, "uid 7 may not");
}

/// An `Error` frame instead of the `Welcome` is the daemon's refusal of the
/// handshake: `Closed`, with its code and message, never `Refused` (which
/// would tell the caller the connection goes on).
#[tokio::test]
async fn an_error_frame_instead_of_the_welcome_is_closed() {
    let (_dir, path, _) = fake_peer(|_| {
        Some(frame_bytes(&ServerFrame::Error(error_reply(
            ErrorCode::VersionMismatch,
            "speak version 3",
        ))))
    })
    .await;
    let err = Client::connect(&path, "a", "t")
        .await
        .err()
        .expect("refused");
    assert_closed_with(&err, ErrorCode::VersionMismatch, "speak version 3");
}

/// An `Error` frame instead of a reply (or a batch's reply) means the daemon
/// closed the connection: `Closed`, keeping the code and the message, and its
/// text says so in the protocol's spelling of the code.
#[tokio::test]
async fn an_error_frame_instead_of_a_reply_is_closed_with_its_reason() {
    let closing = || ServerFrame::Error(error_reply(ErrorCode::ShuttingDown, "stopping"));
    for batch in [false, true] {
        let (_dir, path, _) = fake_daemon(move |_| closing()).await;
        let mut client = Client::connect(&path, "a", "t").await.expect("welcomed");
        let err = if batch {
            client.batch(vec![Request::Ping]).await.expect_err("closed")
        } else {
            client.call(Request::Ping).await.expect_err("closed")
        };
        assert!(
            matches!(&err, ClientError::Closed(e) if *e == error_reply(ErrorCode::ShuttingDown, "stopping")),
            "batch {batch}: {err:?}"
        );
        assert_eq!(
            err.to_string(),
            "daemon closed the connection: shutting_down: stopping"
        );
    }
}

/// A request answered with an error is `Refused`, with the daemon's code and
/// its whole message (what was wrong and what to do), shown as
/// `code: message` in the protocol's spelling of the code.
#[tokio::test]
async fn an_error_reply_is_refused_with_its_code_and_message() {
    let (_dir, path, _) = fake_daemon(|frame| match frame {
        ClientFrame::Request(envelope) => ServerFrame::Reply(ReplyEnvelope {
            id: envelope.id,
            response: Response::Error(error_reply(ErrorCode::NotPermitted, "uid 7 is no admin")),
        }),
        _ => pong_for(0),
    })
    .await;
    let mut client = Client::connect(&path, "a", "t").await.expect("welcomed");
    let err = client.reload().await.expect_err("refused");
    assert!(
        matches!(&err, ClientError::Refused(e) if *e == error_reply(ErrorCode::NotPermitted, "uid 7 is no admin")),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "not_permitted: uid 7 is no admin");
}

/// A daemon that hangs up without a word, after reading the request, leaves
/// the caller `Disconnected` (reconnect and retry), not an I/O error.
#[tokio::test]
async fn a_daemon_that_hangs_up_leaves_the_client_disconnected() {
    let (_dir, path, _) = fake_peer(|frame| match frame {
        ClientFrame::Hello(_) => Some(frame_bytes(&welcome())),
        _ => None,
    })
    .await;
    let mut client = Client::connect(&path, "a", "t").await.expect("welcomed");
    let err = client.ping().await.expect_err("hung up");
    assert!(matches!(err, ClientError::Disconnected), "{err:?}");
}

/// A reply whose body is not a message is the daemon's protocol violation,
/// and the decoder's reason is kept.
#[tokio::test]
async fn a_reply_that_does_not_decode_is_a_protocol_violation() {
    let (_dir, path, _) = fake_peer(|frame| match frame {
        ClientFrame::Hello(_) => Some(frame_bytes(&welcome())),
        _ => Some(raw_frame(&[0xff; 8])),
    })
    .await;
    let mut client = Client::connect(&path, "a", "t").await.expect("welcomed");
    let err = client.ping().await.expect_err("garbage");
    assert!(
        matches!(&err, ClientError::Protocol(why) if why.contains("malformed")),
        "{err:?}"
    );
}

/// A Pong whose frame body is exactly `len` bytes.
fn pong_of_len(id: u64, len: usize) -> (Vec<u8>, usize) {
    let base = encode(&pong_for(id)).expect("encode").len() - "fake".len();
    let padding = len - base;
    let frame = ServerFrame::Reply(ReplyEnvelope {
        id,
        response: Response::Pong(automation_framework_protocol::Pong {
            ok: true,
            version: "v".repeat(padding),
            session: 1,
            agent: "a".into(),
        }),
    });
    let body = encode(&frame).expect("encode");
    assert_eq!(body.len(), len);
    (body, padding)
}

/// A reply body of exactly `MAX_FRAME_LEN` bytes is allowed (PROTOCOL.md 2):
/// the client reads it like any other.
#[tokio::test]
async fn a_reply_of_exactly_the_frame_limit_is_read() {
    let (_dir, path, _) = fake_peer(|frame| match frame {
        ClientFrame::Hello(_) => Some(frame_bytes(&welcome())),
        ClientFrame::Request(envelope) => {
            Some(raw_frame(&pong_of_len(envelope.id, MAX_FRAME_LEN).0))
        }
        ClientFrame::Batch(_) => None,
    })
    .await;
    let mut client = Client::connect(&path, "a", "t").await.expect("welcomed");
    let pong = client.ping().await.expect("read");
    assert_eq!(pong.version.len(), pong_of_len(1, MAX_FRAME_LEN).1);
}

/// The client applies the daemon's limit to what it receives: a length prefix
/// one byte above `MAX_FRAME_LEN` is refused as invalid data when the prefix
/// is read, before the body is (here the body follows, so a client without the
/// limit would read it and fail to decode it instead).
#[tokio::test]
async fn a_reply_above_the_frame_limit_is_refused_at_its_prefix() {
    let (_dir, path, _) = fake_peer(|frame| match frame {
        ClientFrame::Hello(_) => Some(frame_bytes(&welcome())),
        ClientFrame::Request(envelope) => {
            // One byte more than may be encoded: the limit's Pong and a trailing byte.
            let mut body = pong_of_len(envelope.id, MAX_FRAME_LEN).0;
            body.push(0);
            Some(raw_frame(&body))
        }
        ClientFrame::Batch(_) => None,
    })
    .await;
    let mut client = Client::connect(&path, "a", "t").await.expect("welcomed");
    let err = client.ping().await.expect_err("too large");
    assert!(
        matches!(&err, ClientError::Io(e) if e.kind() == io::ErrorKind::InvalidData),
        "{err:?}"
    );
}

/// An empty batch is answered with an empty `Batch` (PROTOCOL.md 4.5), which
/// is no error.
#[tokio::test]
async fn an_empty_batch_has_no_replies() {
    let (_dir, path, _) = echo_daemon().await;
    let mut client = Client::connect(&path, "a", "t").await.expect("welcomed");
    assert!(client.batch(vec![]).await.expect("answered").is_empty());
}

/// The typed helpers send the filter or argument they were given, so asking
/// for one breaker, one agent's budget or one quota does not ask for all, and
/// a forced breaker is forced the way asked.
#[tokio::test]
async fn the_helpers_send_their_arguments() {
    let (_dir, path, seen) = fake_daemon(|frame| match frame {
        ClientFrame::Request(envelope) => ServerFrame::Reply(ReplyEnvelope {
            id: envelope.id,
            response: Response::Error(error_reply(ErrorCode::Internal, "fake")),
        }),
        _ => pong_for(0),
    })
    .await;
    let mut client = Client::connect(&path, "a", "t").await.expect("welcomed");
    let _ = client.breakers(Some("llm".into())).await;
    let _ = client.budget(Some("coder".into())).await;
    let _ = client.quotas(Some("tokens".into())).await;
    let _ = client
        .force_breaker("search".into(), BreakerForce::Open)
        .await;
    drop(client);
    let requests: Vec<Request> = seen
        .await
        .expect("fake")
        .into_iter()
        .filter_map(|frame| match frame {
            ClientFrame::Request(envelope) => Some(envelope.request),
            _ => None,
        })
        .collect();
    assert_eq!(
        requests,
        [
            Request::Breakers(BreakersRequest {
                service: Some("llm".into())
            }),
            Request::Budget(BudgetRequest {
                agent: Some("coder".into())
            }),
            Request::Quotas(QuotasRequest {
                quota: Some("tokens".into())
            }),
            Request::ForceBreaker(ForceBreakerRequest {
                service: "search".into(),
                force: BreakerForce::Open,
            }),
        ]
    );
}

/// Nothing at the socket path is a `Connect` error naming the path, with the
/// hint for that case (is the daemon running, where is its socket).
#[tokio::test]
async fn a_missing_socket_is_a_connect_error_with_its_hint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nothing.sock");
    let err = Client::connect(&path, "a", "t")
        .await
        .err()
        .expect("nothing there");
    assert!(
        matches!(&err, ClientError::Connect { path: p, error } if *p == path && error.kind() == io::ErrorKind::NotFound),
        "{err:?}"
    );
    assert!(err.to_string().contains("no socket there"), "{err}");
}

/// `err` is the daemon closing the connection with `code` and `message`.
fn assert_closed_with(err: &ClientError, code: ErrorCode, message: &str) {
    assert!(
        matches!(err, ClientError::Closed(e) if e.code == code && e.message == message),
        "{err:?}"
    );
}
