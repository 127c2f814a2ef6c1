//! The shared daemon state: configuration, clock, the admission engine and the
//! table of live sessions, behind one cheaply clonable [`State`] handle.
//!
//! Architecture Invariant: nothing here is held across an `.await`; every lock is a
//! short synchronous critical section.
//!
//! Architecture Invariant: a reload swaps the config, the access policy and the
//! guards' settings as one step or not at all. A request reads `State::config()`
//! once and decides with that snapshot; a bad file or a change that needs a
//! restart leaves the old config in force entirely.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::access::{AccessDenied, Policy};
use crate::admission::{Admission, Durable, Moment, Pending, Reconfigured, ReloadError};
use crate::alerts::{Alert, Alerts};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::connection::Peer;
use crate::store::{Snapshot, Store};

/// Rate buckets forgotten in one purge beyond which the freed heap is handed back
/// to the kernel (`malloc_trim`). A bucket's table slot is 41 bytes (a long key
/// adds a heap block), the table half to 7/8 full, so this is a few MiB; below it
/// a walk of the heap is not worth it.
const TRIM_AFTER_FORGOTTEN: usize = 50_000;

/// How often orphaned reservations are checked for settlement.
const SETTLE_EVERY: Duration = Duration::from_secs(1);

/// The handle every connection task holds.
#[derive(Clone)]
pub struct State {
    shared: Arc<Shared>,
}

struct Shared {
    /// Swapped whole by a reload; readers clone the `Arc` and never hold the lock.
    config: RwLock<Arc<Config>>,
    clock: SharedClock,
    access: RwLock<Arc<Policy>>,
    /// The file a reload reads; `None`: the built-in defaults.
    config_path: Mutex<Option<PathBuf>>,
    /// One reload at a time (SIGHUP and the `Reload` request may race).
    reloading: Mutex<()>,
    admission: Arc<Admission>,
    store: Store,
    alerts: Alerts,
    started: Duration,
    next_session: AtomicU64,
    sessions: Mutex<HashMap<u64, SessionInfo>>,
    counters: Counters,
}

struct SessionInfo {
    agent: String,
}

/// What a reload changed, for the log and the `Reload` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    pub guards: Reconfigured,
    /// Settings that differ but apply at restart only.
    pub restart_only: Vec<&'static str>,
}

/// A limit or an access rule that turned something away. Each is counted in
/// [`Counters`], exported on `/metrics` as `automation_framework_limit_hits_total`
/// labelled by [`Limit::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// A peer no `[access]` rule lets in.
    NotPermitted,
    /// `daemon.max_connections`.
    MaxConnections,
    /// `daemon.max_connections_per_uid`.
    MaxConnectionsPerUid,
    /// `daemon.handshake_timeout`.
    HandshakeTimeout,
    /// `daemon.idle_timeout` while waiting for a request.
    IdleTimeout,
    /// `daemon.idle_timeout` while waiting for the peer to read its replies.
    SlowReader,
    /// A length prefix over the frame limit.
    FrameTooLarge,
    /// A frame that is not a valid message.
    Malformed,
    /// `daemon.max_batch`.
    MaxBatch,
    /// A reply that would not fit in a frame, answered with an error instead.
    ReplyTooLarge,
    /// An agent name reserved by `[[agents]]` for other users.
    AgentName,
    /// An admin operation by a peer that is not an admin.
    AdminOnly,
}

/// How often each [`Limit`] was hit since the daemon started. Plain atomics, bumped
/// with `Relaxed` ordering: each is an independent count, read for reporting only.
#[derive(Debug, Default)]
pub struct Counters {
    hits: [AtomicU64; Limit::ALL.len()],
}

/// One handshaken connection. Dropping it ends the session: it leaves the session
/// table and every reservation it still holds is released.
pub struct Session {
    pub id: u64,
    pub agent: String,
    pub peer: Peer,
    state: State,
}

// === impl State ===

