//! `Admit`: may this agent call this service now, at this cost? Validates the
//! request, runs the admission, makes its reservation durable when money or a
//! durable quota is involved, and turns the decision into an `AdmitReply`.
//!
//! With a payload (and `content.enabled`), the payload is scanned first, off
//! the connection's task (`check.rs`), and the admission runs when the scan is
//! done, with its result for the content guard. Such an admission is decided
//! when its scan ends, not when it arrived: requests pipelined behind it on the
//! same connection may be decided before it (their replies still come in order).
//!
//! With `wait_ms`, an admission refused only for want of a bulkhead permit
//! waits its turn (`Admit::run`): the engine put it in line under its lock, and
//! its reply future waits to be woken or for its deadline, outside every lock,
//! then decides again. Requests pipelined behind it are decided as they
//! arrive (a report behind it may free its permit); their replies wait behind
//! its reply. Its place in line is an [`InLine`] owned by that future, so a
//! timeout or a dropped connection removes it by construction.

use std::borrow::Borrow;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::check::Job;
use super::text::{millis_up, reason_text, with_reason_pieces};
use super::{invalid, log_transition, unavailable, Reply};
use crate::admission::{AdmissionError, Caller, Decision, Filed, Moment, Plan, Wait as AdmitWait};
use crate::guard::concurrency::Wake;
use crate::guard::content::Scanned;
use crate::money::Usd;
use crate::names::{check_name, shown};
use crate::protocol::{
    AdmitHead, AdmitReply, AdmitRequest, AdmitWriter, ErrorReply, GuardKind, Name, Response, Text,
    Vote, VoteRef, Votes,
};
use crate::state::{Limit, Session, State};

/// Who asked, as the decision and its log line need it; owned, because with a
/// payload the decision is made in a future, after the scan. The agent's name
/// is a `Name`: a short one is copied in place, not onto the heap.
struct Asker {
    session: u64,
    /// The session's own name unless the request names another (inline up to
    /// 24 bytes).
    agent: Name,
    peer_uid: u32,
    peer_pid: i32,
}

/// The request's checked values.
#[derive(Clone, Copy)]
struct Valid {
    units: NonZeroU32,
    cost: Option<Usd>,
}

/// Decides `req` where it lies (the usual call: no payload, no wait): a
/// request is a couple of hundred bytes, and each layer it was passed down
/// by value copied it.
pub(super) fn apply(
    state: &State,
    session: &Session,
    req: &mut AdmitRequest,
    now: Moment,
    decision: &mut Decision,
) -> Reply {
    let payload = req.payload.take();
    let (asker, valid) = match validate(state, session, req) {
        Ok(checked) => checked,
        Err(err) => return Reply::Ready(Response::Error(err)),
    };
    let config = session.config();
    let wait = req
        .wait_ms
        .filter(|&ms| ms > 0)
        .map(|ms| Duration::from_millis(ms).min(config.concurrency.max_wait))
        .filter(|wait| !wait.is_zero());
    // Without the guard a payload is not looked at: no scan, no content vote.
    let payload = payload.filter(|_| config.content.enabled);
    if payload.is_none() && wait.is_none() {
        let admit = Admit {
            asker,
            req: &*req,
            valid,
            wait,
        };
        return admit.now(state, now, None, decision);
    }
    // Decided later, in a future that owns what it needs.
    let admit = Admit {
        asker,
        req: req.clone(),
        valid,
        wait,
    };
    let Some(payload) = payload else {
        return admit.run(state, now, None, decision);
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
        let mut decision = Decision::default();
        admit
            .run(&state, now, Some(scanned), &mut decision)
            .into_response(&mut decision)
            .await
    }))
}

/// A validated admission: borrowing its request when decided at once, owning
/// it when decided in a future (with a payload, after the scan; with a wait,
/// when a permit frees).
struct Admit<R> {
    asker: Asker,
    req: R,
    valid: Valid,
    /// How long it may wait for a bulkhead permit (`wait_ms`, at most
    /// `concurrency.max_wait`); `None`: refused at once.
    wait: Option<Duration>,
}

/// How a waiting admission is woken: the bulkhead guard calls this under the
/// engine lock; it only marks the waiter's `Notify` (no I/O, no waiting).
impl Wake for Notify {
    fn wake(&self) {
        self.notify_one();
    }
}

