//! Retry advice, the shared retry budget and routes against the real daemon:
//! a fleet of agents failing on one service, the breaker's half-open race over
//! the socket, routes that skip what cannot take the call, and the CLI.

use automation_framework::protocol::{
    AdmitReply, AdmitRequest, BreakerState, GuardKind, Outcome, ReportRequest, RouteRequest,
};
use automation_framework_client::Client;
use futures_util::future::join_all;

use crate::util::{fail_five, Daemon, PROMPTLY};

const AGENTS: usize = 20;

async fn admit(client: &mut Client, service: &str, attempt: u32) -> AdmitReply {
    client
        .admit(AdmitRequest {
            service: service.into(),
            attempt,
            ..Default::default()
        })
        .await
        .expect("admit answered")
}

/// The value of the first sample line that starts with `series`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// Twenty agents call one service, which fails every call (retryably). The
/// breaker opens after five failures; from then on no agent is admitted
/// until it half-opens, when exactly `half_open_trials` are, however many ask
/// at once. Over the whole run the retries advised stay within the service's
/// retry budget (20 % of the calls of the last 10 s, at least 3 at once).
#[tokio::test]
async fn twenty_failing_agents_stay_within_the_retry_budget_and_the_breaker_holds() {
    let daemon = Daemon::start(
        "[budget]\nenabled = false\n[breaker]\nopen_for = \"1500ms\"\nhalf_open_trials = 3\n",
    );
    let mut agents = Vec::new();
    for n in 0..AGENTS {
        agents.push(daemon.client(&format!("agent-{n}")).await);
    }

    // Round one: every agent is admitted (the breaker is closed) and fails.
    let mut reservations = Vec::new();
    for client in &mut agents {
        let reply = admit(client, "svc", 1).await;
        assert!(reply.allowed, "{reply:?}");
        reservations.push(reply.reservation.unwrap());
    }
    let reports = agents.iter_mut().zip(&reservations).map(|(client, id)| {
        client.report(ReportRequest {
            reservation: Some(*id),
            outcome: Outcome::Failure,
            retryable: true,
            ..Default::default()
        })
    });
    let replies: Vec<_> = join_all(reports)
        .await
        .into_iter()
        .map(|r| r.expect("report answered"))
        .collect();
    let advice: Vec<_> = replies
        .iter()
        .map(|r| r.retry.clone().expect("advice"))
        .collect();
    let advised = advice.iter().filter(|a| a.retry).count();
    // 20 calls in the window: 20 % is 4; the floor is 3.
    let budget = (AGENTS * 20 / 100).max(3);
    assert!(
        (1..=budget).contains(&advised),
        "{advised} retries advised for {AGENTS} calls, budget {budget}: {advice:#?}"
    );
    for refused in advice.iter().filter(|a| !a.retry) {
        assert!(refused.reason.contains("retry budget spent"), "{refused:?}");
        assert_eq!(refused.after_ms, None);
    }
    for advised in advice.iter().filter(|a| a.retry) {
        assert_eq!(advised.attempt, 2);
        let after = advised.after_ms.unwrap();
        // Backoff (80..120 ms), or, once the breaker is open, until it half-opens.
        assert!((80..=1500).contains(&after), "{advised:?}");
    }
    // The reports ran concurrently: some saw the breaker still closed, the
    // fifth failure opened it.
    let opened = replies
        .iter()
        .filter(|r| r.breaker == Some(BreakerState::Open))
        .count();
    assert!(opened >= AGENTS - 5, "{replies:#?}");

    // While open: nobody gets in, first call or retry, each told how long.
    for (n, client) in agents.iter_mut().enumerate() {
        let attempt = if advice[n].retry { 2 } else { 1 };
        let denied = admit(client, "svc", attempt).await;
        assert!(!denied.allowed);
        assert_eq!(denied.guard, Some(GuardKind::Breaker), "{denied:?}");
        assert!(denied.retry_after_ms.unwrap() <= 1500);
    }

    // At the end of the open period every agent asks at once, in rounds, until
    // the trial slots are seen full: exactly three trials in all, never more.
    // The open period runs on the daemon's real clock: poll, in rounds.
    let deadline = std::time::Instant::now() + PROMPTLY;
    let mut allowed = 0;
    loop {
        let round = join_all(agents.iter_mut().map(|c| admit(c, "svc", 1))).await;
        allowed += round.iter().filter(|r| r.allowed).count();
        let busy = round.iter().any(|r| {
            r.reason
                .as_deref()
                .is_some_and(|reason| reason.contains("trial calls are in flight"))
        });
        if busy {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never half-opened");
        if allowed == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    assert_eq!(allowed, 3, "exactly half_open_trials trials");
    eprintln!("{AGENTS} failures: {advised} retries advised (budget {budget}), {allowed} trials admitted at half-open");

    // Advised retries are visible per service in /metrics.
    let (_, metrics) = daemon.http_get("/metrics");
    let series = "automation_framework_retries_advised_total{service=\"svc\"}";
    assert_eq!(sample(&metrics, series), Some(advised as f64), "{metrics}");
    let refused = "automation_framework_retries_refused_total{service=\"svc\",reason=\"budget\"}";
    assert_eq!(
        sample(&metrics, refused),
        Some((AGENTS - advised) as f64),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_retry_beyond_the_shared_budget_is_denied_for_every_agent() {
    let daemon = Daemon::start("[budget]\nenabled = false\n[retry]\nbudget_min_retries = 2\n");
    let mut a = daemon.client("a").await;
    let mut b = daemon.client("b").await;
    assert!(admit(&mut a, "svc", 2).await.allowed);
    assert!(admit(&mut b, "svc", 3).await.allowed);
    let denied = admit(&mut a, "svc", 2).await;
    assert!(!denied.allowed);
    assert_eq!(denied.guard, Some(GuardKind::Retry));
    assert_eq!(denied.rule.as_deref(), Some("svc"));
    assert!(
        denied
            .reason
            .as_deref()
            .unwrap()
            .starts_with("retry budget spent"),
        "{denied:?}"
    );
    assert!(denied.retry_after_ms.is_some());
    // A first call is never a retry.
    assert!(admit(&mut b, "svc", 1).await.allowed);
    // Attempt 0 is a mistake, said so.
    let err = a
        .admit(AdmitRequest {
            service: "svc".into(),
            attempt: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("attempt is 1-based"), "{err}");
}

const ROUTES: &str = r#"
[daemon]
allow_unknown_services = false
[services.primary]
[services.secondary]
[services.tertiary]
[budget]
limit = 10.0
[budget.services.secondary]
limit = 1.0
[[routes]]
name = "llm"
chain = ["primary", "secondary", "tertiary"]
"#;

fn route_of(name: &str, cost: f64) -> RouteRequest {
    RouteRequest {
        route: Some(name.into()),
        chain: Vec::new(),
        agent: None,
        units: 1,
        cost: Some(cost),
        model: None,
    }
}

#[tokio::test]
async fn route_skips_an_open_breaker_and_a_price_over_budget_and_admit_takes_it() {
    let daemon = Daemon::start(ROUTES);
    let mut client = daemon.client("router").await;
    let reply = client.route(route_of("llm", 0.5)).await.unwrap();
    assert_eq!(reply.service.as_deref(), Some("primary"));

    fail_five(&mut client, "primary").await;
    let reply = client.route(route_of("llm", 0.5)).await.unwrap();
    assert_eq!(reply.service.as_deref(), Some("secondary"));
    assert_eq!(reply.skipped.len(), 1);
    assert_eq!(reply.skipped[0].guard, GuardKind::Breaker);
    assert!(
        reply.skipped[0].reason.starts_with("circuit open"),
        "{reply:?}"
    );

    // $2 does not fit secondary's $1 budget.
    let reply = client.route(route_of("llm", 2.0)).await.unwrap();
    assert_eq!(reply.service.as_deref(), Some("tertiary"));
    let skipped: Vec<_> = reply
        .skipped
        .iter()
        .map(|s| (s.service.as_str(), s.guard))
        .collect();
    assert_eq!(
        skipped,
        [
            ("primary", GuardKind::Breaker),
            ("secondary", GuardKind::Budget)
        ]
    );
    assert!(
        reply.skipped[1].reason.contains("budget service:secondary"),
        "{reply:?}"
    );
    assert_eq!(reply.retry_after_ms, None);

    // Admit by route: admitted against tertiary, which the reply names.
    let admitted = client
        .admit(AdmitRequest {
            route: Some("llm".into()),
            cost: Some(2.0),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(admitted.allowed, "{admitted:?}");
    assert_eq!(admitted.service.as_deref(), Some("tertiary"));
    let report = client
        .report(ReportRequest {
            reservation: admitted.reservation,
            outcome: Outcome::Success,
            cost: Some(1.5),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(report.charged, Some(1.5));
    assert_eq!(report.retry, None);

    // Nothing fits $9 now ($8.50 left): every service is skipped.
    let reply = client.route(route_of("llm", 9.0)).await.unwrap();
    assert_eq!(reply.service, None);
    assert_eq!(reply.skipped.len(), 3);
    let denied = client
        .admit(AdmitRequest {
            route: Some("llm".into()),
            cost: Some(9.0),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!denied.allowed);
    assert_eq!(denied.guard, Some(GuardKind::Budget));
    assert_eq!(denied.service.as_deref(), Some("tertiary"));
    assert!(denied
        .reason
        .unwrap()
        .contains("primary skipped: circuit open"));

    // Mistakes are told.
    let err = client.route(route_of("nope", 1.0)).await.unwrap_err();
    assert!(err.to_string().contains("no route named \"nope\""), "{err}");
    let err = client
        .admit(AdmitRequest {
            service: "primary".into(),
            route: Some("llm".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("either service or route"), "{err}");
    let err = client
        .route(RouteRequest {
            chain: vec!["tertiary".into(), "undeclared".into()],
            ..route_of("llm", 1.0)
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not both"), "{err}");
    let err = client
        .route(RouteRequest {
            route: None,
            chain: vec!["tertiary".into(), "undeclared".into()],
            ..route_of("llm", 1.0)
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown service"), "{err}");
    daemon.assert_memory_matches_ledger().await;
}

#[tokio::test]
async fn the_cli_routes_and_renders_retry_advice() {
    let daemon = Daemon::start(ROUTES);
    let out = daemon
        .cli()
        .args(["route", "--route", "llm", "--cost", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "primary\n");
    let out = daemon
        .cli()
        .args(["route", "--chain", "secondary,tertiary", "--cost", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("tertiary\n"), "{text}");
    assert!(text.contains("skipped secondary"), "{text}");

    let out = daemon
        .cli()
        .args([
            "route",
            "--chain",
            "primary,secondary",
            "--cost",
            "20",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "none fits: {out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["service"], serde_json::Value::Null);
    assert_eq!(json["skipped"].as_array().unwrap().len(), 2);

    let out = daemon
        .cli()
        .args([
            "report",
            "--service",
            "primary",
            "--outcome",
            "failure",
            "--retryable",
            "--retry-after-ms",
            "1500",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("retry as attempt 2 after 1500 ms: retry 2 of at most 2, after the upstream's Retry-After"),
        "{text}"
    );
    let out = daemon
        .cli()
        .args(["report", "--service", "primary", "--outcome", "failure"])
        .args(["--retryable", "--attempt", "3", "--json"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["retry"]["retry"], false, "{json}");
    assert_eq!(
        json["retry"]["reason"],
        "attempt 3 was the last of 3: give up"
    );

    let out = daemon
        .cli()
        .args(["admit", "--route", "llm", "--cost", "0.5"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout)
        .starts_with("service primary (chosen by the route)\nallowed"));

    // The JSON-lines session passes the fields through both ways.
    let lines = daemon.session(
        &[],
        &[
            r#"{"op":"route","route":"llm","cost":0.5}"#,
            r#"{"op":"report","service":"secondary","outcome":"failure","retryable":true,"attempt":2}"#,
        ],
    );
    assert_eq!(lines[0]["service"], "primary", "{lines:?}");
    assert_eq!(lines[1]["retry"]["retry"], true, "{lines:?}");
    assert_eq!(lines[1]["retry"]["attempt"], 3, "{lines:?}");
}
