//! The session file shared with the legacy scripts: `~/.ipc-session` (or `IPC_SESSION_FILE`),
//! JSON `{"instance_id", "session_token"}`, mode 0600. It is read and written through
//! [`crate::private_file`], so a link or another user's file at its path is refused.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::CliError;
use crate::private_file::{self, PrivateFileError};

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
    home_dir().join(".ipc-session")
}

pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

impl SessionFile {
    /// Reads the session. A link, a file of another user's or one others can read is refused,
    /// with what to do: another user could have planted it, or could read the token in it.
    pub fn load() -> Result<SessionFile, CliError> {
        let path = path();
        let text = private_file::read_private(&path).map_err(|e| match e {
            e if e.is_missing() => CliError::Usage(format!(
                "not registered ({e}); run `claude-ipc register NAME` first"
            )),
            e @ PrivateFileError::Io { .. } => {
                CliError::Usage(format!("cannot read the session file {e}"))
            }
            e => CliError::Usage(format!("refusing the session file: {e}")),
        })?;
        serde_json::from_str(&text).map_err(|e| {
            CliError::Usage(format!(
                "{} is not a session file ({e}); run `claude-ipc register NAME` again",
                path.display()
            ))
        })
    }

    /// Fails, saying why, if [`SessionFile::save`] would refuse the path: called before
    /// registering, so a refused path does not cost the session registered before.
    pub fn check_writable() -> Result<(), CliError> {
        let path = path();
        private_file::check_writable(&path).map_err(|e| save_failed(&path, e))
    }

    /// Writes the file with mode 0600, replacing any earlier one. It is written to a fresh
    /// temporary file beside the target and renamed over it, so a crash never leaves a
    /// half-written session and a link planted in a shared directory is never followed.
    pub fn save(&self) -> Result<PathBuf, CliError> {
        let path = path();
        let text = serde_json::to_string(self).expect("a session always serializes");
        private_file::write_private(&path, text.as_bytes()).map_err(|e| save_failed(&path, e))?;
        Ok(path)
    }
}

fn save_failed(path: &std::path::Path, error: PrivateFileError) -> CliError {
    let fix = match error {
        PrivateFileError::Io { .. } => "make its directory writable, or",
        _ => "or",
    };
    CliError::Usage(format!(
        "cannot write the session file {}: {error}; {fix} point IPC_SESSION_FILE elsewhere",
        path.display()
    ))
}
