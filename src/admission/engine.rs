//! The engine's admission and report paths: guards in order under the lock,
//! undo on denial, and the ledger entries an allowed call or a charge needs.

use std::collections::HashSet;
use std::sync::Arc;

use super::{
    reservation_key, AdmissionError, Admitted, Caller, Closed, Decision, Engine, Guard, GuardVote,
    Moment, Outcome, PendingReport, Plan, Reporting, Reservation, Settlement, Stage,
};
use crate::alerts::Alert;
use crate::config::{Mode, Price};
use crate::guard::breaker::{Breaker, Pass, Phase};
use crate::guard::quota::QuotaDenial;
use crate::guard::rate::RateDenial;
use crate::guard::BreakerDenial;
use crate::money::Usd;
use crate::store::{Entry, Outcome as LedgerOutcome};

impl Engine {
    pub(super) fn admit(
        &mut self,
        caller: Caller<'_>,
        plan: Plan<'_>,
        now: Moment,
    ) -> Result<Admitted, AdmissionError> {
        let held = self.by_session.get(&caller.session).map_or(0, HashSet::len);
        let cap = self.config.daemon.max_reservations_per_connection;
        if held >= cap {
            return Err(AdmissionError::TooManyReservations(cap));
        }
        let shadow_all = self.config.daemon.mode == Mode::Shadow;
        let mut votes = Vec::new();
        let mut transitions = Vec::new();

        // Breaker first: it is the cheapest "no" and the one shared by every agent.
        let breaker = self.breaker(plan.service)?;
        if let Some(t) = breaker.advance(now.mono) {
            transitions.push((plan.service.to_owned(), t.from, t.to));
        }
        let shadow = shadow_all || breaker.config().shadow;
        let pass = match breaker.check(now.mono) {
            Ok(pass) => {
                if breaker.phase() != Phase::Disabled {
                    votes.push(vote(
                        Guard::Breaker,
                        plan.service,
                        true,
                        shadow,
                        breaker_allow_reason(pass),
                        None,
                    ));
                }
                pass
            }
            Err(denial) => {
                votes.push(vote(
                    Guard::Breaker,
                    plan.service,
                    false,
                    shadow,
                    denial.to_string(),
                    breaker_retry_after(denial),
                ));
                if !shadow {
                    return Ok(denied(votes, transitions));
                }
                Pass::Free
            }
        };

        // Everything taken from here on is undone if a later guard denies.
        let mut taken = Taken {
            pass,
            cells: Vec::new(),
            quotas: Vec::new(),
        };
        for rule in &self.rules {
            if !rule.applies(caller.agent, plan.service) {
                continue;
            }
            let shadow = shadow_all || rule.shadow();
            let key = rule.key(caller.agent, plan.service);
            match rule.check(key, rule.weight_of(plan.units), now.mono) {
                Ok(cells) => {
                    let reason = taken_of_burst(cells.taken, rule.spec().burst.get());
                    votes.push(vote(Guard::Rate, rule.name(), true, shadow, reason, None));
                    taken.cells.push((Arc::clone(rule), cells));
                }
                Err(denial) => {
                    let retry = match denial {
                        RateDenial::NotUntil { retry_after, .. } => Some(retry_after),
                        RateDenial::Never { .. } => None,
                    };
                    votes.push(vote(
                        Guard::Rate,
                        rule.name(),
                        false,
                        shadow,
                        denial.to_string(),
                        retry,
                    ));
                    if !shadow {
                        self.undo(plan.service, &taken);
                        return Ok(denied(votes, transitions));
                    }
                }
            }
        }

        for (idx, quota) in self.quotas.iter_mut().enumerate() {
            if !quota.applies(caller.agent, plan.service) {
                continue;
            }
            let shadow = shadow_all || quota.spec().shadow;
            let key = quota.key(caller.agent, plan.service);
            let n = quota.weight_of(plan.units.get());
            match quota.check(key, n, now.unix) {
                Ok(took) => {
                    let reason = format!(
                        "{n} of {} per {} taken",
                        quota.spec().limit,
                        quota.spec().window.window_name()
                    );
                    votes.push(vote(Guard::Quota, quota.name(), true, shadow, reason, None));
                    taken.quotas.push((idx, took));
                }
                Err(denial) => {
                    let retry = match &denial {
                        QuotaDenial::Exhausted { retry_after, .. } => {
                            self.alerts.raise(Alert::QuotaExhausted {
                                quota: quota.name().to_owned(),
                                key: crate::guard::display_key(
                                    &quota.key(caller.agent, plan.service),
                                ),
                            });
                            *retry_after
                        }
                        QuotaDenial::Never { .. } => None,
                    };
                    votes.push(vote(
                        Guard::Quota,
                        quota.name(),
                        false,
                        shadow,
                        denial.to_string(),
                        retry,
                    ));
                    if !shadow {
                        self.undo(plan.service, &taken);
                        return Ok(denied(votes, transitions));
                    }
                }
            }
        }

        let estimate = plan.cost.unwrap_or_else(|| {
            price(
                self.config.price_for(plan.service, plan.model),
                plan.units.get(),
                plan.input_units,
                plan.output_units,
            )
        });
        let budgets = self.applicable_budgets(caller.agent, plan.service);
        for name in &budgets {
            let budget = self
                .budgets
                .get_mut(name)
                .expect("applicable budgets exist");
            budget.roll(now.unix);
            let shadow = shadow_all;
            match budget.check(estimate, now.unix) {
                Ok(()) => {
                    let reason = format!(
                        "{estimate} reserved, {} left of {}",
                        budget.remaining() - estimate,
                        budget.limit()
                    );
                    votes.push(vote(Guard::Budget, name, true, shadow, reason, None));
                }
                Err(denial) => {
                    let retry = match &denial {
                        crate::guard::budget::BudgetDenial::Exhausted { retry_after, .. }
                        | crate::guard::budget::BudgetDenial::WouldExceed { retry_after, .. } => {
                            *retry_after
                        }
                    };
                    votes.push(vote(
                        Guard::Budget,
                        name,
                        false,
                        shadow,
                        denial.to_string(),
                        retry,
                    ));
                    if !shadow {
                        self.undo(plan.service, &taken);
                        return Ok(denied(votes, transitions));
                    }
                }
            }
        }
        for name in &budgets {
            self.budgets
                .get_mut(name)
                .expect("applicable budgets exist")
                .reserve(estimate);
        }

        let id = (self.epoch << 32) | self.next_reservation;
        self.next_reservation += 1;
        let mut entries = Vec::new();
        if !budgets.is_empty() {
            entries.push(Entry::Reserve {
                id,
                agent: caller.agent.to_owned(),
                service: plan.service.to_owned(),
                model: plan.model.map(str::to_owned),
                estimate,
                budgets: budgets.clone(),
                at: now.unix,
            });
        }
        for (idx, took) in &taken.quotas {
            let quota = &self.quotas[*idx];
            if quota.spec().window.is_durable() {
                entries.push(Entry::QuotaAdd {
                    quota: quota.name().to_owned(),
                    key: took.key.clone(),
                    window_start: took.window_start,
                    n: took.n,
                });
            }
        }
        let stage = if entries.is_empty() {
            Stage::Open
        } else {
            Stage::Admitting
        };
        self.reservations.insert(
            id,
            Reservation {
                session: Some(caller.session),
                orphaned_at: None,
                agent: caller.agent.to_owned(),
                service: plan.service.to_owned(),
                model: plan.model.map(str::to_owned),
                units: plan.units.get(),
                input_units: plan.input_units,
                output_units: plan.output_units,
                pass: taken.pass,
                cells: taken.cells,
                quota_taken: taken.quotas,
                estimate,
                budgets,
                stage,
            },
        );
        self.by_session
            .entry(caller.session)
            .or_default()
            .insert(id);
        Ok(Admitted {
            decision: Decision {
                allowed: true,
                reservation: Some(id),
                votes,
                decisive: None,
                transitions,
                estimate,
            },
            entries,
        })
    }

