//! Per-connection and per-uid limits, in process so each test can also check that
//! the limit was counted (`State::counters`, the future metric). Every limit gives
//! a typed error; none stalls the other clients.

use std::time::Duration;

use automation_framework::protocol::{
    BreakersRequest, ClientFrame, ErrorCode, Outcome, ReportRequest, Request, Response, ServerFrame,
};
use automation_framework::state::Limit;
use automation_framework_client::ClientError;

use crate::util::{eventually, InProcess};

fn report(service: String) -> Request {
    Request::Report(ReportRequest {
        reservation: None,
        service: Some(service.into()),
        outcome: Outcome::Success,
        units: None,
        latency_ms: None,
        ..Default::default()
    })
}

#[tokio::test]
async fn one_uid_cannot_take_more_than_its_connections() {
    let server = InProcess::start("[daemon]\nmax_connections_per_uid = 2\n").await;
    let mut first = server.client("a").await;
    let second = server.client("b").await;
    let mut raw = server.raw().await;
    match raw.recv().await {
        Some(ServerFrame::Error(err)) => {
            assert_eq!(err.code, ErrorCode::TooManyConnections);
            let uid = nix::unistd::geteuid().as_raw();
            assert!(
                err.message.starts_with(&format!(
                    "uid {uid} already holds 2 connections (daemon.max_connections_per_uid)"
                )),
                "{}",
                err.message
            );
        }
        other => panic!("expected TooManyConnections, got {other:?}"),
    }
    raw.expect_closed().await;
    assert_eq!(server.hits(Limit::MaxConnectionsPerUid), 1);
    first.ping().await.expect("the first two are still served");
    drop(second);
    eventually(Duration::from_secs(5), || async {
        automation_framework_client::Client::connect(&server.socket, "c", "t")
            .await
            .ok()
    })
    .await;
}

#[tokio::test]
async fn a_batch_over_max_batch_is_refused_whole() {
    let server = InProcess::start("[daemon]\nmax_batch = 3\n").await;
    let mut client = server.client("a").await;
    let replies = client.batch(vec![Request::Ping; 3]).await.unwrap();
    assert_eq!(replies.len(), 3);
    let err = client
        .batch(vec![report("svc".into()); 4])
        .await
        .expect_err("refused");
    match err {
        ClientError::Closed(err) => {
            assert_eq!(err.code, ErrorCode::InvalidArgument);
            assert_eq!(
                err.message,
                "a batch of 4 requests exceeds daemon.max_batch = 3; none of it was run; send at most 3 requests per batch"
            );
        }
        other => panic!("expected a closing InvalidArgument, got {other}"),
    }
    assert_eq!(server.hits(Limit::MaxBatch), 1);
    let mut other = server.client("b").await;
    let breakers = other.breakers(None).await.unwrap();
    assert!(breakers.is_empty(), "none of the batch ran: {breakers:?}");
}

#[tokio::test]
async fn a_reply_too_large_for_a_frame_is_an_error_and_the_session_goes_on() {
    let server = InProcess::start("").await;
    let mut client = server.client("a").await;
    // 8,000 services with 100-byte names: the list of all breakers is ~1.2 MB.
    for chunk in 0..8 {
        let reports = (0..1000)
            .map(|n| report(format!("{:0>100}", chunk * 1000 + n)))
            .collect();
        client.batch(reports).await.unwrap();
    }
    let response = client
        .call(Request::Breakers(BreakersRequest { service: None }))
        .await
        .unwrap();
    match response {
        Response::Error(err) => {
            assert_eq!(err.code, ErrorCode::FrameTooLarge);
            assert!(
                err.message.contains("breakers --service"),
                "{}",
                err.message
            );
        }
        other => panic!("expected FrameTooLarge, got a {} reply", other_kind(&other)),
    }
    assert_eq!(server.hits(Limit::ReplyTooLarge), 1);
    // In a batch (whose reply is written as a whole frame, not as it is
    // decided), only the large answer is replaced, and it is counted too.
    let answers = client
        .batch(vec![
            Request::Breakers(BreakersRequest { service: None }),
            Request::Ping,
        ])
        .await
        .unwrap();
    assert!(
        matches!(&answers[0], Response::Error(err) if err.code == ErrorCode::FrameTooLarge),
        "{}",
        other_kind(&answers[0])
    );
    assert!(
        matches!(answers[1], Response::Pong(_)),
        "{}",
        other_kind(&answers[1])
    );
    assert_eq!(server.hits(Limit::ReplyTooLarge), 2);
    client.ping().await.expect("the session goes on");
    let one = client.breakers(Some(format!("{:0>100}", 7))).await.unwrap();
    assert_eq!(one.len(), 1);
}

/// Names a reply without printing it (a full breakers list is a megabyte of Debug).
fn other_kind(response: &Response) -> &'static str {
    match response {
        Response::Breakers(_) => "breakers",
        _ => "other",
    }
}

#[tokio::test]
async fn before_the_handshake_only_a_hello_sized_frame_is_read() {
    let server = InProcess::start("").await;
    let mut raw = server.raw().await;
    // 5,000 bytes announced: more than any Hello, far less than the frame limit.
    raw.write_bytes(&5000u32.to_be_bytes()).await;
    match raw.recv().await {
        Some(ServerFrame::Error(err)) => {
            assert_eq!(err.code, ErrorCode::FrameTooLarge);
            assert!(
                err.message.contains("maximum of 4096 bytes"),
                "{}",
                err.message
            );
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    raw.expect_closed().await;
    assert_eq!(server.hits(Limit::FrameTooLarge), 1);

    // After the handshake the full frame limit applies again.
    let mut raw = server.raw().await;
    raw.hello("a").await;
    let big = ClientFrame::Batch(
        (0..300)
            .map(|id| automation_framework::protocol::Envelope {
                id,
                request: report(format!("{id:0>100}")),
            })
            .collect(),
    );
    raw.send(&big).await;
    assert!(matches!(raw.recv().await, Some(ServerFrame::Batch(r)) if r.len() == 300));
}

#[tokio::test]
async fn timeouts_and_refusals_are_counted() {
    let server = InProcess::start(
        "[daemon]\nhandshake_timeout = \"100ms\"\nidle_timeout = \"200ms\"\n\
         [[agents]]\nname = \"planner\"\nuids = [4294967294]\n",
    )
    .await;
    let mut silent = server.raw().await;
    silent.expect_closed().await;
    assert_eq!(server.hits(Limit::HandshakeTimeout), 1);

    let mut idle = server.raw().await;
    idle.hello("a").await;
    idle.expect_closed().await;
    assert_eq!(server.hits(Limit::IdleTimeout), 1);

    assert!(
        automation_framework_client::Client::connect(&server.socket, "planner", "t")
            .await
            .is_err()
    );
    assert_eq!(server.hits(Limit::AgentName), 1);

    let mut garbage = server.raw().await;
    garbage.send_body(vec![9, 9, 9]).await;
    garbage.expect_closed().await;
    assert_eq!(server.hits(Limit::Malformed), 1);
}
