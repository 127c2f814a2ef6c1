//! The CLI binary as a user runs it.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::util::Daemon;

fn run(mut cmd: Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run the CLI");
    (
        status.code().expect("exited normally"),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

/// The CLI run against `daemon` with `args`.
fn ask(daemon: &Daemon, args: &[&str]) -> (i32, String, String) {
    let mut cmd = daemon.cli();
    cmd.args(args);
    run(cmd)
}

#[test]
fn admit_prints_the_decision_and_exits_1_when_denied() {
    let daemon =
        Daemon::start("[[rate_limits]]\nname = \"pair\"\nrate = 1\nper = \"1h\"\nburst = 2\n");
    for _ in 0..2 {
        let (code, stdout, _) = ask(&daemon, &["--agent", "a", "admit", "--service", "openai"]);
        assert_eq!(code, 0, "{stdout}");
        assert!(stdout.starts_with("allowed"), "{stdout}");
    }
    let (code, stdout, _) = ask(&daemon, &["--agent", "a", "admit", "--service", "openai"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.starts_with("denied by rate \"pair\": rate limit of 1 per 3600s (burst 2) exceeded"),
        "{stdout}"
    );
    assert!(stdout.contains("retry after"), "{stdout}");

    let (code, stdout, _) = ask(
        &daemon,
        &["--json", "--agent", "a", "admit", "--service", "openai"],
    );
    assert_eq!(code, 1);
    let reply: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(reply["allowed"], false);
    assert_eq!(reply["guard"], "rate");
    assert!(reply["retry_after_ms"].as_u64().unwrap() > 0);
}

#[test]
fn report_and_breakers() {
    let daemon = Daemon::start("");
    for _ in 0..5 {
        assert_eq!(
            ask(
                &daemon,
                &["report", "--service", "search", "--outcome", "failure"]
            )
            .0,
            0
        );
    }
    let (code, stdout, _) = ask(&daemon, &["--json", "breakers"]);
    assert_eq!(code, 0);
    let breakers: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(breakers[0]["service"], "search");
    assert_eq!(breakers[0]["state"], "open");

    let (code, stdout, _) = ask(&daemon, &["admit", "--service", "search"]);
    assert_eq!(code, 1);
    assert!(
        stdout.starts_with("denied by breaker \"search\""),
        "{stdout}"
    );

    let (code, stdout, _) = ask(&daemon, &["--json", "status"]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["status"], "degraded");
    assert_eq!(status["circuit_breakers"]["open"], 1);
}

#[test]
fn ping_and_connection_errors() {
    let daemon = Daemon::start("");
    let (code, stdout, _) = ask(&daemon, &["ping"]);
    assert_eq!(code, 0);
    assert!(
        stdout.starts_with("pong from automation-frameworkd"),
        "{stdout}"
    );

    let mut cmd = Command::new(crate::util::cli_bin());
    cmd.args(["--socket", "/nonexistent/af.sock", "ping"]);
    let (code, _, stderr) = run(cmd);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("cannot connect to /nonexistent/af.sock"),
        "{stderr}"
    );
    assert!(
        stderr.contains("is automation-frameworkd running"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("No such file").count(),
        1,
        "said once: {stderr}"
    );
    // A socket file nobody listens on (a daemon killed without cleaning up).
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let mut cmd = Command::new(crate::util::cli_bin());
    cmd.arg("--socket").arg(&stale).arg("ping");
    let (code, _, stderr) = run(cmd);
    assert_eq!(code, 2);
    assert!(stderr.contains("nothing listens on it"), "{stderr}");

    let mut cmd = Command::new(crate::util::cli_bin());
    cmd.args(["admit"]);
    assert_eq!(run(cmd).0, 2, "usage errors exit 2");
}

#[test]
fn the_socket_is_found_from_the_environment() {
    let daemon = Daemon::start("");
    let mut cmd = Command::new(crate::util::cli_bin());
    cmd.env("AUTOMATION_FRAMEWORK_SOCKET", &daemon.socket)
        .arg("ping");
    assert_eq!(run(cmd).0, 0);
}

#[test]
fn config_check_validates_without_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let mut cmd = Command::new(crate::util::cli_bin());
        cmd.arg("config").arg("check").arg(&path);
        run(cmd)
    };
    let (code, stdout, _) = check(include_str!("../../../config/automation-framework.toml"));
    assert_eq!(code, 0);
    assert!(stdout.contains("valid (1 rate limit(s)"), "{stdout}");

    let (code, _, stderr) = check("[[rate_limits]]\nname = \"x\"\nrate = 5\nburts = 10\n");
    assert_eq!(code, 1);
    assert!(stderr.contains("unknown field `burts`"), "{stderr}");

    let (code, _, stderr) = check("[[rate_limits]]\nname = \"x\"\nrate = -5\n");
    assert_eq!(code, 1);
    assert!(stderr.contains("invalid value"), "{stderr}");

    let (code, _, stderr) = check("[[rate_limits]]\nname = \"x\"\nrate = 0\n");
    assert_eq!(code, 1);
    assert!(
        stderr.contains("rate_limits[0].rate: must be at least 1, got 0"),
        "{stderr}"
    );

    let mut cmd = Command::new(crate::util::cli_bin());
    cmd.args(["config", "check", "/nonexistent.toml"]);
    let (code, _, stderr) = run(cmd);
    assert_eq!(code, 2);
    assert!(stderr.contains("cannot read /nonexistent.toml"), "{stderr}");
}

#[test]
fn the_daemon_refuses_an_invalid_config_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[breaker]\nopen_for = \"forever\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_automation-frameworkd"))
        .arg("--config")
        .arg(&path)
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("breaker.open_for:"), "{stderr}");
}