    pub(super) fn confirm(&mut self, id: u64) {
        if let Some(reservation) = self.reservations.get_mut(&id) {
            if reservation.stage == Stage::Admitting {
                reservation.stage = Stage::Open;
            }
        }
    }

    /// Undoes an admission whose ledger write failed. Other admissions may have run
    /// since, so everything is given back arithmetically, not restored.
    pub(super) fn abort(&mut self, id: u64) {
        let Some(reservation) = self.reservations.remove(&id) else {
            return;
        };
        if let Some(session) = reservation.session {
            self.forget_session_link(id, session);
        }
        for (rule, cells) in &reservation.cells {
            rule.refund(cells);
        }
        for (idx, took) in &reservation.quota_taken {
            self.quotas[*idx].give_back(took);
        }
        for name in &reservation.budgets {
            if let Some(budget) = self.budgets.get_mut(name) {
                budget.release(reservation.estimate);
            }
        }
        if let Some(breaker) = self.breakers.get_mut(&reservation.service) {
            breaker.release(reservation.pass);
        }
    }

    pub(super) fn report(
        &mut self,
        id: u64,
        may_settle: impl FnOnce(&str) -> bool,
        key: Option<String>,
        outcome: Outcome,
        now: Moment,
    ) -> Result<Reporting, AdmissionError> {
        let Some(reservation) = self.reservations.get_mut(&id) else {
            return match self.recently_closed.get(id) {
                Some(Closed::Reported) => Ok(Reporting::Settled(Settlement::duplicate())),
                Some(Closed::Released) => Err(AdmissionError::Released(id)),
                None => Ok(Reporting::Lookup {
                    key: key.unwrap_or_else(|| reservation_key(id)),
                    reservation: id,
                }),
            };
        };
        if !may_settle(&reservation.agent) {
            return Err(AdmissionError::NotOwner {
                reservation: id,
                owner: reservation.agent.clone(),
            });
        }
        if reservation.stage != Stage::Open {
            return Err(AdmissionError::Busy(id));
        }
        if reservation.budgets.is_empty() {
            let settlement = self.close_reported(id, &outcome, None, now);
            return Ok(Reporting::Settled(settlement));
        }
        reservation.stage = Stage::Settling;
        let amount = outcome.cost.unwrap_or_else(|| {
            let priced = self
                .config
                .price_for(&reservation.service, reservation.model.as_deref());
            match priced {
                Some(p) => price(
                    Some(p),
                    outcome.units.unwrap_or(reservation.units),
                    outcome.input_units.unwrap_or(reservation.input_units),
                    outcome.output_units.unwrap_or(reservation.output_units),
                ),
                None => reservation.estimate,
            }
        });
        let (agent, service, budgets) = (
            reservation.agent.clone(),
            reservation.service.clone(),
            reservation.budgets.clone(),
        );
        let filed = self.file(&budgets, now);
        let key = key.unwrap_or_else(|| reservation_key(id));
        Ok(Reporting::Durable {
            entries: vec![Entry::Charge {
                key,
                reservation: Some(id),
                agent,
                service: service.clone(),
                amount,
                budgets: filed.clone(),
                at: now.unix,
            }],
            pending: PendingReport {
                reservation: Some(id),
                service,
                amount,
                filed,
                outcome,
            },
        })
    }

