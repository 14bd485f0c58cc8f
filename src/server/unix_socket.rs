//! The broker's Unix socket: created with mode 0600 from its first moment, served only to
//! processes of the broker's own user (checked with SO_PEERCRED), removed on clean shutdown.
//!
//! Why not set the umask and bind: the umask is per process, and the broker is already
//! multi-threaded when it binds, so another thread could create a file under the wrong mask.
//! Instead the socket is bound inside a fresh 0700 directory beside the target, chmod-ed to
//! 0600 there (nobody else can reach it through a 0700 directory), and then hard-linked to the
//! final path. `link` refuses to replace an existing file, so a socket another broker bound in
//! the meantime is never clobbered.

use std::fs::DirBuilder;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::rngs::OsRng;
use rand::{RngCore, TryRngCore};
use tokio::net::unix::UCred;
use tokio::net::UnixListener;

/// The socket file a broker created, and whom it serves.
#[derive(Debug, Clone)]
pub struct SocketFile {
    pub path: PathBuf,
    /// The socket file's inode, so shutdown removes only the file this broker created.
    inode: u64,
    /// The broker's effective uid: the only uid this socket serves.
    pub owner_uid: u32,
}

/// Why the socket could not be set up; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another broker is listening on the socket {0}; stop it first, or choose another path with --socket")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it. Remove it or choose another path with --socket")]
    NotASocket(PathBuf),
    #[error("cannot create the socket {path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

impl SocketFile {
    /// Binds `path` with mode 0600, first removing a stale socket a dead broker left behind.
    pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile), SocketError> {
        let io = |e: std::io::Error| SocketError::Io {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        remove_if_stale(path)?;
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let staging = staging_dir(parent).map_err(io)?;
        let bound = bind_private(&staging, path);
        let _ = std::fs::remove_dir_all(&staging);
        let listener = bound?;
        let metadata = std::fs::symlink_metadata(path).map_err(io)?;
        let file = SocketFile {
            path: path.to_owned(),
            inode: metadata.ino(),
            owner_uid: effective_uid(),
        };
        Ok((listener, file))
    }

    /// Removes the socket file, if it is still the one this broker created.
    pub fn remove_file(&self) {
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), "could not remove the socket: {e}");
            }
        }
    }
}

/// Binds inside the 0700 staging directory, narrows the socket to 0600, links it into place.
fn bind_private(staging: &Path, path: &Path) -> Result<UnixListener, SocketError> {
    let io = |e: std::io::Error| SocketError::Io {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let private = staging.join("s");
    let listener = UnixListener::bind(&private).map_err(|e| SocketError::Io {
        path: path.to_owned(),
        reason: format!("{e} (a socket path must be under about 100 bytes; choose a shorter one)"),
    })?;
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    std::fs::hard_link(&private, path).map_err(|e| {
        if e.kind() == ErrorKind::AlreadyExists {
            SocketError::InUse(path.to_owned())
        } else {
            io(e)
        }
    })?;
    Ok(listener)
}

/// A new directory with mode 0700 beside the socket (the same filesystem, so `link` works).
fn staging_dir(parent: &Path) -> std::io::Result<PathBuf> {
    // A random name, so another user cannot block the start by creating the names first in a
    // shared directory such as /tmp (mkdir never follows a link they plant, either).
    for _ in 0..16 {
        let name = format!(".claude-ipc-socket-{:016x}", OsRng.unwrap_err().next_u64());
        let dir = parent.join(name);
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        ErrorKind::AlreadyExists,
        "no free staging directory name",
    ))
}

/// A socket file nobody answers on is left by a broker that died; a live one is refused.
fn remove_if_stale(path: &Path) -> Result<(), SocketError> {
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !metadata.file_type().is_socket() {
        return Err(SocketError::NotASocket(path.to_owned()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse(path.to_owned())),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing a stale socket left by a broker that is gone");
            std::fs::remove_file(path).map_err(|e| SocketError::Io {
                path: path.to_owned(),
                reason: format!("cannot remove the stale socket: {e}"),
            })
        }
        Err(e) => Err(SocketError::Io {
            path: path.to_owned(),
            reason: format!(
                "it exists and connecting to it failed ({e}); remove it if no broker uses it"
            ),
        }),
    }
}

pub use crate::os::users::effective_uid;

/// Only the broker's own user may use the socket: the file mode keeps others out, and this
/// check holds even if someone widens the mode or passes an open descriptor along.
pub fn peer_allowed(peer: &UCred, owner_uid: u32) -> bool {
    peer.uid() == owner_uid
}

/// How a socket peer appears in logs and the auth-failure table.
pub fn describe_peer(peer: &UCred) -> String {
    match peer.pid() {
        Some(pid) => format!("unix:uid={},pid={pid}", peer.uid()),
        None => format!("unix:uid={}", peer.uid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair_cred() -> UCred {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (a, _b) = tokio::net::UnixStream::pair().unwrap();
            a.peer_cred().unwrap()
        })
    }

    #[test]
    fn only_the_brokers_own_uid_is_allowed() {
        let me = pair_cred();
        assert_eq!(me.uid(), effective_uid());
        assert!(peer_allowed(&me, effective_uid()));
        assert!(!peer_allowed(&me, effective_uid().wrapping_add(1)));
    }

    #[test]
    fn a_socket_peer_is_named_by_uid_and_pid() {
        let me = pair_cred();
        assert_eq!(
            describe_peer(&me),
            format!("unix:uid={},pid={}", effective_uid(), std::process::id())
        );
    }

    #[test]
    fn the_socket_is_0600_and_a_stale_one_is_replaced_but_a_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipc.sock");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let live = SocketFile::bind(&path).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            assert!(matches!(
                SocketFile::bind(&path),
                Err(SocketError::InUse(_))
            ));
            // Dropping the listener without removing the file is what a killed broker leaves.
            drop(live);
            let (_listener, again) = SocketFile::bind(&path).unwrap();
            again.remove_file();
            assert!(!path.exists());
            std::fs::write(&path, b"not a socket").unwrap();
            assert!(matches!(
                SocketFile::bind(&path),
                Err(SocketError::NotASocket(_))
            ));
            let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
            assert_eq!(leftovers.len(), 1, "the staging directory is removed");
        });
    }
}
