//! `Admit`: may this agent call this service now, at this cost? Validates the
//! request, runs the admission, makes its reservation durable when money or a
//! durable quota is involved, and turns the decision into an `AdmitReply`.
//!
//! With a payload (and `content.enabled`), the payload is scanned first, off
//! the connection's task (`check.rs`), and the admission runs when the scan is
//! done, with its result for the content guard. Such an admission is decided
//! when its scan ends, not when it arrived: requests pipelined behind it on the
//! same connection may be decided before it (their replies still come in order).

use std::num::NonZeroU32;
use std::time::Duration;

use super::check::Job;
use super::{dollars, invalid, log_transition, unavailable, Reply};
use crate::admission::{AdmissionError, Admitted, Caller, Decision, Moment, Plan, Reason};
use crate::guard::content::Scanned;
use crate::money::Usd;
use crate::names::{check_name, shown};
use crate::protocol::{AdmitReply, AdmitRequest, ErrorReply, GuardKind, Response, Vote};
use crate::state::{Limit, Session, State};

/// Who asked, as the decision and its log line need it; owned, because with a
/// payload the decision is made in a future, after the scan.
struct Asker {
    session: u64,
    agent: String,
    peer_uid: u32,
    peer_pid: i32,
}

/// The request's checked values.
#[derive(Clone, Copy)]
struct Valid {
    units: NonZeroU32,
    cost: Option<Usd>,
}

pub(super) fn apply(state: &State, session: &Session, mut req: AdmitRequest, now: Moment) -> Reply {
    let payload = req.payload.take();
    let (asker, valid) = match validate(state, session, &req) {
        Ok(checked) => checked,
        Err(err) => return Reply::Ready(Response::Error(err)),
    };
    let config = state.config();
    // Without the guard a payload is not looked at: no scan, no content vote.
    let Some(payload) = payload.filter(|_| config.content.enabled) else {
        return decided(decide(state, &asker, &req, valid, now, None));
    };
    let job = match Job::new(&config.content, payload) {
        Ok(job) => job,
        Err(err) => return Reply::Ready(Response::Error(err)),
    };
    let state = state.clone();
    Reply::Pending(Box::pin(async move {
        let scanned = match job.run().await {
            Ok(scanned) => scanned,
            Err(err) => return Response::Error(err),
        };
        // The scan took time: the admission happens now.
        let now = state.moment();
        decided(decide(&state, &asker, &req, valid, now, Some(&scanned)))
            .into_response()
            .await
    }))
}

fn decided(result: Result<Reply, ErrorReply>) -> Reply {
    result.unwrap_or_else(|err| Reply::Ready(Response::Error(err)))
}

/// Everything that can be checked before an admission: names, the agent's
/// binding, units, cost.
fn validate(
    state: &State,
    session: &Session,
    req: &AdmitRequest,
) -> Result<(Asker, Valid), ErrorReply> {
    check_name(&req.service)
        .map_err(|e| invalid(format!("service name {} {e}", shown(&req.service))))?;
    let agent = req.agent.as_deref().unwrap_or(&session.agent);
    check_name(agent).map_err(|e| invalid(format!("agent name {} {e}", shown(agent))))?;
    // The session's own agent was checked at the handshake; a per-request agent must
    // pass the same `[[agents]]` binding, or the override would be a way around it.
    if req.agent.is_some() {
        if let Err(denied) = state.access().check_agent(&session.peer, agent) {
            return Err(super::not_permitted(state, session, &denied));
        }
    }
    if let Some(model) = &req.model {
        check_name(model).map_err(|e| invalid(format!("model name {} {e}", shown(model))))?;
    }
    let units =
        NonZeroU32::new(req.units).ok_or_else(|| invalid("units must be at least 1, got 0"))?;
    let cost = req.cost.map(|c| dollars("cost", c)).transpose()?;
    let asker = Asker {
        session: session.id,
        agent: agent.to_owned(),
        peer_uid: session.peer.uid,
        peer_pid: session.peer.pid,
    };
    Ok((asker, Valid { units, cost }))
}

fn decide(
    state: &State,
    asker: &Asker,
    req: &AdmitRequest,
    valid: Valid,
    now: Moment,
    content: Option<&Scanned>,
) -> Result<Reply, ErrorReply> {
    let agent = asker.agent.as_str();
    let plan = Plan {
        service: &req.service,
        units: valid.units,
        input_units: req.input_units,
        output_units: req.output_units,
        cost: valid.cost,
        model: req.model.as_deref(),
        content,
    };
    let caller = Caller {
        session: asker.session,
        uid: asker.peer_uid,
        agent,
    };
    let admitted = state.admission().admit(caller, plan, now).map_err(|err| {
        let hit = match err {
            AdmissionError::TooManyReservationsForUid { .. } => Some(Limit::MaxReservationsPerUid),
            AdmissionError::TooManyOpenReservations(_) => Some(Limit::MaxReservations),
            _ => None,
        };
        if let Some(limit) = hit {
            state.counters().hit(limit);
        }
        ErrorReply::from(err)
    })?;
    if let Admitted::Decided(decision) = &admitted {
        if let Some(refusal) = fail_closed_without_a_write(state, decision) {
            return Ok(Reply::Ready(refusal));
        }
    }
    let decision = match &admitted {
        Admitted::Decided(decision) => decision,
        Admitted::Durable(durable) => durable.pending.decision(),
    };
    for (service, from, to) in &decision.transitions {
        log_transition(state, service, *from, *to);
    }
    log_decision(asker, &req.service, decision);
    let durable = match admitted {
        Admitted::Decided(decision) => {
            return Ok(Reply::Ready(Response::Admit(into_reply(decision))))
        }
        Admitted::Durable(durable) => durable,
    };
    // The commit opens the reservation (or gives back what it took) when the
    // ledger answers, whether or not this reply is still wanted then.
    let committed = state.commit(durable);
    Ok(Reply::Pending(Box::pin(async move {
        match committed.await {
            Ok(decision) => Response::Admit(into_reply(decision)),
            Err(err) => unavailable(&err),
        }
    })))
}

