//! Every SQL statement the broker runs, as functions over a `&Connection` so that a caller's
//! transaction (the writer thread's batch) is passed straight in. Hot statements are cached;
//! "no row" comes back as `None`, not an error.

use rusqlite::{params, Connection, OptionalExtension, Row};

/// The id of a stored message; also what `send` returns and `check` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub i64);

/// A message about to be stored.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    pub sender: &'a str,
    pub addressed_to: &'a str,
    pub recipient: &'a str,
    pub kind: &'a str,
    pub content: &'a str,
    pub data: Option<&'a str>,
    pub large_file: Option<&'a str>,
    pub nonce: Option<&'a str>,
    pub sender_timestamp: Option<&'a str>,
    pub received_at: &'a str,
}

/// A queued message as `check` returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub id: MessageId,
    pub sender: String,
    pub addressed_to: String,
    pub recipient: String,
    pub kind: String,
    pub content: String,
    pub data: Option<String>,
    pub nonce: Option<String>,
    pub sender_timestamp: Option<String>,
    pub received_at: String,
    /// How many times it was handed out before this read.
    pub delivery_count: u32,
}

/// A session found by its token hash.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: i64,
    pub instance_name: String,
    pub last_used_at: String,
    pub revoked: bool,
}

// ---- instances and sessions ----

pub(crate) const FIND_SESSION: &str =
    "SELECT id, instance_name, last_used_at, revoked_at IS NOT NULL
     FROM sessions WHERE token_sha256 = ?1";

pub fn find_session(conn: &Connection, token_sha256: &str) -> rusqlite::Result<Option<SessionRow>> {
    conn.prepare_cached(FIND_SESSION)?
        .query_row([token_sha256], |row| {
            Ok(SessionRow {
                id: row.get(0)?,
                instance_name: row.get(1)?,
                last_used_at: row.get(2)?,
                revoked: row.get(3)?,
            })
        })
        .optional()
}

pub(crate) const TOUCH_SESSION: &str = "UPDATE sessions SET last_used_at = ?2 WHERE id = ?1";
pub(crate) const TOUCH_INSTANCE: &str = "UPDATE instances SET last_seen_at = ?2 WHERE name = ?1";

/// Refreshes the sliding expiry of a session and the instance's last-seen time.
pub fn touch_session(
    conn: &Connection,
    session_id: i64,
    name: &str,
    now: &str,
) -> rusqlite::Result<()> {
    conn.prepare_cached(TOUCH_SESSION)?
        .execute(params![session_id, now])?;
    conn.prepare_cached(TOUCH_INSTANCE)?
        .execute(params![name, now])?;
    Ok(())
}

pub(crate) const REVOKE_SESSIONS: &str =
    "UPDATE sessions SET revoked_at = ?2 WHERE instance_name = ?1 AND revoked_at IS NULL";

/// Revokes every active session of `name` (one active session per instance).
pub fn revoke_sessions(conn: &Connection, name: &str, now: &str) -> rusqlite::Result<usize> {
    conn.prepare_cached(REVOKE_SESSIONS)?
        .execute(params![name, now])
}

pub(crate) const INSERT_SESSION: &str =
    "INSERT INTO sessions (instance_name, token_sha256, created_at, last_used_at)
     VALUES (?1, ?2, ?3, ?3)";

pub fn insert_session(
    conn: &Connection,
    name: &str,
    token_sha256: &str,
    now: &str,
) -> rusqlite::Result<i64> {
    conn.prepare_cached(INSERT_SESSION)?
        .execute(params![name, token_sha256, now])?;
    Ok(conn.last_insert_rowid())
}

pub(crate) const UPSERT_INSTANCE: &str =
    "INSERT INTO instances (name, registered_at, last_seen_at) VALUES (?1, ?2, ?2)
     ON CONFLICT (name) DO UPDATE SET last_seen_at = excluded.last_seen_at";

/// Registers `name`, or refreshes its last-seen time if it is registered already.
pub fn upsert_instance(conn: &Connection, name: &str, now: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(UPSERT_INSTANCE)?
        .execute(params![name, now])?;
    Ok(())
}

pub(crate) const INSTANCE_EXISTS: &str = "SELECT 1 FROM instances WHERE name = ?1";

