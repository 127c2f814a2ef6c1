//! `Admit`: may this agent call this service now, at this cost? Validates the
//! request, runs the admission, makes its reservation durable when money or a
//! durable quota is involved, and turns the decision into an `AdmitReply`.

use std::num::NonZeroU32;
use std::time::Duration;

use super::{dollars, guard_name, invalid, log_transition, unavailable, Reply};
use crate::admission::{Caller, Decision, Moment, Plan};
use crate::names::check_name;
use crate::protocol::{AdmitReply, AdmitRequest, ErrorReply, Response, Vote};
use crate::state::{Session, State};

pub(super) fn apply(state: &State, session: &Session, req: AdmitRequest, now: Moment) -> Reply {
    match decide(state, session, &req, now) {
        Ok(reply) => reply,
        Err(err) => Reply::Ready(Response::Error(err)),
    }
}

fn decide(
    state: &State,
    session: &Session,
    req: &AdmitRequest,
    now: Moment,
) -> Result<Reply, ErrorReply> {
    check_name(&req.service).map_err(|e| invalid(format!("service name {:?} {e}", req.service)))?;
    let agent = req.agent.as_deref().unwrap_or(&session.agent);
    check_name(agent).map_err(|e| invalid(format!("agent name {agent:?} {e}")))?;
    // The session's own agent was checked at the handshake; a per-request agent must
    // pass the same `[[agents]]` binding, or the override would be a way around it.
    if req.agent.is_some() {
        if let Err(denied) = state.access().check_agent(&session.peer, agent) {
            return Err(super::not_permitted(state, session, &denied));
        }
    }
    if let Some(model) = &req.model {
        check_name(model).map_err(|e| invalid(format!("model name {model:?} {e}")))?;
    }
    let units =
        NonZeroU32::new(req.units).ok_or_else(|| invalid("units must be at least 1, got 0"))?;
    let cost = req.cost.map(|c| dollars("cost", c)).transpose()?;
    let plan = Plan {
        service: &req.service,
        units,
        input_units: req.input_units,
        output_units: req.output_units,
        cost,
        model: req.model.as_deref(),
    };
    let caller = Caller {
        session: session.id,
        agent,
    };
    let admitted = state
        .admission()
        .admit(caller, plan, now)
        .map_err(ErrorReply::from)?;
    for (service, from, to) in &admitted.decision.transitions {
        log_transition(state, service, *from, *to);
    }
    log_decision(session, agent, &req.service, &admitted.decision);
    if admitted.entries.is_empty() {
        return Ok(Reply::Ready(Response::Admit(into_reply(admitted.decision))));
    }
    let id = admitted
        .decision
        .reservation
        .expect("an admission with ledger entries was allowed");
    let state = state.clone();
    let written = state.store().write(admitted.entries);
    Ok(Reply::Pending(Box::pin(async move {
        match written.await {
            Ok(_) => {
                state.admission().confirm(id);
                Response::Admit(into_reply(admitted.decision))
            }
            Err(err) => {
                state.admission().abort(id);
                unavailable(&err)
            }
        }
    })))
}

fn log_decision(session: &Session, agent: &str, service: &str, decision: &Decision) {
    record(decision);
    match decision.decisive_vote() {
        Some(vote) => {
            let crate::logging::Verdict::Log { suppressed } = crate::logging::DENIALS.take() else {
                return;
            };
            if suppressed > 0 {
                log::info!(suppressed = suppressed; "{suppressed} denial line(s) suppressed in the last second (at most {} a second are logged; all are counted in automation_framework_decisions_total)", crate::logging::DENIALS_PER_SECOND);
            }
            log::info!(
                message_id = crate::logging::message_id::DENIED,
                agent = agent, service = service, peer_uid = session.peer.uid, peer_pid = session.peer.pid,
                guard = guard_name(vote.guard), rule = vote.rule.as_str(), decision = "deny", reason = vote.reason.as_str();
                "deny agent={agent} service={service} guard={}/{}: {}", guard_name(vote.guard), vote.rule, vote.reason
            );
        }
        None => log::debug!(
            agent = agent, service = service, decision = "allow";
            "allow agent={agent} service={service} reservation={:?}", decision.reservation
        ),
    }
}

/// Counts the decision and each guard's vote.
fn record(decision: &Decision) {
    let hot = crate::metrics::hot();
    hot.admission(decision.allowed);
    for vote in &decision.votes {
        // Indices into metrics::OUTCOMES and metrics::GUARDS.
        let outcome = match (vote.allow, vote.shadow) {
            (true, _) => 0,
            (false, false) => 1,
            (false, true) => 2,
        };
        hot.decision(super::guard_index(vote.guard), outcome);
        if !vote.allow && vote.guard == crate::admission::Guard::Rate {
            metrics::counter!(crate::metrics::RATE_LIMIT_HITS, "rule" => vote.rule.clone())
                .increment(1);
        }
    }
}

fn into_reply(decision: Decision) -> AdmitReply {
    let decisive = decision.decisive_vote().cloned();
    AdmitReply {
        allowed: decision.allowed,
        reservation: decision.reservation,
        guard: decisive.as_ref().map(|v| v.guard.into()),
        rule: decisive.as_ref().map(|v| v.rule.clone()),
        reason: decisive.as_ref().map(|v| v.reason.clone()),
        retry_after_ms: decisive.as_ref().and_then(|v| v.retry_after).map(millis_up),
        votes: decision
            .votes
            .into_iter()
            .map(|v| Vote {
                guard: v.guard.into(),
                rule: v.rule,
                allow: v.allow,
                shadow: v.shadow,
                reason: v.reason,
                retry_after_ms: v.retry_after.map(millis_up),
            })
            .collect(),
        cost: decision.allowed.then(|| decision.estimate.dollars()),
    }
}

/// Whole milliseconds, rounded up: coming back after the advertised wait must work.
fn millis_up(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}
