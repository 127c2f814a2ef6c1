//! The one commit path: ledger entries, and what the daemon's memory does once
//! the ledger has answered.
//!
//! Every decision that must outlive a crash (an admission against a budget or a
//! durable quota, a charge, an admin change, an orphan's settlement) comes out of
//! the engine as a [`Durable`]: the entries to write and a [`Pending`] value that
//! holds what the decision took. [`Admission::commit`] hands both to the store,
//! whose writer thread applies the pending value to memory the moment the
//! transaction commits or fails — not whoever awaits the reply. A connection that
//! goes away mid-commit, a reply future that is dropped, a daemon shutting down:
//! none of them can leave memory behind the ledger, or a reservation stuck
//! half-committed.
//!
//! Architecture Invariant: memory equals the ledger. `reserved` is the sum of the
//! open reservations the ledger holds and `spent` the balance of the current
//! period, after every terminal path (reply sent, connection dropped, shutdown,
//! ledger failure), because the only code that changes them after a durable
//! decision is a `Pending::complete`, and every commit runs exactly one.
//!
//! A commit whose waiter gave up (`daemon.commit_timeout`: a frozen disk) was
//! answered `Unavailable`, so nothing may come of it that the caller would have
//! to know about: if the transaction holding it still commits, the completion
//! runs as [`Pending::complete_late`] — an admission is undone in memory and
//! its reservation deleted from the ledger by a follow-up write (the caller was
//! told no, so it makes no call); a charge or an admin change stays (a retry of
//! it is a duplicate, counted once).

use std::future::Future;
use std::sync::Arc;

use super::{Admission, AdmissionError, Decision, Moment, Settlement};
use crate::clock::SharedClock;
use crate::money::Usd;
use crate::store::{Entry, Late, Outcome as LedgerOutcome, Store, StoreError};

/// Ledger entries, and what to do in memory once they are (or are not) durable.
#[must_use = "a durable decision holds what it took until it is committed"]
#[derive(Debug)]
pub struct Durable<P> {
    pub entries: Vec<Entry>,
    pub pending: P,
}

/// What a durable decision does to memory when the ledger answers. Runs exactly
/// once, on the store's writer thread (or at once if the store cannot take the
/// write): it must be quick and must not wait.
pub trait Pending: Send + 'static {
    /// What the request is answered with once the entries are durable.
    type Output: Send + 'static;

    /// Applies the ledger's answer: on success, what was decided becomes true in
    /// memory; on failure, what the decision took is given back (or re-opened for
    /// a retry) and the error is passed on.
    ///
    /// # Errors
    /// The store's error, when the entries were not written.
    fn complete(
        self,
        admission: &Admission,
        result: Result<LedgerOutcome, StoreError>,
        now: Moment,
    ) -> Result<Self::Output, StoreError>;

    /// [`Pending::complete`] for a write whose waiter was already answered
    /// `Unavailable` (it timed out) when its transaction finished. Returns the
    /// entries that undo in the ledger what the caller was told did not happen.
    /// By default the result is applied as usual: durable facts stay facts.
    fn complete_late(
        self,
        admission: &Admission,
        result: Result<LedgerOutcome, StoreError>,
        now: Moment,
    ) -> Vec<Entry>
    where
        Self: Sized,
    {
        let _ = self.complete(admission, result, now);
        Vec::new()
    }
}

/// An allowed admission whose reservation (or durable quota usage) is being
/// written.
#[derive(Debug)]
pub struct PendingAdmit {
    pub(super) id: u64,
    pub(super) decision: Decision,
}

/// A report waiting for its charge to be durable.
#[derive(Debug, Clone)]
pub struct PendingReport {
    pub(super) reservation: Option<u64>,
    pub(super) service: String,
    pub(super) amount: Usd,
    pub(super) filed: Vec<(String, u64)>,
    pub(super) outcome: super::Outcome,
}

// === impl Admission (commit) ===

impl Admission {
    /// Writes `durable`'s entries and applies its pending value to memory when the
    /// transaction completes. The returned future only reports the result: drop
    /// it, and the effect on memory happens all the same.
    ///
    /// Call it without holding the engine lock (every `Admission` method has
    /// released it on return).
    pub fn commit<P: Pending>(
        self: &Arc<Self>,
        store: &Store,
        clock: &SharedClock,
        durable: Durable<P>,
    ) -> impl Future<Output = Result<P::Output, StoreError>> + Send + 'static {
        let Durable { entries, pending } = durable;
        let (admission, clock, follow_up) = (Arc::clone(self), clock.clone(), store.clone());
        let completed = store.commit_late(entries, move |result, late| {
            let now = Moment::read(&clock);
            match late {
                Late::No => Some(pending.complete(&admission, result, now)),
                Late::Yes => {
                    let undo = pending.complete_late(&admission, result, now);
                    if !undo.is_empty() {
                        // Queued from the writer thread; nobody waits for it.
                        drop(follow_up.write(undo));
                    }
                    None
                }
            }
        });
        async move {
            match completed.await? {
                Some(output) => output,
                // The waiter gave up before this ran, so no one reads this.
                None => Err(StoreError::Closed),
            }
        }
    }
}

// === impl PendingAdmit ===

impl PendingAdmit {
    /// The decision, for logging before the commit completes.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }
}

impl Pending for PendingAdmit {
    type Output = Decision;

    fn complete(
        self,
        admission: &Admission,
        result: Result<LedgerOutcome, StoreError>,
        _now: Moment,
    ) -> Result<Decision, StoreError> {
        let mut engine = admission.lock();
        match result {
            Ok(_) => {
                engine.confirm(self.id);
                Ok(self.decision)
            }
            Err(err) => {
                engine.abort(self.id);
                Err(err)
            }
        }
    }

    fn complete_late(
        self,
        admission: &Admission,
        result: Result<LedgerOutcome, StoreError>,
        _now: Moment,
    ) -> Vec<Entry> {
        // The caller was answered Unavailable and makes no call: whatever the
        // ledger did, the reservation must not stay open.
        admission.lock().abort(self.id);
        match result {
            Ok(_) => vec![Entry::Unreserve { id: self.id }],
            Err(_) => Vec::new(),
        }
    }
}

impl Pending for PendingReport {
    type Output = Settlement;

    fn complete(
        self,
        admission: &Admission,
        result: Result<LedgerOutcome, StoreError>,
        now: Moment,
    ) -> Result<Settlement, StoreError> {
        admission.lock().finish_report(self, result, now)
    }
}

impl Pending for super::PendingAdmin {
    type Output = Result<String, AdmissionError>;

    fn complete(
        self,
        admission: &Admission,
        result: Result<LedgerOutcome, StoreError>,
        _now: Moment,
    ) -> Result<Result<String, AdmissionError>, StoreError> {
        // A failed write changed nothing, in the ledger or here.
        let outcome = result?;
        Ok(admission.lock().finish_admin(self, outcome))
    }
}
