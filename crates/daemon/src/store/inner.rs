//! What the ledger's threads share: the state behind every [`Store`] handle
//! that the writer, the syncer and the file watch also read and update, the
//! jobs the handles queue, and the group-commit figures.
//!
//! Its own file so that the handle (`handle.rs`) and the threads (`writer.rs`,
//! `syncer.rs`, `watch.rs`) each import it and not one another: each of them
//! adds the methods of [`Inner`] that belong to its job.
//!
//! [`Store`]: super::Store

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::completion::Completion;
use super::{Books, Entry, Opening, StoreError};

/// What the handles and the writer thread share.
pub(super) struct Inner {
    pub(super) jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// Why the last transaction failed; cleared by the next that commits.
    pub(super) health: Mutex<Option<String>>,
    /// Why the ledger file cannot be trusted any more (deleted or replaced while
    /// the daemon ran); never cleared: a restart must look at it.
    pub(super) lost: Mutex<Option<String>>,
    /// (device, inode) of the ledger file as opened.
    pub(super) identity: Option<(u64, u64)>,
    /// Milliseconds after `born` (plus one) at which the running batch started;
    /// 0 when the writer is not in a transaction.
    pub(super) busy_since: AtomicU64,
    /// The same for the syncer's fsync of the WAL.
    pub(super) syncing_since: AtomicU64,
    /// The start (as above) of the batch or fsync that was running when a
    /// waiter gave up on its commit: while that one runs, health says the
    /// ledger is stuck, as the waiter's answer did (`watch::stuck`).
    pub(super) gave_up_on: AtomicU64,
    pub(super) born: Instant,
    pub(super) commit_timeout: Duration,
    pub(super) stats: Stats,
    pub(super) path: PathBuf,
}

/// What the handles ask of the writer thread.
pub(super) enum Job {
    Write {
        entries: Vec<Entry>,
        done: Completion,
    },
    /// Answered in its place in the queue, after the writes queued before it.
    Read(Read),
}

/// A job answered in its place in the queue, never abandoned: a read, which
/// for a budget whose reset changed also re-files its charges
/// (`periods.rs`).
pub(super) enum Read {
    /// Is this idempotency key charged?
    Lookup {
        key: String,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    /// What the ledger holds for these budgets ([`super::Store::books`]).
    Books {
        opening: Opening,
        reply: std::sync::mpsc::Sender<Result<Books, StoreError>>,
    },
    /// Test hook: make every write fail (SQLite `query_only`) or work again.
    FailWrites(bool),
}

/// Group-commit figures, for the benchmark and health.
#[derive(Debug, Default)]
pub struct Stats {
    pub batches: AtomicU64,
    pub jobs: AtomicU64,
    pub largest_batch: AtomicU64,
    /// Time in transactions (apply and commit, without the fsync).
    pub commit_micros: AtomicU64,
    /// fsyncs of the WAL by the syncer thread, and the time they took.
    pub syncs: AtomicU64,
    pub sync_micros: AtomicU64,
    /// Checkpoints by the checkpoint thread (`checkpoint.rs`), and their time.
    pub checkpoints: AtomicU64,
    pub checkpoint_micros: AtomicU64,
    /// Checkpoints the writer ran itself, the WAL at its limit.
    pub writer_checkpoints: AtomicU64,
    /// Commits after which the writer, the WAL at its limit, found the
    /// checkpoint thread copying and could not checkpoint: each lets the WAL
    /// grow past its limit by one commit's frames.
    pub writer_checkpoints_busy: AtomicU64,
}

// === impl Stats ===

impl Stats {
    pub(super) fn record_sync(&self, micros: u128) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.sync_micros
            .fetch_add(u64::try_from(micros).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(super) fn record_checkpoint(&self, micros: u128) {
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.checkpoint_micros
            .fetch_add(u64::try_from(micros).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(super) fn record(&self, jobs: usize, micros: u128) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.jobs.fetch_add(jobs as u64, Ordering::Relaxed);
        self.largest_batch.fetch_max(jobs as u64, Ordering::Relaxed);
        self.commit_micros
            .fetch_add(u64::try_from(micros).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}
