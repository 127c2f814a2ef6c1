//! `[breaker]`, `[services]`, `[[rate_limits]]` and `[[quotas]]`: the settings of
//! the guards, checked so that every rule can act (a breaker that can open, a rate
//! that fits in a nanosecond, names that are unique).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::super::raw::{
    RawBreaker, RawForce, RawQuota, RawRateLimit, RawRetry, RawRoute, RawScope, RawService,
    RawWeight, RawWindow, Spelled,
};
use super::super::{
    ConfigError, DaemonConfig, Preset, Route, ServiceConfig, MAX_QUOTAS, MAX_RATE_LIMITS, PRESETS,
};
use super::{choice, duration, invalid, name, names, nonzero, positive, unique};
use crate::guard::breaker::{BreakerConfig, Force};
use crate::guard::period::Period;
use crate::guard::quota::QuotaSpec;
use crate::guard::rate::{RateSpec, Scope, Weight};
use crate::guard::retry::RetryConfig;

/// Applies the keys of `raw` that are set onto `base`, validating each.
pub(super) fn breaker(
    raw: RawBreaker,
    prefix: &str,
    base: BreakerConfig,
) -> Result<BreakerConfig, ConfigError> {
    let key = |field: &str| format!("{prefix}.{field}");
    let mut out = base;
    if let Some(v) = raw.failure_threshold {
        out.failure_threshold = v;
    }
    if let Some(v) = raw.window {
        out.window = v;
    }
    if let Some(v) = raw.failure_rate {
        if !(1..=100).contains(&v) {
            return Err(invalid(
                key("failure_rate"),
                format!("must be a percentage from 1 to 100, got {v}"),
            ));
        }
        out.failure_rate = v;
    }
    if let Some(v) = raw.min_calls {
        out.min_calls = v;
    }
    if let Some(v) = raw.slow_call {
        out.slow_call = Some(duration(&key("slow_call"), &v)?);
    }
    if let Some(v) = raw.open_for {
        out.open_for = duration(&key("open_for"), &v)?;
    }
    if let Some(v) = raw.half_open_trials {
        out.half_open_trials = nonzero(&key("half_open_trials"), v)?.get();
    }
    if let Some(v) = raw.success_threshold {
        out.success_threshold = nonzero(&key("success_threshold"), v)?.get();
    }
    if let Some(v) = raw.trial_timeout {
        out.trial_timeout = positive(&key("trial_timeout"), &v)?;
    }
    if let Some(v) = raw.force {
        out.force = match choice(&key("force"), "value", v)? {
            RawForce::Auto => Force::Auto,
            RawForce::Open => Force::Open,
            RawForce::Closed => Force::Closed,
            RawForce::Disabled => Force::Disabled,
        };
    }
    if let Some(v) = raw.shadow {
        out.shadow = v;
    }
    if out.window > 0 && out.min_calls > out.window {
        return Err(invalid(
            key("min_calls"),
            format!(
                "is {} but the window holds only {} calls, so the failure rate could never trip; lower min_calls or widen the window",
                out.min_calls, out.window
            ),
        ));
    }
    if out.failure_threshold == 0 && out.window == 0 && out.force == Force::Auto {
        return Err(invalid(
            prefix,
            "failure_threshold and window are both 0, so the breaker could never open; set one, or force = \"disabled\"",
        ));
    }
    Ok(out)
}

/// Applies the keys of `raw` that are set onto `base`, validating each.
pub(super) fn retry(
    raw: RawRetry,
    prefix: &str,
    base: RetryConfig,
) -> Result<RetryConfig, ConfigError> {
    let key = |field: &str| format!("{prefix}.{field}");
    let mut out = base;
    if let Some(v) = raw.attempts {
        out.attempts = nonzero(&key("attempts"), v)?.get();
    }
    if let Some(v) = raw.initial {
        out.initial = positive(&key("initial"), &v)?;
    }
    if let Some(v) = raw.multiplier {
        if !(v.is_finite() && (1.0..=100.0).contains(&v)) {
            return Err(invalid(
                key("multiplier"),
                format!("must be a number from 1 (a constant wait) to 100, got {v}"),
            ));
        }
        out.multiplier = v;
    }
    if let Some(v) = raw.max {
        out.max = positive(&key("max"), &v)?;
    }
    for (field, value) in [
        ("jitter", raw.jitter),
        ("budget_percent", raw.budget_percent),
    ] {
        if let Some(v) = value.filter(|v| *v > 100) {
            return Err(invalid(
                key(field),
                format!("must be a percentage from 0 to 100, got {v}"),
            ));
        }
    }
    if let Some(v) = raw.jitter {
        out.jitter = v;
    }
    if let Some(v) = raw.budget_percent {
        out.budget_percent = v;
    }
    if let Some(v) = raw.budget_window {
        out.budget_window = positive(&key("budget_window"), &v)?;
    }
    if let Some(v) = raw.budget_min_retries {
        out.budget_min_retries = v;
    }
    if out.max < out.initial {
        return Err(invalid(
            key("max"),
            format!(
                "is {:?}, shorter than the first wait (initial = {:?}); raise max or lower initial",
                out.max, out.initial
            ),
        ));
    }
    if out.attempts > 1 && out.budget_percent == 0 && out.budget_min_retries == 0 {
        return Err(invalid(
            key("budget_percent"),
            "and budget_min_retries are both 0, so no retry could ever be made; set attempts = 1 to turn retries off",
        ));
    }
    Ok(out)
}

