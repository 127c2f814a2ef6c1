//! `Breakers`: the state of one service's breaker, or of all of them.

use std::time::Duration;

use super::error;
use crate::guard::breaker::BreakerSnapshot;
use crate::names::{check_name, shown};
use crate::protocol::{BreakerInfo, BreakersReply, BreakersRequest, ErrorCode, Response};
use crate::state::State;

pub(super) fn apply(state: &State, req: BreakersRequest, now: Duration) -> Response {
    if let Some(service) = &req.service {
        if let Err(err) = check_name(service) {
            return error(
                ErrorCode::InvalidArgument,
                format!("service name {} {err}", shown(service)),
            );
        }
    }
    let breakers = state
        .admission()
        .breakers(req.service.as_deref(), now)
        .into_iter()
        .map(|(service, snapshot)| breaker_info(service, snapshot))
        .collect();
    Response::Breakers(BreakersReply { breakers })
}

/// A breaker snapshot in wire form.
pub(super) fn breaker_info(service: String, s: BreakerSnapshot) -> BreakerInfo {
    BreakerInfo {
        service,
        state: s.phase.into(),
        failures: s.consecutive_failures,
        window_failures: s.window_failures,
        window_calls: s.window_calls,
        trials_in_flight: s.trials_in_flight,
        trial_successes: s.trial_successes,
        open_remaining_ms: s
            .open_remaining
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        times_opened: s.times_opened,
    }
}
