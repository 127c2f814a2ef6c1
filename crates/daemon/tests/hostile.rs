//! Misbehaving clients: each is disconnected (with an error frame where one can be
//! sent), a well-behaved client connected the whole time keeps being served within
//! its normal latency (`util::NORMAL_LATENCY`), and the daemon's memory stays under
//! `util::RSS_CEILING_MIB`.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio_util::codec::FramedRead;

use automation_framework::protocol::frame::{decode, encode, length_codec};
use automation_framework::protocol::{
    ClientFrame, Envelope, ErrorCode, Hello, Request, ServerFrame, PROTOCOL_VERSION,
};

use crate::util::{Bystander, Daemon, PROMPTLY};

/// A batch of 1,000 status requests: a reply far larger than its request.
fn status_batch() -> ClientFrame {
    ClientFrame::Batch(
        (0..1000)
            .map(|id| Envelope {
                id,
                request: Request::Status,
            })
            .collect(),
    )
}

async fn expect_error_then_close(raw: &mut crate::util::Raw, code: ErrorCode) -> String {
    match raw.recv().await {
        Some(ServerFrame::Error(err)) => {
            assert_eq!(err.code, code, "{}", err.message);
            raw.expect_closed().await;
            err.message
        }
        other => panic!("expected a {code:?} error frame, got {other:?}"),
    }
}

#[tokio::test]
async fn random_bytes() {
    let daemon = Daemon::start("");
    let mut bystander = Bystander::new(&daemon).await;
    // A fixed pseudo-random stream (xorshift) so failures reproduce.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for round in 0..20 {
        let bytes: Vec<u8> = (0..256)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut raw = daemon.raw().await;
        if round % 2 == 1 {
            raw.hello("noisy").await;
        }
        raw.write_bytes(&bytes).await;
        raw.expect_closed().await;
        bystander.still_served().await;
    }
    daemon.assert_rss_bounded("after 20 garbage clients");
}

#[tokio::test]
async fn a_four_gib_length_prefix_is_refused_before_allocation() {
    let daemon = Daemon::start("");
    let mut bystander = Bystander::new(&daemon).await;
    let mut raw = daemon.raw().await;
    raw.hello("greedy").await;
    raw.write_bytes(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]).await;
    let message = expect_error_then_close(&mut raw, ErrorCode::FrameTooLarge).await;
    assert!(
        message.contains(&automation_framework::protocol::MAX_FRAME_LEN.to_string()),
        "{message}"
    );
    bystander.still_served().await;

    // The same before any handshake.
    let mut raw = daemon.raw().await;
    raw.write_bytes(&[0xFF, 0xFF, 0xFF, 0xFF]).await;
    expect_error_then_close(&mut raw, ErrorCode::FrameTooLarge).await;
    bystander.still_served().await;
    daemon.assert_rss_bounded("after two 4 GiB length prefixes");
}

/// Requests pipelined in one write with what follows them: each whole frame
/// is answered from the read buffer, in order, before what cannot be read
/// ends the connection with its reason.
#[tokio::test]
async fn pipelined_frames_then_an_oversized_length_or_garbage_in_the_same_write() {
    let daemon = Daemon::start("");
    let mut bystander = Bystander::new(&daemon).await;
    let ping = |id| {
        framed(&ClientFrame::Request(Envelope {
            id,
            request: Request::Ping,
        }))
    };
    let mut garbage_body = 1u32.to_le_bytes().to_vec();
    garbage_body.extend_from_slice(&9u64.to_le_bytes());
    garbage_body.extend_from_slice(&2u32.to_le_bytes());
    garbage_body.extend_from_slice(&1u8.to_le_bytes());
    garbage_body.extend_from_slice(&u64::MAX.to_le_bytes());
    let mut garbage = (garbage_body.len() as u32).to_be_bytes().to_vec();
    garbage.extend_from_slice(&garbage_body);
    for (tail, code) in [
        (vec![0xFF, 0xFF, 0xFF, 0xFF, 1, 2], ErrorCode::FrameTooLarge),
        (garbage, ErrorCode::Malformed),
    ] {
        let mut raw = daemon.raw().await;
        raw.hello("pipeliner").await;
        let mut bytes: Vec<u8> = (1..=5).flat_map(ping).collect();
        bytes.extend_from_slice(&tail);
        raw.write_bytes(&bytes).await;
        for id in 1..=5 {
            match raw.recv().await {
                Some(ServerFrame::Reply(reply)) => assert_eq!(reply.id, id),
                other => panic!("expected the reply to {id}, got {other:?}"),
            }
        }
        expect_error_then_close(&mut raw, code).await;
        bystander.still_served().await;
    }
}

