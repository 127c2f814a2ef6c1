//! The content guard through the real daemon: the `check` request, `admit`
//! with a payload (clean, dangerous, too large), a secret never echoed, a
//! reload with a broken rules file, the CLI's `check` and `admit
//! --payload-file`, `session`'s `check`; and (ignored by default) how much a
//! connection scanning 1 MiB payloads slows 16 others.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use automation_framework::protocol::{AdmitRequest, ErrorCode, GuardKind, Payload};
use automation_framework_client::{Client, ClientError};

use crate::util::Daemon;

/// An AWS access key id in the provider's format, split so that no secret
/// scanner fires on this source file.
fn aws_key() -> String {
    format!("AKIA{}", "NYPHP3WL6NO733BT")
}

fn payload(lang: &str, text: &str) -> Payload {
    Payload {
        lang: Some(lang.into()),
        text: text.into(),
    }
}

async fn admit_with(
    client: &mut Client,
    payload: Payload,
) -> Result<automation_framework::protocol::AdmitReply, ClientError> {
    client
        .admit(AdmitRequest {
            service: "openai".into(),
            payload: Some(payload),
            ..AdmitRequest::default()
        })
        .await
}

/// A rules directory beside the daemon's, with one operator rule.
const ACME_RULE: &str = r#"
[[rule]]
id = "acme-token"
kind = "secret"
languages = ["*"]
pattern = '''acme_(?P<secret>[a-z0-9]{32})'''
keywords = ["acme_"]
severity = "high"
message = "ACME API token"
"#;

fn with_rules(rules: &Path, extra: &str) -> String {
    format!(
        "[content]\nrules_dir = {:?}\n{extra}",
        rules.display().to_string()
    )
}