/// `[services.NAME]`: each service's breaker and retry settings, inheriting
/// `[breaker]` and `[retry]`.
pub(super) fn services(
    raw: BTreeMap<String, RawService>,
    defaults: &BreakerConfig,
    retry_defaults: &RetryConfig,
) -> Result<BTreeMap<String, ServiceConfig>, ConfigError> {
    let mut services = BTreeMap::new();
    for (service, raw) in raw {
        let key = format!("services.{service}");
        name(&key, &service)?;
        let breaker = breaker(raw.breaker, &format!("{key}.breaker"), defaults.clone())?;
        let retry = retry(raw.retry, &format!("{key}.retry"), retry_defaults.clone())?;
        services.insert(service, ServiceConfig { breaker, retry });
    }
    Ok(services)
}

/// `[[routes]]` in file order: unique names, chains that are not empty, name
/// known services, and name each at most once.
pub(super) fn routes(
    raw: Vec<RawRoute>,
    services: &BTreeMap<String, ServiceConfig>,
    daemon: &DaemonConfig,
) -> Result<Vec<Route>, ConfigError> {
    let mut routes: Vec<Route> = Vec::with_capacity(raw.len());
    let mut seen = std::collections::HashSet::new();
    for (idx, raw) in raw.into_iter().enumerate() {
        let key = format!("routes[{idx}]");
        name(&format!("{key}.name"), &raw.name)?;
        unique(&key, "route", &raw.name, &mut seen)?;
        if raw.chain.is_empty() {
            return Err(invalid(
                format!("{key}.chain"),
                "is empty; list the services to try, in order of preference (e.g. chain = [\"primary\", \"fallback\"])",
            ));
        }
        names(&format!("{key}.chain"), &raw.chain)?;
        for (pos, service) in raw.chain.iter().enumerate() {
            let at = format!("{key}.chain[{pos}]");
            if !daemon.allow_unknown_services && !services.contains_key(service) {
                return Err(invalid(
                    at,
                    format!("service {service:?} is not declared under [services] and daemon.allow_unknown_services is false"),
                ));
            }
            if raw.chain[..pos].contains(service) {
                return Err(invalid(
                    at,
                    format!("service {service:?} is already earlier in the chain"),
                ));
            }
        }
        routes.push(Route {
            name: raw.name,
            chain: raw.chain,
        });
    }
    Ok(routes)
}

/// `[[rate_limits]]` in file order; none given at all means the built-in rule.
pub(super) fn rate_limits(
    raw: Option<Vec<RawRateLimit>>,
    services: &BTreeMap<String, ServiceConfig>,
    daemon: &DaemonConfig,
) -> Result<Vec<RateSpec>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(vec![default_rate_limit()]);
    };
    at_most("rate_limits", "rate limits", raw.len(), MAX_RATE_LIMITS)?;
    let mut specs: Vec<RateSpec> = Vec::with_capacity(raw.len());
    let mut seen = HashSet::with_capacity(raw.len());
    for (idx, raw) in raw.into_iter().enumerate() {
        let key = format!("rate_limits[{idx}]");
        let spec = rate_limit(raw, &key)?;
        unique(&key, "rate limit", &spec.name, &mut seen)?;
        if let Some(service) = spec.services.iter().find(|service| {
            !daemon.allow_unknown_services && !services.contains_key(service.as_str())
        }) {
            return Err(invalid(
                format!("{key}.services"),
                format!("service {service:?} is not declared under [services] and daemon.allow_unknown_services is false"),
            ));
        }
        specs.push(spec);
    }
    Ok(specs)
}

