//! Floods (issue 16): clients that try to make the daemon hold more than it
//! should — orphaned reservations, empty or huge configs, half-sent HTTP
//! requests. Each test is a reproduction against the real daemon; each asserts
//! the cap or refusal that now holds, not a speed.
//!
//! See: issue 16, "The budget must hold against clock steps, overflow, floods, a
//! vanished ledger and a frozen disk" (items 3, 6, 7 and 8).

use std::time::Duration;

use automation_framework::protocol::{AdmitRequest, ErrorCode, Request, Response};
use automation_framework_client::{Client, ClientError};

use crate::util::{eventually, Daemon, PROMPTLY};

/// `n` pipelined admissions of `cost` on `client`, each under its own agent name
/// (`prefix-i`), as the flood in issue 16 sent them; the responses in order.
async fn admit_many(client: &mut Client, prefix: &str, n: usize, cost: f64) -> Vec<Response> {
    let requests: Vec<Request> = (0..n)
        .map(|i| {
            Request::Admit(AdmitRequest {
                service: "llm".into(),
                agent: Some(format!("{prefix}-{i}")),
                cost: Some(cost),
                ..Default::default()
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for chunk in requests.chunks(500) {
        out.extend(client.batch(chunk.to_vec()).await.expect("batch answered"));
    }
    out
}

fn allowed(responses: &[Response]) -> usize {
    responses
        .iter()
        .filter(|r| matches!(r, Response::Admit(a) if a.allowed))
        .count()
}

/// The refusals among `responses`, as (code, message).
fn refusals(responses: &[Response]) -> Vec<(ErrorCode, String)> {
    responses
        .iter()
        .filter_map(|r| match r {
            Response::Error(err) => Some((err.code, err.message.clone())),
            _ => None,
        })
        .collect()
}

async fn open_reservations(client: &mut Client) -> u64 {
    client.status().await.expect("status").open_reservations
}

/// Issue 16, item 3: connections that each leave thousands of $0 admissions
/// behind made as many durable orphans. A $0 reservation holds nothing a budget
/// counts: its connection's end releases it, and nothing reaches the ledger.
#[tokio::test]
async fn zero_cost_admissions_left_behind_are_released_not_orphaned() {
    let daemon =
        Daemon::start("rate_limits = []\n[budget]\nlimit = 100.0\norphan_timeout = \"1h\"\n");
    for conn in 0..4 {
        let mut client = daemon.client("flood").await;
        let responses = admit_many(&mut client, &format!("flood{conn}"), 1000, 0.0).await;
        assert_eq!(allowed(&responses), 1000, "{:?}", refusals(&responses));
        drop(client);
    }
    let mut observer = daemon.client("observer").await;
    eventually(PROMPTLY, || {
        let socket = daemon.socket.clone();
        async move {
            let mut client = Client::connect(&socket, "poll", "integration-test")
                .await
                .ok()?;
            (open_reservations(&mut client).await == 0).then_some(())
        }
    })
    .await;
    let global = observer.budget(None).await.expect("budget").budgets;
    assert!(
        global.iter().all(|b| b.orphaned == 0),
        "no orphans: {global:?}"
    );
    let rows: i64 = rusqlite::Connection::open(daemon.state_dir().join("ledger.sqlite3"))
        .expect("open the ledger")
        .query_row("SELECT count(*) FROM reservations", [], |r| r.get(0))
        .expect("count reservations");
    assert_eq!(rows, 0, "no $0 reservation was written to the ledger");
    daemon.assert_memory_matches_ledger().await;
}

/// Issue 16, item 3: open reservations are capped per uid, orphans of closed
/// connections included, with an error that names the limit and what to do.
#[tokio::test]
async fn open_reservations_are_capped_per_uid_orphans_included() {
    let daemon = Daemon::start(
        "rate_limits = []\n[daemon]\nmax_reservations_per_uid = 600\n[budget]\nlimit = 1000.0\norphan_timeout = \"1h\"\n",
    );
    let mut first = daemon.client("a").await;
    let responses = admit_many(&mut first, "a", 400, 0.01).await;
    assert_eq!(allowed(&responses), 400);
    let mut second = daemon.client("b").await;
    let responses = admit_many(&mut second, "b", 400, 0.01).await;
    assert_eq!(allowed(&responses), 200, "the uid's cap is 600 in all");
    let refused = refusals(&responses);
    assert_eq!(refused.len(), 200);
    let (code, message) = &refused[0];
    assert_eq!(*code, ErrorCode::Unavailable);
    assert!(
        message.contains("open reservations, orphans of its closed connections included (daemon.max_reservations_per_uid)")
            && message.contains("report outcomes"),
        "{message}"
    );
    // The first connection goes away: its 400 reservations are orphans, still
    // the uid's, so a new connection is refused all the same.
    drop(first);
    drop(second);
    let mut third = daemon.client("c").await;
    let responses = eventually(PROMPTLY, || {
        let socket = daemon.socket.clone();
        async move {
            let mut probe = Client::connect(&socket, "probe", "integration-test")
                .await
                .ok()?;
            (probe.budget(None).await.ok()?.budgets[0].orphaned == 600).then_some(())
        }
    });
    responses.await;
    let err = third
        .admit(AdmitRequest {
            service: "llm".into(),
            cost: Some(0.01),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    match err {
        ClientError::Refused(err) => assert_eq!(err.code, ErrorCode::Unavailable),
        other => panic!("expected a refusal, got {other}"),
    }
    daemon.assert_memory_matches_ledger().await;
}

/// Issue 16, item 3: orphans are settled in batches, so a few thousand due at
/// once are gone within a tick or two rather than one fsync each.
#[tokio::test]
async fn thousands_of_due_orphans_are_settled_together() {
    let daemon = Daemon::start(
        "rate_limits = []\n[daemon]\nmax_reservations_per_connection = 5000\n[budget]\nlimit = 1000.0\norphan_timeout = \"1s\"\n",
    );
    let mut client = daemon.client("a").await;
    let responses = admit_many(&mut client, "a", 3000, 0.001).await;
    assert_eq!(allowed(&responses), 3000);
    drop(client);
    let mut observer = daemon.client("observer").await;
    eventually(Duration::from_secs(20), || {
        let socket = daemon.socket.clone();
        async move {
            let mut client = Client::connect(&socket, "poll", "integration-test")
                .await
                .ok()?;
            (open_reservations(&mut client).await == 0).then_some(())
        }
    })
    .await;
    let global = &observer.budget(None).await.expect("budget").budgets[0];
    assert_eq!((global.orphaned, global.spent), (0, 3.0));
    let log = daemon.log();
    assert!(
        log.contains("1024 orphaned reservation(s) settled by policy"),
        "settled in batches:\n{log}"
    );
    daemon.assert_memory_matches_ledger().await;
}

const PLANNER_IS_1001: &str = "[[agents]]\nname = \"planner\"\nuids = [1001]\n";

/// Issue 16, item 6: an editor's truncate-then-write can leave the file empty at
/// the moment of a SIGHUP, which applied every default and dropped the
/// `[[agents]]` bindings. Such a file is refused; the old config stays.
#[tokio::test]
async fn an_empty_config_is_refused_on_reload_and_the_bindings_stay() {
    let daemon = Daemon::start(PLANNER_IS_1001);
    assert!(
        Client::connect(&daemon.socket, "planner", "integration-test")
            .await
            .is_err(),
        "planner is bound to uid 1001"
    );
    for empty in ["", "# being rewritten\n\n"] {
        daemon.write_config(empty);
        let log = daemon.sighup_and_wait();
        assert!(
            log.contains("holds no settings")
                && log.contains("the old configuration stays in force"),
            "{log}"
        );
        let Err(refused) = Client::connect(&daemon.socket, "planner", "integration-test").await
        else {
            panic!("the binding is still in force");
        };
        assert!(refused.to_string().contains("planner"), "{refused}");
    }
}

/// Issue 16, item 6: at start, an explicit `--config` naming an empty file is an
/// error too (without `--config` the daemon runs on its defaults).
#[test]
fn an_explicit_empty_config_is_an_error_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("empty.toml");
    std::fs::write(&config, "").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_automation-frameworkd"))
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--http")
        .arg("off")
        .env_remove("LISTEN_FDS")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("run the daemon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("holds no settings") && stderr.contains("empty.toml"),
        "{stderr}"
    );
}
