//! Checks around opening the database: a missing or empty `ipc.db` in a data directory that
//! held a database is refused rather than silently replaced by a new empty one, and the
//! database's integrity is checked before (or, when it is large, right after) the broker
//! starts serving.
//!
//! A directory "held a database" when its marker `ipc.db.created` exists (written after the
//! first successful migration), or when `ipc.db-wal` or files under `large-messages/` are
//! there. A fresh directory has none of these.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::health::side_file;

/// The marker's name: the database's plus this.
pub const MARKER_SUFFIX: &str = ".created";

/// Databases up to this size get `PRAGMA quick_check` before the broker serves. It reads the
/// whole file: 32 MiB took 40 ms from the page cache and 0.45 s from a cold disk on the
/// development machine, so 16 MiB bounds the wait at about a quarter of a second. A larger
/// database (a million messages is hundreds of MiB) starts serving at once and is checked in
/// the background; the store turns "damaged" if that check fails.
pub const SYNC_CHECK_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// The marker path for `database`.
pub fn marker(database: &Path) -> PathBuf {
    side_file(database, MARKER_SUFFIX)
}

/// Refuses to create a new database where one was lost: `Err` says what is wrong and how to
/// start fresh on purpose. `Ok` when the file has content or the directory is fresh.
pub fn refuse_lost_database(database: &Path) -> Result<(), String> {
    let state = match std::fs::metadata(database) {
        Ok(metadata) if metadata.len() > 0 => return Ok(()),
        Ok(_) => "empty (0 bytes)",
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "missing",
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let Some(evidence) = evidence_of_a_database(database) else {
        return Ok(());
    };
    Err(format!(
        "the database is {state}, but this data directory held one ({evidence}), so the mail it \
         held is not there. Restore ipc.db from a backup; or, to start with an empty database on \
         purpose, move the whole data directory aside, or just {} and {}, and start again",
        marker(database).display(),
        database.with_file_name("large-messages").display()
    ))
}

fn evidence_of_a_database(database: &Path) -> Option<String> {
    let marker = marker(database);
    if marker.exists() {
        return Some(format!("{} exists", marker.display()));
    }
    let wal = side_file(database, "-wal");
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        return Some(format!("{} exists", wal.display()));
    }
    let large = database.parent()?.join("large-messages");
    let holds_files = std::fs::read_dir(&large).is_ok_and(|mut entries| entries.next().is_some());
    holds_files.then(|| format!("{} holds message files", large.display()))
}

/// Writes the marker if it is not there yet. A failure only weakens the refusal above, so it
/// is logged, not fatal.
pub fn mark_created(database: &Path) {
    let marker = marker(database);
    if marker.exists() {
        return;
    }
    let text = "This data directory holds a claude-ipc database (ipc.db). While this file exists \
                the broker refuses to start over with a new empty database if ipc.db goes \
                missing or empty.\n";
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&marker)
        .and_then(|mut file| file.write_all(text.as_bytes()));
    if let Err(e) = written.or_else(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Ok(()),
        _ => Err(e),
    }) {
        tracing::warn!("cannot write {}: {e}", marker.display());
    }
}

/// Whether `database` is small enough to check before serving.
pub fn check_before_serving(database: &Path) -> bool {
    std::fs::metadata(database).map_or(true, |m| m.len() <= SYNC_CHECK_MAX_BYTES)
}

/// `PRAGMA quick_check`: `Err` with SQLite's first findings when the database is damaged.
pub fn quick_check(conn: &Connection) -> Result<(), String> {
    let mut statement = conn
        .prepare("PRAGMA quick_check(5)")
        .map_err(|e| e.to_string())?;
    let findings: Vec<String> = statement
        .query_map([], |row| row.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| e.to_string())?;
    match findings.as_slice() {
        [only] if only == "ok" => Ok(()),
        _ => Err(findings.join("; ")),
    }
}

/// The text for a damaged database: what, where, and what to do.
pub fn damaged_advice(database: &Path, finding: &str) -> String {
    format!(
        "the database {} is damaged ({finding}). Stop the broker, then restore ipc.db from a \
         backup; or save what is readable with `sqlite3 ipc.db .recover | sqlite3 recovered.db`; \
         or, to start with an empty database, move the data directory aside (or ipc.db, \
         ipc.db-wal, ipc.db-shm and {})",
        database.display(),
        marker(database).display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_directory_may_create_a_database_and_a_used_one_may_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ipc.db");
        assert_eq!(refuse_lost_database(&db), Ok(()));
        std::fs::write(&db, b"").unwrap();
        assert_eq!(
            refuse_lost_database(&db),
            Ok(()),
            "an empty file, never used"
        );
        mark_created(&db);
        let refusal = refuse_lost_database(&db).unwrap_err();
        assert!(refusal.contains("empty (0 bytes)"), "{refusal}");
        assert!(refusal.contains("ipc.db.created"), "{refusal}");
        std::fs::remove_file(&db).unwrap();
        assert!(refuse_lost_database(&db).unwrap_err().contains("missing"));
    }

    #[test]
    fn message_files_count_as_evidence_without_the_marker() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ipc.db");
        std::fs::create_dir(dir.path().join("large-messages")).unwrap();
        assert_eq!(refuse_lost_database(&db), Ok(()), "an empty directory");
        std::fs::write(dir.path().join("large-messages/x.md"), b"x").unwrap();
        assert!(refuse_lost_database(&db)
            .unwrap_err()
            .contains("holds message files"));
    }
}
