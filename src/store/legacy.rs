//! The SQL of `claude-ipc import-legacy`: reading the Python original's `messages.db`
//! ([`LegacySource`]), and writing what it held into this broker's database beside a running
//! broker ([`ImportTarget`], whose transactions are [`Tx`]s).
//!
//! The original's schema: `messages(id, from_id, to_id, content, timestamp, data, summary,
//! large_file_path, read_flag)`, `instances(instance_id, last_seen)`, `sessions(...)` (never
//! imported) and `name_history(old_name, new_name, changed_at)`. Its columns are read through
//! `CAST(... AS TEXT)` so that a value of an unexpected type is read, not refused.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};

use super::queries::MessageId;
use super::{StoreError, Tx};
use crate::domain::{InstanceName, Timestamp};

/// The columns the import needs from each legacy table.
const REQUIRED: &[(&str, &[&str])] = &[
    (
        "messages",
        &[
            "id",
            "from_id",
            "to_id",
            "content",
            "timestamp",
            "data",
            "large_file_path",
            "read_flag",
        ],
    ),
    ("instances", &["instance_id", "last_seen"]),
    ("name_history", &["old_name", "new_name", "changed_at"]),
];

/// One unread message of the original.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyMessage {
    pub id: i64,
    pub from_id: String,
    pub to_id: String,
    pub content: String,
    pub timestamp: String,
    pub data: Option<String>,
    pub large_file_path: Option<String>,
}

/// One row of the original's `name_history`.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyRename {
    pub old_name: String,
    pub new_name: String,
    pub changed_at: String,
}

/// The condition for mail the original never delivered. `read_flag` defaults to 0; NULL is
/// treated as unread too, so nothing undelivered is left behind.
const UNREAD: &str = "coalesce(read_flag, 0) = 0";

/// The original's `messages.db`, open read-only.
pub struct LegacySource {
    conn: Connection,
}

