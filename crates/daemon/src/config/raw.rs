//! The TOML file as serde sees it, and nothing else: one struct per table, the
//! built-in defaults, and the spellings of the config's enums. Unknown keys are
//! errors (a typo must not silently leave a default in force). Values are checked,
//! and turned into the daemon's types, in `validate.rs`.
//!
//! Enum values (`scope = "agent"`) are serde enums, so the accepted spellings are
//! written once, here. They are read through [`Spelled`], which keeps a value that
//! is not one of them instead of failing inside serde: serde does not know which
//! key it is reading, and every config error must name its key
//! (`rate_limits[1].scope`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{DeserializeOwned, IntoDeserializer};
use serde::{Deserialize, Deserializer};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub daemon: RawDaemon,
    pub breaker: RawBreaker,
    pub retry: RawRetry,
    pub services: BTreeMap<String, RawService>,
    pub routes: Vec<RawRoute>,
    /// `None` (no `[[rate_limits]]` at all) means the built-in default rule; an
    /// explicit empty list (`rate_limits = []`) means no rate limits.
    pub rate_limits: Option<Vec<RawRateLimit>>,
    pub access: RawAccess,
    pub agents: Vec<RawAgent>,
    pub budget: RawBudget,
    pub prices: BTreeMap<String, RawPrice>,
    pub quotas: Vec<RawQuota>,
    pub http: RawHttp,
    pub alerts: RawAlerts,
    pub content: RawContent,
    pub bulkheads: Vec<RawBulkhead>,
    pub concurrency: RawConcurrency,
    pub leases: RawLeases,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDaemon {
    pub socket: Option<PathBuf>,
    pub socket_group: Option<String>,
    pub socket_mode: String,
    pub max_connections: usize,
    pub max_connections_per_uid: usize,
    pub max_batch: usize,
    pub handshake_timeout: String,
    pub idle_timeout: String,
    pub drain_timeout: String,
    pub mode: Spelled<RawMode>,
    pub allow_unknown_services: bool,
    pub max_services: usize,
    pub max_reservations_per_connection: usize,
    pub max_reservations_per_uid: usize,
    pub max_reservations: usize,
    pub state_dir: Option<PathBuf>,
    pub purge_interval: String,
    pub commit_timeout: String,
}

/// Breaker keys; every one optional so a service can override just one of them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawBreaker {
    pub failure_threshold: Option<u32>,
    pub window: Option<u32>,
    pub failure_rate: Option<u8>,
    pub min_calls: Option<u32>,
    pub slow_call: Option<String>,
    pub open_for: Option<String>,
    pub half_open_trials: Option<u32>,
    pub success_threshold: Option<u32>,
    pub trial_timeout: Option<String>,
    pub force: Option<Spelled<RawForce>>,
    pub shadow: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawService {
    pub breaker: RawBreaker,
    pub retry: RawRetry,
}

/// Retry keys; every one optional so a service can override just one of them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRetry {
    pub attempts: Option<u32>,
    pub initial: Option<String>,
    pub multiplier: Option<f64>,
    pub max: Option<String>,
    pub jitter: Option<u8>,
    pub budget_percent: Option<u8>,
    pub budget_window: Option<String>,
    pub budget_min_retries: Option<u32>,
}

/// One `[[routes]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub name: String,
    #[serde(default)]
    pub chain: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub name: String,
    #[serde(default)]
    pub scope: Option<Spelled<RawScope>>,
    #[serde(default)]
    pub rate: Option<u32>,
    #[serde(default)]
    pub per: Option<String>,
    #[serde(default)]
    pub burst: Option<u32>,
    #[serde(default)]
    pub weight: Option<Spelled<RawWeight>>,
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub agents: Vec<String>,
    #[serde(default)]
    pub preset: Option<String>,
    #[serde(default)]
    pub shadow: bool,
}

/// `[access]`: who may connect and who is an admin. Groups are names, resolved when
/// the file is loaded.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAccess {
    pub agent_uids: Vec<u32>,
    pub agent_groups: Vec<String>,
    pub agent_gids: Vec<u32>,
    pub admin_uids: Vec<u32>,
    pub admin_groups: Vec<String>,
    pub admin_gids: Vec<u32>,
}

