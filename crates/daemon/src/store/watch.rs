//! The disk watch: how the writer finds out that the disk under the ledger
//! misbehaves, and what it keeps from happening.
//!
//! Architecture Invariant: the ledger fails closed, and says so. The writer thread
//! checks the file's identity (device and inode) before and after every batch
//! (under load the look after one serves as the look before the next) and once a
//! second: a ledger deleted or replaced under the daemon fails every later
//! write (a commit into an unlinked file would be lost at the next start). A
//! commit that takes longer than `daemon.commit_timeout` (a frozen or dying
//! disk) is answered [`StoreError::TimedOut`] and health turns unhealthy while it
//! is stuck; a job abandoned that way is never applied if the writer has not
//! started it, and its completion is told it came late if it had (see
//! [`super::Late`]). After a failure (a full disk), a probe transaction once a
//! second finds out when writes work again, and the WAL is kept from filling a
//! small filesystem. A start that finds the ledger missing in a directory that
//! held one (the marker file [`super::LEDGER_MARKER`]) refuses to create an empty
//! one unless the operator says so (`--init-ledger`).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::Connection;

use super::inner::Inner;
use super::{lock, schema, StoreError};

/// How often the writer thread, when idle, checks the file's identity and (when
/// the last write failed) probes whether writes work again.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long a look at the ledger file that found it the one opened stands for
/// the look before the writer's next transaction. A file replaced meanwhile is
/// still found by the look after that transaction, and its jobs fail; what this
/// allows is that one transaction into the old file, as a replacement during a
/// transaction always could.
pub(super) const IDENTITY_FRESH_FOR: Duration = Duration::from_millis(1);

/// The WAL is checkpointed (copied into the database) by the writer once it
/// holds this many pages (32 MiB; the checkpoint thread copies it a quarter at
/// a time before that, `checkpoint.rs`) ...
///
/// Eight times SQLite's default: a checkpoint copies each page changed since
/// the last once, however often it changed, and fsyncs both files, so fewer,
/// larger ones cost the disk less (at 16 connections × pipeline 1 with a
/// budget, 1,000 pages meant several checkpoints a second, whose fsyncs slowed
/// the syncer's; docs/PERFORMANCE.md).
const WAL_PAGES_MAX: u64 = 8192;

/// ... or an eighth of the state filesystem, whichever is less, and cut back to
/// that size after each checkpoint (`journal_size_limit`): on a small filesystem
/// a WAL that never shrinks fills it, and once full a checkpoint has no room to
/// copy it into the database either.
const WAL_SHARE_OF_FILESYSTEM: u64 = 8;

// === impl Inner ===

impl Inner {
    /// Marks the start (`true`) or the end of a transaction, for [`Inner::stuck`].
    pub(super) fn set_busy(&self, busy: bool) {
        self.mark(&self.busy_since, busy);
    }

    /// Marks the start or the end of an fsync of the WAL (`syncer.rs`), which
    /// a frozen or dying disk holds up as it would a commit.
    pub(super) fn set_syncing(&self, syncing: bool) {
        self.mark(&self.syncing_since, syncing);
    }

    fn mark(&self, since: &AtomicU64, busy: bool) {
        let at = if busy {
            u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
        } else {
            0
        };
        since.store(at, Ordering::Release);
    }

    /// Between jobs: is the file still ours, and — after a failure — do writes
    /// work again (a disk that was full has room)? Health recovers without
    /// waiting for the next budget write.
    pub(super) fn idle_check(&self, conn: &mut Connection) {
        if self.check_identity().is_err() || lock(&self.health).is_none() {
            return;
        }
        truncate_wal(conn);
        self.set_busy(true);
        let probe = schema::probe(conn);
        self.set_busy(false);
        if probe.is_ok() && self.check_identity().is_ok() {
            log::info!("the ledger at {} accepts writes again", self.path.display());
            self.set_health(None);
        }
    }

    /// Whether the ledger was found lost (without looking at the file).
    pub(super) fn check_lost(&self) -> Result<(), StoreError> {
        match lock(&self.lost).clone() {
            Some(message) => Err(StoreError::Failed {
                path: self.path.display().to_string(),
                message,
            }),
            None => Ok(()),
        }
    }

