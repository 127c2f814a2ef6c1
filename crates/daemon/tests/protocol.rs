//! The wire protocol against the real daemon.

use automation_framework::protocol::frame::{encode, encode_frame_into};
use automation_framework::protocol::{
    AdmitRequest, BreakerForce, BreakersRequest, BudgetRequest, ClientFrame, Envelope, ErrorCode,
    ForceBreakerRequest, Hello, LeaseRequest, Outcome, Payload, ReportRequest, Request, Response,
    RouteRequest, ServerFrame,
};

use crate::util::Daemon;

fn admit(service: &str) -> Request {
    Request::Admit(AdmitRequest {
        agent: None,
        service: service.into(),
        units: 1,
        ..Default::default()
    })
}

fn error_code(response: &Response) -> Option<ErrorCode> {
    match response {
        Response::Error(err) => Some(err.code),
        _ => None,
    }
}

#[tokio::test]
async fn handshake_reports_the_kernel_view_of_the_peer() {
    let daemon = Daemon::start("");
    let client = daemon.client("planner").await;
    let welcome = client.welcome();
    assert_eq!(
        welcome.version,
        automation_framework::protocol::PROTOCOL_VERSION
    );
    assert_eq!(welcome.server, env!("CARGO_PKG_VERSION"));
    assert_eq!(welcome.peer.uid, nix::unistd::getuid().as_raw());
    assert_eq!(welcome.peer.gid, nix::unistd::getgid().as_raw());
    assert_eq!(welcome.peer.pid, std::process::id() as i32);
    let other = daemon.client("planner").await;
    assert_ne!(
        other.welcome().session,
        welcome.session,
        "sessions are distinct"
    );
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_with_their_ids() {
    let daemon = Daemon::start("");
    let mut client = daemon.client("pipeliner").await;
    let mut sent = Vec::new();
    for i in 0..200 {
        let request = match i % 3 {
            0 => Request::Ping,
            1 => admit("openai"),
            _ => Request::Breakers(BreakersRequest { service: None }),
        };
        sent.push((client.send(request.clone()).await.unwrap(), request));
    }
    for (id, request) in sent {
        let reply = client.recv().await.unwrap();
        assert_eq!(reply.id, id);
        let matches = matches!(
            (&request, &reply.response),
            (Request::Ping, Response::Pong(_))
                | (Request::Admit(_), Response::Admit(_))
                | (Request::Breakers(_), Response::Breakers(_))
        );
        assert!(matches, "{request:?} answered with {:?}", reply.response);
    }
}

#[tokio::test]
async fn a_batch_is_answered_in_one_frame_in_order() {
    let daemon = Daemon::start("");
    let mut client = daemon.client("batcher").await;
    let replies = client
        .batch(vec![
            Request::Ping,
            admit("openai"),
            Request::Report(ReportRequest {
                reservation: Some(999_999),
                service: None,
                outcome: Outcome::Success,
                units: None,
                latency_ms: None,
                ..Default::default()
            }),
            Request::Status,
        ])
        .await
        .unwrap();
    assert_eq!(replies.len(), 4);
    assert!(matches!(replies[0], Response::Pong(_)));
    assert!(matches!(&replies[1], Response::Admit(a) if a.allowed));
    assert_eq!(
        error_code(&replies[2]),
        Some(ErrorCode::UnknownReservation),
        "one bad request fails alone"
    );
    assert!(matches!(&replies[3], Response::Status(s) if s.open_reservations == 1));
}

#[tokio::test]
async fn a_wrong_protocol_version_gets_a_clear_error_then_close() {
    let daemon = Daemon::start("");
    let mut raw = daemon.raw().await;
    raw.send(&ClientFrame::Hello(Hello {
        version: 99,
        client: "future".into(),
        agent: "a".into(),
    }))
    .await;
    match raw.recv().await {
        Some(ServerFrame::Error(err)) => {
            assert_eq!(err.code, ErrorCode::VersionMismatch);
            assert!(err.message.contains("version 99"), "{}", err.message);
        }
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
    raw.expect_closed().await;

    // A client of protocol version 1 (before `AdmitRequest.payload`): told so,
    // not served with a layout it cannot read.
    let mut raw = daemon.raw().await;
    raw.send(&ClientFrame::Hello(Hello {
        version: 1,
        client: "old".into(),
        agent: "a".into(),
    }))
    .await;
    match raw.recv().await {
        Some(ServerFrame::Error(err)) => {
            assert_eq!(err.code, ErrorCode::VersionMismatch);
            let expected = format!(
                "client speaks protocol version 1, this daemon ({}) speaks version {}",
                env!("CARGO_PKG_VERSION"),
                automation_framework::protocol::PROTOCOL_VERSION
            );
            assert!(err.message.contains(&expected), "{}", err.message);
        }
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
    raw.expect_closed().await;

    // A future Hello whose layout this build cannot decode at all.
    let mut raw = daemon.raw().await;
    let mut body = 0u32.to_le_bytes().to_vec();
    body.extend_from_slice(&(automation_framework::protocol::PROTOCOL_VERSION + 1).to_le_bytes());
    body.extend_from_slice(&[0xEE; 5]);
    raw.send_body(body).await;
    match raw.recv().await {
        Some(ServerFrame::Error(err)) => assert_eq!(err.code, ErrorCode::VersionMismatch),
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
    raw.expect_closed().await;
}

#[tokio::test]
async fn requests_before_the_handshake_are_refused() {
    let daemon = Daemon::start("");
    let mut raw = daemon.raw().await;
    raw.send(&ClientFrame::Request(Envelope {
        id: 1,
        request: Request::Ping,
    }))
    .await;
    match raw.recv().await {
        Some(ServerFrame::Error(err)) => assert_eq!(err.code, ErrorCode::HandshakeRequired),
        other => panic!("expected HandshakeRequired, got {other:?}"),
    }
    raw.expect_closed().await;
}

#[tokio::test]
async fn an_unknown_request_kind_is_answered_and_the_connection_goes_on() {
    let daemon = Daemon::start("");
    let mut raw = daemon.raw().await;
    raw.hello("newer-client").await;
    let mut body = encode(&ClientFrame::Request(Envelope {
        id: 41,
        request: Request::Ping,
    }))
    .unwrap();
    body[12..16].copy_from_slice(&200u32.to_le_bytes());
    raw.send_body(body).await;
    match raw.recv().await {
        Some(ServerFrame::Reply(reply)) => {
            assert_eq!(reply.id, 41);
            assert_eq!(error_code(&reply.response), Some(ErrorCode::UnknownRequest));
        }
        other => panic!("expected an UnknownRequest reply, got {other:?}"),
    }
    raw.send(&ClientFrame::Request(Envelope {
        id: 42,
        request: Request::Ping,
    }))
    .await;
    assert!(
        matches!(raw.recv().await, Some(ServerFrame::Reply(r)) if r.id == 42 && matches!(r.response, Response::Pong(_)))
    );
}

/// Every field a request can get wrong is refused as `InvalidArgument`, with
/// a message naming it, and nothing is taken: the rate limit's single cell
/// is still there afterwards, and no breaker heard a failure.
#[tokio::test]
async fn invalid_arguments_are_typed_errors_that_change_nothing() {
    let daemon = Daemon::start(
        "[[rate_limits]]\nname = \"one\"\nrate = 1\nper = \"1h\"\nburst = 1\n\
         [content]\nmax_payload = 100\n\
         [breaker]\nfailure_threshold = 1\n",
    );
    let mut client = daemon.client("a").await;
    let admit = |change: fn(&mut AdmitRequest)| {
        let mut req = AdmitRequest {
            service: "openai".into(),
            units: 1,
            ..Default::default()
        };
        change(&mut req);
        Request::Admit(req)
    };
    let report = |change: fn(&mut ReportRequest)| {
        let mut req = ReportRequest {
            service: Some("openai".into()),
            outcome: Outcome::Failure,
            ..Default::default()
        };
        change(&mut req);
        Request::Report(req)
    };
    let lease = |name: &str, agent: Option<&str>| {
        Request::Lease(LeaseRequest {
            name: name.into(),
            ttl_ms: None,
            release: false,
            agent: agent.map(Into::into),
        })
    };
    let route = |route: Option<&str>, chain: Vec<String>| {
        Request::Route(RouteRequest {
            route: route.map(Into::into),
            chain,
            agent: None,
            units: 1,
            cost: None,
            model: None,
        })
    };
    let bad = [
        (admit(|r| r.units = 0), "units must be at least 1"),
        (
            admit(|r| r.service = "".into()),
            "service name \"\" is empty",
        ),
        (
            admit(|r| r.agent = Some("bad\nagent".into())),
            "agent name \"bad\\nagent\" contains the control character",
        ),
        (
            admit(|r| r.model = Some("bad\nmodel".into())),
            "model name \"bad\\nmodel\" contains the control character",
        ),
        (admit(|r| r.attempt = 0), "attempt is 1-based"),
        (admit(|r| r.cost = Some(-1.0)), "cost: -1 is negative"),
        (
            admit(|r| r.cost = Some(f64::NAN)),
            "cost: NaN is not a finite number",
        ),
        (admit(|r| r.cost = Some(2e9)), "larger than the maximum"),
        (
            admit(|r| r.lease = Some("bad\nlease".into())),
            "lease name \"bad\\nlease\" contains the control character",
        ),
        (
            admit(|r| r.route = Some("fallback".into())),
            "give either service or route",
        ),
        (
            admit(|r| {
                r.service = "".into();
                r.route = Some("bad\nroute".into());
            }),
            "route name \"bad\\nroute\" contains the control character",
        ),
        (report(|r| r.service = None), "missing reservation"),
        (
            report(|r| r.reservation = Some(1)),
            "give either reservation",
        ),
        (
            report(|r| r.service = Some("bad\nservice".into())),
            "service name \"bad\\nservice\" contains the control character",
        ),
        (
            report(|r| r.agent = Some("bad\nagent".into())),
            "agent name \"bad\\nagent\" contains the control character",
        ),
        (report(|r| r.attempt = Some(0)), "attempt is 1-based"),
        (report(|r| r.cost = Some(-1.0)), "cost: -1 is negative"),
        (
            report(|r| r.idempotency_key = Some("".into())),
            "idempotency_key must be 1 to 256 printable bytes",
        ),
        (
            report(|r| r.idempotency_key = Some("k".repeat(257).into())),
            "idempotency_key must be 1 to 256 printable bytes",
        ),
        (
            report(|r| r.idempotency_key = Some("key\u{7}".into())),
            "idempotency_key must be 1 to 256 printable bytes",
        ),
        (
            lease("bad\nlease", None),
            "lease name \"bad\\nlease\" contains the control character",
        ),
        (
            lease("repo", Some("bad\nagent")),
            "agent name \"bad\\nagent\" contains the control character",
        ),
        (
            route(Some("bad\nroute"), Vec::new()),
            "route name \"bad\\nroute\" contains the control character",
        ),
        (
            route(None, vec!["bad\nservice".into()]),
            "service name \"bad\\nservice\" contains the control character",
        ),
        (
            route(None, vec!["openai".to_owned(); 33]),
            "a chain may name at most 32 services, got 33",
        ),
        (
            Request::Budget(BudgetRequest {
                agent: Some("bad\nagent".into()),
            }),
            "agent name \"bad\\nagent\" contains the control character",
        ),
        (
            Request::Breakers(BreakersRequest {
                service: Some("bad\nservice".into()),
            }),
            "service name \"bad\\nservice\" contains the control character",
        ),
        (
            Request::ForceBreaker(ForceBreakerRequest {
                service: "bad\nservice".into(),
                force: BreakerForce::Open,
            }),
            "service name \"bad\\nservice\" contains the control character",
        ),
        (
            Request::Check(Payload {
                lang: None,
                text: "x".repeat(101),
            }),
            "the payload is 101 bytes, more than content.max_payload (100 bytes)",
        ),
    ];
    for (request, says) in bad {
        let response = client.call(request.clone()).await.unwrap();
        let Response::Error(err) = &response else {
            panic!("{request:?} -> {response:?}");
        };
        assert_eq!(
            err.code,
            ErrorCode::InvalidArgument,
            "{request:?} -> {err:?}"
        );
        assert!(
            err.message.contains(says),
            "{request:?}: {:?} does not say {says:?}",
            err.message
        );
    }
    // At the limit, a payload is scanned.
    let at_limit = client
        .call(Request::Check(Payload {
            lang: None,
            text: "x".repeat(100),
        }))
        .await
        .unwrap();
    assert!(matches!(at_limit, Response::Check(_)), "{at_limit:?}");
    // Nothing was taken: the single cell of the bucket is still there, and
    // no failure reached the breaker (one would have opened it).
    let reply = client
        .admit(AdmitRequest {
            agent: None,
            service: "openai".into(),
            units: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(reply.allowed, "{reply:?}");
}

/// Two frames in one write, with their length prefixes.
fn two_frames(first: &ClientFrame, second: &ClientFrame) -> Vec<u8> {
    let mut bytes = bytes::BytesMut::new();
    for frame in [first, second] {
        encode_frame_into(&mut bytes, frame).unwrap();
    }
    bytes.to_vec()
}

fn request(id: u64, request: Request) -> ClientFrame {
    ClientFrame::Request(Envelope { id, request })
}

/// An admission with a cost: under a budget, its reply waits for the ledger.
fn costly() -> Request {
    Request::Admit(AdmitRequest {
        service: "svc".into(),
        cost: Some(1.0),
        ..Default::default()
    })
}

/// An admission under a budget waits for the ledger; a ping pipelined
/// behind it is ready at once, and still answered after it: replies go out
/// in request order (docs/PROTOCOL.md §4.4).
#[tokio::test]
async fn a_ready_reply_waits_behind_one_that_waits_for_the_ledger() {
    let daemon = Daemon::start("[budget]\nlimit = 10.0\n");
    let mut raw = daemon.raw().await;
    raw.hello("a").await;
    raw.write_bytes(&two_frames(
        &request(1, costly()),
        &request(2, Request::Ping),
    ))
    .await;
    for (want, kind) in [(1, "admit"), (2, "pong")] {
        match raw.recv().await {
            Some(ServerFrame::Reply(reply)) => {
                assert_eq!(reply.id, want, "{kind} answered out of order: {reply:?}")
            }
            other => panic!("expected the {kind} reply, got {other:?}"),
        }
    }
}

/// A client that stops writing (shuts its half down) still reads the replies
/// to what it sent, the ones that wait for the ledger too, then the end.
#[tokio::test]
async fn a_client_that_stops_writing_still_gets_its_waiting_replies() {
    use tokio::io::AsyncWriteExt;
    let daemon = Daemon::start("[budget]\nlimit = 10.0\n");
    let mut raw = daemon.raw().await;
    raw.hello("a").await;
    raw.send(&request(1, costly())).await;
    raw.framed.get_mut().shutdown().await.unwrap();
    match raw.recv().await {
        Some(ServerFrame::Reply(reply)) => {
            assert_eq!(reply.id, 1);
            assert!(
                matches!(&reply.response, Response::Admit(admit) if admit.allowed),
                "{reply:?}"
            );
        }
        other => panic!("expected the admission's reply, got {other:?}"),
    }
    assert!(raw.recv().await.is_none(), "then the end");
}

/// A `Hello` of another protocol version (one this build cannot decode past
/// its version) after the handshake is garbage: the connection is closed as
/// malformed, and counted as such.
#[tokio::test]
async fn a_second_hello_of_another_version_is_malformed_and_counted() {
    let server = crate::util::InProcess::start("").await;
    let mut raw = server.raw().await;
    raw.hello("a").await;
    // `Hello`'s variant, version 99, then fields this build cannot read.
    let mut body = 0u32.to_le_bytes().to_vec();
    body.extend_from_slice(&99u16.to_le_bytes());
    body.extend_from_slice(&[0xff; 3]);
    raw.send_body(body).await;
    match raw.recv().await {
        Some(ServerFrame::Error(err)) => assert_eq!(err.code, ErrorCode::Malformed, "{err:?}"),
        other => panic!("expected a Malformed error, got {other:?}"),
    }
    raw.expect_closed().await;
    assert_eq!(
        server.hits(automation_framework::state::Limit::Malformed),
        1
    );
}

#[tokio::test]
async fn unknown_services_are_refused_when_the_config_says_so() {
    let daemon = Daemon::start("[daemon]\nallow_unknown_services = false\n[services.openai]\n");
    let mut client = daemon.client("a").await;
    assert!(
        client
            .admit(AdmitRequest {
                agent: None,
                service: "openai".into(),
                units: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .allowed
    );
    let response = client.call(admit("opneai")).await.unwrap();
    match response {
        Response::Error(err) => {
            assert_eq!(err.code, ErrorCode::UnknownService);
            assert!(err.message.contains("[services.opneai]"), "{}", err.message);
        }
        other => panic!("{other:?}"),
    }
}

/// Issue 10: a `Hello` whose agent name is far too long but whose frame still
/// fits `MAX_HELLO_LEN` used to close the connection without the documented
/// error frame (the message echoed the whole name and no longer fit). Error
/// messages now repeat at most 64 characters of what a client sent.
#[tokio::test]
async fn a_huge_agent_name_in_the_hello_gets_the_documented_error_frame() {
    use automation_framework::protocol::MAX_HELLO_LEN;
    let daemon = Daemon::start("");
    for (agent, client) in [
        ("a".repeat(4_050), "raw"),
        ("planner".into(), &*"c".repeat(4_050)),
    ] {
        let hello = ClientFrame::Hello(Hello {
            version: automation_framework::protocol::PROTOCOL_VERSION,
            client: client.into(),
            agent: agent.clone(),
        });
        let body = encode(&hello).unwrap();
        assert!(body.len() <= MAX_HELLO_LEN, "{} bytes", body.len());
        let mut raw = daemon.raw().await;
        raw.send_body(body).await;
        match raw.recv().await {
            Some(ServerFrame::Error(err)) => {
                assert_eq!(err.code, ErrorCode::InvalidArgument, "{}", err.message);
                assert!(err.message.contains("4050 bytes"), "{}", err.message);
                assert!(err.message.len() < 400, "{} bytes", err.message.len());
            }
            other => panic!("expected Error(InvalidArgument), got {other:?}"),
        }
        raw.expect_closed().await;
    }
}

/// After the handshake, a name or key as long as a frame allows is refused with
/// its own error, not replaced by `FrameTooLarge` because the message repeating
/// it would not fit the reply.
#[tokio::test]
async fn a_huge_name_in_a_request_gets_its_own_error_not_frame_too_large() {
    use automation_framework::protocol::{AdminRequest, QuotasRequest};
    let daemon = Daemon::start("");
    let mut client = daemon.client("a").await;
    let huge = "n".repeat(1_000_000);
    let requests = [
        admit(&huge),
        Request::Quotas(QuotasRequest {
            quota: Some(huge.clone()),
        }),
        Request::Admin(AdminRequest::ResetBudget {
            budget: huge.clone(),
        }),
        Request::Admin(AdminRequest::Refund { key: huge.clone() }),
    ];
    for request in requests {
        let op = request.op();
        match client.call(request).await.unwrap() {
            Response::Error(err) => {
                assert_eq!(
                    err.code,
                    ErrorCode::InvalidArgument,
                    "{op}: {}",
                    err.message
                );
                assert!(
                    err.message.contains("1000000 bytes"),
                    "{op}: {}",
                    err.message
                );
                assert!(err.message.len() < 400, "{op}: {} bytes", err.message.len());
            }
            other => panic!("{op}: expected InvalidArgument, got {other:?}"),
        }
    }
}

/// The blocking client (no async runtime of the caller's) speaks the same
/// protocol: admit, report, pipelining and budgets from a plain thread.
#[test]
fn the_blocking_client_admits_reports_and_pipelines_from_a_plain_thread() {
    use automation_framework::protocol::{AdmitRequest, Outcome, ReportRequest, Request, Response};
    let daemon = Daemon::start("[budget]\nlimit = 5.0\n");
    let socket = daemon.socket.clone();
    std::thread::spawn(move || {
        let mut client =
            automation_framework_client::BlockingClient::connect(&socket, "plain", "test")
                .expect("connect");
        assert!(client.ping().unwrap().ok);
        let admitted = client
            .admit(AdmitRequest {
                service: "llm".into(),
                cost: Some(2.0),
                ..Default::default()
            })
            .unwrap();
        assert!(admitted.allowed, "{admitted:?}");
        let reported = client
            .report(ReportRequest {
                reservation: admitted.reservation,
                outcome: Outcome::Success,
                cost: Some(1.25),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(reported.charged, Some(1.25));
        let ids: Vec<u64> = (0..8)
            .map(|_| client.send(Request::Ping).unwrap())
            .collect();
        for id in ids {
            let reply = client.recv().unwrap();
            assert_eq!(reply.id, id);
            assert!(matches!(reply.response, Response::Pong(_)));
        }
        assert_eq!(client.budget(None).unwrap().spent, 1.25);
    })
    .join()
    .expect("the blocking client's thread");
    tokio::runtime::Runtime::new()
        .expect("a runtime for the ledger check")
        .block_on(daemon.assert_memory_matches_ledger());
}