    pub(super) fn report_unreserved(
        &mut self,
        agent: &str,
        service: &str,
        key: Option<String>,
        outcome: Outcome,
        now: Moment,
    ) -> Result<Reporting, AdmissionError> {
        self.breaker(service)?;
        let amount = outcome.cost.unwrap_or_else(|| {
            price(
                self.config.price_for(service, None),
                outcome.units.unwrap_or(1),
                outcome.input_units.unwrap_or(0),
                outcome.output_units.unwrap_or(0),
            )
        });
        let budgets = self.applicable_budgets(agent, service);
        if amount == Usd::ZERO || budgets.is_empty() {
            return Ok(Reporting::Settled(
                self.record_outcome(service, None, &outcome, None, now),
            ));
        }
        let key = key.ok_or(AdmissionError::KeyRequired)?;
        let filed = self.file(&budgets, now);
        Ok(Reporting::Durable {
            entries: vec![Entry::Charge {
                key,
                reservation: None,
                agent: agent.to_owned(),
                service: service.to_owned(),
                amount,
                budgets: filed.clone(),
                at: now.unix,
            }],
            pending: PendingReport {
                reservation: None,
                service: service.to_owned(),
                amount,
                filed,
                outcome,
            },
        })
    }

    pub(super) fn finish_report(
        &mut self,
        pending: PendingReport,
        result: Result<LedgerOutcome, ()>,
        now: Moment,
    ) -> Option<Settlement> {
        match (result, pending.reservation) {
            (Err(()), Some(id)) => {
                // Not durable: the reservation is open again, for a retry.
                if let Some(reservation) = self.reservations.get_mut(&id) {
                    reservation.stage = Stage::Open;
                }
                None
            }
            (Err(()), None) => None,
            (Ok(LedgerOutcome::Duplicate), Some(id)) => {
                // The key was charged before (by this or another report): this
                // reservation's estimate is released and nothing is counted again.
                if let Some(reservation) = self.reservations.get(&id) {
                    let (estimate, budgets) = (reservation.estimate, reservation.budgets.clone());
                    for name in &budgets {
                        if let Some(budget) = self.budgets.get_mut(name) {
                            budget.release(estimate);
                        }
                    }
                    self.close_released_silently(id);
                }
                Some(Settlement::duplicate())
            }
            (Ok(LedgerOutcome::Duplicate), None) => Some(Settlement::duplicate()),
            (Ok(_), Some(id)) => {
                self.charge_filed(&pending.filed, pending.amount);
                Some(self.close_reported(id, &pending.outcome, Some(pending.amount), now))
            }
            (Ok(_), None) => {
                self.charge_filed(&pending.filed, pending.amount);
                Some(self.record_outcome(
                    &pending.service,
                    None,
                    &pending.outcome,
                    Some(pending.amount),
                    now,
                ))
            }
        }
    }

