//! Read-only inspection of the database for `claude-ipc status`. It opens its own read-only
//! connection: it never writes, never takes the broker's data-directory lock, and works
//! whether or not a broker runs (WAL lets it read beside the broker's writer).

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::StoreError;

/// How long a read waits if the database is locked by a writer (rare in WAL mode: only while a
/// checkpoint or recovery holds it).
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// One registered instance.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRow {
    pub name: String,
    pub registered_at: String,
    pub last_seen_at: String,
    /// Messages waiting for it.
    pub waiting: i64,
}

/// Mail waiting for a name nobody has registered (yet).
#[derive(Debug, Clone, PartialEq)]
pub struct UnregisteredMail {
    pub name: String,
    pub waiting: i64,
    pub oldest: String,
}

/// A forward that still redirects mail.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardRow {
    pub old_name: String,
    pub new_name: String,
    pub expires_at: String,
}

/// One broker run from `broker_runs`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub pid: i64,
    pub version: String,
    pub addr: String,
    pub started_at: String,
    /// Empty while it runs, or when it was killed or crashed.
    pub stopped_at: Option<String>,
}

/// What the database holds, as `status` reports it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    pub instances: Vec<InstanceRow>,
    pub unregistered_mail: Vec<UnregisteredMail>,
    /// All waiting messages, registered recipients or not.
    pub pending_total: i64,
    pub forwards: Vec<ForwardRow>,
    /// Authentication failures since the cut-off, per reason, most frequent first.
    pub auth_failures: Vec<(String, i64)>,
    /// The latest broker start recorded.
    pub last_run: Option<RunRow>,
    /// The highest applied migration.
    pub schema_version: Option<i64>,
}

/// Opens the database read-only. A missing file is an error that says how one is created.
pub fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    let fail = |reason: String| StoreError::Open {
        path: path.to_owned(),
        reason,
    };
    if !path.exists() {
        return Err(fail(
            "there is no database yet; `claude-ipc serve` creates it when it first starts (or pass the broker's --data-dir)".into(),
        ));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| fail(e.to_string()))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| fail(e.to_string()))?;
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
        .map_err(|e| fail(format!("{e}; is it a claude-ipc database?")))?;
    Ok(conn)
}

/// Reads everything `status` shows. `now` bounds live forwards; `failures_since` is the start
/// of the authentication-failure window. Both are stored-time text.
pub fn snapshot(conn: &Connection, now: &str, failures_since: &str) -> rusqlite::Result<Snapshot> {
    // One read transaction, so every number comes from the same moment.
    conn.execute_batch("BEGIN")?;
    let snapshot = read_all(conn, now, failures_since);
    conn.execute_batch("COMMIT")?;
    snapshot
}

fn read_all(conn: &Connection, now: &str, failures_since: &str) -> rusqlite::Result<Snapshot> {
    Ok(Snapshot {
        instances: instances(conn)?,
        unregistered_mail: unregistered_mail(conn)?,
        pending_total: conn.query_row(
            "SELECT count(*) FROM messages WHERE delivered_at IS NULL",
            [],
            |row| row.get(0),
        )?,
        forwards: forwards(conn, now)?,
        auth_failures: auth_failures(conn, failures_since)?,
        last_run: last_run(conn)?,
        schema_version: conn
            .query_row(
                "SELECT max(version) FROM refinery_schema_history",
                [],
                |row| row.get(0),
            )
            .optional()?
            .flatten(),
    })
}

fn instances(conn: &Connection) -> rusqlite::Result<Vec<InstanceRow>> {
    let mut statement = conn.prepare(
        "SELECT i.name, i.registered_at, i.last_seen_at,
                (SELECT count(*) FROM messages m
                  WHERE m.recipient = i.name AND m.delivered_at IS NULL)
         FROM instances i ORDER BY i.name",
    )?;
    let rows = statement.query_map([], |row| {
        Ok(InstanceRow {
            name: row.get(0)?,
            registered_at: row.get(1)?,
            last_seen_at: row.get(2)?,
            waiting: row.get(3)?,
        })
    })?;
    rows.collect()
}

fn unregistered_mail(conn: &Connection) -> rusqlite::Result<Vec<UnregisteredMail>> {
    let mut statement = conn.prepare(
        "SELECT recipient, count(*), min(received_at) FROM messages
         WHERE delivered_at IS NULL AND recipient NOT IN (SELECT name FROM instances)
         GROUP BY recipient ORDER BY recipient",
    )?;
    let rows = statement.query_map([], |row| {
        Ok(UnregisteredMail {
            name: row.get(0)?,
            waiting: row.get(1)?,
            oldest: row.get(2)?,
        })
    })?;
    rows.collect()
}

fn forwards(conn: &Connection, now: &str) -> rusqlite::Result<Vec<ForwardRow>> {
    let mut statement = conn.prepare(
        "SELECT old_name, new_name, expires_at FROM name_forwards
         WHERE expires_at > ?1 ORDER BY old_name",
    )?;
    let rows = statement.query_map([now], |row| {
        Ok(ForwardRow {
            old_name: row.get(0)?,
            new_name: row.get(1)?,
            expires_at: row.get(2)?,
        })
    })?;
    rows.collect()
}

fn auth_failures(conn: &Connection, since: &str) -> rusqlite::Result<Vec<(String, i64)>> {
    let mut statement = conn.prepare(
        "SELECT reason, sum(failures) AS total FROM auth_failures
         WHERE coalesce(last_at, at) > ?1
         GROUP BY reason ORDER BY total DESC, reason",
    )?;
    let rows = statement.query_map(params![since], |row| Ok((row.get(0)?, row.get(1)?)))?;
    rows.collect()
}

fn last_run(conn: &Connection) -> rusqlite::Result<Option<RunRow>> {
    conn.query_row(
        "SELECT pid, version, addr, started_at, stopped_at FROM broker_runs
         ORDER BY id DESC LIMIT 1",
        [],
        |row| {
            Ok(RunRow {
                pid: row.get(0)?,
                version: row.get(1)?,
                addr: row.get(2)?,
                started_at: row.get(3)?,
                stopped_at: row.get(4)?,
            })
        },
    )
    .optional()
}