#[test]
fn a_session_holds_a_reservation_across_lines() {
    let daemon =
        Daemon::start("[[rate_limits]]\nname = \"one\"\nrate = 1\nper = \"1h\"\nburst = 1\n");
    let mut child = daemon
        .cli()
        .args(["--agent", "scripted", "session"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = [
        r#"{"op":"ping","id":"p1"}"#,
        r#"{"op":"admit","service":"openai","id":2}"#,
        r#"{"op":"admit","service":"openai"}"#,
        r#"{"op":"status"}"#,
        "this is not json",
        r#"{"op":"admit","servise":"openai"}"#,
        r#"{"op":"teleport"}"#,
        r#"{"op":"report","reservation":RES,"outcome":"failure","latency_ms":12}"#,
        r#"{"op":"report","reservation":RES,"outcome":"failure"}"#,
        r#"{"op":"breakers","service":"openai"}"#,
    ];
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut replies = Vec::new();
    let mut reservation = String::new();
    for line in lines {
        let line = line.replace("RES", &reservation);
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        let mut reply = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut reply).unwrap();
        let value: serde_json::Value =
            serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply}"));
        if value["op"] == "admit" && value["allowed"] == true {
            reservation = value["reservation"].to_string();
        }
        replies.push(value);
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());

    assert_eq!(replies[0]["id"], "p1");
    assert_eq!(replies[0]["ok"], true);
    assert_eq!(replies[0]["agent"], "scripted");
    assert_eq!(replies[1]["id"], 2);
    assert_eq!(replies[1]["allowed"], true);
    assert_eq!(replies[2]["allowed"], false);
    assert_eq!(replies[2]["guard"], "rate");
    assert_eq!(
        replies[3]["open_reservations"], 1,
        "held while the session lives"
    );
    assert_eq!(replies[4]["error"]["kind"], "malformed");
    assert_eq!(replies[5]["error"]["kind"], "invalid_argument");
    assert!(replies[5]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unknown field `servise`"));
    assert_eq!(replies[6]["error"]["kind"], "unknown_request");
    assert_eq!(replies[7]["ok"], true);
    assert_eq!(replies[7]["duplicate"], false);
    assert_eq!(replies[8]["duplicate"], true);
    assert_eq!(replies[9]["breakers"][0]["failures"], 1);
}

/// The daemon's own uid is always an admin, so the test's user may force breakers
/// of a daemon it started (other uids: tests/access.rs, as root).
#[test]
fn breakers_force_open_then_auto() {
    let daemon = Daemon::start("");
    let (code, stdout, stderr) = ask(
        &daemon,
        &["breakers", "--service", "search", "--force", "open"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("breaker of \"search\" is now forced_open"),
        "{stdout}"
    );

    let (code, stdout, _) = ask(&daemon, &["admit", "--service", "search"]);
    assert_eq!(code, 1);
    assert!(stdout.contains("forced open by the operator"), "{stdout}");
    assert!(
        daemon
            .log()
            .contains("breaker of \"search\" forced Open by uid"),
        "the override is logged with who did it"
    );

    let (code, stdout, _) = ask(
        &daemon,
        &[
            "--json",
            "breakers",
            "--service",
            "search",
            "--force",
            "auto",
        ],
    );
    assert_eq!(code, 0);
    let info: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(info["state"], "closed");

    assert_eq!(
        ask(&daemon, &["breakers", "--force", "open"]).0,
        2,
        "--force needs --service"
    );
}

#[test]
fn a_session_forces_a_breaker() {
    let daemon = Daemon::start("");
    let lines = daemon.session(
        &[],
        &[
            r#"{"op":"force_breaker","service":"search","force":"disabled","id":1}"#,
            r#"{"op":"force_breaker","service":"search","force":"sideways"}"#,
        ],
    );
    assert_eq!(lines[0]["id"], 1);
    assert_eq!(lines[0]["op"], "force_breaker");
    assert_eq!(lines[0]["state"], "disabled");
    assert_eq!(lines[1]["error"]["kind"], "invalid_argument");
}

/// `bench` against the daemon: every mix runs, replies are counted and nothing is
/// left behind (reservations are reported or released). Counts, never speeds.
#[test]
fn bench_drives_the_daemon_and_leaves_no_reservation_open() {
    let daemon = Daemon::start(
        // A budget and a price, so a reservation the bench forgot would hold
        // money and stay open as an orphan ($0 ones are released).
        "[daemon]\nmax_connections_per_uid = 64\n[[rate_limits]]\nname = \"open\"\nrate = 100000000\nburst = 100000000\n[budget]\nlimit = 1000000.0\n[prices.bench]\nper_request = 0.000001\n",
    );
    for (mix, pipeline) in [
        ("pairs", "1"),
        ("pairs", "8"),
        ("admit", "8"),
        ("ping", "4"),
        ("check", "4"),
    ] {
        let (code, stdout, stderr) = ask(
            &daemon,
            &[
                "--json",
                "bench",
                "--mix",
                mix,
                "--connections",
                "3",
                "--pipeline",
                pipeline,
                "--keys",
                "5",
                "--warmup",
                "50ms",
                "--duration",
                "300ms",
            ],
        );
        assert_eq!(code, 0, "{mix}: {stdout}{stderr}");
        let summary: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON document");
        assert_eq!(summary["target"], "daemon");
        assert_eq!(summary["mix"], mix);
        assert!(summary["ops"].as_u64().unwrap() > 0, "{mix}: {summary}");
        assert_eq!(summary["errors"], 0, "{mix}: {summary}");
        assert_eq!(summary["denied"], 0, "{mix}: {summary}");
        for key in [
            "p50_us",
            "p90_us",
            "p99_us",
            "p999_us",
            "max_us",
            "ops_per_sec",
        ] {
            assert!(
                summary[key].as_f64().unwrap() > 0.0,
                "{mix}: {key} in {summary}"
            );
        }
    }
    let (code, stdout, _) = ask(&daemon, &["--json", "status"]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["open_reservations"], 0, "{status}");
    tokio::runtime::Runtime::new()
        .expect("a runtime for the ledger check")
        .block_on(daemon.assert_memory_matches_ledger());
}

/// `bench --floor` needs no daemon; `--floor --mix check` (the scanner has no
/// floor) is refused with a reason.
#[test]
fn bench_measures_the_floor_and_refuses_what_it_cannot_measure() {
    let mut cmd = Command::new(crate::util::cli_bin());
    cmd.args([
        "--json",
        "bench",
        "--floor",
        "--connections",
        "2",
        "--pipeline",
        "4",
        "--warmup",
        "20ms",
        "--duration",
        "200ms",
    ]);
    let (code, stdout, stderr) = run(cmd);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["target"], "floor");
    assert!(summary["ops"].as_u64().unwrap() > 0, "{summary}");

    let mut cmd = Command::new(crate::util::cli_bin());
    cmd.args(["bench", "--floor", "--mix", "check", "--duration", "100ms"]);
    let (code, _, stderr) = run(cmd);
    assert_eq!(code, 2);
    assert!(stderr.contains("has no floor"), "{stderr}");
}

/// A script holds a lease in a `session`; the one-shot `lease` is a probe:
/// refused naming the holder (exit 1) while the session lives, granted (and
/// released again at exit) once it ended.
#[test]
fn a_session_holds_a_lease_and_the_one_shot_command_names_its_holder() {
    let daemon = Daemon::start("");
    let mut child = daemon
        .cli()
        .args(["--agent", "deployer", "session"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    writeln!(
        stdin,
        r#"{{"op":"lease","name":"prod-db","ttl_ms":600000}}"#
    )
    .unwrap();
    stdin.flush().unwrap();
    let mut reply = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut reply).unwrap();
    let value: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(value["granted"], true, "{reply}");
    assert_eq!(value["expires_in_ms"], 600_000);

    let (code, stdout_text, _) = ask(&daemon, &["--agent", "other", "lease", "prod-db"]);
    assert_eq!(code, 1, "{stdout_text}");
    assert!(
        stdout_text.contains(&format!("held by agent \"deployer\" (pid {}", child.id())),
        "{stdout_text}"
    );
    let (_, status, _) = ask(&daemon, &["--agent", "other", "status"]);
    assert!(status.contains("leases:       1 held"), "{status}");

    drop(stdin);
    assert!(child.wait().unwrap().success());
    let (code, stdout_text, _) = ask(
        &daemon,
        &[
            "--json", "--agent", "other", "lease", "prod-db", "--ttl-ms", "5000",
        ],
    );
    assert_eq!(code, 0, "{stdout_text}");
    let reply: serde_json::Value = serde_json::from_str(&stdout_text).unwrap();
    assert_eq!(reply["granted"], true);
}

/// `admit`'s options that only change what the daemon decides: each is sent,
/// or the decision below would differ. A holder (another connection) keeps a
/// lease and the bulkhead's one permit while the one-shot commands ask.
#[tokio::test]
async fn admit_sends_its_lease_wait_and_attempt() {
    let daemon = Daemon::start(
        "[[bulkheads]]\nname = \"one\"\nservices = [\"narrow\"]\nmax_in_flight = 1\n",
    );
    let mut holder = daemon.client("holder").await;
    let lease = holder
        .lease(automation_framework_protocol::LeaseRequest {
            name: "deploy".into(),
            ttl_ms: Some(600_000),
            release: false,
            agent: None,
        })
        .await
        .unwrap();
    assert!(lease.granted);
    let held = holder
        .admit(automation_framework_protocol::AdmitRequest {
            service: "narrow".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(held.allowed);

    let (code, stdout, _) = ask(
        &daemon,
        &["admit", "--service", "wide", "--lease", "deploy"],
    );
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.starts_with("denied by lease \"deploy\""), "{stdout}");

    let (_, status, _) = ask(&daemon, &["status"]);
    assert!(
        status.contains("in flight:    one narrow: 1 of 1, 0 waiting"),
        "{status}"
    );

    let (code, stdout, _) = ask(
        &daemon,
        &["admit", "--service", "narrow", "--wait-ms", "20"],
    );
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.starts_with("denied by concurrency \"one\""),
        "{stdout}"
    );
    assert!(stdout.contains("ms for a permit (wait_ms"), "{stdout}");

    // A retry (attempt 2) asks the service's retry budget, which votes.
    let (code, first, _) = ask(&daemon, &["admit", "--service", "wide"]);
    assert_eq!(code, 0, "{first}");
    assert!(!first.contains("\n  retry "), "{first}");
    let (code, retry, _) = ask(&daemon, &["admit", "--service", "wide", "--attempt", "2"]);
    assert_eq!(code, 0, "{retry}");
    assert!(retry.contains("\n  retry "), "{retry}");
}

/// `breakers --force` sends the state asked for, each of the four.
#[test]
fn breakers_force_each_state() {
    let daemon = Daemon::start("");
    for (force, state) in [
        ("closed", "forced_closed"),
        ("disabled", "disabled"),
        ("open", "forced_open"),
        ("auto", "closed"),
    ] {
        let (code, stdout, stderr) = ask(
            &daemon,
            &[
                "--json",
                "breakers",
                "--service",
                "search",
                "--force",
                force,
            ],
        );
        assert_eq!(code, 0, "{stderr}");
        let info: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(info["state"], state, "--force {force}: {stdout}");
    }
}

/// `quota` lists the counters, and with `--reset-key` starts one key's window
/// over (an admin operation: the daemon's own uid is one).
#[tokio::test]
async fn quota_lists_and_resets_a_key() {
    let daemon = Daemon::start(
        "[[quotas]]\nname = \"searches\"\nservices = [\"search\"]\nscope = \"agent\"\nlimit = 1\nwindow = \"day\"\n",
    );
    let mut client = daemon.client("a").await;
    let admit = || automation_framework_protocol::AdmitRequest {
        service: "search".into(),
        ..Default::default()
    };
    let first = client.admit(admit()).await.unwrap();
    assert!(first.allowed);
    client
        .report(automation_framework_protocol::ReportRequest {
            reservation: first.reservation,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!client.admit(admit()).await.unwrap().allowed);

    let (code, stdout, _) = ask(&daemon, &["--json", "quota", "--quota", "searches"]);
    assert_eq!(code, 0, "{stdout}");
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed[0]["key"], "a", "{stdout}");
    assert_eq!(listed[0]["used"], 1, "{stdout}");

    let (code, table, _) = ask(&daemon, &["quota"]);
    assert_eq!(code, 0, "{table}");
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row, ["searches", "a", "1", "1", "day"], "{table}");

    let (code, stdout, stderr) = ask(
        &daemon,
        &["quota", "--quota", "searches", "--reset-key", "a"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("ok: "), "{stdout}");
    assert!(
        client.admit(admit()).await.unwrap().allowed,
        "reset: room again"
    );
}

/// `admit --units` and `--model` choose the price, and `report --cost --key`
/// charges without a reservation: what the daemon reserved and charged shows
/// that each was sent.
#[test]
fn admit_and_report_send_units_model_cost_and_key() {
    let daemon = Daemon::start(
        "[budget]\nlimit = 100.0\n[prices.llm]\nper_unit = 0.1\n[prices.\"llm/big\"]\nper_request = 2.0\n",
    );
    let (code, stdout, _) = ask(&daemon, &["admit", "--service", "llm", "--units", "5"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains(", $0.500000 reserved)"), "{stdout}");

    let (code, stdout, _) = ask(&daemon, &["admit", "--service", "llm", "--model", "big"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains(", $2.000000 reserved)"), "{stdout}");

    let charge = [
        "report",
        "--service",
        "llm",
        "--outcome",
        "success",
        "--cost",
        "1.5",
        "--key",
        "invoice-7",
    ];
    let (code, stdout, stderr) = ask(&daemon, &charge);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "ok (charged $1.500000; breaker closed)\n");
    let (code, stdout, _) = ask(&daemon, &charge);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("ok (already reported"), "{stdout}");

    // An admin starts the period over: the charge's $1.50 is spent no more.
    let spent = || {
        let (_, stdout, _) = ask(&daemon, &["--json", "budget"]);
        let reply: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        reply["budgets"][0]["spent"].as_f64().unwrap()
    };
    assert_eq!(spent(), 1.5);
    let (code, stdout, stderr) = ask(&daemon, &["budget", "--budget", "global", "--reset"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("ok: "), "{stdout}");
    assert_eq!(spent(), 0.0);
}

/// A one-shot `lease --release` asks to release (this connection holds none),
/// it does not take the lease.
#[test]
fn a_one_shot_lease_release_takes_nothing() {
    let daemon = Daemon::start("");
    let (code, stdout, _) = ask(&daemon, &["lease", "deploy", "--release"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.starts_with("lease \"deploy\" is not held by this connection: nothing released"),
        "{stdout}"
    );
}

/// The human forms of `breakers`, `status`, `route` and `budget` while a
/// breaker is open: its time left in seconds, the status's reasons, when to
/// come back, a budget's next reset.
#[test]
fn human_listings_while_a_breaker_is_open() {
    let daemon =
        Daemon::start("[breaker]\nopen_for = \"10s\"\n[budget]\nlimit = 10.0\nreset = \"daily\"\n");
    for _ in 0..5 {
        assert_eq!(
            ask(
                &daemon,
                &["report", "--service", "search", "--outcome", "failure"]
            )
            .0,
            0
        );
    }
    let (code, table, _) = ask(&daemon, &["breakers"]);
    assert_eq!(code, 0, "{table}");
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..2], ["search", "open"], "{table}");
    let left: f64 = row[4].strip_suffix('s').unwrap().parse().unwrap();
    assert!(left > 0.0 && left <= 10.0, "open for 10 s at most: {table}");

    let (_, status, _) = ask(&daemon, &["status"]);
    assert!(
        status.starts_with("status:       degraded\n  - "),
        "the reasons follow: {status}"
    );

    let (code, stdout, _) = ask(&daemon, &["route", "--chain", "search"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.starts_with("no service fits now (retry after "),
        "{stdout}"
    );

    let (code, table, _) = ask(&daemon, &["budget"]);
    assert_eq!(code, 0, "{table}");
    assert!(table.contains("  daily (in "), "{table}");
}

/// In shadow mode every vote is marked as a shadow's, and one that would deny
/// says so.
#[test]
fn a_shadow_denial_is_marked() {
    let daemon = Daemon::start(
        "[daemon]\nmode = \"shadow\"\n[[rate_limits]]\nname = \"one\"\nrate = 1\nper = \"1h\"\nburst = 1\n",
    );
    let (code, stdout, _) = ask(&daemon, &["admit", "--service", "llm"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains(" allow (shadow)  1 of burst 1 taken"),
        "every vote is a shadow's: {stdout}"
    );
    let (code, stdout, _) = ask(&daemon, &["admit", "--service", "llm"]);
    assert_eq!(code, 0, "shadow mode never denies: {stdout}");
    assert!(stdout.contains(" deny  (shadow)  "), "{stdout}");
}

/// A session skips blank lines (spaces too), a line that is JSON but not a
/// request still gets its `"id"` back on the error, a field on a request that
/// takes none is refused, and the read-only requests are there (`quotas`).
#[test]
fn a_session_skips_blank_lines_and_echoes_the_id_of_a_bad_one() {
    let daemon = Daemon::start("");
    let lines = daemon.session(
        &[],
        &[
            "",
            "   \t",
            r#"{"id":5,"op":7}"#,
            r#"{"op":"ping","id":"after"}"#,
            r#"{"op":"ping","extra":1}"#,
            r#"{"op":"reload","config":"/etc/passwd"}"#,
            r#"{"op":"quotas","id":"q"}"#,
        ],
    );
    assert_eq!(lines.len(), 5, "one reply per request line: {lines:?}");
    assert_eq!(lines[0]["id"], 5, "{lines:?}");
    assert_eq!(lines[0]["error"]["kind"], "malformed");
    assert_eq!(lines[1]["id"], "after");
    assert_eq!(lines[1]["ok"], true);
    // Requests without fields refuse one rather than ignore it.
    assert_eq!(lines[2]["error"]["kind"], "invalid_argument", "{lines:?}");
    assert_eq!(
        lines[2]["error"]["message"],
        "ping: unknown field `extra`; ping takes no fields"
    );
    assert_eq!(lines[3]["error"]["kind"], "invalid_argument", "{lines:?}");
    assert_eq!(lines[4]["id"], "q");
    assert_eq!(lines[4]["op"], "quotas");
    assert_eq!(lines[4]["quotas"], serde_json::json!([]), "{lines:?}");
}

/// `check` reads at most 64 times the daemon's payload limit and refuses a
/// larger file rather than scanning its beginning. (A sparse file: nothing is
/// written to disk.)
#[test]
fn check_refuses_a_file_over_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.txt");
    let limit = 64 * automation_framework_protocol::MAX_PAYLOAD_LEN as u64;
    std::fs::File::create(&path)
        .unwrap()
        .set_len(limit + 1)
        .unwrap();
    let mut cmd = Command::new(crate::util::cli_bin());
    cmd.arg("check").arg(&path);
    let (code, _, stderr) = run(cmd);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!("huge.txt is larger than {limit} bytes")),
        "{stderr}"
    );
}

/// `check --lang` names the language a file's name does not tell.
#[test]
fn check_scans_in_the_language_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.txt");
    std::fs::write(&path, "import os\nos.system(cmd)\n").unwrap();
    let mut cmd = Command::new(crate::util::cli_bin());
    cmd.arg("check").arg(&path);
    let (code, stdout, _) = run(cmd);
    assert_eq!(code, 0, "as text, a call is only words: {stdout}");
    let mut cmd = Command::new(crate::util::cli_bin());
    cmd.args(["check", "--lang", "python"]).arg(&path);
    let (code, stdout, _) = run(cmd);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("py-os-system"), "{stdout}");
}
