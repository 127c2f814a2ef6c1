//! The writer thread: group commit.
//!
//! One thread owns the SQLite connection. It takes every job queued while the
//! previous transaction was being committed, applies them in one transaction,
//! and only then answers each job, so nothing is acknowledged before it is
//! written and the cost of a commit is shared by every request that arrived
//! during the last one. Transactions are committed with `synchronous=NORMAL`:
//! jobs that hold only reservations are answered at once; the others wait for
//! the syncer thread's fsync (`syncer.rs`, which says why that split is safe),
//! so an admit never waits for a charge's fsync.
//!
//! A job of several entries is applied in its own savepoint, so a duplicate charge
//! (an idempotency key already in the ledger) rolls back that job alone and is
//! reported as such; a job of one entry needs none (it changes nothing when it is a
//! duplicate).
//!
//! A read (an idempotency lookup, a reload's budget books) is answered in its
//! place in the queue: the writes gathered before it are committed first. The
//! books of a budget whose reset changed move its charges to the new period
//! (`periods.rs`) in their own transaction.

use std::sync::mpsc;
use std::time::Instant;

use rusqlite::Connection;

use super::completion::Completion;
use super::inner::{Inner, Job, Read};
use super::syncer::{self, Committed};
use super::watch::{self, CHECK_EVERY, IDENTITY_FRESH_FOR};
use super::{periods, schema, Books, Entry, Opening, Outcome, StoreError};

/// Most jobs applied in one transaction.
const MAX_BATCH: usize = 4096;

// === impl Inner ===

impl Inner {
    /// The writer thread: group commit until every sender is gone; when idle,
    /// a look at the file's identity and, after a failure, a probe.
    pub(super) fn run(
        &self,
        mut conn: Connection,
        jobs: &mpsc::Receiver<Job>,
        syncer: &mpsc::Sender<Committed>,
    ) {
        // `schema::prepare` opened the connection with FULL for the start-up
        // writes; from here on the syncer makes commits durable. Should this
        // fail, FULL stays: slower, as durable.
        if let Err(e) = conn.execute_batch("PRAGMA synchronous = NORMAL") {
            log::warn!("the ledger stays at synchronous=FULL: {e}");
        }
        let mut checked = None;
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
                    Job::Read(read) => {
                        // A read sees every write queued before it: those
                        // gathered so far are committed first.
                        if !writes.is_empty() {
                            let gathered = std::mem::take(&mut writes);
                            self.commit_batch(&mut conn, syncer, gathered, &mut checked);
                        }
                        self.read(&conn, read, syncer);
                    }
                }
                if writes.len() < MAX_BATCH {
                    pending = jobs.try_recv().ok();
                }
            }
            if writes.is_empty() {
                continue;
            }
            self.commit_batch(&mut conn, syncer, writes, &mut checked);
        }
    }

    /// Applies one batch and answers its jobs, or hands them to the syncer:
    /// failed as a whole when the ledger file is not the one opened, before or
    /// after the transaction.
    ///
    /// Under load, one look at the file (a `statx`) per batch, not two: the
    /// look after the last batch, if it was less than [`IDENTITY_FRESH_FOR`]
    /// ago, serves as the look before this one. `checked` is when the last
    /// look found the file ours.
    fn commit_batch(
        &self,
        conn: &mut Connection,
        syncer: &mpsc::Sender<Committed>,
        writes: Vec<(Vec<Entry>, Completion)>,
        checked: &mut Option<Instant>,
    ) {
        let before = if checked.is_some_and(|at| at.elapsed() < IDENTITY_FRESH_FOR) {
            self.check_lost()
        } else {
            self.check_identity()
        };
        if let Err(error) = before {
            for (_, done) in writes {
                done.run(Err(error.clone()));
            }
            return;
        }
        let started = Instant::now();
        self.set_busy(true);
        let mut result = apply_batch(conn, &writes);
        if matches!(&result, Err(e) if watch::is_full(e)) && watch::truncate_wal(conn) {
            // The WAL held the space: copied into the database and cut back,
            // the batch may fit now.
            result = apply_batch(conn, &writes);
        }
        self.set_busy(false);
        let took = started.elapsed();
        self.stats.record(writes.len(), took.as_micros());
        metrics::histogram!(crate::metrics::STORE_COMMIT_DURATION).record(took.as_secs_f64());
        metrics::histogram!(crate::metrics::STORE_COMMIT_JOBS).record(writes.len() as f64);
        // Committed into a file that was deleted meanwhile is not durable: the
        // next start would not see it.
        let identity = self.check_identity();
        *checked = identity.is_ok().then(Instant::now);
        let result = match (result, identity) {
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
                let mut durable = Vec::new();
                for ((entries, done), outcome) in writes.into_iter().zip(outcomes) {
                    if syncer::needs_sync(&entries) {
                        durable.push((done, outcome));
                    } else {
                        done.run(Ok(outcome));
                    }
                }
                if durable.is_empty() {
                    return;
                }
                // The syncer ends only after the writer: a send fails only
                // if it panicked, and then these were never made durable.
                if let Err(mpsc::SendError(durable)) = syncer.send(durable) {
                    for (done, _) in durable {
                        done.run(Err(StoreError::Closed));
                    }
                }
            }
            Err(error) => {
                for (_, done) in writes {
                    done.run(Err(error.clone()));
                }
            }
        }
    }

    /// Answers a job that writes nothing, in its place in the queue.
    fn read(&self, conn: &Connection, read: Read, syncer: &mpsc::Sender<Committed>) {
        match read {
            Read::Lookup { key, reply } => {
                let _ = reply.send(schema::is_charged(conn, &key).map_err(|e| self.failed(&e)));
            }
            Read::Books { opening, reply } => {
                // It may write (a change of reset moves charges): a frozen
                // or failing disk holds it up as it would a commit.
                self.set_busy(true);
                let books = books_of(conn, &opening);
                self.set_busy(false);
                let books = match books {
                    Ok(books) => books,
                    Err(e) => {
                        let _ = reply.send(Err(self.failed(&e)));
                        return;
                    }
                };
                // Answered by the syncer, after the completions of every job
                // committed before: the daemon's memory then counts all that
                // these books hold (`Store::books`).
                let (done, _never_given_up) = Completion::new(Box::new(move |result, _late| {
                    let _ = reply.send(result.map(|_| books));
                }));
                // A failed send drops `done`, which answers `Closed`.
                let _ = syncer.send(vec![(done, Outcome::Done)]);
            }
            Read::FailWrites(fail) => {
                let _ = conn.pragma_update(None, "query_only", fail);
            }
        }
    }
}