pub fn instance_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached(INSTANCE_EXISTS)?.exists([name])
}

pub(crate) const LAST_RENAMED_AT: &str = "SELECT last_renamed_at FROM instances WHERE name = ?1";

/// When `name` last renamed itself, if ever.
pub fn last_renamed_at(conn: &Connection, name: &str) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached(LAST_RENAMED_AT)?
        .query_row([name], |row| row.get(0))
        .optional()
        .map(Option::flatten)
}

pub(crate) const LIST_INSTANCES: &str = "SELECT name, last_seen_at FROM instances ORDER BY name";

/// Registered instances, by name, with their last-seen time.
pub fn list_instances(conn: &Connection) -> rusqlite::Result<Vec<(String, String)>> {
    let mut statement = conn.prepare_cached(LIST_INSTANCES)?;
    let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    rows.collect()
}

pub(crate) const RENAME_INSTANCE_ROW: &str =
    "UPDATE instances SET name = ?2, last_renamed_at = ?3, last_seen_at = ?3 WHERE name = ?1";
pub(crate) const RENAME_SESSIONS: &str =
    "UPDATE sessions SET instance_name = ?2 WHERE instance_name = ?1";
pub(crate) const RENAME_PENDING_MAIL: &str =
    "UPDATE messages SET recipient = ?2 WHERE recipient = ?1 AND delivered_at IS NULL";
pub(crate) const RENAME_REQUEST_LOG: &str =
    "UPDATE request_log SET instance_name = ?2 WHERE instance_name = ?1";
pub(crate) const RENAME_FORWARD_TARGETS: &str =
    "UPDATE name_forwards SET new_name = ?2 WHERE new_name = ?1";
pub(crate) const UPSERT_FORWARD: &str =
    "INSERT INTO name_forwards (old_name, new_name, created_at, expires_at)
     VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (old_name) DO UPDATE SET
       new_name = excluded.new_name, created_at = excluded.created_at,
       expires_at = excluded.expires_at";

/// Moves everything that belongs to `old` to `new`: the instance row, its sessions, its pending
/// mail (merged with mail already waiting for `new`), its rate-limit window, and forwards that
/// pointed at `old`. Then `old` forwards to `new` until `forward_expires_at`.
pub fn rename_instance(
    conn: &Connection,
    old: &str,
    new: &str,
    now: &str,
    forward_expires_at: &str,
) -> rusqlite::Result<()> {
    conn.execute(RENAME_INSTANCE_ROW, params![old, new, now])?;
    conn.execute(RENAME_SESSIONS, params![old, new])?;
    conn.execute(RENAME_PENDING_MAIL, params![old, new])?;
    conn.execute(RENAME_REQUEST_LOG, params![old, new])?;
    conn.execute(RENAME_FORWARD_TARGETS, params![old, new])?;
    delete_forward(conn, new)?;
    conn.execute(UPSERT_FORWARD, params![old, new, now, forward_expires_at])?;
    Ok(())
}

// ---- forwards ----

pub(crate) const RESOLVE_FORWARD: &str =
    "SELECT new_name FROM name_forwards WHERE old_name = ?1 AND expires_at > ?2";

/// Where mail to `name` goes now, if `name` has a live forward.
pub fn resolve_forward(
    conn: &Connection,
    name: &str,
    now: &str,
) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached(RESOLVE_FORWARD)?
        .query_row(params![name, now], |row| row.get(0))
        .optional()
}

pub(crate) const DELETE_FORWARD: &str = "DELETE FROM name_forwards WHERE old_name = ?1";

/// Drops the forward from `name`: a real instance now holds that name.
pub fn delete_forward(conn: &Connection, name: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(DELETE_FORWARD)?.execute([name])?;
    Ok(())
}

// ---- messages ----

pub(crate) const INSERT_MESSAGE: &str =
    "INSERT INTO messages (sender, addressed_to, recipient, kind, content, data, large_file,
                           nonce, sender_timestamp, received_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