    /// Whether the ledger file is still the one opened; once it is not, it never
    /// is again for this process (health says so until a restart).
    pub(super) fn check_identity(&self) -> Result<(), StoreError> {
        self.check_lost()?;
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
        Err(self.lose(format!(
            "{problem}; writes into it would not survive a restart, so budget-governed requests are refused. Restore the file and restart the daemon (a start without it refuses to begin an empty ledger unless given --init-ledger)"
        )))
    }

    /// Marks the ledger as not to be trusted until a restart (every later
    /// write fails with `message`, and health shows it).
    pub(super) fn lose(&self, message: String) -> StoreError {
        log::error!(
            message_id = crate::logging::message_id::LEDGER_FAILED;
            "ledger {}: {message}", self.path.display()
        );
        *lock(&self.lost) = Some(message.clone());
        StoreError::Failed {
            path: self.path.display().to_string(),
            message,
        }
    }

    /// Why a commit counts as stuck, if the running one has been going for
    /// longer than the commit timeout.
    pub(super) fn stuck(&self) -> Option<String> {
        let since = self.running_since()?;
        let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        let running = Duration::from_millis(now.saturating_sub(since - 1));
        // A waiter gave up on this one: its request was answered Unavailable
        // after commit_timeout from its queueing, which can come a moment
        // before the batch itself has run that long.
        let given_up = self.gave_up_on.load(Ordering::Acquire) == since;
        (given_up || running > self.commit_timeout).then(|| {
            format!(
                "a ledger commit has been running for {}s, longer than daemon.commit_timeout ({}s): is the state filesystem frozen, full or failing?",
                running.max(self.commit_timeout).as_secs(),
                self.commit_timeout.as_secs_f64()
            )
        })
    }

    /// A waiter gave up on its commit: remembers the batch or fsync running
    /// now, which holds it up ([`Inner::stuck`]).
    pub(super) fn note_gave_up(&self) {
        if let Some(since) = self.running_since() {
            self.gave_up_on.store(since, Ordering::Release);
        }
    }

    /// The start of the batch or fsync that started first (none running:
    /// `None`).
    fn running_since(&self) -> Option<u64> {
        [&self.busy_since, &self.syncing_since]
            .iter()
            .map(|at| at.load(Ordering::Acquire))
            .filter(|&at| at != 0)
            .min()
    }

    pub(super) fn timed_out(&self) -> StoreError {
        StoreError::TimedOut {
            path: self.path.display().to_string(),
            waited: self.commit_timeout,
        }
    }

    pub(super) fn failed(&self, err: &rusqlite::Error) -> StoreError {
        let message = err.to_string();
        self.set_health(Some(message.clone()));
        StoreError::Failed {
            path: self.path.display().to_string(),
            message,
        }
    }

    pub(super) fn set_health(&self, health: Option<String>) {
        *lock(&self.health) = health;
    }
}

/// The marker that says this directory holds a ledger ([`LEDGER_MARKER`]).
pub(super) fn write_marker(marker: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(marker)?;
    file.write_all(
        b"This directory holds the automation-framework ledger (ledger.sqlite3).\n\
          If the ledger is missing, automation-frameworkd refuses to start an empty one\n\
          unless started with --init-ledger: restore it from a backup instead.\n",
    )?;
    file.sync_all()
}

/// How many pages the WAL may hold before the writer checkpoints: 8,192, or an
/// eighth of the filesystem under `dir` when that is less (at least 16).
pub(super) fn wal_pages(dir: &Path) -> u64 {
    let share = nix::sys::statvfs::statvfs(dir).map_or(u64::MAX, |fs| {
        fs.blocks().saturating_mul(fs.fragment_size()) / WAL_SHARE_OF_FILESYSTEM / schema::PAGE_SIZE
    });
    share.clamp(16, WAL_PAGES_MAX)
}

/// SQLITE_FULL: the disk (or the filesystem's quota) is full.
pub(super) fn is_full(err: &rusqlite::Error) -> bool {
    matches!(err, rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::DiskFull)
}

/// Copies the WAL into the database and truncates it to nothing, giving the
/// filesystem back its space. Returns whether it completed.
pub(super) fn truncate_wal(conn: &mut Connection) -> bool {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
        row.get::<_, i64>(0)
    })
    .is_ok_and(|busy| busy == 0)
}
