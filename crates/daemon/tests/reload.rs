//! Config reload through the real daemon: SIGHUP and `automation-framework reload`
//! re-read the file it was started with; unchanged guards keep their state and a
//! bad file leaves the old config in force.

use automation_framework::protocol::{AdmitReply, AdmitRequest, GuardKind, ReportRequest};
use automation_framework_client::Client;

use crate::util::Daemon;

const TIGHT_S: &str =
    "[[rate_limits]]\nname = \"tight\"\nservices = [\"s\"]\nrate = 1\nper = \"1h\"\nburst = 1\n";

async fn admit(client: &mut Client, service: &str) -> AdmitReply {
    client
        .admit(AdmitRequest {
            agent: None,
            service: service.into(),
            units: 1,
            ..Default::default()
        })
        .await
        .expect("admit answered")
}

#[tokio::test]
async fn sighup_applies_a_new_rate_limit_and_an_open_breaker_stays_open() {
    let daemon = Daemon::start("");
    let mut client = daemon.client("a").await;
    crate::util::fail_five(&mut client, "flaky").await;
    assert_eq!(
        admit(&mut client, "flaky").await.guard,
        Some(GuardKind::Breaker)
    );
    assert!(admit(&mut client, "s").await.allowed);
    assert!(admit(&mut client, "s").await.allowed, "no limit on s yet");

    daemon.write_config(TIGHT_S);
    let log = daemon.sighup_and_wait();
    assert!(log.contains("configuration reloaded from"), "{log}");

    let reply = admit(&mut client, "flaky").await;
    assert!(!reply.allowed, "the breaker is still open: {reply:?}");
    assert_eq!(reply.guard, Some(GuardKind::Breaker));
    assert!(admit(&mut client, "s").await.allowed);
    let reply = admit(&mut client, "s").await;
    assert_eq!(
        reply.guard,
        Some(GuardKind::Rate),
        "the new limit: {reply:?}"
    );
    assert_eq!(reply.rule.as_deref(), Some("tight"));
}

#[tokio::test]
async fn a_broken_config_is_refused_and_the_old_one_stays_in_force() {
    let daemon = Daemon::start(TIGHT_S);
    let mut client = daemon.client("a").await;
    assert!(admit(&mut client, "s").await.allowed);

    daemon.write_config(&TIGHT_S.replace("burst = 1", "burts = 100"));
    let log = daemon.sighup_and_wait();
    assert!(
        log.contains("the old configuration stays in force") && log.contains("burts"),
        "the error names the key: {log}"
    );
    let reply = admit(&mut client, "s").await;
    assert_eq!(
        reply.guard,
        Some(GuardKind::Rate),
        "the old limit: {reply:?}"
    );

    // The daemon still serves, and a fixed file applies.
    daemon.write_config(&TIGHT_S.replace("burst = 1", "burst = 3"));
    let log = daemon.sighup_and_wait();
    assert!(log.contains("rate limits 0 kept, 1 new"), "{log}");
    assert!(admit(&mut client, "s").await.allowed);
}

#[tokio::test]
async fn the_cli_reload_reports_what_it_did_and_exits_2_on_a_bad_file() {
    // The test runs as the daemon's own uid, which is always an admin.
    let daemon = Daemon::start(TIGHT_S);
    daemon.write_config(&format!("{TIGHT_S}[daemon]\nmax_connections = 7\n"));
    let out = daemon.cli().arg("reload").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout} {}", daemon.log());
    assert!(
        stdout.contains("configuration reloaded: rate limits 1 kept, 0 new"),
        "{stdout}"
    );
    assert!(
        stdout.contains("restart only: daemon.max_connections"),
        "{stdout}"
    );

    daemon.write_config("[budget.agents.x]\nlimit = \"five\"\n");
    let out = daemon.cli().arg("reload").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("limit = \"five\"") && stderr.contains("old configuration stays in force"),
        "{stderr}"
    );
}

async fn admit_costing(client: &mut Client, cost: f64) -> AdmitReply {
    client
        .admit(AdmitRequest {
            service: "llm".into(),
            cost: Some(cost),
            ..Default::default()
        })
        .await
        .expect("admit answered")
}

async fn report_costing(client: &mut Client, admitted: &AdmitReply, cost: f64) {
    let reply = client
        .report(ReportRequest {
            reservation: admitted.reservation,
            cost: Some(cost),
            ..Default::default()
        })
        .await
        .expect("report answered");
    assert_eq!(reply.charged, Some(cost), "{reply:?}");
}