pub fn insert_message(conn: &Connection, message: &NewMessage<'_>) -> rusqlite::Result<MessageId> {
    conn.prepare_cached(INSERT_MESSAGE)?.execute(params![
        message.sender,
        message.addressed_to,
        message.recipient,
        message.kind,
        message.content,
        message.data,
        message.large_file,
        message.nonce,
        message.sender_timestamp,
        message.received_at,
    ])?;
    Ok(MessageId(conn.last_insert_rowid()))
}

pub(crate) const PENDING_COUNT: &str =
    "SELECT count(*) FROM messages WHERE recipient = ?1 AND delivered_at IS NULL";

/// Every message not yet delivered to `recipient`, leased or not: what the queue cap counts.
pub fn pending_count(conn: &Connection, recipient: &str) -> rusqlite::Result<u32> {
    conn.prepare_cached(PENDING_COUNT)?
        .query_row([recipient], |row| row.get(0))
}

/// Mail a `check` may hand out at `now`: not delivered, and not held by a live lease. A macro,
/// not a `const`, so that `concat!` can build whole statements from it at compile time.
macro_rules! available_to_recipient {
    () => {
        "recipient = ?1 AND delivered_at IS NULL AND (leased_until IS NULL OR leased_until <= ?2)"
    };
}

pub(crate) const LEASED_COUNT: &str = "SELECT count(*) FROM messages
     WHERE recipient = ?1 AND delivered_at IS NULL
       AND leased_until IS NOT NULL AND leased_until > ?2";

/// How many messages a `check` at `now` could hand out to `recipient`: its pending mail less
/// what live leases hold. Both counts are read from partial indexes alone, never the table.
pub fn available_count(conn: &Connection, recipient: &str, now: &str) -> rusqlite::Result<u32> {
    let pending = pending_count(conn, recipient)?;
    let leased: u32 = conn
        .prepare_cached(LEASED_COUNT)?
        .query_row(params![recipient, now], |row| row.get(0))?;
    Ok(pending.saturating_sub(leased))
}

pub(crate) const WAITING_SENDERS: &str = concat!(
    "SELECT sender FROM messages WHERE ",
    available_to_recipient!(),
    " GROUP BY sender ORDER BY min(id) LIMIT ?3"
);

/// What `count` reports: how many messages a `check` at `now` could hand out to `recipient`
/// (leased mail is not waiting), and up to `max_senders` distinct senders of them, ordered by
/// each sender's oldest such message. Reads only.
pub fn waiting_summary(
    conn: &Connection,
    recipient: &str,
    now: &str,
    max_senders: u32,
) -> rusqlite::Result<(u32, Vec<String>)> {
    let count = available_count(conn, recipient, now)?;
    let mut statement = conn.prepare_cached(WAITING_SENDERS)?;
    let senders = statement
        .query_map(params![recipient, now, max_senders], |row| row.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok((count, senders))
}

pub(crate) const AVAILABLE_FOR: &str = concat!(
    "SELECT id, sender, addressed_to, recipient, kind, content, data, nonce,
            sender_timestamp, received_at, delivery_count
     FROM messages WHERE ",
    available_to_recipient!(),
    " ORDER BY id LIMIT ?3"
);

/// Hands the oldest messages a `check` at `now` may give `recipient` to `take`, oldest first,
/// until `take` refuses one or `limit` were taken. Returns whether any such message was left
/// (the reply's `more`). Rows are read one at a time, so a long queue costs only what fits.
pub fn available_for(
    conn: &Connection,
    recipient: &str,
    now: &str,
    limit: u32,
    mut take: impl FnMut(&StoredMessage) -> bool,
) -> rusqlite::Result<bool> {
    let mut statement = conn.prepare_cached(AVAILABLE_FOR)?;
    let mut rows = statement.query(params![recipient, now, i64::from(limit) + 1])?;
    let mut taken = 0;
    while let Some(row) = rows.next()? {
        if taken == limit || !take(&stored_message(row)?) {
            return Ok(true);
        }
        taken += 1;
    }
    Ok(false)
}

pub(crate) const NEXT_LEASE_EXPIRY: &str = "SELECT min(leased_until) FROM messages
     WHERE recipient = ?1 AND delivered_at IS NULL AND leased_until > ?2";

/// When the first lease held on `recipient`'s mail after `now` runs out, if any does.
pub fn next_lease_expiry(
    conn: &Connection,
    recipient: &str,
    now: &str,
) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached(NEXT_LEASE_EXPIRY)?
        .query_row(params![recipient, now], |row| row.get(0))
}

