//! The access policy against the real daemon: who may connect, which agent names a
//! uid may claim, who may run admin operations. The tests that need a second uid run
//! the CLI under `setpriv` and need root (CI runs as root); without root they say
//! they are skipped and why.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use automation_framework::protocol::{
    AdmitRequest, ErrorCode, LeaseRequest, Outcome, ReportRequest, Request, Response,
};
use automation_framework_client::ClientError;

use crate::util::Daemon;

/// Reserves "planner" for uid 1001, which is not the test's uid (root in CI, or
/// whoever runs the tests).
const PLANNER_IS_1001: &str = "[[agents]]\nname = \"planner\"\nuids = [1001]\n";

#[tokio::test]
async fn a_bound_agent_name_is_refused_at_the_handshake() {
    let daemon = Daemon::start(PLANNER_IS_1001);
    let err = automation_framework_client::Client::connect(&daemon.socket, "planner", "t")
        .await
        .err()
        .expect("the handshake is refused");
    let ClientError::Closed(reply) = err else {
        panic!("expected an error frame, got {err}");
    };
    assert_eq!(reply.code, ErrorCode::NotPermitted);
    let uid = nix::unistd::geteuid().as_raw();
    assert!(
        reply.message.contains(&format!("uid {uid}")),
        "{}",
        reply.message
    );
    assert!(reply.message.contains("agents[0]"), "{}", reply.message);
    let log = daemon.log();
    assert!(
        log.contains(&format!("refusing connection from uid {uid} gid ")) && log.contains(" pid "),
        "the refusal is logged with uid, gid and pid:\n{log}"
    );
    // Any other name is free.
    daemon.client("helper").await.ping().await.unwrap();
}

#[tokio::test]
async fn a_bound_agent_name_is_refused_per_request_and_the_session_goes_on() {
    let daemon = Daemon::start(PLANNER_IS_1001);
    let mut client = daemon.client("helper").await;
    let response = client
        .call(Request::Admit(AdmitRequest {
            agent: Some("planner".into()),
            service: "openai".into(),
            units: 1,
            ..Default::default()
        }))
        .await
        .unwrap();
    match response {
        Response::Error(err) => {
            assert_eq!(err.code, ErrorCode::NotPermitted);
            assert!(err.message.contains("agents[0]"), "{}", err.message);
        }
        other => panic!("expected NotPermitted, got {other:?}"),
    }
    // So are an outcome reported without a reservation and a lease, each
    // naming the bound agent.
    let for_planner = [
        Request::Report(ReportRequest {
            service: Some("openai".into()),
            agent: Some("planner".into()),
            outcome: Outcome::Failure,
            ..Default::default()
        }),
        Request::Lease(LeaseRequest {
            name: "repo".into(),
            ttl_ms: None,
            release: false,
            agent: Some("planner".into()),
        }),
    ];
    for request in for_planner {
        match client.call(request.clone()).await.unwrap() {
            Response::Error(err) => {
                assert_eq!(err.code, ErrorCode::NotPermitted, "{request:?}");
                assert!(err.message.contains("agents[0]"), "{}", err.message);
            }
            other => panic!("expected NotPermitted for {request:?}, got {other:?}"),
        }
    }
    // The same request for the session's own (free) agent name is admitted.
    let reply = client
        .admit(AdmitRequest {
            agent: Some("helper".into()),
            service: "openai".into(),
            units: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(reply.allowed, "{reply:?}");
}

/// The uid and gid the root-only tests act as (`nobody`/`nogroup` on Debian).
const NOBODY: u32 = 65534;

/// The CLI run as [`NOBODY`] with these supplementary groups, through `setpriv`
/// (util-linux); `None` after saying why when the test cannot act as another uid.
/// The binary is copied into the daemon's temp dir, which is opened for traversal:
/// the build directory may sit under a home only root can enter.
fn as_nobody(test: &str, daemon: &Daemon, groups: &[u32]) -> Option<Command> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED {test}: needs root to act as another uid (CI runs as root)");
        return None;
    }
    let Some(setpriv) = which("setpriv") else {
        eprintln!("SKIPPED {test}: setpriv not installed (Debian package util-linux); .ci/run installs it");
        return None;
    };
    let cli = cli_for_nobody();
    let mut cmd = Command::new(setpriv);
    cmd.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.arg(format!("--groups={}", list.join(",")));
    }
    cmd.arg(cli)
        .arg("--socket")
        .arg(&daemon.socket)
        .env_remove("AUTOMATION_FRAMEWORK_AGENT")
        .env_remove("AUTOMATION_FRAMEWORK_SOCKET");
    Some(cmd)
}

