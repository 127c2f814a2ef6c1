//! The engine's money and counting side: budgets restored from the ledger, charges
//! filed under the right periods, alert thresholds, orphan settlement, the budget
//! and quota views, and admin operations.

use std::sync::Arc;

use super::pipeline::BUDGET_STAGE;
use super::{AdmissionError, Durable, Engine, Moment, Reservation, Stage};
use crate::alerts::Alert;
use crate::guard::budget::{Budget, BudgetSpec};
use crate::guard::display_key;
use crate::guard::quota::Counter;
use crate::guard::Taken;
use crate::money::Usd;
use crate::protocol::Name;
use crate::store::{Books, Entry, Outcome as LedgerOutcome, Refiled, Snapshot};

/// One budget as the `budget` request shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetView {
    pub name: String,
    pub spent: Usd,
    pub reserved: Usd,
    pub limit: Usd,
    pub remaining: Usd,
    pub orphaned: u32,
    pub reset: String,
    pub resets_in: Option<u64>,
}

/// One quota counter as the `quotas` request shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaView {
    pub quota: String,
    pub key: String,
    pub used: u64,
    pub limit: u64,
    pub window: String,
    pub resets_in: Option<u64>,
}

/// An admin operation, with who asked.
#[derive(Debug, Clone)]
pub struct AdminAction {
    pub uid: u32,
    pub pid: i32,
    pub kind: AdminKind,
}

#[derive(Debug, Clone)]
pub enum AdminKind {
    SetLimit { budget: String, limit: Usd },
    ResetBudget { budget: String },
    Refund { key: String },
    ResetQuota { quota: String, key: String },
}

/// A validated admin operation waiting for its ledger write.
#[derive(Debug, Clone)]
pub struct PendingAdmin {
    kind: AdminKind,
    period_start: u64,
}

impl Engine {
    /// Rebuilds budgets, quota counters and orphaned reservations from the ledger.
    pub(super) fn restore(&mut self, snapshot: &Snapshot, now: Moment) {
        let config = Arc::clone(&self.config);
        for spec in super::reconfigure::budget_specs(&config) {
            self.open_budget(spec.clone(), &snapshot.books, now);
        }
        for (quota, key, window_start, used) in &snapshot.quotas {
            if let Some(rule) = self.guards.quotas.get_mut(quota) {
                rule.restore(
                    key.clone(),
                    Counter {
                        window_start: *window_start,
                        used: *used,
                    },
                );
            }
        }
        for stored in &snapshot.reservations {
            let budgets: Vec<Arc<str>> = stored
                .budgets
                .iter()
                .filter(|b| self.guards.budgets.contains(b))
                .map(|b| Arc::from(b.as_str()))
                .collect();
            let hold = self.guards.budgets.hold(budgets, stored.estimate);
            self.reservations.insert(
                stored.id,
                Reservation {
                    session: None,
                    uid: None,
                    settle_alone: false,
                    orphaned_at: Some(now.mono),
                    agent: Name::from(stored.agent.as_str()),
                    service: Arc::from(stored.service.as_str()),
                    model: stored.model.clone(),
                    units: 1,
                    input_units: 0,
                    output_units: 0,
                    attempt: 1,
                    taken: smallvec::smallvec![Taken {
                        guard: BUDGET_STAGE,
                        what: crate::guard::stash(hold),
                    }],
                    stage: Stage::Open,
                },
            );
        }
        if !snapshot.reservations.is_empty() {
            log::warn!(
                "{} reservation(s) left open by the previous run are orphans now: reportable until budget.orphan_timeout, then settled by budget.orphan_policy",
                snapshot.reservations.len()
            );
        }
    }