fn stored_message(row: &Row<'_>) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        id: MessageId(row.get(0)?),
        sender: row.get(1)?,
        addressed_to: row.get(2)?,
        recipient: row.get(3)?,
        kind: row.get(4)?,
        content: row.get(5)?,
        data: row.get(6)?,
        nonce: row.get(7)?,
        sender_timestamp: row.get(8)?,
        received_at: row.get(9)?,
        delivery_count: row.get(10)?,
    })
}

pub(crate) const LEASE: &str =
    "UPDATE messages SET leased_until = ?2, delivery_count = delivery_count + 1
     WHERE id = ?1 AND delivered_at IS NULL";

/// Leases these messages until `until`, counting the hand-out.
pub fn lease(conn: &Connection, ids: &[MessageId], until: &str) -> rusqlite::Result<usize> {
    update_waiting(conn, LEASE, ids, until)
}

/// Runs `update` (with `?1` the id and `?2` the time) for each id; returns the rows changed.
fn update_waiting(
    conn: &Connection,
    update: &str,
    ids: &[MessageId],
    at: &str,
) -> rusqlite::Result<usize> {
    let mut statement = conn.prepare_cached(update)?;
    let mut changed = 0;
    for id in ids {
        changed += statement.execute(params![id.0, at])?;
    }
    Ok(changed)
}

pub(crate) const HOLD: &str = "UPDATE messages SET leased_until = ?2
     WHERE id = ?1 AND delivered_at IS NULL";

/// Holds these messages until `until` while a reply carrying them is on its way: nobody else
/// is handed them meanwhile. Unlike [`lease`] it does not count a hand-out; settling does.
pub fn hold(conn: &Connection, ids: &[MessageId], until: &str) -> rusqlite::Result<usize> {
    update_waiting(conn, HOLD, ids, until)
}

pub(crate) const DELIVER_HELD: &str =
    "UPDATE messages SET delivered_at = ?2, delivery_count = delivery_count + 1
     WHERE id = ?1 AND delivered_at IS NULL AND leased_until = ?3";

/// Marks held messages delivered, but only those still held by this very hold (`until`): a
/// hold that ran out may have let another reader take the mail since.
pub fn deliver_held(
    conn: &Connection,
    ids: &[MessageId],
    until: &str,
    now: &str,
) -> rusqlite::Result<usize> {
    let mut statement = conn.prepare_cached(DELIVER_HELD)?;
    let mut changed = 0;
    for id in ids {
        changed += statement.execute(params![id.0, now, until])?;
    }
    Ok(changed)
}

pub(crate) const RELEASE_HELD: &str = "UPDATE messages SET leased_until = NULL
     WHERE id = ?1 AND delivered_at IS NULL AND leased_until = ?2";

/// Ends a hold or lease taken until `until`, so the mail is handed out again at once; a newer
/// lease on the same mail (this one ran out and another reader took it) is left alone.
pub fn release_held(conn: &Connection, ids: &[MessageId], until: &str) -> rusqlite::Result<usize> {
    update_waiting(conn, RELEASE_HELD, ids, until)
}

pub(crate) const RELEASE_OWNED: &str = "UPDATE messages SET leased_until = NULL
     WHERE id = ?1 AND recipient = ?2 AND delivered_at IS NULL";

/// What an `ack` with `release` did to one id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// It was waiting (leased or not) and can be handed out again now.
    Released,
    /// It was already delivered: too late to give it back.
    AlreadyAcked,
    /// No such message for this recipient (alike for someone else's, as with `ack`).
    Unknown,
}

/// Hands message `id` back to `recipient`'s queue if it owns it and it is not delivered.
pub fn release_owned(
    conn: &Connection,
    recipient: &str,
    id: MessageId,
) -> rusqlite::Result<Released> {
    let owned = conn
        .prepare_cached(ACK_OWNED)?
        .query_row(params![id.0, recipient], |row| row.get::<_, bool>(0))
        .optional()?;
    match owned {
        None => Ok(Released::Unknown),
        Some(true) => Ok(Released::AlreadyAcked),
        Some(false) => {
            conn.prepare_cached(RELEASE_OWNED)?
                .execute(params![id.0, recipient])?;
            Ok(Released::Released)
        }
    }
}

