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

mod schema;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::Instant;

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use crate::money::Usd;

/// Most jobs applied in one transaction.
const MAX_BATCH: usize = 4096;

/// The ledger file inside the state directory.
pub const LEDGER_FILE: &str = "ledger.sqlite3";

/// A handle on the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    health: Mutex<Option<String>>,
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
    #[error("the ledger store at {path} failed: {message}")]
    Failed { path: String, message: String },
    #[error("the ledger store is shut down")]
    Closed,
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
struct Completion(Option<Complete>);

type Complete = Box<dyn FnOnce(Result<Outcome, StoreError>) + Send>;

// === impl Store ===

impl Store {
    /// Opens (creating, migrating) the ledger in `dir`, reads what it holds, and
    /// starts the writer thread.
    ///
    /// # Errors
    /// When the directory or the database cannot be opened, or the schema is newer
    /// than this build.
    pub fn open(dir: &Path) -> Result<(Store, Snapshot), StoreError> {
        let path = dir.join(LEDGER_FILE);
        let shown = path.display().to_string();
        let fail = |message: String| StoreError::Failed {
            path: shown.clone(),
            message,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
        let mut conn = Connection::open(&path).map_err(|e| fail(e.to_string()))?;
        schema::prepare(&mut conn).map_err(fail)?;
        let snapshot = schema::load(&mut conn).map_err(|e| fail(e.to_string()))?;
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            jobs: Mutex::new(Some(tx)),
            health: Mutex::new(None),
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
        let (reply, answer) = oneshot::channel();
        let done = Completion(Some(Box::new(move |result| {
            // The receiver may be gone (the connection ended): the effect on
            // memory has happened all the same.
            let _ = reply.send(complete(result));
        })));
        self.send_write(entries, done);
        async move { answer.await.map_err(|_| StoreError::Closed) }
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

    /// `None` when healthy, else why the last transaction failed.
    pub fn health(&self) -> Option<String> {
        self.inner
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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
    /// The writer thread: group commit until every sender is gone.
    fn run(&self, mut conn: Connection, jobs: mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let mut writes = Vec::new();
            let mut pending = Some(first);
            while let Some(job) = pending.take() {
                match job {
                    Job::Write { entries, done } => writes.push((entries, done)),
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
            let started = Instant::now();
            let result = apply_batch(&mut conn, &writes);
            let took = started.elapsed();
            self.stats.record(writes.len(), took.as_micros());
            metrics::histogram!(crate::metrics::STORE_COMMIT_DURATION).record(took.as_secs_f64());
            metrics::histogram!(crate::metrics::STORE_COMMIT_JOBS).record(writes.len() as f64);
            match result {
                Ok(outcomes) => {
                    self.set_health(None);
                    for ((_, done), outcome) in writes.into_iter().zip(outcomes) {
                        done.run(Ok(outcome));
                    }
                }
                Err(err) => {
                    let error = self.failed(&err);
                    log::error!(
                        message_id = crate::logging::message_id::LEDGER_FAILED;
                        "ledger transaction of {} job(s) failed: {err}",
                        writes.len()
                    );
                    for (_, done) in writes {
                        done.run(Err(error.clone()));
                    }
                }
            }
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
        *self.health.lock().unwrap_or_else(PoisonError::into_inner) = health;
    }
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
        if outcome == Outcome::Duplicate || outcome == Outcome::NotFound {
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
    fn run(mut self, result: Result<Outcome, StoreError>) {
        self.finish(result);
    }

    fn finish(&mut self, result: Result<Outcome, StoreError>) {
        if let Some(complete) = self.0.take() {
            // A panic here is a bug in a completion; it must not take the writer
            // thread, and with it every later commit, down too.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| complete(result)));
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
