//! The shared daemon state: configuration, clock, the admission engine and the
//! table of live sessions, behind one cheaply clonable [`State`] handle.
//!
//! Architecture Invariant: nothing here is held across an `.await`; every lock is a
//! short synchronous critical section.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::access::{AccessDenied, Policy};
use crate::admission::Admission;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::connection::Peer;

/// How often full rate-limit buckets are forgotten.
const PURGE_EVERY: Duration = Duration::from_secs(30);

/// The handle every connection task holds.
#[derive(Clone)]
pub struct State {
    shared: Arc<Shared>,
}

struct Shared {
    config: Arc<Config>,
    clock: SharedClock,
    access: Policy,
    admission: Admission,
    started: Duration,
    next_session: AtomicU64,
    sessions: Mutex<HashMap<u64, SessionInfo>>,
}

struct SessionInfo {
    agent: String,
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
    /// Builds the state for a validated config, for a daemon running as this
    /// process's effective uid.
    ///
    /// # Errors
    /// When the guards cannot be built from the config.
    pub fn new(config: Config, clock: SharedClock) -> anyhow::Result<State> {
        let access = Policy::new(
            &config.access,
            &config.agents,
            nix::unistd::geteuid().as_raw(),
        );
        let config = Arc::new(config);
        let admission = Admission::new(Arc::clone(&config), &clock)
            .map_err(|e| anyhow::anyhow!("building the guards: {e}"))?;
        let started = clock.now();
        Ok(State {
            shared: Arc::new(Shared {
                config,
                clock,
                access,
                admission,
                started,
                next_session: AtomicU64::new(1),
                sessions: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The guards' `now`; read once per request.
    pub fn now(&self) -> Duration {
        self.shared.clock.now()
    }

    /// Who may connect and act as which agent.
    pub fn access(&self) -> &Policy {
        &self.shared.access
    }

    pub fn admission(&self) -> &Admission {
        &self.shared.admission
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
        self.shared.access.check_admin(peer)
    }

    /// Live sessions, and the distinct agent names among them.
    pub fn session_counts(&self) -> (u32, u32) {
        let sessions = self.sessions();
        let mut agents: Vec<&str> = sessions.values().map(|s| s.agent.as_str()).collect();
        agents.sort_unstable();
        agents.dedup();
        (sessions.len() as u32, agents.len() as u32)
    }

    /// Periodic housekeeping until `shutdown` fires.
    pub async fn maintain(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(PURGE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.admission().purge(),
            }
        }
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<u64, SessionInfo>> {
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl Session ===

impl Drop for Session {
    fn drop(&mut self) {
        self.state.sessions().remove(&self.id);
        let released = self.state.admission().release_session(self.id);
        if released > 0 {
            log::info!(
                session = self.id, agent = self.agent.as_str(), released = released;
                "session {} of agent {:?} ended with {released} unreported reservation(s); released without counting",
                self.id, self.agent
            );
        }
    }
}
