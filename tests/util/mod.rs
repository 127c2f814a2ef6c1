//! The harness: a real daemon process in a temp dir, and ways to talk to it.

#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use automation_framework::client::Client;
use automation_framework::clock::SharedClock;
use automation_framework::config::Config;
use automation_framework::protocol::frame::{decode, encode, length_codec};
use automation_framework::protocol::{ClientFrame, Hello, ServerFrame, PROTOCOL_VERSION};
use automation_framework::state::State;
use tokio_util::sync::CancellationToken;

/// How long to wait for something that should happen promptly (readiness, a
/// connection close). Generous because CI machines are small; never slept in full.
pub const PROMPTLY: Duration = Duration::from_secs(10);

/// A running daemon; killed when dropped.
pub struct Daemon {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon with `config` (TOML text) on a fresh socket and waits until
    /// it accepts connections.
    pub fn start(config: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("agent.sock");
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).expect("write config");
        let log = dir.path().join("daemon.log");
        let child = Command::new(env!("CARGO_BIN_EXE_automation-frameworkd"))
            .arg("--config")
            .arg(&config_path)
            .arg("--socket")
            .arg(&socket)
            .arg("--log-level")
            .arg("debug")
            .env_remove("LISTEN_FDS")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn automation-frameworkd");
        let mut daemon = Daemon {
            child,
            dir,
            socket,
            log,
        };
        daemon.wait_ready();
        daemon
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
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("daemon not ready within {PROMPTLY:?}:\n{}", self.log());
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
    pub async fn raw(&self) -> Raw {
        let stream = UnixStream::connect(&self.socket).await.expect("connect");
        Raw {
            framed: Framed::new(stream, length_codec()),
        }
    }

    /// The CLI binary, pointed at this daemon.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_automation-framework"));
        cmd.arg("--socket")
            .arg(&self.socket)
            .env_remove("AUTOMATION_FRAMEWORK_AGENT");
        cmd
    }
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
        let state = State::new(config, SharedClock::system()).expect("state");
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

/// A client that stays connected and proves the daemon still serves it.
pub struct Bystander {
    client: Client,
}

impl Bystander {
    pub async fn new(daemon: &Daemon) -> Bystander {
        Bystander {
            client: daemon.client("bystander").await,
        }
    }

    /// Pings and asserts a prompt answer.
    pub async fn still_served(&mut self) {
        let pong = tokio::time::timeout(Duration::from_secs(5), self.client.ping())
            .await
            .expect("bystander answered within 5s")
            .expect("bystander ping");
        assert!(pong.ok);
    }
}

/// Polls `check` until it returns `Some`, for conditions that depend on the
/// daemon's real clock (a breaker's open period). Panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
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
