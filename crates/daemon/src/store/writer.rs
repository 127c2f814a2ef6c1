//! The writer thread: group commit.
//!
//! One thread owns the SQLite connection. It takes every job queued while the
//! previous transaction was being made durable, applies them in one transaction
//! (one fsync for the whole batch), and only then answers each job, so nothing is
//! acknowledged before it is written and the cost of an fsync is shared by every
//! request that arrived during the last one. Jobs that hold only reservations go
//! into a transaction of their own, committed without an fsync
//! ([`crate::store::Entry::needs_sync`] says why that is enough), so an admit
//! never waits for a charge's fsync.
//!
//! A job of several entries is applied in its own savepoint, so a duplicate charge
//! (an idempotency key already in the ledger) rolls back that job alone and is
//! reported as such; a job of one entry needs none (it changes nothing when it is a
//! duplicate).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use super::completion::Completion;
use super::handle::Inner;
use super::watch::{self, CHECK_EVERY};
use super::{schema, Entry, Outcome, StoreError};

/// Most jobs applied in one transaction.
const MAX_BATCH: usize = 4096;

/// What the handles ask of the writer thread.
pub(super) enum Job {
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

/// Group-commit figures, for the benchmark and health.
#[derive(Debug, Default)]
pub struct Stats {
    pub batches: AtomicU64,
    pub jobs: AtomicU64,
    pub largest_batch: AtomicU64,
    pub commit_micros: AtomicU64,
}

// === impl Inner ===

impl Inner {
    /// The writer thread: group commit until every sender is gone; when idle,
    /// a look at the file's identity and, after a failure, a probe.
    pub(super) fn run(&self, mut conn: Connection, jobs: mpsc::Receiver<Job>) {
        // `schema::prepare` opened the connection with FULL.
        let mut sync = Sync::Full;
        loop {
            let first = match jobs.recv_timeout(CHECK_EVERY) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // The probe must reach the disk to tell that the disk works.
                    let _ = set_sync(&conn, &mut sync, Sync::Full);
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
            self.commit_batch(&mut conn, &mut sync, writes);
        }
    }

    /// Commits one batch as up to two transactions: the jobs that hold only
    /// reservations first, without an fsync of their own, answered at once; then
    /// the rest (charges, admin changes, durable quota counts), fsync'd before
    /// they are answered. Reservations first so that an admit never waits for
    /// another request's fsync: this is what lets a budget-governed admit+report
    /// pair cost one fsync wait instead of two. The order is free: no job in the
    /// queue depends on another queued job (a report's charge is made only after
    /// its admission's completion ran, i.e. after that transaction committed).
    fn commit_batch(
        &self,
        conn: &mut Connection,
        sync: &mut Sync,
        writes: Vec<(Vec<Entry>, Completion)>,
    ) {
        let (reservations, synced): (Vec<_>, Vec<_>) = writes
            .into_iter()
            .partition(|(entries, _)| !entries.iter().any(Entry::needs_sync));
        if !reservations.is_empty() {
            self.commit_group(conn, sync, Sync::Normal, reservations);
        }
        if !synced.is_empty() {
            self.commit_group(conn, sync, Sync::Full, synced);
        }
    }

    /// Applies one transaction and answers its jobs: failed as a whole when the
    /// ledger file is not the one opened, before or after the transaction.
    fn commit_group(
        &self,
        conn: &mut Connection,
        sync: &mut Sync,
        wanted: Sync,
        writes: Vec<(Vec<Entry>, Completion)>,
    ) {
        if let Err(error) = self.check_identity() {
            for (_, done) in writes {
                done.run(Err(error.clone()));
            }
            return;
        }
        let started = Instant::now();
        self.set_busy(true);
        let mut result = apply_batch(conn, sync, wanted, &writes);
        if matches!(&result, Err(e) if watch::is_full(e)) && watch::truncate_wal(conn) {
            // The WAL held the space: copied into the database and cut back,
            // the batch may fit now.
            result = apply_batch(conn, sync, wanted, &writes);
        }
        self.set_busy(false);
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
}

/// How a transaction reaches the disk: SQLite's `synchronous`, which is per
/// connection and applies from the next commit on, so it can change between
/// two transactions (a switch costs about 5 µs, against about 180 µs for an
/// fsync on the development VM; docs/PERFORMANCE.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sync {
    /// The WAL is fsync'd at every commit: the commit survives power loss.
    Full,
    /// The WAL is written at commit but not fsync'd: the commit survives kill
    /// -9 (the write is in the kernel's page cache) and becomes durable with the
    /// next FULL commit (one file, written in order) or checkpoint (which syncs
    /// the WAL before copying it).
    Normal,
}

/// Switches `synchronous` when it is not `wanted` already.
fn set_sync(conn: &Connection, current: &mut Sync, wanted: Sync) -> rusqlite::Result<()> {
    if *current != wanted {
        conn.prepare_cached(match wanted {
            Sync::Full => "PRAGMA synchronous = FULL",
            Sync::Normal => "PRAGMA synchronous = NORMAL",
        })?
        .execute([])?;
        *current = wanted;
    }
    Ok(())
}

/// One transaction for the whole batch, a savepoint per job of several entries,
/// committed as durably as `wanted` says (a failed switch fails the batch: a
/// charge is never committed without its fsync).
fn apply_batch(
    conn: &mut Connection,
    sync: &mut Sync,
    wanted: Sync,
    writes: &[(Vec<Entry>, Completion)],
) -> rusqlite::Result<Vec<Outcome>> {
    set_sync(conn, sync, wanted)?;
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

// === impl Stats ===

impl Stats {
    pub(super) fn record(&self, jobs: usize, micros: u128) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.jobs.fetch_add(jobs as u64, Ordering::Relaxed);
        self.largest_batch.fetch_max(jobs as u64, Ordering::Relaxed);
        self.commit_micros
            .fetch_add(u64::try_from(micros).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}
