//! Sessions: one per handshaken connection, and the table of live ones.
//!
//! Architecture Invariant: what a connection holds, it gives back. Dropping a
//! [`Session`] removes it from the table and ends its reservations in the engine
//! (trial slots back at once, money-holding ones kept as orphans).
//!
//! The table keeps a count per agent name next to the sessions, so the operator's
//! view (`/metrics`, `/health`, `status`) reads two lengths instead of walking,
//! sorting and de-duplicating every session under the lock that connects and
//! disconnects take.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard, PoisonError};

use super::State;
use crate::access::Policy;
use crate::config::Config;
use crate::connection::Peer;

/// One handshaken connection. Dropping it ends the session: it leaves the session
/// table and every reservation it still holds is released.
pub struct Session {
    pub id: u64,
    /// Shared with the reservations the session makes.
    pub agent: Arc<str>,
    pub peer: Peer,
    state: State,
    views: Views,
}

/// The config and the access policy as of a generation of the state's
/// (`State::generation`), kept by the session: read through the state, each
/// request took a shared read lock and an `Arc` of each, atomic writes to two
/// cache lines every connection on every worker writes, so they moved
/// between the cores on every request (one of them under the engine lock,
/// in a report's owner check).
struct Views {
    generation: u64,
    config: Arc<Config>,
    access: Arc<Policy>,
}

/// A session's view of the config or the policy: its own copy when it is
/// current, else a fresh one from the state (a request that came before the
/// session looked again, `Session::refresh`).
pub enum Current<'s, T> {
    Kept(&'s T),
    Fresh(Arc<T>),
}

/// Live sessions by id, and how many of them act as each agent name.
#[derive(Debug, Default)]
pub(super) struct SessionTable {
    agent_of: HashMap<u64, String>,
    per_agent: HashMap<String, u32>,
}

// === impl State (sessions) ===

impl State {
    /// Registers a session for a connection that completed its handshake.
    pub fn open_session(&self, agent: String, peer: Peer) -> Session {
        let id = self.shared.next_session.fetch_add(1, Ordering::Relaxed);
        self.sessions().insert(id, &agent);
        Session {
            id,
            agent: Arc::from(agent),
            peer,
            views: Views::of(self),
            state: self.clone(),
        }
    }

    /// Live sessions, and the distinct agent names among them.
    pub fn session_counts(&self) -> (u32, u32) {
        let sessions = self.sessions();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        (
            count(sessions.agent_of.len()),
            count(sessions.per_agent.len()),
        )
    }

    fn sessions(&self) -> MutexGuard<'_, SessionTable> {
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl SessionTable ===

impl SessionTable {
    fn insert(&mut self, id: u64, agent: &str) {
        if let Some(n) = self.per_agent.get_mut(agent) {
            *n += 1;
        } else {
            self.per_agent.insert(agent.to_owned(), 1);
        }
        self.agent_of.insert(id, agent.to_owned());
    }

    fn remove(&mut self, id: u64) {
        let Some(agent) = self.agent_of.remove(&id) else {
            return;
        };
        if let Some(n) = self.per_agent.get_mut(&agent) {
            *n -= 1;
            if *n == 0 {
                self.per_agent.remove(&agent);
            }
        }
    }
}

// === impl Session ===

impl Session {
    /// Takes new copies of the config and the policy if a reload swapped
    /// them since the last look: one load of a counter only reloads write, so
    /// it stays in every core's cache. The connection calls this before each
    /// request.
    pub fn refresh(&mut self) {
        if self.views.generation != self.state.generation() {
            self.views = Views::of(&self.state);
        }
    }

    /// The config this session's requests are decided with.
    pub fn config(&self) -> Current<'_, Config> {
        if self.views.generation == self.state.generation() {
            Current::Kept(&self.views.config)
        } else {
            Current::Fresh(self.state.config())
        }
    }

    /// Who may act as which agent, as this session's requests are decided.
    pub fn access(&self) -> Current<'_, Policy> {
        if self.views.generation == self.state.generation() {
            Current::Kept(&self.views.access)
        } else {
            Current::Fresh(self.state.access())
        }
    }
}

impl Views {
    fn of(state: &State) -> Views {
        // The generation first: copies read after it are at least as new.
        let generation = state.generation();
        Views {
            generation,
            config: state.config(),
            access: state.access(),
        }
    }
}

impl<T> Deref for Current<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        match self {
            Current::Kept(kept) => kept,
            Current::Fresh(fresh) => fresh,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.state.sessions().remove(self.id);
        let (released, orphaned) = self
            .state
            .admission()
            .end_session(self.id, self.state.moment());
        if released + orphaned > 0 {
            log::info!(
                session = self.id, agent = &*self.agent, released = released, orphaned = orphaned;
                "session {} of agent {:?} ended with unreported reservations: {released} released without counting, {orphaned} holding money kept as orphans until budget.orphan_timeout",
                self.id, self.agent
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SharedClock;

    /// A session decides with its own copies of the config and the policy,
    /// and a reload reaches it: at once through the state (before it looks
    /// again), and as its own copies after `refresh`.
    #[test]
    fn a_reload_reaches_a_live_session_before_and_after_it_refreshes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, snapshot) = crate::store::Store::open(dir.path()).expect("ledger");
        let config = Config::from_toml("[concurrency]\nmax_wait = \"2s\"\n").expect("valid");
        let state = State::new(config, SharedClock::system(), store, &snapshot).expect("state");
        let mut session = state.open_session("a".into(), Peer::of_uid(1001));
        assert!(matches!(session.config(), Current::Kept(_)));
        assert!(session
            .access()
            .check_agent(&session.peer, "planner")
            .is_ok());
        let before = session.config().concurrency.max_wait;

        let reloaded = Config::from_toml(
            "[concurrency]\nmax_wait = \"3s\"\n[[agents]]\nname = \"planner\"\nuids = [1002]\n",
        )
        .expect("valid");
        state.reload(reloaded).expect("reloaded");
        // Not looked again yet: read through the state, new.
        assert!(matches!(session.config(), Current::Fresh(_)));
        assert_ne!(session.config().concurrency.max_wait, before);
        assert!(session
            .access()
            .check_agent(&session.peer, "planner")
            .is_err());
        // Looked again: its own copies, new.
        session.refresh();
        assert!(matches!(session.config(), Current::Kept(_)));
        assert!(matches!(session.access(), Current::Kept(_)));
        assert_eq!(
            session.config().concurrency.max_wait,
            std::time::Duration::from_secs(3)
        );
        assert!(session
            .access()
            .check_agent(&session.peer, "planner")
            .is_err());
        // A session opened after the reload starts with them.
        let later = state.open_session("b".into(), Peer::of_uid(1001));
        assert!(matches!(later.config(), Current::Kept(_)));
        assert!(later.access().check_agent(&later.peer, "planner").is_err());
    }

    #[test]
    fn agents_are_counted_once_while_any_of_their_sessions_lives() {
        let mut table = SessionTable::default();
        table.insert(1, "a");
        table.insert(2, "a");
        table.insert(3, "b");
        assert_eq!((table.agent_of.len(), table.per_agent.len()), (3, 2));
        table.remove(1);
        assert_eq!((table.agent_of.len(), table.per_agent.len()), (2, 2));
        table.remove(2);
        table.remove(2);
        assert_eq!((table.agent_of.len(), table.per_agent.len()), (1, 1));
        table.remove(3);
        assert!(table.per_agent.is_empty());
    }
}
