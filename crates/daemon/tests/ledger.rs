//! The budget ledger through the real daemon: no overrun under concurrency, charges
//! counted once, nothing acknowledged lost to kill -9.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use automation_framework::protocol::{
    AdmitReply, AdmitRequest, ErrorCode, GuardKind, ReportRequest,
};
use automation_framework_client::{Client, ClientError};

use crate::util::Daemon;

fn micros(dollars: f64) -> i64 {
    (dollars * 1e6).round() as i64
}

/// Connects 100 clients, then has them all admit `request` at the same instant.
/// Returns the replies and one client to inspect the daemon with.
async fn hundred_at_once(daemon: &Daemon, request: AdmitRequest) -> (Vec<AdmitReply>, Client) {
    let mut clients = Vec::new();
    for i in 0..100 {
        clients.push(daemon.client(&format!("agent-{i}")).await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(clients.len()));
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let (barrier, request) = (Arc::clone(&barrier), request.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                (client.admit(request).await.unwrap(), client)
            })
        })
        .collect();
    let mut replies = Vec::new();
    let mut probe = None;
    for task in tasks {
        let (reply, client) = task.await.unwrap();
        replies.push(reply);
        probe = Some(client);
    }
    (replies, probe.expect("100 clients"))
}

/// Reproducer for concurrent admissions all passing the same budget check
/// (BerriAI/litellm#34732, #40095, #26672).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_at_once_against_ten_dollars_get_exactly_ten_admissions() {
    let daemon = Daemon::start("[daemon]\nmax_connections_per_uid = 128\n[budget]\nlimit = 10.0\n");
    let request = AdmitRequest {
        service: "llm".into(),
        cost: Some(1.0),
        ..Default::default()
    };
    let (replies, mut probe) = hundred_at_once(&daemon, request).await;
    assert_eq!(replies.iter().filter(|r| r.allowed).count(), 10);
    for denied in replies.iter().filter(|r| !r.allowed) {
        assert_eq!(denied.guard, Some(GuardKind::Budget), "{denied:?}");
    }
    let budget = probe.budget(None).await.unwrap();
    assert_eq!(
        (budget.spent, budget.reserved, budget.remaining),
        (0.0, 10.0, 0.0)
    );
    daemon.assert_memory_matches_ledger().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_at_once_against_a_quota_of_ten_get_exactly_ten() {
    let daemon = Daemon::start("[daemon]\nmax_connections_per_uid = 128\n[[quotas]]\nname = \"ten\"\nscope = \"global\"\nlimit = 10\nwindow = \"day\"\n",
    );
    let request = AdmitRequest {
        service: "llm".into(),
        ..Default::default()
    };
    let (replies, mut probe) = hundred_at_once(&daemon, request).await;
    assert_eq!(replies.iter().filter(|r| r.allowed).count(), 10);
    assert_eq!(probe.quotas(Some("ten".into())).await.unwrap()[0].used, 10);
}

#[tokio::test]
async fn a_report_repeated_after_reconnecting_and_after_a_restart_counts_once() {
    let mut daemon = Daemon::start("[budget]\nlimit = 10.0\n");
    let mut client = daemon.client("a").await;
    let admitted = client
        .admit(AdmitRequest {
            service: "llm".into(),
            cost: Some(2.0),
            ..Default::default()
        })
        .await
        .unwrap();
    let report = ReportRequest {
        reservation: admitted.reservation,
        cost: Some(1.5),
        ..Default::default()
    };
    let first = client.report(report.clone()).await.unwrap();
    assert_eq!((first.duplicate, first.charged), (false, Some(1.5)));
    drop(client);
    let mut again = daemon.client("a").await;
    assert!(again.report(report.clone()).await.unwrap().duplicate);
    daemon.restart();
    let mut after = daemon.client("a").await;
    assert!(after.report(report).await.unwrap().duplicate);
    let budget = after.budget(None).await.unwrap();
    assert_eq!((budget.spent, budget.reserved), (1.5, 0.0));
    daemon.assert_memory_matches_ledger().await;
}