/// Reloads that take a budget out and put it back, through the real daemon
/// and its ledger: put back, the budget has the balance the ledger holds for
/// it and holds again what a reservation left open across both reloads
/// holds, and the daemon's memory equals its ledger after each step.
#[tokio::test]
async fn a_budget_taken_out_and_put_back_by_reloads_keeps_its_balance_and_holds() {
    const WITH_A: &str = "[budget]\nlimit = 10.0\n[budget.agents.a]\nlimit = 3.0\n";
    let daemon = Daemon::start(WITH_A);
    let mut client = daemon.client("a").await;
    let spent = admit_costing(&mut client, 2.0).await;
    report_costing(&mut client, &spent, 2.0).await;
    let open = admit_costing(&mut client, 0.5).await;
    assert!(open.allowed, "{open:?}");

    daemon.write_config("[budget]\nlimit = 10.0\n");
    let out = daemon.cli().arg("reload").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout} {}", daemon.log());
    assert!(
        stdout.contains("budgets 0 added (their balances read from the ledger), 1 removed"),
        "{stdout}"
    );
    let elsewhere = admit_costing(&mut client, 2.5).await;
    assert!(elsewhere.allowed, "only the global budget: {elsewhere:?}");
    report_costing(&mut client, &elsewhere, 2.5).await;
    daemon.assert_memory_matches_ledger().await;

    daemon.write_config(WITH_A);
    let log = daemon.sighup_and_wait();
    assert!(log.contains("budgets 1 added"), "{log}");
    let budget = client.budget(None).await.unwrap();
    let a = budget.budgets.iter().find(|b| b.name == "agent:a").unwrap();
    assert_eq!((a.spent, a.reserved), (2.0, 0.5), "{a:?}");
    let denied = admit_costing(&mut client, 0.6).await;
    assert_eq!(
        (denied.guard, denied.rule.as_deref()),
        (Some(GuardKind::Budget), Some("agent:a")),
        "2 spent + 0.5 held + 0.6 > 3: {denied:?}"
    );
    report_costing(&mut client, &open, 0.25).await;
    daemon.assert_memory_matches_ledger().await;
}

/// A reload that changes a budget's reset, through the real daemon: the new
/// period counts what was charged since it began (here `never`: all of it),
/// though the ledger had filed it under the old period's days; the log says
/// what was moved; a restart agrees, and memory equals the ledger.
#[tokio::test]
async fn a_reload_that_changes_a_budgets_reset_keeps_what_its_new_period_was_charged() {
    let daily = "[budget]\nlimit = 100.0\n[budget.agents.a]\nlimit = 10.0\nreset = \"daily\"\n";
    let never = "[budget]\nlimit = 100.0\n[budget.agents.a]\nlimit = 5.0\nreset = \"never\"\n";
    let mut daemon = Daemon::start(daily);
    let mut client = daemon.client("a").await;
    for cost in [1.5, 2.5] {
        let admitted = admit_costing(&mut client, cost).await;
        report_costing(&mut client, &admitted, cost).await;
    }
    daemon.write_config(never);
    let log = daemon.sighup_and_wait();
    assert!(
        log.contains(
            "budgets 0 added (their balances read from the ledger), 0 removed, 1 with a new period"
        ),
        "{log}"
    );
    assert!(
        log.contains("budget agent:a's reset changed from daily to never since the ledger last kept it: the 2 charge(s) of $4.00"),
        "{log}"
    );
    let budget = client.budget(None).await.unwrap();
    let a = budget.budgets.iter().find(|b| b.name == "agent:a").unwrap();
    assert_eq!(a.spent, 4.0, "{a:?}");
    let denied = admit_costing(&mut client, 1.5).await;
    assert_eq!(
        (denied.guard, denied.rule.as_deref()),
        (Some(GuardKind::Budget), Some("agent:a")),
        "4 spent + 1.5 > 5: {denied:?}"
    );
    daemon.assert_memory_matches_ledger().await;
    daemon.restart();
    let mut client = daemon.client("a").await;
    let budget = client.budget(None).await.unwrap();
    let a = budget.budgets.iter().find(|b| b.name == "agent:a").unwrap();
    assert_eq!(a.spent, 4.0, "as the ledger holds it: {a:?}");
    daemon.assert_memory_matches_ledger().await;
    assert_eq!(
        daemon.log().matches("reset changed").count(),
        1,
        "the applied reload recorded the new reset: the start moved nothing\n{}",
        daemon.log()
    );
}