/// A waiting admission's place in the bulkheads' lines, owned by the future
/// that waits: however that future ends (admitted, timed out, dropped with its
/// connection), dropping this takes the place away, so a waiter that is gone
/// can never hold up the line or take a permit.
struct InLine {
    state: State,
    ticket: u64,
}

impl Drop for InLine {
    fn drop(&mut self) {
        self.state.admission().leave_line(self.ticket);
    }
}

impl Admit<AdmitRequest> {
    /// Decides now. A caller that may wait and is refused only for want of a
    /// permit gets a pending reply that stands in line (first come, first
    /// served) and tries again each time it may have room, until admitted,
    /// refused by another guard, or its wait is up.
    fn run(
        self,
        state: &State,
        now: Moment,
        content: Option<Scanned>,
        decision: &mut Decision,
    ) -> Reply {
        let Some(wait) = self.wait else {
            return self.now(state, now, content.as_ref(), decision);
        };
        let notify = Arc::new(Notify::new());
        let wake: Arc<dyn Wake> = Arc::clone(&notify) as Arc<dyn Wake>;
        let first = self.admit(
            state,
            now,
            content.as_ref(),
            Some(AdmitWait {
                ticket: None,
                wake: &wake,
            }),
            decision,
        );
        let ticket = match first {
            Ok(Filed::Decided) if decision.waiting.is_some() => {
                decision.waiting.unwrap_or_default()
            }
            Ok(filed) => return self.finish(state, filed, decision, None),
            Err(err) => return Reply::Ready(Response::Error(err)),
        };
        // The wait owns its decision from here: each try writes into it.
        let mut last = std::mem::take(decision);
        let line = InLine {
            state: state.clone(),
            ticket,
        };
        let deadline = tokio::time::Instant::now() + wait;
        let state = state.clone();
        Reply::Pending(Box::pin(async move {
            loop {
                if tokio::time::timeout_at(deadline, notify.notified())
                    .await
                    .is_err()
                {
                    // Out of line before answering: it took nothing.
                    drop(line);
                    crate::metrics::hot().waited(false);
                    let reply = self.finish(&state, Filed::Decided, &mut last, Some(wait));
                    return reply.into_response(&mut last).await;
                }
                let now = state.moment();
                let wait = AdmitWait {
                    ticket: Some(ticket),
                    wake: &wake,
                };
                match self.admit(&state, now, content.as_ref(), Some(wait), &mut last) {
                    Ok(Filed::Decided) if last.waiting.is_some() => {}
                    other => {
                        drop(line);
                        crate::metrics::hot().waited(true);
                        let reply = match other {
                            Ok(filed) => self.finish(&state, filed, &mut last, None),
                            Err(err) => Reply::Ready(Response::Error(err)),
                        };
                        return reply.into_response(&mut last).await;
                    }
                }
            }
        }))
    }
}

impl<R: Borrow<AdmitRequest>> Admit<R> {
    /// Decides once, into `decision`, and answers.
    fn now(
        &self,
        state: &State,
        now: Moment,
        content: Option<&Scanned>,
        decision: &mut Decision,
    ) -> Reply {
        match self.admit(state, now, content, None, decision) {
            Ok(filed) => self.finish(state, filed, decision, None),
            Err(err) => Reply::Ready(Response::Error(err)),
        }
    }

    /// Runs the admission once, into `out`.
    fn admit(
        &self,
        state: &State,
        now: Moment,
        content: Option<&Scanned>,
        wait: Option<AdmitWait<'_>>,
        out: &mut Decision,
    ) -> Result<Filed, ErrorReply> {
        let (asker, req, valid) = (&self.asker, self.req.borrow(), self.valid);
        let plan = Plan {
            service: &req.service,
            units: valid.units,
            input_units: req.input_units,
            output_units: req.output_units,
            cost: valid.cost,
            model: req.model.as_deref(),
            content,
            attempt: req.attempt,
            route: req.route.as_deref(),
            lease: req.lease.as_deref(),
            wait,
        };
        let caller = Caller {
            session: asker.session,
            agent: &asker.agent,
            pid: u32::try_from(asker.peer_pid).unwrap_or(0),
            uid: asker.peer_uid,
        };
        let filed = state
            .admission()
            .admit_into(caller, plan, now, out)
            .map_err(|err| {
                let hit = match err {
                    AdmissionError::TooManyReservationsForUid { .. } => {
                        Some(Limit::MaxReservationsPerUid)
                    }
                    AdmissionError::TooManyOpenReservations(_) => Some(Limit::MaxReservations),
                    _ => None,
                };
                if let Some(limit) = hit {
                    state.counters().hit(limit);
                }
                ErrorReply::from(err)
            })?;
        let decision = match &filed {
            Filed::Decided => &*out,
            Filed::Durable(durable) => durable.pending.decision(),
        };
        // Logged on every try: a waiting admission may move a breaker too.
        for (service, from, to) in &decision.transitions {
            log_transition(state, service, *from, *to);
        }
        Ok(filed)
    }

