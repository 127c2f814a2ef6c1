//! Binding the agent socket by path, for a daemon not started by socket activation
//! (under activation systemd creates the file with `SocketUser=`, `SocketGroup=` and
//! `SocketMode=`, and nothing here runs).
//!
//! The path may hold a socket left by a daemon that crashed (remove it), a socket
//! another daemon is still serving (refuse: never steal it), or something that is
//! not ours at all: a regular file, a symlink planted there, or a socket owned by
//! another user (refuse, because following, deleting or taking it could be used
//! against us). The directory must be one no other user can rearrange: owned by
//! this daemon's user or root, and not writable by others unless sticky (`/tmp`).
//!
//! The socket gets its mode and group after `bind`, by path and without following
//! symlinks (`fchmodat`/`fchownat` with `AT_SYMLINK_NOFOLLOW`): `fchmod`/`fchown` on
//! the bound fd do not change the file (docs/DEPENDENCIES.md), and a plain `chmod`/`chown` would
//! follow a symlink swapped in after `bind`. Anyone who connects in the moment
//! between `bind` and `chmod` is still subject to the `[access]` policy.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{fchmodat, FchmodatFlags, Mode};
use nix::unistd::{fchownat, Gid, Group};
use tokio::net::UnixListener;

use crate::config::DaemonConfig;

/// Permissions of the socket file by default: owner and group may connect.
pub const SOCKET_MODE: u32 = 0o660;
/// Permissions of a socket directory we create.
pub const DIR_MODE: u32 = 0o750;
/// The group a daemon running as root gives its socket when none is configured, if
/// the host has it.
pub const DEFAULT_GROUP: &str = "automation-framework";

/// Mode and group of the socket file (`daemon.socket_mode`, `daemon.socket_group`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketPerms {
    pub mode: u32,
    /// `None`: the `automation-framework` group when running as root and the host
    /// has it, else the daemon's own group.
    pub group: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "another daemon is already listening on {0}; stop it first or choose another --socket"
    )]
    InUse(PathBuf),
    #[error("{0} is a symbolic link; refusing to follow it. Remove it or choose another --socket")]
    Symlink(PathBuf),
    #[error("{0} exists and is not a socket; remove it or choose another --socket")]
    NotASocket(PathBuf),
    #[error("{path} belongs to uid {owner}, not to this daemon's uid {daemon}: another user's daemon, or a trap; refusing to touch it. Remove it yourself if it is stale, or choose another --socket")]
    OwnedByOther {
        path: PathBuf,
        owner: u32,
        daemon: u32,
    },
    #[error("the socket directory {dir} {problem}, so another user could replace the socket; use a directory owned by uid {daemon} or root and writable only by its owner (or sticky, like /tmp)")]
    UnsafeDir {
        dir: PathBuf,
        problem: String,
        daemon: u32,
    },
    #[error(
        "daemon.socket_group: no group named {0:?} on this host; create it or change the setting"
    )]
    NoSuchGroup(String),
    #[error("daemon.socket_group: looking up group {name:?}: {source}")]
    GroupLookup {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

// === impl SocketPerms ===

impl Default for SocketPerms {
    fn default() -> Self {
        SocketPerms {
            mode: SOCKET_MODE,
            group: None,
        }
    }
}

impl SocketPerms {
    pub fn from_config(daemon: &DaemonConfig) -> SocketPerms {
        SocketPerms {
            mode: daemon.socket_mode,
            group: daemon.socket_group.clone(),
        }
    }

    /// The group to give the socket (and a directory we create), with its name.
    fn resolve_group(&self) -> Result<Option<(String, Gid)>, SocketError> {
        let lookup = |name: &str| {
            Group::from_name(name).map_err(|source| SocketError::GroupLookup {
                name: name.to_owned(),
                source,
            })
        };
        match &self.group {
            Some(name) => match lookup(name)? {
                Some(group) => Ok(Some((group.name, group.gid))),
                None => Err(SocketError::NoSuchGroup(name.clone())),
            },
            None if nix::unistd::geteuid().is_root() => {
                Ok(lookup(DEFAULT_GROUP)?.map(|group| (group.name, group.gid)))
            }
            None => Ok(None),
        }
    }
}

/// Binds `path` as described in the module doc, with `perms`.
///
/// # Errors
/// A [`SocketError`] saying what was found at the path and what to do.
pub fn bind(path: &Path, perms: &SocketPerms) -> Result<UnixListener, SocketError> {
    let io_err = |what, source| SocketError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    let daemon_uid = nix::unistd::geteuid().as_raw();
    let group = perms.resolve_group()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(|e| io_err("creating the socket directory", e))?;
            // Group members must be able to reach the socket inside.
            if let Some((name, gid)) = &group {
                set_group(dir, name, *gid)?;
            }
        }
        check_dir(dir, daemon_uid)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(SocketError::Symlink(path.to_owned()))
        }
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(SocketError::NotASocket(path.to_owned()))
        }
        Ok(meta) if meta.uid() != daemon_uid => {
            return Err(SocketError::OwnedByOther {
                path: path.to_owned(),
                owner: meta.uid(),
                daemon: daemon_uid,
            })
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(SocketError::InUse(path.to_owned())),
            Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                log::info!("removing stale socket {}", path.display());
                std::fs::remove_file(path).map_err(|e| io_err("removing the stale socket", e))?;
            }
            Err(err) => return Err(io_err("probing the existing socket", err)),
        },
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_err("inspecting", err)),
    }
    let listener = UnixListener::bind(path).map_err(|e| io_err("binding", e))?;
    fchmodat(
        AT_FDCWD,
        path,
        Mode::from_bits_truncate(perms.mode),
        FchmodatFlags::NoFollowSymlink,
    )
    .map_err(|e| io_err("setting the mode of", io::Error::from(e)))?;
    if let Some((name, gid)) = &group {
        set_group(path, name, *gid)?;
    }
    log::info!(
        "socket {} has mode {:04o}, group {}",
        path.display(),
        perms.mode,
        group
            .as_ref()
            .map_or("unchanged (the daemon's own)", |(name, _)| name.as_str())
    );
    Ok(listener)
}

