//! From the raw file to a [`Config`] the daemon can trust: every value checked and
//! turned into the daemon's types, and every error naming its key
//! (`rate_limits[1].burst`) and saying what is wrong and what to write instead.
//!
//! One file per part of the file: `daemon.rs` (the daemon, who may connect, agent
//! names), `guards.rs` (breakers, rate limits, quotas), `budget.rs` (budgets and
//! prices); the top level, `[http]`, `[alerts]` and the shared helpers are here.

mod budget;
mod concurrency;
mod content;
mod daemon;
mod guards;

use std::num::NonZeroU32;
use std::time::Duration;

use super::alerts::{AlertsConfig, CaBundle, WebhookUrl};
use super::raw::{RawAlerts, RawConfig, Spelled};
use super::{Config, ConfigError, HttpConfig};
use crate::guard::breaker::BreakerConfig;
use crate::guard::retry::RetryConfig;
use crate::money::Usd;
use crate::names::check_name;

/// Checks `raw` whole; the first bad key is the error.
pub(super) fn config(raw: RawConfig) -> Result<Config, ConfigError> {
    let daemon = daemon::daemon(raw.daemon)?;
    let breaker = guards::breaker(raw.breaker, "breaker", BreakerConfig::default())?;
    let retry = guards::retry(raw.retry, "retry", RetryConfig::default())?;
    let services = guards::services(raw.services, &breaker, &retry)?;
    let routes = guards::routes(raw.routes, &services, &daemon)?;
    let rate_limits = guards::rate_limits(raw.rate_limits, &services, &daemon)?;
    let budget = budget::budget(raw.budget)?;
    let prices = budget::prices(raw.prices)?;
    let quotas = guards::quotas(raw.quotas)?;
    let http = HttpConfig {
        listen: http_address("http.listen", &raw.http.listen, raw.http.allow_remote)?,
        allow_remote: raw.http.allow_remote,
    };
    let alerts = alerts(raw.alerts)?;
    let access = daemon::access(raw.access)?;
    let agents = daemon::agents(raw.agents)?;
    let content = content::content(raw.content)?;
    let bulkheads = concurrency::bulkheads(raw.bulkheads, &services, &daemon)?;
    let concurrency = concurrency::concurrency(raw.concurrency)?;
    let leases = concurrency::leases(raw.leases)?;
    Ok(Config {
        daemon,
        breaker,
        retry,
        services,
        routes,
        rate_limits,
        access,
        agents,
        budget,
        prices,
        quotas,
        http,
        alerts,
        content,
        bulkheads,
        concurrency,
        leases,
    })
}

/// Parses an HTTP listen address ("off" disables it). Only loopback unless
/// `allow_remote`: the metrics and health of every agent are not for the network.
///
/// # Errors
/// An unparsable or (without `allow_remote`) non-loopback address.
pub fn http_address(
    key: &str,
    text: &str,
    allow_remote: bool,
) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    if text == "off" {
        return Ok(None);
    }
    let addr: std::net::SocketAddr = text.parse().map_err(|e| {
        invalid(
            key,
            format!("{text:?} is not an address like \"127.0.0.1:8765\" or \"off\": {e}"),
        )
    })?;
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(invalid(
            key,
            format!("{addr} is not a loopback address; set http.allow_remote = true to serve metrics and health beyond this host"),
        ));
    }
    Ok(Some(addr))
}

/// Parses an alert webhook URL, `http://` or `https://`.
///
/// # Errors
/// An unparsable URL, naming `key`.
pub fn webhook_url(key: &str, text: &str) -> Result<WebhookUrl, ConfigError> {
    WebhookUrl::parse(text).map_err(|problem| invalid(key, problem))
}

fn alerts(raw: RawAlerts) -> Result<AlertsConfig, ConfigError> {
    let webhook = raw
        .webhook
        .map(|url| webhook_url("alerts.webhook", &url))
        .transpose()?;
    let ca = raw
        .ca_file
        .map(|path| CaBundle::load(&path).map_err(|problem| invalid("alerts.ca_file", problem)))
        .transpose()?;
    if raw.queue == 0 {
        return Err(invalid("alerts.queue", "must be at least 1, got 0"));
    }
    Ok(AlertsConfig {
        webhook,
        ca,
        suppress: duration("alerts.suppress", &raw.suppress)?,
        queue: raw.queue,
    })
}

// === helpers shared by the sections ===

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

fn duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text).map_err(|e| {
        invalid(
            key,
            format!("{e} in {text:?}; write e.g. \"500ms\", \"60s\" or \"5m\""),
        )
    })
}

/// A duration that must not be zero (a timeout, a period).
fn positive(key: &str, text: &str) -> Result<Duration, ConfigError> {
    let value = duration(key, text)?;
    if value.is_zero() {
        return Err(invalid(key, "must be longer than zero"));
    }
    Ok(value)
}

fn nonzero(key: &str, value: u32) -> Result<NonZeroU32, ConfigError> {
    NonZeroU32::new(value).ok_or_else(|| invalid(key, "must be at least 1, got 0"))
}

fn name(key: &str, value: &str) -> Result<(), ConfigError> {
    check_name(value).map_err(|e| invalid(key, format!("name {value:?} {e}")))
}

/// Each entry of a list of names, keyed `key[idx]`.
fn names(key: &str, values: &[String]) -> Result<(), ConfigError> {
    for (idx, value) in values.iter().enumerate() {
        name(&format!("{key}[{idx}]"), value)?;
    }
    Ok(())
}

fn dollars(key: &str, value: f64) -> Result<Usd, ConfigError> {
    Usd::from_dollars(value).map_err(|e| invalid(key, format!("{e}")))
}

/// The enum value at `key`, or an error listing its spellings; `noun` says what
/// the value is ("scope").
fn choice<T>(key: &str, noun: &str, value: Spelled<T>) -> Result<T, ConfigError> {
    match value {
        Spelled::Known(value) => Ok(value),
        Spelled::Unknown { text, expected } => Err(invalid(
            key,
            format!("unknown {noun} {text:?}; use {}", listed(expected, None)),
        )),
    }
}

/// `"a", "b" or "c"`; `last` (e.g. `a duration like "6h"`) comes after the
/// spellings when given.
fn listed(spellings: &[&str], last: Option<&str>) -> String {
    let mut items: Vec<String> = spellings.iter().map(|s| format!("{s:?}")).collect();
    items.extend(last.map(str::to_owned));
    match items.split_last() {
        Some((only, [])) => only.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Refuses `name` at `key` if an earlier entry of the same list has it.
/// Refuses `name` if an earlier rule took it; remembers it otherwise. A set, not
/// a walk of the earlier rules: that made checking 100,000 rules take 29 s.
fn unique(
    key: &str,
    what: &str,
    name: &str,
    earlier: &mut std::collections::HashSet<String>,
) -> Result<(), ConfigError> {
    if !earlier.insert(name.to_owned()) {
        return Err(invalid(
            format!("{key}.name"),
            format!("{name:?} is used by an earlier {what}; names must be unique"),
        ));
    }
    Ok(())
}
