//! Reloading the configuration: re-reading the file, diffing what needs a
//! restart, and swapping config, access policy and guard settings as one step.
//!
//! Architecture Invariant: a reload is all or nothing. Everything is validated and
//! built (`Admission::reconfigure`) before the access policy and the config are
//! swapped; a refused change leaves the old config entirely in force.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError};

use super::{lock, State};
use crate::access::Policy;
use crate::admission::{LoadedBooks, Reconfigured, ReloadError};
use crate::alerts::Alert;
use crate::config::Config;
use crate::store::Books;

/// Rules (rate limits and quotas) in the old or the new config from which a
/// reload ends with a `malloc_trim`: below it the walk of the heap costs more
/// than the little it could give back.
const TRIM_AFTER_RULES: usize = 1_000;

fn rule_count(config: &Config) -> usize {
    config.rate_limits.len() + config.quotas.len()
}

/// What a reload changed, for the log and the `Reload` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    pub guards: Reconfigured,
    /// Settings that differ but apply at restart only.
    pub restart_only: Vec<&'static str>,
}

// === impl State (reload) ===

impl State {
    /// Remembers the file the daemon was started with, for reloads.
    pub fn set_config_path(&self, path: Option<PathBuf>) {
        *lock(&self.shared.config_path) = path;
    }

    /// Re-reads the config file the daemon was started with (or the built-in
    /// defaults without one) and applies it with [`State::reload`]. Logs the
    /// outcome; blocking (reads a file).
    ///
    /// # Errors
    /// An invalid file, or a change that needs a restart: the old config stays.
    pub fn reload_from_file(&self) -> Result<ReloadSummary, ReloadError> {
        let path = lock(&self.shared.config_path).clone();
        let shown = path.as_ref().map_or_else(
            || "the built-in defaults".to_owned(),
            |p| p.display().to_string(),
        );
        let loaded = match &path {
            Some(path) => Config::load(path).map_err(|source| ReloadError::Config {
                path: path.display().to_string(),
                source,
            }),
            None => Ok(Config::default()),
        };
        let rules_before = rule_count(&self.config());
        let result = loaded.and_then(|config| self.reload(config));
        let rules_after = rule_count(&self.config());
        if rules_before.max(rules_after) >= TRIM_AFTER_RULES {
            // Parsing a big file and dropping the rules a reload replaced leave
            // freed blocks glibc keeps resident (80 MB after going back from
            // 100,000 rules to a few, issue 16) until asked. On the blocking
            // pool already (this reads a file).
            super::trim::trim_heap();
        }
        match &result {
            Ok(summary) => {
                log::info!(message_id = crate::logging::message_id::RELOADED; "configuration reloaded from {shown}: {summary}");
                if !summary.restart_only.is_empty() {
                    log::warn!(
                        "configuration reload: {} changed and take(s) effect at restart only",
                        summary.restart_only.join(", ")
                    );
                }
            }
            Err(err) => {
                log::error!(
                    message_id = crate::logging::message_id::RELOAD_FAILED;
                    "configuration reload from {shown} failed, the old configuration stays in force: {err}"
                );
                self.alerts().raise(Alert::ReloadFailed {
                    reason: err.to_string(),
                });
            }
        }
        result
    }

