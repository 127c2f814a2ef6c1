//! Guards: pure decision logic. Each takes `now` from its caller, holds its own
//! state, and answers with a permit or a typed denial that carries the number that
//! caused it. No guard does I/O, logs, sleeps or reads the clock itself; the
//! admission layer runs them together and turns their answers into votes.

pub mod breaker;
pub mod budget;
pub mod period;
pub mod quota;
pub mod rate;

pub use breaker::{Breaker, BreakerConfig, BreakerDenial, Force, Pass, Transition, Trip};
pub use rate::{Cells, RateDenial, RateRule, Scope, Weight};

/// The counter key a call by `agent` to `service` falls under for a keyed guard.
/// NUL cannot appear in validated names, so the pair is unambiguous.
pub fn scope_key(scope: rate::Scope, agent: &str, service: &str) -> String {
    match scope {
        Scope::Global => String::new(),
        Scope::Agent => agent.to_owned(),
        Scope::Service => service.to_owned(),
        Scope::AgentService => {
            // Not format!: this runs on every admission.
            let mut key = String::with_capacity(agent.len() + 1 + service.len());
            key.push_str(agent);
            key.push('\0');
            key.push_str(service);
            key
        }
    }
}

/// A rule's filter: an empty list matches every name.
pub fn filter_matches(list: &[String], name: &str) -> bool {
    list.is_empty() || list.iter().any(|n| n == name)
}

/// How a counter key reads in replies and logs (`agent/service` for pairs).
pub fn display_key(key: &str) -> String {
    key.replace('\0', "/")
}
