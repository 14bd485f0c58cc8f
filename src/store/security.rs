//! The data directory's own memory of its protection (`data_dir_security`, one row): which
//! mode it is in and, in secret mode, the salt and verifier of the secret. The decision what
//! a start may do is `server::data_dir_guard`'s; this is only its SQL.

use rusqlite::{params, OptionalExtension};

use super::{StoreError, Tx};
use crate::domain::Timestamp;

/// What the directory remembers. The secret is never among it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protection {
    /// Never protected, or put back in open mode on purpose.
    Open,
    /// Protected: a broker must be started with the secret these were made from.
    Secret { salt: Vec<u8>, verifier: Vec<u8> },
}

impl Tx<'_> {
    /// The directory's protection as stored; no row means it was never protected.
    pub fn read_protection(&self) -> Result<Protection, StoreError> {
        let row: Option<(String, Option<String>, Option<String>)> = self
            .conn
            .query_row(
                "SELECT mode, salt, verifier FROM data_dir_security WHERE id = 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?;
        Ok(match row {
            Some((mode, Some(salt), Some(verifier))) if mode == "secret" => Protection::Secret {
                // Text a person could have edited by hand: unreadable hex counts as a verifier no
                // secret matches, so the broker refuses rather than opening the directory up.
                salt: from_hex(&salt).unwrap_or_default(),
                verifier: from_hex(&verifier).unwrap_or_default(),
            },
            Some((mode, ..)) if mode == "secret" => Protection::Secret {
                salt: Vec::new(),
                verifier: Vec::new(),
            },
            _ => Protection::Open,
        })
    }

    /// Records `protection` as the directory's, replacing what was there.
    pub fn record_protection(
        &self,
        protection: &Protection,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let (mode, salt, verifier) = match protection {
            Protection::Open => ("open", None, None),
            Protection::Secret { salt, verifier } => {
                ("secret", Some(hex(salt)), Some(hex(verifier)))
            }
        };
        self.conn.execute(
            "INSERT INTO data_dir_security (id, mode, salt, verifier, set_at)
             VALUES (1, ?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET
                 mode = excluded.mode, salt = excluded.salt,
                 verifier = excluded.verifier, set_at = excluded.set_at",
            params![mode, salt, verifier, now],
        )?;
        Ok(())
    }

    /// Ends every session still active, as a register again would; returns how many.
    pub fn end_all_sessions(&self, now: Timestamp) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "UPDATE sessions SET revoked_at = ?1 WHERE revoked_at IS NULL",
            [now],
        )?)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migrated() -> (tempfile::TempDir, rusqlite::Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open_side_connection(&dir.path().join("ipc.db")).unwrap();
        (dir, conn)
    }

    fn at(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap()
    }

    #[test]
    fn a_new_database_is_open_and_a_recorded_protection_reads_back() {
        let (_dir, conn) = migrated();
        let tx = Tx { conn: &conn };
        assert_eq!(tx.read_protection().unwrap(), Protection::Open);
        let secret = Protection::Secret {
            salt: vec![0, 1, 0xfe],
            verifier: vec![0xab; 32],
        };
        tx.record_protection(&secret, at("2026-12-01T00:00:00.000Z"))
            .unwrap();
        assert_eq!(tx.read_protection().unwrap(), secret);
        tx.record_protection(&Protection::Open, at("2026-12-01T00:00:01.000Z"))
            .unwrap();
        assert_eq!(tx.read_protection().unwrap(), Protection::Open);
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM data_dir_security", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
    }

    #[test]
    fn a_hand_edited_verifier_still_counts_as_protected() {
        let (_dir, conn) = migrated();
        conn.execute(
            "INSERT INTO data_dir_security VALUES (1, 'secret', 'zz', 'not hex', 'x')",
            [],
        )
        .unwrap();
        assert!(matches!(
            Tx { conn: &conn }.read_protection().unwrap(),
            Protection::Secret { .. }
        ));
    }
}