// Left to itself the planner scans every waiting message; the partial index holds only the
// leased ones, so start-up time does not grow with the queue.
pub(crate) const RELEASE_LEASES: &str =
    "UPDATE messages INDEXED BY messages_leased_by_recipient SET leased_until = NULL
     WHERE delivered_at IS NULL AND leased_until IS NOT NULL";

/// Ends every lease. Run at start-up: a lease taken by a reader of the previous run may have
/// been committed without its reply ever reaching the reader (the broker died in between), so
/// the mail is handed out again at once instead of staying hidden until the lease runs out.
/// A reader that did get it may see it twice, which at-least-once allows; its ack still works.
pub fn release_leases(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(RELEASE_LEASES, [])
}

/// What an `ack` of one id did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// It was pending and is now delivered.
    Acked,
    /// It was already delivered (an earlier ack, or a legacy check).
    AlreadyAcked,
    /// No such message for this recipient. Someone else's message looks the same, so an ack
    /// cannot probe which ids exist.
    Unknown,
}

pub(crate) const ACK_OWNED: &str =
    "SELECT delivered_at IS NOT NULL FROM messages WHERE id = ?1 AND recipient = ?2";
pub(crate) const ACK_SETTLE: &str = "UPDATE messages SET delivered_at = ?2 WHERE id = ?1";

/// Settles message `id` if `recipient` owns it.
pub fn ack(
    conn: &Connection,
    recipient: &str,
    id: MessageId,
    now: &str,
) -> rusqlite::Result<Settled> {
    let owned = conn
        .prepare_cached(ACK_OWNED)?
        .query_row(params![id.0, recipient], |row| row.get::<_, bool>(0))
        .optional()?;
    match owned {
        None => Ok(Settled::Unknown),
        Some(true) => Ok(Settled::AlreadyAcked),
        Some(false) => {
            conn.prepare_cached(ACK_SETTLE)?
                .execute(params![id.0, now])?;
            Ok(Settled::Acked)
        }
    }
}

// ---- replay protection ----

pub(crate) const FIND_NONCE: &str =
    "SELECT message_id FROM send_nonces WHERE sender = ?1 AND nonce = ?2 AND seen_at >= ?3";

/// The message a nonce from `sender` stored, if it was seen at or after `since`.
pub fn find_nonce(
    conn: &Connection,
    sender: &str,
    nonce: &str,
    since: &str,
) -> rusqlite::Result<Option<MessageId>> {
    conn.prepare_cached(FIND_NONCE)?
        .query_row(params![sender, nonce, since], |row| {
            Ok(MessageId(row.get(0)?))
        })
        .optional()
}

pub(crate) const RECORD_NONCE: &str =
    "INSERT INTO send_nonces (sender, nonce, message_id, seen_at) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (sender, nonce) DO UPDATE SET
       message_id = excluded.message_id, seen_at = excluded.seen_at";

pub fn record_nonce(
    conn: &Connection,
    sender: &str,
    nonce: &str,
    id: MessageId,
    now: &str,
) -> rusqlite::Result<()> {
    conn.prepare_cached(RECORD_NONCE)?
        .execute(params![sender, nonce, id.0, now])?;
    Ok(())
}

// ---- rate limit and auth failures ----

pub(crate) const REQUESTS_SINCE: &str =
    "SELECT count(*), min(at) FROM request_log WHERE instance_name = ?1 AND at >= ?2";

/// How many requests `name` made at or after `since`, and the earliest of them.
pub fn requests_since(
    conn: &Connection,
    name: &str,
    since: &str,
) -> rusqlite::Result<(u32, Option<String>)> {
    conn.prepare_cached(REQUESTS_SINCE)?
        .query_row(params![name, since], |row| Ok((row.get(0)?, row.get(1)?)))
}

pub(crate) const FORGET_OLD_REQUESTS: &str =
    "DELETE FROM request_log WHERE instance_name = ?1 AND at < ?2";
