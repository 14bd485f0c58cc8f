//! Whether the database is still the database. The store serves only while the files at the
//! database's path are the ones its connection has open and SQLite has reported no damage.
//! Once either fails, every later job is refused (so nothing more is acknowledged that could
//! be lost) and `ping` reports the fault instead of "ok".

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Why the store refuses work. Each carries the full text an operator reads: what happened,
/// where, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// A file at the database's path was removed or replaced while the broker had it open.
    Gone(String),
    /// SQLite found the database corrupt, at start or while serving.
    Damaged(String),
}

impl Fault {
    pub fn message(&self) -> &str {
        match self {
            Fault::Gone(message) | Fault::Damaged(message) => message,
        }
    }

    /// One word for `ping`'s `database` field.
    pub fn state(&self) -> &'static str {
        match self {
            Fault::Gone(_) => "gone",
            Fault::Damaged(_) => "damaged",
        }
    }
}

/// The store's health, shared by the handle, the writer thread and the background check. A
/// std `Mutex`: it is held only to copy or set the fault, never across an `.await`.
#[derive(Debug, Default)]
pub struct Health {
    fault: Mutex<Option<Fault>>,
    /// The start-up integrity check is still running in the background.
    checking: AtomicBool,
}

impl Health {
    pub fn fault(&self) -> Option<Fault> {
        self.fault.lock().expect("health mutex poisoned").clone()
    }

    /// Records `fault` unless one is already recorded (the first cause is the one worth
    /// reporting); returns whether this call recorded it.
    pub fn record(&self, fault: Fault) -> bool {
        let mut current = self.fault.lock().expect("health mutex poisoned");
        if current.is_some() {
            return false;
        }
        tracing::error!("{}", fault.message());
        *current = Some(fault);
        true
    }

    pub fn is_checking(&self) -> bool {
        self.checking.load(Ordering::Relaxed)
    }

    pub(super) fn set_checking(&self, checking: bool) {
        self.checking.store(checking, Ordering::Relaxed);
    }
}

/// A file's identity: device and inode. A file unlinked and recreated at the same path has a
/// new one, even if its name, size and content are the same.
type Identity = (u64, u64);

/// The database's files (`ipc.db`, `-wal`, `-shm`) as they were right after opening, to
/// notice when the path no longer leads to them. SQLite never unlinks or recreates the -wal
/// or -shm while a connection is open in WAL mode (a checkpoint rewrites or truncates the
/// -wal in place; only the last connection to close deletes it), so any change is someone
/// else's doing.
#[derive(Debug)]
pub struct OpenFiles {
    files: Vec<(PathBuf, Identity)>,
}

impl OpenFiles {
    /// Records each file that exists now; the database itself must.
    pub fn record(database: &Path) -> std::io::Result<OpenFiles> {
        let mut files = vec![(database.to_owned(), identity(database)?)];
        for side in [side_file(database, "-wal"), side_file(database, "-shm")] {
            if let Ok(id) = identity(&side) {
                files.push((side, id));
            }
        }
        Ok(OpenFiles { files })
    }

    /// Two or three `stat` calls: fine once per group commit. Says which file is missing or
    /// replaced.
    pub fn verify(&self) -> Result<(), String> {
        for (path, recorded) in &self.files {
            match identity(path) {
                Ok(now) if now == *recorded => {}
                Ok(_) => return Err(format!("{} was replaced by another file", path.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(format!("{} was removed", path.display()))
                }
                Err(e) => return Err(format!("{} cannot be read ({e})", path.display())),
            }
        }
        Ok(())
    }
}

fn identity(path: &Path) -> std::io::Result<Identity> {
    let metadata = std::fs::metadata(path)?;
    Ok((metadata.dev(), metadata.ino()))
}

/// `ipc.db` + `suffix`: where SQLite keeps the database's -wal and -shm files.
pub fn side_file(database: &Path, suffix: &str) -> PathBuf {
    let mut path = database.as_os_str().to_owned();
    path.push(suffix);
    PathBuf::from(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_or_replaced_file_is_noticed_and_an_untouched_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ipc.db");
        std::fs::write(&db, b"one").unwrap();
        std::fs::write(side_file(&db, "-wal"), b"wal").unwrap();
        // Held open, as SQLite holds it, so a new file cannot reuse its inode number.
        let _open_wal = std::fs::File::open(side_file(&db, "-wal")).unwrap();
        let files = OpenFiles::record(&db).unwrap();
        assert_eq!(files.verify(), Ok(()));
        std::fs::remove_file(side_file(&db, "-wal")).unwrap();
        assert!(files
            .verify()
            .unwrap_err()
            .ends_with("ipc.db-wal was removed"));
        std::fs::write(side_file(&db, "-wal"), b"wal").unwrap();
        assert!(files.verify().unwrap_err().contains("replaced"));
    }

    #[test]
    fn the_first_fault_is_kept() {
        let health = Health::default();
        assert!(health.record(Fault::Gone("first".into())));
        assert!(!health.record(Fault::Damaged("second".into())));
        assert_eq!(health.fault(), Some(Fault::Gone("first".into())));
    }
}
