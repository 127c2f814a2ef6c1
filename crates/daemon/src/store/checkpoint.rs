//! The checkpoint thread: copies the WAL into the database file off the writer
//! thread.
//!
//! SQLite checkpoints from the connection whose commit took the WAL past its
//! size: it copies every page changed since the last checkpoint into the
//! database file and fsyncs both files. On the writer thread that held up every
//! commit queued meanwhile (about 4 ms each, a few times a second under load, so
//! a report's commit waited behind it), and its fsyncs competed with the
//! syncer's. Here a thread of its own, on a connection of its own, runs a
//! `PASSIVE` checkpoint each time the writer's commits have added a quarter of
//! the WAL's limit: it never waits for the writer and never blocks it (SQLite
//! lets one connection checkpoint while another commits).
//!
//! The writer still keeps the WAL bounded (watch.rs, a small filesystem): once the
//! WAL holds its limit, the writer checkpoints after its commit as SQLite's
//! autocheckpoint did, copying only what this thread has not copied yet. That
//! is needed, not only a safety net: SQLite starts the WAL over from its
//! beginning only when a write transaction begins with every frame copied, and
//! under a steady stream of commits only a checkpoint run between the writer's
//! commit and its next transaction — its own — arranges that.

use std::ffi::c_int;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use rusqlite::hooks::Wal;
use rusqlite::Connection;

use super::inner::{Inner, Stats};

/// A checkpoint by this thread each time the WAL grew by its limit over this.
const PARTS: u64 = 4;

/// Replaces SQLite's autocheckpoint on the writer's connection `conn`: after each
/// commit, a nudge to the checkpoint thread every `wal_pages / PARTS` frames, and
/// the writer's own checkpoint once the WAL holds `wal_pages`.
pub(super) fn install(
    conn: &mut Connection,
    wal_pages: u64,
    nudge: mpsc::SyncSender<()>,
    inner: Arc<Inner>,
) -> rusqlite::Result<()> {
    let step = (wal_pages / PARTS).max(1);
    // The WAL's frame count at the last nudge.
    let mut nudged_at = 0;
    conn.wal_hook(Some(move |wal: &mut Wal, frames: c_int| {
        let frames = u64::try_from(frames).unwrap_or(0);
        if frames < nudged_at {
            nudged_at = 0; // the WAL started over
        }
        if frames >= wal_pages {
            // A PASSIVE checkpoint, as SQLite's own hook runs. It fails busy while
            // the thread checkpoints; the next commit tries again. An error here
            // must not fail the commit, which has happened.
            if wal.checkpoint().is_ok() {
                inner
                    .stats
                    .writer_checkpoints
                    .fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::metrics::STORE_WRITER_CHECKPOINTS).increment(1);
            } else {
                inner
                    .stats
                    .writer_checkpoints_busy
                    .fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::metrics::STORE_WRITER_CHECKPOINTS_BUSY).increment(1);
            }
        } else if frames >= nudged_at + step {
            nudged_at = frames;
            // Full: a nudge is already waiting, and one checkpoint serves both.
            let _ = nudge.try_send(());
        }
        Ok(())
    }))
}

/// A nudge channel: at most one waits (the thread copies the whole WAL each time).
pub(super) fn channel() -> (mpsc::SyncSender<()>, mpsc::Receiver<()>) {
    mpsc::sync_channel(1)
}

/// The thread: a `PASSIVE` checkpoint per nudge, until the writer's connection
/// is closed (its hook holds one sender, the writer thread another until the
/// connection is closed), so this connection closes last.
pub(super) fn run(conn: &Connection, nudges: &mpsc::Receiver<()>, stats: &Stats) {
    while nudges.recv().is_ok() {
        let started = Instant::now();
        // Busy (the writer is checkpointing at the limit) or failed: the
        // writer's own checkpoint keeps the WAL bounded all the same.
        match passive(conn) {
            Ok(true) => {
                let took = started.elapsed();
                stats.record_checkpoint(took.as_micros());
                metrics::histogram!(crate::metrics::STORE_CHECKPOINT_DURATION)
                    .record(took.as_secs_f64());
            }
            Ok(false) => {}
            Err(e) => log::debug!("a checkpoint of the ledger's WAL failed: {e}"),
        }
    }
}

/// One `PASSIVE` checkpoint; false when another was running (SQLite's first
/// column, busy).
fn passive(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        row.get::<_, i64>(0).map(|busy| busy == 0)
    })
}