pub(crate) const LOG_REQUEST: &str = "INSERT INTO request_log (instance_name, at) VALUES (?1, ?2)";

/// Records one request and forgets this instance's requests older than the window.
pub fn log_request(
    conn: &Connection,
    name: &str,
    now: &str,
    window_start: &str,
) -> rusqlite::Result<()> {
    conn.prepare_cached(FORGET_OLD_REQUESTS)?
        .execute(params![name, window_start])?;
    conn.prepare_cached(LOG_REQUEST)?
        .execute(params![name, now])?;
    Ok(())
}

pub(crate) const RECORD_AUTH_FAILURE: &str =
    "INSERT INTO auth_failures (at, instance_name, peer, reason) VALUES (?1, ?2, ?3, ?4)";

pub fn record_auth_failure(
    conn: &Connection,
    now: &str,
    name: Option<&str>,
    peer: &str,
    reason: &str,
) -> rusqlite::Result<()> {
    conn.prepare_cached(RECORD_AUTH_FAILURE)?
        .execute(params![now, name, peer, reason])?;
    Ok(())
}

// ---- broker runs ----

pub(crate) const RECORD_START: &str =
    "INSERT INTO broker_runs (pid, version, addr, started_at) VALUES (?1, ?2, ?3, ?4)";

pub fn record_start(
    conn: &Connection,
    pid: u32,
    version: &str,
    addr: &str,
    now: &str,
) -> rusqlite::Result<i64> {
    conn.execute(RECORD_START, params![pid, version, addr, now])?;
    Ok(conn.last_insert_rowid())
}

pub(crate) const RECORD_STOP: &str = "UPDATE broker_runs SET stopped_at = ?2 WHERE id = ?1";

pub fn record_stop(conn: &Connection, run_id: i64, now: &str) -> rusqlite::Result<()> {
    conn.execute(RECORD_STOP, params![run_id, now])?;
    Ok(())
}

// ---- the sweeper: each call removes at most `batch` rows so it never holds the writer long ----

/// What one sweep removed, and the large-message files that belonged to removed mail.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SweepReport {
    pub sessions: usize,
    pub forwards: usize,
    pub future_mail: usize,
    pub delivered_mail: usize,
    pub nonces: usize,
    pub request_log: usize,
    pub auth_failures: usize,
    pub files_to_remove: Vec<String>,
}

pub struct SweepCutoffs<'a> {
    pub now: &'a str,
    pub session_idle_before: &'a str,
    pub future_mail_before: &'a str,
    pub delivered_before: &'a str,
    pub nonces_before: &'a str,
    pub request_log_before: &'a str,
    pub auth_failures_before: &'a str,
}

pub(crate) const SWEEP_SESSIONS: &str = "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions
       WHERE revoked_at IS NOT NULL OR last_used_at < ?1 LIMIT ?2)";
pub(crate) const SWEEP_FORWARDS: &str =
    "DELETE FROM name_forwards WHERE old_name IN (SELECT old_name FROM name_forwards
       WHERE expires_at <= ?1 LIMIT ?2)";
pub(crate) const SWEEP_NONCES: &str =
    "DELETE FROM send_nonces WHERE rowid IN (SELECT rowid FROM send_nonces
       WHERE seen_at < ?1 LIMIT ?2)";
pub(crate) const SWEEP_REQUEST_LOG: &str =
    "DELETE FROM request_log WHERE rowid IN (SELECT rowid FROM request_log
       WHERE at < ?1 LIMIT ?2)";
pub(crate) const SWEEP_AUTH_FAILURES: &str =
    "DELETE FROM auth_failures WHERE id IN (SELECT id FROM auth_failures
       WHERE at < ?1 LIMIT ?2)";
pub(crate) const SWEEP_FUTURE_MAIL: &str = "SELECT id, large_file FROM messages
     WHERE delivered_at IS NULL AND received_at < ?1
       AND recipient NOT IN (SELECT name FROM instances)
     LIMIT ?2";
pub(crate) const SWEEP_DELIVERED_MAIL: &str =
    "SELECT id, large_file FROM messages WHERE delivered_at < ?1 LIMIT ?2";