#[tokio::test]
async fn a_charge_without_reservation_needs_a_key_and_counts_once() {
    let daemon = Daemon::start("");
    let mut client = daemon.client("a").await;
    let charge = |key: Option<&str>| ReportRequest {
        service: Some("llm".into()),
        cost: Some(0.25),
        idempotency_key: key.map(Into::into),
        ..Default::default()
    };
    match client.report(charge(None)).await {
        Err(ClientError::Refused(err)) => {
            assert_eq!(err.code, ErrorCode::InvalidArgument);
            assert!(err.message.contains("idempotency_key"), "{}", err.message);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        client.report(charge(Some("job-7"))).await.unwrap().charged,
        Some(0.25)
    );
    assert!(
        client
            .report(charge(Some("job-7")))
            .await
            .unwrap()
            .duplicate
    );
    assert_eq!(client.budget(None).await.unwrap().spent, 0.25);
    daemon.assert_memory_matches_ledger().await;
}

#[tokio::test]
async fn the_cli_shows_budgets_and_runs_admin_operations() {
    let daemon = Daemon::start(
        "[budget]\nlimit = 10.0\n[budget.agents.planner]\nlimit = 2.0\nreset = \"daily\"\n",
    );
    let run = |args: &[&str]| {
        let out = daemon.cli().args(args).output().unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, stdout, _) = run(&[
        "--agent",
        "planner",
        "admit",
        "--service",
        "llm",
        "--cost",
        "1.5",
    ]);
    assert_eq!(code, 0, "{stdout}");
    let (code, stdout, _) = run(&[
        "--agent",
        "planner",
        "admit",
        "--service",
        "llm",
        "--cost",
        "1.0",
    ]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains("denied by budget \"agent:planner\""),
        "{stdout}"
    );
    let (code, stdout, _) = run(&["--json", "budget", "--for", "planner"]);
    assert_eq!(code, 0);
    let reply: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        reply["limit"], 2.0,
        "the agent's own budget is the headline: {reply}"
    );
    assert_eq!(reply["budgets"][1]["reset"], "daily");
    let (code, stdout, stderr) = run(&["budget", "--budget", "agent:planner", "--set-limit", "5"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("agent:planner limit set to $5.00"),
        "{stdout}"
    );
    let (code, stdout, _) = run(&[
        "--agent",
        "planner",
        "admit",
        "--service",
        "llm",
        "--cost",
        "1.0",
    ]);
    assert_eq!(code, 0, "{stdout}");
    let (code, stdout, _) = run(&["budget"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("agent:planner") && stdout.contains("$5.00"),
        "{stdout}"
    );
    let (code, _, stderr) = run(&["budget", "--refund", "nope"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("no charge with idempotency key \"nope\""),
        "{stderr}"
    );
    daemon.assert_memory_matches_ledger().await;
}

/// Nothing acknowledged is lost (SPEC §5; BerriAI/litellm#35531, #34805, #38157):
/// clients admit and report charges while the daemon is killed with SIGKILL at
/// random points and restarted on the same state directory. Every report a
/// client sends is retried until the daemon answers it, so each charge's fate is
/// known: the recorded spend must equal the sum of the charges the daemon
/// acknowledged, exactly, with none counted twice. Admissions whose reply was lost
/// in a kill are visible as orphaned reservations holding their estimate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_survives_kill_9_exactly() {
    const CLIENTS: u64 = 8;
    const KILLS: u64 = 4;
    const ESTIMATE: f64 = 0.01;
    // Orphans must stay visible (not settled) for the final accounting.
    let mut daemon =
        Daemon::start("rate_limits = []\n[budget]\nlimit = 1000000.0\norphan_timeout = \"1h\"\n");
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicI64::new(0));
    let charges = Arc::new(AtomicU64::new(0));
    let socket = daemon.socket.clone();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (stop, acknowledged, charges, socket) = (
                Arc::clone(&stop),
                Arc::clone(&acknowledged),
                Arc::clone(&charges),
                socket.clone(),
            );
            tokio::spawn(async move {
                let agent = format!("crash-{n}");
                let mut client = reconnect(&socket, &agent).await;
                let mut i: u64 = 0;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let admit = AdmitRequest {
                        service: "llm".into(),
                        cost: Some(ESTIMATE),
                        ..Default::default()
                    };
                    let reservation = match client.admit(admit).await {
                        Ok(reply) if reply.allowed => reply.reservation.expect("allowed has an id"),
                        Ok(reply) => panic!("unexpected denial: {reply:?}"),
                        Err(_) => {
                            // The daemon died with the admission in flight: if it was
                            // durable it is an orphan now, counted in `reserved`.
                            client = reconnect(&socket, &agent).await;
                            continue;
                        }
                    };
                    // Actual cost in whole micro-dollars, different per call.
                    let actual = (1 + (n * 7919 + i * 104_729) % 9_000) as f64 / 1e6;
                    let report = ReportRequest {
                        reservation: Some(reservation),
                        cost: Some(actual),
                        ..Default::default()
                    };
                    loop {
                        match client.report(report.clone()).await {
                            Ok(reply) => {
                                // A duplicate means an earlier attempt, whose answer
                                // was lost in a kill, was committed: count it once.
                                acknowledged.fetch_add(micros(actual), Ordering::SeqCst);
                                charges.fetch_add(1, Ordering::SeqCst);
                                assert!(reply.ok);
                                break;
                            }
                            Err(ClientError::Refused(err))
                                if err.code == ErrorCode::Unavailable =>
                            {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            Err(ClientError::Refused(err)) => panic!("report refused: {err:?}"),
                            Err(_) => client = reconnect(&socket, &agent).await,
                        }
                    }
                }
            })
        })
        .collect();

    // Kill at pseudo-random points (a fixed xorshift, so failures reproduce).
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for _ in 0..KILLS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        tokio::time::sleep(Duration::from_millis(150 + x % 350)).await;
        daemon.kill9();
        daemon.restart();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.expect("client task");
    }

    let mut probe = daemon.client("auditor").await;
    let budget = probe.budget(None).await.unwrap();
    let global = &budget.budgets[0];
    let n_charges = charges.load(Ordering::SeqCst);
    assert!(
        n_charges > 20,
        "the test made too few charges to mean anything: {n_charges}"
    );
    assert_eq!(
        micros(global.spent),
        acknowledged.load(Ordering::SeqCst),
        "recorded spend must equal the acknowledged charges ({n_charges} charges, {KILLS} kills)\n{}",
        daemon.log()
    );
    assert!(
        global.orphaned as u64 <= CLIENTS * KILLS,
        "at most one admission in flight per client per kill"
    );
    assert_eq!(
        micros(global.reserved),
        global.orphaned as i64 * micros(ESTIMATE),
        "only in-flight admissions stay reserved"
    );
    eprintln!(
        "kill -9 test: {n_charges} charges, ${:.6} spent, {} orphaned admission(s) over {KILLS} kills",
        global.spent, global.orphaned
    );
    daemon.assert_memory_matches_ledger().await;
}