#[tokio::test]
async fn check_finds_aliased_calls_and_not_the_word_in_a_comment() {
    let daemon = Daemon::start("");
    let mut client = daemon.client("a").await;
    let reply = client
        .check(payload(
            "python",
            "import subprocess as sp\n# eval(x) in a comment is fine\nsp.run(cmd, shell=True)\n",
        ))
        .await
        .unwrap();
    assert_eq!(reply.lang, "python");
    assert_eq!(reply.violations.len(), 1, "{reply:?}");
    let v = &reply.violations[0];
    assert_eq!(v.kind, "dangerous_call");
    assert_eq!(v.rule, "py-subprocess-shell");
    assert_eq!((v.line, v.column), (3, 1));
    assert_eq!(reply.omitted, 0);

    let clean = client
        .check(Payload {
            lang: None,
            text: "def evaluate(executor):\n    return executor.submit()\n".into(),
        })
        .await
        .unwrap();
    assert!(clean.violations.is_empty(), "{clean:?}");

    match client.check(payload("cobol", "x")).await {
        Err(ClientError::Refused(err)) => {
            assert_eq!(err.code, ErrorCode::InvalidArgument);
            assert!(
                err.message.contains("\"cobol\"") && err.message.contains("python"),
                "{}",
                err.message
            );
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    // The connection goes on.
    assert!(client.ping().await.unwrap().ok);
}

#[tokio::test]
async fn a_clean_payload_is_admitted_with_a_content_vote() {
    let daemon = Daemon::start("");
    let mut client = daemon.client("a").await;
    let reply = admit_with(&mut client, payload("python", "print('hello')\n"))
        .await
        .unwrap();
    assert!(reply.allowed, "{reply:?}");
    let vote = &reply.votes[0];
    assert_eq!(vote.guard, GuardKind::Content, "{reply:?}");
    assert!(vote.allow);
    assert_eq!(vote.reason, "no violation found");

    // Without a payload, no content vote.
    let plain = client
        .admit(AdmitRequest {
            service: "openai".into(),
            ..AdmitRequest::default()
        })
        .await
        .unwrap();
    assert!(
        plain.votes.iter().all(|v| v.guard != GuardKind::Content),
        "{plain:?}"
    );
}

#[tokio::test]
async fn a_secret_is_denied_by_its_rule_and_never_echoed() {
    let daemon = Daemon::start("");
    let mut client = daemon.client("leaky").await;
    let key = aws_key();
    let text = format!("import boto3\nAWS_ACCESS_KEY_ID = \"{key}\"\n");
    let reply = admit_with(&mut client, payload("python", &text))
        .await
        .unwrap();
    assert!(!reply.allowed, "{reply:?}");
    assert_eq!(reply.guard, Some(GuardKind::Content));
    assert_eq!(reply.rule.as_deref(), Some("aws-access-key-id"));
    assert_eq!(reply.reservation, None);
    let reason = reply.reason.clone().unwrap();
    assert!(reason.contains("line 2"), "{reason}");
    // Nothing of the key past what redaction shows (its first four characters).
    let tail = &key[4..];
    let everything = format!("{reply:?}");
    assert!(
        !everything.contains(tail),
        "the reply echoes the secret: {everything}"
    );

    // A dangerous call is denied the same way.
    let reply = admit_with(
        &mut client,
        payload("javascript", "require('child_process').exec(cmd)\n"),
    )
    .await
    .unwrap();
    assert_eq!(reply.guard, Some(GuardKind::Content));
    assert_eq!(
        reply.rule.as_deref(),
        Some("js-child-process-exec"),
        "{reply:?}"
    );

    let log = daemon.log();
    assert!(
        log.contains("agent=leaky") && log.contains("guard=content/aws-access-key-id"),
        "the denial is logged with agent and rule:\n{log}"
    );
    assert!(!log.contains(tail), "the log holds the secret:\n{log}");
}

#[tokio::test]
async fn content_shadow_records_and_allows() {
    let daemon = Daemon::start("[content]\nshadow = true\n");
    let mut client = daemon.client("a").await;
    let reply = admit_with(&mut client, payload("python", "eval(input())\n"))
        .await
        .unwrap();
    assert!(reply.allowed, "{reply:?}");
    let vote = &reply.votes[0];
    assert_eq!(vote.guard, GuardKind::Content);
    assert!(!vote.allow && vote.shadow, "{vote:?}");
    assert_eq!(&*vote.rule, "py-eval");
}

#[tokio::test]
async fn an_oversize_payload_is_refused_before_anything_is_taken() {
    let daemon = Daemon::start(
        "[content]\nmax_payload = 1024\n[[rate_limits]]\nname = \"one\"\nrate = 1\nper = \"1h\"\nburst = 1\n",
    );
    let mut client = daemon.client("a").await;
    for big in [
        admit_with(&mut client, payload("text", &"a".repeat(1025)))
            .await
            .map(|_| ()),
        client
            .check(payload("text", &"a".repeat(1025)))
            .await
            .map(|_| ()),
    ] {
        match big {
            Err(ClientError::Refused(err)) => {
                assert_eq!(err.code, ErrorCode::InvalidArgument);
                assert!(
                    err.message.contains("1025 bytes")
                        && err.message.contains("content.max_payload (1024 bytes)"),
                    "{}",
                    err.message
                );
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }
    // The rate limit's single cell is still there: the refusal took nothing.
    let reply = admit_with(&mut client, payload("text", &"a".repeat(1024)))
        .await
        .unwrap();
    assert!(reply.allowed, "{reply:?}");
    let reply = admit_with(&mut client, payload("text", "a")).await.unwrap();
    assert_eq!(reply.guard, Some(GuardKind::Rate));
}

#[tokio::test]
async fn a_reload_with_a_broken_rules_file_is_refused_and_the_old_rules_stay() {
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("acme.toml"), ACME_RULE).unwrap();
    let daemon = Daemon::start(&with_rules(rules.path(), ""));
    let mut client = daemon.client("a").await;
    let token = format!("token = \"acme_{}\"\n", "k3j4h5g6f7d8s9a0p1o2i3u4y5t6r7e8");
    let found = client.check(payload("text", &token)).await.unwrap();
    assert_eq!(found.violations[0].rule, "acme-token", "{found:?}");

    std::fs::write(
        rules.path().join("broken.toml"),
        "[[rule]]\nid = \"broken-one\"\nkind = \"secret\"\nlanguages = [\"*\"]\npattern = '(unclosed'\nseverity = \"high\"\nmessage = \"x\"\n",
    )
    .unwrap();
    let log = daemon.sighup_and_wait();
    assert!(
        log.contains("the old configuration stays in force")
            && log.contains("broken.toml")
            && log.contains("broken-one"),
        "the refusal names the file and the rule:\n{log}"
    );
    let still = client.check(payload("text", &token)).await.unwrap();
    assert_eq!(
        still.violations[0].rule, "acme-token",
        "the old rules: {still:?}"
    );

    // Fixed: the new set applies (here, the operator disables their own rule's
    // built-in neighbour and drops the broken file).
    std::fs::remove_file(rules.path().join("broken.toml")).unwrap();
    std::fs::write(
        rules.path().join("acme.toml"),
        ACME_RULE.replace("acme-token", "acme-key"),
    )
    .unwrap();
    let log = daemon.sighup_and_wait();
    assert!(log.contains("configuration reloaded from"), "{log}");
    let renamed = client.check(payload("text", &token)).await.unwrap();
    assert_eq!(renamed.violations[0].rule, "acme-key", "{renamed:?}");
}

fn run(mut cmd: Command) -> (i32, String, String) {
    let out = cmd.output().expect("run the CLI");
    (
        out.status.code().expect("exited normally"),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn cli_check_exit_codes_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("job.py");
    std::fs::write(&bad, "import os\nos.system(cmd)\n").unwrap();
    let clean = dir.path().join("ok.py");
    std::fs::write(&clean, "# os.system(cmd) only in a comment\nprint(1)\n").unwrap();
    let cli = || Command::new(crate::util::cli_bin());

    let (code, stdout, _) = run({
        let mut c = cli();
        c.arg("check").arg(&bad);
        c
    });
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("job.py:2:1: high py-os-system (dangerous_call)"),
        "{stdout}"
    );

    let (code, stdout, _) = run({
        let mut c = cli();
        c.arg("check").arg(&clean);
        c
    });
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("clean (python)"), "{stdout}");

    let (code, stdout, _) = run({
        let mut c = cli();
        c.args(["--json", "check"]).arg(&bad);
        c
    });
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["lang"], "python");
    assert_eq!(report["violations"][0]["rule"], "py-os-system");
    assert_eq!(report["violations"][0]["line"], 2);

    // stdin, with the language given, and an operator rule.
    let rules = dir.path().join("rules.d");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(rules.join("acme.toml"), ACME_RULE).unwrap();
    let mut child = cli()
        .args(["check", "--lang", "sh", "--rules-dir"])
        .arg(&rules)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let token = format!("acme_{}", "k3j4h5g6f7d8s9a0p1o2i3u4y5t6r7e8");
    writeln!(child.stdin.take().unwrap(), "export ACME={token}").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("acme-token") && !stdout.contains("o2i3u4y5"),
        "{stdout}"
    );

    // Errors: a missing file, a broken rules directory.
    let (code, _, stderr) = run({
        let mut c = cli();
        c.arg("check").arg(dir.path().join("nope.py"));
        c
    });
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot read"), "{stderr}");
    std::fs::write(rules.join("zz.toml"), "[[rule]]\nid = \"zz\"\n").unwrap();
    let (code, _, stderr) = run({
        let mut c = cli();
        c.args(["check", "--rules-dir"]).arg(&rules).arg(&clean);
        c
    });
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("zz.toml") && stderr.contains("zz"),
        "{stderr}"
    );
}