    /// Puts budget `spec` in place as the ledger's `books` left it: in the
    /// newest period they hold, with that period's balance, and with the limit
    /// an admin set, if one did. At start, and for a budget a reload adds.
    pub(super) fn open_budget(&mut self, mut spec: BudgetSpec, books: &Books, now: Moment) {
        if let Some((_, limit)) = books.limits.iter().find(|(name, _)| *name == spec.name) {
            spec.limit = *limit;
            self.admin_limited.insert(spec.name.clone());
        }
        let balances: Vec<(u64, Usd)> = books
            .balances
            .iter()
            .filter(|(name, _, _)| *name == spec.name)
            .map(|(_, period, spent)| (*period, *spent))
            .collect();
        let unreadable: Vec<(u64, String)> = books
            .unreadable
            .iter()
            .filter(|(name, _, _)| *name == spec.name)
            .map(|(_, period, why)| (*period, why.clone()))
            .collect();
        let budget = Budget::restore(spec, now.unix, &balances, &unreadable);
        if let Some(moved) = books.refiled.iter().find(|r| r.budget == budget.name()) {
            log::warn!(
                budget = budget.name();
                "budget {}'s reset changed from {} to {} since the ledger last kept it: the {} charge(s) of {} made since its period began (at {}) were moved to that period, which starts at {} spent",
                budget.name(), moved.from, moved.to, moved.charges, moved.amount, moved.period_start, budget.spent()
            );
        }
        if let Some(why) = budget.unknown() {
            log::error!(
                message_id = crate::logging::message_id::LEDGER_FAILED, budget = budget.name();
                "budget {}'s balance for the period starting at {} is unreadable in the ledger ({why}): its calls are refused until an admin resets it (automation-framework budget reset {})",
                budget.name(), budget.period_start(), budget.name()
            );
        }
        if budget.period_start() > budget.spec().reset.start(now.unix) {
            log::warn!(
                budget = budget.name();
                "the clock ({}) is behind budget {}'s newest period in the ledger (starting at {}): the budget stays in that period until the clock reaches it",
                now.unix, budget.name(), budget.period_start()
            );
        }
        self.guards.budgets.insert(budget);
    }

    /// Counts in memory what a reload's record moved ([`super::Admission::record_resets`]). A budget that moved on to a
    /// later period meanwhile counts nothing: the charges are its old
    /// period's.
    pub(super) fn count_refiled(&mut self, moved: &[Refiled]) {
        for refiled in moved.iter().filter(|r| r.charges > 0) {
            let Some(budget) = self.guards.budgets.get_mut(&refiled.budget) else {
                continue;
            };
            budget.charge(refiled.amount, refiled.period_start);
            log::info!(
                budget = budget.name();
                "budget {}: {} charge(s) of {} filed under its old reset while the reload was applied were moved to its new period",
                budget.name(), refiled.charges, refiled.amount
            );
        }
    }

    /// Each budget with the start of the period a charge now is filed under
    /// (the budget's newest period, also when the clock stepped back).
    pub(super) fn file(&mut self, budgets: &[Arc<str>], now: Moment) -> Vec<(String, u64)> {
        let filed = budgets
            .iter()
            .filter_map(|name| {
                let budget = self.guards.budgets.roll(name, now.unix)?;
                Some((name.to_string(), budget.period_start()))
            })
            .collect();
        self.note_clock_steps();
        filed
    }

    /// Logs and counts the steps back of the wall clock the budgets saw (rare:
    /// a few per step at most, one per budget). A step back does not reopen an
    /// earlier period (see `guard::budget`).
    pub(super) fn note_clock_steps(&mut self) {
        for (name, now_start, period_start) in self.guards.budgets.take_steps_back() {
            metrics::counter!(crate::metrics::BUDGET_CLOCK_STEPS_BACK).increment(1);
            log::warn!(
                budget = &*name;
                "the wall clock stepped back into an earlier period (starting at {now_start}) than budget {name}'s (starting at {period_start}): the budget stays in its period, with its spending, until the clock reaches a later one"
            );
        }
    }

    /// Refuses an amount above `budget.max_charge` before anything is decided
    /// or written: one report must not be able to flood a balance.
    pub(super) fn check_charge(&self, what: &str, amount: Usd) -> Result<(), AdmissionError> {
        let max = self.config.budget.max_charge;
        if amount > max {
            return Err(too_large(what, amount, max));
        }
        Ok(())
    }

