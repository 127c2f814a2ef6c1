//! Who may ask: the access policy, decided from the kernel's peer credentials.
//!
//! Architecture Invariant: identity comes from the kernel, never from the client.
//! Every decision here takes a [`Peer`] read with SO_PEERCRED/SO_PEERGROUPS at accept;
//! the only thing a client says about itself is the agent name it claims, and that
//! claim is checked against `[[agents]]`.
//!
//! Three questions, each answered by one method, each refusal naming the uid and the
//! rule: may this peer connect ([`Policy::check_connect`]), may it act as this agent
//! ([`Policy::check_agent`]), may it run admin operations ([`Policy::check_admin`]).
//! The daemon's own effective uid may always connect and is always an admin, so an
//! operator running the daemon by hand as themselves can use it; agent-name bindings
//! apply to everyone, that uid and root included.
//!
//! Pure: no I/O, no logging. Group names were resolved when the config was loaded.

use std::collections::{HashMap, HashSet};

use crate::config::{AccessConfig, AgentBinding, NamedGroup};
use crate::connection::Peer;

/// The validated access rules, ready for lookups.
#[derive(Debug, Clone)]
pub struct Policy {
    daemon_uid: u32,
    agent_uids: HashSet<u32>,
    agent_gids: HashSet<u32>,
    admin_uids: HashSet<u32>,
    admin_gids: HashSet<u32>,
    bindings: HashMap<String, Binding>,
}

#[derive(Debug, Clone)]
struct Binding {
    /// Index in `[[agents]]`, to name the rule in refusals.
    index: usize,
    uids: HashSet<u32>,
    gids: HashSet<u32>,
}

/// Why a peer was refused. The messages name the uid and the rule to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessDenied {
    #[error("uid {uid} (gid {gid}) may not connect: no rule of [access] lets it in (agent_uids, agent_groups, agent_gids, admin_uids, admin_groups, admin_gids); ask the operator to add it")]
    NotAllowed { uid: u32, gid: u32 },
    #[error("uid {uid} (gid {gid}) may not act as agent {agent:?}: agents[{index}] reserves that name for other users")]
    AgentBound {
        uid: u32,
        gid: u32,
        agent: String,
        index: usize,
    },
    #[error("uid {uid} (gid {gid}) may not run admin operations: it is not in access.admin_uids, access.admin_groups or access.admin_gids")]
    NotAdmin { uid: u32, gid: u32 },
}

// === impl Policy ===

impl Policy {
    /// Builds the policy of a validated config for a daemon running as `daemon_uid`.
    pub fn new(access: &AccessConfig, agents: &[AgentBinding], daemon_uid: u32) -> Policy {
        let gids = |named: &[NamedGroup], numeric: &[u32]| -> HashSet<u32> {
            named
                .iter()
                .filter_map(|group| group.gid)
                .chain(numeric.iter().copied())
                .collect()
        };
        Policy {
            daemon_uid,
            agent_uids: access.agent_uids.iter().copied().collect(),
            agent_gids: gids(&access.agent_groups, &access.agent_gids),
            admin_uids: access.admin_uids.iter().copied().collect(),
            admin_gids: gids(&access.admin_groups, &access.admin_gids),
            bindings: agents
                .iter()
                .enumerate()
                .map(|(index, agent)| {
                    let binding = Binding {
                        index,
                        uids: agent.uids.iter().copied().collect(),
                        gids: agent.gids.iter().copied().collect(),
                    };
                    (agent.name.clone(), binding)
                })
                .collect(),
        }
    }

    /// May `peer` connect at all? Agents and admins may.
    ///
    /// # Errors
    /// [`AccessDenied::NotAllowed`].
    pub fn check_connect(&self, peer: &Peer) -> Result<(), AccessDenied> {
        let agent = self.agent_uids.contains(&peer.uid) || in_groups(peer, &self.agent_gids);
        if agent || self.check_admin(peer).is_ok() {
            return Ok(());
        }
        Err(AccessDenied::NotAllowed {
            uid: peer.uid,
            gid: peer.gid,
        })
    }

    /// May `peer` run admin operations (force a breaker; later reload, reset, set
    /// budgets)?
    ///
    /// # Errors
    /// [`AccessDenied::NotAdmin`].
    pub fn check_admin(&self, peer: &Peer) -> Result<(), AccessDenied> {
        if peer.uid == self.daemon_uid
            || self.admin_uids.contains(&peer.uid)
            || in_groups(peer, &self.admin_gids)
        {
            return Ok(());
        }
        Err(AccessDenied::NotAdmin {
            uid: peer.uid,
            gid: peer.gid,
        })
    }

    /// May `peer` act as `agent`? A name without an `[[agents]]` entry is free for
    /// any peer that may connect; a bound name only for its uids and gids.
    ///
    /// # Errors
    /// [`AccessDenied::AgentBound`].
    pub fn check_agent(&self, peer: &Peer, agent: &str) -> Result<(), AccessDenied> {
        let Some(binding) = self.bindings.get(agent) else {
            return Ok(());
        };
        if binding.uids.contains(&peer.uid) || in_groups(peer, &binding.gids) {
            return Ok(());
        }
        Err(AccessDenied::AgentBound {
            uid: peer.uid,
            gid: peer.gid,
            agent: agent.to_owned(),
            index: binding.index,
        })
    }
}

