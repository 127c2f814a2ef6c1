//! The syncer threads: make committed writes durable before they are answered.
//!
//! Durability is split by what an entry protects ([`Entry::needs_sync`]). Every
//! transaction is committed with `synchronous=NORMAL`: written to the WAL (into
//! the kernel's page cache, so it survives kill -9 of the daemon), not fsync'd.
//! The writer answers jobs that hold only reservations right after the commit;
//! it hands every other job (a charge, a refund, an admin change, a durable
//! quota count) here, and a syncer answers them only after an `fdatasync` of
//! the WAL that started after their commit: the same fsync SQLite's
//! `synchronous=FULL` makes at commit, moved off the writer thread so that
//! admits are never queued behind it. One fsync covers every transaction
//! committed before it (the WAL is one file, written in order), so the jobs that
//! arrive during one fsync share the next: group commit, once more.
//!
//! [`SYNCERS`] threads take groups from one queue, so a group committed while
//! an fsync runs starts its own at once instead of waiting for that one to end
//! (fsyncs of one file overlap on the disks measured: two at a time make ~1.6×
//! as many per second). Each has its own descriptor of the WAL: Linux reports a
//! writeback error to every descriptor open at the time (`errseq`), but to only
//! one of several fsyncs on a shared one, and an fsync that returned Ok because
//! another consumed the error would be a lie.
//!
//! An fsync that fails leaves the ledger untrustworthy (the kernel may have
//! dropped the pages it could not write, and the transactions are already
//! visible to the writer): the store is marked lost until a restart, its jobs
//! answered with the error, and every later write refused (fail closed). Groups
//! are answered in the order they were committed, each only once every earlier
//! group's fsync ended, and the lost mark is read just before a group is
//! answered: so once any fsync failed, no later group is answered Ok, whichever
//! thread synced it, and completions run in commit order (a refund's never
//! before the charge it gives back).

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::mpsc;
use std::time::Instant;

use super::completion::Completion;
use super::inner::Inner;
use super::{lock, Entry, Outcome, StoreError};

/// How many fsyncs of the WAL may run at once (one thread each).
pub(super) const SYNCERS: usize = 2;

/// Committed jobs waiting for the next fsync, with what each did.
pub(super) type Committed = Vec<(Completion, Outcome)>;

/// What an fsync of the WAL needs: a file, or a test's stand-in that fails on
/// cue.
pub(super) trait Wal {
    fn sync(&self) -> std::io::Result<()>;
}

impl Wal for File {
    fn sync(&self) -> std::io::Result<()> {
        self.sync_data()
    }
}

/// What the syncer threads share: where they take groups from, and the order
/// in which groups are answered.
pub(super) struct SyncQueue {
    /// The writer's groups and the number the next one taken gets: taken under
    /// one lock, so numbers follow the order of the commits.
    taking: std::sync::Mutex<(mpsc::Receiver<Committed>, u64)>,
    answers: std::sync::Mutex<Answers>,
}

/// Groups whose fsync ended, waiting for every earlier one.
struct Answers {
    /// The number of the next group to answer.
    next: u64,
    /// Synced (or failed) before an earlier group: how its fsync ended.
    parked: BTreeMap<u64, (Result<(), StoreError>, Committed)>,
    /// A thread is answering groups now; the others park theirs and go back
    /// to the queue (so a slow completion never holds up the next fsync).
    answering: bool,
}

impl SyncQueue {
    pub(super) fn new(committed: mpsc::Receiver<Committed>) -> SyncQueue {
        SyncQueue {
            taking: std::sync::Mutex::new((committed, 0)),
            answers: std::sync::Mutex::new(Answers {
                next: 0,
                parked: BTreeMap::new(),
                answering: false,
            }),
        }
    }

    /// The next group, all queued ones merged, and its number; `None` when the
    /// writer is gone.
    fn take(&self) -> Option<(u64, Committed)> {
        let mut taking = lock(&self.taking);
        let mut waiting = taking.0.recv().ok()?;
        while let Ok(more) = taking.0.try_recv() {
            waiting.extend(more);
        }
        let number = taking.1;
        taking.1 += 1;
        Some((number, waiting))
    }
}

impl Inner {
    /// A syncer thread (`slot` of [`SYNCERS`]): until the writer is gone, take
    /// the groups committed meanwhile, fsync the WAL, and answer them in
    /// commit order.
    pub(super) fn sync_loop(&self, slot: usize, wal: &impl Wal, queue: &SyncQueue) {
        while let Some((number, waiting)) = queue.take() {
            let started = Instant::now();
            self.set_syncing(slot, true);
            let synced = wal.sync();
            self.set_syncing(slot, false);
            let took = started.elapsed();
            self.stats.record_sync(took.as_micros());
            metrics::histogram!(crate::metrics::STORE_SYNC_DURATION).record(took.as_secs_f64());
            metrics::histogram!(crate::metrics::STORE_SYNC_JOBS).record(waiting.len() as f64);
            // Marked lost at once, before any group is answered: a group
            // waiting behind this one must not be answered Ok.
            let synced = synced.map_err(|e| self.lose(format!(
                "an fsync of the ledger's write-ahead log failed ({e}): what was written since the last one may not be on disk, so budget-governed requests are refused. Check the disk, then restart the daemon"
            )));
            self.answer_in_order(queue, number, synced, waiting);
        }
    }

    /// Parks group `number`, and answers it and every later group already
    /// synced once all earlier ones are answered, unless another thread is
    /// answering (which then answers these too).
    fn answer_in_order(
        &self,
        queue: &SyncQueue,
        number: u64,
        synced: Result<(), StoreError>,
        waiting: Committed,
    ) {
        let mut answers = lock(&queue.answers);
        answers.parked.insert(number, (synced, waiting));
        if answers.answering {
            return;
        }
        answers.answering = true;
        loop {
            let next = answers.next;
            let Some((synced, group)) = answers.parked.remove(&next) else {
                answers.answering = false;
                return;
            };
            answers.next += 1;
            drop(answers);
            // Read now, after every earlier group's fsync ended: a failure of
            // any of them (or a deleted file) answers this group too.
            match synced.and_then(|()| self.check_identity()) {
                Ok(()) => {
                    for (done, outcome) in group {
                        done.run(Ok(outcome));
                    }
                }
                Err(error) => {
                    for (done, _) in group {
                        done.run(Err(error.clone()));
                    }
                }
            }
            answers = lock(&queue.answers);
        }
    }
}

/// Whether a job's answer waits for the fsync ([`Entry::needs_sync`]).
pub(super) fn needs_sync(entries: &[Entry]) -> bool {
    entries.iter().any(Entry::needs_sync)
}
