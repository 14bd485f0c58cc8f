//! `claude-ipc serve` started as a child process: the one way both the CLI's autostart (a
//! broker for a mail command that found none) and the load generator (a broker to measure)
//! start one. The data directory is checked the way the broker checks it, and the child's
//! log (its stderr) is appended to a 0600 file inside it.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A `serve` started in the background.
pub struct BackgroundServe {
    pub child: Child,
    /// Its log: what it writes on stderr.
    pub log: PathBuf,
    /// Where this run's lines begin in the log (earlier runs' lines come before).
    pub log_offset: u64,
}

/// Starts `exe serve --addr ADDR --data-dir DIR` with no stdin or stdout, logging to
/// `DIR/log_name`. `configure` adds what the caller needs (flags, environment, a process
/// group) before it is spawned.
pub fn spawn(
    exe: &Path,
    addr: &str,
    data_dir: &Path,
    log_name: &str,
    configure: impl FnOnce(&mut Command),
) -> std::io::Result<BackgroundServe> {
    crate::os::prepare_data_dir(data_dir).map_err(std::io::Error::other)?;
    let log = data_dir.join(log_name);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log)?;
    let log_offset = file.metadata()?.len();
    let mut command = Command::new(exe);
    command
        .args(["serve", "--addr", addr, "--data-dir"])
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file);
    configure(&mut command);
    Ok(BackgroundServe {
        child: command.spawn()?,
        log,
        log_offset,
    })
}