fn rate_limit(raw: RawRateLimit, prefix: &str) -> Result<RateSpec, ConfigError> {
    let key = |field: &str| format!("{prefix}.{field}");
    name(&key("name"), &raw.name)?;
    let preset = raw
        .preset
        .as_deref()
        .map(|p| preset(&key("preset"), p))
        .transpose()?;
    let rate = match (raw.rate, preset) {
        (Some(rate), _) => nonzero(&key("rate"), rate)?,
        (None, Some(p)) => nonzero(&key("preset"), p.rate)?,
        (None, None) => {
            return Err(invalid(
                key("rate"),
                "missing; give `rate` (with `per`, default \"1s\") or a `preset`",
            ))
        }
    };
    let per = match (raw.per, preset) {
        (Some(text), _) => positive(&key("per"), &text)?,
        (None, Some(p)) => p.per,
        (None, None) => Duration::from_secs(1),
    };
    if per / rate.get() < Duration::from_nanos(1) {
        return Err(invalid(
            key("rate"),
            format!("{rate} per {per:?} is faster than one per nanosecond"),
        ));
    }
    let burst = match raw.burst {
        Some(burst) => nonzero(&key("burst"), burst)?,
        None => rate,
    };
    let scope = match (raw.scope, preset) {
        (Some(text), _) => scope(&key("scope"), text)?,
        (None, Some(_)) => Scope::Service,
        (None, None) => Scope::AgentService,
    };
    let weight = weight(&key("weight"), raw.weight)?;
    names(&key("services"), &raw.services)?;
    names(&key("agents"), &raw.agents)?;
    Ok(RateSpec {
        name: raw.name,
        scope,
        services: raw.services,
        agents: raw.agents,
        weight,
        rate,
        per,
        burst,
        shadow: raw.shadow,
    })
}

fn preset(key: &str, text: &str) -> Result<Preset, ConfigError> {
    PRESETS
        .iter()
        .copied()
        .find(|p| p.name == text)
        .ok_or_else(|| {
            let known: Vec<_> = PRESETS.iter().map(|p| p.name).collect();
            invalid(
                key,
                format!(
                    "unknown preset {text:?}; known presets: {}",
                    known.join(", ")
                ),
            )
        })
}

/// Refuses more than `max` rules in one list, before checking any of them.
fn at_most(key: &str, what: &str, n: usize, max: usize) -> Result<(), ConfigError> {
    if n > max {
        return Err(invalid(
            key,
            format!("{n} {what}, more than the {max} a configuration may hold (each is checked on every admission it applies to, and held in memory); merge rules with a `services` or `agents` list, or use a wider scope"),
        ));
    }
    Ok(())
}

/// SPEC §3.1: 10 requests per second with a burst of 100, per agent and service.
pub(super) fn default_rate_limit() -> RateSpec {
    RateSpec {
        name: "default".into(),
        scope: Scope::AgentService,
        services: Vec::new(),
        agents: Vec::new(),
        weight: Weight::Requests,
        rate: std::num::NonZeroU32::new(10).expect("10 is not zero"),
        per: Duration::from_secs(1),
        burst: std::num::NonZeroU32::new(100).expect("100 is not zero"),
        shadow: false,
    }
}

/// `[[quotas]]` in file order.
pub(super) fn quotas(raw: Vec<RawQuota>) -> Result<Vec<QuotaSpec>, ConfigError> {
    at_most("quotas", "quotas", raw.len(), MAX_QUOTAS)?;
    let mut quotas: Vec<QuotaSpec> = Vec::with_capacity(raw.len());
    let mut seen = HashSet::with_capacity(raw.len());
    for (idx, raw) in raw.into_iter().enumerate() {
        let key = format!("quotas[{idx}]");
        let spec = quota(raw, &key)?;
        unique(&key, "quota", &spec.name, &mut seen)?;
        quotas.push(spec);
    }
    Ok(quotas)
}

fn quota(raw: RawQuota, prefix: &str) -> Result<QuotaSpec, ConfigError> {
    let key = |field: &str| format!("{prefix}.{field}");
    name(&key("name"), &raw.name)?;
    names(&key("services"), &raw.services)?;
    names(&key("agents"), &raw.agents)?;
    Ok(QuotaSpec {
        name: raw.name,
        scope: match raw.scope {
            Some(text) => scope(&key("scope"), text)?,
            None => Scope::AgentService,
        },
        services: raw.services,
        agents: raw.agents,
        weight: weight(&key("weight"), raw.weight)?,
        limit: raw.limit,
        window: match choice(&key("window"), "window", raw.window)? {
            RawWindow::Minute => Period::Every(Duration::from_secs(60)),
            RawWindow::Hour => Period::Every(Duration::from_secs(3600)),
            RawWindow::Day => Period::Daily,
            RawWindow::Week => Period::Weekly,
            RawWindow::Month => Period::Monthly,
            RawWindow::Lifetime => Period::Forever,
        },
        shadow: raw.shadow,
    })
}

pub(super) fn scope(key: &str, value: Spelled<RawScope>) -> Result<Scope, ConfigError> {
    Ok(match choice(key, "scope", value)? {
        RawScope::Global => Scope::Global,
        RawScope::Agent => Scope::Agent,
        RawScope::Service => Scope::Service,
        RawScope::AgentService => Scope::AgentService,
    })
}

/// A rule's weight; requests when not given.
fn weight(key: &str, value: Option<Spelled<RawWeight>>) -> Result<Weight, ConfigError> {
    Ok(match value.map(|v| choice(key, "weight", v)).transpose()? {
        None | Some(RawWeight::Requests) => Weight::Requests,
        Some(RawWeight::Units) => Weight::Units,
    })
}