/// The books of the budgets a reload opens, their charges re-filed first where
/// their reset changed, in one transaction (committed before the books are
/// answered, and made durable by the next fsync: the WAL is written in order).
/// The new resets are recorded only once the reload is applied
/// (`Entry::RecordReset`): one refused after this answer leaves the record
/// as the daemon still files, and the next opening moves again.
fn books_of(conn: &Connection, opening: &Opening) -> rusqlite::Result<Books> {
    let tx = conn.unchecked_transaction()?;
    let refiled = periods::refile(&tx, opening, periods::Record::WhenApplied)?;
    let mut books = schema::books(&tx, Some(&opening.names()))?;
    books.refiled = refiled;
    tx.commit()?;
    Ok(books)
}

/// One transaction for the whole batch, a savepoint per job of several entries.
///
/// The transaction's own statements (`BEGIN`, `COMMIT`, the savepoints) are
/// prepared once and kept in the connection's statement cache: rusqlite's
/// `Transaction` parses them anew each time, which was a fifth of this
/// thread's time under load.
fn apply_batch(
    conn: &Connection,
    writes: &[(Vec<Entry>, Completion)],
) -> rusqlite::Result<Vec<Outcome>> {
    run(conn, "BEGIN IMMEDIATE")?;
    let applied = apply_jobs(conn, writes).and_then(|outcomes| {
        run(conn, "COMMIT")?;
        Ok(outcomes)
    });
    // A failed statement or COMMIT (a full disk) may leave the transaction
    // open; it is rolled back so the next batch starts clean.
    if applied.is_err() && !conn.is_autocommit() {
        let _ = run(conn, "ROLLBACK");
    }
    applied
}

fn apply_jobs(
    conn: &Connection,
    writes: &[(Vec<Entry>, Completion)],
) -> rusqlite::Result<Vec<Outcome>> {
    let mut outcomes = Vec::with_capacity(writes.len());
    for (entries, _) in writes {
        // A savepoint costs two statements; most jobs are one entry, which changes
        // nothing when it answers Duplicate or NotFound (see `schema::apply`).
        if entries.len() == 1 {
            outcomes.push(schema::apply(conn, entries)?);
            continue;
        }
        run(conn, "SAVEPOINT job")?;
        // A failed statement fails the whole batch, whose transaction
        // `apply_batch` rolls back, savepoint and all.
        let outcome = schema::apply(conn, entries)?;
        if matches!(
            outcome,
            Outcome::Duplicate | Outcome::NotFound | Outcome::Refused(_)
        ) {
            run(conn, "ROLLBACK TO job")?; // the job alone is undone
        }
        run(conn, "RELEASE job")?;
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// One statement without parameters, from the statement cache.
fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}
