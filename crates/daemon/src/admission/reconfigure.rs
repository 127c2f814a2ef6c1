//! Reload: a new validated config applied to live guards without losing their state.
//!
//! A reload must not be a way to reset limits: an agent that spent its burst, or a
//! breaker that opened on a failing service, must not be let off by an unrelated
//! edit. So whatever is unchanged keeps its state (rate buckets, quota counters,
//! breaker phases and operator forces, budget balances), and only what changed
//! starts fresh. A budget is never started fresh: one the reload adds, or gives
//! another period, is opened from the ledger's books as at a start
//! ([`LoadedBooks`], read before the engine is locked), so removing a budget and
//! adding it back does not forgive what it had spent, and a new period starts
//! at what was charged since it began (the ledger re-files those charges:
//! `store/periods.rs`). Everything is checked and
//! built before anything is swapped, so a refused reload changes nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::reservation::hold;
use super::{Engine, Moment};
use crate::clock::SharedClock;
use crate::config::{Config, ConfigError};
use crate::guard::budget::BudgetSpec;
use crate::guard::quota::QuotaRule;
use crate::guard::rate::RateRule;
use crate::money::Usd;
use crate::store::{Books, Opened, Opening};

/// Why a reload left the old configuration in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("invalid configuration {path}: {source}")]
    Config {
        path: String,
        #[source]
        source: ConfigError,
    },
    #[error("{0}")]
    Refused(String),
}

/// What a reconfiguration kept and rebuilt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconfigured {
    pub rate_kept: usize,
    pub rate_new: usize,
    pub quotas_kept: usize,
    pub quotas_new: usize,
    pub breakers: usize,
    /// Budgets whose limit stayed as an admin set it.
    pub admin_limits_kept: usize,
    /// Budgets opened from the ledger's books, taken out, or reopened for
    /// another period.
    pub budgets_added: usize,
    pub budgets_removed: usize,
    pub budgets_new_period: usize,
}

/// The ledger's books of the budgets a reload opens: the names asked for
/// (`Admission::budgets_to_load`) and what `Store::books` answered.
#[derive(Debug, Clone, Default)]
pub struct LoadedBooks {
    pub names: Vec<String>,
    pub books: Books,
}

impl Engine {
    pub(super) fn reconfigure(
        &mut self,
        config: Arc<Config>,
        clock: &SharedClock,
        now: Moment,
        loaded: &LoadedBooks,
    ) -> Result<Reconfigured, ReloadError> {
        let mut done = Reconfigured::default();

        // Budgets: those the reload adds or gives another period are opened
        // from books read for them, in the ledger's order of work, just before
        // the engine was locked. Only a reload changes the set, one at a time,
        // so the names read are the names needed; should they differ, nothing
        // is applied.
        let specs: Vec<&BudgetSpec> = budget_specs(&config).collect();
        let to_open = self.budgets_to_load(&config, now).names();
        let read: HashSet<&str> = loaded.names.iter().map(String::as_str).collect();
        if let Some(unread) = to_open.iter().find(|n| !read.contains(n.as_str())) {
            return Err(ReloadError::Refused(format!(
                "{} changed while the reload read its balance from the ledger; reload again",
                budget_key(unread)
            )));
        }

        // Rate rules: equal specs keep their Arc (and so their buckets).
        // Names are unique, so an equal spec is found by its name: one lookup per
        // rule, not a walk of the old rules (100,000 rules took 33 s of CPU).
        let old_rates: HashMap<&str, &Arc<RateRule>> = self
            .guards
            .rates
            .rules()
            .iter()
            .map(|r| (r.name(), r))
            .collect();
        let mut rules = Vec::with_capacity(config.rate_limits.len());
        for (idx, spec) in config.rate_limits.iter().enumerate() {
            if let Some(old) = old_rates
                .get(spec.name.as_str())
                .filter(|r| r.spec() == spec)
            {
                rules.push(Arc::clone(old));
                done.rate_kept += 1;
            } else {
                let rule = RateRule::new(spec.clone(), clock.clone())
                    .map_err(|e| ReloadError::Refused(format!("rate_limits[{idx}]: {e}")))?;
                rules.push(Arc::new(rule));
                done.rate_new += 1;
            }
        }
        drop(old_rates);

        // Nothing can fail from here on.
        let mut old_quotas: Vec<Option<QuotaRule>> =
            self.guards.quotas.take().into_iter().map(Some).collect();
        // By name, as for rate rules: an equal spec has the same name, and a
        // quota carried over keeps its name and window.
        let old_by_name: HashMap<String, usize> = old_quotas
            .iter()
            .enumerate()
            .filter_map(|(pos, q)| q.as_ref().map(|q| (q.name().to_owned(), pos)))
            .collect();
        let mut quotas = Vec::with_capacity(config.quotas.len());
        for spec in &config.quotas {
            let named = old_by_name.get(&spec.name).copied();
            let old_spec = |pos: usize| old_quotas[pos].as_ref().map(QuotaRule::spec);
            let same = named.filter(|&pos| old_spec(pos) == Some(spec));
            let carried = same.or_else(|| {
                named.filter(|&pos| old_spec(pos).is_some_and(|old| old.window == spec.window))
            });
            // Open reservations name the quota they counted against, so the
            // usage they hold follows a quota that moved.
            match carried.and_then(|idx| old_quotas[idx].take()) {
                Some(old) => {
                    if same.is_some() {
                        quotas.push(old);
                        done.quotas_kept += 1;
                    } else {
                        quotas.push(QuotaRule::carry_over(spec.clone(), old));
                        done.quotas_new += 1;
                    }
                }
                None => {
                    quotas.push(QuotaRule::new(spec.clone()));
                    done.quotas_new += 1;
                }
            }
        }
        self.guards.quotas = crate::guard::quota::Quotas::new(quotas);
        self.guards.rates.replace(rules);
        self.guards.concurrency.reconfigure(
            config.bulkheads.clone(),
            config.concurrency.max_active_agents,
        );
        self.guards.leases.reconfigure(config.leases);

        // A service the new config no longer accepts is refused from now on, as if
        // never seen (its breaker would otherwise keep admitting it).
        self.last_service = None;
        self.guards
            .breakers
            .retain(|service| config.knows_service(service));
        for (service, breaker) in self.guards.breakers.iter_mut() {
            breaker.advance(now.mono);
            breaker.reconfigure(config.breaker_for(service).clone());
            done.breakers += 1;
        }

        self.guards
            .retries
            .retain(|service| config.knows_service(service));
        for (service, budget) in self.guards.retries.iter_mut() {
            budget.reconfigure(config.retry_for(service).clone());
        }

        // Sets, not scans: a config may hold a budget per agent, thousands.
        let opened: HashSet<&str> = to_open.iter().map(String::as_str).collect();
        self.reopen_budgets(&specs, &opened, &loaded.books, now, &mut done);
        for spec in specs.iter().filter(|s| !opened.contains(s.name.as_str())) {
            if self.admin_limited.contains(&spec.name) {
                done.admin_limits_kept += 1;
            } else if let Some(budget) = self.guards.budgets.get_mut(&spec.name) {
                budget.set_limit(spec.limit);
            }
        }
        self.config = config;
        Ok(done)
    }
}

