//! The ledger benchmark (issue 3): what durable budgets cost an agent.
//!
//! Part 1 runs the real daemon (`automation-frameworkd`, release build) on a temp
//! socket and state directory, and drives it through the library's client with 1,
//! 16 and 64 connections. Each connection loops `admit` (cost $0.000001) then
//! `report` of that reservation (cost $0.000001), one request at a time; the
//! latency of the pair, from sending the admit to receiving the report's reply,
//! goes into an HDR histogram. Two configurations: budget ON (a $1,000,000 global
//! budget: every admit writes a reservation and every report a charge to the
//! ledger, each acknowledged only after its group commit) and budget OFF (no
//! budget: nothing touches the disk). A rate limit far above what the machine can
//! reach replaces the default one, so nothing is ever denied, and
//! `daemon.max_connections_per_uid` is raised so the 64 connections of one uid fit.
//! The daemon's own group-commit figures come from its `/metrics` on an ephemeral
//! loopback port.
//!
//! Part 2 opens `store::Store` in process and drives `write` (one charge per job)
//! from 1, 16 and 64 tokio tasks, printing the store's group-commit statistics.
//!
//! Run: `cargo bench --bench ledger`. `LEDGER_BENCH_SECS` sets the measured
//! seconds per daemon cell (default 3, after 0.5 s of warm-up); the store cells
//! run 2 s each. `TMPDIR` chooses where the ledgers go (the disk is what is
//! measured). About 30 s in all with the defaults.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use automation_framework::money::Usd;
use automation_framework::protocol::{AdmitRequest, ReportRequest};
use automation_framework::store::{Entry, Store};
use automation_framework_client::Client;

/// Connection (or task) counts of every section.
const CONNECTIONS: [usize; 3] = [1, 16, 64];
/// Unmeasured time at the start of each daemon cell.
const WARMUP: Duration = Duration::from_millis(500);
/// Measured time of each daemon cell unless `LEDGER_BENCH_SECS` says otherwise.
const DEFAULT_SECS: f64 = 3.0;
/// Measured time of each in-process store cell.
const STORE_SECS: Duration = Duration::from_secs(2);
/// What every admission estimates and every report charges, in USD.
const COST: f64 = 0.000_001;
/// How long the daemon gets to become ready, or to exit after SIGTERM.
const PROMPTLY: Duration = Duration::from_secs(10);

/// Room for every connection of one uid (the bench's 64, plus its checks).
const DAEMON: &str = "[daemon]\nmax_connections_per_uid = 1024\n";
/// Never denies: 10^8 per second with a burst of 10^8, per agent and service.
const RATE_LIMIT: &str = "[[rate_limits]]\nname = \"open\"\nrate = 100000000\nburst = 100000000\n";
const BUDGET_ON: &str = "[budget]\nlimit = 1000000.0\n";
const BUDGET_OFF: &str = "[budget]\nenabled = false\n";

fn main() {
    let secs = match std::env::var("LEDGER_BENCH_SECS") {
        Ok(text) => match text.parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 => s,
            _ => {
                eprintln!("LEDGER_BENCH_SECS={text:?} is not a positive number of seconds");
                std::process::exit(2);
            }
        },
        Err(_) => DEFAULT_SECS,
    };
    let measure = Duration::from_secs_f64(secs);
    let daemon = PathBuf::from(env!("CARGO_BIN_EXE_automation-frameworkd"));
    // The client side: one thread, so the daemon keeps the other core.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        println!("ledger benchmark (issue 3)");
        println!("daemon:      {}", daemon.display());
        println!(
            "temp dir:    {} (ledgers are written here)",
            std::env::temp_dir().display()
        );
        println!(
            "cores:       {}",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!(
            "each cell:   {:.1} s warm-up, {secs:.1} s measured; per connection: admit, then report, one request in flight; client on one thread",
            WARMUP.as_secs_f64()
        );
        println!();
        daemon_section(&daemon, measure).await;
        println!();
        store_section().await;
    });
}

// === Part 1: the daemon ===

/// One measured cell.
struct Cell {
    budget: bool,
    connections: usize,
    /// Pairs completed in the measured window, and its length.
    pairs: u64,
    secs: f64,
    latency: Histogram<u64>,
    /// The daemon's group commits over the whole cell (warm-up included).
    commits: Option<CommitFigures>,
    /// The ledger's own account of the money, checked against `all_pairs`.
    check: String,
}

