//! The durable ledger: the only module that touches disk.
//!
//! SQLite in WAL mode with `synchronous=FULL`, so a committed transaction survives
//! kill -9 and power loss. One writer thread owns the connection and does group
//! commit: it takes every job queued while the previous transaction was being
//! made durable, applies them in one transaction (one fsync for the batch), and only
//! then answers each job. Nothing is acknowledged before it is on disk.
//!
//! Architecture Invariant: the hot path never waits on the disk while holding the
//! admission lock; it queues a job and awaits the answer outside the lock.
//!
//! A job of several entries is applied in its own savepoint, so a duplicate charge
//! (an idempotency key already in the ledger) rolls back that job alone and is
//! reported as such; a job of one entry needs none (it changes nothing when it is a
//! duplicate).
//!
//! Architecture Invariant: the ledger fails closed, and says so. The writer thread
//! checks the file's identity (device and inode) before and after every batch and
//! once a second: a ledger deleted or replaced under the daemon fails every later
//! write (a commit into an unlinked file would be lost at the next start). A
//! commit that takes longer than `daemon.commit_timeout` (a frozen or dying
//! disk) is answered [`StoreError::TimedOut`] and health turns unhealthy while it
//! is stuck; a job abandoned that way is never applied if the writer has not
//! started it, and its completion is told it came late if it had (see
//! [`Late`]). After a failure (a full disk), a probe transaction once a second
//! finds out when writes work again. A start that finds the ledger missing in a
//! directory that held one (the marker file [`LEDGER_MARKER`]) refuses to create
//! an empty one unless the operator says so (`--init-ledger`).

mod schema;

use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use crate::money::Usd;

/// Most jobs applied in one transaction.
const MAX_BATCH: usize = 4096;

/// The ledger file inside the state directory.
pub const LEDGER_FILE: &str = "ledger.sqlite3";

/// Written next to the ledger when it is created: a state directory with the
/// marker but without the ledger lost it (deleted, a wrong mount), and a start
/// there refuses to begin an empty ledger unless told to ([`StoreOptions::init`]).
pub const LEDGER_MARKER: &str = "ledger.marker";

/// The default of `daemon.commit_timeout`.
pub const DEFAULT_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the writer thread, when idle, checks the file's identity and (when
/// the last write failed) probes whether writes work again.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The WAL is checkpointed (copied into the database) once it holds this many
/// pages (SQLite's default) ...
const WAL_PAGES_MAX: u64 = 1000;

/// ... or an eighth of the state filesystem, whichever is less, and cut back to
/// that size after each checkpoint (`journal_size_limit`): on a small filesystem
/// a WAL that never shrinks fills it, and once full a checkpoint has no room to
/// copy it into the database either.
const WAL_SHARE_OF_FILESYSTEM: u64 = 8;

/// SQLite's page size (the default, which the ledger never changes).
const PAGE_SIZE: u64 = 4096;

/// How the ledger is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// A commit taking longer is answered [`StoreError::TimedOut`] and makes
    /// health unhealthy while it lasts (`daemon.commit_timeout`).
    pub commit_timeout: Duration,
    /// Create an empty ledger even where [`LEDGER_MARKER`] says one existed
    /// (`--init-ledger`).
    pub init: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            commit_timeout: DEFAULT_COMMIT_TIMEOUT,
            init: false,
        }
    }
}

/// A handle on the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// Why the last transaction failed; cleared by the next that commits.
    health: Mutex<Option<String>>,
    /// Why the ledger file cannot be trusted any more (deleted or replaced while
    /// the daemon ran); never cleared: a restart must look at it.
    lost: Mutex<Option<String>>,
    /// (device, inode) of the ledger file as opened.
    identity: Option<(u64, u64)>,
    /// Milliseconds after `born` (plus one) at which the running batch started;
    /// 0 when the writer is not in a transaction.
    busy_since: AtomicU64,
    born: Instant,
    commit_timeout: Duration,
    stats: Stats,
    path: PathBuf,
}