impl Engine {
    /// The budgets of `config` that the engine does not have, or has with
    /// another period: a reload reads their books before it applies `config`.
    pub(super) fn budgets_to_load(&self, config: &Config, now: Moment) -> Opening {
        let mut opening = opening(config, now.unix);
        opening.budgets.retain_mut(|opened| {
            opened.filed_as = self
                .guards
                .budgets
                .get(&opened.name)
                .map(|b| b.spec().reset);
            opened.filed_as != Some(opened.reset)
        });
        opening
    }

    /// Takes out the budgets `config` removes or gives another period, and
    /// opens those in `opened` from `books`. What open reservations hold
    /// against an opened budget is held again: the holds name it still, and
    /// give it back when they settle.
    fn reopen_budgets(
        &mut self,
        specs: &[&BudgetSpec],
        opened: &HashSet<&str>,
        books: &Books,
        now: Moment,
        done: &mut Reconfigured,
    ) {
        let configured: HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        let gone: Vec<Arc<str>> = self
            .guards
            .budgets
            .names()
            .filter(|name| opened.contains(&***name) || !configured.contains(&***name))
            .cloned()
            .collect();
        for name in &gone {
            self.guards.budgets.remove(name);
            self.admin_limited.remove(&**name);
            self.thresholds_logged.remove(&**name);
            if opened.contains(&**name) {
                done.budgets_new_period += 1;
                log::info!(
                    budget = &**name;
                    "budget {name} has a new reset period: it is opened again in the period that contains now"
                );
            } else {
                done.budgets_removed += 1;
            }
        }
        // One walk of the open reservations for every budget opened, under
        // the engine lock: a walk per budget would stall decisions for
        // budgets × reservations.
        let mut held: HashMap<&str, Usd> = opened.iter().map(|n| (*n, Usd::ZERO)).collect();
        for hold in self.reservations.values().filter_map(hold) {
            for name in &hold.budgets {
                if let Some(sum) = held.get_mut(&**name) {
                    *sum += hold.estimate;
                }
            }
        }
        let reopened: HashSet<&str> = gone.iter().map(|n| &**n).collect();
        for spec in specs.iter().filter(|s| opened.contains(s.name.as_str())) {
            self.open_budget((*spec).clone(), books, now);
            if let Some(budget) = self.guards.budgets.get_mut(&spec.name) {
                budget.reserve(held.get(spec.name.as_str()).copied().unwrap_or(Usd::ZERO));
            }
            if !reopened.contains(spec.name.as_str()) {
                done.budgets_added += 1;
            }
        }
    }
}

/// Every budget `config` configures, with its reset: what a start opens
/// ([`crate::store::StoreOptions::opening`]).
pub fn opening(config: &Config, unix_now: u64) -> Opening {
    Opening {
        now: unix_now,
        budgets: budget_specs(config)
            .map(|spec| Opened {
                name: spec.name.clone(),
                reset: spec.reset,
                filed_as: None,
            })
            .collect(),
    }
}

/// Every budget `config` configures.
pub(super) fn budget_specs(config: &Config) -> impl Iterator<Item = &BudgetSpec> {
    let budget = &config.budget;
    budget
        .global
        .iter()
        .chain(budget.agents.values())
        .chain(budget.services.values())
}

/// The config key of a budget: `budget.agents.X`, `budget.services.X`, or
/// `budget.enabled` for the global one.
fn budget_key(name: &str) -> String {
    if let Some(agent) = name.strip_prefix("agent:") {
        format!("budget.agents.{agent}")
    } else if let Some(service) = name.strip_prefix("service:") {
        format!("budget.services.{service}")
    } else {
        "the global budget (budget.enabled)".to_owned()
    }
}
