//! The harness: a real daemon process in a temp dir, and ways to talk to it.

#![allow(dead_code)]

pub mod ledger;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use automation_framework::clock::SharedClock;
use automation_framework::config::Config;
use automation_framework::protocol::frame::{decode, encode, length_codec};
use automation_framework::protocol::{ClientFrame, Hello, ServerFrame, PROTOCOL_VERSION};
use automation_framework::state::State;
use automation_framework_client::Client;
use tokio_util::sync::CancellationToken;

/// How long to wait for something that should happen promptly (readiness, a
/// connection close). Generous because CI machines are small; never slept in full.
pub const PROMPTLY: Duration = Duration::from_secs(10);

/// The longest a well-behaved client's ping may take while others misbehave. A ping
/// on a quiet daemon takes well under a millisecond; a stalled daemon (what the
/// hostile tests look for) takes seconds or forever. The bound leaves room for a
/// loaded 2-core CI machine.
pub const NORMAL_LATENCY: Duration = Duration::from_millis(500);

/// The daemon's resident memory ceiling in the hostile tests, in MiB. A quiet debug
/// build uses about 5 MiB; 1,000 idle connections add about 10 MiB.
pub const RSS_CEILING_MIB: u64 = 64;

/// The CLI binary (`automation-framework`, crate `automation-framework-cli`), next
/// to the daemon's in the target directory. A workspace `cargo test` builds it
/// (the CLI crate's own test needs it); `cargo test -p automation-framework`
/// alone does not, so say how to get it rather than test a stale one silently.
pub fn cli_bin() -> PathBuf {
    let daemon = std::path::Path::new(env!("CARGO_BIN_EXE_automation-frameworkd"));
    let cli = daemon.with_file_name(format!(
        "automation-framework{}",
        std::env::consts::EXE_SUFFIX
    ));
    assert!(
        cli.is_file(),
        "{} is missing: run the workspace's tests (`cargo test` at the repository root), or `cargo build -p automation-framework-cli` first",
        cli.display()
    );
    cli
}

/// A running daemon; killed when dropped.
pub struct Daemon {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    log: PathBuf,
    config_path: PathBuf,
}

impl Daemon {
    /// Starts the daemon with `config` (TOML text) on a fresh socket and waits until
    /// it accepts connections.
    pub fn start(config: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("agent.sock");
        let config_path = dir.path().join("config.toml");
        // A named file with no settings is refused (issue 16); "" here means the
        // built-in defaults, which an empty table says explicitly.
        let config = if config.is_empty() {
            "[daemon]\n"
        } else {
            config
        };
        std::fs::write(&config_path, config).expect("write config");
        let log = dir.path().join("daemon.log");
        let child = spawn(&config_path, &socket, &dir.path().join("state"), &log);
        let mut daemon = Daemon {
            child,
            dir,
            socket,
            log,
            config_path,
        };
        daemon.wait_ready();
        daemon
    }

    /// The HTTP address the daemon bound most recently (its port is ephemeral).
    pub fn http_addr(&self) -> std::net::SocketAddr {
        let log = self.log();
        let line = log
            .lines()
            .rev()
            .find_map(|line| line.split("http listening on ").nth(1))
            .unwrap_or_else(|| panic!("no HTTP listener in the log:\n{log}"));
        line.split_whitespace()
            .next()
            .unwrap()
            .parse()
            .expect("an address")
    }