/// One `[[agents]]` entry: an agent name reserved for some users.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub name: String,
    #[serde(default)]
    pub uids: Vec<u32>,
    #[serde(default)]
    pub gids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawBudget {
    pub enabled: bool,
    pub limit: f64,
    pub reset: Spelled<RawReset>,
    pub thresholds: Vec<u8>,
    pub orphan_timeout: String,
    pub orphan_policy: Spelled<RawOrphanPolicy>,
    pub agents: BTreeMap<String, RawSubBudget>,
    pub services: BTreeMap<String, RawSubBudget>,
    pub max_charge: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSubBudget {
    pub limit: f64,
    #[serde(default = "never")]
    pub reset: Spelled<RawReset>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPrice {
    pub per_request: Option<f64>,
    pub per_unit: Option<f64>,
    pub per_input_unit: Option<f64>,
    pub per_output_unit: Option<f64>,
    pub per_million_units: Option<f64>,
    pub per_million_input_units: Option<f64>,
    pub per_million_output_units: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQuota {
    pub name: String,
    pub limit: u64,
    pub window: Spelled<RawWindow>,
    #[serde(default)]
    pub scope: Option<Spelled<RawScope>>,
    #[serde(default)]
    pub weight: Option<Spelled<RawWeight>>,
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub agents: Vec<String>,
    #[serde(default)]
    pub shadow: bool,
}

/// One `[[bulkheads]]` entry: calls in flight per key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBulkhead {
    pub name: String,
    pub max_in_flight: u32,
    #[serde(default)]
    pub scope: Option<Spelled<RawScope>>,
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub agents: Vec<String>,
    #[serde(default)]
    pub shadow: bool,
}

/// `[concurrency]`: the host-wide settings of bulkheads.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConcurrency {
    pub max_active_agents: u32,
    pub max_wait: String,
}

/// `[leases]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLeases {
    pub default_ttl: String,
    pub max_ttl: String,
    pub max_per_connection: u32,
    pub max_total: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawHttp {
    pub listen: String,
    pub allow_remote: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAlerts {
    pub webhook: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub suppress: String,
    pub queue: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawContent {
    pub enabled: bool,
    pub rules_dir: Option<PathBuf>,
    pub max_payload: usize,
    pub deny_at: Spelled<automation_framework_scanner::Severity>,
    pub shadow: bool,
}

// === the spellings of the config's enums ===

/// `daemon.mode`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawMode {
    Enforce,
    Shadow,
}

/// A breaker's `force`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawForce {
    Auto,
    Open,
    Closed,
    Disabled,
}

/// The `scope` of a rate limit or quota.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawScope {
    Global,
    Agent,
    Service,
    #[serde(rename = "agent+service")]
    AgentService,
}

/// The `weight` of a rate limit or quota.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawWeight {
    Requests,
    Units,
}

/// A budget's `reset` by name; anything else is read as a duration ("6h").
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawReset {
    Never,
    Daily,
    Weekly,
    Monthly,
}

/// `budget.orphan_policy`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawOrphanPolicy {
    ChargeEstimate,
    Release,
}

/// A quota's `window`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawWindow {
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Lifetime,
}

/// A string that is one of the spellings of the enum `T`, or is not.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Spelled<T> {
    Known(T),
    /// Not one of `T`'s spellings; `expected` lists them, as serde knows them.
    Unknown {
        text: String,
        expected: &'static [&'static str],
    },
}

/// The one error [`Spelled`] reads from serde: which spellings an enum has.
#[derive(Debug)]
struct NotASpelling(&'static [&'static str]);

// === impl Spelled ===

impl<'de, T: DeserializeOwned> Deserialize<'de> for Spelled<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let as_enum: serde::de::value::StrDeserializer<'_, NotASpelling> =
            text.as_str().into_deserializer();
        match T::deserialize(as_enum) {
            Ok(known) => Ok(Spelled::Known(known)),
            Err(NotASpelling(expected)) => Ok(Spelled::Unknown { text, expected }),
        }
    }
}

impl fmt::Display for NotASpelling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected one of {:?}", self.0)
    }
}

impl std::error::Error for NotASpelling {}

impl serde::de::Error for NotASpelling {
    /// Unreachable for the unit-variant enums above (a string names a variant or
    /// not); an empty list keeps it an error rather than a panic.
    fn custom<M: fmt::Display>(_: M) -> Self {
        NotASpelling(&[])
    }

    fn unknown_variant(_: &str, expected: &'static [&'static str]) -> Self {
        NotASpelling(expected)
    }
}

// === defaults (SPEC §3) ===

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
            mode: Spelled::Known(RawMode::Enforce),
            allow_unknown_services: true,
            max_services: 10_000,
            max_reservations_per_connection: 4096,
            max_reservations_per_uid: 8192,
            max_reservations: 32_768,
            state_dir: None,
            purge_interval: "30s".into(),
            commit_timeout: "5s".into(),
        }
    }
}

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

impl Default for RawBudget {
    /// SPEC §3.5: $100 for the whole host, never reset, alerts at 50/80/100 %.
    fn default() -> Self {
        RawBudget {
            enabled: true,
            limit: 100.0,
            reset: never(),
            thresholds: vec![50, 80, 100],
            orphan_timeout: "5m".into(),
            orphan_policy: Spelled::Known(RawOrphanPolicy::ChargeEstimate),
            agents: BTreeMap::new(),
            services: BTreeMap::new(),
            max_charge: 1000.0,
        }
    }
}

fn never() -> Spelled<RawReset> {
    Spelled::Known(RawReset::Never)
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            listen: "127.0.0.1:8765".into(),
            allow_remote: false,
        }
    }
}

impl Default for RawContent {
    fn default() -> Self {
        RawContent {
            enabled: true,
            rules_dir: None,
            max_payload: crate::protocol::MAX_PAYLOAD_LEN,
            deny_at: Spelled::Known(automation_framework_scanner::Severity::High),
            shadow: false,
        }
    }
}

impl Default for RawAlerts {
    fn default() -> Self {
        RawAlerts {
            webhook: None,
            ca_file: None,
            suppress: "5m".into(),
            queue: 256,
        }
    }
}

impl Default for RawConcurrency {
    /// No cap on active agents; a waiting admission waits at most 30 s.
    fn default() -> Self {
        RawConcurrency {
            max_active_agents: 0,
            max_wait: "30s".into(),
        }
    }
}

impl Default for RawLeases {
    fn default() -> Self {
        RawLeases {
            default_ttl: "30s".into(),
            max_ttl: "1h".into(),
            max_per_connection: 64,
            max_total: 4096,
        }
    }
}
