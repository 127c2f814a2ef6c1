//! Binding the agent socket by path, for a daemon not started by socket activation.
//!
//! The path may hold a socket left by a daemon that crashed (remove it), a socket
//! another daemon is still serving (refuse: never steal it), or something that is
//! not ours at all: a regular file or a symlink planted there (refuse, because
//! following or deleting it could be used against us).

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// Permissions of the socket file: owner and group may connect.
pub const SOCKET_MODE: u32 = 0o660;
/// Permissions of a socket directory we create.
pub const DIR_MODE: u32 = 0o750;

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
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Binds `path` as described in the module doc, with mode 0660.
///
/// # Errors
/// A [`SocketError`] saying what was found at the path and what to do.
pub fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let io_err = |what, source| SocketError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(|e| io_err("creating the socket directory", e))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(SocketError::Symlink(path.to_owned()))
        }
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(SocketError::NotASocket(path.to_owned()))
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(|e| io_err("setting the mode of", e))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_refuses_a_live_socket_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/agent.sock");
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
        assert!(matches!(bind(&path), Err(SocketError::InUse(_))));
        drop(listener);
        bind(&path).expect("a stale socket is replaced");
    }

    #[tokio::test]
    async fn refuses_symlinks_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"precious").unwrap();
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(bind(&link), Err(SocketError::Symlink(_))));
        assert!(matches!(bind(&target), Err(SocketError::NotASocket(_))));
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    }
}
