//! The public handle on the ledger: opening it, queuing writes and lookups, and
//! reading its health.
//!
//! Everything here runs on the caller's thread and never touches the database:
//! it hands jobs to the writer thread (`writer.rs`) and waits for answers, so an
//! async task never blocks on the disk. The one wait it adds is the
//! `daemon.commit_timeout` after which a waiter gives up on a stuck commit.

use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::completion::{Completion, Late};
use super::inner::{Inner, Job, Read, Stats};
use super::{
    checkpoint, lock, schema, watch, Books, Entry, Opening, Outcome, Snapshot, StoreError,
    DEFAULT_COMMIT_TIMEOUT, LEDGER_FILE, LEDGER_MARKER,
};

/// How the ledger is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// A commit taking longer is answered [`StoreError::TimedOut`] and makes
    /// health unhealthy while it lasts (`daemon.commit_timeout`).
    pub commit_timeout: Duration,
    /// Create an empty ledger even where [`LEDGER_MARKER`] says one existed
    /// (`--init-ledger`).
    pub init: bool,
    /// The budgets the config opens: those whose reset changed since the
    /// ledger last kept them have their charges re-filed by the load
    /// (`periods.rs`).
    pub opening: Opening,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            commit_timeout: DEFAULT_COMMIT_TIMEOUT,
            init: false,
            opening: Opening::default(),
        }
    }
}

