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

use std::future::Future;
use std::sync::Arc;

use super::{Admission, AdmissionError, Decision, Moment, Settlement};
use crate::clock::SharedClock;
use crate::money::Usd;
use crate::store::{Entry, Outcome as LedgerOutcome, Store, StoreError};

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
        let (admission, clock) = (Arc::clone(self), clock.clone());
        let completed = store.commit(entries, move |result| {
            pending.complete(&admission, result, Moment::read(&clock))
        });
        async move { completed.await? }
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