/// Is the peer's primary or one of its supplementary groups in `gids`?
fn in_groups(peer: &Peer, gids: &HashSet<u32>) -> bool {
    gids.contains(&peer.gid) || peer.groups.iter().any(|gid| gids.contains(gid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const DAEMON: u32 = 999;

    fn policy(toml: &str) -> Policy {
        let config = Config::from_toml(toml).expect("test config is valid");
        Policy::new(&config.access, &config.agents, DAEMON)
    }

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            pid: 4242,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn the_default_lets_in_root_and_the_daemon_uid_only() {
        // The test host has no `automation-framework` group (it would match its gid).
        let policy = policy("");
        assert_eq!(policy.check_connect(&peer(0, 0, &[])), Ok(()));
        assert_eq!(policy.check_connect(&peer(DAEMON, 5, &[])), Ok(()));
        assert_eq!(policy.check_admin(&peer(0, 0, &[])), Ok(()));
        assert_eq!(policy.check_admin(&peer(DAEMON, 5, &[])), Ok(()));
        let err = policy.check_connect(&peer(1001, 1001, &[27])).unwrap_err();
        assert_eq!(
            err,
            AccessDenied::NotAllowed {
                uid: 1001,
                gid: 1001
            }
        );
        assert!(err
            .to_string()
            .starts_with("uid 1001 (gid 1001) may not connect"));
    }

    #[test]
    fn groups_match_by_primary_or_supplementary_gid() {
        let policy = policy("[access]\nagent_gids = [500]\nadmin_gids = [600]\n");
        assert_eq!(policy.check_connect(&peer(1001, 500, &[])), Ok(()));
        assert_eq!(policy.check_connect(&peer(1001, 1001, &[7, 500])), Ok(()));
        assert!(policy.check_admin(&peer(1001, 1001, &[7, 500])).is_err());
        // An admin may connect without also being listed as an agent.
        assert_eq!(policy.check_connect(&peer(1002, 1002, &[600])), Ok(()));
        assert_eq!(policy.check_admin(&peer(1002, 1002, &[600])), Ok(()));
    }

    #[test]
    fn a_group_that_does_not_exist_matches_nobody() {
        let policy = policy("[access]\nagent_uids = []\nagent_groups = [\"no-such-group-af\"]\n");
        assert!(policy.check_connect(&peer(1001, 1001, &[])).is_err());
        // Root stays an admin (admin_uids default), and admins may connect.
        assert_eq!(policy.check_connect(&peer(0, 0, &[])), Ok(()));
    }

    #[test]
    fn an_existing_group_is_resolved_by_name() {
        // gid 0 is `root` on every Linux host.
        let policy =
            policy("[access]\nagent_uids = []\nadmin_uids = []\nagent_groups = [\"root\"]\n");
        assert_eq!(policy.check_connect(&peer(1001, 1001, &[0])), Ok(()));
        assert!(policy.check_admin(&peer(0, 0, &[])).is_err());
    }

    /// Issue 10: "by default root and the daemon's user" read as if gid 0 made
    /// a peer an admin. It does not: by default only uid 0 (`admin_uids`) and the
    /// daemon's own uid are admins; a group counts only when listed.
    #[test]
    fn by_default_gid_0_does_not_make_an_admin() {
        let default = policy("[access]\nagent_uids = [1001]\n");
        assert!(
            default.check_admin(&peer(1001, 0, &[])).is_err(),
            "primary gid 0"
        );
        assert!(
            default.check_admin(&peer(1001, 1001, &[0])).is_err(),
            "supplementary gid 0"
        );
        assert_eq!(default.check_admin(&peer(0, 1001, &[])), Ok(()), "uid 0");
        assert_eq!(
            default.check_admin(&peer(DAEMON, 1001, &[])),
            Ok(()),
            "the daemon's uid"
        );
        let listed = policy("[access]\nadmin_gids = [0]\n");
        assert_eq!(
            listed.check_admin(&peer(1001, 1001, &[0])),
            Ok(()),
            "when listed"
        );
    }

    #[test]
    fn agent_names_bound_to_users() {
        let policy = policy(
            "[access]\nagent_uids = [1001, 1002, 1003]\n\
             [[agents]]\nname = \"planner\"\nuids = [1001]\n\
             [[agents]]\nname = \"batch\"\ngids = [700]\n",
        );
        let alice = peer(1001, 1001, &[]);
        let bob = peer(1002, 1002, &[700]);
        let carol = peer(1003, 1003, &[]);
        assert_eq!(policy.check_agent(&alice, "planner"), Ok(()));
        assert_eq!(policy.check_agent(&bob, "batch"), Ok(()));
        assert_eq!(policy.check_agent(&carol, "anything-else"), Ok(()));
        let err = policy.check_agent(&bob, "planner").unwrap_err();
        assert_eq!(
            err.to_string(),
            "uid 1002 (gid 1002) may not act as agent \"planner\": agents[0] reserves that name for other users"
        );
        assert!(matches!(
            policy.check_agent(&carol, "batch"),
            Err(AccessDenied::AgentBound { index: 1, .. })
        ));
        // Bindings hold for root and the daemon's uid too.
        assert!(policy.check_agent(&peer(0, 0, &[]), "planner").is_err());
        assert!(policy
            .check_agent(&peer(DAEMON, 0, &[]), "planner")
            .is_err());
    }
}
