//! Configuration: a raw serde view of the TOML file (`raw.rs`, close to the file and
//! strict about unknown keys), checked and turned by `validate/` into a [`Config`]
//! that the rest of the daemon can trust. Nothing outside this module sees the raw
//! form. `[alerts]` has its types in `alerts.rs`.
//!
//! Every validation error names the key (`rate_limits[1].burst`) and says what is
//! wrong, so `automation-framework config check` and a failed start read the same.
//!
//! This is a low layer: it imports the guards' value types and nothing that runs
//! (not `alerts`, `state`, `metrics` or `admission`).

mod alerts;
mod raw;
mod validate;

pub use alerts::{AlertsConfig, CaBundle, WebhookUrl};
pub use validate::{http_address, webhook_url};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use automation_framework_scanner::{Scanner, Severity};

use crate::guard::breaker::BreakerConfig;
use crate::guard::budget::BudgetSpec;
use crate::guard::concurrency::BulkheadSpec;
use crate::guard::lease::LeaseLimits;
use crate::guard::quota::QuotaSpec;
use crate::guard::rate::RateSpec;
use crate::guard::retry::RetryConfig;
use crate::money::{UnitPrice, Usd};

/// A complete, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub daemon: DaemonConfig,
    /// Breaker settings for services without their own.
    pub breaker: BreakerConfig,
    /// Retry advice and retry budgets for services without their own.
    pub retry: RetryConfig,
    /// Declared services with their settings.
    pub services: BTreeMap<String, ServiceConfig>,
    /// Named chains of services (`[[routes]]`), in file order.
    pub routes: Vec<Route>,
    /// Rate limits in the order they run.
    pub rate_limits: Vec<RateSpec>,
    /// Who may connect and who is an admin (`[access]`).
    pub access: AccessConfig,
    /// Agent names reserved for some users (`[[agents]]`), in file order.
    pub agents: Vec<AgentBinding>,
    pub budget: BudgetConfig,
    /// Price entries by `service` or `service/model`.
    pub prices: BTreeMap<String, Price>,
    /// Quotas in the order they run.
    pub quotas: Vec<QuotaSpec>,
    pub http: HttpConfig,
    /// `[alerts]`: the webhook, and how alerts are suppressed and queued.
    pub alerts: AlertsConfig,
    /// `[content]`: the content guard and its rules.
    pub content: ContentConfig,
    /// `[[bulkheads]]` in the order they run.
    pub bulkheads: Vec<BulkheadSpec>,
    /// `[concurrency]`.
    pub concurrency: ConcurrencyConfig,
    /// `[leases]`.
    pub leases: LeaseLimits,
}

/// `[concurrency]`: what bulkheads share (SPEC §3.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConcurrencyConfig {
    /// Agents with calls in flight at once on the host; `None`: no cap.
    pub max_active_agents: Option<u32>,
    /// The longest an admission may wait for a permit (`wait_ms` is cut to it).
    pub max_wait: Duration,
}

/// `[content]`: what payloads may contain (SPEC §3.7). The rules are loaded
/// with the config, so a reload that brings an invalid rule file is refused
/// whole like any other invalid key, and the old rules stay.
#[derive(Debug, Clone)]
pub struct ContentConfig {
    /// Scan `Check` texts and `Admit` payloads at all.
    pub enabled: bool,
    /// Operator rule files (`*.toml`) added to the built-in rules.
    pub rules_dir: Option<PathBuf>,
    /// Largest text scanned, in bytes; checked before the scan.
    pub max_payload: usize,
    /// Findings at or above this severity deny an admission.
    pub deny_at: Severity,
    /// Record content denials, never deny.
    pub shadow: bool,
    /// The compiled rules: immutable, shared by every scan, swapped whole.
    pub scanner: Arc<Scanner>,
}

/// The operator's HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpConfig {
    /// Where `/metrics`, `/health` and `/ready` are served; `None` when off.
    pub listen: Option<std::net::SocketAddr>,
    /// Whether a non-loopback address may be used.
    pub allow_remote: bool,
}

/// Money budgets (SPEC §3.5).
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetConfig {
    /// The host-wide budget; `None` when `budget.enabled = false`.
    pub global: Option<BudgetSpec>,
    /// Sub-budgets; a call must fit every budget that applies to it.
    pub agents: BTreeMap<String, BudgetSpec>,
    pub services: BTreeMap<String, BudgetSpec>,
    /// Percentages of a limit at which a warning is logged, once per period.
    pub thresholds: Vec<u8>,
    /// How long a reservation whose connection is gone waits for its report.
    pub orphan_timeout: Duration,
    pub orphan_policy: OrphanPolicy,
    /// The largest single charge or estimate accepted (a report or admission
    /// above it is refused): what one agent can add to a balance per call.
    pub max_charge: Usd,
}