/// From the daemon's `/metrics`.
#[derive(Debug, Clone, Copy)]
struct CommitFigures {
    commits: f64,
    jobs: f64,
    seconds: f64,
    /// The smallest bucket bound that holds every batch.
    largest_at_most: Option<f64>,
}

async fn daemon_section(daemon: &Path, measure: Duration) {
    println!("== 1. admit+report through the daemon ==");
    let mut cells = Vec::new();
    for connections in CONNECTIONS {
        for budget in [false, true] {
            let cell = run_cell(daemon, budget, connections, measure).await;
            eprintln!(
                "  done: budget {}, {connections} connection(s): {:.0} pairs/s",
                if budget { "ON" } else { "OFF" },
                cell.pairs as f64 / cell.secs
            );
            cells.push(cell);
        }
    }
    println!(
        "{:<7} {:>5} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8} {:>9} {:>9}",
        "budget",
        "conns",
        "pairs/s",
        "p50 µs",
        "p99 µs",
        "max µs",
        "ON/OFF",
        "commits",
        "jobs/cmt",
        "µs/cmt"
    );
    for cell in &cells {
        let rate = cell.pairs as f64 / cell.secs;
        let ratio = if cell.budget {
            cells
                .iter()
                .find(|c| !c.budget && c.connections == cell.connections)
                .map_or("-".to_owned(), |off| {
                    format!("{:.2}", rate / (off.pairs as f64 / off.secs))
                })
        } else {
            "-".to_owned()
        };
        let (commits, per_commit, commit_us) = match cell.commits {
            Some(c) if c.commits > 0.0 => (
                format!("{:.0}", c.commits),
                format!("{:.2}", c.jobs / c.commits),
                format!("{:.0}", c.seconds * 1e6 / c.commits),
            ),
            Some(_) => ("0".into(), "-".into(), "-".into()),
            None => ("?".into(), "?".into(), "?".into()),
        };
        println!(
            "{:<7} {:>5} {:>9.0} {:>8} {:>8} {:>8} {:>9} {:>8} {:>9} {:>9}",
            if cell.budget { "ON" } else { "OFF" },
            cell.connections,
            rate,
            cell.latency.value_at_quantile(0.50),
            cell.latency.value_at_quantile(0.99),
            cell.latency.max(),
            ratio,
            commits,
            per_commit,
            commit_us
        );
    }
    println!();
    println!("ON/OFF: budget-ON pairs/s ÷ budget-OFF pairs/s at the same connection count (issue 3's target: ≥ 0.50 at 16).");
    println!("commits, jobs/cmt, µs/cmt: the daemon's ledger group commits over the whole cell (warm-up included),");
    println!("  from /metrics: transactions, ledger jobs per transaction (each admit and each report is one job),");
    println!("  and time per transaction (apply + commit; the fsync charges wait for is the syncer thread's, not included).");
    for cell in cells.iter().filter(|c| c.budget) {
        let largest = cell
            .commits
            .and_then(|c| c.largest_at_most)
            .map_or_else(|| "?".to_owned(), |b| format!("≤ {b:.0}"));
        println!(
            "  ON, {:>2} connection(s): largest batch {largest} jobs; ledger check: {}",
            cell.connections, cell.check
        );
    }
}

async fn run_cell(daemon: &Path, budget: bool, connections: usize, measure: Duration) -> Cell {
    let config = format!(
        "{DAEMON}\n{}\n{RATE_LIMIT}",
        if budget { BUDGET_ON } else { BUDGET_OFF }
    );
    let running = Daemon::start(daemon, &config).await;
    let mut clients = Vec::with_capacity(connections);
    for i in 0..connections {
        let client = Client::connect(&running.socket, &format!("bench-{i}"), "ledger-bench")
            .await
            .unwrap_or_else(|e| panic!("connect: {e}\n{}", running.log()));
        clients.push(client);
    }
    let from = Instant::now() + WARMUP;
    let until = from + measure;
    let workers: Vec<_> = clients
        .into_iter()
        .map(|client| tokio::spawn(worker(client, from, until)))
        .collect();
    let mut latency = histogram();
    let (mut pairs, mut all_pairs, mut last) = (0, 0, from);
    for worker in workers {
        let done = worker.await.expect("a worker panicked");
        latency.add(&done.latency).expect("histograms of one shape");
        pairs += done.pairs;
        all_pairs += done.all_pairs;
        last = last.max(done.last);
    }
    let check = ledger_check(&running, budget, all_pairs).await;
    let commits = running.commit_figures();
    running.stop().await;
    Cell {
        budget,
        connections,
        pairs,
        secs: last.duration_since(from).as_secs_f64().max(1e-9),
        latency,
        commits,
        check,
    }
}