    pub(super) fn end_session(&mut self, session: u64, now: Moment) -> (usize, usize) {
        let Some(ids) = self.by_session.remove(&session) else {
            return (0, 0);
        };
        let (mut released, mut orphaned) = (0, 0);
        for id in ids {
            let Some(reservation) = self.reservations.get_mut(&id) else {
                continue;
            };
            // The trial slot goes back at once: a vanished agent is no evidence
            // about the service, and must not wedge a half-open breaker.
            let pass = std::mem::replace(&mut reservation.pass, Pass::Free);
            let service = reservation.service.clone();
            if let Some(breaker) = self.breakers.get_mut(&service) {
                breaker.release(pass);
            }
            let reservation = self.reservations.get_mut(&id).expect("looked up above");
            if reservation.budgets.is_empty() {
                self.reservations.remove(&id);
                self.recently_closed.insert(id, Closed::Released);
                released += 1;
            } else {
                reservation.session = None;
                reservation.orphaned_at = Some(now.mono);
                orphaned += 1;
            }
        }
        (released, orphaned)
    }

    /// Closes a reported reservation: breaker outcome, rate settlement, estimate
    /// released from its budgets.
    fn close_reported(
        &mut self,
        id: u64,
        outcome: &Outcome,
        charged: Option<Usd>,
        now: Moment,
    ) -> Settlement {
        let reservation = self
            .reservations
            .remove(&id)
            .expect("caller checked the reservation exists");
        if let Some(session) = reservation.session {
            self.forget_session_link(id, session);
        }
        self.recently_closed.insert(id, Closed::Reported);
        if let Some(used) = outcome.units {
            for (rule, cells) in &reservation.cells {
                rule.settle(cells, used);
            }
        }
        for name in &reservation.budgets {
            if let Some(budget) = self.budgets.get_mut(name) {
                budget.release(reservation.estimate);
            }
        }
        self.record_outcome(
            &reservation.service,
            Some(reservation.pass),
            outcome,
            charged,
            now,
        )
    }

    fn close_released_silently(&mut self, id: u64) {
        if let Some(reservation) = self.reservations.remove(&id) {
            if let Some(session) = reservation.session {
                self.forget_session_link(id, session);
            }
            if let Some(breaker) = self.breakers.get_mut(&reservation.service) {
                breaker.release(reservation.pass);
            }
            self.recently_closed.insert(id, Closed::Reported);
        }
    }

