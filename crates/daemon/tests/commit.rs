//! One commit path (issue 10): whatever the ledger committed is applied to the
//! daemon's memory by the commit itself, whoever was waiting for the reply. Each
//! test ends a connection while its commits are in flight — a second Hello,
//! garbage, an over-long length prefix, a plain close — and then checks that the
//! daemon's memory equals its ledger.
//!
//! See: issue 10, "The leak and the lost charges". Before the fix, each of these
//! left reservations stuck in "being committed" (never settled, reported as busy
//! forever), charges in the ledger but not in memory (a budget overrun), and
//! admin changes recorded but not applied.

use std::time::Duration;

use automation_framework::protocol::{
    AdminRequest, AdmitRequest, ClientFrame, Envelope, ErrorCode, Hello, Outcome, ReportRequest,
    Request, PROTOCOL_VERSION,
};

use crate::util::{eventually, ledger, Daemon, Raw};

/// How a connection is cut off right after its requests were sent.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// A second `Hello`: a protocol error, the daemon closes the connection.
    SecondHello,
    /// A frame that is not a message.
    Garbage,
    /// A length prefix over the frame limit.
    OverLong,
    /// The client closes its end without waiting for the replies.
    Close,
}

const ENDINGS: [Ending; 4] = [
    Ending::SecondHello,
    Ending::Garbage,
    Ending::OverLong,
    Ending::Close,
];

/// Sends `requests` pipelined on a fresh connection, then ends it as `ending`
/// says, without reading a single reply.
async fn send_and_cut(daemon: &Daemon, agent: &str, requests: Vec<Request>, ending: Ending) {
    let mut raw: Raw = daemon.raw().await;
    raw.hello(agent).await;
    for (id, request) in requests.into_iter().enumerate() {
        raw.send(&ClientFrame::Request(Envelope {
            id: id as u64 + 1,
            request,
        }))
        .await;
    }
    match ending {
        Ending::SecondHello => {
            raw.send(&ClientFrame::Hello(Hello {
                version: PROTOCOL_VERSION,
                client: "raw".into(),
                agent: agent.into(),
            }))
            .await;
        }
        Ending::Garbage => raw.send_body(vec![0xff; 16]).await,
        Ending::OverLong => raw.write_bytes(&u32::MAX.to_be_bytes()).await,
        Ending::Close => {
            drop(raw);
            return;
        }
    }
    raw.expect_closed().await;
}

fn admit(cost: f64) -> Request {
    Request::Admit(AdmitRequest {
        service: "llm".into(),
        cost: Some(cost),
        ..Default::default()
    })
}

fn charge(key: &str, cost: f64) -> Request {
    Request::Report(ReportRequest {
        service: Some("llm".into()),
        outcome: Outcome::Success,
        cost: Some(cost),
        idempotency_key: Some(key.into()),
        ..Default::default()
    })
}

/// Reproducer: 200 rounds of "admit $0.40, then a second Hello" left $80 reserved
/// for good, and another agent's $25 admission was denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admissions_cut_off_mid_commit_are_orphaned_and_settled() {
    for ending in ENDINGS {
        let daemon = Daemon::start(
            "[budget]\nlimit = 30.0\norphan_timeout = \"1s\"\norphan_policy = \"release\"\n",
        );
        for _ in 0..50 {
            send_and_cut(&daemon, "cut", vec![admit(0.40)], ending).await;
        }
        daemon.assert_memory_matches_ledger().await;
        // Every admission the ledger holds is settled by the orphan policy.
        let mut probe = daemon.client("probe").await;
        eventually(Duration::from_secs(10), || async {
            let budget = daemon.client("poll").await.budget(None).await.unwrap();
            (budget.reserved == 0.0).then_some(())
        })
        .await;
        daemon.assert_memory_matches_ledger().await;
        let reply = probe
            .admit(AdmitRequest {
                service: "llm".into(),
                cost: Some(25.0),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(reply.allowed, "{ending:?}: {reply:?}");
        daemon.assert_memory_matches_ledger().await;
    }
}

/// Reproducer: a reservation whose admission was cut off answered "being
/// committed right now; retry in a moment" to every report, forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_admission_is_reportable_from_a_new_connection() {
    let daemon = Daemon::start("[budget]\nlimit = 30.0\norphan_timeout = \"1h\"\n");
    send_and_cut(&daemon, "cut", vec![admit(2.0)], Ending::SecondHello).await;
    daemon.assert_memory_matches_ledger().await;
    let ids = ledger::open_reservations(&daemon.state_dir());
    assert_eq!(ids.len(), 1, "the admission is in the ledger");
    let mut again = daemon.client("cut").await;
    let reply = again
        .report(ReportRequest {
            reservation: Some(ids[0]),
            outcome: Outcome::Success,
            cost: Some(1.5),
            ..Default::default()
        })
        .await
        .expect("reported, not busy");
    assert_eq!(reply.charged, Some(1.5));
    let budget = again.budget(None).await.unwrap();
    assert_eq!((budget.spent, budget.reserved), (1.5, 0.0));
    daemon.assert_memory_matches_ledger().await;
}

