//! Starting and stopping the daemon.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use automation_framework::protocol::AdmitRequest;

use crate::util::{eventually, Daemon, PROMPTLY};

#[tokio::test]
async fn sigterm_closes_sessions_with_a_reason_and_exits_0() {
    let mut daemon = Daemon::start("");
    let mut client = daemon.client("a").await;
    assert!(
        client
            .admit(AdmitRequest {
                agent: None,
                service: "svc".into(),
                units: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .allowed
    );
    kill(Pid::from_raw(daemon.pid()), Signal::SIGTERM).unwrap();
    // The next frame the client sees, without asking, is the goodbye.
    let err = client.recv().await.expect_err("the session ends");
    assert!(err.to_string().contains("shutting down"), "{err}");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        daemon.log()
    );
    assert!(
        !daemon.socket.exists(),
        "the socket file is removed on a clean exit"
    );
}

/// A reply still owed when the daemon starts draining is written before the
/// goodbye: an admission waiting in a bulkhead's line gets its answer (the
/// holder's connection, with nothing owed, closes first and gives its permit
/// back; else the wait runs out), then the `ShuttingDown` frame, then the end.
#[tokio::test]
async fn a_reply_owed_at_shutdown_is_written_before_the_goodbye() {
    use automation_framework::protocol::{
        ClientFrame, Envelope, ErrorCode, Request, Response, ServerFrame,
    };
    let mut daemon =
        Daemon::start("[[bulkheads]]\nname = \"one\"\nscope = \"service\"\nmax_in_flight = 1\n");
    let mut holder = daemon.client("holder").await;
    let held = holder
        .admit(AdmitRequest {
            service: "svc".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(held.allowed);
    let mut waiter = daemon.raw().await;
    waiter.hello("waiter").await;
    waiter
        .send(&ClientFrame::Request(Envelope {
            id: 7,
            request: Request::Admit(AdmitRequest {
                service: "svc".into(),
                wait_ms: Some(500),
                ..Default::default()
            }),
        }))
        .await;
    let series = "automation_framework_bulkhead_waiting{bulkhead=\"one\"}";
    crate::util::eventually(crate::util::PROMPTLY, || async {
        let metrics = daemon.http_get("/metrics").1;
        metrics
            .lines()
            .any(|line| line.starts_with(series) && line.ends_with(" 1"))
            .then_some(())
    })
    .await;
    kill(Pid::from_raw(daemon.pid()), Signal::SIGTERM).unwrap();
    match waiter.recv().await {
        Some(ServerFrame::Reply(reply)) => {
            assert_eq!(reply.id, 7);
            assert!(matches!(&reply.response, Response::Admit(_)), "{reply:?}");
        }
        other => panic!("expected the waiter's reply first, got {other:?}"),
    }
    match waiter.recv().await {
        Some(ServerFrame::Error(err)) => assert_eq!(err.code, ErrorCode::ShuttingDown),
        other => panic!("expected the goodbye, got {other:?}"),
    }
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        daemon.log()
    );
}

#[tokio::test]
async fn the_limits_hit_are_logged_at_exit() {
    let mut daemon = Daemon::start("[daemon]\nmax_batch = 1\n");
    let mut client = daemon.client("a").await;
    let _ = client
        .batch(vec![
            automation_framework::protocol::Request::Ping,
            automation_framework::protocol::Request::Ping,
        ])
        .await;
    kill(Pid::from_raw(daemon.pid()), Signal::SIGTERM).unwrap();
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)), Some(0));
    let log = daemon.log();
    assert!(
        log.contains("limits and access rules hit since start: max_batch=1"),
        "{log}"
    );
}

#[tokio::test]
async fn a_second_daemon_does_not_steal_a_live_socket() {
    let daemon = Daemon::start("");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_automation-frameworkd"))
        .arg("--socket")
        .arg(&daemon.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("another daemon is already listening"),
        "{stderr}"
    );
    let mut client = daemon.client("still-here").await;
    client.ping().await.unwrap();
}

