//! The hook's log, `<data directory>/hook.log` (`IPC_DATA_DIR`, else `~/.claude-ipc-data`,
//! beside the background broker's `broker.log`): a hook that waits for mail says nothing on
//! failure, so this file is where a person finds why it did nothing. One line per outcome,
//! mode 0600; past [`MAX_LOG_BYTES`] the file is moved to `hook.log.old` (replacing the
//! previous one) and a new one begun, so it never grows without bound. Logging never fails
//! the hook: a log that cannot be written is skipped.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The log's file name inside the data directory.
pub const LOG_NAME: &str = "hook.log";

/// Where a full log is moved.
const OLD_LOG_NAME: &str = "hook.log.old";

/// About 2,000 lines: weeks of a busy machine's hook runs.
const MAX_LOG_BYTES: u64 = 256 * 1024;

/// The data directory the broker and the CLI use.
fn data_dir() -> PathBuf {
    super::super::data_dir_or_default(
        std::env::var_os("IPC_DATA_DIR")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from),
    )
}

/// Appends one line: the time, the process, the event and session it ran for, and `text`
/// (escaped, so a broker's or a client's text cannot start a line of its own).
pub fn write(event: &str, session: Option<&str>, text: &str) {
    let dir = data_dir();
    // The directory is made (0700) and checked as the broker makes it; one that is unsafe
    // (another user could write it) gets no log.
    if crate::os::prepare_data_dir(&dir).is_err() {
        return;
    }
    let line = format!(
        "{} pid {} {event} session {}: {}\n",
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        std::process::id(),
        super::super::output::for_terminal(session.unwrap_or("-")),
        super::super::output::for_terminal(text),
    );
    let _ = append(
        &dir.join(LOG_NAME),
        &dir.join(OLD_LOG_NAME),
        line.as_bytes(),
    );
}

fn append(log: &Path, old: &Path, line: &[u8]) -> std::io::Result<()> {
    if std::fs::symlink_metadata(log).is_ok_and(|meta| meta.len() > MAX_LOG_BYTES) {
        // Two hooks may both see it full; the second rename fails or moves a short file.
        let _ = std::fs::rename(log, old);
    }
    // One write of one line with O_APPEND: lines of hooks running at once do not interleave.
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(log)?
        .write_all(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_log_is_moved_aside_and_a_new_one_begun() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(LOG_NAME);
        let old = dir.path().join(OLD_LOG_NAME);
        std::fs::write(&log, vec![b'x'; MAX_LOG_BYTES as usize + 1]).unwrap();
        append(&log, &old, b"fresh\n").unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"fresh\n");
        assert_eq!(std::fs::metadata(&old).unwrap().len(), MAX_LOG_BYTES + 1);
        append(&log, &old, b"second\n").unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"fresh\nsecond\n");
    }

    #[test]
    fn the_log_is_private_and_never_follows_a_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(LOG_NAME);
        let old = dir.path().join(OLD_LOG_NAME);
        append(&log, &old, b"one\n").unwrap();
        let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let elsewhere = dir.path().join("elsewhere");
        let linked = dir.path().join("linked.log");
        std::os::unix::fs::symlink(&elsewhere, &linked).unwrap();
        assert!(append(&linked, &old, b"two\n").is_err());
        assert!(!elsewhere.exists());
    }
}