    /// Whether every budget's balance is known; else why not (for `budget`).
    pub(super) fn unknown_balances(&self) -> Option<String> {
        let mut unknown: Vec<String> = self
            .guards
            .budgets
            .names()
            .filter_map(|name| {
                let why = self.guards.budgets.get(name)?.unknown()?;
                Some(format!("budget {name}: {why}"))
            })
            .collect();
        unknown.sort();
        (!unknown.is_empty()).then(|| unknown.join("; "))
    }

    /// Adds a durable charge to its budgets; logs and raises thresholds it crossed
    /// (the highest one reached, once per period and level).
    pub(super) fn charge_filed(&mut self, filed: &[(String, u64)], amount: Usd) {
        for (name, period_start) in filed {
            let Some(budget) = self.guards.budgets.get_mut(name) else {
                continue;
            };
            budget.charge(amount, *period_start);
            let Some(reached) = budget.threshold_reached(&self.config.budget.thresholds) else {
                continue;
            };
            let logged = self.thresholds_logged.get(name).copied();
            if logged.is_none_or(|(period, level)| period != *period_start || level < reached) {
                self.thresholds_logged
                    .insert(name.clone(), (*period_start, reached));
                log::warn!(
                    message_id = crate::logging::message_id::BUDGET_THRESHOLD,
                    budget = name.as_str(), threshold = reached, spent = budget.spent().dollars(), limit = budget.limit().dollars();
                    "budget {name} crossed {reached}%: {} spent of {}", budget.spent(), budget.limit()
                );
                self.alerts.raise(Alert::BudgetThreshold {
                    budget: name.clone(),
                    threshold: reached,
                    spent: budget.spent(),
                    limit: budget.limit(),
                });
            }
        }
    }

    pub(super) fn budget_views(&mut self, agent: Option<&str>, now: Moment) -> Vec<BudgetView> {
        let mut orphaned: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
        for r in self.reservations.values() {
            if r.session.is_none() {
                for name in super::reservation::hold(r).iter().flat_map(|h| &h.budgets) {
                    *orphaned.entry(&**name).or_default() += 1;
                }
            }
        }
        let agent_budget = agent.map(|agent| format!("agent:{agent}"));
        let mut names: Vec<String> = self
            .guards
            .budgets
            .names()
            .filter(|n| {
                agent_budget
                    .as_deref()
                    .is_none_or(|own| &***n == "global" || &***n == own)
            })
            .map(|n| n.to_string())
            .collect();
        names.sort_by_key(|n| (n != "global", n.clone()));
        let orphaned: std::collections::HashMap<String, u32> = orphaned
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        names
            .into_iter()
            .filter_map(|name| {
                let budget = self.guards.budgets.roll(&name, now.unix)?;
                Some(BudgetView {
                    spent: budget.spent(),
                    reserved: budget.reserved(),
                    limit: budget.limit(),
                    remaining: budget.remaining(),
                    orphaned: orphaned.get(&name).copied().unwrap_or(0),
                    reset: budget.spec().reset.name(),
                    resets_in: budget.spec().reset.remaining(now.unix),
                    name,
                })
            })
            .collect()
    }

    pub(super) fn quota_views(
        &self,
        quota: Option<&str>,
        now: Moment,
    ) -> Result<Vec<QuotaView>, AdmissionError> {
        if let Some(name) = quota {
            if !self.guards.quotas.rules().iter().any(|q| q.name() == name) {
                return Err(AdmissionError::UnknownQuota(name.to_owned()));
            }
        }
        let mut out = Vec::new();
        for rule in self
            .guards
            .quotas
            .rules()
            .iter()
            .filter(|q| quota.is_none_or(|n| n == q.name()))
        {
            let spec = rule.spec();
            let mut counters: Vec<_> = rule.counters(now.unix).collect();
            counters.sort();
            for (key, used) in counters {
                out.push(QuotaView {
                    quota: spec.name.clone(),
                    key: display_key(key),
                    used,
                    limit: spec.limit,
                    window: spec.window.window_name(),
                    resets_in: spec.window.remaining(now.unix),
                });
            }
        }
        Ok(out)
    }