    fn record_outcome(
        &mut self,
        service: &str,
        pass: Option<Pass>,
        outcome: &Outcome,
        charged: Option<Usd>,
        now: Moment,
    ) -> Settlement {
        let (phase, transition) = match self.breakers.get_mut(service) {
            Some(breaker) => {
                breaker.advance(now.mono);
                let transition = breaker.record(pass, outcome.failure, outcome.latency, now.mono);
                (Some(breaker.phase()), transition.map(|t| (t.from, t.to)))
            }
            None => (None, None),
        };
        Settlement {
            duplicate: false,
            service: if transition.is_some() {
                service.to_owned()
            } else {
                String::new()
            },
            phase,
            transition,
            charged,
        }
    }

    pub(super) fn forget_session_link(&mut self, id: u64, session: u64) {
        if let Some(ids) = self.by_session.get_mut(&session) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_session.remove(&session);
            }
        }
    }

    /// Gives back what a denied admission took, newest first, while still under
    /// the lock (so restoring is exact).
    fn undo(&mut self, service: &str, taken: &Taken) {
        for (idx, took) in taken.quotas.iter().rev() {
            self.quotas[*idx].undo(took);
        }
        for (rule, cells) in taken.cells.iter().rev() {
            rule.undo(cells);
        }
        if let Some(breaker) = self.breakers.get_mut(service) {
            breaker.release(taken.pass);
        }
    }

    /// The breaker of `service`, created on first use.
    pub(super) fn breaker(&mut self, service: &str) -> Result<&mut Breaker, AdmissionError> {
        if !self.breakers.contains_key(service) {
            if !self.config.knows_service(service) {
                return Err(AdmissionError::UnknownService(service.to_owned()));
            }
            if self.breakers.len() >= self.config.daemon.max_services {
                return Err(AdmissionError::TooManyServices(
                    self.config.daemon.max_services,
                ));
            }
            let breaker = Breaker::new(self.config.breaker_for(service).clone());
            self.breakers.insert(service.to_owned(), breaker);
        }
        Ok(self.breakers.get_mut(service).expect("inserted above"))
    }
}

/// What an admission took so far.
struct Taken {
    pass: Pass,
    cells: Vec<(Arc<crate::guard::rate::RateRule>, crate::guard::rate::Cells)>,
    quotas: Vec<(usize, crate::guard::quota::QuotaTaken)>,
}

/// The cost of a call by its price entry (exact, rounded once, up: see
/// `Price::cost`); 0 without one.
pub(super) fn price(price: Option<&Price>, units: u32, input_units: u32, output_units: u32) -> Usd {
    price.map_or(Usd::ZERO, |p| p.cost(units, input_units, output_units))
}

fn vote(
    guard: Guard,
    rule: &str,
    allow: bool,
    shadow: bool,
    reason: String,
    retry_after: Option<std::time::Duration>,
) -> GuardVote {
    GuardVote {
        guard,
        rule: rule.to_owned(),
        allow,
        shadow,
        reason,
        retry_after,
    }
}

fn denied(votes: Vec<GuardVote>, transitions: Vec<(String, Phase, Phase)>) -> Admitted {
    Admitted {
        decision: Decision::denied(votes, transitions),
        entries: Vec::new(),
    }
}

/// "`taken` of burst `burst` taken": every allowed admission says it, so it is
/// built without `format!` (whose machinery cost more than the rate check).
fn taken_of_burst(taken: u32, burst: u32) -> String {
    let mut numbers = itoa::Buffer::new();
    let mut reason = String::with_capacity(40);
    reason.push_str(numbers.format(taken));
    reason.push_str(" of burst ");
    reason.push_str(numbers.format(burst));
    reason.push_str(" taken");
    reason
}

fn breaker_allow_reason(pass: Pass) -> String {
    match pass {
        Pass::Normal => "circuit closed".into(),
        Pass::Trial(_) => "circuit half-open: admitted as a trial call".into(),
        Pass::Free => "circuit not enforced".into(),
    }
}

fn breaker_retry_after(denial: BreakerDenial) -> Option<std::time::Duration> {
    match denial {
        BreakerDenial::Open { retry_after, .. } | BreakerDenial::TrialsBusy { retry_after, .. } => {
            Some(retry_after)
        }
        BreakerDenial::ForcedOpen => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_allowed_rate_reason_reads_as_before() {
        assert_eq!(super::taken_of_burst(1, 100), "1 of burst 100 taken");
        assert_eq!(
            super::taken_of_burst(u32::MAX, 7),
            format!("{} of burst 7 taken", u32::MAX)
        );
    }
}