/// What happens to a reservation whose agent vanished without reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanPolicy {
    /// Assume the call happened at its estimated cost (the safe default: money the
    /// upstream may have billed is not forgotten).
    ChargeEstimate,
    /// Assume the call did not happen.
    Release,
}

/// What a call costs: exact prices (an LLM token costs a fraction of a
/// micro-dollar, so prices are not [`Usd`]; see `money`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Price {
    pub per_request: UnitPrice,
    pub per_unit: UnitPrice,
    pub per_input_unit: UnitPrice,
    pub per_output_unit: UnitPrice,
}

// === impl ContentConfig ===

impl PartialEq for ContentConfig {
    /// The settings, and the rules by their ids in order: the compiled scanner
    /// has no equality of its own, and a rule file edited in place keeps its ids
    /// (so two loads compare equal unless a rule was added, removed or moved).
    fn eq(&self, other: &Self) -> bool {
        let ids = |c: &ContentConfig| -> Vec<String> {
            c.scanner
                .rules()
                .rules()
                .iter()
                .map(|r| r.id.clone())
                .collect()
        };
        self.enabled == other.enabled
            && self.rules_dir == other.rules_dir
            && self.max_payload == other.max_payload
            && self.deny_at == other.deny_at
            && self.shadow == other.shadow
            && (Arc::ptr_eq(&self.scanner, &other.scanner) || ids(self) == ids(other))
    }
}

// === impl Price ===

impl Price {
    /// `per_request + units × per_unit + input × per_input_unit + output ×
    /// per_output_unit`, summed exactly and rounded once, at the total, up to
    /// the next micro-dollar: 1,000 tokens at $0.00000015 cost $0.00015, not 0,
    /// and a budget is never charged less than the exact price.
    pub fn cost(&self, units: u32, input_units: u32, output_units: u32) -> Usd {
        // Each term is below 4.3·10³⁰ pico-dollars (see `UnitPrice::times`): the
        // sum of four cannot overflow a u128.
        let picos = self.per_request.times(1)
            + self.per_unit.times(units)
            + self.per_input_unit.times(input_units)
            + self.per_output_unit.times(output_units);
        Usd::from_picos_rounding_up(picos)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// Where to listen when neither systemd nor `--socket` says.
    pub socket: Option<PathBuf>,
    /// Group of a socket the daemon binds itself; `None`: see `socket::SocketPerms`.
    pub socket_group: Option<String>,
    /// Permission bits of a socket the daemon binds itself.
    pub socket_mode: u32,
    pub max_connections: usize,
    /// Connections one uid may hold at once, so one user cannot take every slot.
    pub max_connections_per_uid: usize,
    /// Requests in one batch frame: how much work one frame can ask for before
    /// the connection's task yields.
    pub max_batch: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    pub mode: Mode,
    /// Accept services not declared under `[services]`.
    pub allow_unknown_services: bool,
    /// At most this many distinct services get a breaker (bounds memory).
    pub max_services: usize,
    /// Open reservations one connection may hold.
    pub max_reservations_per_connection: usize,
    /// Open reservations (orphans included) the connections of one uid may hold
    /// at once: an orphan outlives its connection, so the per-connection cap
    /// alone does not bound what a user can leave behind by reconnecting.
    pub max_reservations_per_uid: usize,
    /// Open reservations (orphans included) in the whole daemon: with the
    /// per-uid cap, what bounds the engine's memory against many users.
    pub max_reservations: usize,
    /// Where the ledger lives when `--state-dir` does not say.
    pub state_dir: Option<PathBuf>,
    /// How often idle keyed state (full rate buckets, past quota windows) is
    /// forgotten and its memory given back: the longest that memory of a burst of
    /// distinct keys outlives the burst. Short values cost a walk of every key
    /// that often.
    pub purge_interval: Duration,
    /// A ledger commit taking longer is answered Unavailable and turns health
    /// unhealthy while it lasts (a frozen or dying disk); bound at start.
    pub commit_timeout: Duration,
}

/// `[access]`: the rules that let a peer in, decided from its kernel credentials.
/// A peer matches a group rule through its primary or a supplementary group. The
/// daemon's own uid is always allowed and always an admin; that is not configurable
/// (see `access::Policy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessConfig {
    pub agent_uids: Vec<u32>,
    pub agent_groups: Vec<NamedGroup>,
    pub agent_gids: Vec<u32>,
    pub admin_uids: Vec<u32>,
    pub admin_groups: Vec<NamedGroup>,
    pub admin_gids: Vec<u32>,
}