#[tokio::test]
async fn a_stale_socket_from_a_killed_daemon_is_replaced() {
    let mut first = Daemon::start("");
    kill(Pid::from_raw(first.pid()), Signal::SIGKILL).unwrap();
    first.wait_exit(Duration::from_secs(10));
    assert!(
        first.socket.exists(),
        "SIGKILL leaves the socket file behind"
    );
    let dir = first.dir.path().to_owned();
    let socket = first.socket.clone();
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_automation-frameworkd"))
        .arg("--socket")
        .arg(&socket)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = async {
        for _ in 0..500 {
            if let Ok(client) =
                automation_framework_client::Client::connect(&socket, "a", "t").await
            {
                return client;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("second daemon never served {}", dir.display());
    }
    .await;
    drop(client);
    second.kill().unwrap();
    second.wait().unwrap();
}

/// Under socket activation the daemon serves the socket systemd hands it
/// (LISTEN_FDS) instead of binding its own path.
#[tokio::test]
async fn serves_a_socket_passed_by_systemd_socket_activation() {
    let Some(activate) = socket_activate("serves_a_socket_passed_by_systemd_socket_activation")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let activated = dir.path().join("activated.sock");
    let unused = dir.path().join("never-bound.sock");
    let mut child = std::process::Command::new(activate)
        .arg("--listen")
        .arg(&activated)
        .arg(env!("CARGO_BIN_EXE_automation-frameworkd"))
        .arg("--socket")
        .arg(&unused)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut client = None;
    for _ in 0..500 {
        if let Ok(c) = automation_framework_client::Client::connect(&activated, "a", "t").await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut client = client.expect("the activated daemon answers");
    client.ping().await.unwrap();
    assert!(
        !unused.exists(),
        "the daemon must not bind its own path when activated"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// A socket systemd passes that is not a Unix stream socket (a unit with
/// `ListenDatagram=`) is refused at start, with the unit's line to fix.
#[tokio::test]
async fn refuses_a_datagram_socket_from_socket_activation() {
    let Some(activate) = socket_activate("refuses_a_datagram_socket_from_socket_activation") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let datagram = dir.path().join("datagram.sock");
    let mut child = crate::util::KillOnDrop(
        std::process::Command::new(activate)
            .arg("--datagram")
            .arg("--listen")
            .arg(&datagram)
            .arg(env!("CARGO_BIN_EXE_automation-frameworkd"))
            .arg("--socket")
            .arg(dir.path().join("never-bound.sock"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // systemd-socket-activate starts the daemon on the socket's first datagram.
    let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let deadline = std::time::Instant::now() + crate::util::PROMPTLY;
    while sender.send_to(b"wake", &datagram).is_err() {
        assert!(std::time::Instant::now() < deadline, "no datagram socket");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon must refuse the socket and exit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .contains("not a Unix stream socket; fix ListenStream= in automation-framework.socket"),
        "{stderr}"
    );
}

/// The status counts the connections and agents open now: one that closed
/// is counted no more.
#[tokio::test]
async fn status_counts_only_open_connections_and_agents() {
    let daemon = Daemon::start("");
    let mut watcher = daemon.client("watcher").await;
    let mut counts = async || {
        let status = watcher.status().await.unwrap();
        (status.connections, status.active_agents)
    };
    assert_eq!(counts().await, (1, 1));
    let first = daemon.client("worker").await;
    let second = daemon.client("worker").await;
    assert_eq!(counts().await, (3, 2));
    drop(first);
    eventually(PROMPTLY, async || (counts().await == (2, 2)).then_some(())).await;
    drop(second);
    eventually(PROMPTLY, async || (counts().await == (1, 1)).then_some(())).await;
}

/// systemd-socket-activate, or `None` after saying that `test` is skipped.
fn socket_activate(test: &str) -> Option<std::path::PathBuf> {
    let found = which("systemd-socket-activate").ok();
    if found.is_none() {
        eprintln!("SKIPPED {test}: systemd-socket-activate not installed (Debian package systemd); .ci/run installs it");
    }
    found
}

fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .ok_or(())
}

/// The shipped units verify cleanly and stay hardened (`systemd/check`).
#[test]
fn the_systemd_units_verify_and_score_at_most_1_5() {
    let out =
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../systemd/check"))
            .output()
            .expect("run systemd/check");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => assert!(text.contains("exposure"), "{text}"),
        Some(77) => eprintln!("SKIPPED the_systemd_units_verify_and_score_at_most_1_5: {text}"),
        other => panic!("systemd/check failed ({other:?}):\n{text}"),
    }
}

/// Needs root, to leave a socket that belongs to another user.
#[test]
fn refuses_to_start_on_a_socket_owned_by_another_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED refuses_to_start_on_a_socket_owned_by_another_user: needs root to chown a file to another uid");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_automation-frameworkd"))
        .arg("--socket")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("belongs to uid 65534, not to this daemon's uid 0"),
        "{stderr}"
    );
    assert!(path.exists(), "the other user's file is left alone");
}

#[test]
fn refuses_to_start_in_a_directory_anyone_can_write() {
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(
        &open,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o777),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_automation-frameworkd"))
        .arg("--socket")
        .arg(open.join("agent.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("is writable by everyone"), "{stderr}");
}

/// The daemon's conversation with systemd, read from a NOTIFY_SOCKET the test owns:
/// READY=1 with a STATUS once serving, WATCHDOG=1 pings when WATCHDOG_USEC is set,
/// RELOADING=1 with MONOTONIC_USEC then READY=1 around a SIGHUP reload, STOPPING=1
/// on SIGTERM.
#[test]
fn notifies_systemd_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let config = dir.path().join("config.toml");
    // An empty file is refused (issue 16); an empty table means the defaults.
    std::fs::write(&config, "[daemon]\n").unwrap();
    let mut child = crate::util::KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_automation-frameworkd"))
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(dir.path().join("agent.sock"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["--http", "127.0.0.1:0"])
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "200000")
            .env_remove("WATCHDOG_PID")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let mut next = |seen: &mut Vec<String>| {
        let n = notify.recv(&mut buf).expect("a notification within 10s");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        seen.push(text.clone());
        text
    };
    let ready = next(&mut seen);
    assert!(ready.contains("READY=1"), "{seen:?}");
    assert!(ready.contains("STATUS=serving on"), "{seen:?}");
    while !next(&mut seen).contains("WATCHDOG=1") {}
    kill(Pid::from_raw(child.id() as i32), Signal::SIGHUP).unwrap();
    let reloading = loop {
        let text = next(&mut seen);
        if text.contains("RELOADING=1") {
            break text;
        }
    };
    assert!(
        reloading.contains("MONOTONIC_USEC="),
        "one message: {seen:?}"
    );
    let reloaded = loop {
        let text = next(&mut seen);
        if text.contains("READY=1") {
            break text;
        }
    };
    assert!(reloaded.contains("STATUS=serving on"), "{seen:?}");
    // A refused reload: READY=1 again (the daemon serves on), the reason in STATUS.
    std::fs::write(&config, "[daemon]\nmood = \"calm\"\n").unwrap();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGHUP).unwrap();
    while !next(&mut seen).contains("RELOADING=1") {}
    let refused = loop {
        let text = next(&mut seen);
        if text.contains("READY=1") {
            break text;
        }
    };
    let status = refused
        .lines()
        .find(|line| line.starts_with("STATUS="))
        .unwrap_or_default();
    assert!(
        status.starts_with("STATUS=reload failed: ") && status.contains("unknown field `mood`"),
        "the reason, on one line: {seen:?}"
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    while !next(&mut seen).contains("STOPPING=1") {}
    assert!(child.wait().unwrap().success(), "{seen:?}");
}

/// A client whose pipelined requests are always already buffered (the daemon
/// takes those without waiting on its shutdown signal) still gets the goodbye
/// on SIGTERM, and the daemon still exits.
#[tokio::test]
async fn sigterm_reaches_a_client_that_never_stops_pipelining() {
    use automation_framework::protocol::frame::{decode, encode, length_codec};
    use automation_framework::protocol::{ClientFrame, Envelope, ErrorCode, Request, ServerFrame};
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::FramedRead;

    let mut daemon = Daemon::start("");
    let mut raw = daemon.raw().await;
    raw.hello("flood").await;
    let (read, mut write) = raw.framed.into_inner().into_split();
    // A thousand pings to a write, for as long as the daemon reads them.
    let mut chunk = Vec::new();
    for id in 0..1000u64 {
        let body = encode(&ClientFrame::Request(Envelope {
            id,
            request: Request::Ping,
        }))
        .unwrap();
        chunk.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
        chunk.extend_from_slice(&body);
    }
    let flood = tokio::spawn(async move { while write.write_all(&chunk).await.is_ok() {} });
    let mut replies = FramedRead::new(read, length_codec());
    let mut answered = 0u64;
    let mut goodbye = None;
    let reading = async {
        while let Some(Ok(body)) = replies.next().await {
            match decode::<ServerFrame>(&body).expect("a valid frame") {
                ServerFrame::Error(err) => {
                    goodbye = Some(err);
                    break;
                }
                _ => {
                    answered += 1;
                    if answered == 5_000 {
                        kill(Pid::from_raw(daemon.pid()), Signal::SIGTERM).unwrap();
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), reading)
        .await
        .expect("the daemon says goodbye while the client floods");
    let goodbye =
        goodbye.unwrap_or_else(|| panic!("closed without a reason after {answered} replies"));
    assert_eq!(goodbye.code, ErrorCode::ShuttingDown, "{goodbye:?}");
    assert!(answered >= 5_000);
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        daemon.log()
    );
    flood.abort();
}

/// `--threads` sets the runtime's worker threads (named `af-worker`), and a
/// count out of range is refused before anything starts.
#[tokio::test]
async fn threads_sets_the_runtime_workers() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let start = |threads: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_automation-frameworkd"))
            .args(["--threads", threads, "--http", "off", "--socket"])
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env_remove("LISTEN_FDS")
            .env_remove("NOTIFY_SOCKET")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let refused = start("0").wait_with_output().unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--threads"), "{stderr}");

    let daemon = start("3");
    // Answering a ping: serving, its signal handlers in place.
    crate::util::eventually(Duration::from_secs(20), || async {
        let mut client = automation_framework_client::Client::connect(&socket, "t", "test")
            .await
            .ok()?;
        client.ping().await.ok()
    })
    .await;
    let workers = std::fs::read_dir(format!("/proc/{}/task", daemon.id()))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
        .filter(|comm| comm.trim() == "af-worker")
        .count();
    kill(
        Pid::from_raw(i32::try_from(daemon.id()).unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();
    let exit = daemon.wait_with_output().unwrap();
    assert!(
        exit.status.success(),
        "{}",
        String::from_utf8_lossy(&exit.stderr)
    );
    assert_eq!(workers, 3);
}