#[test]
fn the_session_op_reload_answers_ok_and_a_message() {
    let daemon = Daemon::start(TIGHT_S);
    let replies = daemon.session(&[], &[r#"{"op":"reload","id":"r1"}"#]);
    let reply = &replies[0];
    assert_eq!(reply["op"], "reload");
    assert_eq!(reply["id"], "r1");
    assert_eq!(reply["ok"], true);
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("rate limits 1 kept"),
        "{reply}"
    );
}

/// A connection opened before a reload decides its next request with the
/// new config: each session keeps its own copies of the config and the
/// access policy (`state/session.rs`), and a reload must reach them. Here a
/// reload binds an agent name to another uid, and the same connection's
/// next per-request use of that name is refused, as a new connection's is.
#[tokio::test]
async fn a_live_connection_follows_a_reload_of_the_access_policy() {
    use automation_framework::protocol::{ErrorCode, Request, Response};
    let daemon = Daemon::start("");
    let mut client = daemon.client("helper").await;
    let as_planner = || {
        Request::Admit(AdmitRequest {
            agent: Some("planner".into()),
            service: "openai".into(),
            units: 1,
            ..Default::default()
        })
    };
    match client.call(as_planner()).await.unwrap() {
        Response::Admit(reply) => assert!(reply.allowed, "{reply:?}"),
        other => panic!("an unbound name is free: {other:?}"),
    }

    let other_uid = nix::unistd::getuid().as_raw() + 1;
    daemon.write_config(&format!(
        "[[agents]]\nname = \"planner\"\nuids = [{other_uid}]\n"
    ));
    let log = daemon.sighup_and_wait();
    assert!(log.contains("configuration reloaded from"), "{log}");

    for (who, response) in [
        (
            "the connection from before",
            client.call(as_planner()).await.unwrap(),
        ),
        (
            "a new connection",
            daemon
                .client("helper")
                .await
                .call(as_planner())
                .await
                .unwrap(),
        ),
    ] {
        match response {
            Response::Error(err) => {
                assert_eq!(err.code, ErrorCode::NotPermitted, "{who}: {err:?}");
                assert!(err.message.contains("agents[0]"), "{who}: {}", err.message);
            }
            other => panic!("{who}: expected NotPermitted, got {other:?}"),
        }
    }
    // The session goes on under its own name.
    assert!(admit(&mut client, "openai").await.allowed);
}

/// Reloads that take a budget out and put it back while agents charge it
/// without pause: each put-back reads the budget's balance from the ledger
/// while charges are queued, committed and completing around it, and none
/// may be counted twice or lost (`Store::books` answers after the
/// completions of every write queued before it). Memory equals the ledger
/// at the end, to the micro-dollar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_taken_out_and_put_back_under_a_stream_of_charges_stay_exact() {
    use automation_framework::protocol::{Request, Response};
    const WITH_A: &str = "[daemon]\nmax_connections_per_uid = 64\n[budget]\nlimit = 1000.0\n[budget.agents.a]\nlimit = 1000.0\n";
    const WITHOUT_A: &str = "[daemon]\nmax_connections_per_uid = 64\n[budget]\nlimit = 1000.0\n";
    let daemon = Daemon::start(WITH_A);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut agents = Vec::new();
    for _ in 0..4 {
        let mut client = daemon.client("a").await;
        let stop = std::sync::Arc::clone(&stop);
        agents.push(tokio::spawn(async move {
            let mut charged = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let admitted = admit_costing(&mut client, 0.02).await;
                assert!(admitted.allowed, "{admitted:?}");
                report_costing(&mut client, &admitted, 0.01).await;
                charged += 1;
            }
            charged
        }));
    }
    let mut ops = daemon.client("ops").await;
    for round in 0..20 {
        daemon.write_config(if round % 2 == 0 { WITHOUT_A } else { WITH_A });
        match ops.call(Request::Reload).await.unwrap() {
            Response::Reload(reply) => assert!(reply.ok, "{reply:?}"),
            other => panic!("round {round}: {other:?}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut charged = 0;
    for agent in agents {
        charged += agent.await.unwrap();
    }
    assert!(charged > 0);
    let budget = ops.budget(None).await.unwrap();
    let global = budget.budgets.iter().find(|b| b.name == "global").unwrap();
    assert_eq!(
        (global.spent * 100.0).round() as u32,
        charged,
        "every charge counted once in the global budget: {global:?}"
    );
    daemon.assert_memory_matches_ledger().await;
}