    /// `GET path` on the daemon's HTTP listener: (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        self.http_request("GET", path)
    }

    /// A `method` request for `path` on the HTTP listener: its status and body.
    pub fn http_request(&self, method: &str, path: &str) -> (u16, String) {
        self.try_http_request(method, path)
            .expect("an HTTP response, not a closed connection")
    }

    /// [`Self::http_request`], or `None` when the listener closed the
    /// connection unanswered (a peer over its share of connections).
    pub fn try_http_request(&self, method: &str, path: &str) -> Option<(u16, String)> {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(self.http_addr()).expect("connect to HTTP");
        stream.set_read_timeout(Some(PROMPTLY)).unwrap();
        // Written before the daemon closes it, or not: either way the
        // answer is what was read.
        let _ = write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        );
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        let code = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((code, body))
    }

    /// The daemon's state directory (where its ledger is).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Asserts that the daemon's budgets in memory equal its ledger file
    /// ([`ledger::assert_memory_matches_ledger`]), through a fresh connection.
    pub async fn assert_memory_matches_ledger(&self) {
        let mut client = self.client("books").await;
        ledger::assert_memory_matches_ledger(&mut client, &self.state_dir()).await;
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal)
            .expect("signal the daemon");
    }

    /// Kills the daemon with SIGKILL (no chance to flush anything) and waits for it.
    pub fn kill9(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.child.wait().expect("reap the daemon");
    }

    /// Starts the daemon again on the same socket, config and state directory.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(
            &self.config_path,
            &self.socket,
            &self.dir.path().join("state"),
            &self.log,
        );
        self.wait_ready();
    }

    // Polling for readiness of a child process is waiting for an event, not letting
    // time pass; a blocking sleep is fine in this synchronous helper.
    #[allow(clippy::disallowed_methods)]
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + PROMPTLY;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "daemon exited with {status} before becoming ready:\n{}",
                    self.log()
                );
            }
            // Ready = the HTTP listener is up and the agent socket accepts. The
            // log is read first, so only one probe connection is made: each holds
            // a connection slot until the daemon has seen it close.
            if self.log().contains("http listening on")
                && std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("daemon not ready within {PROMPTLY:?}:\n{}", self.log());
    }

    /// Replaces the config file the daemon was started with.
    pub fn write_config(&self, config: &str) {
        std::fs::write(&self.config_path, config).expect("write config");
    }

    /// Sends SIGHUP and waits until the daemon logged the reload's outcome
    /// (applied or refused); returns the log from that point on.
    #[allow(clippy::disallowed_methods)]
    pub fn sighup_and_wait(&self) -> String {
        let outcomes = |log: &str| {
            log.matches("configuration reloaded from").count()
                + log.matches("the old configuration stays in force").count()
        };
        let before = self.log();
        let seen = outcomes(&before);
        self.signal(nix::sys::signal::Signal::SIGHUP);
        let deadline = Instant::now() + PROMPTLY;
        while Instant::now() < deadline {
            let log = self.log();
            if outcomes(&log) > seen {
                return log[before.len()..].to_owned();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "no reload outcome logged within {PROMPTLY:?}:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The daemon's resident set size (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<daemon>/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<daemon>/status")
    }

    /// Asserts the daemon's memory stayed under [`RSS_CEILING_MIB`]; prints it.
    pub fn assert_rss_bounded(&self, when: &str) {
        let rss = self.rss_kib();
        eprintln!("daemon RSS {when}: {:.1} MiB", rss as f64 / 1024.0);
        assert!(
            rss < RSS_CEILING_MIB * 1024,
            "daemon RSS {rss} KiB {when} exceeds the {RSS_CEILING_MIB} MiB ceiling"
        );
    }

    /// How many file descriptors the daemon holds (sockets included).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("list /proc/<daemon>/fd")
            .count()
    }

    /// Waits for the daemon to exit and returns its status code.
    #[allow(clippy::disallowed_methods)]
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// A handshaken client acting as `agent`.
    pub async fn client(&self, agent: &str) -> Client {
        Client::connect(&self.socket, agent, "integration-test")
            .await
            .unwrap_or_else(|e| panic!("connect as {agent}: {e}\n{}", self.log()))
    }

    /// A raw framed connection, not yet handshaken.
    /// [`Daemon::client`], for tests of the connection cap: retries while the
    /// daemon still counts a connection that was closed a moment ago (the
    /// readiness probe's, on a loaded machine) against `max_connections`.
    pub async fn client_when_free(&self, agent: &str) -> Client {
        eventually(PROMPTLY, || async {
            Client::connect(&self.socket, agent, "integration-test")
                .await
                .ok()
        })
        .await
    }

    pub async fn raw(&self) -> Raw {
        let stream = UnixStream::connect(&self.socket).await.expect("connect");
        Raw {
            framed: Framed::new(stream, length_codec()),
        }
    }

    /// The CLI binary, pointed at this daemon.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(crate::util::cli_bin());
        cmd.arg("--socket")
            .arg(&self.socket)
            .env_remove("AUTOMATION_FRAMEWORK_AGENT");
        cmd
    }

    /// `automation-framework session` (after the global `args`) with `lines`
    /// on its stdin, closed after them: its reply lines, parsed, once it has
    /// exited 0.
    pub fn session(&self, args: &[&str], lines: &[&str]) -> Vec<serde_json::Value> {
        let mut cmd = self.cli();
        cmd.args(args);
        session(cmd, lines)
    }
}

