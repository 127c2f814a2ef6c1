//! The TOML file as serde sees it. Unknown keys are errors (a typo must not silently
//! leave a default in force); values are checked in [`RawConfig::validate`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{
    dollars, duration, force, invalid, name, nonzero, preset, reset, scope, unit_price, weight,
    window, AccessConfig, AgentBinding, BudgetConfig, Config, ConfigError, DaemonConfig,
    HttpConfig, Mode, NamedGroup, OrphanPolicy, Price, ServiceConfig,
};
use crate::alerts::{AlertsConfig, WebhookUrl};
use crate::guard::breaker::BreakerConfig;
use crate::guard::budget::BudgetSpec;
use crate::guard::quota::QuotaSpec;
use crate::guard::rate::{RateSpec, Scope};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    daemon: RawDaemon,
    breaker: RawBreaker,
    services: BTreeMap<String, RawService>,
    /// `None` (no `[[rate_limits]]` at all) means the built-in default rule; an
    /// explicit empty list (`rate_limits = []`) means no rate limits.
    rate_limits: Option<Vec<RawRateLimit>>,
    access: RawAccess,
    agents: Vec<RawAgent>,
    budget: RawBudget,
    prices: BTreeMap<String, RawPrice>,
    quotas: Vec<RawQuota>,
    http: RawHttp,
    alerts: RawAlerts,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAlerts {
    webhook: Option<String>,
    suppress: String,
    queue: usize,
}

impl Default for RawAlerts {
    fn default() -> Self {
        RawAlerts {
            webhook: None,
            suppress: "5m".into(),
            queue: 256,
        }
    }
}

impl RawAlerts {
    fn validate(self) -> Result<AlertsConfig, ConfigError> {
        let webhook = self
            .webhook
            .map(|url| webhook_url("alerts.webhook", &url))
            .transpose()?;
        if self.queue == 0 {
            return Err(invalid("alerts.queue", "must be at least 1, got 0"));
        }
        Ok(AlertsConfig {
            webhook,
            suppress: duration("alerts.suppress", &self.suppress)?,
            queue: self.queue,
        })
    }
}

/// Parses an alert webhook URL: plain `http://` only (see `alerts.rs` on TLS).
/// # Errors
/// An unparsable or `https://` URL, naming `key`.
pub fn webhook_url(key: &str, text: &str) -> Result<WebhookUrl, ConfigError> {
    WebhookUrl::parse(text).map_err(|problem| invalid(key, problem))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHttp {
    listen: String,
    allow_remote: bool,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            listen: "127.0.0.1:8765".into(),
            allow_remote: false,
        }
    }
}