    /// The final decision (in `out` or moved into the pending commit):
    /// logged, counted, made durable when it must be, and answered.
    /// `waited`: a waiting admission whose wait ran out.
    fn finish(
        &self,
        state: &State,
        filed: Filed,
        out: &mut Decision,
        waited: Option<Duration>,
    ) -> Reply {
        let decision = match &filed {
            Filed::Decided => &*out,
            Filed::Durable(durable) => durable.pending.decision(),
        };
        let req = self.req.borrow();
        let service = decision.service.as_deref().unwrap_or(&req.service);
        log_decision(&self.asker, service, decision);
        if let Some(route) = &req.route {
            super::route::count_choice(route, decision.allowed.then_some(service));
        }
        let durable = match filed {
            Filed::Decided => {
                if let Some(refusal) = fail_closed_without_a_write(state, out) {
                    return Reply::Ready(refusal);
                }
                let Some(waited) = waited else {
                    return Reply::Admitted;
                };
                let mut reply = into_reply(std::mem::take(out));
                if let Some(reason) = reply.reason.as_mut() {
                    reason.push_str(&format!(
                        "; waited {} ms for a permit (wait_ms, at most concurrency.max_wait)",
                        waited.as_millis()
                    ));
                }
                return Reply::Ready(Response::Admit(reply));
            }
            Filed::Durable(durable) => *durable,
        };
        // The commit opens the reservation (or gives back what it took) when the
        // ledger answers, whether or not this reply is still wanted then.
        let committed = state.commit(durable);
        Reply::Pending(Box::pin(async move {
            match committed.await {
                Ok(decision) => Response::Admit(into_reply(decision)),
                Err(err) => unavailable(&err),
            }
        }))
    }
}

/// Everything that can be checked before an admission: names, the agent's
/// binding, units, cost, attempt.
fn validate(
    state: &State,
    session: &Session,
    req: &AdmitRequest,
) -> Result<(Asker, Valid), ErrorReply> {
    if req.attempt == 0 {
        return Err(invalid(
            "attempt is 1-based: 1 for a first call, 2 for its first retry; got 0",
        ));
    }
    match &req.route {
        None => check_name(&req.service)
            .map_err(|e| invalid(format!("service name {} {e}", shown(&req.service))))?,
        Some(_) if !req.service.is_empty() => {
            return Err(invalid(format!(
                "give either service or route, not both (service {} with route {})",
                shown(&req.service),
                shown(req.route.as_deref().unwrap_or_default())
            )))
        }
        Some(route) => {
            check_name(route).map_err(|e| invalid(format!("route name {} {e}", shown(route))))?;
        }
    }
    let (agent, units, cost) = super::call_fields(
        state,
        session,
        req.agent.as_deref(),
        req.model.as_deref(),
        req.units,
        req.cost,
    )?;
    if let Some(lease) = &req.lease {
        check_name(lease).map_err(|e| invalid(format!("lease name {} {e}", shown(lease))))?;
    }
    let asker = Asker {
        session: session.id,
        agent,
        peer_uid: session.peer.uid,
        peer_pid: session.peer.pid,
    };
    Ok((asker, Valid { units, cost }))
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
    let agent = &*asker.agent;
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
            hot.rate_limit_hit(&vote.rule);
        }
        if !vote.allow && vote.guard == GuardKind::Concurrency {
            hot.bulkhead_denial(&vote.rule);
        }
    }
}

