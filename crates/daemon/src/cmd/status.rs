//! `Status`: the daemon's health document (the body `/health` serves), built from
//! one copy of the engine's gauges (`Admission::gauges`: no walk of per-key
//! state under the engine lock).

use crate::admission::Moment;
use crate::config::Mode;
use crate::guard::breaker::Phase;
use crate::protocol::{BreakerCounts, Health, InFlight, StatusReport};
use crate::state::State;

pub(super) fn report(state: &State, now: Moment) -> StatusReport {
    let mut counts = BreakerCounts {
        closed: 0,
        open: 0,
        half_open: 0,
    };
    let mut reasons = Vec::new();
    let mut gauges = state.admission().gauges(now);
    gauges.breakers.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (service, phase) in &gauges.breakers {
        match phase {
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
    let store = state.store().health();
    let status = match (&store, reasons.is_empty()) {
        (Some(_), _) => Health::Unhealthy,
        (None, true) => Health::Healthy,
        (None, false) => Health::Degraded,
    };
    if let Some(failure) = &store {
        reasons.insert(0, format!("ledger store failing: {failure}"));
    }
    let global = gauges.budgets.iter().find(|b| b.name == "global");
    StatusReport {
        status,
        reasons,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_s: state.uptime().as_secs(),
        mode: match state.config().daemon.mode {
            Mode::Enforce => "enforce".into(),
            Mode::Shadow => "shadow".into(),
        },
        connections,
        active_agents,
        open_reservations: gauges.open_reservations,
        circuit_breakers: counts,
        store: store.map_or_else(|| "ok".to_owned(), |failure| format!("failing: {failure}")),
        budget_spent: global.map_or(0.0, |b| b.spent.dollars()),
        budget_limit: global.map_or(0.0, |b| b.limit.dollars()),
        leases_held: gauges.leases_held,
        in_flight: in_flight(state),
    }
}

/// Bulkhead keys with calls in flight or waiting, sorted by bulkhead and key
/// (outside the engine lock).
fn in_flight(state: &State) -> Vec<InFlight> {
    let mut keys: Vec<InFlight> = state
        .admission()
        .in_flight()
        .into_iter()
        .map(|k| InFlight {
            bulkhead: k.bulkhead,
            key: k.key,
            in_flight: k.in_flight,
            limit: k.limit,
            waiting: k.waiting,
        })
        .collect();
    keys.sort_unstable_by(|a, b| (&a.bulkhead, &a.key).cmp(&(&b.bulkhead, &b.key)));
    keys
}
