//! The engine's admission and report paths: the guard pipeline run in order
//! under the lock, undo on denial, and the ledger entries an allowed call or a
//! charge needs.
//!
//! Everything that happens to what a call took goes through the pipeline
//! (`pipeline.rs`):
//! a guard added there is checked, undone, aborted, settled, released and
//! disconnected with the others, and nothing here names what it takes.

use std::collections::HashSet;
use std::sync::Arc;

use super::{
    reservation_key, AdmissionError, Caller, Closed, Decision, Durable, Engine, Filed, Moment,
    Outcome, PendingAdmit, PendingReport, Plan, Reporting, Reservation, Routed, Settlement, Stage,
};
use crate::alerts::Alert;
use crate::config::{Config, Mode, Price};
use crate::guard::breaker::{Breaker, Phase};
use crate::guard::quota::QuotaDenial;
use crate::guard::retry::{Advice, Ask, BreakerView};
use crate::guard::{
    Call, Checked, GuardKind, Keep, Places, Report, Settled, Taken, TakenList, Verdict, Votes,
};
use crate::money::Usd;
use crate::protocol::Name;
use crate::store::{Entry, Outcome as LedgerOutcome, StoreError};

use super::reservation::{hold, holds_money};

impl Engine {
    /// Admits `plan`, writing the decision into `out` (the caller's, so that
    /// the few hundred bytes of it are not moved through every layer between
    /// the engine and the reply's encoder). `out` is overwritten whole.
    pub(super) fn admit(
        &mut self,
        caller: Caller<'_>,
        plan: Plan<'_>,
        now: Moment,
        out: &mut Decision,
    ) -> Result<Filed, AdmissionError> {
        let held = self.by_session.get(&caller.session).map_or(0, HashSet::len);
        let cap = self.config.daemon.max_reservations_per_connection;
        if held >= cap {
            return Err(AdmissionError::TooManyReservations(cap));
        }
        // Orphans outlive their connections, so only these two caps bound what
        // reconnecting clients can leave behind; both are checked before any
        // guard takes anything.
        let daemon = &self.config.daemon;
        if self.reservations.held_by(caller.uid) >= daemon.max_reservations_per_uid {
            return Err(AdmissionError::TooManyReservationsForUid {
                uid: caller.uid,
                cap: daemon.max_reservations_per_uid,
            });
        }
        if self.reservations.len() >= daemon.max_reservations {
            return Err(AdmissionError::TooManyOpenReservations(
                daemon.max_reservations,
            ));
        }
        let Some(route) = plan.route else {
            return self.admit_to(caller, &plan, plan.service, now, out);
        };
        // The chain is decided under this one lock: each service is admitted in
        // turn, a denial undone before the next is tried, so the choice and the
        // admission are one step.
        let config = Arc::clone(&self.config);
        let chain = route_chain(&config, route)?;
        let mut skipped = Vec::new();
        let mut transitions = Vec::new();
        for (idx, service) in chain.iter().enumerate() {
            let mut filed = self.admit_to(caller, &plan, service, now, out)?;
            let decision = match &mut filed {
                Filed::Decided => &mut *out,
                Filed::Durable(durable) => &mut durable.pending.decision,
            };
            transitions.append(&mut decision.transitions);
            decision.service = Some(service.clone());
            if decision.allowed || idx + 1 == chain.len() {
                decision.transitions = transitions;
                decision.skipped = skipped;
                return Ok(filed);
            }
            debug_assert!(
                matches!(filed, Filed::Decided),
                "a denial is decided at once"
            );
            if let Some(i) = out.decisive.filter(|&i| i < out.votes.len()) {
                skipped.push((service.clone(), out.votes.swap_remove(i)));
            }
        }
        unreachable!("a route's chain is not empty (validated with the config)")
    }

    /// Which service of a chain would admit a call now, and why each before it
    /// would not; takes nothing (each service's admission is run and undone).
    pub(super) fn route(
        &mut self,
        caller: Caller<'_>,
        plan: Plan<'_>,
        chain: Option<&[String]>,
        now: Moment,
    ) -> Result<Routed, AdmissionError> {
        let config = Arc::clone(&self.config);
        let chain = match (chain, plan.route) {
            (Some(chain), _) => chain,
            (None, Some(route)) => route_chain(&config, route)?,
            (None, None) => {
                return Err(AdmissionError::Invalid(
                    "give a route name or a chain of services".into(),
                ))
            }
        };
        // A chain naming a service the daemon refuses is wrong whichever
        // service would be chosen today.
        if let Some(unknown) = chain.iter().find(|s| !config.knows_service(s)) {
            return Err(AdmissionError::UnknownService(unknown.clone()));
        }
        let mut routed = Routed::default();
        for service in chain {
            let (_, places) = self.service(service)?;
            let call = self.call(caller, &plan, service, places, now);
            let mut votes = Votes::new();
            let mut checked = Checked::new(&mut votes);
            let denied = self.run_pipeline(&call, &mut checked);
            routed.transitions.append(&mut checked.transitions);
            self.undo(&mut checked.taken);
            if !denied {
                routed.service = Some(service.clone());
                return Ok(routed);
            }
            if let Some(vote) = votes.pop() {
                routed.skipped.push((service.clone(), vote));
            }
        }
        Ok(routed)
    }

