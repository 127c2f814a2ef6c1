//! The syncer thread: makes committed writes durable before they are answered.
//!
//! Durability is split by what an entry protects ([`Entry::needs_sync`]). Every
//! transaction is committed with `synchronous=NORMAL`: written to the WAL (into
//! the kernel's page cache, so it survives kill -9 of the daemon), not fsync'd.
//! The writer answers jobs that hold only reservations right after the commit;
//! it hands every other job (a charge, a refund, an admin change, a durable
//! quota count) here, and this thread answers them only after an `fdatasync` of
//! the WAL that started after their commit: the same fsync SQLite's
//! `synchronous=FULL` makes at commit, moved off the writer thread so that
//! admits are never queued behind it. One fsync covers every transaction
//! committed before it (the WAL is one file, written in order), so the jobs that
//! arrive during one fsync share the next: group commit, once more.
//!
//! An fsync that fails leaves the ledger untrustworthy (the kernel may have
//! dropped the pages it could not write, and the transactions are already
//! visible to the writer): the store is marked lost until a restart, its jobs
//! answered with the error, and every later write refused (fail closed).

use std::fs::File;
use std::sync::mpsc;
use std::time::Instant;

use super::completion::Completion;
use super::inner::Inner;
use super::{Entry, Outcome};

/// Committed jobs waiting for the next fsync, with what each did.
pub(super) type Committed = Vec<(Completion, Outcome)>;

impl Inner {
    /// The syncer thread: until the writer is gone, fsync the WAL for every
    /// group of committed jobs queued meanwhile, then answer them.
    pub(super) fn sync_loop(&self, wal: &File, committed: &mpsc::Receiver<Committed>) {
        while let Ok(first) = committed.recv() {
            let mut waiting = first;
            while let Ok(more) = committed.try_recv() {
                waiting.extend(more);
            }
            let started = Instant::now();
            self.set_syncing(true);
            let synced = wal.sync_data();
            self.set_syncing(false);
            let took = started.elapsed();
            self.stats.record_sync(took.as_micros());
            metrics::histogram!(crate::metrics::STORE_SYNC_DURATION).record(took.as_secs_f64());
            metrics::histogram!(crate::metrics::STORE_SYNC_JOBS).record(waiting.len() as f64);
            // Synced into a file that was deleted meanwhile is not durable.
            let result = match synced {
                Ok(()) => self.check_identity(),
                Err(e) => Err(self.lose(format!(
                    "an fsync of the ledger's write-ahead log failed ({e}): what was written since the last one may not be on disk, so budget-governed requests are refused. Check the disk, then restart the daemon"
                ))),
            };
            match result {
                Ok(()) => {
                    for (done, outcome) in waiting {
                        done.run(Ok(outcome));
                    }
                }
                Err(error) => {
                    for (done, _) in waiting {
                        done.run(Err(error.clone()));
                    }
                }
            }
        }
    }
}

/// Whether a job's answer waits for the fsync ([`Entry::needs_sync`]).
pub(super) fn needs_sync(entries: &[Entry]) -> bool {
    entries.iter().any(Entry::needs_sync)
}
