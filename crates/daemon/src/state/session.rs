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
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard, PoisonError};

use super::State;
use crate::connection::Peer;

/// One handshaken connection. Dropping it ends the session: it leaves the session
/// table and every reservation it still holds is released.
pub struct Session {
    pub id: u64,
    /// Shared with the reservations the session makes.
    pub agent: Arc<str>,
    pub peer: Peer,
    state: State,
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
