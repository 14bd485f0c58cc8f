//! The session file shared with the legacy scripts: `~/.ipc-session` (or `IPC_SESSION_FILE`),
//! JSON `{"instance_id", "session_token"}`, mode 0600. It is read and written through
//! [`crate::private_file`], so a link or another user's file at its path is refused.
//!
//! The CLI and the MCP server both keep their session here (the MCP server when
//! `IPC_SESSION_FILE` is set), and the hook reads it, so it sits below both.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::private_file::{self, PrivateFileError};

/// Why the session file could not be read or written; each text says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SessionFileError {
    #[error("not registered ({0}); run `claude-ipc register NAME` first")]
    NotRegistered(PrivateFileError),
    #[error("cannot read the session file {0}")]
    Unreadable(PrivateFileError),
    #[error("refusing the session file: {0}")]
    Refused(PrivateFileError),
    #[error("{} is not a session file ({reason}); run `claude-ipc register NAME` again", path.display())]
    NotASession { path: PathBuf, reason: String },
    #[error("cannot write the session file {}: {error}; {fix} point IPC_SESSION_FILE elsewhere", path.display())]
    Unwritable {
        path: PathBuf,
        error: PrivateFileError,
        fix: &'static str,
    },
}

/// The session a client speaks as: the name and the token `register` returned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionFile {
    pub instance_id: String,
    pub session_token: String,
}

/// Where the session lives: `IPC_SESSION_FILE`, else `~/.ipc-session`.
pub fn path() -> PathBuf {
    if let Some(path) = std::env::var_os("IPC_SESSION_FILE").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    crate::os::users::own_home().join(".ipc-session")
}

impl SessionFile {
    /// Reads the session. A link, a file of another user's or one others can read is refused,
    /// with what to do: another user could have planted it, or could read the token in it.
    pub fn load() -> Result<SessionFile, SessionFileError> {
        let path = path();
        let text = private_file::read_private(&path).map_err(|e| match e {
            e if e.is_missing() => SessionFileError::NotRegistered(e),
            e @ PrivateFileError::Io { .. } => SessionFileError::Unreadable(e),
            e => SessionFileError::Refused(e),
        })?;
        serde_json::from_str(&text).map_err(|e| SessionFileError::NotASession {
            path,
            reason: e.to_string(),
        })
    }

    /// Fails, saying why, if [`SessionFile::save`] would refuse the path: called before
    /// registering, so a refused path does not cost the session registered before.
    pub fn check_writable() -> Result<(), SessionFileError> {
        let path = path();
        private_file::check_writable(&path).map_err(|e| save_failed(&path, e))
    }

    /// Writes the file with mode 0600, replacing any earlier one. It is written to a fresh
    /// temporary file beside the target and renamed over it, so a crash never leaves a
    /// half-written session and a link planted in a shared directory is never followed.
    pub fn save(&self) -> Result<PathBuf, SessionFileError> {
        let path = path();
        create_missing_parent(&path);
        let text = serde_json::to_string(self).expect("a session always serializes");
        private_file::write_private(&path, text.as_bytes()).map_err(|e| save_failed(&path, e))?;
        Ok(path)
    }
}

/// Creates the session file's directory (mode 0700) when it is missing: the plugin's MCP
/// server writes `<project>/.claude/ipc-session`, and a project need not have `.claude/` yet.
/// A failure is left for the write to report.
fn create_missing_parent(path: &Path) {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty() && !p.exists())
    {
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent);
    }
}

fn save_failed(path: &Path, error: PrivateFileError) -> SessionFileError {
    let fix = match error {
        PrivateFileError::Io { .. } => "make its directory writable, or",
        _ => "or",
    };
    SessionFileError::Unwritable {
        path: path.to_owned(),
        error,
        fix,
    }
}
