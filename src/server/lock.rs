//! The data-directory lock: at most one broker per data directory, on this machine.
//!
//! `<data_dir>/broker.lock` is held with an exclusive, non-blocking `flock` for the life of a
//! running broker. The kernel drops it when the process exits, even on SIGKILL, so a crashed
//! broker never leaves a stale lock behind. The holder's pid is written into the file only to
//! name it in error messages; the lock itself, not the pid, decides who holds the directory.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::StartError;
use crate::os::DataDirError;

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "broker.lock";
/// How long a held lock is retried before the directory counts as taken. A forked child holds
/// a copy of every descriptor of its parent until it execs, so a lock released just before
/// some thread of the same process forks stays held for that instant: seen when a broker
/// restarts inside a process that is also spawning programs. Only start-up waits, and only
/// when the lock is held.
const HELD_RETRY: Duration = Duration::from_millis(50);

/// A held data-directory lock. Dropping it releases the directory.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock on `data_dir` or says which process holds it.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, StartError> {
        let path = data_dir.join(LOCK_FILE);
        let fail = |e: std::io::Error| {
            StartError::DataDir(DataDirError::Unusable {
                path: path.display().to_string(),
                reason: format!("cannot open the lock file: {e}"),
            })
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(fail)?;
        if !try_lock_briefly(&file).map_err(fail)? {
            return Err(StartError::DataDirHeld {
                pid: holder_pid(&mut file),
                data_dir: data_dir.display().to_string(),
            });
        }
        write_pid(&mut file).map_err(fail)?;
        Ok(DataDirLock { _file: file })
    }
}

/// The pid of the broker that holds `data_dir`'s lock now (`?` if it has not written it), or
/// `None` when no broker holds it. Only looks: takes a shared lock for an instant, never
/// creates or writes the file (`claude-ipc stop` waits on this until the broker is gone).
pub fn holder(data_dir: &Path) -> Option<String> {
    let mut file = File::open(data_dir.join(LOCK_FILE)).ok()?;
    match file.try_lock_shared() {
        Ok(()) => None,
        Err(std::fs::TryLockError::WouldBlock) => Some(holder_pid(&mut file)),
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

/// Takes the lock, retrying for [`HELD_RETRY`] while it is held; `false` if it stayed held.
fn try_lock_briefly(file: &File) -> std::io::Result<bool> {
    let deadline = Instant::now() + HELD_RETRY;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(true),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// The pid the holder wrote, or `?` when it has not written it yet.
fn holder_pid(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let pid = text.trim();
    if pid.is_empty() {
        "?".to_owned()
    } else {
        pid.to_owned()
    }
}

fn write_pid(file: &mut File) -> std::io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    writeln!(file, "{}", std::process::id())
}

/// The lock file for a data directory (for tests and messages).
pub fn lock_path(data_dir: &Path) -> PathBuf {
    data_dir.join(LOCK_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).expect("first lock");
        let refused = DataDirLock::acquire(dir.path()).unwrap_err();
        let text = refused.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains("another broker"), "{text}");
        drop(first);
        DataDirLock::acquire(dir.path()).expect("free again after drop");
    }
}
