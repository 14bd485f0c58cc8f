//! A stopped broker stays stopped: the one rule every client follows before it starts a broker
//! of its own (the CLI's background `serve`, the MCP server's hosted broker).
//!
//! Two things hold automatic starts off. `IPC_AUTOSTART=0` (or `false`, `no`, `off`) in a
//! client's environment, for that client. And the marker `claude-ipc stop` leaves in the data
//! directory, for every client of that directory until `serve` is run by hand, which removes
//! it. The marker is also how `stop` asks the broker to go: a running broker (`serve` or an MCP
//! server's hosted one) looks for it and shuts down cleanly when it appears. Only someone who
//! can write in the data directory can leave it, and the data directory is one only the
//! broker's own user can write (`os::prepare_data_dir` refuses any other), so that is who
//! may stop the broker: another local user cannot.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The marker's name inside the data directory.
pub const MARKER_FILE: &str = "stopped";
/// How often a running broker looks for the marker.
const LOOK_EVERY: Duration = Duration::from_millis(200);

/// Where the marker of `data_dir` lives.
pub fn marker_path(data_dir: &Path) -> PathBuf {
    data_dir.join(MARKER_FILE)
}

/// Whether `IPC_AUTOSTART` allows this client to start a broker (anything but `0`, `false`,
/// `no`, `off`; unset allows it).
pub fn autostart_enabled() -> bool {
    let value = std::env::var("IPC_AUTOSTART").unwrap_or_default();
    !matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "0" | "false" | "no" | "off"
    )
}

/// Why this client must not start a broker on `data_dir`, with how to start one; `None` when it
/// may.
pub fn hold_reason(data_dir: &Path) -> Option<String> {
    if !autostart_enabled() {
        return Some(
            "IPC_AUTOSTART is off in this client's environment, so it started none".to_owned(),
        );
    }
    if marker_path(data_dir).exists() {
        return Some(format!(
            "it was stopped with `claude-ipc stop` (marker {}), so no client starts one \
             until `claude-ipc serve` is run by hand",
            marker_path(data_dir).display()
        ));
    }
    None
}

/// Leaves the marker (mode 0600), saying who stopped the broker and when. Fails when the data
/// directory cannot be written, which is how another user's `stop` is refused.
pub fn leave(data_dir: &Path) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(marker_path(data_dir))?;
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    writeln!(
        file,
        "stopped by `claude-ipc stop` (pid {}) at unix time {since_epoch}; \
         `claude-ipc serve` removes this file",
        std::process::id()
    )
}

/// Removes the marker, if there is one: `serve` run by hand does this once it runs.
pub fn clear(data_dir: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(marker_path(data_dir)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Returns once the marker appears: a running broker awaits this beside its signals.
pub async fn appears(data_dir: &Path) {
    let path = marker_path(data_dir);
    while !path.exists() {
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leave_then_clear_round_trips_and_the_marker_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert!(!marker_path(dir.path()).exists());
        leave(dir.path()).unwrap();
        let mode = std::fs::metadata(marker_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(clear(dir.path()).unwrap());
        assert!(!clear(dir.path()).unwrap());
    }
}