impl State {
    /// Builds the state for a validated config, on an opened ledger and what it
    /// held at startup, for a daemon running as this process's effective uid.
    ///
    /// # Errors
    /// When the guards cannot be built from the config.
    pub fn new(
        config: Config,
        clock: SharedClock,
        store: Store,
        snapshot: &Snapshot,
    ) -> anyhow::Result<State> {
        State::with_alerts(config, clock, store, snapshot, Alerts::disabled())
    }

    /// [`State::new`], raising alerts on `alerts` (the daemon's `main` runs the
    /// matching [`crate::alerts::Delivery`]); `State::new` only logs them.
    ///
    /// # Errors
    /// When the guards cannot be built from the config.
    pub fn with_alerts(
        config: Config,
        clock: SharedClock,
        store: Store,
        snapshot: &Snapshot,
        alerts: Alerts,
    ) -> anyhow::Result<State> {
        let access = Policy::new(
            &config.access,
            &config.agents,
            nix::unistd::geteuid().as_raw(),
        );
        let config = Arc::new(config);
        let admission = Admission::new(Arc::clone(&config), &clock, snapshot, alerts.clone())
            .map_err(|e| anyhow::anyhow!("building the guards: {e}"))?;
        let started = clock.now();
        Ok(State {
            shared: Arc::new(Shared {
                config: RwLock::new(config),
                clock,
                access: RwLock::new(Arc::new(access)),
                config_path: Mutex::new(None),
                reloading: Mutex::new(()),
                admission: Arc::new(admission),
                store,
                alerts,
                started,
                next_session: AtomicU64::new(1),
                sessions: Mutex::new(HashMap::new()),
                counters: Counters::default(),
            }),
        })
    }