    /// The call a plan makes to `service`, priced for it.
    fn call<'a>(
        &self,
        caller: Caller<'a>,
        plan: &Plan<'a>,
        service: &'a str,
        places: Places,
        now: Moment,
    ) -> Call<'a> {
        let estimate = plan.cost.unwrap_or_else(|| {
            price(
                self.config.price_for(service, plan.model),
                plan.units.get(),
                plan.input_units,
                plan.output_units,
            )
        });
        Call {
            agent: caller.agent,
            service,
            model: plan.model,
            units: plan.units,
            estimate,
            now,
            shadow_all: self.config.daemon.mode == Mode::Shadow,
            content: plan.content,
            attempt: plan.attempt,
            session: caller.session,
            pid: caller.pid,
            uid: caller.uid,
            lease: plan.lease,
            waiter: plan.wait.and_then(|w| w.ticket),
            places,
        }
    }

    /// Runs every stage on `call`, stopping at the first that denies; whether
    /// one did. What was voted and taken goes into `checked`, which the caller
    /// owns (filled in place: it is several hundred bytes, moved as little as
    /// possible).
    fn run_pipeline(&mut self, call: &Call<'_>, checked: &mut Checked) -> bool {
        for (idx, guard) in self.guards.stages().into_iter().enumerate() {
            checked.current = idx;
            if guard.check(call, checked) == Verdict::Deny {
                return true;
            }
        }
        false
    }

    /// Puts back what a pipeline run took, newest first, still under the lock
    /// (so restoring is exact), and empties the list.
    fn undo(&mut self, taken: &mut TakenList) {
        let pipeline = self.guards.stages();
        for Taken { guard, mut what } in taken.drain(..).rev() {
            pipeline[guard].undo(&mut *what);
        }
    }

    /// Admits `plan` against `service`: all of the pipeline, or nothing; the
    /// decision is written into `out`.
    fn admit_to(
        &mut self,
        caller: Caller<'_>,
        plan: &Plan<'_>,
        service: &str,
        now: Moment,
        out: &mut Decision,
    ) -> Result<Filed, AdmissionError> {
        let (name, places) = self.service(service)?;
        // Named by the tables' shared name: the guards check their places
        // by its address.
        let call = self.call(caller, plan, &name, places, now);
        self.check_charge("the call's estimate", call.estimate)?;
        let mut checked = Checked::new(&mut out.votes);
        let denied = self.run_pipeline(&call, &mut checked);
        // The takes stay where the check wrote them until the reservation
        // holds them: moved out first, they were copied (~550 bytes) once
        // more.
        let transitions = std::mem::take(&mut checked.transitions);
        self.note_clock_steps();
        if denied {
            self.raise_exhausted_quotas(checked.votes);
            self.undo(&mut checked.taken);
            out.deny(transitions);
            out.waiting = self.wait_in_line(plan, &call, out);
            return Ok(Filed::Decided);
        }
        if let Some(ticket) = call.waiter {
            // Its turn came: out of every line, holding its permits now.
            self.guards.concurrency.leave(ticket);
        }

        let estimate = call.estimate;
        let id = (self.epoch << 32) | self.next_reservation;
        self.next_reservation += 1;
        let mut entries = Vec::new();
        {
            let pipeline = self.guards.stages();
            for t in &checked.taken {
                pipeline[t.guard].entries(&*t.what, id, &call, &mut entries);
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
                uid: Some(caller.uid),
                settle_alone: false,
                orphaned_at: None,
                agent: Name::from(caller.agent),
                service: name,
                model: plan.model.map(str::to_owned),
                units: plan.units.get(),
                input_units: plan.input_units,
                output_units: plan.output_units,
                attempt: plan.attempt,
                taken: checked.taken,
                stage,
            },
        );
        self.by_session
            .entry(caller.session)
            .or_default()
            .insert(id);
        out.allow(id, transitions, estimate);
        if entries.is_empty() {
            return Ok(Filed::Decided);
        }
        Ok(Filed::Durable(Box::new(Durable {
            entries,
            pending: PendingAdmit {
                id,
                decision: std::mem::take(out),
            },
        })))
    }

    /// A call refused only for want of a bulkhead permit, whose caller will
    /// wait, stands in line (or keeps its place); any other refusal takes it
    /// out of line.
    fn wait_in_line(
        &mut self,
        plan: &Plan<'_>,
        call: &Call<'_>,
        decision: &Decision,
    ) -> Option<u64> {
        let wait = plan.wait?;
        let for_a_permit = decision
            .decisive_vote()
            .is_some_and(|vote| vote.guard == GuardKind::Concurrency);
        if for_a_permit {
            return Some(
                self.guards
                    .concurrency
                    .enqueue(wait.ticket, wait.wake, call),
            );
        }
        if let Some(ticket) = wait.ticket {
            self.guards.concurrency.leave(ticket);
        }
        None
    }

    /// Quota counters a call found used up are raised as alerts (suppressed per
    /// key by `Alerts`, so a client hammering one is one alert).
    fn raise_exhausted_quotas(&self, votes: &[crate::guard::Vote]) {
        for vote in votes.iter().filter(|v| !v.allow) {
            if let Some(QuotaDenial::Exhausted { key, .. }) = vote.reason.denial::<QuotaDenial>() {
                self.alerts.raise(Alert::QuotaExhausted {
                    quota: vote.rule.to_string(),
                    key: crate::guard::display_key(key),
                });
            }
        }
    }

    /// The admission's entries are durable: its reservation is open. If its
    /// connection ended meanwhile, it is an orphan now, or — holding no money —
    /// released as the connection's end would have released it.
    pub(super) fn confirm(&mut self, id: u64) {
        let Some(reservation) = self.reservations.get_mut(&id) else {
            return;
        };
        if reservation.stage != Stage::Admitting {
            return;
        }
        reservation.stage = Stage::Open;
        if reservation.session.is_none() && !holds_money(reservation) {
            self.close(id, Closed::Released);
        }
    }

    /// Undoes an admission whose ledger write failed. Other admissions may have run
    /// since, so everything is given back arithmetically, not restored.
    pub(super) fn abort(&mut self, id: u64) {
        let Some(mut reservation) = self.reservations.remove(&id) else {
            return;
        };
        if let Some(session) = reservation.session {
            self.forget_session_link(id, session);
        }
        let pipeline = self.guards.stages();
        for t in reservation.taken.iter_mut().rev() {
            pipeline[t.guard].abort(&mut *t.what);
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
                owner: reservation.agent.to_string(),
            });
        }
        if reservation.stage != Stage::Open {
            return Err(AdmissionError::Busy(id));
        }
        let Some(budgets) = hold(reservation).map(|h| h.budgets.clone()) else {
            let settlement = self.close_reported(id, &outcome, None, now);
            return Ok(Reporting::Settled(settlement));
        };
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
                None => hold(reservation).map_or(Usd::ZERO, |h| h.estimate),
            }
        });
        let max_charge = self.config.budget.max_charge;
        if amount > max_charge {
            return Err(super::ledger::too_large(
                "the reported cost",
                amount,
                max_charge,
            ));
        }
        reservation.stage = Stage::Settling;
        let (agent, service) = (
            reservation.agent.to_string(),
            reservation.service.to_string(),
        );
        let filed = self.file(&budgets, now);
        let key = key.unwrap_or_else(|| reservation_key(id));
        Ok(Reporting::Durable(Durable {
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
        }))
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
        self.check_charge("the reported cost", amount)?;
        let budgets = self.guards.budgets.applicable(agent, service);
        if amount == Usd::ZERO || budgets.is_empty() {
            return Ok(Reporting::Settled(
                self.record_outcome(service, &outcome, None, now),
            ));
        }
        let key = key.ok_or(AdmissionError::KeyRequired)?;
        let filed = self.file(&budgets, now);
        Ok(Reporting::Durable(Durable {
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
        }))
    }

    /// Applies the ledger's answer to a durable report.
    pub(super) fn finish_report(
        &mut self,
        pending: PendingReport,
        result: Result<LedgerOutcome, StoreError>,
        now: Moment,
    ) -> Result<Settlement, StoreError> {
        let result = match result {
            // Nothing was filed (a balance would overflow): as if not written.
            Ok(LedgerOutcome::Refused(why)) => Err(StoreError::Refused(why)),
            other => other,
        };
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(err) => {
                // Not durable: the reservation is open again, for a retry.
                if let Some(id) = pending.reservation {
                    if let Some(reservation) = self.reservations.get_mut(&id) {
                        reservation.stage = Stage::Open;
                    }
                }
                return Err(err);
            }
        };
        Ok(match (outcome, pending.reservation) {
            (LedgerOutcome::Duplicate, Some(id)) => {
                // The key was charged before (by this or another report): this
                // reservation is released and nothing is counted again.
                if self.reservations.contains_key(&id) {
                    self.close(id, Closed::Reported);
                }
                Settlement::duplicate()
            }
            (LedgerOutcome::Duplicate, None) => Settlement::duplicate(),
            (_, Some(id)) if self.reservations.contains_key(&id) => {
                self.charge_filed(&pending.filed, pending.amount);
                self.close_reported(id, &pending.outcome, Some(pending.amount), now)
            }
            (_, _) => {
                self.charge_filed(&pending.filed, pending.amount);
                self.record_outcome(
                    &pending.service,
                    &pending.outcome,
                    Some(pending.amount),
                    now,
                )
            }
        })
    }

    pub(super) fn end_session(&mut self, session: u64, now: Moment) -> (usize, usize) {
        // Leases taken by `Lease` requests end with their connection.
        self.guards.leases.end_session(session);
        let Some(ids) = self.by_session.remove(&session) else {
            return (0, 0);
        };
        let (mut released, mut orphaned) = (0, 0);
        for id in ids {
            let Some(reservation) = self.reservations.get_mut(&id) else {
                continue;
            };
            let stages = self.guards.stages();
            let mut keep = Keep::No;
            for t in &mut reservation.taken {
                if stages[t.guard].disconnect(&mut *t.what) == Keep::Money {
                    keep = Keep::Money;
                }
            }
            reservation.session = None;
            if keep == Keep::Money {
                reservation.orphaned_at = Some(now.mono);
                orphaned += 1;
                continue;
            }
            released += 1;
            // One whose durable quota usage is still being written is released
            // (or given back) by its commit's completion.
            if reservation.stage != Stage::Admitting {
                self.close(id, Closed::Released);
            }
        }
        (released, orphaned)
    }

    /// Closes a reported reservation: every guard settles what it took (the
    /// breaker counts the outcome, weighted rate limits settle the units used,
    /// the budget estimate goes back).
    fn close_reported(
        &mut self,
        id: u64,
        outcome: &Outcome,
        charged: Option<Usd>,
        now: Moment,
    ) -> Settlement {
        let report = report_of(outcome, now);
        let pipeline = self.guards.stages();
        // Settled where it lies (`Reservations::close_with`): no copy of it.
        let (session, service, attempt, settled) = self
            .reservations
            .close_with(&id, |reservation| {
                let mut settled = Settled::default();
                for t in &mut reservation.taken {
                    pipeline[t.guard].settle(&mut *t.what, &report, &mut settled);
                }
                let service = Arc::clone(&reservation.service);
                (reservation.session, service, reservation.attempt, settled)
            })
            .expect("caller checked the reservation exists");
        if let Some(session) = session {
            self.forget_session_link(id, session);
        }
        self.recently_closed.insert(id, Closed::Reported);
        let advice = self.advise(&service, outcome, attempt, now);
        settlement(&service, settled, charged, advice)
    }

    /// Closes a reservation without an outcome: every guard releases what it
    /// took on the call's behalf.
    pub(super) fn close(&mut self, id: u64, how: Closed) -> Option<Reservation> {
        let mut reservation = self.reservations.remove(&id)?;
        if let Some(session) = reservation.session {
            self.forget_session_link(id, session);
        }
        let pipeline = self.guards.stages();
        for t in &mut reservation.taken {
            pipeline[t.guard].release(&mut *t.what);
        }
        self.recently_closed.insert(id, how);
        Some(reservation)
    }

    /// An outcome without a reservation: only the service's breaker hears it.
    fn record_outcome(
        &mut self,
        service: &str,
        outcome: &Outcome,
        charged: Option<Usd>,
        now: Moment,
    ) -> Settlement {
        let settled = self
            .guards
            .breakers
            .record(service, None, &report_of(outcome, now));
        let advice = self.advise(service, outcome, 1, now);
        settlement(service, settled, charged, advice)
    }

    pub(super) fn forget_session_link(&mut self, id: u64, session: u64) {
        // An emptied set is kept (with its room) until the session ends: a
        // connection that admits and reports one call at a time would
        // otherwise allocate a new one per admission.
        if let Some(ids) = self.by_session.get_mut(&session) {
            ids.remove(&id);
        }
    }

    /// Makes sure `service` is known and has its breaker and retry state;
    /// its name, shared by every reservation made against it, and where the
    /// two are (for the call's guards).
    pub(super) fn service(&mut self, service: &str) -> Result<(Arc<str>, Places), AdmissionError> {
        if let Some((last, places)) = self
            .last_service
            .as_ref()
            .filter(|(last, _)| **last == *service)
        {
            return Ok((Arc::clone(last), *places));
        }
        let (breaker, name, _) = self.named_breaker(service)?;
        let name = Arc::clone(name);
        let config = &self.config;
        let (retry, _) = self
            .guards
            .retries
            .get_or_insert(service, || config.retry_for(service).clone());
        let places = Places {
            breaker: Some(breaker),
            retry: Some(retry),
        };
        self.last_service = Some((Arc::clone(&name), places));
        Ok((name, places))
    }

    /// The advice for a reported failure, when it was reported retryable: the
    /// service's retry settings and budget, and what its breaker says now.
    fn advise(
        &mut self,
        service: &str,
        outcome: &Outcome,
        attempt: u32,
        now: Moment,
    ) -> Option<Advice> {
        if !(outcome.failure && outcome.retryable) {
            return None;
        }
        let breaker = match self.guards.breakers.get_mut(service) {
            Some(breaker) => {
                breaker.advance(now.mono);
                let snapshot = breaker.snapshot(now.mono);
                match snapshot.phase {
                    Phase::ForcedOpen => BreakerView::ForcedOpen,
                    Phase::Open => {
                        BreakerView::OpenFor(snapshot.open_remaining.unwrap_or_default())
                    }
                    _ => BreakerView::Admits,
                }
            }
            None => BreakerView::Admits,
        };
        let config = &self.config;
        self.guards
            .retries
            .get_or_insert(service, || config.retry_for(service).clone());
        let ask = Ask {
            attempt: outcome.attempt.unwrap_or(attempt),
            upstream_after: outcome.upstream_after,
        };
        self.guards.retries.advise(service, ask, breaker, now.mono)
    }

    /// The breaker of `service`, created on first use.
    pub(super) fn breaker(&mut self, service: &str) -> Result<&mut Breaker, AdmissionError> {
        self.named_breaker(service).map(|(_, _, breaker)| breaker)
    }

    /// [`Engine::breaker`] with the service's shared name; one lookup when
    /// the breaker exists (every admission but a service's first).
    fn named_breaker(
        &mut self,
        service: &str,
    ) -> Result<(usize, &Arc<str>, &mut Breaker), AdmissionError> {
        let config = &self.config;
        self.guards.breakers.named(service, |existing| {
            if !config.knows_service(service) {
                return Err(AdmissionError::UnknownService(service.to_owned()));
            }
            if existing >= config.daemon.max_services {
                return Err(AdmissionError::TooManyServices(config.daemon.max_services));
            }
            Ok(config.breaker_for(service).clone())
        })
    }
}