impl LegacySource {
    /// Opens the file read-only; a busy file is waited for up to `busy_timeout`.
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<LegacySource, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(busy_timeout)?;
        Ok(LegacySource { conn })
    }

    /// What is wrong with `conn` as a legacy database, or `None` if it has every table and column
    /// the import reads.
    pub fn schema_problem(&self) -> Result<Option<String>, StoreError> {
        for (table, columns) in REQUIRED {
            let mut statement = self
                .conn
                .prepare("SELECT name FROM pragma_table_info(?1)")?;
            let present: Vec<String> = statement
                .query_map([table], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            if present.is_empty() {
                return Ok(Some(format!("it has no `{table}` table")));
            }
            let missing: Vec<&str> = columns
                .iter()
                .copied()
                .filter(|column| !present.iter().any(|p| p == column))
                .collect();
            if !missing.is_empty() {
                return Ok(Some(format!(
                    "its `{table}` table lacks {}",
                    missing.join(", ")
                )));
            }
        }
        Ok(None)
    }

    pub fn count_unread(&self) -> Result<u64, StoreError> {
        let count = self.conn.query_row(
            &format!("SELECT count(*) FROM messages WHERE {UNREAD}"),
            [],
            |row| row.get::<_, i64>(0),
        )?;
        Ok(count as u64)
    }

    pub fn count_read(&self) -> Result<u64, StoreError> {
        let count = self.conn.query_row(
            &format!("SELECT count(*) FROM messages WHERE NOT ({UNREAD})"),
            [],
            |row| row.get::<_, i64>(0),
        )?;
        Ok(count as u64)
    }

    /// Up to `limit` unread messages with an id above `after`, in id order (the order the
    /// original stored them).
    pub fn unread_after(&self, after: i64, limit: u32) -> Result<Vec<LegacyMessage>, StoreError> {
        let mut statement = self.conn.prepare_cached(&format!(
            "SELECT id, coalesce(CAST(from_id AS TEXT), ''), coalesce(CAST(to_id AS TEXT), ''),
                    coalesce(CAST(content AS TEXT), ''), coalesce(CAST(timestamp AS TEXT), ''),
                    CAST(data AS TEXT), CAST(large_file_path AS TEXT)
             FROM messages WHERE {UNREAD} AND id > ?1 ORDER BY id LIMIT ?2"
        ))?;
        let rows = statement.query_map(params![after, limit], |row| {
            Ok(LegacyMessage {
                id: row.get(0)?,
                from_id: row.get(1)?,
                to_id: row.get(2)?,
                content: row.get(3)?,
                timestamp: row.get(4)?,
                data: row.get(5)?,
                large_file_path: row.get(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The original's instances: name and last-seen text.
    pub fn instances(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut statement = self.conn.prepare(
            "SELECT CAST(instance_id AS TEXT), coalesce(CAST(last_seen AS TEXT), '')
             FROM instances WHERE instance_id IS NOT NULL ORDER BY instance_id",
        )?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The original's renames, oldest first.
    pub fn renames(&self) -> Result<Vec<LegacyRename>, StoreError> {
        let mut statement = self.conn.prepare(
            "SELECT CAST(old_name AS TEXT), CAST(new_name AS TEXT),
                    coalesce(CAST(changed_at AS TEXT), '')
             FROM name_history WHERE old_name IS NOT NULL AND new_name IS NOT NULL
             ORDER BY changed_at",
        )?;
        let rows = statement.query_map([], |row| {
            Ok(LegacyRename {
                old_name: row.get(0)?,
                new_name: row.get(1)?,
                changed_at: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

// ---- the target: this broker's database ----

/// This broker's database, on a connection of the import's own beside the broker's writer.
pub struct ImportTarget {
    conn: Connection,
}

impl ImportTarget {
    /// Opens (creating and migrating if needed) the database; a write waits for the broker's
    /// writer up to `busy_timeout`.
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<ImportTarget, StoreError> {
        let conn = super::open_side_connection(path)?;
        conn.busy_timeout(busy_timeout)?;
        Ok(ImportTarget { conn })
    }

    /// Runs `work` in one immediate transaction: all of it is stored, or none.
    pub fn in_transaction(
        &mut self,
        work: impl FnOnce(&Tx<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let transaction = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        work(&Tx { conn: &transaction })?;
        super::search::index_pending(&transaction)?;
        Ok(transaction.commit()?)
    }
}

const RECORD_IMPORT: &str =
    "INSERT INTO legacy_imports (kind, fingerprint, legacy_key, source, message_id, imported_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

impl Tx<'_> {
    /// Whether a legacy row with this fingerprint was imported before.
    pub fn already_imported(&self, kind: &str, fingerprint: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM legacy_imports WHERE kind = ?1 AND fingerprint = ?2")?
            .exists(params![kind, fingerprint])?)
    }

    /// Remembers that a legacy row was imported (or deliberately passed over), so a second run
    /// skips it.
    pub fn record_import(
        &self,
        kind: &str,
        fingerprint: &str,
        legacy_key: &str,
        source: &str,
        message_id: Option<MessageId>,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.conn.prepare_cached(RECORD_IMPORT)?.execute(params![
            kind,
            fingerprint,
            legacy_key,
            source,
            message_id,
            now
        ])?;
        Ok(())
    }

    /// Registers an imported instance unless the name is registered here already (then this
    /// broker's own record wins). Returns whether a row was added.
    pub fn insert_instance(
        &self,
        name: &InstanceName,
        last_seen: Timestamp,
    ) -> Result<bool, StoreError> {
        let added = self
            .conn
            .prepare_cached(
                "INSERT INTO instances (name, registered_at, last_seen_at) VALUES (?1, ?2, ?2)
                 ON CONFLICT (name) DO NOTHING",
            )?
            .execute(params![name, last_seen])?;
        Ok(added == 1)
    }

    /// Adds an imported forward unless `old_name` already forwards somewhere here. Returns whether
    /// a row was added.
    pub fn insert_forward(
        &self,
        old_name: &InstanceName,
        new_name: &InstanceName,
        created_at: Timestamp,
        expires_at: Timestamp,
    ) -> Result<bool, StoreError> {
        let added = self
            .conn
            .prepare_cached(
                "INSERT INTO name_forwards (old_name, new_name, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (old_name) DO NOTHING",
            )?
            .execute(params![old_name, new_name, created_at, expires_at])?;
        Ok(added == 1)
    }
}