    pub(super) fn admin(
        &mut self,
        action: super::AdminAction,
        now: Moment,
    ) -> Result<Durable<PendingAdmin>, AdmissionError> {
        let (entry, description, period_start) = match &action.kind {
            AdminKind::SetLimit { budget, limit } => {
                self.known_budget(budget)?;
                (
                    Entry::SetLimit {
                        budget: budget.clone(),
                        limit: *limit,
                    },
                    format!("set_limit budget={budget} limit={limit}"),
                    0,
                )
            }
            AdminKind::ResetBudget { budget } => {
                self.known_budget(budget)?;
                let start = self
                    .guards
                    .budgets
                    .roll(budget, now.unix)
                    .map_or(0, |b| b.period_start());
                (
                    Entry::ResetBudget {
                        budget: budget.clone(),
                        period_start: start,
                    },
                    format!("reset_budget budget={budget} period_start={start}"),
                    start,
                )
            }
            AdminKind::Refund { key } => (
                Entry::Refund { key: key.clone() },
                format!("refund key={key}"),
                0,
            ),
            AdminKind::ResetQuota { quota, key } => {
                if !self.guards.quotas.rules().iter().any(|q| q.name() == quota) {
                    return Err(AdmissionError::UnknownQuota(quota.clone()));
                }
                (
                    Entry::QuotaReset {
                        quota: quota.clone(),
                        key: internal_key(key),
                    },
                    format!("reset_quota quota={quota} key={key}"),
                    0,
                )
            }
        };
        let audit = Entry::Audit {
            uid: action.uid,
            pid: action.pid,
            action: description,
            at: now.unix,
        };
        Ok(Durable {
            entries: vec![entry, audit],
            pending: PendingAdmin {
                kind: action.kind,
                period_start,
            },
        })
    }

    pub(super) fn finish_admin(
        &mut self,
        pending: PendingAdmin,
        outcome: LedgerOutcome,
    ) -> Result<String, AdmissionError> {
        match pending.kind {
            AdminKind::SetLimit { budget, limit } => {
                self.known_budget(&budget)?.set_limit(limit);
                self.admin_limited.insert(budget.clone());
                Ok(format!("budget {budget} limit set to {limit}"))
            }
            AdminKind::ResetBudget { budget } => {
                let b = self.known_budget(&budget)?;
                if b.period_start() == pending.period_start {
                    b.reset_spent();
                }
                self.thresholds_logged.remove(&budget);
                Ok(format!(
                    "budget {budget}: current period starts over from $0.00 spent"
                ))
            }
            AdminKind::Refund { key } => match outcome {
                LedgerOutcome::Refunded { amount, budgets } => {
                    for (name, period_start) in &budgets {
                        if let Some(budget) = self.guards.budgets.get_mut(name) {
                            budget.refund(amount, *period_start);
                        }
                    }
                    Ok(format!("refunded {amount} of charge {key:?}"))
                }
                _ => Err(AdmissionError::NothingToRefund(key)),
            },
            AdminKind::ResetQuota { quota, key } => {
                if let Some(rule) = self.guards.quotas.get_mut(&quota) {
                    rule.reset(&internal_key(&key));
                }
                Ok(format!(
                    "quota {quota} key {}: window starts over from 0",
                    crate::names::shown(&key)
                ))
            }
        }
    }

    fn known_budget(&mut self, name: &str) -> Result<&mut Budget, AdmissionError> {
        self.guards
            .budgets
            .get_mut(name)
            .ok_or_else(|| AdmissionError::UnknownBudget(name.to_owned()))
    }
}

/// The refusal of an amount above `budget.max_charge`.
pub(super) fn too_large(what: &str, amount: Usd, max: Usd) -> AdmissionError {
    AdmissionError::Invalid(format!(
        "{what} of {amount} is above budget.max_charge ({max}), the largest single charge this daemon accepts; nothing was charged. Check the amount (or its units and price), or raise budget.max_charge"
    ))
}

impl super::Admission {
    /// Why some budget's balance is unknown (unreadable in the ledger), if so.
    pub fn unknown_balances(&self) -> Option<String> {
        self.lock().unknown_balances()
    }
}

/// Counter keys of agent+service quotas use NUL inside and `/` in replies.
fn internal_key(shown: &str) -> String {
    shown.replacen('/', "\0", 1)
}