    /// The config in force; a request reads it once and decides with it.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(
            &self
                .shared
                .config
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

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
        let result = loaded.and_then(|config| self.reload(config));
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
        let guards = self.shared.admission.reconfigure(
            Arc::clone(&new),
            &self.shared.clock,
            self.moment(),
        )?;
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
        Ok(ReloadSummary {
            guards,
            restart_only,
        })
    }

    /// The guards' `now`; read once per request.
    pub fn now(&self) -> Duration {
        self.shared.clock.now()
    }

    /// The guards' moment (monotonic and wall time); read once per request.
    pub fn moment(&self) -> Moment {
        Moment {
            mono: self.shared.clock.now(),
            unix: self.shared.clock.unix(),
        }
    }

    /// Who may connect and act as which agent.
    pub fn access(&self) -> Arc<Policy> {
        Arc::clone(
            &self
                .shared
                .access
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// How often limits and access rules turned something away.
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    pub fn admission(&self) -> &Admission {
        &self.shared.admission
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The one commit path ([`Admission::commit`]): writes a durable decision's
    /// entries and applies it to memory when the ledger answers, whether or not
    /// the returned future is still awaited.
    pub fn commit<P: Pending>(
        &self,
        durable: Durable<P>,
    ) -> impl std::future::Future<Output = Result<P::Output, crate::store::StoreError>> + Send + 'static
    {
        self.shared
            .admission
            .commit(&self.shared.store, &self.shared.clock, durable)
    }

    /// Where operator alerts are raised; raising never blocks.
    pub fn alerts(&self) -> &Alerts {
        &self.shared.alerts
    }

    pub fn uptime(&self) -> Duration {
        self.now().saturating_sub(self.shared.started)
    }

    /// Registers a session for a connection that completed its handshake.
    pub fn open_session(&self, agent: String, peer: Peer) -> Session {
        let id = self.shared.next_session.fetch_add(1, Ordering::Relaxed);
        self.sessions().insert(
            id,
            SessionInfo {
                agent: agent.clone(),
            },
        );
        Session {
            id,
            agent,
            peer,
            state: self.clone(),
        }
    }

    /// May this peer run admin operations (set limits, reset windows, refund, force
    /// breakers)? The single place that decides, by the `[access]` policy: the
    /// daemon's own uid, `access.admin_uids`, `access.admin_groups`,
    /// `access.admin_gids`.
    pub fn is_admin(&self, peer: &Peer) -> bool {
        self.require_admin(peer).is_ok()
    }

    /// [`State::is_admin`], with the refusal that names the uid and the rule.
    ///
    /// # Errors
    /// [`AccessDenied::NotAdmin`].
    pub fn require_admin(&self, peer: &Peer) -> Result<(), AccessDenied> {
        self.access().check_admin(peer)
    }

    /// Live sessions, and the distinct agent names among them.
    pub fn session_counts(&self) -> (u32, u32) {
        let sessions = self.sessions();
        let mut agents: Vec<&str> = sessions.values().map(|s| s.agent.as_str()).collect();
        agents.sort_unstable();
        agents.dedup();
        (sessions.len() as u32, agents.len() as u32)
    }

    /// Periodic housekeeping until `shutdown` fires: forgetting idle keyed state
    /// every `daemon.purge_interval` and giving the memory back, and settling
    /// orphaned reservations whose timeout passed. A reload's new interval is
    /// noticed within a second and starts with a purge.
    pub async fn maintain(self, shutdown: CancellationToken) {
        let every = |interval: Duration| {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        };
        let mut purge_interval = self.config().daemon.purge_interval;
        let mut purge = every(purge_interval);
        let mut settle = every(SETTLE_EVERY);
        let mut store_failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = purge.tick() => {
                    self.admission().purge(self.moment());
                    let forgotten = crate::guard::rate::take_forgotten();
                    if forgotten >= TRIM_AFTER_FORGOTTEN {
                        // The tables the store outgrew on the way up, long keys,
                        // and whatever was allocated among them stay resident
                        // with glibc until asked (10 to 20 MiB after a million
                        // keys). The walk took 1 ms after a million short keys,
                        // but 0.13 s after 775,000 small heap blocks (String
                        // keys, as long keys still are): not on a worker thread.
                        let started = std::time::Instant::now();
                        let trimmed = tokio::task::spawn_blocking(trim_heap).await.unwrap_or(false);
                        log::debug!(
                            "purge forgot {forgotten} rate buckets; heap trimmed in {:?} (memory returned: {trimmed})",
                            started.elapsed()
                        );
                    }
                }
                _ = settle.tick() => {
                    let configured = self.config().daemon.purge_interval;
                    if configured != purge_interval {
                        // Its first tick is immediate: the new interval starts now.
                        purge_interval = configured;
                        purge = every(purge_interval);
                    }
                    self.settle_orphans().await;
                    store_failing = self.watch_store(store_failing);
                }
            }
        }
    }

    /// Raises a store alert when the ledger starts failing (the writer thread
    /// records why in `Store::health`); returns whether it is failing now. Watched
    /// here, once a second, so the writer thread knows nothing of alerts.
    fn watch_store(&self, was_failing: bool) -> bool {
        match self.store().health() {
            Some(reason) => {
                if !was_failing {
                    self.alerts().raise(Alert::StoreFailed { reason });
                }
                true
            }
            None => false,
        }
    }

    /// Settles every due orphan by policy, durably; one that fails to write stays
    /// open and is tried again at the next tick. The settlements share group
    /// commits: all are queued before any is awaited.
    pub async fn settle_orphans(&self) {
        let commits: Vec<_> = self
            .admission()
            .due_orphans(self.moment())
            .into_iter()
            .map(|durable| self.commit(durable))
            .collect();
        for commit in commits {
            let _ = commit.await;
        }
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<u64, SessionInfo>> {
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Hands free heap memory back to the kernel: glibc returns freed blocks to the
/// system only from the top of its heaps (and unmaps only blocks above its mmap
/// threshold, which rises to 32 MiB as large blocks are freed), so what a burst
/// of keys left behind stays resident until `malloc_trim` releases the whole free
/// pages inside the heaps.
/// Returns whether any memory was released. A no-op on other C libraries.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_heap() -> bool {
    // SAFETY: malloc_trim takes no pointers and only rearranges the allocator's
    // own free lists under its own locks; it is safe to call from any thread at
    // any time.
    unsafe { nix::libc::malloc_trim(0) != 0 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() -> bool {
    false
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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

// === impl Limit ===

impl Limit {
    pub const ALL: [Limit; 12] = [
        Limit::NotPermitted,
        Limit::MaxConnections,
        Limit::MaxConnectionsPerUid,
        Limit::HandshakeTimeout,
        Limit::IdleTimeout,
        Limit::SlowReader,
        Limit::FrameTooLarge,
        Limit::Malformed,
        Limit::MaxBatch,
        Limit::ReplyTooLarge,
        Limit::AgentName,
        Limit::AdminOnly,
    ];

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Limit::NotPermitted => "not_permitted",
            Limit::MaxConnections => "max_connections",
            Limit::MaxConnectionsPerUid => "max_connections_per_uid",
            Limit::HandshakeTimeout => "handshake_timeout",
            Limit::IdleTimeout => "idle_timeout",
            Limit::SlowReader => "slow_reader",
            Limit::FrameTooLarge => "frame_too_large",
            Limit::Malformed => "malformed",
            Limit::MaxBatch => "max_batch",
            Limit::ReplyTooLarge => "reply_too_large",
            Limit::AgentName => "agent_name",
            Limit::AdminOnly => "admin_only",
        }
    }
}

// === impl Counters ===

impl Counters {
    pub fn hit(&self, limit: Limit) {
        self.hits[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, limit: Limit) -> u64 {
        self.hits[limit as usize].load(Ordering::Relaxed)
    }

    /// Every limit with its count, in [`Limit::ALL`] order.
    pub fn snapshot(&self) -> Vec<(Limit, u64)> {
        Limit::ALL
            .iter()
            .map(|&limit| (limit, self.get(limit)))
            .collect()
    }
}

// === impl Session ===

impl Drop for Session {
    fn drop(&mut self) {
        self.state.sessions().remove(&self.id);
        let (released, orphaned) = self
            .state
            .admission()
            .end_session(self.id, self.state.moment());
        if released + orphaned > 0 {
            log::info!(
                session = self.id, agent = self.agent.as_str(), released = released, orphaned = orphaned;
                "session {} of agent {:?} ended with unreported reservations: {released} released without counting, {orphaned} holding money kept as orphans until budget.orphan_timeout",
                self.id, self.agent
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_store_is_alerted_once_while_it_fails() {
        let (alerts, delivery) = Alerts::new(&crate::alerts::AlertsConfig {
            webhook: Some(crate::alerts::WebhookUrl::parse("http://127.0.0.1:9/").expect("valid")),
            ..Default::default()
        });
        let mut delivery = delivery.expect("a webhook is configured");
        let store = Store::unavailable(
            std::path::Path::new("/nonexistent/ledger"),
            "disk gone".into(),
        );
        let state = State::with_alerts(
            Config::default(),
            SharedClock::system(),
            store,
            &Snapshot::default(),
            alerts,
        )
        .expect("state");
        assert!(state.watch_store(false));
        assert!(state.watch_store(true));
        assert!(matches!(
            delivery.try_next(),
            Some(Alert::StoreFailed { reason }) if reason.contains("disk gone")
        ));
        assert_eq!(delivery.try_next(), None, "raised on the transition only");
    }

    #[test]
    fn every_limit_has_its_own_counter() {
        for (idx, limit) in Limit::ALL.iter().enumerate() {
            assert_eq!(*limit as usize, idx, "Limit::ALL is in declaration order");
        }
        let counters = Counters::default();
        counters.hit(Limit::MaxBatch);
        counters.hit(Limit::MaxBatch);
        counters.hit(Limit::AdminOnly);
        assert_eq!(counters.get(Limit::MaxBatch), 2);
        assert_eq!(counters.get(Limit::AdminOnly), 1);
        assert_eq!(counters.snapshot().iter().map(|(_, n)| n).sum::<u64>(), 3);
    }
}
