//! A write's completion: what the daemon does with the ledger's answer, run
//! exactly once whoever is (or is no longer) waiting for it.
//!
//! This is what keeps memory equal to the ledger: the effect of a commit on
//! memory is tied to the transaction, not to the future a connection awaits, so
//! a connection that goes away mid-commit, a dropped reply or a closed store
//! cannot leave the daemon's memory behind its ledger. A waiter that gives up
//! (`daemon.commit_timeout`) races the writer for the job through one atomic
//! claim, so a job is either never applied or completed as [`Late`].

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use super::{Outcome, StoreError};

/// What a write does with the ledger's answer, run exactly once: by the writer
/// thread right after the transaction committed or failed, or — if the job never
/// reaches a transaction (the store is closed or was never opened) — when it is
/// dropped. Whoever was waiting for the reply has no part in it, so a connection
/// that goes away mid-commit cannot leave the daemon's memory behind its ledger.
pub(super) struct Completion {
    complete: Option<Complete>,
    /// Who owns the answer: the writer or a waiter that gave up ([`claim`]).
    claim: Arc<AtomicU8>,
}

pub(super) type Complete = Box<dyn FnOnce(Result<Outcome, StoreError>, Late) + Send>;

/// Whether the waiter of a write had already been answered
/// [`StoreError::TimedOut`] when the transaction that held the write finished.
/// A late success is durable all the same: memory must follow the ledger, and
/// what the waiter was told (nothing acknowledged) must stay true, so a late
/// admission is undone (see `admission::commit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Late {
    No,
    Yes,
}

/// The states of [`Completion::claim`].
mod claim {
    /// In the queue; the writer has not looked at it.
    pub const QUEUED: u8 = 0;
    /// In a transaction.
    pub const WRITING: u8 = 1;
    /// Answered by the writer.
    pub const DONE: u8 = 2;
    /// Given up by its waiter before the writer took it: never applied.
    pub const ABANDONED: u8 = 3;
    /// Given up by its waiter while in a transaction: completed as [`super::Late`].
    pub const ABANDONED_WRITING: u8 = 4;
}

/// The waiter's side of a [`Completion`]'s claim: how it gives up.
pub(super) struct Waiter {
    claim: Arc<AtomicU8>,
}

impl Waiter {
    /// Gives the job up: true when the writer had not answered it yet (it will
    /// then never be applied, or complete as [`Late::Yes`]), false when the
    /// writer answered just now and the answer is on its way.
    pub(super) fn give_up(&self) -> bool {
        self.claim
            .compare_exchange(
                claim::QUEUED,
                claim::ABANDONED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .or_else(|_| {
                self.claim.compare_exchange(
                    claim::WRITING,
                    claim::ABANDONED_WRITING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
            })
            .is_ok()
    }
}

// === impl Completion ===

impl Completion {
    /// A queued completion, and the handle its waiter gives up with.
    pub(super) fn new(complete: Complete) -> (Completion, Waiter) {
        let claim = Arc::new(AtomicU8::new(claim::QUEUED));
        let done = Completion {
            complete: Some(complete),
            claim: Arc::clone(&claim),
        };
        (done, Waiter { claim })
    }

    /// Claims the job for a transaction; false when its waiter gave up first.
    pub(super) fn take_for_writing(&self) -> bool {
        self.claim
            .compare_exchange(
                claim::QUEUED,
                claim::WRITING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    pub(super) fn run(mut self, result: Result<Outcome, StoreError>) {
        self.finish(result);
    }

    fn finish(&mut self, result: Result<Outcome, StoreError>) {
        if let Some(complete) = self.complete.take() {
            let previous = self.claim.swap(claim::DONE, Ordering::AcqRel);
            let late = if previous == claim::ABANDONED_WRITING {
                Late::Yes
            } else {
                Late::No
            };
            // A panic here is a bug in a completion; it must not take the writer
            // thread, and with it every later commit, down too.
            let ran =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| complete(result, late)));
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
