//! The Redis peer of the comparison: a local `redis-server` on a temp Unix socket,
//! and a benchmark connection that asks it for a GCRA rate-limit decision
//! (`gcra.lua`, through EVALSHA) per request, under the same closed-loop load as
//! the daemon and the floor.
//!
//! This is the usual way to share a rate limit between processes without a
//! sidecar, so it is the number the daemon has to beat: each request is one
//! round trip to a single-threaded server that runs a short Lua script (a GET, a
//! little arithmetic, a SET with expiry).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::BytesMut;
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode;
use redis_protocol::resp2::types::{OwnedFrame as Value, Resp2Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use automation_framework_cli::load::{Tally, Window};

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
    /// found, so the comparison can run without Redis: `crates/cli/benches/install-redis`
    /// installs it.
    ///
    /// # Errors
    /// The server could not be started, exited, or did not listen in time.
    pub fn start() -> anyhow::Result<Option<RedisServer>> {
        let Some(binary) = find_binary() else {
            eprintln!(
                "redis: no redis-server on PATH or at /usr/bin/redis-server; \
                 skipping the Redis peer (crates/cli/benches/install-redis installs it)"
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
/// The loop is the daemon driver's (`bench::wire`): fill the pipeline and write
/// it in one go, wait for one reply, take every reply already read, refill. So
/// "pipeline D" is D requests outstanding on one socket, refilled one by one as
/// replies come back, and each request's latency runs from queueing it for the
/// write to reading its reply. `redis-protocol` packs the commands (once, as
/// bytes) and parses the replies; this loop does the socket I/O itself, as the
/// daemon's driver does, so the two targets are measured with clients of the
/// same weight. The `redis` crate's `MultiplexedConnection` (one writer task
/// fed by a channel, a oneshot per reply) was tried first: on the 2 cores that
/// the client shares with the server it cost Redis 10–35% of its measured
/// throughput (16 connections x 1: 50k/s against 77k/s with this loop). A
/// pipeline of D commands sent as one batch would not do either: it waits for
/// all D replies before sending again, so what is in flight drops to zero once
/// per batch and every request gets the latency of the slowest in its batch.
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
    let mut connection = Resp::connect(socket).await?;
    let sha = match connection
        .call(&command(&["SCRIPT", "LOAD", GCRA])?)
        .await?
    {
        Value::BulkString(sha) => String::from_utf8(sha).context("the script's SHA")?,
        other => bail!("SCRIPT LOAD of gcra.lua: {other:?}"),
    };

    // Every command packed once: a request costs the client a copy into the
    // write buffer, since it shares the cores with the server.
    let interval_us = (1_000_000.0 / RATE_PER_SECOND).to_string();
    let burst = BURST.to_string();
    let commands: Vec<Vec<u8>> = (0..keys)
        .map(|k| {
            let key = format!("bench-{k}");
            command(&["EVALSHA", &sha, "1", &key, &interval_us, &burst, "1"])
        })
        .collect::<anyhow::Result<_>>()?;

    let mut tally = Tally::new();
    let mut next_key = index;
    let mut in_flight: VecDeque<Instant> = VecDeque::with_capacity(pipeline);
    let mut out: Vec<u8> = Vec::with_capacity(pipeline * commands[0].len());
    loop {
        let sending = !window.over(Instant::now());
        if !sending && in_flight.is_empty() {
            break;
        }
        // Fill the pipeline, then write once.
        out.clear();
        while sending && in_flight.len() < pipeline {
            out.extend_from_slice(&commands[next_key % keys]);
            next_key += 1;
            in_flight.push_back(Instant::now());
        }
        if !out.is_empty() {
            connection.stream.write_all(&out).await?;
        }
        // Wait for one reply, then take every reply already read.
        let mut reply = connection.next_reply().await?;
        let read_at = Instant::now();
        loop {
            let sent = in_flight
                .pop_front()
                .context("a reply to no request in flight")?;
            match reply {
                Value::Array(fields) => match fields.first() {
                    Some(Value::Integer(allowed @ (0 | 1))) => {
                        if tally.record(&window, sent, read_at) && *allowed == 0 {
                            tally.denied += 1;
                        }
                    }
                    _ => tally.error(|| format!("unexpected reply from gcra.lua: {fields:?}")),
                },
                Value::Error(err) => tally.error(|| format!("EVALSHA: {err}")),
                other => tally.error(|| format!("unexpected reply to EVALSHA: {other:?}")),
            }
            match connection.buffered_reply()? {
                Some(more) => reply = more,
                None => break,
            }
        }
    }
    Ok(tally)
}

/// A Redis connection at the level of RESP2 frames: the socket and what has
/// been read from it but not yet taken as a reply.
struct Resp {
    stream: UnixStream,
    read: BytesMut,
}

impl Resp {
    async fn connect(socket: &Path) -> anyhow::Result<Resp> {
        let stream = UnixStream::connect(socket)
            .await
            .with_context(|| format!("connecting to Redis at {}", socket.display()))?;
        Ok(Resp {
            stream,
            read: BytesMut::with_capacity(16 * 1024),
        })
    }

    /// Sends one packed command and reads its reply (nothing else may be in
    /// flight).
    async fn call(&mut self, command: &[u8]) -> anyhow::Result<Value> {
        self.stream.write_all(command).await?;
        self.next_reply().await
    }

    /// The next reply, reading from the socket until it is all there.
    async fn next_reply(&mut self) -> anyhow::Result<Value> {
        loop {
            if let Some(reply) = self.buffered_reply()? {
                return Ok(reply);
            }
            self.read.reserve(4096);
            if self.stream.read_buf(&mut self.read).await? == 0 {
                bail!("Redis closed the connection");
            }
        }
    }

    /// The next reply if it has been read whole already. (RESP3 types never
    /// come: the connection does not send HELLO 3.)
    fn buffered_reply(&mut self) -> anyhow::Result<Option<Value>> {
        let Some((reply, len)) = decode(&self.read).context("a reply that is not RESP2")? else {
            return Ok(None);
        };
        let _ = self.read.split_to(len);
        Ok(Some(reply))
    }
}

/// A command as RESP2 sends it: an array of bulk strings.
fn command(args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let frame = Value::Array(
        args.iter()
            .map(|arg| Value::BulkString(arg.as_bytes().to_vec()))
            .collect(),
    );
    let mut packed = vec![0; frame.encode_len(false)];
    let len = encode(&mut packed, &frame, false).context("packing a Redis command")?;
    packed.truncate(len);
    Ok(packed)
}
