//! Bulkheads, waiting for a permit, and leases against the real daemon: exact
//! capacity under concurrency and after churn (failsafe#393, resilience4j PR
//! #264: permits lost to timed-out or cancelled waiters), first come first
//! served, a lease refused naming its holder and handed on when the holder's
//! connection drops, and a dropped connection giving back everything it held.

use std::time::Duration;

use automation_framework::protocol::{
    AdmitReply, AdmitRequest, BreakerState, GuardKind, InFlight, LeaseReply, LeaseRequest, Outcome,
    ReportRequest, Request, Response, StatusReport,
};
use automation_framework_client::Client;
use futures_util::future::join_all;

use crate::util::{fail_five, Daemon, PROMPTLY};

/// The value of `$check` once it is `Some`, polled (the daemon acts on a
/// dropped connection when it reads its end, a moment after the drop).
macro_rules! until {
    ($check:expr) => {{
        let deadline = std::time::Instant::now() + PROMPTLY;
        loop {
            if let Some(value) = $check {
                break value;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not within {PROMPTLY:?}: {}",
                stringify!($check)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }};
}

/// A bulkhead of 4 on `llm`, nothing else in the way (no rate limits, no
/// budget, so nothing is written to the ledger).
const BULKHEAD_OF_4: &str = "rate_limits = []\n[daemon]\nmax_connections_per_uid = 64\n\
    [budget]\nenabled = false\n\
    [[bulkheads]]\nname = \"llm-calls\"\nservices = [\"llm\"]\nmax_in_flight = 4\n";

fn admit_req(service: &str, wait_ms: Option<u64>) -> AdmitRequest {
    AdmitRequest {
        service: service.into(),
        wait_ms,
        ..Default::default()
    }
}

async fn admit(client: &mut Client, service: &str, wait_ms: Option<u64>) -> AdmitReply {
    client
        .admit(admit_req(service, wait_ms))
        .await
        .expect("admit answered")
}

async fn report(client: &mut Client, reply: &AdmitReply) {
    client
        .report(ReportRequest {
            reservation: reply.reservation,
            outcome: Outcome::Success,
            ..Default::default()
        })
        .await
        .expect("report answered");
}

/// The bulkhead keys in flight, from `status`.
async fn in_flight(client: &mut Client) -> Vec<InFlight> {
    client.status().await.expect("status").in_flight
}

fn occupancy(keys: &[InFlight]) -> Vec<(String, String, u32, u32, u32)> {
    keys.iter()
        .map(|k| {
            (
                k.bulkhead.clone(),
                k.key.clone(),
                k.in_flight,
                k.limit,
                k.waiting,
            )
        })
        .collect()
}

fn llm(in_flight: u32, waiting: u32) -> Vec<(String, String, u32, u32, u32)> {
    vec![("llm-calls".into(), "llm".into(), in_flight, 4, waiting)]
}

/// Waits until `status` shows `expected` for the bulkhead (the daemon sees a
/// dropped connection when it reads its end, a moment after the drop).
async fn settles_at(observer: &mut Client, expected: Vec<(String, String, u32, u32, u32)>) {
    until!((occupancy(&in_flight(observer).await) == expected).then_some(()));
}

async fn connect(daemon: &Daemon, agent: String) -> Client {
    daemon.client(&agent).await
}

/// 50 callers at once, each on its own connection: exactly 4 admitted.
async fn fifty_at_once(daemon: &Daemon) -> (Vec<(Client, AdmitReply)>, usize) {
    let clients = join_all((0..50).map(|i| connect(daemon, format!("caller-{i}")))).await;
    let replies = join_all(clients.into_iter().map(|mut client| async move {
        let reply = admit(&mut client, "llm", None).await;
        (client, reply)
    }))
    .await;
    let allowed = replies.iter().filter(|(_, r)| r.allowed).count();
    for (_, reply) in replies.iter().filter(|(_, r)| !r.allowed) {
        assert_eq!(reply.guard, Some(GuardKind::Concurrency), "{reply:?}");
        let reason = reply.reason.as_deref().unwrap();
        assert!(
            reason.contains("4 of 4 calls in flight"),
            "the denial says how many are in flight: {reason}"
        );
    }
    (replies, allowed)
}

#[tokio::test]
async fn a_bulkhead_of_4_admits_exactly_4_of_50_and_is_exactly_4_again_after_churn() {
    let daemon = Daemon::start(BULKHEAD_OF_4);
    let mut observer = daemon.client("observer").await;
    let (replies, allowed) = fifty_at_once(&daemon).await;
    assert_eq!(allowed, 4, "exactly max_in_flight of 50 concurrent callers");
    assert_eq!(occupancy(&in_flight(&mut observer).await), llm(4, 0));
    let mut holders: Vec<(Client, AdmitReply)> =
        replies.into_iter().filter(|(_, r)| r.allowed).collect();

    // 1,000 rounds of churn, always with the bulkhead full: a holder reports
    // and admits again; a holder's connection drops and a newcomer waits for
    // its permit; a waiter times out; a waiter's connection drops mid-wait.
    for round in 0..1_000usize {
        let slot = round % holders.len();
        match round % 4 {
            0 => {
                let (client, reply) = &mut holders[slot];
                report(client, reply).await;
                let again = admit(client, "llm", None).await;
                assert!(again.allowed, "round {round}: the reported permit is free");
                *reply = again;
            }
            1 => {
                let (client, _) = holders.swap_remove(slot);
                drop(client);
                let mut newcomer = daemon.client(&format!("newcomer-{round}")).await;
                // The daemon frees the permit when it reads the drop; wait for it.
                let reply = admit(&mut newcomer, "llm", Some(10_000)).await;
                assert!(reply.allowed, "round {round}: {reply:?}");
                holders.push((newcomer, reply));
            }
            2 => {
                let mut waiter = daemon.client(&format!("waiter-{round}")).await;
                let reply = admit(&mut waiter, "llm", Some(1)).await;
                assert!(!reply.allowed, "round {round}: the bulkhead is full");
                assert!(
                    reply.reason.as_deref().unwrap().contains("waited 1 ms"),
                    "{reply:?}"
                );
            }
            _ => {
                let mut waiter = daemon.client(&format!("gone-{round}")).await;
                waiter
                    .send(Request::Admit(admit_req("llm", Some(60_000))))
                    .await
                    .unwrap();
                settles_at(&mut observer, llm(4, 1)).await;
                drop(waiter);
                // Out of line as soon as the daemon sees the connection gone,
                // not when its 60 s are up.
                settles_at(&mut observer, llm(4, 0)).await;
            }
        }
    }
    // Every waiter that left is out of line, every holder counted once.
    settles_at(&mut observer, llm(4, 0)).await;
    drop(holders);
    until!(in_flight(&mut observer).await.is_empty().then_some(()));
    let (_replies, allowed) = fifty_at_once(&daemon).await;
    assert_eq!(allowed, 4, "capacity is exactly 4 again after churn");
}

#[tokio::test]
async fn waiters_are_admitted_in_the_order_they_arrived() {
    let daemon = Daemon::start(&BULKHEAD_OF_4.replace("max_in_flight = 4", "max_in_flight = 1"));
    let one = |in_flight, waiting| {
        vec![(
            "llm-calls".to_owned(),
            "llm".to_owned(),
            in_flight,
            1,
            waiting,
        )]
    };
    let mut observer = daemon.client("observer").await;
    let mut holder = daemon.client("holder").await;
    let held = admit(&mut holder, "llm", None).await;
    assert!(held.allowed);
    let mut waiters = Vec::new();
    for i in 0..5u32 {
        let mut waiter = daemon.client(&format!("waiter-{i}")).await;
        waiter
            .send(Request::Admit(admit_req("llm", Some(30_000))))
            .await
            .unwrap();
        // In line before the next one arrives.
        settles_at(&mut observer, one(1, i + 1)).await;
        waiters.push(waiter);
    }
    // A newcomer that does not wait is refused: it may not overtake the line.
    let newcomer = admit(&mut observer, "llm", None).await;
    assert!(!newcomer.allowed);
    assert!(newcomer.reason.unwrap().contains("5 waiting"));

    report(&mut holder, &held).await;
    for (i, waiter) in waiters.iter_mut().enumerate() {
        let reply = tokio::time::timeout(PROMPTLY, waiter.recv())
            .await
            .expect("its turn came")
            .expect("a reply");
        let Response::Admit(reply) = reply.response else {
            panic!("{reply:?}")
        };
        assert!(reply.allowed, "waiter {i}: {reply:?}");
        let left = 4 - i as u32;
        assert_eq!(
            occupancy(&in_flight(&mut observer).await),
            one(1, left),
            "waiter {i} admitted, the others still in line"
        );
        report(waiter, &reply).await;
    }
    settles_at(&mut observer, Vec::new()).await;
}

async fn lease(client: &mut Client, name: &str, ttl_ms: Option<u64>, release: bool) -> LeaseReply {
    client
        .lease(LeaseRequest {
            name: name.into(),
            ttl_ms,
            release,
            agent: None,
        })
        .await
        .expect("lease answered")
}

#[tokio::test]
async fn a_lease_is_refused_naming_its_holder_and_granted_when_the_holder_drops() {
    let daemon = Daemon::start("[leases]\ndefault_ttl = \"10m\"\nmax_ttl = \"1h\"\n");
    let mut first = daemon.client("first").await;
    let mut second = daemon.client("second").await;
    let got = lease(&mut first, "repo-main", Some(600_000), false).await;
    assert!(got.granted && got.expires_in_ms == Some(600_000), "{got:?}");

    let refused = lease(&mut second, "repo-main", None, false).await;
    assert!(!refused.granted);
    let holder = refused.holder.expect("the refusal names the holder");
    assert_eq!(holder.agent, "first");
    assert_eq!(holder.pid, std::process::id());
    assert_eq!(holder.uid, nix::unistd::geteuid().as_raw());
    assert_eq!(holder.session, first.welcome().session);
    assert!(holder.expires_in_ms > 0 && holder.expires_in_ms <= 600_000);
    // An admission that needs it is denied by the lease guard, naming the holder.
    let denied = second
        .admit(AdmitRequest {
            service: "deploy".into(),
            lease: Some("repo-main".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!denied.allowed);
    assert_eq!(denied.guard, Some(GuardKind::Lease));
    let reason = denied.reason.unwrap();
    assert!(reason.contains("held by agent \"first\""), "{reason}");
    assert!(
        denied.retry_after_ms.is_some(),
        "it expires at the latest then"
    );
    // A release by someone else changes nothing.
    assert!(!lease(&mut second, "repo-main", None, true).await.released);
    assert_eq!(second.status().await.unwrap().leases_held, 1);

    drop(first);
    let granted = until!(
        Some(lease(&mut second, "repo-main", Some(1_000), false).await).filter(|r| r.granted)
    );
    assert_eq!(granted.expires_in_ms, Some(1_000));
    assert!(lease(&mut second, "repo-main", None, true).await.released);
    assert_eq!(second.status().await.unwrap().leases_held, 0);
    // Beyond leases.max_ttl: a clear error, nothing taken.
    let err = second
        .lease(LeaseRequest {
            name: "x".into(),
            ttl_ms: Some(7_200_000),
            release: false,
            agent: None,
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("leases.max_ttl"), "{err}");
}

#[tokio::test]
async fn an_admission_holds_its_lease_until_reported() {
    let daemon = Daemon::start("");
    let mut a = daemon.client("a").await;
    let mut b = daemon.client("b").await;
    let with_lease = |lease: &str| AdmitRequest {
        service: "deploy".into(),
        lease: Some(lease.into()),
        ..Default::default()
    };
    let first = a.admit(with_lease("db")).await.unwrap();
    assert!(first.allowed);
    assert!(!lease(&mut b, "db", None, false).await.granted);
    // Its own connection may use it again.
    let again = a.admit(with_lease("db")).await.unwrap();
    assert!(again.allowed, "{again:?}");
    report(&mut a, &first).await;
    assert!(lease(&mut b, "db", None, false).await.granted);
}

/// What `status` and `/metrics` say a connection holds.
fn held(status: &StatusReport) -> (u64, u32, usize) {
    (
        status.open_reservations,
        status.leases_held,
        status.in_flight.len(),
    )
}

fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn a_dropped_connection_gives_back_every_permit_lease_trial_slot_and_reservation() {
    let daemon = Daemon::start(
        "rate_limits = []\n[budget]\nenabled = false\n\
         [breaker]\nopen_for = \"300ms\"\nhalf_open_trials = 1\nsuccess_threshold = 1\n\
         [concurrency]\nmax_active_agents = 4\n\
         [[bulkheads]]\nname = \"per-service\"\nmax_in_flight = 8\n\
         [[bulkheads]]\nname = \"per-agent\"\nscope = \"agent\"\nmax_in_flight = 8\n",
    );
    let mut observer = daemon.client("observer").await;
    fail_five(&mut observer, "flaky").await;
    let mut leaving = daemon.client("leaving").await;
    // A trial slot of the half-open breaker (once its open period passed).
    let trial = until!(Some(admit(&mut leaving, "flaky", None).await).filter(|r| r.allowed));
    assert!(
        trial.votes.iter().any(|v| v.reason.contains("trial")),
        "{trial:?}"
    );
    // Permits, a lease taken by an admission and one by request.
    for service in ["llm", "search"] {
        assert!(admit(&mut leaving, service, None).await.allowed);
    }
    let with_lease = leaving
        .admit(AdmitRequest {
            service: "deploy".into(),
            lease: Some("release-train".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(with_lease.allowed);
    assert!(lease(&mut leaving, "repo", None, false).await.granted);
    let status = observer.status().await.unwrap();
    assert_eq!(status.open_reservations, 4);
    assert_eq!(status.leases_held, 2);
    assert!(status
        .in_flight
        .iter()
        .any(|k| k.bulkhead == "per-agent" && k.key == "leaving" && k.in_flight == 4));
    assert!(status
        .in_flight
        .iter()
        .any(|k| k.bulkhead == "max_active_agents" && k.in_flight == 1));
    let metrics = daemon.http_get("/metrics").1;
    assert_eq!(
        sample(&metrics, "automation_framework_leases_held"),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "automation_framework_bulkhead_in_flight{bulkhead=\"per-agent\"}"
        ),
        Some(4.0)
    );

    drop(leaving);
    let status = until!(observer
        .status()
        .await
        .ok()
        .filter(|s| held(s) == (0, 0, 0)));
    assert_eq!(status.active_agents, 1, "the observer only");
    let breaker = &observer.breakers(Some("flaky".into())).await.unwrap()[0];
    assert_eq!(breaker.state, BreakerState::HalfOpen);
    assert_eq!(breaker.trials_in_flight, 0, "the trial slot came back");
    let metrics = daemon.http_get("/metrics").1;
    assert_eq!(
        sample(&metrics, "automation_framework_leases_held"),
        Some(0.0)
    );
    for bulkhead in ["per-agent", "per-service", "max_active_agents"] {
        assert_eq!(
            sample(
                &metrics,
                &format!("automation_framework_bulkhead_in_flight{{bulkhead=\"{bulkhead}\"}}")
            ),
            Some(0.0),
            "{bulkhead}"
        );
    }
    // Everything is free for someone else.
    let mut next = daemon.client("next").await;
    assert!(lease(&mut next, "repo", None, false).await.granted);
    assert!(lease(&mut next, "release-train", None, false).await.granted);
}

#[tokio::test]
async fn permits_and_leases_do_not_survive_a_restart_and_an_orphan_holds_none() {
    let mut daemon = Daemon::start(
        "[budget]\nlimit = 100.0\n\
         [[bulkheads]]\nname = \"one\"\nmax_in_flight = 1\n",
    );
    let mut client = daemon.client("a").await;
    let reply = client
        .admit(AdmitRequest {
            service: "llm".into(),
            cost: Some(1.0),
            lease: Some("db".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(reply.allowed);
    daemon.kill9();
    daemon.restart();
    let mut client = daemon.client("a").await;
    let status = client.status().await.unwrap();
    assert_eq!(
        status.open_reservations, 1,
        "the reservation is an orphan now"
    );
    assert_eq!((status.leases_held, status.in_flight.len()), (0, 0));
    assert!(
        admit(&mut client, "llm", None).await.allowed,
        "its permit is free"
    );
    assert!(lease(&mut client, "db", None, false).await.granted);
    // The orphan can still be reported, and gives back nothing twice.
    report(&mut client, &reply).await;
    daemon.assert_memory_matches_ledger().await;
}

#[tokio::test]
async fn a_wait_is_bounded_by_concurrency_max_wait() {
    let daemon = Daemon::start(&format!(
        "{BULKHEAD_OF_4}[concurrency]\nmax_wait = \"50ms\"\n"
    ));
    let mut holders = Vec::new();
    for i in 0..4 {
        let mut c = daemon.client(&format!("h{i}")).await;
        assert!(admit(&mut c, "llm", None).await.allowed);
        holders.push(c);
    }
    let mut waiter = daemon.client("w").await;
    let started = std::time::Instant::now();
    let reply = admit(&mut waiter, "llm", Some(60_000)).await;
    assert!(!reply.allowed);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "cut to max_wait"
    );
    assert!(reply.reason.unwrap().contains("waited 50 ms"));
    assert!(in_flight(&mut waiter).await.iter().all(|k| k.waiting == 0));
}
