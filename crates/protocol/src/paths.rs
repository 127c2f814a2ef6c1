//! Where the agent socket lives, for the daemon and for clients alike.

use std::path::PathBuf;

/// The environment variable clients read for the socket path.
pub const SOCKET_ENV: &str = "AUTOMATION_FRAMEWORK_SOCKET";

/// The socket under systemd (`RuntimeDirectory=automation-framework`).
pub const SYSTEM_SOCKET: &str = "/run/automation-framework/agent.sock";

/// The socket a daemon started by hand listens on: root uses the system path,
/// anyone else `$XDG_RUNTIME_DIR/automation-framework/agent.sock` (or a per-uid
/// directory under /tmp when there is no runtime directory).
pub fn default_socket() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from(SYSTEM_SOCKET);
    }
    user_socket()
}

/// Where a client looks when neither `--socket` nor the environment says: the
/// system daemon's socket if it exists, else the per-user one.
pub fn client_socket() -> PathBuf {
    if let Some(path) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let system = PathBuf::from(SYSTEM_SOCKET);
    if system.exists() {
        return system;
    }
    default_socket()
}

fn user_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("automation-framework/agent.sock"),
        None => PathBuf::from(format!(
            "/tmp/automation-framework-{}/agent.sock",
            nix::unistd::geteuid()
        )),
    }
}

/// The ledger's directory under systemd (`StateDirectory=automation-framework`).
pub const SYSTEM_STATE_DIR: &str = "/var/lib/automation-framework";

/// Where the ledger lives when neither `--state-dir` nor the config says:
/// systemd's `$STATE_DIRECTORY`, the system path for root, else the user's
/// `$XDG_STATE_HOME/automation-framework` (`~/.local/state/automation-framework`).
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
        // systemd may pass several, separated by ':'; ours is the first.
        let dir = PathBuf::from(dir);
        let first = dir.to_string_lossy().split(':').next().map(PathBuf::from);
        return first.unwrap_or(dir);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from(SYSTEM_STATE_DIR);
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("automation-framework");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/automation-framework"),
        None => PathBuf::from(format!(
            "/tmp/automation-framework-{}/state",
            nix::unistd::geteuid()
        )),
    }
}
