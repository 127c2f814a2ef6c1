//! Misbehaving clients: each is disconnected (with an error frame where one can be
//! sent) and a well-behaved client connected the whole time keeps being served.

use std::time::Duration;

use automation_framework::protocol::{ClientFrame, Envelope, ErrorCode, Request, ServerFrame};

use crate::util::{Bystander, Daemon};

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
}

#[tokio::test]
async fn a_four_gib_length_prefix_is_refused_before_allocation() {
    let daemon = Daemon::start("");
    let mut bystander = Bystander::new(&daemon).await;
    let mut raw = daemon.raw().await;
    raw.hello("greedy").await;
    raw.write_bytes(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]).await;
    let message = expect_error_then_close(&mut raw, ErrorCode::FrameTooLarge).await;
    assert!(message.contains("1048576"), "{message}");
    bystander.still_served().await;

    // The same before any handshake.
    let mut raw = daemon.raw().await;
    raw.write_bytes(&[0xFF, 0xFF, 0xFF, 0xFF]).await;
    expect_error_then_close(&mut raw, ErrorCode::FrameTooLarge).await;
    bystander.still_served().await;
}

#[tokio::test]
async fn a_truncated_frame_then_hang_up() {
    let daemon = Daemon::start("");
    let mut bystander = Bystander::new(&daemon).await;
    for _ in 0..10 {
        let mut raw = daemon.raw().await;
        raw.hello("quitter").await;
        raw.write_bytes(&[0, 0, 0, 100, 1, 2, 3]).await;
        drop(raw);
        bystander.still_served().await;
    }
    // The daemon noticed and cleaned up: only the bystander is connected.
    let mut probe = daemon.client("probe").await;
    let status = probe.status().await.unwrap();
    assert_eq!(status.connections, 2, "{status:?}");
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
    let mut bystander = Bystander::new(&daemon).await;
    let second = daemon.client("two").await;
    let _third = daemon.client("three").await;
    let mut raw = daemon.raw().await;
    let message = expect_error_then_close(&mut raw, ErrorCode::TooManyConnections).await;
    assert!(message.contains("max_connections"), "{message}");
    bystander.still_served().await;
    drop(second);
    // The freed slot is usable once the daemon has seen the close. Until then an
    // attempt may be refused before its Hello is even written, so failures to
    // connect are expected here, not panics.
    crate::util::eventually(Duration::from_secs(5), || async {
        automation_framework::client::Client::connect(&daemon.socket, "four", "raw")
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
    let frame = ClientFrame::Batch(
        (0..1000)
            .map(|id| Envelope {
                id,
                request: Request::Status,
            })
            .collect(),
    );
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
}

#[tokio::test]
async fn a_client_that_never_reads_is_disconnected_after_the_idle_timeout() {
    let daemon = Daemon::start("[daemon]\nidle_timeout = \"500ms\"\n");
    let mut raw = daemon.raw().await;
    raw.hello("deaf").await;
    let frame = ClientFrame::Batch(
        (0..1000)
            .map(|id| Envelope {
                id,
                request: Request::Status,
            })
            .collect(),
    );
    let firehose = tokio::spawn(async move {
        for _ in 0..200 {
            raw.send(&frame).await;
        }
    });
    let mut probe = daemon.client("probe").await;
    // The deaf client's slot is freed: only the probe remains connected.
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
