//! Issue 15's durability split, seen from the kernel. A reservation is written
//! to the ledger before its admit is answered but not fsync'd on its own; a
//! charge is fsync'd before its report is answered. A power loss cannot be made
//! here (nor can the page cache be dropped under a running daemon), so the test
//! shows the mechanism instead: it runs the real daemon under
//! `strace -f -e trace=fsync,fdatasync` and counts the syncs of all its threads
//! (the ledger's writer `af-ledger` and syncer `af-ledger-sync` are the only ones
//! that sync once it serves) while a client admits and reports, then kills the
//! daemon with SIGKILL and reads the ledger file: every acknowledged
//! reservation and charge is in it.
//!
//! Prints SKIPPED where strace is missing or may not trace (`.ci/faults`
//! installs it and runs this test too).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use automation_framework::protocol::{AdmitRequest, ReportRequest};
use automation_framework_client::Client;
use rusqlite::{Connection, OpenFlags};

use crate::util::{eventually, KillOnDrop, PROMPTLY};

/// Admits per measured window. Each is its own batch (one client, one request
/// in flight) and appends a frame or two to the WAL; 2 × 64 of them stay far
/// below the 2,048 pages (a quarter of the WAL's limit) at which the ledger's
/// checkpoint thread first checkpoints (and a checkpoint syncs even under
/// `synchronous=NORMAL`). The test checks that no checkpoint ran
/// rather than trusting this arithmetic: a checkpoint syncs the database file.
const ADMITS: usize = 64;

const CONFIG: &str = "rate_limits = []\n[budget]\nlimit = 1000000.0\norphan_timeout = \"1h\"\n";

/// One fsync or fdatasync from strace's output: thread, start time, the file.
#[derive(Debug)]
struct Sync {
    #[allow(dead_code)] // shown when an assertion fails
    tid: u32,
    at: f64,
    line: String,
}

#[tokio::test]
async fn reservations_are_written_without_fsync_and_charges_with_one() {
    if let Some(why) = strace_unusable() {
        println!("SKIPPED reservations_are_written_without_fsync_and_charges_with_one: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (socket, state, trace) = (
        dir.path().join("agent.sock"),
        dir.path().join("state"),
        dir.path().join("strace.txt"),
    );
    let config = dir.path().join("config.toml");
    std::fs::write(&config, CONFIG).expect("write config");
    let log = std::fs::File::create(dir.path().join("daemon.log")).expect("log file");
    let mut strace = KillOnDrop(
        Command::new("strace")
            .args(["-f", "-qq", "-ttt", "-y", "-e", "signal=none"])
            .args(["-e", "trace=fsync,fdatasync", "-o"])
            .arg(&trace)
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_automation-frameworkd"))
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state)
            .args(["--http", "127.0.0.1:0", "--log-level", "info"])
            .env_remove("LISTEN_FDS")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("AUTOMATION_ALERT_WEBHOOK")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn strace"),
    );
    let mut client = eventually(PROMPTLY, || async {
        Client::connect(&socket, "durable", "durability-test")
            .await
            .ok()
    })
    .await;
    // Serving now, so strace's child has become the daemon.
    let mut daemon = KillDaemon(Some(traced_child(strace.id()).await));

    // (a) Reservations alone: written, not synced.
    let (admitted, first) = timed(admit_many(&mut client)).await;
    // (b) One charge: exactly one sync, of the WAL.
    let report = ReportRequest {
        reservation: Some(admitted[0]),
        cost: Some(0.000_001),
        ..Default::default()
    };
    let (reply, charge) = timed(client.report(report)).await;
    assert!(reply.expect("report").ok);
    // (c) Back to reservations alone after the charge: the switch back holds.
    let (more, second) = timed(admit_many(&mut client)).await;

    // SIGKILL: nothing is flushed or closed; what the ledger holds now is what
    // a kill -9 leaves.
    daemon.kill();
    strace.wait().expect("strace exits with the daemon");
    let syncs = parse(&std::fs::read_to_string(&trace).expect("read strace's output"));
    let ours = |window: (f64, f64)| -> Vec<&Sync> {
        syncs
            .iter()
            .filter(|s| s.at >= window.0 && s.at <= window.1)
            .collect()
    };
    let checkpoints: Vec<&Sync> = syncs
        .iter()
        .filter(|s| s.at >= first.0 && s.line.contains(".sqlite3>"))
        .collect();
    assert!(
        checkpoints.is_empty(),
        "a checkpoint ran in the measured windows (it syncs even reservations); ADMITS is too large: {checkpoints:#?}"
    );
    let reserving = [ours(first), ours(second)].concat();
    assert!(
        reserving.is_empty(),
        "{} reservation-only batches made syncs: {reserving:#?}",
        2 * ADMITS
    );
    let charging = ours(charge);
    assert_eq!(
        charging.len(),
        1,
        "a batch with one charge makes exactly one sync: {charging:#?}"
    );
    assert!(
        charging[0].line.contains(".sqlite3-wal>"),
        "the charge's sync is the WAL's: {}",
        charging[0].line
    );

    // Every acknowledged reservation and the charge survived the SIGKILL.
    let (open, charged) = ledger_contents(&state);
    let expected: BTreeSet<u64> = admitted[1..].iter().chain(&more).copied().collect();
    assert_eq!(open, expected, "the open reservations in the ledger");
    assert_eq!(charged, vec![format!("reservation:{}", admitted[0])]);
}

