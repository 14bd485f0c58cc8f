//! The data directory's safety check, shared by the broker (before it opens the database) and
//! the CLI's autostart (before it points a background broker's log there): created 0700 if
//! missing, refused if another user can write it, proved writable.

use std::fs::DirBuilder;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::users::effective_uid;

/// Why a data directory cannot be used; `serve` shows these texts word for word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot use data directory {path}: {reason}")]
    Unusable { path: String, reason: String },
    #[error("refusing to use {path} as the data directory: {why}; use a directory only you can write, such as ~/.claude-ipc-data (--data-dir or IPC_DATA_DIR)")]
    Unsafe { path: String, why: String },
}

/// Creates the data directory with mode 0700 if needed, refuses one that other users can
/// write, and proves it is writable. An existing directory keeps its mode: it may be shared
/// with other tools (or be /tmp), and only a directory the broker created is the broker's to
/// set. The database and large-message files inside are 0600 whatever the directory's mode.
pub fn prepare_data_dir(path: &Path) -> Result<(), DataDirError> {
    let fail = |reason: String| DataDirError::Unusable {
        path: path.display().to_string(),
        reason,
    };
    // Before anything is created: a link another user planted on the way would choose where.
    crate::private_file::check_no_foreign_links(path).map_err(|e| DataDirError::Unsafe {
        path: path.display().to_string(),
        why: e.to_string(),
    })?;
    if !path.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| fail(format!("{e}; create it or choose another with --data-dir")))?;
    }
    refuse_shared_data_dir(path)?;
    // Prove the directory is writable now, rather than at the first large message. The name
    // is this process's own: brokers starting at the same instant on one directory (MCP
    // servers electing one) must not remove each other's probe.
    let probe = path.join(format!(".write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| {
            fail(format!(
                "it is not writable ({e}); fix its permissions or choose another with --data-dir"
            ))
        })
}

/// Another user who can write the data directory can replace the database, plant links
/// where large-message files go, or remove the lock; such a directory is refused.
fn refuse_shared_data_dir(path: &Path) -> Result<(), DataDirError> {
    let unusable = |reason: String| DataDirError::Unusable {
        path: path.display().to_string(),
        reason,
    };
    let unsafe_dir = |why: String| DataDirError::Unsafe {
        path: path.display().to_string(),
        why,
    };
    let metadata = std::fs::metadata(path).map_err(|e| unusable(e.to_string()))?;
    if !metadata.is_dir() {
        return Err(unusable(
            "it is not a directory; choose another with --data-dir".into(),
        ));
    }
    let owner = metadata.uid();
    if owner != effective_uid() {
        return Err(unsafe_dir(format!(
            "it belongs to another user (uid {owner})"
        )));
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "other users can write to it (mode {mode:o})"
        )));
    }
    Ok(())
}