/// Group-commit figures, for the benchmark and health.
#[derive(Debug, Default)]
pub struct Stats {
    pub batches: AtomicU64,
    pub jobs: AtomicU64,
    pub largest_batch: AtomicU64,
    pub commit_micros: AtomicU64,
}

/// One change to the ledger. The entries of one job are applied atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// An admitted call's estimate, held until it settles.
    Reserve {
        id: u64,
        agent: String,
        service: String,
        model: Option<String>,
        estimate: Usd,
        budgets: Vec<String>,
        at: u64,
    },
    /// Spending: a settled reservation or a direct charge. A second charge with the
    /// same key makes the whole job a [`Outcome::Duplicate`].
    Charge {
        key: String,
        reservation: Option<u64>,
        agent: String,
        service: String,
        amount: Usd,
        /// Budget name and the start of the period the amount is filed under.
        budgets: Vec<(String, u64)>,
        at: u64,
    },
    /// A reservation closed without a charge.
    Unreserve {
        id: u64,
    },
    /// Quota usage in a durable window.
    QuotaAdd {
        quota: String,
        key: String,
        window_start: u64,
        n: u64,
    },
    QuotaReset {
        quota: String,
        key: String,
    },
    SetLimit {
        budget: String,
        limit: Usd,
    },
    ResetBudget {
        budget: String,
        period_start: u64,
    },
    /// Marks a charge refunded and takes it out of its budgets' balances.
    Refund {
        key: String,
    },
    /// Who did an admin operation, and when.
    Audit {
        uid: u32,
        pid: i32,
        action: String,
        at: u64,
    },
}

/// What a job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// A charge's key was already in the ledger; the job changed nothing.
    Duplicate,
    /// A charge would take a balance past [`crate::money::MAX_BALANCE`] (or a
    /// balance is unreadable); the job changed nothing.
    Refused(String),
    /// A refund: what was given back, and where it had been filed.
    Refunded {
        amount: Usd,
        budgets: Vec<(String, u64)>,
    },
    /// A refund of a key the ledger does not have (or already refunded).
    NotFound,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// `message` says what failed, without the path (health shows it alone).
    #[error("the ledger at {path} failed: {message}")]
    Failed { path: String, message: String },
    #[error("the ledger at {path} did not commit within {}s (daemon.commit_timeout; is its filesystem frozen, full or failing?); nothing was acknowledged, retry later (a repeated report is counted once)", .waited.as_secs_f64())]
    TimedOut { path: String, waited: Duration },
    /// A charge the ledger will not file; not a failure of the ledger.
    #[error("the ledger refused the charge: {0}")]
    Refused(String),
    #[error("the ledger store is shut down")]
    Closed,
}

