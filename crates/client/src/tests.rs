//! The client against a fake daemon that breaks the protocol: a library an
//! agent links must say what went wrong, not hand back another request's
//! answer.

use tokio::net::UnixListener;

use super::*;
use automation_framework_protocol::{PeerIdentity, ReplyEnvelope, Welcome};

/// A daemon that welcomes one client, then answers each frame it reads with
/// `answer`'s frame.
async fn fake_daemon(
    answer: impl Fn(ClientFrame) -> ServerFrame + Send + 'static,
) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fake.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut framed = Framed::new(stream, length_codec());
        let _hello = recv_client(&mut framed).await;
        let welcome = ServerFrame::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            server: "fake".into(),
            session: 1,
            peer: PeerIdentity {
                uid: 0,
                gid: 0,
                pid: 0,
            },
        });
        reply(&mut framed, &welcome).await;
        while let Some(frame) = recv_client(&mut framed).await {
            reply(&mut framed, &answer(frame)).await;
        }
    });
    (dir, path)
}

async fn recv_client(framed: &mut Framed<UnixStream, LengthDelimitedCodec>) -> Option<ClientFrame> {
    let body = framed.next().await?.ok()?;
    decode(&body).ok()
}

async fn reply(framed: &mut Framed<UnixStream, LengthDelimitedCodec>, frame: &ServerFrame) {
    let body = encode(frame).expect("encode");
    framed.send(bytes::Bytes::from(body)).await.expect("send");
}

fn pong_for(id: u64) -> ServerFrame {
    ServerFrame::Reply(ReplyEnvelope {
        id,
        response: Response::Pong(automation_framework_protocol::Pong {
            ok: true,
            version: "fake".into(),
            session: 1,
            agent: "a".into(),
        }),
    })
}

#[tokio::test]
async fn a_reply_to_another_request_is_a_protocol_violation() {
    let (_dir, path) = fake_daemon(|frame| match frame {
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

#[tokio::test]
async fn a_batch_answered_out_of_order_is_a_protocol_violation() {
    let (_dir, path) = fake_daemon(|frame| match frame {
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
