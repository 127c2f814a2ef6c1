//! The operator's snapshots of the engine, copied under the lock with as little
//! work as possible; sorting and formatting happen after it is released.
//!
//! [`Admission::gauges`] (what `/metrics`, `/health` and `status` show) is
//! O(services + budgets + quotas) and never walks per-key state (quota counters,
//! rate buckets, reservations). [`Admission::quota_counters`] (the `quotas`
//! request) must list counters, so it copies keys and counts only, and stops at a
//! cap: a listing longer than a reply frame can carry is refused anyway.

use super::{Admission, AdmissionError, Moment};
use crate::guard::breaker::Phase;
use crate::guard::period::Period;
use crate::money::Usd;
use std::sync::Arc;

/// One copy of the engine's gauges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauges {
    /// Each service's breaker phase (after `advance`: an open breaker whose
    /// cool-down passed reads half-open), in no particular order.
    pub breakers: Vec<(String, Phase)>,
    /// Each budget in its current period, in no particular order.
    pub budgets: Vec<BudgetGauge>,
    /// Each quota's highest used/limit ratio in its current window, in config order
    /// (`QuotaRule::peak_ratio`).
    pub quotas: Vec<(String, f64)>,
    pub open_reservations: u64,
    /// Calls in flight and waiting per bulkhead (and the active-agent cap).
    pub bulkheads: Vec<crate::guard::concurrency::BulkheadTotals>,
    /// Leases held and not expired.
    pub leases_held: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetGauge {
    pub name: String,
    pub spent: Usd,
    pub reserved: Usd,
    pub limit: Usd,
}

/// Quota counters of the current windows, as copied under the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaListing {
    /// The quotas asked for, in config order.
    pub quotas: Vec<ListedQuota>,
    /// False when the cap was reached before every counter was copied.
    pub complete: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedQuota {
    pub name: String,
    pub limit: u64,
    pub window: Period,
    /// (internal key, used), unsorted.
    pub counters: Vec<(String, u64)>,
}

// === impl Admission (operator snapshots) ===

impl Admission {
    /// The gauges at `now`, under one short hold of the lock.
    pub fn gauges(&self, now: Moment) -> Gauges {
        let mut engine = self.lock();
        let breakers = engine
            .guards
            .breakers
            .iter_mut()
            .map(|(service, breaker)| {
                breaker.advance(now.mono);
                (service.to_string(), breaker.phase())
            })
            .collect();
        let names: Vec<Arc<str>> = engine.guards.budgets.names().cloned().collect();
        let budgets = names
            .iter()
            .filter_map(|name| {
                // Through `Budgets::roll`, so a step back of the clock seen here
                // is reported like one seen by an admission.
                let budget = engine.guards.budgets.roll(name, now.unix)?;
                Some(BudgetGauge {
                    name: name.to_string(),
                    spent: budget.spent(),
                    reserved: budget.reserved(),
                    limit: budget.limit(),
                })
            })
            .collect();
        engine.note_clock_steps();
        let quotas = engine
            .guards
            .quotas
            .rules()
            .iter()
            .map(|quota| (quota.name().to_owned(), quota.peak_ratio(now.unix)))
            .collect();
        Gauges {
            breakers,
            budgets,
            quotas,
            open_reservations: engine.reservations.len() as u64,
            bulkheads: engine.guards.concurrency.totals(),
            leases_held: engine.guards.leases.held(now.mono),
        }
    }

    /// The counters of the current windows of one quota or all, at most `cap` of
    /// them in all: the walk stops there, so the lock is held for at most `cap`
    /// copies (plus skipping counters of past windows not purged yet).
    ///
    /// # Errors
    /// [`AdmissionError::UnknownQuota`].
    pub fn quota_counters(
        &self,
        quota: Option<&str>,
        now: Moment,
        cap: usize,
    ) -> Result<QuotaListing, AdmissionError> {
        let engine = self.lock();
        if let Some(name) = quota {
            if !engine
                .guards
                .quotas
                .rules()
                .iter()
                .any(|q| q.name() == name)
            {
                return Err(AdmissionError::UnknownQuota(name.to_owned()));
            }
        }
        let mut left = cap;
        let mut complete = true;
        let mut quotas = Vec::new();
        for rule in engine
            .guards
            .quotas
            .rules()
            .iter()
            .filter(|q| quota.is_none_or(|n| n == q.name()))
        {
            let mut counters = Vec::new();
            for (key, used) in rule.counters(now.unix) {
                if left == 0 {
                    complete = false;
                    break;
                }
                left -= 1;
                counters.push((key.to_owned(), used));
            }
            quotas.push(ListedQuota {
                name: rule.name().to_owned(),
                limit: rule.spec().limit,
                window: rule.spec().window,
                counters,
            });
            if !complete {
                break;
            }
        }
        Ok(QuotaListing { quotas, complete })
    }
}