fn report_of(outcome: &Outcome, now: Moment) -> Report {
    Report {
        failure: outcome.failure,
        units: outcome.units,
        latency: outcome.latency,
        now,
    }
}

/// A settlement made whole in one expression, at the end of its callers:
/// built in steps and then returned, it was copied (a couple of hundred
/// bytes) on every report.
#[inline(always)]
fn settlement(
    service: &str,
    settled: Settled,
    charged: Option<Usd>,
    advice: Option<crate::guard::retry::Advice>,
) -> Settlement {
    Settlement {
        duplicate: false,
        // Most reports change nothing, and need not copy the name.
        service: if settled.transition.is_some() {
            service.to_owned()
        } else {
            String::new()
        },
        phase: settled.phase,
        transition: settled.transition,
        charged,
        advised_service: if advice.is_some() {
            service.to_owned()
        } else {
            String::new()
        },
        advice,
    }
}

/// The chain of the configured route `name`.
fn route_chain<'c>(config: &'c Config, name: &str) -> Result<&'c [String], AdmissionError> {
    config
        .routes
        .iter()
        .find(|r| r.name == name)
        .map(|r| r.chain.as_slice())
        .ok_or_else(|| AdmissionError::UnknownRoute {
            name: name.to_owned(),
            known: config.routes.iter().map(|r| r.name.clone()).collect(),
        })
}

/// The cost of a call by its price entry (exact, rounded once, up: see
/// `Price::cost`); 0 without one.
pub(super) fn price(price: Option<&Price>, units: u32, input_units: u32, output_units: u32) -> Usd {
    price.map_or(Usd::ZERO, |p| p.cost(units, input_units, output_units))
}