/// Why this test cannot trace here, if it cannot.
fn strace_unusable() -> Option<String> {
    match Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Err(e) => Some(format!(
            "strace is not installed ({e}); `apt-get install strace`"
        )),
        Ok(status) if !status.success() => Some(format!(
            "strace cannot trace here ({status}; ptrace not permitted?)"
        )),
        Ok(_) => None,
    }
}

/// The daemon strace started (its only child), once it exists.
async fn traced_child(strace: u32) -> u32 {
    let children = PathBuf::from(format!("/proc/{strace}/task/{strace}/children"));
    eventually(PROMPTLY, || async {
        std::fs::read_to_string(&children)
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
    .await
}

/// [`ADMITS`] admits with a budget, one at a time: each one batch.
async fn admit_many(client: &mut Client) -> Vec<u64> {
    let mut ids = Vec::with_capacity(ADMITS);
    for _ in 0..ADMITS {
        let reply = client
            .admit(AdmitRequest {
                service: "llm".into(),
                cost: Some(0.000_001),
                ..Default::default()
            })
            .await
            .expect("admit");
        assert!(reply.allowed, "{reply:?}");
        ids.push(reply.reservation.expect("an allowed admit has an id"));
    }
    ids
}

/// Runs `work`, and returns its output and the wall-clock window (seconds since
/// the epoch, as `strace -ttt` prints) in which it ran.
async fn timed<T>(work: impl std::future::Future<Output = T>) -> (T, (f64, f64)) {
    let start = epoch_seconds();
    let output = work.await;
    (output, (start, epoch_seconds()))
}

fn epoch_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// The syncs in strace's output (`TID SECONDS.MICROS fdatasync(5</path>) = 0`);
/// a call split by another thread's line is counted at its start.
fn parse(trace: &str) -> Vec<Sync> {
    trace
        .lines()
        .filter(|line| !line.contains("resumed>"))
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let tid = words.next()?.parse().ok()?;
            let at = words.next()?.parse().ok()?;
            let call = words.next()?;
            (call.starts_with("fsync(") || call.starts_with("fdatasync(")).then(|| Sync {
                tid,
                at,
                line: line.to_owned(),
            })
        })
        .collect()
}

/// The ledger after the kill: ids of the open reservations, keys of the charges.
fn ledger_contents(state: &Path) -> (BTreeSet<u64>, Vec<String>) {
    // Read-write: reading a WAL left by a killed process recovers its index.
    let conn = Connection::open_with_flags(
        state.join("ledger.sqlite3"),
        OpenFlags::SQLITE_OPEN_READ_WRITE,
    )
    .expect("open the ledger");
    let open = conn
        .prepare("SELECT id FROM reservations")
        .and_then(|mut s| {
            s.query_map([], |row| row.get::<_, i64>(0))?
                .map(|id| id.map(|id| id as u64))
                .collect::<rusqlite::Result<_>>()
        })
        .expect("read the reservations");
    let charged = conn
        .prepare("SELECT key FROM charges ORDER BY key")
        .and_then(|mut s| s.query_map([], |row| row.get(0))?.collect())
        .expect("read the charges");
    (open, charged)
}

/// The traced daemon, killed with SIGKILL when the test ends (killing strace
/// alone could leave it running).
struct KillDaemon(Option<u32>);

impl KillDaemon {
    /// Once only: after strace reaped it, the pid may be another process's.
    fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for KillDaemon {
    fn drop(&mut self) {
        self.kill();
    }
}
