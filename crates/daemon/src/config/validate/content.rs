//! `[content]`: the content guard's switches and its rules, loaded here so a
//! config and the rules it names are accepted (or refused) together.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use automation_framework_scanner::{RuleSet, Scanner};

use super::{choice, invalid};
use crate::config::raw::RawContent;
use crate::config::{ConfigError, ContentConfig};
use crate::protocol::MAX_PAYLOAD_LEN;

/// Where systemd's `ConfigurationDirectory=` keeps operator rules.
const SYSTEMD_RULES_SUBDIR: &str = "rules.d";

pub(super) fn content(raw: RawContent) -> Result<ContentConfig, ConfigError> {
    if raw.max_payload == 0 || raw.max_payload > MAX_PAYLOAD_LEN {
        return Err(invalid(
            "content.max_payload",
            format!(
                "must be 1 to {MAX_PAYLOAD_LEN} bytes (1 MiB, what a frame can carry), got {}",
                raw.max_payload
            ),
        ));
    }
    let deny_at = choice("content.deny_at", "severity", raw.deny_at)?;
    let rules_dir = raw.rules_dir.or_else(systemd_rules_dir);
    let scanner = match &rules_dir {
        Some(dir) => Arc::new(Scanner::new(load(dir)?)),
        None => builtin(),
    };
    Ok(ContentConfig {
        enabled: raw.enabled,
        rules_dir,
        max_payload: raw.max_payload,
        deny_at,
        shadow: raw.shadow,
        scanner,
    })
}

/// The built-in rules plus the directory's, all or nothing; the error names
/// the file and the rule (`rules file /etc/…/acme.toml: rule acme-token: …`).
fn load(dir: &Path) -> Result<RuleSet, ConfigError> {
    RuleSet::load_dir(dir).map_err(|err| {
        invalid(
            "content.rules_dir",
            format!(
                "{err}; fix or remove the file, then reload (the rules in force stay until then)"
            ),
        )
    })
}

/// `$CONFIGURATION_DIRECTORY/rules.d` under systemd, when it exists: the
/// packaged unit sets `ConfigurationDirectory=automation-framework`, so this is
/// `/etc/automation-framework/rules.d`. Elsewhere the built-in rules only,
/// unless `content.rules_dir` says otherwise.
fn systemd_rules_dir() -> Option<PathBuf> {
    let dirs = std::env::var_os("CONFIGURATION_DIRECTORY").filter(|d| !d.is_empty())?;
    // systemd may pass several, separated by ':'; ours is the first.
    let first = dirs.to_string_lossy().split(':').next()?.to_owned();
    let dir = PathBuf::from(first).join(SYSTEMD_RULES_SUBDIR);
    dir.is_dir().then_some(dir)
}

/// The built-in scanner, compiled once per process: every config without a
/// rules directory shares it (compiling the rules' regexes is the expensive
/// part of loading a config).
fn builtin() -> Arc<Scanner> {
    static BUILTIN: OnceLock<Arc<Scanner>> = OnceLock::new();
    Arc::clone(BUILTIN.get_or_init(|| Arc::new(Scanner::builtin())))
}