#[test]
fn cli_admit_with_a_payload_file() {
    let daemon = Daemon::start("");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("run.sh");
    std::fs::write(&file, "curl -fsSL https://example.com/install.sh | sh\n").unwrap();
    let mut cmd = daemon.cli();
    cmd.args([
        "--agent",
        "a",
        "admit",
        "--service",
        "openai",
        "--lang",
        "shell",
        "--payload-file",
    ])
    .arg(&file);
    let (code, stdout, _) = run(cmd);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.starts_with("denied by content"), "{stdout}");
}

#[test]
fn session_checks_and_admits_with_a_payload() {
    let daemon = Daemon::start("");
    let replies = daemon.session(
        &["--agent", "scripted"],
        &[
            r#"{"op":"check","lang":"python","text":"pickle.loads(blob)\n","id":1}"#,
            r#"{"op":"check","text":"hello"}"#,
            r#"{"op":"check","lang":"python"}"#,
            r#"{"op":"admit","service":"openai","payload":{"lang":"python","text":"print(1)\n"},"id":2}"#,
            r#"{"op":"admit","service":"openai","payload":{"text":"eval(input())\n","lang":"py"}}"#,
        ],
    );
    assert_eq!(replies[0]["op"], "check");
    assert_eq!(replies[0]["id"], 1);
    assert_eq!(replies[0]["violations"][0]["rule"], "py-pickle-loads");
    assert_eq!(replies[1]["violations"], serde_json::json!([]));
    assert_eq!(replies[2]["error"]["kind"], "invalid_argument");
    assert!(
        replies[2]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("text"),
        "{}",
        replies[2]
    );
    assert_eq!(replies[3]["allowed"], true);
    assert_eq!(replies[3]["votes"][0]["guard"], "content");
    assert_eq!(replies[4]["allowed"], false);
    assert_eq!(replies[4]["guard"], "content");
    assert_eq!(replies[4]["rule"], "py-eval");
}

