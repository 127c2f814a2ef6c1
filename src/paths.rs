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
