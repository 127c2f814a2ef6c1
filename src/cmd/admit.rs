//! `Admit`: may this agent call this service now? Validates the request, runs the
//! admission, logs denials, and turns the decision into an `AdmitReply`.

use std::num::NonZeroU32;
use std::time::Duration;

use super::{error, log_transition, not_permitted};
use crate::admission::{Caller, Decision, Guard, Plan};
use crate::names::check_name;
use crate::protocol::{AdmitReply, AdmitRequest, ErrorCode, ErrorReply, GuardKind, Response, Vote};
use crate::state::{Session, State};

pub(super) fn apply(
    state: &State,
    session: &Session,
    req: AdmitRequest,
    now: Duration,
) -> Response {
    if let Err(err) = check_name(&req.service) {
        return error(
            ErrorCode::InvalidArgument,
            format!("service name {:?} {err}", req.service),
        );
    }
    let agent = req.agent.as_deref().unwrap_or(&session.agent);
    if let Err(err) = check_name(agent) {
        return error(
            ErrorCode::InvalidArgument,
            format!("agent name {agent:?} {err}"),
        );
    }
    // The session's own agent was checked at the handshake; a per-request agent must
    // pass the same `[[agents]]` binding, or the override would be a way around it.
    if req.agent.is_some() {
        if let Err(denied) = state.access().check_agent(&session.peer, agent) {
            return not_permitted(state, session, &denied);
        }
    }
    let Some(units) = NonZeroU32::new(req.units) else {
        return error(
            ErrorCode::InvalidArgument,
            "units must be at least 1, got 0",
        );
    };
    let caller = Caller {
        session: session.id,
        agent,
    };
    let plan = Plan {
        service: &req.service,
        units,
    };
    let decision = match state.admission().admit(caller, plan, now) {
        Ok(decision) => decision,
        Err(err) => return Response::Error(ErrorReply::from(err)),
    };
    for (service, from, to) in &decision.transitions {
        log_transition(service, *from, *to);
    }
    log_decision(session, agent, &req.service, &decision);
    Response::Admit(into_reply(decision))
}

fn log_decision(session: &Session, agent: &str, service: &str, decision: &Decision) {
    match decision.decisive_vote() {
        Some(vote) => log::info!(
            agent = agent, service = service, peer_uid = session.peer.uid, peer_pid = session.peer.pid,
            guard = guard_name(vote.guard), rule = vote.rule.as_str(), decision = "deny", reason = vote.reason.as_str();
            "deny agent={agent} service={service} guard={}/{}: {}", guard_name(vote.guard), vote.rule, vote.reason
        ),
        None => log::debug!(
            agent = agent, service = service, decision = "allow";
            "allow agent={agent} service={service} reservation={:?}", decision.reservation
        ),
    }
}

fn into_reply(decision: Decision) -> AdmitReply {
    let decisive = decision.decisive_vote().cloned();
    AdmitReply {
        allowed: decision.allowed,
        reservation: decision.reservation,
        guard: decisive.as_ref().map(|v| guard_kind(v.guard)),
        rule: decisive.as_ref().map(|v| v.rule.clone()),
        reason: decisive.as_ref().map(|v| v.reason.clone()),
        retry_after_ms: decisive.as_ref().and_then(|v| v.retry_after).map(millis_up),
        votes: decision
            .votes
            .into_iter()
            .map(|v| Vote {
                guard: guard_kind(v.guard),
                rule: v.rule,
                allow: v.allow,
                shadow: v.shadow,
                reason: v.reason,
                retry_after_ms: v.retry_after.map(millis_up),
            })
            .collect(),
    }
}

/// Whole milliseconds, rounded up: coming back after the advertised wait must work.
fn millis_up(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

fn guard_kind(guard: Guard) -> GuardKind {
    match guard {
        Guard::Rate => GuardKind::Rate,
        Guard::Breaker => GuardKind::Breaker,
    }
}

fn guard_name(guard: Guard) -> &'static str {
    match guard {
        Guard::Rate => "rate",
        Guard::Breaker => "breaker",
    }
}