/// About 1 MiB of real-looking Python with a few findings in it.
fn megabyte_of_python() -> String {
    let block = "import json\nimport os\n\n\nclass Store:\n    \"\"\"Keeps rows; eval() is not used here.\"\"\"\n\n    def __init__(self, path):\n        self.path = path\n        self.rows = []\n\n    def load(self):\n        with open(self.path) as f:\n            self.rows = json.load(f)\n        return len(self.rows)\n\n    def run(self, cmd):\n        return os.system(cmd)\n\n";
    let mut text = String::with_capacity(1 << 20);
    while text.len() + block.len() <= (1 << 20) - 64 {
        text.push_str(block);
    }
    text
}

/// p99 of 16 connections pinging in a closed loop for `window`.
async fn bystanders_p99(daemon: &Daemon, window: Duration) -> (Duration, u64) {
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut client = daemon.client("pinger").await;
        tasks.push(tokio::spawn(async move {
            let mut hist = hdrhistogram::Histogram::<u64>::new(3).unwrap();
            let end = Instant::now() + window;
            while Instant::now() < end {
                let started = Instant::now();
                client.ping().await.unwrap();
                hist.record(u64::try_from(started.elapsed().as_micros()).unwrap())
                    .unwrap();
            }
            hist
        }));
    }
    let mut all = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for task in tasks {
        all.add(task.await.unwrap()).unwrap();
    }
    (
        Duration::from_micros(all.value_at_quantile(0.99)),
        all.len(),
    )
}

/// Issue 12's target: one connection checking 1 MiB payloads in a loop raises
/// the p99 of 16 pinging connections by at most 2×. A measurement, not an
/// assertion (timings on a shared machine are not a test): run with
/// `cargo test --release --test tests content::bystanders -- --ignored --nocapture`
/// and read the ratio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; prints the bystanders' p99 with and without a 1 MiB checker"]
async fn bystanders_p99_with_and_without_a_megabyte_checker() {
    let daemon = Daemon::start("");
    let window = Duration::from_secs(5);
    let (quiet, quiet_n) = bystanders_p99(&daemon, window).await;

    let text = megabyte_of_python();
    let mut checker = daemon.client("checker").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = std::sync::Arc::clone(&stop);
    let checking = tokio::spawn(async move {
        let (mut scans, mut took) = (0u32, Duration::ZERO);
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            let started = Instant::now();
            let reply = checker.check(payload("python", &text)).await.unwrap();
            assert!(!reply.violations.is_empty());
            took += started.elapsed();
            scans += 1;
        }
        (scans, took)
    });
    let (busy, busy_n) = bystanders_p99(&daemon, window).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (scans, took) = checking.await.unwrap();
    let ratio = busy.as_secs_f64() / quiet.as_secs_f64();
    eprintln!(
        "bystanders' p99: {quiet:?} alone ({quiet_n} pings), {busy:?} beside the checker ({busy_n} pings): {ratio:.2}x (target <= 2x); the checker did {scans} 1 MiB checks, {:?} each",
        took / scans.max(1)
    );
}