/// A handle on the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
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
        Store::open_at(dir, options, None)
    }

    /// [`Store::open_with`] with the WAL's limit in pages (tests: a small one);
    /// `None`: the limit for the state directory's filesystem, measured once
    /// the directory exists (before, `statvfs` fails and the limit would be
    /// the largest, too large for a small filesystem).
    pub(super) fn open_at(
        dir: &Path,
        options: &StoreOptions,
        wal_pages: Option<u64>,
    ) -> Result<(Store, Snapshot), StoreError> {
        let path = dir.join(LEDGER_FILE);
        let shown = path.display().to_string();
        let fail = |message: String| StoreError::Failed {
            path: shown.clone(),
            message,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
        let wal_pages = wal_pages.unwrap_or_else(|| watch::wal_pages(dir));
        let marker = dir.join(LEDGER_MARKER);
        let existed = path.symlink_metadata().is_ok();
        if !existed && marker.exists() && !options.init {
            return Err(fail(format!(
                "the ledger file is missing, but {} says this directory held one: the spending it recorded would be lost. Restore {LEDGER_FILE} from a backup (with its -wal file, if any), or start the daemon once with --init-ledger to begin an empty ledger",
                marker.display()
            )));
        }
        let mut conn = Connection::open(&path).map_err(|e| fail(e.to_string()))?;
        // Every statement the writer runs stays prepared (about 15 of them).
        conn.set_prepared_statement_cache_capacity(32);
        schema::prepare(&mut conn, wal_pages).map_err(fail)?;
        let mut snapshot =
            schema::load(&mut conn, &options.opening).map_err(|e| fail(e.to_string()))?;
        snapshot.created = !existed;
        if !marker.exists() {
            watch::write_marker(&marker)
                .map_err(|e| fail(format!("writing the marker {}: {e}", marker.display())))?;
        }
        let identity = std::fs::metadata(&path)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| fail(format!("reading the ledger file's metadata: {e}")))?;
        // The WAL exists: `schema::load` wrote to it. SQLite keeps the file
        // (truncating it at most) while the connection is open.
        let mut wal_path = path.clone().into_os_string();
        wal_path.push("-wal");
        let wal = std::fs::File::open(&wal_path).map_err(|e| {
            fail(format!(
                "opening the write-ahead log {}: {e}",
                Path::new(&wal_path).display()
            ))
        })?;
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            jobs: Mutex::new(Some(tx)),
            health: Mutex::new(None),
            lost: Mutex::new(None),
            identity: Some(identity),
            busy_since: AtomicU64::new(0),
            syncing_since: AtomicU64::new(0),
            gave_up_on: AtomicU64::new(0),
            born: Instant::now(),
            commit_timeout: options.commit_timeout,
            stats: Stats::default(),
            path,
        });
        // Its own connection: a checkpoint there runs while the writer commits.
        // Its syncs (synchronous=FULL, the default) put the database on disk
        // before the WAL may start over.
        let copier = Connection::open(&inner.path)
            .and_then(|c| c.pragma_update(None, "synchronous", "FULL").map(|()| c))
            .map_err(|e| fail(format!("opening the ledger for checkpoints: {e}")))?;
        let (nudge, nudges) = checkpoint::channel();
        // Held by the writer thread until its connection is closed. SQLite
        // frees the hook (the other sender: rusqlite keeps it as the
        // connection's client data) in `sqlite3_close` before it closes the
        // database, so the checkpoint thread could close its connection at
        // the same time as the writer, and then neither would be the last,
        // the one that folds the WAL into the database and removes it.
        let writer_closed = nudge.clone();
        checkpoint::install(&mut conn, wal_pages, nudge, Arc::clone(&inner))
            .map_err(|e| fail(format!("setting the ledger's checkpoint hook: {e}")))?;
        let checkpointer = Arc::clone(&inner);
        std::thread::Builder::new()
            .name("af-ledger-ckpt".into())
            .spawn(move || checkpoint::run(&copier, &nudges, &checkpointer.stats))
            .map_err(|e| fail(format!("starting the checkpoint thread: {e}")))?;
        let (to_sync, committed) = mpsc::channel();
        let syncer = Arc::clone(&inner);
        std::thread::Builder::new()
            .name("af-ledger-sync".into())
            .spawn(move || syncer.sync_loop(&wal, &committed))
            .map_err(|e| fail(format!("starting the syncer thread: {e}")))?;
        let writer = Arc::clone(&inner);
        std::thread::Builder::new()
            .name("af-ledger".into())
            .spawn(move || {
                writer.run(conn, &rx, &to_sync);
                drop(writer_closed);
            })
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
            syncing_since: AtomicU64::new(0),
            gave_up_on: AtomicU64::new(0),
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
        let (done, waiter) = Completion::new(Box::new(move |result, late| {
            // The receiver may be gone (the connection ended): the effect on
            // memory has happened all the same.
            let _ = reply.send(complete(result, late));
        }));
        self.send_write(entries, done);
        let waited = self.inner.commit_timeout;
        let inner = Arc::clone(&self.inner);
        async move {
            if let Ok(answered) = tokio::time::timeout(waited, &mut answer).await {
                return answered.map_err(|_| StoreError::Closed);
            }
            let gave_up = waiter.give_up();
            if gave_up {
                inner.note_gave_up();
                let path = inner.path.display().to_string();
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
        let sent = self.send(Job::Read(Read::Lookup {
            key: key.to_owned(),
            reply,
        }));
        async move {
            sent?;
            answer.await.map_err(|_| StoreError::Closed)?
        }
    }

    /// What the ledger holds for the budgets named: their balances and
    /// admin-set limits, for budgets a reload adds or gives another reset
    /// (whose charges are moved to the new period first: `periods.rs`). Read in the ledger's
    /// order of work, after every write queued before, and answered only once
    /// those writes' completions have run: memory then already counts every
    /// charge these books hold, and no charge still on its way can be counted
    /// twice. Blocking, up to `daemon.commit_timeout` (a reload runs on the
    /// blocking pool).
    ///
    /// # Errors
    /// The ledger cannot be read, or did not answer in time.
    pub fn books(&self, opening: Opening) -> Result<Books, StoreError> {
        let (reply, answer) = std::sync::mpsc::channel();
        self.send(Job::Read(Read::Books { opening, reply }))?;
        match answer.recv_timeout(self.inner.commit_timeout) {
            Ok(books) => books,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(self.inner.timed_out()),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(StoreError::Closed),
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

    /// What the handle and the threads share (tests of the watch).
    #[cfg(test)]
    pub(super) fn inner(&self) -> &Inner {
        &self.inner
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Makes every following write fail (or work again), as a full or read-only
    /// disk would: for testing the fail-closed paths.
    #[doc(hidden)]
    pub fn fail_writes(&self, fail: bool) {
        let _ = self.send(Job::Read(Read::FailWrites(fail)));
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
