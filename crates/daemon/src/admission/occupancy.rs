//! What connections hold besides reservations: named leases, and their place
//! in a bulkhead's line while they wait for a permit; and the per-key view of
//! calls in flight that `status` shows.

use std::time::Duration;

use super::Admission;
use crate::guard::concurrency::KeyOccupancy;
use crate::guard::lease::{Holder, LeaseError, LeaseOp, LeaseOutcome};

/// The most bulkhead keys `status` lists (the totals per bulkhead are in
/// `/metrics`): the copy under the engine lock stays short, and the reply small.
pub const MAX_LISTED_KEYS: usize = 256;

// === impl Admission (leases, waiters, occupancy) ===

impl Admission {
    /// Acquires, renews or releases the lease `name` for `holder`.
    ///
    /// # Errors
    /// A TTL of 0 or above `leases.max_ttl`; a new lease beyond
    /// `leases.max_per_connection` or `leases.max_total`.
    pub fn lease(
        &self,
        name: &str,
        op: LeaseOp,
        holder: Holder,
        now: Duration,
    ) -> Result<LeaseOutcome, LeaseError> {
        self.lock().guards.leases.request(name, op, holder, now)
    }

    /// Takes a waiting admission out of every bulkhead line it stands in
    /// (it timed out, or its caller is gone); a no-op once it left.
    pub fn leave_line(&self, ticket: u64) {
        self.lock().guards.concurrency.leave(ticket);
    }

    /// Admissions waiting for a bulkhead permit.
    pub fn waiters(&self) -> usize {
        self.lock().guards.concurrency.waiters()
    }

    /// Bulkhead keys with calls in flight or waiting (at most
    /// [`MAX_LISTED_KEYS`]), and the active-agent cap when it has any.
    pub fn in_flight(&self) -> Vec<KeyOccupancy> {
        self.lock().guards.concurrency.occupancy(MAX_LISTED_KEYS)
    }
}