pub(crate) const DELETE_MESSAGE: &str = "DELETE FROM messages WHERE id = ?1";
pub(crate) const LARGE_FILE_IN_USE: &str = "SELECT 1 FROM messages WHERE large_file = ?1";

pub fn sweep(
    conn: &Connection,
    cut: &SweepCutoffs<'_>,
    tables: SweepTables,
    batch: u32,
) -> rusqlite::Result<SweepReport> {
    let delete = |wanted: bool, sql: &str, before: &str| -> rusqlite::Result<usize> {
        if wanted {
            conn.execute(sql, params![before, batch])
        } else {
            Ok(0)
        }
    };
    let mut report = SweepReport {
        sessions: delete(tables.sessions, SWEEP_SESSIONS, cut.session_idle_before)?,
        forwards: delete(tables.forwards, SWEEP_FORWARDS, cut.now)?,
        nonces: delete(tables.nonces, SWEEP_NONCES, cut.nonces_before)?,
        request_log: delete(
            tables.request_log,
            SWEEP_REQUEST_LOG,
            cut.request_log_before,
        )?,
        auth_failures: delete(
            tables.auth_failures,
            SWEEP_AUTH_FAILURES,
            cut.auth_failures_before,
        )?,
        ..SweepReport::default()
    };
    let mail = |wanted: bool, select: &str, before: &str| {
        if wanted {
            delete_messages_returning_files(conn, select, before, batch)
        } else {
            Ok((0, Vec::new()))
        }
    };
    let future = mail(
        tables.future_mail,
        SWEEP_FUTURE_MAIL,
        cut.future_mail_before,
    )?;
    let delivered = mail(
        tables.delivered_mail,
        SWEEP_DELIVERED_MAIL,
        cut.delivered_before,
    )?;
    report.future_mail = future.0;
    report.delivered_mail = delivered.0;
    report.files_to_remove = future.1.into_iter().chain(delivered.1).collect();
    Ok(report)
}

/// Which tables a sweep job works on. The first job of a sweep takes them all; each later one
/// only those whose last batch came back full, so a table that is done is not searched again
/// (the search for old mail of unregistered names walks every old waiting message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepTables {
    pub sessions: bool,
    pub forwards: bool,
    pub future_mail: bool,
    pub delivered_mail: bool,
    pub nonces: bool,
    pub request_log: bool,
    pub auth_failures: bool,
}

impl SweepTables {
    pub const ALL: SweepTables = SweepTables {
        sessions: true,
        forwards: true,
        future_mail: true,
        delivered_mail: true,
        nonces: true,
        request_log: true,
        auth_failures: true,
    };

    /// The tables whose batch in `report` was full, so may hold more to remove.
    pub fn still_full(report: &SweepReport, batch: usize) -> SweepTables {
        SweepTables {
            sessions: report.sessions >= batch,
            forwards: report.forwards >= batch,
            future_mail: report.future_mail >= batch,
            delivered_mail: report.delivered_mail >= batch,
            nonces: report.nonces >= batch,
            request_log: report.request_log >= batch,
            auth_failures: report.auth_failures >= batch,
        }
    }

    pub fn any(&self) -> bool {
        self.sessions
            || self.forwards
            || self.future_mail
            || self.delivered_mail
            || self.nonces
            || self.request_log
            || self.auth_failures
    }
}

fn delete_messages_returning_files(
    conn: &Connection,
    select: &str,
    before: &str,
    batch: u32,
) -> rusqlite::Result<(usize, Vec<String>)> {
    let mut statement = conn.prepare(select)?;
    let rows: Vec<(i64, Option<String>)> = statement
        .query_map(params![before, batch], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut delete = conn.prepare_cached(DELETE_MESSAGE)?;
    for (id, _) in &rows {
        delete.execute([id])?;
    }
    // Broadcast copies share one file: remove it only when no message refers to it any more.
    let mut still_used = conn.prepare_cached(LARGE_FILE_IN_USE)?;
    let mut files = Vec::new();
    for file in rows.iter().filter_map(|(_, file)| file.as_deref()) {
        if !still_used.exists([file])? && !files.iter().any(|f| f == file) {
            files.push(file.to_owned());
        }
    }
    Ok((rows.len(), files))
}
