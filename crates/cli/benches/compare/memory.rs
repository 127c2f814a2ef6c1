//! Memory and start-up of the release daemon (issue 6): resident set when idle,
//! after K distinct keys and after the keyed state is trimmed, and the time from
//! spawning the process to its `READY=1`.
//!
//! The daemon is spawned here rather than with `daemon::Daemon`, because start-up
//! is timed to the sd_notify `READY=1` that systemd would wait for (the socket
//! answers slightly earlier), which needs `NOTIFY_SOCKET`. Memory comes from
//! `/proc/PID/status`: `VmRSS` (resident now) and `VmHWM` (the most ever resident).
//!
//! The keys are agent names `bench-0` … `bench-{K-1}` under one rate limit scoped
//! per agent and service, so each is one bucket in the daemon's `RateStore`. That
//! limit never denies, and its buckets are full again nanoseconds after use, so
//! any purge forgets them. To hold all K at once, the daemon starts with purges
//! an hour apart; after the load the config is rewritten to
//! `daemon.purge_interval = "1s"` and reloaded (SIGHUP), which the daemon applies
//! within a second, starting with a purge: "after trim" is seconds after the
//! load, not the default's half a minute.
//!
//! Nothing here asserts a size or a time: the figures are read off `render`.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use automation_framework_cli::load::wire::{self, Ask, Frames, Mix};
use automation_framework_cli::load::{self as load_gen, Load};
use automation_framework_client::Client;

/// How often the daemon purges during the load (apart from the purge at start):
/// not at all, in effect.
const LOAD_PURGE_INTERVAL: &str = "1h";

/// How often it purges after the load.
const PURGE_INTERVAL: Duration = Duration::from_secs(1);

/// One service, one rate limit that never denies (10^8 per second, burst 10^8)
/// keyed by agent and service (the default scope), no ledger writes, and purges
/// `purge_interval` apart.
fn config(purge_interval: &str) -> String {
    format!(
        "[daemon]\nmax_connections_per_uid = 1024\npurge_interval = \"{purge_interval}\"\n\
[services.bench]\n\
[[rate_limits]]\nname = \"open\"\nrate = 100000000\nburst = 100000000\n\
[budget]\nenabled = false\n"
    )
}

/// How long a daemon gets to say `READY=1`.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// A bucket of this limit refills one cell every 10 ns, and the load takes one cell
/// per admission, so every bucket is full again long before this has passed after
/// the last one; then the next purge forgets them all.
const BUCKETS_FULL_AFTER: Duration = Duration::from_millis(10);

/// How long to wait for the resident set to come down after the reload.
const TRIM_WITHIN: Duration = Duration::from_secs(10);

/// The resident set counts as settled when it has not moved by more than this…
const SETTLED_BY: u64 = 256 * 1024;

/// …for this long (two purges).
const SETTLED_FOR: Duration = Duration::from_secs(2);

/// The load generator's fastest shape against the daemon on two cores. Each
/// connection steps through the keys one by one from where it starts; connection
/// `i` starts at `i * ceil(K / CONNECTIONS)`, so together they cover the K keys
/// once each has made `ceil(K / CONNECTIONS)` admissions.
const CONNECTIONS: usize = 16;
const PIPELINE: usize = 32;

/// What one `measure` found. Sizes in bytes.
#[derive(Debug, Clone)]
pub struct MemoryReport {
    /// Distinct keys (agent names) admitted at least once.
    pub keys: usize,
    /// Admissions the covering run counted (each followed by its report): a lower
    /// bound, see `run`.
    pub admits: u64,
    /// How long the load ran.
    pub load_time: Duration,
    /// Resident set after `READY=1` and one ping: the median over every start.
    pub idle_rss: u64,
    /// The largest of those.
    pub idle_rss_max: u64,
    /// Resident set right after the load.
    pub loaded_rss: u64,
    /// The most ever resident (`VmHWM`) by the end of the load.
    pub loaded_peak: u64,
    /// Resident set once it settled after the reload to a short purge interval
    /// (or when `TRIM_WITHIN` ran out).
    pub trimmed_rss: u64,
    /// From that reload until the resident set reached (within `SETTLED_BY`)
    /// `trimmed_rss`; `None` when it never came down.
    pub trimmed_after: Option<Duration>,
    /// The daemon's `daemon.purge_interval` after the load.
    pub purge_interval: Duration,
    /// Spawn to `READY=1`, every start, in order.
    pub ready: Vec<Duration>,
}