struct Worker {
    latency: Histogram<u64>,
    pairs: u64,
    all_pairs: u64,
    last: Instant,
}

/// One connection: admit, report, repeat, until `until`; pairs started at or
/// after `from` are measured.
async fn worker(mut client: Client, from: Instant, until: Instant) -> Worker {
    let mut out = Worker {
        latency: histogram(),
        pairs: 0,
        all_pairs: 0,
        last: from,
    };
    loop {
        let sent = Instant::now();
        if sent >= until {
            return out;
        }
        let admitted = client
            .admit(AdmitRequest {
                service: "svc".into(),
                cost: Some(COST),
                ..Default::default()
            })
            .await
            .expect("admit");
        assert!(admitted.allowed, "admission denied: {:?}", admitted.reason);
        let reported = client
            .report(ReportRequest {
                reservation: admitted.reservation,
                cost: Some(COST),
                ..Default::default()
            })
            .await
            .expect("report");
        assert!(
            !reported.duplicate,
            "a fresh reservation reported as duplicate"
        );
        let done = Instant::now();
        out.all_pairs += 1;
        if sent >= from {
            out.latency.saturating_record(micros(done - sent));
            out.pairs += 1;
            out.last = done;
        }
    }
}

/// Budget ON: the global budget must hold exactly one micro-dollar per pair, and
/// no reservation may be left open.
async fn ledger_check(daemon: &Daemon, budget: bool, all_pairs: u64) -> String {
    let mut client = Client::connect(&daemon.socket, "bench-check", "ledger-bench")
        .await
        .expect("connect for the check");
    let status = client.status().await.expect("status");
    if !budget {
        return format!("store {}", status.store);
    }
    let spent = client.budget(None).await.expect("budget").spent;
    let spent_micros = (spent * 1e6).round() as u64;
    let verdict = if spent_micros == all_pairs && status.open_reservations == 0 {
        "ok"
    } else {
        "MISMATCH"
    };
    format!(
        "{verdict}: ${spent:.6} spent = {spent_micros} charges of $0.000001 for {all_pairs} pairs, {} open reservation(s), store {}",
        status.open_reservations, status.store
    )
}

