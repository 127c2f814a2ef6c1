//! `/metrics`, `/health` and `/ready` on the daemon's HTTP listener.

use std::time::Duration;

use automation_framework::protocol::{AdmitRequest, ReportRequest};

use crate::util::Daemon;

/// The value of the first sample line that starts with `series` (name and labels).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// Each series has its value in `metrics`.
fn assert_samples(metrics: &str, expect: &[(&str, f64)]) {
    for &(series, value) in expect {
        assert_eq!(
            sample(metrics, series),
            Some(value),
            "{series} in:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn metrics_after_traffic_have_the_expected_series_and_values() {
    let daemon = Daemon::start("[budget]\nlimit = 10.0\n[[rate_limits]]\nname = \"pair\"\nrate = 1\nper = \"1h\"\nburst = 2\n");
    let mut client = daemon.client("a").await;
    for _ in 0..3 {
        client
            .admit(AdmitRequest {
                service: "svc".into(),
                cost: Some(1.5),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    crate::util::fail_five(&mut client, "flaky").await;
    let (code, metrics) = daemon.http_get("/metrics");
    assert_eq!(code, 200);
    let expect = [
        ("automation_framework_requests_total{op=\"admit\"}", 3.0),
        ("automation_framework_requests_total{op=\"report\"}", 5.0),
        (
            "automation_framework_admissions_total{decision=\"allow\"}",
            2.0,
        ),
        (
            "automation_framework_admissions_total{decision=\"deny\"}",
            1.0,
        ),
        (
            "automation_framework_decisions_total{guard=\"rate\",outcome=\"deny\"}",
            1.0,
        ),
        (
            "automation_framework_rate_limit_hits_total{rule=\"pair\"}",
            1.0,
        ),
        (
            "automation_framework_breaker_state{service=\"flaky\",state=\"open\"}",
            1.0,
        ),
        (
            "automation_framework_breaker_state{service=\"svc\",state=\"closed\"}",
            1.0,
        ),
        (
            "automation_framework_breaker_transitions_total{service=\"flaky\",state=\"open\"}",
            1.0,
        ),
        (
            "automation_framework_budget_reserved_dollars{budget=\"global\"}",
            3.0,
        ),
        (
            "automation_framework_budget_limit_dollars{budget=\"global\"}",
            10.0,
        ),
        ("automation_framework_connections", 1.0),
        ("automation_framework_open_reservations", 2.0),
        ("automation_framework_store_up", 1.0),
        (
            "automation_framework_limit_hits_total{limit=\"max_batch\"}",
            0.0,
        ),
    ];
    assert_samples(&metrics, &expect);
    assert!(metrics.contains("# HELP automation_framework_request_duration_seconds"));
    // Two reservations were made durable, in one or two group commits.
    let jobs = sample(&metrics, "automation_framework_store_commit_jobs_sum")
        .expect("commit sizes recorded");
    assert_eq!(jobs, 2.0, "{metrics}");
    assert!(
        sample(
            &metrics,
            "automation_framework_store_commit_duration_seconds_count"
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        metrics.contains(
            "automation_framework_request_duration_seconds_bucket{op=\"admit\",le=\"0.001\"}"
        ),
        "latency is a histogram with buckets"
    );
    // Whether the one engine lock is contended: present from the first scrape.
    for series in [
        "automation_framework_engine_lock_waits_total",
        "automation_framework_engine_lock_waited_seconds",
    ] {
        assert!(
            sample(&metrics, series).is_some_and(|v| v >= 0.0),
            "{series} in:\n{metrics}"
        );
    }
    promtool_check(&metrics);
    daemon.assert_memory_matches_ledger().await;
}

/// The state gauges follow what they count: a bulkhead's call in flight and
/// its waiter, a held lease, a quota's use, the agents connected, and a
/// breaker's state as one series set among its states.
#[tokio::test]
async fn the_state_gauges_follow_bulkheads_leases_quotas_and_agents() {
    use automation_framework::protocol::{LeaseRequest, Outcome};
    let daemon = Daemon::start(
        "[[bulkheads]]\nname = \"one\"\nscope = \"service\"\nmax_in_flight = 1\n\
         [[quotas]]\nname = \"calls\"\nscope = \"global\"\nlimit = 10\nwindow = \"day\"\n",
    );
    let mut first = daemon.client("a").await;
    let held = first
        .admit(AdmitRequest {
            service: "svc".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(held.allowed, "{held:?}");
    let lease = first
        .lease(LeaseRequest {
            name: "repo".into(),
            ttl_ms: None,
            release: false,
            agent: None,
        })
        .await
        .unwrap();
    assert!(lease.granted, "{lease:?}");
    crate::util::fail_five(&mut first, "flaky").await;
    let mut second = daemon.client("b").await;
    let waiter = tokio::spawn(async move {
        let reply = second
            .admit(AdmitRequest {
                service: "svc".into(),
                wait_ms: Some(10_000),
                ..Default::default()
            })
            .await
            .unwrap();
        (second, reply)
    });
    let scrape = || daemon.http_get("/metrics").1;
    crate::util::eventually(crate::util::PROMPTLY, || async {
        let waiting = "automation_framework_bulkhead_waiting{bulkhead=\"one\"}";
        (sample(&scrape(), waiting) == Some(1.0)).then_some(())
    })
    .await;
    let metrics = scrape();
    let expect = [
        (
            "automation_framework_bulkhead_in_flight{bulkhead=\"one\"}",
            1.0,
        ),
        (
            "automation_framework_bulkhead_waiting{bulkhead=\"one\"}",
            1.0,
        ),
        ("automation_framework_leases_held", 1.0),
        (
            "automation_framework_quota_max_usage_ratio{quota=\"calls\"}",
            0.1,
        ),
        ("automation_framework_active_agents", 2.0),
        (
            "automation_framework_breaker_state{service=\"flaky\",state=\"open\"}",
            1.0,
        ),
        (
            "automation_framework_breaker_state{service=\"flaky\",state=\"closed\"}",
            0.0,
        ),
        (
            "automation_framework_breaker_state{service=\"svc\",state=\"open\"}",
            0.0,
        ),
    ];
    assert_samples(&metrics, &expect);

    // The call in flight reported, the waiter goes through.
    first
        .report(ReportRequest {
            reservation: held.reservation,
            outcome: Outcome::Success,
            ..Default::default()
        })
        .await
        .unwrap();
    let (_second, reply) = waiter.await.unwrap();
    assert!(reply.allowed, "{reply:?}");
    let metrics = scrape();
    assert_samples(
        &metrics,
        &[
            (
                "automation_framework_bulkhead_in_flight{bulkhead=\"one\"}",
                1.0,
            ),
            (
                "automation_framework_bulkhead_waiting{bulkhead=\"one\"}",
                0.0,
            ),
            (
                "automation_framework_quota_max_usage_ratio{quota=\"calls\"}",
                0.2,
            ),
        ],
    );
}

/// A deleted ledger makes the daemon unhealthy: `/health` answers 503 (what
/// a load balancer or systemd's watchdog probe acts on) and `store_up` is 0.
#[tokio::test]
async fn health_is_503_and_the_store_down_while_the_ledger_is_lost() {
    let daemon = Daemon::start("[budget]\nlimit = 100.0\n");
    let mut client = daemon.client("a").await;
    client
        .report(ReportRequest {
            service: Some("svc".into()),
            cost: Some(1.0),
            idempotency_key: Some("before".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(daemon.state_dir().join(format!("ledger.sqlite3{suffix}")));
    }
    crate::util::eventually(crate::util::PROMPTLY, || async {
        (daemon.http_get("/health").0 == 503).then_some(())
    })
    .await;
    let (_, body) = daemon.http_get("/health");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["status"], "unhealthy", "{body}");
    let metrics = daemon.http_get("/metrics").1;
    assert_eq!(
        sample(&metrics, "automation_framework_store_up"),
        Some(0.0),
        "{metrics}"
    );
}

/// Only `GET` (and `HEAD`, its headers alone) is served; anything else is
/// told so.
#[tokio::test]
async fn only_get_and_head_are_served() {
    let daemon = Daemon::start("");
    let (code, body) = daemon.http_request("POST", "/metrics");
    assert_eq!(code, 405, "{body}");
    assert!(body.contains("only GET is served here"), "{body}");
    assert_eq!(daemon.http_request("HEAD", "/ready").0, 200);
}

/// One peer (here: this test's uid) holds at most four HTTP connections: a
/// fifth is closed at once, unanswered, and counted, so one user's idle or
/// half-sent requests cannot take the slots everyone's probes need.
#[tokio::test]
async fn one_peer_holds_at_most_four_http_connections() {
    let daemon = Daemon::start("");
    let addr = daemon.http_addr();
    // Four connections that send nothing (each held until the 2-s header
    // timeout or until dropped).
    let held: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
        .collect();
    // A fifth asks; it is refused once the four are counted (each is
    // identified on the blocking pool, so the first tries may race them).
    crate::util::eventually(crate::util::PROMPTLY, || async {
        daemon
            .try_http_request("GET", "/ready")
            .is_none()
            .then_some(())
    })
    .await;
    drop(held);
    let series = "automation_framework_limit_hits_total{limit=\"http_per_peer\"}";
    let hits = crate::util::eventually(crate::util::PROMPTLY, || async {
        daemon
            .try_http_request("GET", "/metrics")
            .and_then(|(_, metrics)| sample(&metrics, series))
    })
    .await;
    assert!(hits >= 1.0, "{hits}");
}

/// `promtool check metrics` from Debian's `prometheus` package, when present
/// (.ci/run extracts it); says so when it is not.
fn promtool_check(metrics: &str) {
    let promtool = ["/opt/prom/usr/bin/promtool", "/usr/bin/promtool"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(promtool) = promtool else {
        eprintln!("SKIPPED promtool check: promtool not installed (Debian package prometheus; .ci/run extracts it to /opt/prom)");
        return;
    };
    use std::io::Write;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn health_turns_degraded_while_a_breaker_is_open_and_back() {
    let daemon = Daemon::start(
        "[breaker]\nopen_for = \"300ms\"\nhalf_open_trials = 1\nsuccess_threshold = 1\n",
    );
    let health = || {
        let (code, body) = daemon.http_get("/health");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    assert_eq!(health()["status"], "healthy");
    let mut client = daemon.client("a").await;
    crate::util::fail_five(&mut client, "llm").await;
    let doc = health();
    assert_eq!(doc["status"], "degraded");
    assert_eq!(doc["circuit_breakers"]["open"], 1);
    assert!(doc["reasons"][0]
        .as_str()
        .unwrap()
        .contains("\"llm\" is open"));
    assert_eq!(doc["store"], "ok");
    // After the open period one successful trial closes it, and health recovers.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let trial = loop {
        let reply = client
            .admit(AdmitRequest {
                service: "llm".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        if reply.allowed {
            break reply;
        }
        assert!(std::time::Instant::now() < deadline, "never half-opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    client
        .report(ReportRequest {
            reservation: trial.reservation,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(health()["status"], "healthy");
}

#[tokio::test]
async fn ready_routes_and_methods() {
    let daemon = Daemon::start("");
    assert_eq!(daemon.http_get("/ready"), (200, "ready\n".into()));
    assert_eq!(daemon.http_get("/nope").0, 404);
}

#[test]
fn a_non_loopback_address_needs_allow_remote() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_automation-frameworkd"))
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--http", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("not a loopback address; set http.allow_remote = true"),
        "{stderr}"
    );
}

/// A storm of denials must not flood the log: at most 20 denial lines a second
/// are written, the rest counted.
#[tokio::test]
async fn a_storm_of_denials_is_logged_at_a_bounded_rate() {
    let daemon =
        Daemon::start("[[rate_limits]]\nname = \"one\"\nrate = 1\nper = \"1h\"\nburst = 1\n");
    let mut client = daemon.client("storm").await;
    for _ in 0..300 {
        client
            .admit(AdmitRequest {
                service: "svc".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let (_, metrics) = daemon.http_get("/metrics");
    let decisions = sample(
        &metrics,
        "automation_framework_decisions_total{guard=\"rate\",outcome=\"deny\"}",
    )
    .unwrap();
    assert_eq!(decisions, 299.0, "every denial is counted");
    let suppressed = sample(&metrics, "automation_framework_log_lines_suppressed_total").unwrap();
    let logged = daemon.log().matches("deny agent=storm").count() as f64;
    assert!(logged <= 40.0, "{logged} denial lines in the log");
    assert_eq!(
        logged + suppressed,
        299.0,
        "every denial is either logged or counted as suppressed"
    );
}

/// Requests written in one go are taken from the read buffer one after
/// another, each one's start the clock reading its predecessor ended with:
/// every one is still counted and timed, and answered in order.
#[tokio::test]
async fn requests_pipelined_in_one_write_are_each_counted_and_timed() {
    pipelined_requests_are_each_counted_and_timed("").await;
}

/// As above with a budget: the replies wait for the ledger, and each waiting
/// reply is timed when it is ready (`cmd::timed`).
#[tokio::test]
async fn requests_pipelined_against_a_budget_are_each_counted_and_timed() {
    pipelined_requests_are_each_counted_and_timed(
        "[budget]\nlimit = 100.0\n[prices.svc]\nper_request = 0.01\n",
    )
    .await;
}

async fn pipelined_requests_are_each_counted_and_timed(config: &str) {
    use automation_framework::protocol::frame::encode;
    use automation_framework::protocol::{ClientFrame, Envelope, Request, Response, ServerFrame};

    const PAIRS: u64 = 40;
    let daemon = Daemon::start(config);
    let mut raw = daemon.raw().await;
    raw.hello("pipeliner").await;
    let mut bytes = Vec::new();
    for id in 1..=2 * PAIRS {
        let request = if id % 2 == 1 {
            Request::Admit(AdmitRequest {
                service: "svc".into(),
                ..Default::default()
            })
        } else {
            // Keyed: with a budget, a report without its reservation is a
            // charge of its own.
            Request::Report(ReportRequest {
                service: Some("svc".into()),
                idempotency_key: Some(format!("call-{id}").into()),
                ..Default::default()
            })
        };
        let body = encode(&ClientFrame::Request(Envelope { id, request })).expect("encode");
        bytes.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(&body);
    }
    raw.write_bytes(&bytes).await;
    for id in 1..=2 * PAIRS {
        match raw.recv().await {
            Some(ServerFrame::Reply(reply)) => {
                assert_eq!(reply.id, id, "in order");
                match (id % 2, &reply.response) {
                    (1, Response::Admit(admit)) => assert!(admit.allowed, "{admit:?}"),
                    (0, Response::Report(_)) => {}
                    (_, other) => panic!("request {id}: {other:?}"),
                }
            }
            other => panic!("request {id}: {other:?}"),
        }
    }
    let (_, metrics) = daemon.http_get("/metrics");
    for op in ["admit", "report"] {
        for series in [
            format!("automation_framework_requests_total{{op=\"{op}\"}}"),
            format!("automation_framework_request_duration_seconds_count{{op=\"{op}\"}}"),
        ] {
            assert_eq!(
                sample(&metrics, &series),
                Some(PAIRS as f64),
                "{series} in:\n{metrics}"
            );
        }
    }
    daemon.assert_memory_matches_ledger().await;
}

/// What a reload takes out leaves `/metrics`: the gauges of a removed
/// budget, bulkhead and quota stop being served (a scrape more than a
/// second after the one before drops a gauge no scrape set since), while
/// what stays keeps its series. A stale series would go on showing a
/// budget's last spend as if it still governed calls.
#[tokio::test]
async fn gauges_of_what_a_reload_removed_leave_the_metrics() {
    const KEPT: &str = "[budget]\nlimit = 10.0\n";
    const REMOVED: &str = "[budget.agents.a]\nlimit = 3.0\n[[bulkheads]]\nname = \"one\"\nscope = \"service\"\nmax_in_flight = 4\n[[quotas]]\nname = \"calls\"\nlimit = 10\nwindow = \"day\"\n";
    let series = [
        "automation_framework_budget_spent_dollars{budget=\"agent:a\"}",
        "automation_framework_bulkhead_in_flight{bulkhead=\"one\"}",
        "automation_framework_quota_max_usage_ratio{quota=\"calls\"}",
    ];
    let daemon = Daemon::start(&format!("{KEPT}{REMOVED}"));
    let mut client = daemon.client("a").await;
    let admitted = client
        .admit(AdmitRequest {
            service: "svc".into(),
            cost: Some(1.0),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(admitted.allowed, "{admitted:?}");
    let metrics = daemon.http_get("/metrics").1;
    for name in series {
        assert!(sample(&metrics, name).is_some(), "{name} before: {metrics}");
    }

    daemon.write_config(KEPT);
    assert!(daemon.sighup_and_wait().contains("configuration reloaded"));
    crate::util::eventually(crate::util::PROMPTLY, || async {
        let metrics = daemon.http_get("/metrics").1;
        series
            .iter()
            .all(|name| sample(&metrics, name).is_none())
            .then_some(())
    })
    .await;
    let metrics = daemon.http_get("/metrics").1;
    assert_eq!(
        sample(
            &metrics,
            "automation_framework_budget_reserved_dollars{budget=\"global\"}"
        ),
        Some(1.0),
        "the global budget stays, holding the open reservation: {metrics}"
    );
}
