//! Private files another local user cannot plant, swap or read: the session file and the
//! shared-secret file are opened without following links and refused unless they are regular
//! files of our own that nobody else can read; the session file is written through a fresh
//! temporary file that cannot be a planted link, then renamed into place.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::os::users::effective_uid;
use rand::rngs::OsRng;
use rand::{RngCore, TryRngCore};

/// How many random temporary names are tried before giving up (each collision means someone
/// created that very name first, which a 64-bit random name makes all but impossible).
const TEMPORARY_ATTEMPTS: usize = 16;

/// The most a private file may hold; a session or a secret is far smaller.
const MAX_PRIVATE_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    #[error("{path} is a symbolic link; refusing to follow it (another user may have planted it): remove it")]
    Symlink { path: PathBuf },
    #[error("{path} is not a regular file; remove it or choose another path")]
    NotRegular { path: PathBuf },
    #[error("{path} belongs to another user (uid {owner}); refusing it: remove it, or use a file of your own")]
    OtherOwner { path: PathBuf, owner: u32 },
    #[error("{path} can be read or written by other users (mode {mode:o}); chmod 600 {path}")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path} is larger than {MAX_PRIVATE_BYTES} bytes; it cannot be what it should be")]
    TooLarge { path: PathBuf },
    #[error("{path} is a symbolic link made by another user (uid {owner}); refusing to follow it: remove it, or use a path without it")]
    ForeignLink { path: PathBuf, owner: u32 },
    #[error("the directory {dir} can be changed by another user ({why}); choose a directory only you can write, such as your home directory")]
    UnsafeDirectory { dir: PathBuf, why: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl PrivateFileError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PrivateFileError + '_ {
        move |source| PrivateFileError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Whether the file simply is not there (the only failure that means "not set up yet").
    pub fn is_missing(&self) -> bool {
        matches!(self, PrivateFileError::Io { source, .. } if source.kind() == ErrorKind::NotFound)
    }
}

/// Reads `path`, which must be a regular file of ours (not a link) that no other user can
/// read or write. A FIFO or device is refused without blocking on it.
pub fn read_private(path: &Path) -> Result<String, PrivateFileError> {
    check_no_foreign_links(path)?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| refused_open(path, e))?;
    let metadata = file.metadata().map_err(PrivateFileError::io(path))?;
    check_private(path, &metadata)?;
    if metadata.len() > MAX_PRIVATE_BYTES {
        return Err(PrivateFileError::TooLarge {
            path: path.to_owned(),
        });
    }
    let mut text = String::new();
    file.take(MAX_PRIVATE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(PrivateFileError::io(path))?;
    Ok(text)
}

/// O_NOFOLLOW fails with ELOOP on a link; say that plainly instead of "too many levels".
fn refused_open(path: &Path, error: std::io::Error) -> PrivateFileError {
    if error.raw_os_error() == Some(libc::ELOOP) {
        return PrivateFileError::Symlink {
            path: path.to_owned(),
        };
    }
    PrivateFileError::Io {
        path: path.to_owned(),
        source: error,
    }
}

