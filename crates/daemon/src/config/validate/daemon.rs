//! `[daemon]`, `[access]` and `[[agents]]`: where the daemon listens and keeps its
//! ledger, its limits, and who may connect or claim an agent name.

use super::super::raw::{RawAccess, RawAgent, RawDaemon, RawMode};
use super::super::{AccessConfig, AgentBinding, ConfigError, DaemonConfig, Mode, NamedGroup};
use super::{choice, invalid, name, positive};

pub(super) fn daemon(raw: RawDaemon) -> Result<DaemonConfig, ConfigError> {
    let mode = match choice("daemon.mode", "mode", raw.mode)? {
        RawMode::Enforce => Mode::Enforce,
        RawMode::Shadow => Mode::Shadow,
    };
    for (key, value) in [
        ("daemon.max_connections", raw.max_connections),
        (
            "daemon.max_connections_per_uid",
            raw.max_connections_per_uid,
        ),
        ("daemon.max_batch", raw.max_batch),
        ("daemon.max_services", raw.max_services),
        (
            "daemon.max_reservations_per_connection",
            raw.max_reservations_per_connection,
        ),
        (
            "daemon.max_reservations_per_uid",
            raw.max_reservations_per_uid,
        ),
        ("daemon.max_reservations", raw.max_reservations),
    ] {
        if value == 0 {
            return Err(invalid(key, "must be at least 1, got 0"));
        }
    }
    for (key, path) in [
        ("daemon.state_dir", &raw.state_dir),
        ("daemon.socket", &raw.socket),
    ] {
        if let Some(path) = path.as_ref().filter(|path| !path.is_absolute()) {
            return Err(invalid(
                key,
                format!("{} is relative; give an absolute path", path.display()),
            ));
        }
    }
    let socket_mode = u32::from_str_radix(&raw.socket_mode, 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| {
            invalid(
                "daemon.socket_mode",
                format!(
                    "{:?} is not a permission mode; write octal digits like \"0660\"",
                    raw.socket_mode
                ),
            )
        })?;
    if socket_mode & 0o600 != 0o600 {
        return Err(invalid(
            "daemon.socket_mode",
            format!(
                "{:?} does not let the daemon's own user connect; keep the owner bits rw (0600)",
                raw.socket_mode
            ),
        ));
    }
    if let Some(group) = &raw.socket_group {
        if group.is_empty() || group.contains('\0') {
            return Err(invalid(
                "daemon.socket_group",
                format!("{group:?} is not a group name"),
            ));
        }
    }
    Ok(DaemonConfig {
        socket: raw.socket,
        socket_group: raw.socket_group,
        socket_mode,
        max_connections: raw.max_connections,
        max_connections_per_uid: raw.max_connections_per_uid,
        max_batch: raw.max_batch,
        handshake_timeout: positive("daemon.handshake_timeout", &raw.handshake_timeout)?,
        idle_timeout: positive("daemon.idle_timeout", &raw.idle_timeout)?,
        drain_timeout: positive("daemon.drain_timeout", &raw.drain_timeout)?,
        mode,
        allow_unknown_services: raw.allow_unknown_services,
        max_services: raw.max_services,
        max_reservations_per_connection: raw.max_reservations_per_connection,
        max_reservations_per_uid: raw.max_reservations_per_uid,
        max_reservations: raw.max_reservations,
        state_dir: raw.state_dir,
        purge_interval: positive("daemon.purge_interval", &raw.purge_interval)?,
        commit_timeout: positive("daemon.commit_timeout", &raw.commit_timeout)?,
    })
}

pub(super) fn access(raw: RawAccess) -> Result<AccessConfig, ConfigError> {
    Ok(AccessConfig {
        agent_uids: raw.agent_uids,
        agent_groups: groups("access.agent_groups", raw.agent_groups)?,
        agent_gids: raw.agent_gids,
        admin_uids: raw.admin_uids,
        admin_groups: groups("access.admin_groups", raw.admin_groups)?,
        admin_gids: raw.admin_gids,
    })
}

/// Resolves group names now, so a rule means the same group for the daemon's whole
/// life. A group that does not exist matches nobody (the default names the
/// `automation-framework` group, which a host without the package lacks).
fn groups(key: &str, names: Vec<String>) -> Result<Vec<NamedGroup>, ConfigError> {
    names
        .into_iter()
        .enumerate()
        .map(|(idx, name)| {
            let key = format!("{key}[{idx}]");
            if name.is_empty() || name.contains('\0') {
                return Err(invalid(key, format!("{name:?} is not a group name")));
            }
            let gid = nix::unistd::Group::from_name(&name)
                .map_err(|e| invalid(&key, format!("looking up group {name:?}: {e}")))?
                .map(|group| group.gid.as_raw());
            Ok(NamedGroup { name, gid })
        })
        .collect()
}

pub(super) fn agents(raw: Vec<RawAgent>) -> Result<Vec<AgentBinding>, ConfigError> {
    let mut agents: Vec<AgentBinding> = Vec::with_capacity(raw.len());
    for (idx, raw) in raw.into_iter().enumerate() {
        let binding = agent(raw, &format!("agents[{idx}]"))?;
        if let Some(earlier) = agents.iter().position(|a| a.name == binding.name) {
            return Err(invalid(
                format!("agents[{idx}].name"),
                format!(
                    "{:?} is already bound by agents[{earlier}]; merge the two entries",
                    binding.name
                ),
            ));
        }
        agents.push(binding);
    }
    Ok(agents)
}

fn agent(raw: RawAgent, prefix: &str) -> Result<AgentBinding, ConfigError> {
    name(&format!("{prefix}.name"), &raw.name)?;
    if raw.uids.is_empty() && raw.gids.is_empty() {
        return Err(invalid(
            prefix,
            format!(
                "binds the agent name {:?} to no uid and no gid, so nobody could use it; give `uids` or `gids`",
                raw.name
            ),
        ));
    }
    Ok(AgentBinding {
        name: raw.name,
        uids: raw.uids,
        gids: raw.gids,
    })
}