/// Connects, retrying while the daemon restarts.
async fn reconnect(socket: &std::path::Path, agent: &str) -> Client {
    for _ in 0..1000 {
        if let Ok(client) = Client::connect(socket, agent, "crash-test").await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("could not reconnect to {}", socket.display());
}

/// A ledger that cannot be opened must not take the host's agents down with it:
/// the daemon serves, reports itself unhealthy with the reason, and refuses only
/// what needs the ledger (fail closed).
#[tokio::test]
async fn a_corrupt_ledger_fails_budgeted_calls_closed_and_keeps_the_rest_running() {
    let mut daemon = Daemon::start("[services.free]\n");
    daemon.kill9();
    let ledger = daemon.dir.path().join("state/ledger.sqlite3");
    std::fs::write(&ledger, vec![0xA5; 64 * 1024]).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(
            daemon
                .dir
                .path()
                .join(format!("state/ledger.sqlite3{suffix}")),
        );
    }
    daemon.restart();
    let mut client = daemon.client("a").await;
    client.ping().await.unwrap();
    let status = client.status().await.unwrap();
    assert_eq!(
        status.status,
        automation_framework::protocol::Health::Unhealthy
    );
    assert!(
        status.reasons[0].contains("ledger store failing"),
        "{:?}",
        status.reasons
    );
    match client
        .admit(AdmitRequest {
            service: "free".into(),
            ..Default::default()
        })
        .await
    {
        Err(ClientError::Refused(err)) => {
            assert_eq!(err.code, ErrorCode::Unavailable);
            assert!(err.message.contains("fail closed"), "{}", err.message);
            assert!(
                err.message.contains("ledger.sqlite3"),
                "names the file: {}",
                err.message
            );
        }
        other => panic!("expected a fail-closed refusal, got {other:?}"),
    }
    assert!(client.breakers(None).await.is_ok());
}