    /// Applies a validated config: the guards keep the state of what did not
    /// change (see `Admission::reconfigure`), the access policy is rebuilt, and the
    /// config is swapped. Settings bound at start (the socket, the state directory,
    /// `max_connections`, the HTTP listener) are reported, not applied.
    ///
    /// # Errors
    /// [`ReloadError::Refused`]: nothing changed.
    pub fn reload(&self, new: Config) -> Result<ReloadSummary, ReloadError> {
        let _one_at_a_time = lock(&self.shared.reloading);
        let old = self.config();
        let mut restart_only = Vec::new();
        if old.daemon.socket != new.daemon.socket {
            restart_only.push("daemon.socket");
        }
        if old.daemon.socket_group != new.daemon.socket_group
            || old.daemon.socket_mode != new.daemon.socket_mode
        {
            restart_only.push("daemon.socket_group/socket_mode");
        }
        if old.daemon.state_dir != new.daemon.state_dir {
            restart_only.push("daemon.state_dir");
        }
        if old.daemon.max_connections != new.daemon.max_connections {
            restart_only.push("daemon.max_connections");
        }
        if old.http != new.http {
            restart_only.push("http.listen");
        }
        let access = Policy::new(&new.access, &new.agents, nix::unistd::geteuid().as_raw());
        let new = Arc::new(new);
        let admission = &self.shared.admission;
        let opening = admission.budgets_to_load(&new, self.moment());
        let names = opening.names();
        let books = if opening.is_empty() {
            Books::default()
        } else {
            self.shared.store.books(opening.clone()).map_err(|err| {
                ReloadError::Refused(format!(
                    "the balances of the budgets it adds or gives another period ({}) could not be read from the ledger: {err}",
                    names.join(", ")
                ))
            })?
        };
        let loaded = LoadedBooks { names, books };
        let guards =
            admission.reconfigure(Arc::clone(&new), &self.shared.clock, self.moment(), &loaded)?;
        if !opening.is_empty() {
            // Not awaited: its completion does what is left.
            drop(admission.record_resets(&self.shared.store, &opening));
        }
        *self
            .shared
            .access
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(access);
        *self
            .shared
            .config
            .write()
            .unwrap_or_else(PoisonError::into_inner) = new;
        // After both swaps: a session that sees this generation reads both
        // new, and one that saw the last keeps its copies until its next
        // request looks.
        self.shared
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(ReloadSummary {
            guards,
            restart_only,
        })
    }
}

// === impl ReloadSummary ===

impl std::fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.guards;
        write!(
            f,
            "rate limits {} kept, {} new; quotas {} kept, {} new; {} breaker(s) reconfigured; {} admin-set budget limit(s) kept",
            g.rate_kept, g.rate_new, g.quotas_kept, g.quotas_new, g.breakers, g.admin_limits_kept
        )?;
        if g.budgets_added + g.budgets_removed + g.budgets_new_period > 0 {
            write!(
                f,
                "; budgets {} added (their balances read from the ledger), {} removed, {} with a new period",
                g.budgets_added, g.budgets_removed, g.budgets_new_period
            )?;
        }
        if !self.restart_only.is_empty() {
            write!(
                f,
                "; changed but applied at restart only: {}",
                self.restart_only.join(", ")
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SharedClock;

    /// A reload that adds a budget needs its balance from the ledger; a
    /// ledger that cannot answer refuses the reload, and the old config,
    /// without the budget, stays in force whole.
    #[test]
    fn a_reload_adding_a_budget_the_ledger_cannot_read_changes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, snapshot) = crate::store::Store::open(dir.path()).expect("ledger");
        let before = "[budget]\nlimit = 10.0\n";
        let config = Config::from_toml(before).expect("valid");
        let state =
            State::new(config, SharedClock::system(), store.clone(), &snapshot).expect("state");
        store.close();
        let added = Config::from_toml(&format!(
            "{before}[budget.agents.a]\nlimit = 1.0\n[concurrency]\nmax_wait = \"3s\"\n"
        ))
        .expect("valid");
        let err = state.reload(added).unwrap_err().to_string();
        assert!(
            err.contains("(agent:a) could not be read from the ledger"),
            "{err}"
        );
        assert!(state.config().budget.agents.is_empty(), "the old config");
        assert_ne!(
            state.config().concurrency.max_wait,
            std::time::Duration::from_secs(3)
        );
        let names: Vec<String> = state
            .shared
            .admission
            .budgets(None, state.moment())
            .into_iter()
            .map(|b| b.name)
            .collect();
        assert_eq!(names, ["global"]);
    }
}