fn run(mut cmd: Command, args: &[&str]) -> (i32, String, String) {
    let out = cmd.args(args).output().expect("run the CLI under setpriv");
    (
        out.status.code().expect("exited normally"),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// Lets any local process reach the socket file, so the policy (not the file mode)
/// is what refuses.
const OPEN_SOCKET: &str = "[daemon]\nsocket_mode = \"0666\"\n";

#[test]
fn a_uid_no_rule_lets_in_is_refused_and_logged() {
    let daemon = Daemon::start(OPEN_SOCKET);
    let test = "a_uid_no_rule_lets_in_is_refused_and_logged";
    let Some(cmd) = as_nobody(test, &daemon, &[]) else {
        return;
    };
    let (code, _, stderr) = run(cmd, &["ping"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not_permitted"), "{stderr}");
    assert!(
        stderr.contains("uid 65534 (gid 65534) may not connect"),
        "{stderr}"
    );
    let log = daemon.log();
    assert!(
        log.contains("refusing connection from uid 65534 gid 65534 pid "),
        "every refusal is logged with uid, gid and pid:\n{log}"
    );
}

#[test]
fn the_socket_mode_keeps_other_users_out_before_the_policy() {
    let daemon = Daemon::start("");
    let test = "the_socket_mode_keeps_other_users_out_before_the_policy";
    let Some(cmd) = as_nobody(test, &daemon, &[]) else {
        return;
    };
    let (code, _, stderr) = run(cmd, &["ping"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    // The hint names the cause (the socket's group), not a stopped daemon, and
    // the OS error is said once.
    assert!(stderr.contains("add the user to that group"), "{stderr}");
    assert!(
        !stderr.contains("is automation-frameworkd running"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("Permission denied").count(), 1, "{stderr}");
}

#[test]
fn a_supplementary_group_lets_a_uid_in() {
    let daemon = Daemon::start(&format!("{OPEN_SOCKET}[access]\nagent_gids = [4242]\n"));
    let test = "a_supplementary_group_lets_a_uid_in";
    let Some(cmd) = as_nobody(test, &daemon, &[4242]) else {
        return;
    };
    let (code, stdout, stderr) = run(cmd, &["--json", "ping"]);
    assert_eq!(code, 0, "{stderr}");
    let pong: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(pong["ok"], true);
    // Without the group, the same uid is refused.
    let cmd = as_nobody(test, &daemon, &[]).expect("root");
    assert_eq!(run(cmd, &["ping"]).0, 2);
}

#[test]
fn agent_name_impersonation_is_refused() {
    let daemon = Daemon::start(&format!(
        "{OPEN_SOCKET}[access]\nagent_uids = [0, {NOBODY}]\n[[agents]]\nname = \"planner\"\nuids = [0]\n"
    ));
    let test = "agent_name_impersonation_is_refused";
    let Some(cmd) = as_nobody(test, &daemon, &[]) else {
        return;
    };
    let (code, _, stderr) = run(cmd, &["--agent", "planner", "ping"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("uid 65534 (gid 65534) may not act as agent \"planner\": agents[0]"),
        "{stderr}"
    );

    // Its own name is fine; claiming "planner" per request is refused, and the
    // session goes on.
    let mut cmd = as_nobody(test, &daemon, &[]).expect("root");
    cmd.args(["--agent", "helper"]);
    let lines = crate::util::session(
        cmd,
        &[
            r#"{"op":"admit","service":"openai","agent":"planner"}"#,
            r#"{"op":"admit","service":"openai"}"#,
        ],
    );
    assert_eq!(lines[0]["error"]["kind"], "not_permitted", "{lines:?}");
    assert_eq!(lines[1]["allowed"], true, "{lines:?}");

    // Root, which the entry names, may use it.
    let mut cmd = daemon.cli();
    cmd.args(["--agent", "planner", "ping"]);
    assert!(cmd.output().unwrap().status.success());
}

#[test]
fn an_admin_operation_by_a_non_admin_is_refused() {
    let daemon = Daemon::start(&format!(
        "{OPEN_SOCKET}[access]\nagent_uids = [{NOBODY}]\nadmin_gids = [4243]\n[budget]\nlimit = 10.0\n"
    ));
    let test = "an_admin_operation_by_a_non_admin_is_refused";
    let Some(cmd) = as_nobody(test, &daemon, &[]) else {
        return;
    };
    let force = ["breakers", "--service", "search", "--force", "open"];
    let (code, _, stderr) = run(cmd, &force);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not_permitted"), "{stderr}");
    assert!(
        stderr.contains("uid 65534 (gid 65534) may not run admin operations"),
        "{stderr}"
    );
    let log = daemon.log();
    assert!(
        log.contains("refused a request of session") && log.contains("(uid 65534 gid 65534 pid "),
        "{log}"
    );
    let cmd = as_nobody(test, &daemon, &[]).expect("root");
    let (code, _, stderr) = run(cmd, &["reload"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("may not run admin operations"), "{stderr}");
    let cmd = as_nobody(test, &daemon, &[]).expect("root");
    let (code, _, stderr) = run(cmd, &["budget", "--set-limit", "1", "--budget", "global"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("may not run admin operations"), "{stderr}");
    let cmd = as_nobody(test, &daemon, &[]).expect("root");
    let (code, stdout, _) = run(cmd, &["--json", "budget"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("\"limit\":10.0"),
        "the limit stands: {stdout}"
    );
    // Reading breakers is not an admin operation, and nothing was forced.
    let cmd = as_nobody(test, &daemon, &[]).expect("root");
    let (code, stdout, _) = run(cmd, &["--json", "breakers", "--service", "search"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("\"state\":\"closed\""), "{stdout}");

    // A member of an admin group may.
    let cmd = as_nobody(test, &daemon, &[4243]).expect("root");
    let (code, stdout, stderr) = run(cmd, &force);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("forced_open"), "{stdout}");
}

#[test]
fn a_reload_swaps_the_access_policy() {
    let daemon = Daemon::start(OPEN_SOCKET);
    let test = "a_reload_swaps_the_access_policy";
    let Some(cmd) = as_nobody(test, &daemon, &[]) else {
        return;
    };
    let (code, _, stderr) = run(cmd, &["ping"]);
    assert_eq!(code, 2, "not let in yet: {stderr}");
    daemon.write_config(&format!("{OPEN_SOCKET}[access]\nagent_uids = [{NOBODY}]\n"));
    let log = daemon.sighup_and_wait();
    assert!(log.contains("configuration reloaded from"), "{log}");
    let cmd = as_nobody(test, &daemon, &[]).expect("root");
    let (code, _, stderr) = run(cmd, &["ping"]);
    assert_eq!(code, 0, "let in after the reload: {stderr}");
}

/// A reservation belongs to its agent, not to its connection (so it can be
/// reported after a reconnect or a restart): a non-admin peer that may not act as
/// the reservation's agent (the name is bound to other users) may not settle it;
/// a name nobody reserved can be reported by any allowed peer.
#[tokio::test]
async fn a_reservation_is_reported_only_by_peers_that_may_act_as_its_agent() {
    let daemon = Daemon::start(&format!(
        "{OPEN_SOCKET}[access]\nagent_uids = [{NOBODY}]\n[[agents]]\nname = \"planner\"\nuids = [0]\n"
    ));
    let test = "a_reservation_is_reported_only_by_peers_that_may_act_as_its_agent";
    let admit_as = |agent: &'static str| {
        let daemon = &daemon;
        async move {
            daemon
                .client(agent)
                .await
                .admit(AdmitRequest {
                    service: "svc".into(),
                    // Money, so the reservation outlives its connection as an
                    // orphan ($0 ones are released with it).
                    cost: Some(0.01),
                    ..Default::default()
                })
                .await
                .unwrap()
                .reservation
                .expect("admitted")
        }
    };
    let bound = admit_as("planner").await;
    let unbound = admit_as("shared").await;
    let report =
        |id: u64| format!("{{\"op\":\"report\",\"reservation\":{id},\"outcome\":\"success\"}}\n");
    let Some(mut coder) = as_nobody(test, &daemon, &[]) else {
        return;
    };
    coder.args(["--agent", "coder", "session"]);
    let out = feed(&mut coder, &(report(bound) + &report(unbound)));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains("\"not_permitted\"") && lines[0].contains("was admitted for agent"),
        "{out}"
    );
    assert!(
        lines[1].contains("\"duplicate\":false"),
        "an unbound name: {out}"
    );
}

/// docs/PROTOCOL.md §6.4 used to say a reservation admitted with `agent` set to
/// another name cannot be reported by the connection that made it, only by one
/// that handshook as that agent. The daemon's rule (and now the document's) is
/// the peer's: whoever may act as the reservation's agent may report it, from
/// the admitting connection or any other, without being an admin.
#[tokio::test]
async fn a_peer_that_may_act_as_the_agent_reports_from_any_of_its_connections() {
    let daemon = Daemon::start(&format!(
        "{OPEN_SOCKET}[access]\nagent_uids = [{NOBODY}]\n[budget]\nlimit = 10.0\n\
         [[agents]]\nname = \"planner\"\nuids = [{NOBODY}]\n"
    ));
    let test = "a_peer_that_may_act_as_the_agent_reports_from_any_of_its_connections";
    let Some(mut helper) = as_nobody(test, &daemon, &[]) else {
        return;
    };
    // The daemon's first two reservations: epoch 1, counters 1 and 2.
    let (first, second) = ((1u64 << 32) | 1, (1u64 << 32) | 2);
    let admit = "{\"op\":\"admit\",\"service\":\"svc\",\"agent\":\"planner\",\"cost\":1}\n";
    let report =
        |id: u64| format!("{{\"op\":\"report\",\"reservation\":{id},\"outcome\":\"success\"}}\n");
    helper.args(["--agent", "helper", "session"]);
    let out = feed(&mut helper, &format!("{admit}{admit}{}", report(first)));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains(&format!("\"reservation\":{first}")),
        "{out}"
    );
    assert!(
        lines[1].contains(&format!("\"reservation\":{second}")),
        "{out}"
    );
    assert!(
        lines[2].contains("\"duplicate\":false") && lines[2].contains("\"charged\":1.0"),
        "the admitting connection reports what it admitted for planner: {out}"
    );
    // The second is an orphan now; another connection of the same peer, acting
    // as yet another agent, may still settle it.
    let mut other = as_nobody(test, &daemon, &[]).expect("root");
    other.args(["--agent", "other", "session"]);
    let out = feed(&mut other, &report(second));
    assert!(
        out.contains("\"duplicate\":false") && out.contains("\"charged\":1.0"),
        "{out}"
    );
}

/// An admin settles any reservation, even one whose agent name is bound to
/// other users (`[[agents]]` binds the daemon's own uid and root too): the
/// operator's way to close what a stuck agent left open.
#[tokio::test]
async fn an_admin_settles_a_reservation_of_an_agent_it_may_not_act_as() {
    let daemon = Daemon::start(&format!(
        "{OPEN_SOCKET}[access]\nagent_uids = [{NOBODY}]\n[budget]\nlimit = 10.0\n\
         [[agents]]\nname = \"planner\"\nuids = [{NOBODY}]\n"
    ));
    let test = "an_admin_settles_a_reservation_of_an_agent_it_may_not_act_as";
    let Some(mut planner) = as_nobody(test, &daemon, &[]) else {
        return;
    };
    // The daemon's first reservation: epoch 1, counter 1.
    let first = (1u64 << 32) | 1;
    planner.args(["--agent", "planner", "session"]);
    let out = feed(
        &mut planner,
        "{\"op\":\"admit\",\"service\":\"svc\",\"cost\":1}\n",
    );
    assert!(out.contains(&format!("\"reservation\":{first}")), "{out}");

    // The test runs as root, the daemon's uid: an admin, but not planner.
    let mut ops = daemon.client("ops").await;
    let refused = ops
        .call(Request::Admit(AdmitRequest {
            service: "svc".into(),
            agent: Some("planner".into()),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert!(
        matches!(&refused, Response::Error(err) if err.code == ErrorCode::NotPermitted),
        "root may not act as planner: {refused:?}"
    );
    let settled = ops
        .report(ReportRequest {
            reservation: Some(first),
            outcome: Outcome::Success,
            ..Default::default()
        })
        .await
        .expect("an admin settles any reservation");
    assert_eq!(settled.charged, Some(1.0), "{settled:?}");
}

/// A session keeps the agent name it shook hands with: a reload that binds
/// the name to other users turns away new connections claiming it, while
/// the open session still reports what it admitted (its calls are in flight;
/// refusing their reports would leave them to the orphan timeout).
#[tokio::test]
async fn a_session_reports_its_own_admissions_after_a_reload_binds_its_name_away() {
    use std::io::{BufRead, BufReader};
    let config =
        format!("{OPEN_SOCKET}[access]\nagent_uids = [{NOBODY}]\n[budget]\nlimit = 10.0\n");
    let daemon = Daemon::start(&config);
    let test = "a_session_reports_its_own_admissions_after_a_reload_binds_its_name_away";
    let Some(mut planner) = as_nobody(test, &daemon, &[]) else {
        return;
    };
    let mut child = planner
        .args(["--agent", "planner", "session"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the CLI");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ask = |line: &str| {
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        lines.next().expect("a reply line").unwrap()
    };
    let first = (1u64 << 32) | 1;
    let admitted = ask("{\"op\":\"admit\",\"service\":\"svc\",\"cost\":1}");
    assert!(
        admitted.contains(&format!("\"reservation\":{first}")),
        "{admitted}"
    );

    daemon.write_config(&format!(
        "{config}[[agents]]\nname = \"planner\"\nuids = [1001]\n"
    ));
    let log = daemon.sighup_and_wait();
    assert!(log.contains("configuration reloaded from"), "{log}");
    let reported = ask(&format!(
        "{{\"op\":\"report\",\"reservation\":{first},\"outcome\":\"success\"}}"
    ));
    assert!(
        reported.contains("\"duplicate\":false") && reported.contains("\"charged\":1.0"),
        "{reported}"
    );
    drop(stdin);
    assert!(child.wait().unwrap().success());

    // A new connection claiming the name is refused now.
    let mut again = as_nobody(test, &daemon, &[]).expect("root");
    again.args(["--agent", "planner", "ping"]);
    let (code, _, stderr) = run(again, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("agents[0]"), "{stderr}");
}

/// A copy of the CLI that `nobody` can run (the build directory may sit under a
/// home only root can enter), made once per test process. The copy is executed
/// once before it is handed out: while it was being written, a test thread
/// forking a child may have inherited the open file, and exec'ing it then fails
/// with "Text file busy" (ETXTBSY); once one exec succeeded, nothing holds it
/// open for writing any more.
// Waiting out another thread's fork is waiting for a process, not for time to pass.
#[allow(clippy::disallowed_methods)]
fn cli_for_nobody() -> std::path::PathBuf {
    static COPY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cli = dir.join("automation-framework");
        std::fs::copy(crate::util::cli_bin(), &cli).unwrap();
        std::fs::set_permissions(&cli, std::fs::Permissions::from_mode(0o755)).unwrap();
        for _ in 0..100 {
            match Command::new(&cli).arg("--version").output() {
                Err(err) if err.raw_os_error() == Some(nix::libc::ETXTBSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => {
                    other.expect("run the copied CLI");
                    return cli;
                }
            }
        }
        panic!("{} stayed busy (ETXTBSY)", cli.display());
    })
    .clone()
}

/// Runs a CLI session with `input` on stdin and returns its stdout.
fn feed(cmd: &mut Command, input: &str) -> String {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the CLI");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap() + &String::from_utf8(out.stderr).unwrap()
}