/// Runs `cmd` (a CLI command against a daemon, as [`Daemon::cli`] or another
/// user's) as a JSON-lines session: `lines` on stdin, then EOF; the parsed
/// replies. The session must end with status 0.
pub fn session(mut cmd: Command, lines: &[&str]) -> Vec<serde_json::Value> {
    use std::io::Write as _;
    let mut child = cmd
        .arg("session")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the CLI's session");
    let mut stdin = child.stdin.take().unwrap();
    for line in lines {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The daemon process with the test flags; its log is appended to `log`.
fn spawn(
    config: &std::path::Path,
    socket: &std::path::Path,
    state: &std::path::Path,
    log: &std::path::Path,
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(env!("CARGO_BIN_EXE_automation-frameworkd"))
        .arg("--config")
        .arg(config)
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(state)
        .arg("--http")
        .arg("127.0.0.1:0")
        .arg("--log-level")
        .arg("debug")
        .env_remove("LISTEN_FDS")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("AUTOMATION_ALERT_WEBHOOK")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn automation-frameworkd")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server running inside the test process, for tests that look at the daemon's
/// state (its counters) rather than only at what it sends. Stopped when dropped.
pub struct InProcess {
    pub state: State,
    pub socket: PathBuf,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl InProcess {
    pub async fn start(config: &str) -> InProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("agent.sock");
        let config = Config::from_toml(config).expect("test config is valid");
        let perms = automation_framework::socket::SocketPerms::from_config(&config.daemon);
        let listener = automation_framework::socket::bind(&socket, &perms).expect("bind");
        let (store, snapshot) =
            automation_framework::store::Store::open(&dir.path().join("state")).expect("ledger");
        let state = State::new(config, SharedClock::system(), store, &snapshot).expect("state");
        let shutdown = CancellationToken::new();
        tokio::spawn(automation_framework::server::run(
            listener,
            state.clone(),
            shutdown.clone(),
        ));
        InProcess {
            state,
            socket,
            shutdown,
            _dir: dir,
        }
    }

    pub async fn client(&self, agent: &str) -> Client {
        Client::connect(&self.socket, agent, "integration-test")
            .await
            .unwrap_or_else(|e| panic!("connect as {agent}: {e}"))
    }

    pub async fn raw(&self) -> Raw {
        let stream = UnixStream::connect(&self.socket).await.expect("connect");
        Raw {
            framed: Framed::new(stream, length_codec()),
        }
    }

    pub fn hits(&self, limit: automation_framework::state::Limit) -> u64 {
        self.state.counters().get(limit)
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A connection that sends whatever bytes a test wants.
pub struct Raw {
    pub framed: Framed<UnixStream, LengthDelimitedCodec>,
}

impl Raw {
    pub async fn send(&mut self, frame: &ClientFrame) {
        let body = encode(frame).expect("encode");
        self.framed
            .send(Bytes::from(body))
            .await
            .expect("send frame");
    }

    /// Sends a frame; `false` once the daemon has closed the connection.
    pub async fn try_send(&mut self, frame: &ClientFrame) -> bool {
        let body = encode(frame).expect("encode");
        self.framed.send(Bytes::from(body)).await.is_ok()
    }

    pub async fn send_body(&mut self, body: Vec<u8>) {
        self.framed
            .send(Bytes::from(body))
            .await
            .expect("send body");
    }

    /// Writes bytes around the codec (for broken framing).
    pub async fn write_bytes(&mut self, bytes: &[u8]) {
        let stream = self.framed.get_mut();
        stream.write_all(bytes).await.expect("write");
        stream.flush().await.expect("flush");
    }

    pub async fn hello(&mut self, agent: &str) {
        self.send(&ClientFrame::Hello(Hello {
            version: PROTOCOL_VERSION,
            client: "raw".into(),
            agent: agent.into(),
        }))
        .await;
        match self.recv().await {
            Some(ServerFrame::Welcome(_)) => {}
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    /// The next frame, or `None` once the daemon closed the connection.
    pub async fn recv(&mut self) -> Option<ServerFrame> {
        match tokio::time::timeout(PROMPTLY, self.framed.next()).await {
            Err(_) => panic!("no frame and no close within {PROMPTLY:?}"),
            Ok(None) | Ok(Some(Err(_))) => None,
            Ok(Some(Ok(body))) => Some(decode(&body).expect("daemon sent a valid frame")),
        }
    }

    /// Asserts the daemon closes the connection (after any number of frames).
    pub async fn expect_closed(&mut self) {
        while let Some(frame) = self.recv().await {
            let _ = frame;
        }
    }

    pub fn read_buffer(&self) -> &BytesMut {
        self.framed.read_buffer()
    }
}

/// A client that stays connected and proves the daemon still serves it within its
/// normal latency.
pub struct Bystander {
    client: Client,
    /// The slowest answer so far.
    pub slowest: Duration,
}

impl Bystander {
    pub fn from_client(client: Client) -> Bystander {
        Bystander {
            client,
            slowest: Duration::ZERO,
        }
    }

    pub async fn new(daemon: &Daemon) -> Bystander {
        Bystander {
            client: daemon.client("bystander").await,
            slowest: Duration::ZERO,
        }
    }

    /// Pings and asserts an answer within [`NORMAL_LATENCY`].
    pub async fn still_served(&mut self) {
        let started = Instant::now();
        let pong = tokio::time::timeout(PROMPTLY, self.client.ping())
            .await
            .unwrap_or_else(|_| panic!("bystander not answered within {PROMPTLY:?}"))
            .expect("bystander ping");
        let took = started.elapsed();
        assert!(pong.ok);
        self.slowest = self.slowest.max(took);
        assert!(
            took < NORMAL_LATENCY,
            "bystander answered in {took:?}, over the normal {NORMAL_LATENCY:?}"
        );
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        eprintln!("bystander's slowest answer: {:?}", self.slowest);
    }
}

/// Reports five failures for `service` without admission: enough to open a breaker
/// with the default `failure_threshold`.
pub async fn fail_five(client: &mut Client, service: &str) {
    for _ in 0..5 {
        client
            .report(automation_framework::protocol::ReportRequest {
                service: Some(service.into()),
                outcome: automation_framework::protocol::Outcome::Failure,
                ..Default::default()
            })
            .await
            .expect("report answered");
    }
}

/// Polls `check` until it returns `Some`, for states the daemon reaches by
/// itself or on its real clock (a breaker's open period, a timer's check, a
/// connection's end). Panics after `within`. An `async ||` closure may borrow
/// a client mutably across the polls.
pub async fn eventually<T>(within: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A child process that is killed when the test ends, also when it panics, so a
/// failed test leaves no daemon behind.
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
