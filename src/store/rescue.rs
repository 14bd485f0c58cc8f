//! The rescued copy. When the database's files are removed or replaced under a running broker,
//! its open connection still reads everything committed so far. The writer saves that to
//! `ipc.db.rescued` (`VACUUM INTO`: one consistent snapshot) and then refuses all work, so the
//! copy holds every acknowledged message. The next start puts the copy back at the path,
//! moving whatever is there aside, never deleting it.

use std::fs::{self, DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::health::side_file;

/// What the copy is called: the database's name plus this.
pub const RESCUED_SUFFIX: &str = ".rescued";

/// Saves what `conn` sees to `<database>.rescued` and returns that path. Blocking: runs on
/// the writer thread, outside any transaction.
pub fn save(conn: &Connection, database: &Path) -> Result<PathBuf, String> {
    let target = side_file(database, RESCUED_SUFFIX);
    let partial = side_file(database, ".rescued-partial");
    if let Some(dir) = database.parent() {
        // The whole data directory may be what was removed.
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let _ = fs::remove_file(&partial);
    // Created empty and private first: VACUUM INTO would create it world-readable.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
    let written = conn
        .execute("VACUUM INTO ?1", [partial.to_string_lossy()])
        .map_err(|e| format!("copying the open database failed: {e}"))
        .and_then(|_| sync(&partial))
        .and_then(|_| {
            fs::rename(&partial, &target).map_err(|e| format!("cannot rename the copy: {e}"))
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&partial);
        return Err(e);
    }
    if let Some(dir) = database.parent() {
        let _ = sync(dir);
    }
    Ok(target)
}

/// At start: if a rescued copy exists, moves `ipc.db`, `-wal` and `-shm` (whichever exist)
/// aside and puts the copy in their place. Returns what it did, for the log.
pub fn adopt(database: &Path) -> std::io::Result<Option<String>> {
    let rescued = side_file(database, RESCUED_SUFFIX);
    if !rescued.exists() {
        return Ok(None);
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let mut moved = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let file = side_file(database, suffix);
        if fs::symlink_metadata(&file).is_ok() {
            let aside = side_file(database, &format!("{suffix}.replaced-{stamp}"));
            fs::rename(&file, &aside)?;
            moved.push(aside.display().to_string());
        }
    }
    fs::rename(&rescued, database)?;
    if let Some(dir) = database.parent() {
        let _ = sync(dir);
    }
    let aside = if moved.is_empty() {
        String::new()
    } else {
        format!("; what was at the path is kept as {}", moved.join(", "))
    };
    Ok(Some(format!(
        "restored {} from the copy the previous broker saved when its database was removed or replaced{aside}",
        database.display()
    )))
}

fn sync(path: &Path) -> Result<(), String> {
    fs::File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", path.display()))
}
