//! `Status`: the daemon's health document (the body `/health` will serve).

use std::time::Duration;

use crate::config::Mode;
use crate::guard::breaker::Phase;
use crate::protocol::{BreakerCounts, Health, StatusReport};
use crate::state::State;

pub(super) fn report(state: &State, now: Duration) -> StatusReport {
    let mut counts = BreakerCounts {
        closed: 0,
        open: 0,
        half_open: 0,
    };
    let mut reasons = Vec::new();
    for (service, snapshot) in state.admission().breakers(None, now) {
        match snapshot.phase {
            Phase::Closed | Phase::ForcedClosed | Phase::Disabled => counts.closed += 1,
            Phase::Open | Phase::ForcedOpen => {
                counts.open += 1;
                reasons.push(format!("breaker of {service:?} is open"));
            }
            Phase::HalfOpen => {
                counts.half_open += 1;
                reasons.push(format!("breaker of {service:?} is half-open"));
            }
        }
    }
    let (connections, active_agents) = state.session_counts();
    StatusReport {
        status: if reasons.is_empty() {
            Health::Healthy
        } else {
            Health::Degraded
        },
        reasons,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_s: state.uptime().as_secs(),
        mode: match state.config().daemon.mode {
            Mode::Enforce => "enforce".into(),
            Mode::Shadow => "shadow".into(),
        },
        connections,
        active_agents,
        open_reservations: state.admission().open_reservations(),
        circuit_breakers: counts,
    }
}
