//! The shared daemon state: configuration, clock, the admission engine and the
//! table of live sessions, behind one cheaply clonable [`State`] handle.
//!
//! Files: this one holds the handle, its accessors and [`State::commit`] (the one
//! commit path); `reload.rs` the reload and its diff, `counters.rs` the limit-hit
//! counters, `session.rs` sessions and their table, `maintenance.rs` the periodic
//! purge, orphan settlement and store watch, `trim.rs` heap trimming.
//!
//! Architecture Invariant: nothing here is held across an `.await`; every lock is a
//! short synchronous critical section.
//!
//! Architecture Invariant: a reload swaps the config, the access policy and the
//! guards' settings as one step or not at all. A request reads `State::config()`
//! once and decides with that snapshot; a bad file or a change that needs a
//! restart leaves the old config in force entirely.

mod counters;
mod maintenance;
mod reload;
mod session;
mod trim;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use crate::access::{AccessDenied, Policy};
use crate::admission::{Admission, Durable, Moment, Pending};
use crate::alerts::Alerts;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::connection::Peer;
use crate::store::{Snapshot, Store};

pub use counters::{Counters, Limit};
pub use reload::ReloadSummary;
use session::SessionTable;
pub use session::{Current, Session};

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
    /// Bumped after every swap of `config` and `access`: what a session
    /// compares its own copies against (`session.rs`, `Views`). Whatever
    /// swaps either (today only `reload.rs`) must bump it after the swap, or
    /// sessions keep deciding with the old ones.
    generation: AtomicU64,
    sessions: Mutex<SessionTable>,
    counters: Counters,
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
                generation: AtomicU64::new(0),
                sessions: Mutex::new(SessionTable::default()),
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

    /// How many times `config` and `access` were swapped; read before them
    /// (`Acquire`, paired with the reload's `Release`), a copy taken after
    /// reading a generation is at least that new.
    pub(crate) fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
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
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