impl MemoryReport {
    pub fn ready_median(&self) -> Duration {
        median(&self.ready)
    }

    pub fn ready_max(&self) -> Duration {
        self.ready.iter().copied().max().unwrap_or_default()
    }
}

/// Starts the daemon once untimed, then `ready_starts` times (timing each to
/// `READY=1` and taking its idle resident set), then once more to load it with
/// `keys` distinct agent names, switch it to frequent purges and watch its memory
/// come back down.
///
/// # Errors
/// A daemon that does not start or answer, or a load with errors.
pub fn measure(keys: usize, ready_starts: usize) -> anyhow::Result<MemoryReport> {
    let keys = keys.max(1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // One untimed start first: right after a build the binary is not in the page
    // cache yet, and the first start would time the disk.
    drop(Spawned::start()?);
    let mut ready = Vec::with_capacity(ready_starts);
    let mut idle = Vec::with_capacity(ready_starts + 1);
    for _ in 0..ready_starts {
        let daemon = Spawned::start()?;
        ready.push(daemon.ready_after);
        idle.push(runtime.block_on(daemon.idle_rss())?);
    }

    let mut daemon = Spawned::start()?;
    idle.push(runtime.block_on(daemon.idle_rss())?);
    let (admits, load_time) = runtime.block_on(load(&daemon.socket, keys))?;
    let (loaded_rss, loaded_peak) = daemon.memory()?;
    wait(BUCKETS_FULL_AFTER);
    let reloaded = daemon.reload(&config(
        &humantime::format_duration(PURGE_INTERVAL).to_string(),
    ))?;
    let (trimmed_rss, trimmed_after) = watch_trim(&daemon, loaded_rss, reloaded)?;
    daemon.check_alive()?;

    idle.sort_unstable();
    Ok(MemoryReport {
        keys,
        admits,
        load_time,
        idle_rss: idle[idle.len() / 2],
        idle_rss_max: idle.last().copied().unwrap_or_default(),
        loaded_rss,
        loaded_peak,
        trimmed_rss,
        trimmed_after,
        purge_interval: PURGE_INTERVAL,
        ready,
    })
}

/// A few lines for people, with issue 6's targets beside the figures.
pub fn render(report: &MemoryReport) -> String {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let mut out = format!(
        "memory: {} keys (agent names), daemon.purge_interval {:?}\n",
        report.keys, report.purge_interval
    );
    out.push_str(&format!(
        "  idle RSS {:.1} MiB (median of {} starts, max {:.1} MiB)   target <= 24 MiB\n",
        mib(report.idle_rss),
        report.ready.len() + 1,
        mib(report.idle_rss_max)
    ));
    out.push_str(&format!(
        "  after {} keys ({} admit+report pairs in {:.1} s): RSS {:.1} MiB, peak (VmHWM) {:.1} MiB   target <= 256 MiB\n",
        report.keys,
        report.admits,
        report.load_time.as_secs_f64(),
        mib(report.loaded_rss),
        mib(report.loaded_peak)
    ));
    match report.trimmed_after {
        Some(after) => out.push_str(&format!(
            "  after trim: RSS {:.1} MiB, {:.1} s after a reload to purge every {:?}   target < 64 MiB\n",
            mib(report.trimmed_rss),
            after.as_secs_f64(),
            report.purge_interval
        )),
        None => out.push_str(&format!(
            "  after trim: RSS {:.1} MiB: did not come down within {:?}   target < 64 MiB\n",
            mib(report.trimmed_rss),
            TRIM_WITHIN
        )),
    }
    if report.ready.is_empty() {
        out.push_str("  start to READY=1: not measured (0 starts)\n");
    } else {
        out.push_str(&format!(
            "  start to READY=1: median {:.1} ms, max {:.1} ms over {} starts (after one untimed)   target <= 50 ms\n",
            report.ready_median().as_secs_f64() * 1e3,
            report.ready_max().as_secs_f64() * 1e3,
            report.ready.len()
        ));
    }
    out
}

/// The daemon as a child process with a fake `NOTIFY_SOCKET`, on its own temp
/// dir; killed when dropped.
struct Spawned {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
    /// Where the daemon's sd_notify messages arrive.
    notify: UnixDatagram,
    ready_after: Duration,
}

impl Spawned {
    /// Spawns the daemon on a fresh state directory (so a new ledger is created)
    /// and waits for its `READY=1`, timed from just before the spawn (so exec,
    /// config, ledger and socket are all in it).
    fn start() -> anyhow::Result<Spawned> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("agent.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(&config, self::config(LOAD_PURGE_INTERVAL))?;
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path)
            .with_context(|| format!("binding {}", notify_path.display()))?;
        notify.set_read_timeout(Some(Duration::from_millis(100)))?;
        let begin = Instant::now();
        let child = super::daemon::command(dir.path(), &config, &socket)?
            .env("NOTIFY_SOCKET", &notify_path)
            .spawn()
            .with_context(|| {
                format!(
                    "spawning {} (build it with `cargo build --release`)",
                    super::daemon::binary().display()
                )
            })?;
        let mut daemon = Spawned {
            child,
            dir,
            socket,
            notify,
            ready_after: Duration::ZERO,
        };
        daemon.await_ready(begin)?;
        daemon.ready_after = begin.elapsed();
        Ok(daemon)
    }

    /// Waits for a notification with `READY=1` (at start, or ending a reload) and
    /// returns all of it.
    fn await_ready(&mut self, since: Instant) -> anyhow::Result<String> {
        let mut buf = [0u8; 4096];
        loop {
            match self.notify.recv(&mut buf) {
                Ok(n) => {
                    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if message.lines().any(|line| line == "READY=1") {
                        return Ok(message);
                    }
                }
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(err) => return Err(err).context("reading the notify socket"),
            }
            self.check_alive()?;
            if since.elapsed() > READY_WITHIN {
                bail!("no READY=1 within {READY_WITHIN:?}:\n{}", self.log());
            }
        }
    }

    /// Rewrites the config file as `text` and has the daemon reload it (SIGHUP);
    /// returns when the signal was sent, once the daemon said `READY=1` again,
    /// which ends a reload.
    fn reload(&mut self, text: &str) -> anyhow::Result<Instant> {
        std::fs::write(self.dir.path().join("config.toml"), text)?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        let sent = Instant::now();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP)?;
        let message = self.await_ready(sent)?;
        if message.contains("STATUS=reload failed") {
            bail!("the daemon refused the reload: {message}");
        }
        Ok(sent)
    }

    /// `VmRSS` and `VmHWM`, in bytes.
    fn memory(&self) -> anyhow::Result<(u64, u64)> {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .with_context(|| format!("no {name} in {path}"))?;
            let kib: u64 = line
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .with_context(|| format!("{name}{line} in {path}"))?;
            Ok(kib * 1024)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// The resident set after one ping (a connection, a handshake, a request), with
    /// that connection closed again.
    async fn idle_rss(&self) -> anyhow::Result<u64> {
        let mut client = Client::connect(&self.socket, "bench", "memory-bench").await?;
        client.ping().await?;
        drop(client);
        Ok(self.memory()?.0)
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the daemon exited with {status}:\n{}", self.log());
        }
        Ok(())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Admits (and reports) until every one of `keys` agent names was admitted at
/// least once: a one-second calibration, then a run long enough (with a margin)
/// for every connection to step through its share of the keys, repeated longer if
/// one fell short. Returns the admissions of the run that covered the keys, and
/// its length.
async fn load(socket: &Path, keys: usize) -> anyhow::Result<(u64, Duration)> {
    let ask = Arc::new(Ask {
        socket: socket.to_owned(),
        mix: Mix::Pairs,
        service: "bench".into(),
        keys,
        agent: "bench".into(),
        lease: None,
    });
    let frames = Arc::new(Frames::new(&ask)?);
    let share = keys.div_ceil(CONNECTIONS) as u64;
    let mut duration = Duration::from_secs(1);
    for _ in 0..4 {
        let admits = run(&ask, &frames, share, duration).await?;
        let fewest = admits.iter().copied().min().unwrap_or(0);
        if fewest >= share {
            return Ok((admits.iter().sum(), duration));
        }
        let rate = fewest.max(1) as f64 / duration.as_secs_f64();
        duration = Duration::from_secs_f64(share as f64 / rate * 1.2 + 0.5).max(duration * 2);
    }
    bail!("{keys} keys were not all admitted after four runs")
}

/// One load of `duration` without warm-up (every admission counts towards the
/// keys), connection `i` starting at key `i * share`; returns the admissions each
/// connection counted. Each counted pair is one admission, and an admission may
/// be counted without its report, so half a connection's count is a lower bound.
async fn run(
    ask: &Arc<Ask>,
    frames: &Arc<Frames>,
    share: u64,
    duration: Duration,
) -> anyhow::Result<Vec<u64>> {
    let load = Load {
        connections: CONNECTIONS,
        pipeline: PIPELINE,
        warmup: Duration::ZERO,
        duration,
    };
    let admits = Arc::new(std::sync::Mutex::new(Vec::with_capacity(CONNECTIONS)));
    let tally = load_gen::run(&load, |index, window| {
        let ask = Arc::clone(ask);
        let frames = Arc::clone(frames);
        let admits = Arc::clone(&admits);
        let first_key = index * usize::try_from(share).unwrap_or(usize::MAX);
        async move {
            let tally = wire::drive(&ask, &frames, first_key, PIPELINE, window).await?;
            admits
                .lock()
                .expect("no panic while held")
                .push(tally.ops / 2);
            Ok(tally)
        }
    })
    .await?;
    if tally.errors > 0 || tally.denied > 0 {
        bail!(
            "the load was answered with {} errors and {} denials (first error: {:?})",
            tally.errors,
            tally.denied,
            tally.first_error
        );
    }
    let admits = admits.lock().expect("no panic while held").clone();
    Ok(admits)
}

/// Polls the resident set until it has settled below `loaded` (unchanged for
/// `SETTLED_FOR`) or `TRIM_WITHIN` has passed since `since`. Returns the last
/// reading and when it was first reached.
fn watch_trim(
    daemon: &Spawned,
    loaded: u64,
    since: Instant,
) -> anyhow::Result<(u64, Option<Duration>)> {
    let mut level = loaded;
    let mut level_since = since;
    loop {
        let (rss, _) = daemon.memory()?;
        let now = Instant::now();
        if rss.abs_diff(level) > SETTLED_BY {
            level = rss;
            level_since = now;
        }
        let came_down = level + SETTLED_BY < loaded;
        if came_down && now - level_since >= SETTLED_FOR {
            return Ok((level, Some(level_since - since)));
        }
        if now - since >= TRIM_WITHIN {
            return Ok((rss, came_down.then(|| level_since - since)));
        }
        wait(Duration::from_millis(50));
    }
}

/// Blocks the bench's thread while the daemon (another process) does its part.
#[allow(clippy::disallowed_methods)]
fn wait(duration: Duration) {
    // Another process's timers and work: there is no clock of ours to advance.
    std::thread::sleep(duration);
}

fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}
