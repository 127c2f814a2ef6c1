//! The Redis peer of the comparison: a local `redis-server` on a temp Unix socket,
//! and a benchmark connection that asks it for a GCRA rate-limit decision
//! (`gcra.lua`, through EVALSHA) per request, under the same closed-loop load as
//! the daemon and the floor.
//!
//! This is the usual way to share a rate limit between processes without a
//! sidecar, so it is the number the daemon has to beat: each request is one
//! round trip to a single-threaded server that runs a short Lua script (a GET, a
//! little arithmetic, a SET with expiry).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, ConnectionAddr, Value};

use automation_framework::bench::{Tally, Window};

/// The script, loaded with SCRIPT LOAD by every connection (the same text gives
/// the same SHA, so loading it again is harmless).
const GCRA: &str = include_str!("gcra.lua");

/// The limit of the comparison, as the daemon's `[[rate_limits]]` in it: so high
/// that nothing is ever denied, yet every request runs the whole check and
/// writes the key's new TAT.
const RATE_PER_SECOND: f64 = 100_000_000.0;
const BURST: u64 = 100_000_000;

/// How long `redis-server` gets to come up.
const PROMPTLY: Duration = Duration::from_secs(10);

/// A `redis-server` child on its own temp dir and Unix socket (no TCP port, no
/// persistence); killed and its directory removed when dropped.
pub struct RedisServer {
    child: Child,
    socket: PathBuf,
    // Dropped after `child` is killed (fields drop after `Drop::drop`).
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` and waits until its socket accepts connections.
    ///
    /// `None` (after printing why on stderr) when no `redis-server` binary is
    /// found, so the comparison can run without Redis: `benches/install-redis`
    /// installs it.
    ///
    /// # Errors
    /// The server could not be started, exited, or did not listen in time.
    pub fn start() -> anyhow::Result<Option<RedisServer>> {
        let Some(binary) = find_binary() else {
            eprintln!(
                "redis: no redis-server on PATH or at /usr/bin/redis-server; \
                 skipping the Redis peer (benches/install-redis installs it)"
            );
            return Ok(None);
        };
        // A short prefix: a Unix socket path must fit in 108 bytes.
        let dir = tempfile::Builder::new().prefix("redis-bench").tempdir()?;
        let socket = dir.path().join("redis.sock");
        let log = std::fs::File::create(dir.path().join("redis.log"))?;
        let child = Command::new(&binary)
            .arg("--port")
            .arg("0")
            .arg("--unixsocket")
            .arg(&socket)
            .args(["--unixsocketperm", "700"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut server = RedisServer { child, socket, dir };
        let deadline = Instant::now() + PROMPTLY;
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("redis-server exited with {status}:\n{}", server.log());
            }
            if std::os::unix::net::UnixStream::connect(&server.socket).is_ok() {
                return Ok(Some(server));
            }
            if Instant::now() > deadline {
                bail!(
                    "redis-server was not listening within {PROMPTLY:?}:\n{}",
                    server.log()
                );
            }
            // Waiting for another process to start listening; there is no
            // clock of ours to advance instead.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What the server wrote to its log, for error messages.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    /// SIGKILL rather than SHUTDOWN NOSAVE: with persistence off there is nothing
    /// to save, and a kill cannot hang on a busy or wedged server.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `redis-server` on PATH, else Debian's `/usr/bin/redis-server`.
fn find_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("redis-server"))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| {
        let debian = PathBuf::from("/usr/bin/redis-server");
        debian.is_file().then_some(debian)
    })
}

/// One benchmark connection: loads the script, then keeps `pipeline` EVALSHA
/// calls in flight on one connection until `window.end`, on keys `bench-{k}`
/// cycling through `keys` distinct keys from `k = index`.
///
/// "Pipeline D" is D requests outstanding on one socket, refilled one by one as
/// replies come back, as the daemon's driver (`bench::wire`) does: the
/// connection is the `redis` crate's `MultiplexedConnection`, which writes every
/// queued command in one flush and routes each reply to its caller in order, and
/// this task keeps D `send_packed_command` futures going at once. Each request's
/// latency runs from handing it to the client to its reply reaching this task,
/// so the client's own queueing is in it, as the daemon driver's is. A
/// `redis::Pipeline` of D commands was not used: it waits for all D replies
/// before sending again, so in-flight drops to zero once per batch and every
/// request gets the latency of the slowest in its batch.
///
/// # Errors
/// Connecting, loading the script, or the connection breaking.
pub async fn drive(
    socket: &Path,
    keys: usize,
    index: usize,
    pipeline: usize,
    window: Window,
) -> anyhow::Result<Tally> {
    let keys = keys.max(1);
    let pipeline = pipeline.max(1);
    let client = Client::open(ConnectionAddr::Unix(socket.to_owned()))?;
    let config = AsyncConnectionConfig::new()
        // The default 500 ms would turn a slow tail into errors; the window
        // bounds the run instead.
        .set_response_timeout(None)
        // Room for all D requests in the queue to the writer at once.
        .set_pipeline_buffer_size(pipeline);
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .with_context(|| format!("connecting to Redis at {}", socket.display()))?;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(GCRA)
        .query_async(&mut connection)
        .await
        .context("SCRIPT LOAD of gcra.lua")?;

    // Every command built once, so a request costs the client only its packing
    // and the multiplexer's queueing: the client shares the cores with the server.
    let interval_us = (1_000_000.0 / RATE_PER_SECOND).to_string();
    let commands: Vec<Cmd> = (0..keys)
        .map(|k| {
            let mut command = redis::cmd("EVALSHA");
            command
                .arg(&sha)
                .arg(1)
                .arg(format!("bench-{k}"))
                .arg(&interval_us)
                .arg(BURST)
                .arg(1);
            command
        })
        .collect();

    let mut tally = Tally::new();
    let mut next_key = index;
    // Each in-flight request owns a handle to the one connection (a handle is a
    // sender to its writer task) and gives it back with its reply.
    let mut idle: Vec<MultiplexedConnection> = vec![connection; pipeline];
    let mut in_flight = FuturesUnordered::new();
    loop {
        if !window.over(Instant::now()) {
            while let Some(mut handle) = idle.pop() {
                let command = &commands[next_key % keys];
                next_key += 1;
                let sent = Instant::now();
                in_flight.push(async move {
                    let reply = handle.send_packed_command(command).await;
                    (sent, reply, handle)
                });
            }
        }
        let Some((sent, reply, handle)) = in_flight.next().await else {
            break;
        };
        let now = Instant::now();
        idle.push(handle);
        match reply {
            Ok(Value::Array(fields)) => match fields.first() {
                Some(Value::Int(allowed @ (0 | 1))) => {
                    if tally.record(&window, sent, now) && *allowed == 0 {
                        tally.denied += 1;
                    }
                }
                _ => tally.error(|| format!("unexpected reply from gcra.lua: {fields:?}")),
            },
            Ok(Value::ServerError(err)) => tally.error(|| format!("EVALSHA: {err:?}")),
            Ok(other) => tally.error(|| format!("unexpected reply to EVALSHA: {other:?}")),
            Err(err) if err.is_connection_dropped() || err.is_unrecoverable_error() => {
                return Err(err).context("the Redis connection broke");
            }
            Err(err) => tally.error(|| format!("EVALSHA: {err}")),
        }
    }
    Ok(tally)
}
