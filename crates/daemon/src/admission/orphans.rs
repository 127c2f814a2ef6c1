//! Orphans: reservations that hold money and outlived their connection (or the
//! previous run), settled by `budget.orphan_policy` once `budget.orphan_timeout`
//! has passed — in batches, one ledger job (so one commit) per batch.
//!
//! Settling one orphan per job made the ledger's writer the bottleneck of a flood
//! (issue 16: ~4,000 settlements a second against ~70,000 new orphans a second)
//! and logged a line per orphan under the engine lock. A batch of up to
//! [`BATCH`] orphans is one job: one transaction, one fsync, one completion that
//! takes the engine lock once, one log line. A job of several entries is applied
//! in its own savepoint, so if one entry answers `Duplicate` (its idempotency key
//! was charged by someone else first) the whole batch rolls back: its orphans are
//! opened again and settled one per job from then on, where a duplicate closes
//! just that orphan without counting it twice.

use super::{Admission, Durable, Engine, Moment, Pending, Stage};
use crate::config::OrphanPolicy;
use crate::money::Usd;
use crate::store::{Entry, Outcome as LedgerOutcome, StoreError};

/// Orphans settled by one ledger job. A charge is a few hundred bytes of SQL
/// parameters; 1,024 of them make a transaction of a few milliseconds.
pub(super) const BATCH: usize = 1024;

/// Orphaned reservations being settled by policy, one ledger job.
#[derive(Debug)]
pub struct PendingOrphans {
    orphans: Vec<Settling>,
}

/// One orphan of a batch.
#[derive(Debug)]
struct Settling {
    id: u64,
    /// The charge the policy files, if it charges.
    charge: Option<Charge>,
}

/// An amount and the (budget, period start) pairs it is filed under.
type Charge = (Usd, Vec<(String, u64)>);

impl Engine {
    /// Due orphans, marked settling, in jobs of at most [`BATCH`] (those whose
    /// batch was rolled back by a duplicate key, one per job).
    pub(super) fn due_orphans(&mut self, now: Moment) -> Vec<Durable<PendingOrphans>> {
        let timeout = self.config.budget.orphan_timeout;
        let policy = self.config.budget.orphan_policy;
        let (mut alone, mut batched): (Vec<u64>, Vec<u64>) = (Vec::new(), Vec::new());
        for (id, r) in self.reservations.iter() {
            if r.stage == Stage::Open && r.orphaned_at.is_some_and(|t| now.mono >= t + timeout) {
                if r.settle_alone {
                    alone.push(*id);
                } else {
                    batched.push(*id);
                }
            }
        }
        let mut jobs = Vec::with_capacity(alone.len() + batched.len().div_ceil(BATCH));
        for ids in alone.chunks(1).chain(batched.chunks(BATCH)) {
            let mut entries = Vec::with_capacity(ids.len());
            let mut orphans = Vec::with_capacity(ids.len());
            for &id in ids {
                let (entry, charge) = self.settle_by(policy, id, now);
                entries.push(entry);
                orphans.push(Settling { id, charge });
            }
            jobs.push(Durable {
                entries,
                pending: PendingOrphans { orphans },
            });
        }
        jobs
    }

    /// Marks orphan `id` settling and returns the entry that settles it by
    /// `policy`, with the charge to count once it is written.
    fn settle_by(&mut self, policy: OrphanPolicy, id: u64, now: Moment) -> (Entry, Option<Charge>) {
        let (hold, agent, service) = {
            let r = self
                .reservations
                .get_mut(&id)
                .expect("the caller found it open");
            r.stage = Stage::Settling;
            (
                super::reservation::hold(r).cloned(),
                r.agent.clone(),
                r.service.clone(),
            )
        };
        let (budgets, estimate) = hold.map_or((Vec::new(), Usd::ZERO), |h| (h.budgets, h.estimate));
        match policy {
            OrphanPolicy::ChargeEstimate => {
                let filed = self.file(&budgets, now);
                let entry = Entry::Charge {
                    key: super::reservation_key(id),
                    reservation: Some(id),
                    agent: agent.to_string(),
                    service: service.to_string(),
                    amount: estimate,
                    budgets: filed.clone(),
                    at: now.unix,
                };
                (entry, Some((estimate, filed)))
            }
            OrphanPolicy::Release => (Entry::Unreserve { id }, None),
        }
    }

    /// Applies a batch's ledger answer: written, every orphan closes and its
    /// charge counts; rolled back by a duplicate, the batch's orphans open again
    /// to be settled alone (a lone duplicate was charged before: it closes,
    /// counted once); failed, they open again for the next tick.
    fn finish_orphans(
        &mut self,
        pending: PendingOrphans,
        result: &Result<LedgerOutcome, StoreError>,
    ) {
        let batch = pending.orphans.len();
        let reopen = |engine: &mut Engine, alone: bool| {
            for orphan in &pending.orphans {
                if let Some(r) = engine.reservations.get_mut(&orphan.id) {
                    r.stage = Stage::Open;
                    r.settle_alone |= alone;
                }
            }
        };
        match result {
            Err(_) => return reopen(self, false),
            // Nothing was written (a balance would overflow): a batch is tried
            // again orphan by orphan, so one bad charge does not hold up the rest.
            Ok(LedgerOutcome::Refused(_)) => return reopen(self, batch > 1),
            Ok(LedgerOutcome::Duplicate) if batch > 1 => return reopen(self, true),
            Ok(LedgerOutcome::Duplicate) => {
                for orphan in &pending.orphans {
                    self.close(orphan.id, super::Closed::Reported);
                }
                return;
            }
            Ok(_) => {}
        }
        let mut charged = Usd::ZERO;
        let mut settled = 0usize;
        for orphan in pending.orphans {
            if self.close(orphan.id, super::Closed::Reported).is_none() {
                continue;
            }
            settled += 1;
            if let Some((amount, filed)) = &orphan.charge {
                self.charge_filed(filed, *amount);
                charged += *amount;
            }
        }
        log::info!("{settled} orphaned reservation(s) settled by policy: {charged} charged");
    }
}

// === impl PendingOrphans ===

impl PendingOrphans {
    /// How many orphans the batch settles.
    pub fn len(&self) -> usize {
        self.orphans.len()
    }

    /// Whether the batch is empty (never, as `due_orphans` builds them).
    pub fn is_empty(&self) -> bool {
        self.orphans.is_empty()
    }
}

impl Pending for PendingOrphans {
    type Output = ();

    fn complete(
        self,
        admission: &Admission,
        result: Result<LedgerOutcome, StoreError>,
        _now: Moment,
    ) -> Result<(), StoreError> {
        admission.lock().finish_orphans(self, &result);
        match result {
            Ok(LedgerOutcome::Refused(why)) => Err(StoreError::Refused(why)),
            other => other.map(|_| ()),
        }
    }
}