/// Parses an HTTP listen address ("off" disables it). Only loopback unless
/// `allow_remote`: the metrics and health of every agent are not for the network.
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBudget {
    enabled: bool,
    limit: f64,
    reset: String,
    thresholds: Vec<u8>,
    orphan_timeout: String,
    orphan_policy: String,
    agents: BTreeMap<String, RawSubBudget>,
    services: BTreeMap<String, RawSubBudget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubBudget {
    limit: f64,
    #[serde(default = "never")]
    reset: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPrice {
    per_request: Option<f64>,
    per_unit: Option<f64>,
    per_input_unit: Option<f64>,
    per_output_unit: Option<f64>,
    per_million_units: Option<f64>,
    per_million_input_units: Option<f64>,
    per_million_output_units: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuota {
    name: String,
    limit: u64,
    window: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    weight: Option<String>,
    #[serde(default)]
    services: Vec<String>,
    #[serde(default)]
    agents: Vec<String>,
    #[serde(default)]
    shadow: bool,
}

fn never() -> String {
    "never".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDaemon {
    socket: Option<PathBuf>,
    socket_group: Option<String>,
    socket_mode: String,
    max_connections: usize,
    max_connections_per_uid: usize,
    max_batch: usize,
    handshake_timeout: String,
    idle_timeout: String,
    drain_timeout: String,
    mode: String,
    allow_unknown_services: bool,
    max_services: usize,
    max_reservations_per_connection: usize,
    state_dir: Option<PathBuf>,
    purge_interval: String,
}

/// Breaker keys; every one optional so a service can override just one of them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBreaker {
    failure_threshold: Option<u32>,
    window: Option<u32>,
    failure_rate: Option<u8>,
    min_calls: Option<u32>,
    slow_call: Option<String>,
    open_for: Option<String>,
    half_open_trials: Option<u32>,
    success_threshold: Option<u32>,
    trial_timeout: Option<String>,
    force: Option<String>,
    shadow: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawService {
    breaker: RawBreaker,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    name: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    rate: Option<u32>,
    #[serde(default)]
    per: Option<String>,
    #[serde(default)]
    burst: Option<u32>,
    #[serde(default)]
    weight: Option<String>,
    #[serde(default)]
    services: Vec<String>,
    #[serde(default)]
    agents: Vec<String>,
    #[serde(default)]
    preset: Option<String>,
    #[serde(default)]
    shadow: bool,
}

/// `[access]`: who may connect and who is an admin. Groups are names, resolved when
/// the file is loaded.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAccess {
    agent_uids: Vec<u32>,
    agent_groups: Vec<String>,
    agent_gids: Vec<u32>,
    admin_uids: Vec<u32>,
    admin_groups: Vec<String>,
    admin_gids: Vec<u32>,
}

/// One `[[agents]]` entry: an agent name reserved for some users.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    name: String,
    #[serde(default)]
    uids: Vec<u32>,
    #[serde(default)]
    gids: Vec<u32>,
}

// === impl RawConfig ===

impl RawConfig {
    pub(super) fn validate(self) -> Result<Config, ConfigError> {
        let daemon = self.daemon.validate()?;
        let breaker = self.breaker.apply("breaker", BreakerConfig::default())?;
        let mut services = BTreeMap::new();
        for (service, raw) in self.services {
            let key = format!("services.{service}");
            name(&key, &service)?;
            let breaker = raw
                .breaker
                .apply(&format!("{key}.breaker"), breaker.clone())?;
            services.insert(service, ServiceConfig { breaker });
        }
        let rate_limits = match self.rate_limits {
            None => vec![default_rate_limit()],
            Some(list) => {
                let mut specs: Vec<RateSpec> = Vec::with_capacity(list.len());
                for (idx, raw) in list.into_iter().enumerate() {
                    let key = format!("rate_limits[{idx}]");
                    let spec = raw.validate(&key)?;
                    unique(
                        &key,
                        "rate limit",
                        &spec.name,
                        specs.iter().map(|s| &s.name),
                    )?;
                    for service in &spec.services {
                        if !daemon.allow_unknown_services && !services.contains_key(service) {
                            return Err(invalid(
                                format!("{key}.services"),
                                format!("service {service:?} is not declared under [services] and daemon.allow_unknown_services is false"),
                            ));
                        }
                    }
                    specs.push(spec);
                }
                specs
            }
        };
        let budget = self.budget.validate()?;
        let mut prices = BTreeMap::new();
        for (target, raw) in self.prices {
            let key = format!("prices.\"{target}\"");
            let (service, model) = target.split_once('/').unwrap_or((&target, ""));
            name(&key, service)?;
            if target.contains('/') {
                name(&key, model)?;
            }
            prices.insert(target, raw.validate(&key)?);
        }
        let mut quotas: Vec<QuotaSpec> = Vec::with_capacity(self.quotas.len());
        for (idx, raw) in self.quotas.into_iter().enumerate() {
            let key = format!("quotas[{idx}]");
            let spec = raw.validate(&key)?;
            unique(&key, "quota", &spec.name, quotas.iter().map(|q| &q.name))?;
            quotas.push(spec);
        }
        let http = HttpConfig {
            listen: http_address("http.listen", &self.http.listen, self.http.allow_remote)?,
            allow_remote: self.http.allow_remote,
        };
        let alerts = self.alerts.validate()?;
        let access = self.access.validate()?;
        let mut agents: Vec<AgentBinding> = Vec::with_capacity(self.agents.len());
        for (idx, raw) in self.agents.into_iter().enumerate() {
            let binding = raw.validate(&format!("agents[{idx}]"))?;
            if let Some(earlier) = agents.iter().position(|a| a.name == binding.name) {
                return Err(invalid(
                    format!("agents[{idx}].name"),
                    format!(
                        "{:?} is already bound by agents[{earlier}]; merge the two entries",
                        binding.name
                    ),
                ));
            }
            agents.push(binding);
        }
        Ok(Config {
            daemon,
            breaker,
            services,
            rate_limits,
            access,
            agents,
            budget,
            prices,
            quotas,
            http,
            alerts,
        })
    }
}

// === impl RawBudget ===

impl Default for RawBudget {
    /// SPEC §3.5: $100 for the whole host, never reset, alerts at 50/80/100 %.
    fn default() -> Self {
        RawBudget {
            enabled: true,
            limit: 100.0,
            reset: "never".into(),
            thresholds: vec![50, 80, 100],
            orphan_timeout: "5m".into(),
            orphan_policy: "charge_estimate".into(),
            agents: BTreeMap::new(),
            services: BTreeMap::new(),
        }
    }
}

impl RawBudget {
    fn validate(self) -> Result<BudgetConfig, ConfigError> {
        let global = self
            .enabled
            .then(|| -> Result<BudgetSpec, ConfigError> {
                Ok(BudgetSpec {
                    name: "global".into(),
                    limit: dollars("budget.limit", self.limit)?,
                    reset: reset("budget.reset", &self.reset)?,
                })
            })
            .transpose()?;
        for (idx, t) in self.thresholds.iter().enumerate() {
            if !(1..=100).contains(t) {
                return Err(invalid(
                    format!("budget.thresholds[{idx}]"),
                    format!("must be a percentage from 1 to 100, got {t}"),
                ));
            }
        }
        let orphan_timeout = duration("budget.orphan_timeout", &self.orphan_timeout)?;
        let orphan_policy = match self.orphan_policy.as_str() {
            "charge_estimate" => OrphanPolicy::ChargeEstimate,
            "release" => OrphanPolicy::Release,
            other => {
                return Err(invalid(
                    "budget.orphan_policy",
                    format!("unknown policy {other:?}; use \"charge_estimate\" or \"release\""),
                ))
            }
        };
        let sub = |kind: &str,
                   raw: BTreeMap<String, RawSubBudget>|
         -> Result<BTreeMap<String, BudgetSpec>, ConfigError> {
            let mut out = BTreeMap::new();
            for (who, b) in raw {
                let key = format!("budget.{kind}s.{who}");
                name(&key, &who)?;
                let spec = BudgetSpec {
                    name: format!("{kind}:{who}"),
                    limit: dollars(&format!("{key}.limit"), b.limit)?,
                    reset: reset(&format!("{key}.reset"), &b.reset)?,
                };
                out.insert(who, spec);
            }
            Ok(out)
        };
        Ok(BudgetConfig {
            global,
            agents: sub("agent", self.agents)?,
            services: sub("service", self.services)?,
            thresholds: self.thresholds,
            orphan_timeout,
            orphan_policy,
        })
    }
}

// === impl RawPrice ===

impl RawPrice {
    fn validate(self, prefix: &str) -> Result<Price, ConfigError> {
        let none = ("", None);
        Ok(Price {
            per_request: unit_price(prefix, ("per_request", self.per_request), none)?,
            per_unit: unit_price(
                prefix,
                ("per_unit", self.per_unit),
                ("per_million_units", self.per_million_units),
            )?,
            per_input_unit: unit_price(
                prefix,
                ("per_input_unit", self.per_input_unit),
                ("per_million_input_units", self.per_million_input_units),
            )?,
            per_output_unit: unit_price(
                prefix,
                ("per_output_unit", self.per_output_unit),
                ("per_million_output_units", self.per_million_output_units),
            )?,
        })
    }
}

// === impl RawQuota ===

impl RawQuota {
    fn validate(self, prefix: &str) -> Result<QuotaSpec, ConfigError> {
        let key = |field: &str| format!("{prefix}.{field}");
        name(&key("name"), &self.name)?;
        for (idx, service) in self.services.iter().enumerate() {
            name(&format!("{}[{idx}]", key("services")), service)?;
        }
        for (idx, agent) in self.agents.iter().enumerate() {
            name(&format!("{}[{idx}]", key("agents")), agent)?;
        }
        Ok(QuotaSpec {
            name: self.name,
            scope: match self.scope {
                Some(text) => scope(&key("scope"), &text)?,
                None => Scope::AgentService,
            },
            services: self.services,
            agents: self.agents,
            weight: match self.weight {
                Some(text) => weight(&key("weight"), &text)?,
                None => crate::guard::rate::Weight::Requests,
            },
            limit: self.limit,
            window: window(&key("window"), &self.window)?,
            shadow: self.shadow,
        })
    }
}

/// Refuses `name` at `key` if an earlier entry of the same list has it.
fn unique<'a>(
    key: &str,
    what: &str,
    name: &str,
    earlier: impl IntoIterator<Item = &'a String>,
) -> Result<(), ConfigError> {
    if earlier.into_iter().any(|n| n == name) {
        return Err(invalid(
            format!("{key}.name"),
            format!("{name:?} is used by an earlier {what}; names must be unique"),
        ));
    }
    Ok(())
}

/// SPEC §3.1: 10 requests per second with a burst of 100, per agent and service.
fn default_rate_limit() -> RateSpec {
    RateSpec {
        name: "default".into(),
        scope: Scope::AgentService,
        services: Vec::new(),
        agents: Vec::new(),
        weight: crate::guard::rate::Weight::Requests,
        rate: std::num::NonZeroU32::new(10).expect("10 is not zero"),
        per: std::time::Duration::from_secs(1),
        burst: std::num::NonZeroU32::new(100).expect("100 is not zero"),
        shadow: false,
    }
}

// === impl RawDaemon ===

impl Default for RawDaemon {
    fn default() -> Self {
        RawDaemon {
            socket: None,
            socket_group: None,
            socket_mode: "0660".into(),
            max_connections: 1024,
            max_connections_per_uid: 64,
            max_batch: 1024,
            handshake_timeout: "5s".into(),
            idle_timeout: "10m".into(),
            drain_timeout: "10s".into(),
            mode: "enforce".into(),
            allow_unknown_services: true,
            max_services: 10_000,
            max_reservations_per_connection: 4096,
            state_dir: None,
            purge_interval: "30s".into(),
        }
    }
}

impl RawDaemon {
    fn validate(self) -> Result<DaemonConfig, ConfigError> {
        let mode = match self.mode.as_str() {
            "enforce" => Mode::Enforce,
            "shadow" => Mode::Shadow,
            other => {
                return Err(invalid(
                    "daemon.mode",
                    format!("unknown mode {other:?}; use \"enforce\" or \"shadow\""),
                ))
            }
        };
        for (key, value) in [
            ("daemon.max_connections", self.max_connections),
            (
                "daemon.max_connections_per_uid",
                self.max_connections_per_uid,
            ),
            ("daemon.max_batch", self.max_batch),
            ("daemon.max_services", self.max_services),
            (
                "daemon.max_reservations_per_connection",
                self.max_reservations_per_connection,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1, got 0"));
            }
        }
        if let Some(dir) = &self.state_dir {
            if !dir.is_absolute() {
                return Err(invalid(
                    "daemon.state_dir",
                    format!("{} is relative; give an absolute path", dir.display()),
                ));
            }
        }
        if let Some(socket) = &self.socket {
            if !socket.is_absolute() {
                return Err(invalid(
                    "daemon.socket",
                    format!("{} is relative; give an absolute path", socket.display()),
                ));
            }
        }
        let socket_mode = u32::from_str_radix(&self.socket_mode, 8)
            .ok()
            .filter(|mode| *mode <= 0o777)
            .ok_or_else(|| {
                invalid(
                    "daemon.socket_mode",
                    format!(
                        "{:?} is not a permission mode; write octal digits like \"0660\"",
                        self.socket_mode
                    ),
                )
            })?;
        if socket_mode & 0o600 != 0o600 {
            return Err(invalid(
                "daemon.socket_mode",
                format!(
                    "{:?} does not let the daemon's own user connect; keep the owner bits rw (0600)",
                    self.socket_mode
                ),
            ));
        }
        if let Some(group) = &self.socket_group {
            if group.is_empty() || group.contains('\0') {
                return Err(invalid(
                    "daemon.socket_group",
                    format!("{group:?} is not a group name"),
                ));
            }
        }
        let positive = |key: &str, text: &str| {
            let value = duration(key, text)?;
            if value.is_zero() {
                return Err(invalid(key, "must be longer than zero"));
            }
            Ok(value)
        };
        Ok(DaemonConfig {
            socket: self.socket,
            socket_group: self.socket_group,
            socket_mode,
            max_connections: self.max_connections,
            max_connections_per_uid: self.max_connections_per_uid,
            max_batch: self.max_batch,
            handshake_timeout: positive("daemon.handshake_timeout", &self.handshake_timeout)?,
            idle_timeout: positive("daemon.idle_timeout", &self.idle_timeout)?,
            drain_timeout: positive("daemon.drain_timeout", &self.drain_timeout)?,
            mode,
            allow_unknown_services: self.allow_unknown_services,
            max_services: self.max_services,
            max_reservations_per_connection: self.max_reservations_per_connection,
            state_dir: self.state_dir,
            purge_interval: positive("daemon.purge_interval", &self.purge_interval)?,
        })
    }
}

// === impl RawAccess ===

impl Default for RawAccess {
    /// Root and the `automation-framework` group may connect; root is the admin.
    /// (The daemon's own uid is always both; that is not a config value.)
    fn default() -> Self {
        RawAccess {
            agent_uids: vec![0],
            agent_groups: vec!["automation-framework".into()],
            agent_gids: Vec::new(),
            admin_uids: vec![0],
            admin_groups: Vec::new(),
            admin_gids: Vec::new(),
        }
    }
}

impl RawAccess {
    fn validate(self) -> Result<AccessConfig, ConfigError> {
        Ok(AccessConfig {
            agent_uids: self.agent_uids,
            agent_groups: groups("access.agent_groups", self.agent_groups)?,
            agent_gids: self.agent_gids,
            admin_uids: self.admin_uids,
            admin_groups: groups("access.admin_groups", self.admin_groups)?,
            admin_gids: self.admin_gids,
        })
    }
}

/// Resolves group names now, so a rule means the same group for the daemon's whole
/// life. A group that does not exist matches nobody (the default names the
/// `automation-framework` group, which a host without the package lacks).
fn groups(key: &str, names: Vec<String>) -> Result<Vec<NamedGroup>, ConfigError> {
    names
        .into_iter()
        .enumerate()
        .map(|(idx, name)| {
            let key = format!("{key}[{idx}]");
            if name.is_empty() || name.contains('\0') {
                return Err(invalid(key, format!("{name:?} is not a group name")));
            }
            let gid = nix::unistd::Group::from_name(&name)
                .map_err(|e| invalid(&key, format!("looking up group {name:?}: {e}")))?
                .map(|group| group.gid.as_raw());
            Ok(NamedGroup { name, gid })
        })
        .collect()
}

// === impl RawAgent ===

impl RawAgent {
    fn validate(self, prefix: &str) -> Result<AgentBinding, ConfigError> {
        name(&format!("{prefix}.name"), &self.name)?;
        if self.uids.is_empty() && self.gids.is_empty() {
            return Err(invalid(
                prefix,
                format!(
                    "binds the agent name {:?} to no uid and no gid, so nobody could use it; give `uids` or `gids`",
                    self.name
                ),
            ));
        }
        Ok(AgentBinding {
            name: self.name,
            uids: self.uids,
            gids: self.gids,
        })
    }
}

// === impl RawBreaker ===

impl RawBreaker {
    /// Applies the keys that are set onto `base`, validating each.
    fn apply(self, prefix: &str, base: BreakerConfig) -> Result<BreakerConfig, ConfigError> {
        let key = |field: &str| format!("{prefix}.{field}");
        let mut out = base;
        if let Some(v) = self.failure_threshold {
            out.failure_threshold = v;
        }
        if let Some(v) = self.window {
            out.window = v;
        }
        if let Some(v) = self.failure_rate {
            if !(1..=100).contains(&v) {
                return Err(invalid(
                    key("failure_rate"),
                    format!("must be a percentage from 1 to 100, got {v}"),
                ));
            }
            out.failure_rate = v;
        }
        if let Some(v) = self.min_calls {
            out.min_calls = v;
        }
        if let Some(v) = self.slow_call {
            out.slow_call = Some(duration(&key("slow_call"), &v)?);
        }
        if let Some(v) = self.open_for {
            out.open_for = duration(&key("open_for"), &v)?;
        }
        if let Some(v) = self.half_open_trials {
            out.half_open_trials = nonzero(&key("half_open_trials"), v)?.get();
        }
        if let Some(v) = self.success_threshold {
            out.success_threshold = nonzero(&key("success_threshold"), v)?.get();
        }
        if let Some(v) = self.trial_timeout {
            let value = duration(&key("trial_timeout"), &v)?;
            if value.is_zero() {
                return Err(invalid(key("trial_timeout"), "must be longer than zero"));
            }
            out.trial_timeout = value;
        }
        if let Some(v) = self.force {
            out.force = force(&key("force"), &v)?;
        }
        if let Some(v) = self.shadow {
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
        if out.failure_threshold == 0 && out.window == 0 && out.force == crate::guard::Force::Auto {
            return Err(invalid(
                prefix,
                "failure_threshold and window are both 0, so the breaker could never open; set one, or force = \"disabled\"",
            ));
        }
        Ok(out)
    }
}

// === impl RawRateLimit ===

impl RawRateLimit {
    fn validate(self, prefix: &str) -> Result<RateSpec, ConfigError> {
        let key = |field: &str| format!("{prefix}.{field}");
        name(&key("name"), &self.name)?;
        let preset = self
            .preset
            .as_deref()
            .map(|p| preset(&key("preset"), p))
            .transpose()?;
        let rate = match (self.rate, preset) {
            (Some(rate), _) => nonzero(&key("rate"), rate)?,
            (None, Some(p)) => nonzero(&key("preset"), p.rate)?,
            (None, None) => {
                return Err(invalid(
                    key("rate"),
                    "missing; give `rate` (with `per`, default \"1s\") or a `preset`",
                ))
            }
        };
        let per = match (self.per, preset) {
            (Some(text), _) => duration(&key("per"), &text)?,
            (None, Some(p)) => p.per,
            (None, None) => std::time::Duration::from_secs(1),
        };
        if per.is_zero() {
            return Err(invalid(key("per"), "must be longer than zero"));
        }
        if per / rate.get() < std::time::Duration::from_nanos(1) {
            return Err(invalid(
                key("rate"),
                format!("{rate} per {per:?} is faster than one per nanosecond"),
            ));
        }
        let burst = match self.burst {
            Some(burst) => nonzero(&key("burst"), burst)?,
            None => rate,
        };
        let scope = match (self.scope, preset) {
            (Some(text), _) => scope(&key("scope"), &text)?,
            (None, Some(_)) => Scope::Service,
            (None, None) => Scope::AgentService,
        };
        let weight = match self.weight {
            Some(text) => weight(&key("weight"), &text)?,
            None => crate::guard::rate::Weight::Requests,
        };
        for (idx, service) in self.services.iter().enumerate() {
            name(&format!("{}[{idx}]", key("services")), service)?;
        }
        for (idx, agent) in self.agents.iter().enumerate() {
            name(&format!("{}[{idx}]", key("agents")), agent)?;
        }
        Ok(RateSpec {
            name: self.name,
            scope,
            services: self.services,
            agents: self.agents,
            weight,
            rate,
            per,
            burst,
            shadow: self.shadow,
        })
    }
}
