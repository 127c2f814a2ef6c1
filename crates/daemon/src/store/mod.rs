//! The durable ledger: the only module that touches disk.
//!
//! SQLite in WAL mode. One writer thread owns the connection and does group
//! commit; nothing is acknowledged before it is written to the ledger file.
//! Durability is split by what an entry protects ([`Entry::needs_sync`]): what
//! the operator pays or decided (charges, refunds, admin changes, durable quota
//! counts) is fsync'd before it is acknowledged and survives power loss; a
//! reservation, which only keeps calls in flight from overrunning a budget, is
//! written before its admit is answered (it survives kill -9 of the daemon) and
//! made durable by the next fsync. A power loss can lose the reservations made
//! since then, and it kills every agent that held them.
//!
//! Architecture Invariant: the hot path never waits on the disk while holding the
//! admission lock; it queues a job and awaits the answer outside the lock.
//!
//! One concept per file:
//! - `types.rs`: the vocabulary: [`Entry`], [`Outcome`], [`StoreError`], [`Snapshot`],
//!   [`Books`];
//! - `handle.rs`: [`Store`], the handle the daemon holds: open, commit, health;
//! - `completion.rs`: what a write does with its answer, run exactly once ([`Late`]);
//! - `writer.rs`: the writer thread: batching, one transaction per group commit;
//! - `syncer.rs`: the syncer thread: the fsync that charges wait for, and
//!   reservations do not;
//! - `checkpoint.rs`: the checkpoint thread: the WAL copied into the database
//!   off the writer thread;
//! - `watch.rs`: the disk watch: file identity, marker, WAL size, stuck commits,
//!   the probe after a failure (the ledger fails closed, and says so);
//! - `schema.rs`: tables, migrations, the startup load, how each entry is written;
//! - `filing.rs`: where a charge is filed, and what an admin's reset forgave;
//! - `sql.rs`: SQLite's signed integers and the ledger's unsigned ones;
//! - `periods.rs`: a budget whose reset changed has what its new period
//!   counts re-filed under that period.

mod checkpoint;
mod completion;
mod filing;
mod handle;
mod inner;
mod periods;
mod schema;
mod sql;
mod syncer;
mod types;
mod watch;
mod writer;

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub use completion::Late;
pub use handle::{Store, StoreOptions};
pub use inner::Stats;
pub use periods::{Opened, Opening, Refiled};
pub use types::{Books, Entry, Outcome, Snapshot, StoreError, StoredReservation};

/// The ledger file inside the state directory.
pub const LEDGER_FILE: &str = "ledger.sqlite3";

/// Written next to the ledger when it is created: a state directory with the
/// marker but without the ledger lost it (deleted, a wrong mount), and a start
/// there refuses to begin an empty ledger unless told to ([`StoreOptions::init`]).
pub const LEDGER_MARKER: &str = "ledger.marker";

/// The default of `daemon.commit_timeout`.
pub const DEFAULT_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// A poisoned lock only means a completion panicked while another thread held
/// it; the values behind the store's locks are whole at every point.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// What the tests (`use super::*`) name besides the store's own items.
#[cfg(test)]
use {crate::money::Usd, rusqlite::Connection, std::time::Instant};

#[cfg(test)]
mod tests;
