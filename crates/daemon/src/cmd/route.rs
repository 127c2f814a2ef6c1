//! `Route`: which service of a chain to call now. Each service in turn is run
//! through the admission pipeline and everything it took is put back at once,
//! under the same lock, so the answer is exactly what `Admit` would decide at
//! this instant (breaker, retry budget, rate limits, quotas, budgets, and any
//! guard added to the pipeline later, such as bulkheads) and nothing is taken.

use super::text::{millis_up, reason_text};
use super::{invalid, log_transition};
use crate::admission::{Caller, Plan};
use crate::names::{check_name, shown};
use crate::protocol::{ErrorReply, Response, RouteReply, RouteRequest, RouteSkip};
use crate::state::{Session, State};

/// The most services a chain given in the request may name: each is a full
/// pipeline run under the engine lock.
const MAX_CHAIN: usize = 32;

pub(super) fn apply(
    state: &State,
    session: &Session,
    req: RouteRequest,
    now: crate::admission::Moment,
) -> Response {
    match route(state, session, &req, now) {
        Ok(reply) => Response::Route(reply),
        Err(err) => Response::Error(err),
    }
}

fn route(
    state: &State,
    session: &Session,
    req: &RouteRequest,
    now: crate::admission::Moment,
) -> Result<RouteReply, ErrorReply> {
    let chain = match (&req.route, req.chain.is_empty()) {
        (Some(name), true) => {
            check_name(name).map_err(|e| invalid(format!("route name {} {e}", shown(name))))?;
            None
        }
        (None, false) => {
            if req.chain.len() > MAX_CHAIN {
                return Err(invalid(format!(
                    "a chain may name at most {MAX_CHAIN} services, got {}",
                    req.chain.len()
                )));
            }
            for service in &req.chain {
                check_name(service)
                    .map_err(|e| invalid(format!("service name {} {e}", shown(service))))?;
            }
            Some(req.chain.as_slice())
        }
        (Some(_), false) => {
            return Err(invalid(
                "give either route (a [[routes]] name) or chain (services in order), not both",
            ))
        }
        (None, true) => {
            return Err(invalid(
                "missing route: give route (a [[routes]] name) or chain (services in order of preference)",
            ))
        }
    };
    let (agent, units, cost) = super::call_fields(
        state,
        session,
        req.agent.as_deref(),
        req.model.as_deref(),
        req.units,
        req.cost,
    )?;
    let plan = Plan {
        service: "",
        units,
        input_units: 0,
        output_units: 0,
        cost,
        model: req.model.as_deref(),
        content: None,
        attempt: 1,
        route: req.route.as_deref(),
        lease: None,
        wait: None,
    };
    let caller = Caller {
        session: session.id,
        agent: &agent,
        pid: u32::try_from(session.peer.pid).unwrap_or(0),
        uid: session.peer.uid,
    };
    let routed = state
        .admission()
        .route(caller, plan, chain, now)
        .map_err(ErrorReply::from)?;
    for (service, from, to) in &routed.transitions {
        log_transition(state, service, *from, *to);
    }
    count_choice(
        req.route.as_deref().unwrap_or(""),
        routed.service.as_deref(),
    );
    let skipped: Vec<RouteSkip> = routed
        .skipped
        .iter()
        .map(|(service, vote)| RouteSkip {
            service: service.clone(),
            guard: vote.guard,
            reason: reason_text(&vote.reason).into_string(),
            retry_after_ms: vote.retry_after.map(millis_up),
        })
        .collect();
    let retry_after_ms = if routed.service.is_none() {
        skipped.iter().filter_map(|s| s.retry_after_ms).min()
    } else {
        None
    };
    Ok(RouteReply {
        service: routed.service,
        skipped,
        retry_after_ms,
    })
}

/// Counts a route's choice (`None`: every service was skipped). `route` is
/// the configured route's name, empty for a chain given in the request.
pub(super) fn count_choice(route: &str, service: Option<&str>) {
    metrics::counter!(
        crate::metrics::ROUTE_CHOICES,
        "route" => route.to_owned(),
        "service" => service.unwrap_or("none").to_owned()
    )
    .increment(1);
}
