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

#[test]
fn admit_prints_the_decision_and_exits_1_when_denied() {
    let daemon =
        Daemon::start("[[rate_limits]]\nname = \"pair\"\nrate = 1\nper = \"1h\"\nburst = 2\n");
    for _ in 0..2 {
        let mut cmd = daemon.cli();
        cmd.args(["--agent", "a", "admit", "--service", "openai"]);
        let (code, stdout, _) = run(cmd);
        assert_eq!(code, 0, "{stdout}");
        assert!(stdout.starts_with("allowed"), "{stdout}");
    }
    let mut cmd = daemon.cli();
    cmd.args(["--agent", "a", "admit", "--service", "openai"]);
    let (code, stdout, _) = run(cmd);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.starts_with("denied by rate \"pair\": rate limit of 1 per 3600s (burst 2) exceeded"),
        "{stdout}"
    );
    assert!(stdout.contains("retry after"), "{stdout}");

    let mut cmd = daemon.cli();
    cmd.args(["--json", "--agent", "a", "admit", "--service", "openai"]);
    let (code, stdout, _) = run(cmd);
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
        let mut cmd = daemon.cli();
        cmd.args(["report", "--service", "search", "--outcome", "failure"]);
        assert_eq!(run(cmd).0, 0);
    }
    let mut cmd = daemon.cli();
    cmd.args(["--json", "breakers"]);
    let (code, stdout, _) = run(cmd);
    assert_eq!(code, 0);
    let breakers: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(breakers[0]["service"], "search");
    assert_eq!(breakers[0]["state"], "open");

    let mut cmd = daemon.cli();
    cmd.args(["admit", "--service", "search"]);
    let (code, stdout, _) = run(cmd);
    assert_eq!(code, 1);
    assert!(
        stdout.starts_with("denied by breaker \"search\""),
        "{stdout}"
    );

    let mut cmd = daemon.cli();
    cmd.args(["--json", "status"]);
    let (code, stdout, _) = run(cmd);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["status"], "degraded");
    assert_eq!(status["circuit_breakers"]["open"], 1);
}

#[test]
fn ping_and_connection_errors() {
    let daemon = Daemon::start("");
    let mut cmd = daemon.cli();
    cmd.arg("ping");
    let (code, stdout, _) = run(cmd);
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
    let mut cmd = daemon.cli();
    cmd.args(["breakers", "--service", "search", "--force", "open"]);
    let (code, stdout, stderr) = run(cmd);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("breaker of \"search\" is now forced_open"),
        "{stdout}"
    );

    let mut cmd = daemon.cli();
    cmd.args(["admit", "--service", "search"]);
    let (code, stdout, _) = run(cmd);
    assert_eq!(code, 1);
    assert!(stdout.contains("forced open by the operator"), "{stdout}");
    assert!(
        daemon
            .log()
            .contains("breaker of \"search\" forced Open by uid"),
        "the override is logged with who did it"
    );

    let mut cmd = daemon.cli();
    cmd.args([
        "--json",
        "breakers",
        "--service",
        "search",
        "--force",
        "auto",
    ]);
    let (code, stdout, _) = run(cmd);
    assert_eq!(code, 0);
    let info: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(info["state"], "closed");

    let mut cmd = daemon.cli();
    cmd.args(["breakers", "--force", "open"]);
    assert_eq!(run(cmd).0, 2, "--force needs --service");
}

#[test]
fn a_session_forces_a_breaker() {
    let daemon = Daemon::start("");
    let mut child = daemon
        .cli()
        .arg("session")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(
        stdin,
        r#"{{"op":"force_breaker","service":"search","force":"disabled","id":1}}"#
    )
    .unwrap();
    writeln!(
        stdin,
        r#"{{"op":"force_breaker","service":"search","force":"sideways"}}"#
    )
    .unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
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
        let mut cmd = daemon.cli();
        cmd.args([
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
        ]);
        let (code, stdout, stderr) = run(cmd);
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
    let mut cmd = daemon.cli();
    cmd.args(["--json", "status"]);
    let (code, stdout, _) = run(cmd);
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

    let mut cmd = daemon.cli();
    cmd.args(["--agent", "other", "lease", "prod-db"]);
    let (code, stdout_text, _) = run(cmd);
    assert_eq!(code, 1, "{stdout_text}");
    assert!(
        stdout_text.contains(&format!("held by agent \"deployer\" (pid {}", child.id())),
        "{stdout_text}"
    );
    let mut cmd = daemon.cli();
    cmd.args(["--agent", "other", "status"]);
    let (_, status, _) = run(cmd);
    assert!(status.contains("leases:       1 held"), "{status}");

    drop(stdin);
    assert!(child.wait().unwrap().success());
    let mut cmd = daemon.cli();
    cmd.args([
        "--json", "--agent", "other", "lease", "prod-db", "--ttl-ms", "5000",
    ]);
    let (code, stdout_text, _) = run(cmd);
    assert_eq!(code, 0, "{stdout_text}");
    let reply: serde_json::Value = serde_json::from_str(&stdout_text).unwrap();
    assert_eq!(reply["granted"], true);
}