/// A $0 admission under a budget writes nothing to the ledger (issue 16), but
/// its report will charge the actual cost there: while the ledger is failing it
/// is refused like every budget-governed request (fail closed), and the
/// reservation it took is released.
fn fail_closed_without_a_write(state: &State, decision: &Decision) -> Option<Response> {
    let budgeted = decision
        .votes
        .iter()
        .any(|vote| vote.guard == GuardKind::Budget);
    if !decision.allowed || !budgeted {
        return None;
    }
    let message = state.store().health()?;
    if let Some(id) = decision.reservation {
        state.admission().release(id);
    }
    Some(unavailable(&crate::store::StoreError::Failed {
        path: state.store().path().display().to_string(),
        message,
    }))
}

fn log_decision(asker: &Asker, service: &str, decision: &Decision) {
    let agent = asker.agent.as_str();
    record(decision);
    match decision.decisive_vote() {
        Some(vote) => {
            let crate::logging::Verdict::Log { suppressed } = crate::logging::DENIALS.take() else {
                return;
            };
            if suppressed > 0 {
                log::info!(suppressed = suppressed; "{suppressed} denial line(s) suppressed in the last second (at most {} a second are logged; all are counted in automation_framework_decisions_total)", crate::logging::DENIALS_PER_SECOND);
            }
            let (guard, rule, reason) = (vote.guard.name(), &*vote.rule, vote.reason.to_string());
            log::info!(
                message_id = crate::logging::message_id::DENIED,
                agent = agent, service = service, peer_uid = asker.peer_uid, peer_pid = asker.peer_pid,
                guard = guard, rule = rule, decision = "deny", reason = reason.as_str();
                "deny agent={agent} service={service} guard={guard}/{rule}: {reason}"
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
        // Indices into metrics::OUTCOMES.
        let outcome = match (vote.allow, vote.shadow) {
            (true, _) => 0,
            (false, false) => 1,
            (false, true) => 2,
        };
        hot.decision(vote.guard.index(), outcome);
        if !vote.allow && vote.guard == GuardKind::Rate {
            metrics::counter!(crate::metrics::RATE_LIMIT_HITS, "rule" => String::from(&*vote.rule))
                .increment(1);
        }
    }
}

/// The wire form of a decision: the engine's typed votes become text here,
/// after the engine lock was released.
fn into_reply(decision: Decision) -> AdmitReply {
    let votes: Vec<Vote> = decision
        .votes
        .iter()
        .map(|v| Vote {
            guard: v.guard,
            rule: String::from(&*v.rule),
            allow: v.allow,
            shadow: v.shadow,
            reason: reason_text(&v.reason),
            retry_after_ms: v.retry_after.map(millis_up),
        })
        .collect();
    let decisive = decision.decisive.and_then(|idx| votes.get(idx));
    AdmitReply {
        allowed: decision.allowed,
        reservation: decision.reservation,
        guard: decisive.map(|v| v.guard),
        rule: decisive.map(|v| v.rule.clone()),
        reason: decisive.map(|v| v.reason.clone()),
        retry_after_ms: decisive.and_then(|v| v.retry_after_ms),
        cost: decision.allowed.then(|| decision.estimate.dollars()),
        votes,
    }
}

/// A vote's reason as text. The reason every allowed admission carries (rate
/// cells taken) is built without the `fmt` machinery, which cost more than the
/// rate check itself.
fn reason_text(reason: &Reason) -> String {
    match reason {
        Reason::Burst { taken, burst } => taken_of_burst(*taken, *burst),
        Reason::Fixed(text) => (*text).to_owned(),
        other => other.to_string(),
    }
}

/// "`taken` of burst `burst` taken", without `format!`.
fn taken_of_burst(taken: u32, burst: u32) -> String {
    let mut numbers = itoa::Buffer::new();
    let mut reason = String::with_capacity(40);
    reason.push_str(numbers.format(taken));
    reason.push_str(" of burst ");
    reason.push_str(numbers.format(burst));
    reason.push_str(" taken");
    reason
}

/// Whole milliseconds, rounded up: coming back after the advertised wait must work.
fn millis_up(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowed_rate_reason_reads_as_the_display_form() {
        for (taken, burst) in [(1, 100), (u32::MAX, 7)] {
            assert_eq!(
                taken_of_burst(taken, burst),
                Reason::Burst { taken, burst }.to_string()
            );
        }
        assert_eq!(taken_of_burst(1, 100), "1 of burst 100 taken");
    }
}