/// Gives `path` to group `gid`, without following a symlink.
fn set_group(path: &Path, name: &str, gid: Gid) -> Result<(), SocketError> {
    fchownat(
        AT_FDCWD,
        path,
        None,
        Some(gid),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| SocketError::Io {
        what: if e == nix::errno::Errno::EPERM {
            "giving to group (the daemon's user must be root or a member of that group; see daemon.socket_group)"
        } else {
            "giving to group"
        },
        path: path.to_owned(),
        source: io::Error::other(format!("{name}: {e}")),
    })
}

/// Refuses a socket directory another user could rearrange.
fn check_dir(dir: &Path, daemon_uid: u32) -> Result<(), SocketError> {
    let meta = std::fs::metadata(dir).map_err(|source| SocketError::Io {
        what: "inspecting the socket directory",
        path: dir.to_owned(),
        source,
    })?;
    let mode = meta.mode();
    let sticky = mode & 0o1000 != 0;
    let problem = if meta.uid() != daemon_uid && meta.uid() != 0 {
        Some(format!("belongs to uid {}", meta.uid()))
    } else if mode & 0o022 != 0 && !sticky {
        Some(format!(
            "is writable by {} (mode {:04o})",
            if mode & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            },
            mode & 0o7777
        ))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(SocketError::UnsafeDir {
            dir: dir.to_owned(),
            problem,
            daemon: daemon_uid,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[tokio::test]
    async fn binds_refuses_a_live_socket_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/agent.sock");
        let listener = bind(&path, &SocketPerms::default()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
        let dir_mode = std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777;
        assert_eq!(dir_mode, DIR_MODE);
        assert!(matches!(
            bind(&path, &SocketPerms::default()),
            Err(SocketError::InUse(_))
        ));
        drop(listener);
        bind(&path, &SocketPerms::default()).expect("a stale socket is replaced");
    }

    #[tokio::test]
    async fn refuses_symlinks_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"precious").unwrap();
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let perms = SocketPerms::default();
        assert!(matches!(bind(&link, &perms), Err(SocketError::Symlink(_))));
        assert!(matches!(
            bind(&target, &perms),
            Err(SocketError::NotASocket(_))
        ));
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    }

    #[tokio::test]
    async fn the_configured_mode_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let perms = SocketPerms {
            mode: 0o600,
            group: None,
        };
        let _listener = bind(&path, &perms).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }

    #[tokio::test]
    async fn refuses_a_directory_others_can_write() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = bind(&shared.join("agent.sock"), &SocketPerms::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("is writable by everyone (mode 0777)"),
            "{err}"
        );
        // Writable by its group only: still others, who could swap the socket.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o770)).unwrap();
        let err = bind(&shared.join("agent.sock"), &SocketPerms::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("is writable by its group (mode 0770)"),
            "{err}"
        );
        // Sticky, like /tmp: others cannot remove or rename what is ours.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        bind(&shared.join("agent.sock"), &SocketPerms::default()).expect("sticky is fine");
    }

    /// Needs root, to make a directory belong to someone else: its owner
    /// could rearrange it whatever its mode.
    #[tokio::test]
    async fn refuses_a_directory_another_user_owns() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED refuses_a_directory_another_user_owns: needs root to chown");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).unwrap();
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let err = bind(&theirs.join("agent.sock"), &SocketPerms::default()).unwrap_err();
        assert!(err.to_string().contains("belongs to uid 65534"), "{err}");
        assert!(!theirs.join("agent.sock").exists(), "nothing bound there");
        // Root's own directory is fine for any daemon's uid.
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
        bind(&theirs.join("agent.sock"), &SocketPerms::default()).expect("root's directory");
    }

    #[test]
    fn an_unknown_group_is_refused_with_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let perms = SocketPerms {
            mode: SOCKET_MODE,
            group: Some("no-such-group-af".into()),
        };
        let err = bind(&dir.path().join("a.sock"), &perms).unwrap_err();
        assert_eq!(
            err.to_string(),
            "daemon.socket_group: no group named \"no-such-group-af\" on this host; create it or change the setting"
        );
    }

    /// Needs root, to make a file belong to someone else.
    #[tokio::test]
    async fn refuses_a_socket_owned_by_another_user_and_sets_the_group() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED refuses_a_socket_owned_by_another_user_and_sets_the_group: needs root to chown");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let err = bind(&path, &SocketPerms::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("belongs to uid 65534, not to this daemon's uid 0"),
            "{err}"
        );
        assert!(path.exists(), "left alone");

        std::fs::remove_file(&path).unwrap();
        let group = Group::from_gid(Gid::from_raw(65534))
            .unwrap()
            .expect("Debian and CI hosts have gid 65534 (nogroup)");
        let perms = SocketPerms {
            mode: SOCKET_MODE,
            group: Some(group.name),
        };
        let _listener = bind(&path, &perms).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().gid(), 65534);
    }
}