impl StoreError {
    /// What went wrong without the path, for health and for a store that could
    /// not be opened (which prefixes the path itself).
    pub fn reason(&self) -> String {
        match self {
            StoreError::Failed { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// What the ledger holds at startup.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases at every open; part of every reservation id, so ids never repeat
    /// across restarts.
    pub epoch: u64,
    pub reservations: Vec<StoredReservation>,
    /// Spent per budget and period start.
    pub balances: Vec<(String, u64, Usd)>,
    /// Quota usage per quota, key and window start.
    pub quotas: Vec<(String, String, u64, u64)>,
    /// Limits set by an admin, overriding the config.
    pub limits: Vec<(String, Usd)>,
    /// Balances the ledger holds but that are not a valid amount (negative, a
    /// float left by an overflow before checked arithmetic): budget, period start,
    /// what was found. Those budgets fail closed until an admin resets them.
    pub unreadable: Vec<(String, u64, String)>,
    /// The ledger file did not exist and was created by this open.
    pub created: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReservation {
    pub id: u64,
    pub agent: String,
    pub service: String,
    pub model: Option<String>,
    pub estimate: Usd,
    pub budgets: Vec<String>,
}

enum Job {
    Write {
        entries: Vec<Entry>,
        done: Completion,
    },
    /// A lookup or a test hook waits for nothing and is never abandoned.
    /// Is this idempotency key charged?
    Lookup {
        key: String,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    /// Test hook: make every write fail (SQLite `query_only`) or work again.
    FailWrites(bool),
}

/// What a write does with the ledger's answer, run exactly once: by the writer
/// thread right after the transaction committed or failed, or — if the job never
/// reaches a transaction (the store is closed or was never opened) — when it is
/// dropped. Whoever was waiting for the reply has no part in it, so a connection
/// that goes away mid-commit cannot leave the daemon's memory behind its ledger.
struct Completion {
    complete: Option<Complete>,
    /// Who owns the answer: the writer or a waiter that gave up ([`claim`]).
    claim: Arc<AtomicU8>,
}

type Complete = Box<dyn FnOnce(Result<Outcome, StoreError>, Late) + Send>;

/// Whether the waiter of a write had already been answered
/// [`StoreError::TimedOut`] when the transaction that held the write finished.
/// A late success is durable all the same: memory must follow the ledger, and
/// what the waiter was told (nothing acknowledged) must stay true, so a late
/// admission is undone (see `admission::commit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Late {
    No,
    Yes,
}

/// The states of [`Completion::claim`].
mod claim {
    /// In the queue; the writer has not looked at it.
    pub const QUEUED: u8 = 0;
    /// In a transaction.
    pub const WRITING: u8 = 1;
    /// Answered by the writer.
    pub const DONE: u8 = 2;
    /// Given up by its waiter before the writer took it: never applied.
    pub const ABANDONED: u8 = 3;
    /// Given up by its waiter while in a transaction: completed as [`super::Late`].
    pub const ABANDONED_WRITING: u8 = 4;
}

// === impl Store ===

impl Store {
    /// Opens (creating, migrating) the ledger in `dir`, reads what it holds, and
    /// starts the writer thread.
    ///
    /// # Errors
    /// When the directory or the database cannot be opened, or the schema is newer
    /// than this build.
    pub fn open(dir: &Path) -> Result<(Store, Snapshot), StoreError> {
        Store::open_with(dir, &StoreOptions::default())
    }

    /// [`Store::open`] with options.
    ///
    /// # Errors
    /// As [`Store::open`]; also when the ledger is missing from a directory
    /// that held one (its marker is there) and `options.init` is false.
    pub fn open_with(dir: &Path, options: &StoreOptions) -> Result<(Store, Snapshot), StoreError> {
        let path = dir.join(LEDGER_FILE);
        let shown = path.display().to_string();
        let fail = |message: String| StoreError::Failed {
            path: shown.clone(),
            message,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
        let marker = dir.join(LEDGER_MARKER);
        let existed = path.symlink_metadata().is_ok();
        if !existed && marker.exists() && !options.init {
            return Err(fail(format!(
                "the ledger file is missing, but {} says this directory held one: the spending it recorded would be lost. Restore {LEDGER_FILE} from a backup (with its -wal file, if any), or start the daemon once with --init-ledger to begin an empty ledger",
                marker.display()
            )));
        }
        let mut conn = Connection::open(&path).map_err(|e| fail(e.to_string()))?;
        schema::prepare(&mut conn, wal_pages(dir)).map_err(fail)?;
        let mut snapshot = schema::load(&mut conn).map_err(|e| fail(e.to_string()))?;
        snapshot.created = !existed;
        if !marker.exists() {
            write_marker(&marker)
                .map_err(|e| fail(format!("writing the marker {}: {e}", marker.display())))?;
        }
        let identity = std::fs::metadata(&path)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| fail(format!("reading the ledger file's metadata: {e}")))?;
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            jobs: Mutex::new(Some(tx)),
            health: Mutex::new(None),
            lost: Mutex::new(None),
            identity: Some(identity),
            busy_since: AtomicU64::new(0),
            born: Instant::now(),
            commit_timeout: options.commit_timeout,
            stats: Stats::default(),
            path,
        });
        let writer = Arc::clone(&inner);
        std::thread::Builder::new()
            .name("af-ledger".into())
            .spawn(move || writer.run(conn, rx))
            .map_err(|e| fail(format!("starting the writer thread: {e}")))?;
        Ok((Store { inner }, snapshot))
    }

    /// A store that could not be opened: every write fails with `reason`, health
    /// says so, and so every budget-governed request is refused (fail closed) while
    /// the daemon keeps serving everything else.
    pub fn unavailable(path: &Path, reason: String) -> Store {
        let inner = Inner {
            jobs: Mutex::new(None),
            health: Mutex::new(Some(reason)),
            lost: Mutex::new(None),
            identity: None,
            busy_since: AtomicU64::new(0),
            born: Instant::now(),
            commit_timeout: DEFAULT_COMMIT_TIMEOUT,
            stats: Stats::default(),
            path: path.to_owned(),
        };
        Store {
            inner: Arc::new(inner),
        }
    }

    /// Queues `entries` to be applied atomically and durably, now, and runs
    /// `complete` with the ledger's answer as soon as the transaction committed (or
    /// failed), on the writer thread, whether or not anyone still awaits the
    /// returned future, which yields what `complete` returned. Queuing at call time
    /// (not at first poll) is what lets several requests of one connection share a
    /// group commit.
    ///
    /// `complete` must not wait for anything: it holds up the next group commit.
    /// The caller must not hold a lock that `complete` takes (it may run at once,
    /// on the caller's thread, when the store is closed).
    ///
    /// # Errors
    /// The future yields [`StoreError::Closed`] only if `complete` panicked.
    pub fn commit<T: Send + 'static>(
        &self,
        entries: Vec<Entry>,
        complete: impl FnOnce(Result<Outcome, StoreError>) -> T + Send + 'static,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static {
        self.commit_late(entries, move |result, _late| complete(result))
    }

    /// [`Store::commit`], whose waiter gives up after `daemon.commit_timeout`
    /// with [`StoreError::TimedOut`]. A write the writer had not started by then
    /// is never applied (`complete` runs with the timeout); one already in a
    /// transaction completes when the transaction does, with [`Late::Yes`].
    ///
    /// # Errors
    /// The future yields [`StoreError::TimedOut`], or [`StoreError::Closed`]
    /// if `complete` panicked.
    pub fn commit_late<T: Send + 'static>(
        &self,
        entries: Vec<Entry>,
        complete: impl FnOnce(Result<Outcome, StoreError>, Late) -> T + Send + 'static,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static {
        let (reply, mut answer) = oneshot::channel();
        let claim = Arc::new(AtomicU8::new(claim::QUEUED));
        let done = Completion {
            complete: Some(Box::new(move |result, late| {
                // The receiver may be gone (the connection ended): the effect on
                // memory has happened all the same.
                let _ = reply.send(complete(result, late));
            })),
            claim: Arc::clone(&claim),
        };
        self.send_write(entries, done);
        let waited = self.inner.commit_timeout;
        let path = self.inner.path.display().to_string();
        async move {
            if let Ok(answered) = tokio::time::timeout(waited, &mut answer).await {
                return answered.map_err(|_| StoreError::Closed);
            }
            let gave_up = claim
                .compare_exchange(
                    claim::QUEUED,
                    claim::ABANDONED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .or_else(|_| {
                    claim.compare_exchange(
                        claim::WRITING,
                        claim::ABANDONED_WRITING,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                })
                .is_ok();
            if gave_up {
                log::error!(
                    message_id = crate::logging::message_id::LEDGER_FAILED;
                    "a ledger commit took longer than daemon.commit_timeout ({waited:?}); its request was answered Unavailable"
                );
                return Err(StoreError::TimedOut { path, waited });
            }
            // The writer answered just now.
            answer.await.map_err(|_| StoreError::Closed)
        }
    }

    /// Queues `entries` and returns the wait for the ledger's answer, with nothing
    /// to apply in memory (tests and the ledger benchmark).
    ///
    /// # Errors
    /// The future yields [`StoreError`] when the transaction failed; nothing was
    /// written.
    pub fn write(
        &self,
        entries: Vec<Entry>,
    ) -> impl Future<Output = Result<Outcome, StoreError>> + Send + 'static {
        let committed = self.commit(entries, |result| result);
        async move { committed.await? }
    }

    /// Whether a charge with this idempotency key is in the ledger (queued now).
    ///
    /// # Errors
    /// The future yields [`StoreError`] when the ledger cannot be read.
    pub fn is_charged(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let sent = self.send(Job::Lookup {
            key: key.to_owned(),
            reply,
        });
        async move {
            sent?;
            answer.await.map_err(|_| StoreError::Closed)?
        }
    }

    /// `None` when healthy, else why not: the ledger file vanished or was
    /// replaced, a commit is stuck past `daemon.commit_timeout`, or the last
    /// transaction failed.
    pub fn health(&self) -> Option<String> {
        if let Some(lost) = lock(&self.inner.lost).clone() {
            return Some(lost);
        }
        if let Some(stuck) = self.inner.stuck() {
            return Some(stuck);
        }
        lock(&self.inner.health).clone()
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Makes every following write fail (or work again), as a full or read-only
    /// disk would: for testing the fail-closed paths.
    #[doc(hidden)]
    pub fn fail_writes(&self, fail: bool) {
        let _ = self.send(Job::FailWrites(fail));
    }

    /// Stops the writer after the jobs already queued; waits for none of them.
    pub fn close(&self) {
        self.inner
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Queues a write; when it cannot be queued, completes it at once with why.
    fn send_write(&self, entries: Vec<Entry>, done: Completion) {
        if let Err(job) = self.try_send(Job::Write { entries, done }) {
            let err = self.refusal();
            if let Job::Write { done, .. } = job {
                done.run(Err(err));
            }
        }
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        self.try_send(job).map_err(|_| self.refusal())
    }

    /// Hands `job` to the writer thread, or gives it back when there is none.
    fn try_send(&self, job: Job) -> Result<(), Job> {
        let jobs = self
            .inner
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match jobs.as_ref() {
            Some(sender) => sender.send(job).map_err(|returned| returned.0),
            None => Err(job),
        }
    }

    /// Why nothing can be written: the reason the store failed, if we know it.
    fn refusal(&self) -> StoreError {
        if let Some(message) = lock(&self.inner.lost).clone() {
            return StoreError::Failed {
                path: self.inner.path.display().to_string(),
                message,
            };
        }
        match self.health() {
            Some(message) => StoreError::Failed {
                path: self.inner.path.display().to_string(),
                message,
            },
            None => StoreError::Closed,
        }
    }
}

// === impl Inner ===

impl Inner {
    /// The writer thread: group commit until every sender is gone; when idle,
    /// a look at the file's identity and, after a failure, a probe.
    fn run(&self, mut conn: Connection, jobs: mpsc::Receiver<Job>) {
        loop {
            let first = match jobs.recv_timeout(CHECK_EVERY) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.idle_check(&mut conn);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut writes = Vec::new();
            let mut pending = Some(first);
            while let Some(job) = pending.take() {
                match job {
                    Job::Write { entries, done } => {
                        // A write its waiter gave up on is not applied: it was
                        // answered Unavailable, so nothing may become of it.
                        if done.take_for_writing() {
                            writes.push((entries, done));
                        } else {
                            done.run(Err(self.timed_out()));
                        }
                    }
                    Job::Lookup { key, reply } => {
                        let _ = reply
                            .send(schema::is_charged(&conn, &key).map_err(|e| self.failed(&e)));
                    }
                    Job::FailWrites(fail) => {
                        let _ = conn.pragma_update(None, "query_only", fail);
                    }
                }
                if writes.len() < MAX_BATCH {
                    pending = jobs.try_recv().ok();
                }
            }
            if writes.is_empty() {
                continue;
            }
            self.commit_batch(&mut conn, writes);
        }
    }

    /// Applies one batch and answers its jobs: failed as a whole when the
    /// ledger file is not the one opened, before or after the transaction.
    fn commit_batch(&self, conn: &mut Connection, writes: Vec<(Vec<Entry>, Completion)>) {
        if let Err(error) = self.check_identity() {
            for (_, done) in writes {
                done.run(Err(error.clone()));
            }
            return;
        }
        let started = Instant::now();
        self.busy_since.store(
            u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1,
            Ordering::Release,
        );
        let mut result = apply_batch(conn, &writes);
        if matches!(&result, Err(e) if is_full(e)) && truncate_wal(conn) {
            // The WAL held the space: copied into the database and cut back,
            // the batch may fit now.
            result = apply_batch(conn, &writes);
        }
        self.busy_since.store(0, Ordering::Release);
        let took = started.elapsed();
        self.stats.record(writes.len(), took.as_micros());
        metrics::histogram!(crate::metrics::STORE_COMMIT_DURATION).record(took.as_secs_f64());
        metrics::histogram!(crate::metrics::STORE_COMMIT_JOBS).record(writes.len() as f64);
        // Committed into a file that was deleted meanwhile is not durable: the
        // next start would not see it.
        let result = match (result, self.check_identity()) {
            (Ok(_), Err(lost)) => Err(lost),
            (Ok(outcomes), Ok(())) => Ok(outcomes),
            (Err(err), _) => {
                let error = self.failed(&err);
                log::error!(
                    message_id = crate::logging::message_id::LEDGER_FAILED;
                    "ledger transaction of {} job(s) failed: {err}",
                    writes.len()
                );
                Err(error)
            }
        };
        match result {
            Ok(outcomes) => {
                self.set_health(None);
                for ((_, done), outcome) in writes.into_iter().zip(outcomes) {
                    done.run(Ok(outcome));
                }
            }
            Err(error) => {
                for (_, done) in writes {
                    done.run(Err(error.clone()));
                }
            }
        }
    }

    /// Between jobs: is the file still ours, and — after a failure — do writes
    /// work again (a disk that was full has room)? Health recovers without
    /// waiting for the next budget write.
    fn idle_check(&self, conn: &mut Connection) {
        if self.check_identity().is_err() || lock(&self.health).is_none() {
            return;
        }
        truncate_wal(conn);
        self.busy_since.store(
            u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1,
            Ordering::Release,
        );
        let probe = schema::probe(conn);
        self.busy_since.store(0, Ordering::Release);
        if probe.is_ok() && self.check_identity().is_ok() {
            log::info!("the ledger at {} accepts writes again", self.path.display());
            self.set_health(None);
        }
    }

    /// Whether the ledger file is still the one opened; once it is not, it never
    /// is again for this process (health says so until a restart).
    fn check_identity(&self) -> Result<(), StoreError> {
        let fail = |message: String| StoreError::Failed {
            path: self.path.display().to_string(),
            message,
        };
        if let Some(lost) = lock(&self.lost).clone() {
            return Err(fail(lost));
        }
        let Some(expected) = self.identity else {
            return Ok(());
        };
        let problem = match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == expected => return Ok(()),
            Ok(_) => "the ledger file was replaced by another file while the daemon ran".to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                "the ledger file was deleted while the daemon ran".to_owned()
            }
            Err(e) => format!("the ledger file cannot be looked at: {e}"),
        };
        let message = format!(
            "{problem}; writes into it would not survive a restart, so budget-governed requests are refused. Restore the file and restart the daemon (a start without it refuses to begin an empty ledger unless given --init-ledger)"
        );
        log::error!(
            message_id = crate::logging::message_id::LEDGER_FAILED;
            "ledger {}: {message}", self.path.display()
        );
        *lock(&self.lost) = Some(message.clone());
        Err(fail(message))
    }

    /// Why a commit counts as stuck, if the running one has been going for
    /// longer than the commit timeout.
    fn stuck(&self) -> Option<String> {
        let since = self.busy_since.load(Ordering::Acquire);
        if since == 0 {
            return None;
        }
        let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        let running = Duration::from_millis(now.saturating_sub(since - 1));
        (running > self.commit_timeout).then(|| {
            format!(
                "a ledger commit has been running for {}s, longer than daemon.commit_timeout ({}s): is the state filesystem frozen, full or failing?",
                running.as_secs(),
                self.commit_timeout.as_secs_f64()
            )
        })
    }

    fn timed_out(&self) -> StoreError {
        StoreError::TimedOut {
            path: self.path.display().to_string(),
            waited: self.commit_timeout,
        }
    }

    fn failed(&self, err: &rusqlite::Error) -> StoreError {
        let message = err.to_string();
        self.set_health(Some(message.clone()));
        StoreError::Failed {
            path: self.path.display().to_string(),
            message,
        }
    }

    fn set_health(&self, health: Option<String>) {
        *lock(&self.health) = health;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The marker that says this directory holds a ledger ([`LEDGER_MARKER`]).
fn write_marker(marker: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(marker)?;
    file.write_all(
        b"This directory holds the automation-framework ledger (ledger.sqlite3).\n\
          If the ledger is missing, automation-frameworkd refuses to start an empty one\n\
          unless started with --init-ledger: restore it from a backup instead.\n",
    )?;
    file.sync_all()
}

/// How many pages the WAL may hold before a checkpoint: SQLite's default, or an
/// eighth of the filesystem under `dir` when that is less (at least 16).
fn wal_pages(dir: &Path) -> u64 {
    let share = nix::sys::statvfs::statvfs(dir).map_or(u64::MAX, |fs| {
        fs.blocks().saturating_mul(fs.fragment_size()) / WAL_SHARE_OF_FILESYSTEM / PAGE_SIZE
    });
    share.clamp(16, WAL_PAGES_MAX)
}

/// SQLITE_FULL: the disk (or the filesystem's quota) is full.
fn is_full(err: &rusqlite::Error) -> bool {
    matches!(err, rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::DiskFull)
}

/// Copies the WAL into the database and truncates it to nothing, giving the
/// filesystem back its space. Returns whether it completed.
fn truncate_wal(conn: &mut Connection) -> bool {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
        row.get::<_, i64>(0)
    })
    .is_ok_and(|busy| busy == 0)
}

/// One transaction for the whole batch, a savepoint per job of several entries.
fn apply_batch(
    conn: &mut Connection,
    writes: &[(Vec<Entry>, Completion)],
) -> rusqlite::Result<Vec<Outcome>> {
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut outcomes = Vec::with_capacity(writes.len());
    for (entries, _) in writes {
        // A savepoint costs two statements; most jobs are one entry, which changes
        // nothing when it answers Duplicate or NotFound (see `schema::apply`).
        if entries.len() == 1 {
            outcomes.push(schema::apply(&tx, entries)?);
            continue;
        }
        let sp = tx.savepoint()?;
        let outcome = schema::apply(&sp, entries)?;
        if matches!(
            outcome,
            Outcome::Duplicate | Outcome::NotFound | Outcome::Refused(_)
        ) {
            drop(sp); // rolls the job back
        } else {
            sp.commit()?;
        }
        outcomes.push(outcome);
    }
    tx.commit()?;
    Ok(outcomes)
}

// === impl Completion ===

impl Completion {
    /// Claims the job for a transaction; false when its waiter gave up first.
    fn take_for_writing(&self) -> bool {
        self.claim
            .compare_exchange(
                claim::QUEUED,
                claim::WRITING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    fn run(mut self, result: Result<Outcome, StoreError>) {
        self.finish(result);
    }

    fn finish(&mut self, result: Result<Outcome, StoreError>) {
        if let Some(complete) = self.complete.take() {
            let previous = self.claim.swap(claim::DONE, Ordering::AcqRel);
            let late = if previous == claim::ABANDONED_WRITING {
                Late::Yes
            } else {
                Late::No
            };
            // A panic here is a bug in a completion; it must not take the writer
            // thread, and with it every later commit, down too.
            let ran =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| complete(result, late)));
            if ran.is_err() {
                log::error!(
                    "a ledger commit's completion panicked; its request was answered with an error"
                );
            }
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.finish(Err(StoreError::Closed));
    }
}

// === impl Stats ===

impl Stats {
    fn record(&self, jobs: usize, micros: u128) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.jobs.fetch_add(jobs as u64, Ordering::Relaxed);
        self.largest_batch.fetch_max(jobs as u64, Ordering::Relaxed);
        self.commit_micros
            .fetch_add(u64::try_from(micros).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