/// What an admission's reply says above its votes, for both of its forms
/// ([`encode`], [`into_reply`]): the vote that denied, why, and when the
/// same call could pass.
struct Verdict<'d> {
    /// The deciding vote and its place among the votes.
    decisive: Option<(usize, &'d crate::admission::Vote)>,
    /// The deciding vote's reason, followed by why each service a route
    /// passed over was skipped.
    reason: Option<Text>,
    /// How much of `reason` is the deciding vote's own text: made once, for
    /// the reply's reason and its vote alike (a denial's text goes through
    /// `Display`, the dearest part of a denial's reply).
    own: usize,
    retry_after_ms: Option<u64>,
}

impl<'d> Verdict<'d> {
    fn of(decision: &'d Decision) -> Verdict<'d> {
        let decisive = decision
            .decisive
            .and_then(|idx| Some((idx, decision.votes.get(idx)?)));
        let mut own = 0;
        let reason = decisive.map(|(_, v)| {
            let mut reason = reason_text(&v.reason);
            own = reason.len();
            for (service, vote) in &decision.skipped {
                reason.push_str("; ");
                reason.push_str(service);
                reason.push_str(" skipped: ");
                reason.push_str(&reason_text(&vote.reason));
            }
            reason
        });
        // A route that fits nowhere may fit again when the soonest of its
        // services does.
        let retry_after_ms = if decision.allowed {
            None
        } else {
            decisive
                .map(|(_, v)| v)
                .into_iter()
                .chain(decision.skipped.iter().map(|(_, v)| v))
                .filter_map(|v| v.retry_after.map(millis_up))
                .min()
        };
        Verdict {
            decisive,
            reason,
            own,
            retry_after_ms,
        }
    }

    fn vote(&self) -> Option<&'d crate::admission::Vote> {
        self.decisive.map(|(_, v)| v)
    }

    /// The text of vote `idx` when it is the deciding one (already made).
    fn own_text(&self, idx: usize) -> Option<&str> {
        match (self.decisive, &self.reason) {
            (Some((at, _)), Some(reason)) if at == idx => Some(&reason[..self.own]),
            _ => None,
        }
    }
}

/// [`into_reply`]'s frame, written straight from the decision
/// (`protocol::AdmitWriter`): no `AdmitReply` is built, and each vote's text
/// is made as it is written. The usual admission carries a vote per guard,
/// and building and dropping their wire forms cost more than encoding them.
pub(super) fn encode(
    buf: &mut bytes::BytesMut,
    id: u64,
    decision: &Decision,
) -> Result<(), crate::protocol::EncodeError> {
    let verdict = Verdict::of(decision);
    let head = AdmitHead {
        allowed: decision.allowed,
        reservation: decision.reservation,
        guard: verdict.vote().map(|v| v.guard),
        rule: verdict.vote().map(|v| &*v.rule),
        reason: verdict.reason.as_ref().map(Text::as_str),
        retry_after_ms: verdict.retry_after_ms,
        votes: decision.votes.len(),
    };
    let mut writer = AdmitWriter::begin(buf, id, &head);
    for (idx, vote) in decision.votes.iter().enumerate() {
        let mut write = |reason: &[&str]| {
            writer.vote(&VoteRef {
                guard: vote.guard,
                rule: &vote.rule,
                allow: vote.allow,
                shadow: vote.shadow,
                reason,
                retry_after_ms: vote.retry_after.map(millis_up),
            });
        };
        match verdict.own_text(idx) {
            Some(own) => write(&[own]),
            None => with_reason_pieces(&vote.reason, write),
        }
    }
    writer.finish(
        decision.allowed.then(|| decision.estimate.dollars()),
        decision.service.as_deref(),
    )
}

