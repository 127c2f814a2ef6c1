//! The guard pipeline: which guards decide, in which order.
//!
//! This is where a guard is registered: a field in [`Guards`], its
//! construction in [`Guards::new`], and its place in [`Guards::stages`]. The
//! engine runs, undoes, settles and releases through `stages` only; it knows a
//! guard by name only where its own job needs the guard's specific state
//! (breaker snapshots, budget balances, quota views, reloads).

use std::sync::Arc;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::guard::breaker::Breakers;
use crate::guard::budget::Budgets;
use crate::guard::concurrency::Concurrency;
use crate::guard::content::Content;
use crate::guard::lease::Leases;
use crate::guard::quota::{QuotaRule, Quotas};
use crate::guard::rate::{RateLimits, RateRule};
use crate::guard::retry::{Jitter, Retries};
use crate::guard::Guard;

/// How many guards [`Guards::stages`] runs.
pub(super) const STAGES: usize = 8;

/// The budget stage's place in [`Guards::stages`]: money is the last thing
/// taken, so a call any other guard denies never touches it.
pub(super) const BUDGET_STAGE: usize = STAGES - 1;

/// Every guard's state.
pub(super) struct Guards {
    pub content: Content,
    pub breakers: Breakers,
    pub retries: Retries,
    pub leases: Leases,
    pub concurrency: Concurrency,
    pub rates: RateLimits,
    pub quotas: Quotas,
    pub budgets: Budgets,
}

impl Guards {
    /// The guards `config` describes, empty of state (budgets are restored from
    /// the ledger by the engine).
    ///
    /// # Errors
    /// When a rate limit cannot be represented (validated configs never fail here).
    pub(super) fn new(config: &Config, clock: &SharedClock) -> Result<Guards, String> {
        let rules = config
            .rate_limits
            .iter()
            .map(|spec| RateRule::new(spec.clone(), clock.clone()).map(Arc::new))
            .collect::<Result<_, _>>()?;
        let quotas = config.quotas.iter().cloned().map(QuotaRule::new).collect();
        Ok(Guards {
            content: Content,
            breakers: Breakers::default(),
            retries: Retries::new(Jitter::from_entropy()),
            leases: Leases::new(config.leases),
            concurrency: Concurrency::new(
                config.bulkheads.clone(),
                config.concurrency.max_active_agents,
            ),
            rates: RateLimits::new(rules),
            quotas: Quotas::new(quotas),
            budgets: Budgets::default(),
        })
    }

    /// The guards, in the order they decide: the payload's content first (its
    /// scan is already done, it takes nothing, and a forbidden payload is
    /// refused whatever the limits say), then the breaker (the cheapest "no"
    /// shared by every agent), then the service's retry budget (also shared,
    /// and it only ever denies retries), then a lease another session holds and
    /// a full bulkhead (refused before any rate cell is spent, so a call that
    /// waits for a permit takes nothing while it waits), money last (a new
    /// guard goes before it).
    pub(super) fn stages(&mut self) -> [&mut dyn Guard; STAGES] {
        [
            &mut self.content,
            &mut self.breakers,
            &mut self.retries,
            &mut self.leases,
            &mut self.concurrency,
            &mut self.rates,
            &mut self.quotas,
            &mut self.budgets,
        ]
    }
}
