//! The scrape-time refresh of the state gauges: `/metrics` sets them from one copy
//! of the engine's gauges (`Admission::gauges`, O(services + budgets + quotas)
//! under the engine lock), the session counts (two lengths), the limit counters
//! (atomics) and the ledger's health, so they cost nothing between scrapes and a
//! scrape never walks per-key state under the decision lock.
//!
//! It lives here, above `state`, so that `metrics` stays a low layer of names,
//! descriptions and hot handles that anything may import.

use metrics::gauge;

use crate::guard::breaker::Phase;
use crate::metrics::{
    ACTIVE_AGENTS, BREAKER_STATE, BUDGET_LIMIT, BUDGET_RESERVED, BUDGET_SPENT, BULKHEAD_IN_FLIGHT,
    BULKHEAD_WAITING, CONNECTIONS, ENGINE_LOCK_WAITED, ENGINE_LOCK_WAITS, LEASES_HELD, LIMIT_HITS,
    OPEN_RESERVATIONS, QUOTA_USAGE, STORE_UP,
};
use crate::state::{Limit, State};

/// Sets the state gauges from `state`; called when `/metrics` is scraped.
pub fn refresh(state: &State) {
    let gauges = state.admission().gauges(state.moment());
    for (service, phase) in gauges.breakers {
        for (each, name) in PHASES {
            let value = if phase == each { 1.0 } else { 0.0 };
            gauge!(BREAKER_STATE, "service" => service.clone(), "state" => name).set(value);
        }
    }
    for budget in gauges.budgets {
        gauge!(BUDGET_SPENT, "budget" => budget.name.clone()).set(budget.spent.dollars());
        gauge!(BUDGET_RESERVED, "budget" => budget.name.clone()).set(budget.reserved.dollars());
        gauge!(BUDGET_LIMIT, "budget" => budget.name).set(budget.limit.dollars());
    }
    for (quota, ratio) in gauges.quotas {
        gauge!(QUOTA_USAGE, "quota" => quota).set(ratio);
    }
    let (connections, agents) = state.session_counts();
    gauge!(CONNECTIONS).set(f64::from(connections));
    gauge!(ACTIVE_AGENTS).set(f64::from(agents));
    gauge!(OPEN_RESERVATIONS).set(gauges.open_reservations as f64);
    for bulkhead in gauges.bulkheads {
        gauge!(BULKHEAD_IN_FLIGHT, "bulkhead" => bulkhead.bulkhead.clone())
            .set(bulkhead.in_flight as f64);
        gauge!(BULKHEAD_WAITING, "bulkhead" => bulkhead.bulkhead).set(bulkhead.waiting as f64);
    }
    gauge!(LEASES_HELD).set(f64::from(gauges.leases_held));
    for limit in Limit::ALL {
        metrics::counter!(LIMIT_HITS, "limit" => limit.name())
            .absolute(state.counters().get(limit));
    }
    let (waits, waited) = state.admission().lock_waits();
    metrics::counter!(ENGINE_LOCK_WAITS).absolute(waits);
    gauge!(ENGINE_LOCK_WAITED).set(waited.as_secs_f64());
    gauge!(STORE_UP).set(if state.store().health().is_none() {
        1.0
    } else {
        0.0
    });
}

/// Breaker states as the numbers `automation_framework_breaker_state` reports.
pub const PHASES: [(Phase, &str); 6] = [
    (Phase::Closed, "closed"),
    (Phase::Open, "open"),
    (Phase::HalfOpen, "half_open"),
    (Phase::ForcedOpen, "forced_open"),
    (Phase::ForcedClosed, "forced_closed"),
    (Phase::Disabled, "disabled"),
];
