//! `[[bulkheads]]`, `[concurrency]` and `[leases]`: calls in flight and named
//! leases (SPEC §3.6), checked so that every limit can act and every name is
//! unique.

use std::collections::BTreeMap;

use super::super::raw::{RawBulkhead, RawConcurrency, RawLeases};
use super::super::{ConcurrencyConfig, ConfigError, DaemonConfig, ServiceConfig};
use super::{duration, guards, invalid, name, names, positive, unique};
use crate::guard::concurrency::{BulkheadSpec, AGENTS_RULE};
use crate::guard::lease::LeaseLimits;
use crate::guard::rate::Scope;

/// `[[bulkheads]]` in file order.
pub(super) fn bulkheads(
    raw: Vec<RawBulkhead>,
    services: &BTreeMap<String, ServiceConfig>,
    daemon: &DaemonConfig,
) -> Result<Vec<BulkheadSpec>, ConfigError> {
    let mut specs: Vec<BulkheadSpec> = Vec::with_capacity(raw.len());
    let mut seen = std::collections::HashSet::new();
    for (idx, raw) in raw.into_iter().enumerate() {
        let prefix = format!("bulkheads[{idx}]");
        let key = |field: &str| format!("{prefix}.{field}");
        name(&key("name"), &raw.name)?;
        if raw.name == AGENTS_RULE {
            return Err(invalid(
                key("name"),
                format!("{AGENTS_RULE:?} names the cap on active agents (concurrency.max_active_agents); choose another name"),
            ));
        }
        unique(&prefix, "bulkhead", &raw.name, &mut seen)?;
        names(&key("services"), &raw.services)?;
        names(&key("agents"), &raw.agents)?;
        if let Some(service) = raw.services.iter().find(|service| {
            !daemon.allow_unknown_services && !services.contains_key(service.as_str())
        }) {
            return Err(invalid(
                key("services"),
                format!("service {service:?} is not declared under [services] and daemon.allow_unknown_services is false"),
            ));
        }
        let scope = match raw.scope {
            Some(text) => guards::scope(&key("scope"), text)?,
            None => Scope::Service,
        };
        specs.push(BulkheadSpec {
            name: raw.name,
            scope,
            services: raw.services,
            agents: raw.agents,
            max_in_flight: raw.max_in_flight,
            shadow: raw.shadow,
        });
    }
    Ok(specs)
}

pub(super) fn concurrency(raw: RawConcurrency) -> Result<ConcurrencyConfig, ConfigError> {
    Ok(ConcurrencyConfig {
        max_active_agents: (raw.max_active_agents > 0).then_some(raw.max_active_agents),
        max_wait: duration("concurrency.max_wait", &raw.max_wait)?,
    })
}

pub(super) fn leases(raw: RawLeases) -> Result<LeaseLimits, ConfigError> {
    let default_ttl = positive("leases.default_ttl", &raw.default_ttl)?;
    let max_ttl = positive("leases.max_ttl", &raw.max_ttl)?;
    if default_ttl > max_ttl {
        return Err(invalid(
            "leases.default_ttl",
            format!("{default_ttl:?} is longer than leases.max_ttl ({max_ttl:?}); lower it or raise max_ttl"),
        ));
    }
    if raw.max_per_connection == 0 {
        return Err(invalid(
            "leases.max_per_connection",
            "must be at least 1, got 0",
        ));
    }
    if raw.max_total < raw.max_per_connection {
        return Err(invalid(
            "leases.max_total",
            format!(
                "is {} but leases.max_per_connection is {}; the total must allow one connection's worth",
                raw.max_total, raw.max_per_connection
            ),
        ));
    }
    Ok(LeaseLimits {
        default_ttl,
        max_ttl,
        max_per_connection: raw.max_per_connection,
        max_total: raw.max_total,
    })
}