/// A regular file, ours, with no access for group or others.
fn check_private(path: &Path, metadata: &Metadata) -> Result<(), PrivateFileError> {
    if !metadata.file_type().is_file() {
        return Err(PrivateFileError::NotRegular {
            path: path.to_owned(),
        });
    }
    if metadata.uid() != effective_uid() {
        return Err(PrivateFileError::OtherOwner {
            path: path.to_owned(),
            owner: metadata.uid(),
        });
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PrivateFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Replaces `path` with `contents` (mode 0600), so a crash never leaves half a file. The
/// directory must be one no other user can rearrange, and an existing `path` must be a
/// regular file of ours: a link or someone else's file there is refused, not replaced.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), PrivateFileError> {
    check_writable(path)?;
    let dir = parent_of(path);
    let (temporary, mut file) = create_temporary(dir, path)?;
    let written = file
        .write_all(contents)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(PrivateFileError::io(path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
        return written;
    }
    // The rename is durable only once the directory is; losing it would only lose the session.
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Whether [`write_private`] would accept `path`, checked before work whose result must be
/// saved there (a registration replaces the earlier session).
pub fn check_writable(path: &Path) -> Result<(), PrivateFileError> {
    check_no_foreign_links(path)?;
    check_directory(parent_of(path))?;
    check_existing_target(path)
}

/// A link on the way to `path` that another user made (in a shared directory such as /tmp)
/// would let them choose where we read or write: refused, whatever it points to. Links of our
/// own or root's are the system's layout and are followed as usual.
pub fn check_no_foreign_links(path: &Path) -> Result<(), PrivateFileError> {
    let mut walked = PathBuf::new();
    for component in path.components() {
        walked.push(component);
        let Ok(metadata) = std::fs::symlink_metadata(&walked) else {
            // The rest does not exist yet, so it holds no links.
            return Ok(());
        };
        let owner = metadata.uid();
        if metadata.file_type().is_symlink() && owner != effective_uid() && owner != 0 {
            return Err(PrivateFileError::ForeignLink {
                path: walked,
                owner,
            });
        }
    }
    Ok(())
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// A directory another user owns, or may write without the sticky bit, lets them delete or
/// swap our files in it; root's directories (such as /tmp, which is sticky) are fine.
pub fn check_directory(dir: &Path) -> Result<(), PrivateFileError> {
    let metadata = std::fs::metadata(dir).map_err(PrivateFileError::io(dir))?;
    let unsafe_dir = |why: String| PrivateFileError::UnsafeDirectory {
        dir: dir.to_owned(),
        why,
    };
    let owner = metadata.uid();
    if owner != effective_uid() && owner != 0 {
        return Err(unsafe_dir(format!("it belongs to uid {owner}")));
    }
    let mode = metadata.permissions().mode();
    let sticky = mode & libc::S_ISVTX != 0;
    if mode & 0o022 != 0 && !sticky {
        return Err(unsafe_dir(format!(
            "mode {:o}: others can write it and it has no sticky bit",
            mode & 0o7777
        )));
    }
    Ok(())
}

/// Nothing at `path` yet, or a regular file of ours: anything else was put there by someone
/// else or is not ours to replace.
fn check_existing_target(path: &Path) -> Result<(), PrivateFileError> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(PrivateFileError::io(path)(e)),
    };
    if metadata.file_type().is_symlink() {
        return Err(PrivateFileError::Symlink {
            path: path.to_owned(),
        });
    }
    if !metadata.file_type().is_file() {
        return Err(PrivateFileError::NotRegular {
            path: path.to_owned(),
        });
    }
    if metadata.uid() != effective_uid() {
        return Err(PrivateFileError::OtherOwner {
            path: path.to_owned(),
            owner: metadata.uid(),
        });
    }
    Ok(())
}

/// A new file beside `target` with a random name, created exclusively (O_EXCL never opens an
/// existing file or a link planted under that name) and private from the first byte.
fn create_temporary(dir: &Path, target: &Path) -> Result<(PathBuf, File), PrivateFileError> {
    let base = target
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    for _ in 0..TEMPORARY_ATTEMPTS {
        let temporary = dir.join(format!(
            ".{base}.{:016x}.tmp",
            OsRng.unwrap_err().next_u64()
        ));
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&temporary);
        match opened {
            Ok(file) => return Ok((temporary, file)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(PrivateFileError::io(&temporary)(e)),
        }
    }
    Err(PrivateFileError::Io {
        path: dir.to_owned(),
        source: std::io::Error::new(ErrorKind::AlreadyExists, "no free temporary file name"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_file_is_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session");
        write_private(&path, b"{\"a\":1}").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_private(&path).unwrap(), "{\"a\":1}");
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
    }

    #[test]
    fn a_link_is_neither_read_nor_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("session");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(matches!(
            read_private(&link),
            Err(PrivateFileError::Symlink { .. })
        ));
        assert!(matches!(
            write_private(&link, b"new"),
            Err(PrivateFileError::Symlink { .. })
        ));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    }

    #[test]
    fn rename_replaces_a_link_at_the_target_instead_of_following_it() {
        // What `write_private` relies on if a link appears after its check: the link itself
        // is replaced and what it points to is never written.
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let target = dir.path().join("session");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        let (temporary, mut file) = create_temporary(dir.path(), &target).unwrap();
        file.write_all(b"new").unwrap();
        std::fs::rename(&temporary, &target).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert!(std::fs::symlink_metadata(&target)
            .unwrap()
            .file_type()
            .is_file());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
    }

    #[test]
    fn a_file_others_can_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret-value").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = read_private(&path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        assert!(!error.contains("s3cret-value"), "{error}");
    }

    #[test]
    fn a_fifo_is_refused_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo has no other preconditions.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            read_private(&fifo),
            Err(PrivateFileError::NotRegular { .. })
        ));
    }

    #[test]
    fn a_directory_others_can_write_without_the_sticky_bit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = write_private(&dir.path().join("session"), b"x").unwrap_err();
        assert!(matches!(error, PrivateFileError::UnsafeDirectory { .. }));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        write_private(&dir.path().join("session"), b"x").unwrap();
    }
}
