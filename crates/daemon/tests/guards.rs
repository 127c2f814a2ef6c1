//! Rate limits and circuit breakers through the socket, shared across connections.

use std::time::Duration;

use automation_framework::protocol::{
    AdmitReply, AdmitRequest, BreakerState, GuardKind, Outcome, ReportRequest,
};
use automation_framework_client::Client;

use crate::util::{fail_five, Daemon};

async fn admit(client: &mut Client, service: &str) -> AdmitReply {
    admit_units(client, service, 1).await
}

async fn admit_units(client: &mut Client, service: &str, units: u32) -> AdmitReply {
    client
        .admit(AdmitRequest {
            agent: None,
            service: service.into(),
            units,
            ..Default::default()
        })
        .await
        .expect("admit answered")
}

async fn report(client: &mut Client, reservation: u64, outcome: Outcome) -> BreakerState {
    client
        .report(ReportRequest {
            reservation: Some(reservation),
            service: None,
            outcome,
            units: None,
            latency_ms: None,
            ..Default::default()
        })
        .await
        .expect("report answered")
        .breaker
        .expect("not a duplicate")
}

/// Admits until the breaker lets a call through: the open period runs on the
/// daemon's real clock, so this polls (bounded) instead of sleeping a fixed time.
async fn admit_when_open_period_ends(client: &mut Client, service: &str) -> AdmitReply {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let reply = admit(client, service).await;
        if reply.allowed {
            return reply;
        }
        assert_eq!(reply.guard, Some(GuardKind::Breaker), "{reply:?}");
        assert!(
            std::time::Instant::now() < deadline,
            "breaker never let a trial through"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn breaker_state(client: &mut Client, service: &str) -> BreakerState {
    client.breakers(Some(service.into())).await.unwrap()[0].state
}

#[tokio::test]
async fn the_burst_passes_then_a_denial_says_when_to_come_back() {
    // One cell per 10 s, burst 5: no refill can happen during the test.
    let daemon =
        Daemon::start("[[rate_limits]]\nname = \"slow\"\nrate = 1\nper = \"10s\"\nburst = 5\n");
    let mut client = daemon.client("a").await;
    for _ in 0..5 {
        assert!(admit(&mut client, "openai").await.allowed);
    }
    let denied = admit(&mut client, "openai").await;
    assert!(!denied.allowed);
    assert_eq!(denied.reservation, None);
    assert_eq!(denied.guard, Some(GuardKind::Rate));
    assert_eq!(denied.rule.as_deref(), Some("slow"));
    let retry = denied.retry_after_ms.expect("a rate denial says when");
    assert!(
        (8_000..=10_000).contains(&retry),
        "retry_after_ms = {retry}"
    );
    assert!(denied
        .reason
        .unwrap()
        .contains("rate limit of 1 per 10s (burst 5) exceeded"));
    assert_eq!(
        denied.votes.len(),
        2,
        "breaker allowed, rate denied: {:?}",
        denied.votes
    );
}

#[tokio::test]
async fn the_default_config_allows_a_burst_of_100_per_agent_and_service() {
    let daemon = Daemon::start("");
    let mut client = daemon.client("a").await;
    let mut allowed = 0u64;
    let started = std::time::Instant::now();
    while admit(&mut client, "openai").await.allowed {
        allowed += 1;
        assert!(allowed < 1_000, "never denied");
    }
    // 100 burst plus whatever refilled at 10/s while the loop ran (on a loaded
    // machine the loop may take seconds: the bound follows the time it took).
    let refilled = (started.elapsed().as_secs_f64() * 10.0).ceil() as u64;
    assert!(
        (100..=100 + refilled).contains(&allowed),
        "{allowed} allowed, burst 100 + at most {refilled} refilled"
    );
    // Another agent has its own bucket; another service too.
    let mut other = daemon.client("b").await;
    assert!(admit(&mut other, "openai").await.allowed);
    assert!(admit(&mut client, "anthropic").await.allowed);
}

#[tokio::test]
async fn scopes_are_shared_across_connections() {
    let daemon = Daemon::start(
        "[[rate_limits]]\nname = \"host\"\nscope = \"global\"\nrate = 1\nper = \"1h\"\nburst = 3\n",
    );
    let mut clients = Vec::new();
    for agent in ["a", "b", "c", "d"] {
        clients.push(daemon.client(agent).await);
    }
    let mut results = Vec::new();
    for client in &mut clients {
        results.push(admit(client, "svc").await.allowed);
    }
    assert_eq!(
        results,
        [true, true, true, false],
        "one global bucket for every process"
    );
}

#[tokio::test]
async fn weighted_limits_count_units_and_refuse_the_impossible() {
    let daemon = Daemon::start(
        "[[rate_limits]]\nname = \"tokens\"\nweight = \"units\"\nrate = 100\nper = \"1h\"\nburst = 100\n",
    );
    let mut client = daemon.client("a").await;
    let first = admit_units(&mut client, "openai", 60).await;
    assert!(first.allowed);
    let second = admit_units(&mut client, "openai", 60).await;
    assert!(!second.allowed);
    assert!(second.retry_after_ms.is_some());
    let never = admit_units(&mut client, "openai", 101).await;
    assert!(!never.allowed);
    assert_eq!(
        never.retry_after_ms, None,
        "more than the burst can never pass"
    );
    assert!(never.reason.unwrap().contains("can never pass"));
    // Reporting that only 20 of the 60 were used gives 40 back.
    client
        .report(ReportRequest {
            reservation: first.reservation,
            service: None,
            outcome: Outcome::Success,
            units: Some(20),
            latency_ms: None,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(admit_units(&mut client, "openai", 80).await.allowed);
}

const FAST_BREAKER: &str = "[breaker]\nopen_for = \"400ms\"\n";

#[tokio::test]
async fn a_breaker_opens_for_everyone_half_opens_and_closes_after_three_successes() {
    let daemon = Daemon::start(FAST_BREAKER);
    let mut reporter = daemon.client("reporter").await;
    let mut others = vec![daemon.client("b").await, daemon.client("c").await];

    for n in 1..=5 {
        let reply = admit(&mut reporter, "openai").await;
        let state = report(&mut reporter, reply.reservation.unwrap(), Outcome::Failure).await;
        let expected = if n < 5 {
            BreakerState::Closed
        } else {
            BreakerState::Open
        };
        assert_eq!(state, expected, "after failure {n}");
    }

    // Every other connection is denied at once, by the breaker, with the time left.
    for client in &mut others {
        let denied = admit(client, "openai").await;
        assert!(!denied.allowed);
        assert_eq!(denied.guard, Some(GuardKind::Breaker));
        let retry = denied.retry_after_ms.unwrap();
        assert!(retry <= 400, "{retry}");
        assert!(
            admit(client, "anthropic").await.allowed,
            "other services unaffected"
        );
    }

    // After the open period: half-open, three trial slots host-wide.
    let first = admit_when_open_period_ends(&mut others[0], "openai").await;
    assert_eq!(
        breaker_state(&mut reporter, "openai").await,
        BreakerState::HalfOpen
    );
    let second = admit(&mut others[1], "openai").await;
    let third = admit(&mut reporter, "openai").await;
    assert!(second.allowed && third.allowed);
    let fourth = admit(&mut reporter, "openai").await;
    assert!(!fourth.allowed, "only three trials at a time");
    assert!(fourth.reason.unwrap().contains("trial calls are in flight"));

    assert_eq!(
        report(&mut others[0], first.reservation.unwrap(), Outcome::Success).await,
        BreakerState::HalfOpen
    );
    assert_eq!(
        report(
            &mut others[1],
            second.reservation.unwrap(),
            Outcome::Success
        )
        .await,
        BreakerState::HalfOpen
    );
    assert_eq!(
        report(&mut reporter, third.reservation.unwrap(), Outcome::Success).await,
        BreakerState::Closed
    );
    assert!(admit(&mut others[1], "openai").await.allowed);
}

#[tokio::test]
async fn a_failed_trial_reopens_the_breaker() {
    let daemon = Daemon::start(FAST_BREAKER);
    let mut client = daemon.client("a").await;
    fail_five(&mut client, "search").await;
    assert_eq!(
        breaker_state(&mut client, "search").await,
        BreakerState::Open
    );
    let trial = admit_when_open_period_ends(&mut client, "search").await;
    assert_eq!(
        report(&mut client, trial.reservation.unwrap(), Outcome::Failure).await,
        BreakerState::Open
    );
    let denied = admit(&mut client, "search").await;
    assert_eq!(denied.guard, Some(GuardKind::Breaker));
}

/// A trial whose agent vanishes must not wedge the breaker half-open
/// (resilience4j#903, #935, #2028).
#[tokio::test]
async fn a_trial_slot_comes_back_when_its_connection_drops() {
    let daemon = Daemon::start(
        "[breaker]\nopen_for = \"300ms\"\nhalf_open_trials = 1\nsuccess_threshold = 1\n",
    );
    let mut observer = daemon.client("observer").await;
    fail_five(&mut observer, "svc").await;
    let mut vanishing = daemon.client("vanishing").await;
    admit_when_open_period_ends(&mut vanishing, "svc").await;
    let busy = admit(&mut observer, "svc").await;
    assert!(!busy.allowed, "the single trial slot is taken");
    drop(vanishing);

    let trial = admit_when_open_period_ends(&mut observer, "svc").await;
    let info = &observer.breakers(Some("svc".into())).await.unwrap()[0];
    assert_eq!(
        info.state,
        BreakerState::HalfOpen,
        "a vanished trial is neither success nor failure"
    );
    assert_eq!(info.trial_successes, 0);
    assert_eq!(
        report(&mut observer, trial.reservation.unwrap(), Outcome::Success).await,
        BreakerState::Closed
    );
}

#[tokio::test]
async fn shadow_mode_decides_and_records_but_never_denies() {
    let daemon = Daemon::start(
        "[daemon]\nmode = \"shadow\"\n[[rate_limits]]\nname = \"one\"\nrate = 1\nper = \"1h\"\nburst = 1\n",
    );
    let mut client = daemon.client("a").await;
    assert!(admit(&mut client, "svc").await.allowed);
    let shadowed = admit(&mut client, "svc").await;
    assert!(shadowed.allowed);
    let vote = shadowed
        .votes
        .iter()
        .find(|v| v.guard == GuardKind::Rate)
        .unwrap();
    assert!(!vote.allow && vote.shadow, "{vote:?}");
}

#[tokio::test]
async fn a_report_repeated_after_reconnecting_changes_nothing() {
    let daemon = Daemon::start("");
    let mut client = daemon.client("a").await;
    let reservation = admit(&mut client, "svc").await.reservation.unwrap();
    report(&mut client, reservation, Outcome::Failure).await;
    drop(client);
    let mut again = daemon.client("a").await;
    let reply = again
        .report(ReportRequest {
            reservation: Some(reservation),
            service: None,
            outcome: Outcome::Failure,
            units: None,
            latency_ms: None,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(reply.duplicate);
    assert_eq!(
        again.breakers(Some("svc".into())).await.unwrap()[0].failures,
        1
    );
}