/// Issue 10: prices below a micro-dollar per token were rounded before they were
/// multiplied. Published per-million-token list prices (read 2026-11-27; see
/// `config::tests::published_per_million_token_prices_cost_exactly_to_the_micro_dollar`
/// for the sources), priced by the real daemon at admission and at report, are
/// exact to the micro-dollar at the total and rounded up only there.
#[tokio::test]
async fn published_token_prices_are_charged_exactly_to_the_micro_dollar() {
    let daemon = Daemon::start(
        r#"
[budget]
limit = 100.0
[prices."openai/gpt-4o-mini"]
per_million_input_units = 0.15
per_million_output_units = 0.60
[prices."openai/gpt-4o"]
per_million_input_units = 2.50
per_million_output_units = 10.00
[prices."anthropic/claude-3-5-haiku"]
per_million_input_units = 0.80
per_million_output_units = 4.00
[prices.legacy]
per_input_unit = 0.0000025
per_output_unit = 0.000015
"#,
    );
    let mut client = daemon.client("a").await;
    // (service, model, estimated in/out, reported in/out, estimate µ$, charge µ$)
    let calls = [
        // 20,000 × $0.15/M + 1,000 × $0.60/M = $0.0036;
        // 12,345 × $0.15/M + 678 × $0.60/M = $0.00225855, charged $0.002259.
        (
            "openai",
            "gpt-4o-mini",
            (20_000, 1_000),
            (12_345, 678),
            3_600,
            2_259,
        ),
        // $0.05 + $0.01; $0.0308625 + $0.00678 = $0.0376425, charged $0.037643.
        (
            "openai",
            "gpt-4o",
            (20_000, 1_000),
            (12_345, 678),
            60_000,
            37_643,
        ),
        // $0.016 + $0.004; $0.009876 + $0.002712 = $0.012588 exactly.
        (
            "anthropic",
            "claude-3-5-haiku",
            (20_000, 1_000),
            (12_345, 678),
            20_000,
            12_588,
        ),
        // The issue's example: $0.0025 + $0.003 = $0.0055, not $0.006.
        ("legacy", "", (1_000, 200), (1_000, 200), 5_500, 5_500),
    ];
    let mut spent = 0;
    for (service, model, (input, output), (used_in, used_out), estimate, charge) in calls {
        let admitted = client
            .admit(AdmitRequest {
                service: service.into(),
                model: (!model.is_empty()).then(|| model.into()),
                input_units: input,
                output_units: output,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(admitted.allowed, "{admitted:?}");
        assert_eq!(
            admitted.cost.map(micros),
            Some(estimate),
            "{service}/{model}"
        );
        let budget = client.budget(None).await.unwrap();
        assert_eq!(micros(budget.reserved), estimate, "{service}/{model}");
        let settled = client
            .report(ReportRequest {
                reservation: admitted.reservation,
                input_units: Some(used_in),
                output_units: Some(used_out),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            settled.charged.map(micros),
            Some(charge),
            "{service}/{model}"
        );
        spent += charge;
        let budget = client.budget(None).await.unwrap();
        assert_eq!((micros(budget.spent), budget.reserved), (spent, 0.0));
    }
    assert_eq!(spent, 57_990, "$0.05799 in all");
}