/// Reproducer: ten keyed $9 charges, each followed by a second Hello, put $90 in
/// the ledger and $0 in memory; a retry was a "duplicate" counted nowhere, and
/// the daemon then acknowledged $95 more against a $100 limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charges_cut_off_mid_commit_are_counted_in_memory() {
    for ending in ENDINGS {
        let daemon = Daemon::start("[budget]\nlimit = 100.0\n");
        for i in 0..10 {
            send_and_cut(
                &daemon,
                "payer",
                vec![charge(&format!("k{i}"), 9.0)],
                ending,
            )
            .await;
        }
        daemon.assert_memory_matches_ledger().await;
        let mut client = daemon.client("payer").await;
        let budget = client.budget(None).await.unwrap();
        assert_eq!(budget.spent, 90.0, "{ending:?}");
        let retry = client
            .report(ReportRequest {
                service: Some("llm".into()),
                outcome: Outcome::Success,
                cost: Some(9.0),
                idempotency_key: Some("k0".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(retry.duplicate, "{ending:?}");
        let over = client
            .admit(AdmitRequest {
                service: "llm".into(),
                cost: Some(15.0),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(
            !over.allowed,
            "{ending:?}: $90 spent, $15 more must not fit"
        );
        daemon.assert_memory_matches_ledger().await;
    }
}

/// Reproducer: an ordinary client that pipelined four charges and closed ended
/// with $40 in the ledger and $39.30 in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_admissions_and_charges_then_close_match_the_ledger() {
    let daemon = Daemon::start("[budget]\nlimit = 1000.0\norphan_timeout = \"1h\"\n");
    for round in 0..20 {
        let requests = (0..4)
            .flat_map(|i| [admit(0.7), charge(&format!("r{round}-{i}"), 10.0)])
            .collect();
        send_and_cut(&daemon, "pipeliner", requests, Ending::Close).await;
    }
    daemon.assert_memory_matches_ledger().await;
    // A client that closes without reading may find requests it sent unread
    // (the daemon stops at the first failed write); whatever was charged was
    // charged whole, and memory holds exactly what the ledger holds.
    let budget = daemon.client("probe").await.budget(None).await.unwrap();
    let charges = budget.spent / 10.0;
    assert!(
        charges.fract() == 0.0 && (1.0..=80.0).contains(&charges),
        "whole $10 charges, at most 80: {budget:?}"
    );
}

/// Reproducer: `SetLimit 10` followed by a second Hello was recorded (audit row
/// included) while the daemon kept enforcing $100 until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_change_cut_off_mid_commit_is_applied() {
    for ending in ENDINGS {
        let daemon = Daemon::start("[budget]\nlimit = 100.0\n");
        let set = Request::Admin(AdminRequest::SetLimit {
            budget: "global".into(),
            limit: 10.0,
        });
        send_and_cut(&daemon, "admin", vec![set], ending).await;
        let limit = eventually(Duration::from_secs(10), || async {
            let budget = daemon.client("poll").await.budget(None).await.unwrap();
            (budget.limit == 10.0).then_some(budget.limit)
        })
        .await;
        assert_eq!(limit, 10.0, "{ending:?}");
        let mut client = daemon.client("probe").await;
        let reply = client
            .admit(AdmitRequest {
                service: "llm".into(),
                cost: Some(11.0),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(!reply.allowed, "{ending:?}: the $10 limit is enforced");
        daemon.assert_memory_matches_ledger().await;
    }
}

/// A report that cannot be decided is an error and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_of_an_unknown_reservation_changes_nothing() {
    let daemon = Daemon::start("[budget]\nlimit = 10.0\n");
    let mut client = daemon.client("a").await;
    let err = client
        .report(ReportRequest {
            reservation: Some(12345),
            outcome: Outcome::Success,
            cost: Some(1.0),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, automation_framework_client::ClientError::Refused(e) if e.code == ErrorCode::UnknownReservation),
        "{err}"
    );
    daemon.assert_memory_matches_ledger().await;
}

/// Reproducer: a slow reader cut off by `idle_timeout` while its pipelined
/// admissions were being committed left 125 of them stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_cut_off_mid_commit_leaves_nothing_stuck() {
    let daemon = Daemon::start(
        "[daemon]\nidle_timeout = \"500ms\"\n[budget]\nlimit = 1000.0\norphan_timeout = \"1s\"\norphan_policy = \"release\"\n",
    );
    let mut raw: Raw = daemon.raw().await;
    raw.hello("deaf").await;
    // Far more replies than the socket buffers hold, never read: the daemon's
    // writes block, and it cuts the client off after the idle timeout.
    let firehose = tokio::spawn(async move {
        for id in 0..5_000u64 {
            let frame = ClientFrame::Request(Envelope {
                id,
                request: admit(0.01),
            });
            if !raw.try_send(&frame).await {
                break;
            }
        }
        raw
    });
    eventually(Duration::from_secs(10), || async {
        let status = daemon.client("poll").await.status().await.unwrap();
        // Only the poller itself: the deaf client is gone.
        (status.connections == 1).then_some(())
    })
    .await;
    firehose.abort();
    daemon.assert_memory_matches_ledger().await;
    eventually(Duration::from_secs(10), || async {
        let budget = daemon.client("poll").await.budget(None).await.unwrap();
        (budget.reserved == 0.0).then_some(())
    })
    .await;
    daemon.assert_memory_matches_ledger().await;
}
