//! The session file shared with the legacy scripts: `~/.ipc-session` (or `IPC_SESSION_FILE`),
//! JSON `{"instance_id", "session_token"}`, mode 0600.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::CliError;

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
    pub fn load() -> Result<SessionFile, CliError> {
        let path = path();
        let text = std::fs::read_to_string(&path).map_err(|e| {
            CliError::Usage(format!(
                "not registered ({}: {e}); run `claude-ipc register NAME` first",
                path.display()
            ))
        })?;
        serde_json::from_str(&text).map_err(|e| {
            CliError::Usage(format!(
                "{} is not a session file ({e}); run `claude-ipc register NAME` again",
                path.display()
            ))
        })
    }

    /// Writes the file with mode 0600, replacing any earlier one. It is written beside the
    /// target and renamed over it, so a crash never leaves a half-written session.
    pub fn save(&self) -> Result<PathBuf, CliError> {
        let path = path();
        let fail = |e: std::io::Error| {
            CliError::Usage(format!("cannot write the session file {}: {e}; make its directory writable or point IPC_SESSION_FILE elsewhere", path.display()))
        };
        let mut temporary = path.clone().into_os_string();
        temporary.push(format!(".{}.tmp", std::process::id()));
        let temporary = PathBuf::from(temporary);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(fail)?;
        // A leftover temporary file may have been created with a wider mode.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(fail)?;
        let text = serde_json::to_string(self).expect("a session always serializes");
        file.write_all(text.as_bytes())
            .and_then(|_| file.sync_all())
            .and_then(|_| std::fs::rename(&temporary, &path))
            .map_err(fail)?;
        Ok(path)
    }
}