/// A daemon process on its own temp dir; killed if dropped without `stop`.
struct Daemon {
    child: Option<Child>,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Daemon {
    async fn start(binary: &Path, config: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("a temp dir");
        let socket = dir.path().join("agent.sock");
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).expect("write the config");
        let log = std::fs::File::create(dir.path().join("daemon.log")).expect("the log file");
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config_path)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            // An ephemeral loopback port, for /metrics; it is read from the log.
            .args(["--http", "127.0.0.1:0", "--log-level", "info"])
            .env_remove("LISTEN_FDS")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn automation-frameworkd");
        let mut daemon = Daemon {
            child: Some(child),
            dir,
            socket,
        };
        let deadline = Instant::now() + PROMPTLY;
        loop {
            if let Some(status) = daemon.child_mut().try_wait().expect("try_wait") {
                panic!("the daemon exited with {status}:\n{}", daemon.log());
            }
            if std::os::unix::net::UnixStream::connect(&daemon.socket).is_ok()
                && daemon.http_addr().is_some()
            {
                return daemon;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon was not ready within {PROMPTLY:?}:\n{}",
                daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("the daemon is running")
    }

    fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(self.dir.path().join("daemon.log")) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    fn http_addr(&self) -> Option<SocketAddr> {
        let log = self.log();
        let rest = log
            .lines()
            .find_map(|l| l.split("http listening on ").nth(1))?;
        rest.split_whitespace().next()?.parse().ok()
    }

    /// The ledger's group-commit histograms from `/metrics`.
    fn commit_figures(&self) -> Option<CommitFigures> {
        let mut stream = std::net::TcpStream::connect(self.http_addr()?).ok()?;
        stream.set_read_timeout(Some(PROMPTLY)).ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let value = |name: &str| -> Option<f64> {
            response.lines().find_map(|line| {
                let (key, number) = line.split_once(' ')?;
                (key == name).then(|| number.trim().parse().ok())?
            })
        };
        let jobs = "automation_framework_store_commit_jobs";
        let duration = "automation_framework_store_commit_duration_seconds";
        let commits = value(&format!("{jobs}_count")).unwrap_or(0.0);
        let bucket_prefix = format!("{jobs}_bucket{{le=\"");
        let largest_at_most = response
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(&bucket_prefix)?;
                let (bound, count) = rest.split_once("\"} ")?;
                Some((
                    bound.parse::<f64>().ok()?,
                    count.trim().parse::<f64>().ok()?,
                ))
            })
            .filter(|(_, count)| *count >= commits)
            .map(|(bound, _)| bound)
            .reduce(f64::min);
        Some(CommitFigures {
            commits,
            jobs: value(&format!("{jobs}_sum")).unwrap_or(0.0),
            seconds: value(&format!("{duration}_sum")).unwrap_or(0.0),
            largest_at_most,
        })
    }

    /// SIGTERM, and wait for the drain (SIGKILL if it takes too long).
    async fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + PROMPTLY;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!("the daemon did not exit within {PROMPTLY:?} of SIGTERM; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// === Part 2: the store in process ===

async fn store_section() {
    println!("== 2. store::Store::write in process (one charge per job) ==");
    println!(
        "{:>5} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>9}",
        "tasks",
        "writes/s",
        "p50 µs",
        "p99 µs",
        "max µs",
        "batches",
        "mean job",
        "largest",
        "µs/batch"
    );
    for tasks in CONNECTIONS {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (store, _snapshot) = Store::open(dir.path()).expect("open the ledger");
        let until = Instant::now() + STORE_SECS;
        let started = Instant::now();
        let workers: Vec<_> = (0..tasks)
            .map(|task| tokio::spawn(store_worker(store.clone(), task, until)))
            .collect();
        let mut latency = histogram();
        let mut writes = 0;
        for worker in workers {
            let (hist, n) = worker.await.expect("a store worker panicked");
            latency.add(&hist).expect("histograms of one shape");
            writes += n;
        }
        let secs = started.elapsed().as_secs_f64();
        let stats = store.stats();
        let batches = stats.batches.load(Ordering::Relaxed);
        let jobs = stats.jobs.load(Ordering::Relaxed);
        let largest = stats.largest_batch.load(Ordering::Relaxed);
        let commit_micros = stats.commit_micros.load(Ordering::Relaxed);
        store.close();
        let per = |total: u64| {
            if batches == 0 {
                "-".to_owned()
            } else {
                format!("{:.1}", total as f64 / batches as f64)
            }
        };
        println!(
            "{:>5} {:>9.0} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>9}",
            tasks,
            writes as f64 / secs,
            latency.value_at_quantile(0.50),
            latency.value_at_quantile(0.99),
            latency.max(),
            batches,
            per(jobs),
            largest,
            per(commit_micros)
        );
    }
    println!();
    println!("writes/s: acknowledged (durable) jobs per second; p50/p99/max: write() to acknowledgement;");
    println!("batches: transactions; mean job: jobs per transaction (jobs/batches); largest: largest_batch;");
    println!("µs/batch: commit_micros/batches (apply + COMMIT; the fsync is the syncer thread's, see Stats::sync_micros).");
}

async fn store_worker(store: Store, task: usize, until: Instant) -> (Histogram<u64>, u64) {
    let mut latency = histogram();
    let mut n = 0u64;
    let agent = format!("bench-{task}");
    let budgets = vec![("global".to_owned(), 0)];
    while Instant::now() < until {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let entry = Entry::Charge {
            key: format!("bench:{task}:{n}"),
            reservation: None,
            agent: agent.clone(),
            service: "svc".into(),
            amount: Usd::from_micros(1),
            budgets: budgets.clone(),
            at,
        };
        let sent = Instant::now();
        store.write(vec![entry]).await.expect("a ledger write");
        latency.saturating_record(micros(sent.elapsed()));
        n += 1;
    }
    (latency, n)
}

// === helpers ===

/// Microseconds from 1 µs to 60 s, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}