/// The wire form of a decision: the engine's typed votes become text here,
/// after the engine lock was released.
pub(super) fn into_reply(decision: Decision) -> AdmitReply {
    let verdict = Verdict::of(&decision);
    let votes: Votes = decision
        .votes
        .iter()
        .enumerate()
        .map(|(idx, v)| Vote {
            guard: v.guard,
            rule: Arc::clone(&v.rule),
            allow: v.allow,
            shadow: v.shadow,
            reason: verdict
                .own_text(idx)
                .map_or_else(|| reason_text(&v.reason), Text::from),
            retry_after_ms: v.retry_after.map(millis_up),
        })
        .collect();
    AdmitReply {
        allowed: decision.allowed,
        reservation: decision.reservation,
        guard: verdict.vote().map(|v| v.guard),
        rule: verdict.vote().map(|v| v.rule.to_string()),
        reason: verdict.reason.map(Text::into_string),
        retry_after_ms: verdict.retry_after_ms,
        cost: decision.allowed.then(|| decision.estimate.dollars()),
        votes,
        service: decision.service.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::BytesMut;

    use super::{encode, into_reply, Decision, GuardKind, Response, Usd};
    use crate::admission::Reason;
    use crate::guard::Votes;

    #[derive(Debug, thiserror::Error)]
    #[error("3 of 3 in flight; 1 waiting")]
    struct Full;

    fn vote(guard: GuardKind, rule: &str, reason: Reason) -> crate::admission::Vote {
        crate::admission::Vote::allow(guard, Arc::from(rule), false, reason)
    }

    /// A breaker's and a rate limit's votes, as most admissions carry.
    fn usual_votes() -> Votes {
        let mut votes = Votes::new();
        votes.push(vote(GuardKind::Breaker, "llm", Reason::Fixed("closed")));
        votes.push(vote(
            GuardKind::Rate,
            "open",
            Reason::Burst {
                taken: 1,
                burst: 100,
            },
        ));
        votes
    }

    /// Decisions as the engine makes them: allowed with the usual votes, one
    /// spilling past the inline two, a shadow denial, a denial with a wait, a
    /// route's choice, and one with services passed over (the composed path).
    fn decisions() -> Vec<Decision> {
        let decision = |allowed, votes, decisive| Decision {
            allowed,
            reservation: allowed.then_some(42),
            votes,
            decisive,
            transitions: Vec::new(),
            estimate: Usd::from_micros(1_500),
            service: None,
            skipped: Vec::new(),
            waiting: None,
        };
        let mut many = usual_votes();
        many.push(vote(
            GuardKind::Concurrency,
            "llm",
            Reason::InFlight { n: 3, max: 4 },
        ));
        many.push(vote(
            GuardKind::Lease,
            "index",
            Reason::Fixed("taken until the call is reported"),
        ));
        many.push(vote(
            GuardKind::Budget,
            "global",
            Reason::Reserved {
                estimate: Usd::from_micros(1_500),
                left: Usd::from_micros(7_000_000),
                limit: Usd::from_micros(10_000_000),
            },
        ));
        let mut shadowed = usual_votes();
        shadowed.push(crate::admission::Vote::deny(
            GuardKind::Concurrency,
            Arc::from("llm"),
            true,
            Full,
            None,
        ));
        let mut denied = usual_votes();
        denied.push(crate::admission::Vote::deny(
            GuardKind::Concurrency,
            Arc::from("llm"),
            false,
            Full,
            Some(Duration::from_micros(2_500)),
        ));
        let mut routed = decision(true, usual_votes(), None);
        routed.service = Some("backup".into());
        let mut passed_over = decision(false, denied_votes(), Some(2));
        passed_over.skipped = vec![(
            "primary".into(),
            crate::admission::Vote::deny(
                GuardKind::Breaker,
                Arc::from("primary"),
                false,
                Full,
                None,
            ),
        )];
        fn denied_votes() -> Votes {
            let mut votes = usual_votes();
            votes.push(crate::admission::Vote::deny(
                GuardKind::Rate,
                Arc::from("tight"),
                false,
                Full,
                Some(Duration::from_millis(20)),
            ));
            votes
        }
        vec![
            decision(true, usual_votes(), None),
            decision(true, many, None),
            decision(true, shadowed, None),
            decision(false, denied, Some(2)),
            decision(true, Votes::new(), None),
            routed,
            passed_over,
        ]
    }

    #[test]
    fn an_admission_written_from_its_decision_encodes_as_its_response() {
        for (i, decision) in decisions().into_iter().enumerate() {
            let mut direct = BytesMut::from(&b"queued"[..]);
            encode(&mut direct, 7, &decision).unwrap();
            let mut response = BytesMut::from(&b"queued"[..]);
            crate::protocol::encode_reply_into(
                &mut response,
                7,
                &Response::Admit(into_reply(decision)),
            )
            .unwrap();
            assert_eq!(direct, response, "decision {i}");
        }
    }
}