#[tokio::test]
async fn a_truncated_frame_then_hang_up() {
    let daemon = Daemon::start("");
    let mut bystander = Bystander::new(&daemon).await;
    let request = encode(&ClientFrame::Request(Envelope {
        id: 1,
        request: Request::Status,
    }))
    .unwrap();
    let mut framed = (request.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&request);
    // Vanish at every byte of a frame (inside the length prefix too), before and
    // after the handshake.
    for cut in 0..framed.len() {
        for handshaken in [false, true] {
            let mut raw = daemon.raw().await;
            if handshaken {
                raw.hello("quitter").await;
            }
            raw.write_bytes(&framed[..cut]).await;
            drop(raw);
        }
        bystander.still_served().await;
    }
    for _ in 0..10 {
        let mut raw = daemon.raw().await;
        raw.hello("quitter").await;
        raw.write_bytes(&[0, 0, 0, 100, 1, 2, 3]).await;
        drop(raw);
        bystander.still_served().await;
    }
    daemon.assert_rss_bounded("after clients vanished mid-frame");
    // The daemon noticed and cleaned up: only the bystander (and the probe) are
    // connected.
    let mut probe = daemon.client("probe").await;
    let deadline = Instant::now() + PROMPTLY;
    loop {
        let status = probe.status().await.unwrap();
        if status.connections == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_half_sent_frame_does_not_block_anyone() {
    let daemon = Daemon::start("");
    let mut bystander = Bystander::new(&daemon).await;
    let mut raw = daemon.raw().await;
    raw.hello("slow").await;
    // Announces 50 bytes, sends 3, and keeps the connection open.
    raw.write_bytes(&[0, 0, 0, 50, 1, 2, 3]).await;
    for _ in 0..5 {
        bystander.still_served().await;
    }
}

#[tokio::test]
async fn a_malformed_message_in_a_valid_frame() {
    let daemon = Daemon::start("");
    let mut bystander = Bystander::new(&daemon).await;
    let mut raw = daemon.raw().await;
    raw.hello("broken").await;
    // Request variant, id, then an Admit whose string length runs past the frame.
    let mut body = 1u32.to_le_bytes().to_vec();
    body.extend_from_slice(&7u64.to_le_bytes());
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(&1u8.to_le_bytes());
    body.extend_from_slice(&u64::MAX.to_le_bytes());
    raw.send_body(body).await;
    let message = expect_error_then_close(&mut raw, ErrorCode::Malformed).await;
    assert!(message.contains("malformed"), "{message}");
    bystander.still_served().await;
}

#[tokio::test]
async fn a_silent_client_is_timed_out_at_the_handshake() {
    let daemon = Daemon::start("[daemon]\nhandshake_timeout = \"200ms\"\n");
    let mut bystander = Bystander::new(&daemon).await;
    let mut raw = daemon.raw().await;
    let message = expect_error_then_close(&mut raw, ErrorCode::Timeout).await;
    assert!(message.contains("handshake"), "{message}");
    bystander.still_served().await;
}

#[tokio::test]
async fn an_idle_session_is_closed() {
    let daemon = Daemon::start("[daemon]\nidle_timeout = \"300ms\"\n");
    let mut raw = daemon.raw().await;
    raw.hello("idle").await;
    let message = expect_error_then_close(&mut raw, ErrorCode::Timeout).await;
    assert!(message.contains("idle_timeout"), "{message}");
}

#[tokio::test]
async fn a_second_hello_closes_the_connection() {
    let daemon = Daemon::start("");
    let mut raw = daemon.raw().await;
    raw.hello("twice").await;
    raw.send(&ClientFrame::Hello(automation_framework::protocol::Hello {
        version: automation_framework::protocol::PROTOCOL_VERSION,
        client: "again".into(),
        agent: "twice".into(),
    }))
    .await;
    expect_error_then_close(&mut raw, ErrorCode::HandshakeRequired).await;
}

#[tokio::test]
async fn the_connection_cap_turns_extra_clients_away_with_a_reason() {
    let daemon = Daemon::start("[daemon]\nmax_connections = 3\n");
    let mut bystander = Bystander::from_client(daemon.client_when_free("bystander").await);
    let second = daemon.client_when_free("two").await;
    let _third = daemon.client_when_free("three").await;
    let mut raw = daemon.raw().await;
    let message = expect_error_then_close(&mut raw, ErrorCode::TooManyConnections).await;
    assert!(message.contains("max_connections"), "{message}");
    bystander.still_served().await;
    drop(second);
    // The freed slot is usable once the daemon has seen the close. Until then an
    // attempt may be refused before its Hello is even written, so failures to
    // connect are expected here, not panics.
    crate::util::eventually(Duration::from_secs(5), || async {
        automation_framework_client::Client::connect(&daemon.socket, "four", "raw")
            .await
            .ok()
    })
    .await;
}

#[tokio::test]
async fn a_client_that_pipelines_without_reading_does_not_stall_others() {
    let daemon = Daemon::start("");
    let mut bystander = Bystander::new(&daemon).await;
    let mut raw = daemon.raw().await;
    raw.hello("firehose").await;
    // Far more replies than socket buffers hold, never read: the daemon's writer for
    // this connection blocks (backpressure), and so, eventually, does this sender.
    let frame = status_batch();
    let firehose = tokio::spawn(async move {
        for _ in 0..200 {
            raw.send(&frame).await;
        }
        raw
    });
    for _ in 0..10 {
        bystander.still_served().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    firehose.abort();
    daemon.assert_rss_bounded("while a client pipelines batches without reading");
}

#[tokio::test]
async fn a_client_that_never_reads_is_disconnected_after_the_idle_timeout() {
    let daemon = Daemon::start("[daemon]\nidle_timeout = \"500ms\"\n");
    deaf_client_is_cut_off(&daemon, std::iter::repeat(status_batch())).await;
}

/// The same with single requests, whose ready replies are encoded the moment
/// they are decided: once the write buffer is full, making room for the next
/// reply waits under the idle timeout too, so the deaf client is still cut off.
#[tokio::test]
async fn a_client_that_never_reads_single_replies_is_disconnected_after_the_idle_timeout() {
    let daemon = Daemon::start("[daemon]\nidle_timeout = \"500ms\"\n");
    let pings = (0..).map(|id| {
        ClientFrame::Request(Envelope {
            id,
            request: Request::Ping,
        })
    });
    deaf_client_is_cut_off(&daemon, pings).await;
}

/// A client sends `frames` and never reads a reply; it keeps its connection
/// until the daemon hangs up, which must happen: only a probe is left.
async fn deaf_client_is_cut_off(
    daemon: &Daemon,
    frames: impl Iterator<Item = ClientFrame> + Send + 'static,
) {
    let mut raw = daemon.raw().await;
    raw.hello("deaf").await;
    let firehose = tokio::spawn(async move {
        for frame in frames {
            // Fails once the daemon has given up on this client.
            if !raw.try_send(&frame).await {
                break;
            }
        }
    });
    let mut probe = daemon.client("probe").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while probe.status().await.unwrap().connections != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the deaf client was never disconnected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    firehose.abort();
}

/// Thousands of single requests pipelined and never read: the daemon answers into
/// the socket until the kernel's buffers are full, then stops reading this client
/// (backpressure). Its memory does not grow with the number of requests sent.
#[tokio::test]
async fn pipelining_thousands_of_requests_without_reading_is_bounded() {
    let daemon = Daemon::start("");
    let mut bystander = Bystander::new(&daemon).await;
    let mut raw = daemon.raw().await;
    raw.hello("deaf").await;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = std::sync::Arc::clone(&sent);
    let firehose = tokio::spawn(async move {
        for id in 0..100_000 {
            raw.send(&ClientFrame::Request(Envelope {
                id,
                request: Request::Status,
            }))
            .await;
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // Until the sender is blocked by backpressure, or has sent everything.
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        bystander.still_served().await;
        let now = sent.load(std::sync::atomic::Ordering::Relaxed);
        if now == last || firehose.is_finished() {
            break;
        }
        last = now;
    }
    eprintln!("the deaf client got {last} requests out before it was blocked");
    assert!(
        last < 100_000,
        "the daemon kept reading from a client that never reads"
    );
    for _ in 0..5 {
        bystander.still_served().await;
    }
    daemon.assert_rss_bounded("with a deaf pipelining client blocked");
    firehose.abort();
}

/// 1,000 connections that never send a byte (limits raised so they are all
/// accepted and kept): the daemon holds them cheaply and serves everyone else.
#[tokio::test]
async fn a_thousand_idle_connections_that_never_handshake() {
    const IDLE: usize = 1000;
    let daemon = Daemon::start(
        "[daemon]\nmax_connections = 1100\nmax_connections_per_uid = 1100\nhandshake_timeout = \"60s\"\n",
    );
    let mut bystander = Bystander::new(&daemon).await;
    let quiet_rss = daemon.rss_kib();
    // The harness's readiness probes are connections the daemon closes a moment
    // later: take the baseline once the count has stopped moving.
    let mut fds_before = daemon.open_fds();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = daemon.open_fds();
        if now == fds_before {
            break;
        }
        fds_before = now;
    }
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(UnixStream::connect(&daemon.socket).await.expect("connect"));
    }
    // Connected is not accepted: wait until the daemon holds every one.
    crate::util::eventually(PROMPTLY, || async {
        (daemon.open_fds() >= fds_before + IDLE).then_some(())
    })
    .await;
    for _ in 0..20 {
        bystander.still_served().await;
    }
    // A newcomer is served as promptly.
    let started = Instant::now();
    let mut newcomer = daemon.client("newcomer").await;
    newcomer.ping().await.unwrap();
    let took = started.elapsed();
    assert!(took < crate::util::NORMAL_LATENCY, "newcomer took {took:?}");
    eprintln!(
        "daemon RSS quiet: {:.1} MiB; newcomer connected and answered in {took:?}",
        quiet_rss as f64 / 1024.0
    );
    daemon.assert_rss_bounded("holding 1,000 idle connections");
    drop(idle);
}

/// Clients that send one byte per second, before and after the handshake: the
/// timeouts cover the whole frame, not each byte, so trickling does not keep a
/// connection alive, and nobody else waits for them.
#[tokio::test]
async fn clients_that_send_one_byte_per_second_are_timed_out() {
    let daemon = Daemon::start("[daemon]\nhandshake_timeout = \"2s\"\nidle_timeout = \"2s\"\n");
    let mut bystander = Bystander::new(&daemon).await;
    let hello = framed(&ClientFrame::Hello(Hello {
        version: PROTOCOL_VERSION,
        client: "slow".into(),
        agent: "slow".into(),
    }));
    let request = framed(&ClientFrame::Request(Envelope {
        id: 1,
        request: Request::Ping,
    }));
    let mut trickles = Vec::new();
    for n in 0..20 {
        let stream = UnixStream::connect(&daemon.socket).await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut replies = FramedRead::new(read, length_codec());
        let handshaken = n % 2 == 1;
        let hello = hello.clone();
        let request = request.clone();
        trickles.push(tokio::spawn(async move {
            if handshaken {
                write.write_all(&hello).await.unwrap();
                let welcome = replies.next().await.unwrap().unwrap();
                assert!(matches!(decode(&welcome).unwrap(), ServerFrame::Welcome(_)));
            }
            let slow = if handshaken { request } else { hello };
            let started = Instant::now();
            let trickle = async {
                for byte in slow {
                    if write.write_all(&[byte]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                std::future::pending::<()>().await;
            };
            let frame = tokio::select! {
                _ = trickle => unreachable!("the trickle never ends by itself"),
                frame = replies.next() => frame,
            };
            let frame: ServerFrame =
                decode(&frame.expect("an error frame").expect("read")).unwrap();
            match frame {
                ServerFrame::Error(err) => {
                    assert_eq!(err.code, ErrorCode::Timeout, "{}", err.message)
                }
                other => panic!("expected a Timeout error, got {other:?}"),
            }
            started.elapsed()
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        bystander.still_served().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for trickle in trickles {
        let took = tokio::time::timeout(PROMPTLY, trickle)
            .await
            .expect("every trickling client is timed out")
            .expect("trickle task");
        assert!(took < Duration::from_secs(4), "timed out after {took:?}");
    }
    daemon.assert_rss_bounded("after 20 trickling clients");
}

/// A message body with its length prefix.
fn framed(frame: &ClientFrame) -> Vec<u8> {
    let body = encode(frame).unwrap();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}