/// A group named in the config, resolved when the config was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedGroup {
    pub name: String,
    /// `None` when the host has no such group: the rule then matches nobody.
    pub gid: Option<u32>,
}

/// `[[agents]]`: an agent name only these users may claim. A name without an entry
/// is free for any peer that may connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentBinding {
    pub name: String,
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

/// Enforce decisions, or only record them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    /// Every guard decides and records; no admission is denied.
    Shadow,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub breaker: BreakerConfig,
    pub retry: RetryConfig,
}

/// `[[routes]]`: services in order of preference (a primary, then fallbacks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    /// Never empty; each service at most once.
    pub chain: Vec<String>,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    /// A file with no setting at all: on reload most likely one caught between
    /// a truncate and a write, which would apply every default and drop every
    /// `[[agents]]` binding.
    #[error("{path} holds no settings (it is empty, or only comments): refusing it, since a file caught half-written would silently apply every default and drop every [[agents]] binding; put at least one table in it (an empty [daemon] means \"all defaults\"), or start without --config to run on the built-in defaults")]
    Empty { path: PathBuf },
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}

/// Whether a TOML text holds anything but blank lines and comments: a key or a
/// table header (a line starting with `#` is a comment; a `#` inside a value
/// sits after a key, on a line that counts).
fn has_settings(text: &str) -> bool {
    text.lines().any(|line| {
        let line = line.trim_start_matches(['\u{feff}', ' ', '\t', '\r']);
        !line.is_empty() && !line.starts_with('#')
    })
}

/// The most `[[rate_limits]]` a configuration may hold. Rules are found by
/// index (`guard/index.rs`), so the cap bounds memory (a rule and its empty
/// limiter are a few hundred bytes) and the time a reload or `config check`
/// takes, not the cost of an admission.
pub const MAX_RATE_LIMITS: usize = 10_000;

/// The most `[[quotas]]` a configuration may hold (as [`MAX_RATE_LIMITS`]).
pub const MAX_QUOTAS: usize = 10_000;

/// A provider's published limit, enabled with `preset = "…"` on a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    pub rate: u32,
    pub per: Duration,
}

/// Provider presets (SPEC §3.1). The burst defaults to one period's worth.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "openai",
        rate: 3_500,
        per: Duration::from_secs(60),
    },
    Preset {
        name: "anthropic",
        rate: 60,
        per: Duration::from_secs(1),
    },
    Preset {
        name: "groq",
        rate: 30,
        per: Duration::from_secs(1),
    },
];

// === impl Config ===

impl Default for Config {
    /// The built-in defaults, used when no config file is given. They match the
    /// shipped `config/automation-framework.toml`.
    fn default() -> Self {
        Config::from_toml("").expect("the built-in defaults are valid")
    }
}

impl Config {
    /// Parses and validates a configuration file's text.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first bad key.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        validate::config(toml::from_str(text)?)
    }

    /// Reads, parses and validates a configuration file. A file is named on
    /// purpose (`--config`, a reload), so one without any setting is refused
    /// rather than read as "all defaults" (issue 16: a reload racing an editor's
    /// truncate-then-write).
    ///
    /// # Errors
    /// As [`Config::from_toml`], plus a read error naming the path and
    /// [`ConfigError::Empty`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        if !has_settings(&text) {
            return Err(ConfigError::Empty {
                path: path.to_owned(),
            });
        }
        Config::from_toml(&text)
    }

    /// The breaker settings of `service`.
    pub fn breaker_for(&self, service: &str) -> &BreakerConfig {
        self.services
            .get(service)
            .map_or(&self.breaker, |s| &s.breaker)
    }

    /// The retry settings of `service`.
    pub fn retry_for(&self, service: &str) -> &RetryConfig {
        self.services.get(service).map_or(&self.retry, |s| &s.retry)
    }

    /// The price entry for a call: `service/model` first, then `service`.
    pub fn price_for(&self, service: &str, model: Option<&str>) -> Option<&Price> {
        model
            .and_then(|m| self.prices.get(&format!("{service}/{m}")))
            .or_else(|| self.prices.get(service))
    }

    /// Is `service` one the daemon will track?
    pub fn knows_service(&self, service: &str) -> bool {
        self.daemon.allow_unknown_services || self.services.contains_key(service)
    }
}

#[cfg(test)]
mod tests;
