//! Every SQL statement a broker job runs, as the methods of its transaction handle [`Tx`], so
//! that the writer thread's batch is the transaction every statement runs in. They take and
//! return the shared domain values ([`InstanceName`], [`MessageId`], [`MessageKind`],
//! [`Timestamp`], [`TokenHash`]); see [`super::columns`] for how each is stored. Hot
//! statements are cached; "no row" comes back as `None`, not an error.

use rusqlite::{params, OptionalExtension, Row};

use super::{StoreError, Tx};
use crate::clock::{BootTime, ClockAnchor};
use crate::domain::{InstanceName, MessageKind, Timestamp, TokenHash};

pub use crate::domain::MessageId;

/// A message about to be stored.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    /// Text, not a name: mail imported from the original keeps the sender it was written with.
    pub sender: &'a str,
    /// The sending instance, whose `sent` reports the message; `None` for the broker's own
    /// notices.
    pub sent_by: Option<&'a InstanceName>,
    pub addressed_to: &'a InstanceName,
    pub recipient: &'a InstanceName,
    pub kind: MessageKind,
    pub content: &'a str,
    pub data: Option<&'a str>,
    pub large_file: Option<&'a str>,
    /// The size of `large_file` in bytes, which the large-message caps add up.
    pub large_file_bytes: Option<u64>,
    pub nonce: Option<&'a str>,
    pub sender_timestamp: Option<Timestamp>,
    pub received_at: Timestamp,
    /// The thread's first message, for a message that joins a thread; `None` starts one.
    pub thread_id: Option<MessageId>,
    /// The message this one answers.
    pub reply_to: Option<MessageId>,
    pub subject: Option<&'a str>,
}

/// A queued message as `check` returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub id: MessageId,
    /// As stored (see [`NewMessage::sender`]).
    pub sender: String,
    pub addressed_to: InstanceName,
    pub recipient: InstanceName,
    pub kind: MessageKind,
    pub content: String,
    pub data: Option<String>,
    pub nonce: Option<String>,
    pub sender_timestamp: Option<Timestamp>,
    pub received_at: Timestamp,
    /// How many times it was handed out before this read.
    pub delivery_count: u32,
    /// Its thread: the first message's id (its own, for a message that started one).
    pub thread_id: MessageId,
    pub reply_to: Option<MessageId>,
    pub subject: Option<String>,
}

/// A session found by its token hash.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: SessionId,
    pub instance_name: InstanceName,
    pub last_used_at: Timestamp,
    pub revoked: bool,
    pub identity: IdentityId,
    /// Set when a later `register` of the name replaced this session.
    pub replaced: Option<Replacement>,
}

/// When a session was replaced by a later `register` of its name, and by which peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    pub at: Timestamp,
    /// The replacing registration's peer key (`uid:1000`, or an address without its port).
    pub by: String,
}

/// The session that holds a name now: the one not revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub session_id: SessionId,
    pub token_sha256: TokenHash,
    pub last_used_at: Timestamp,
}

/// Which session: the row of one `register`, until it is replaced, ends or expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub i64);

/// Who a sender is for replay protection: begun by a `register`, carried by its session
/// through every rename, never given to anyone else. Nonces belong to it, not to a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdentityId(pub i64);

// ---- instances and sessions ----

pub(crate) const FIND_SESSION: &str =
    "SELECT id, instance_name, last_used_at, revoked_at IS NOT NULL, identity_id, revoked_at,
            replaced_by
     FROM sessions WHERE token_sha256 = ?1";

pub(crate) const NAME_HOLDER: &str = "SELECT id, token_sha256, last_used_at FROM sessions
     WHERE instance_name = ?1 AND revoked_at IS NULL ORDER BY id DESC LIMIT 1";

pub(crate) const TOUCH_SESSION: &str = "UPDATE sessions SET last_used_at = ?2 WHERE id = ?1";
pub(crate) const TOUCH_INSTANCE: &str = "UPDATE instances SET last_seen_at = ?2 WHERE name = ?1";

pub(crate) const REVOKE_SESSIONS: &str = "UPDATE sessions SET revoked_at = ?2, replaced_by = ?3
     WHERE instance_name = ?1 AND revoked_at IS NULL";
pub(crate) const FORGET_OLD_REPLACED: &str = "DELETE FROM sessions WHERE id IN
       (SELECT id FROM sessions WHERE instance_name = ?1 AND revoked_at IS NOT NULL
        ORDER BY id DESC LIMIT -1 OFFSET ?2)";

pub(crate) const END_SESSION: &str =
    "UPDATE sessions SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL";

pub(crate) const NEXT_IDENTITY: &str =
    "UPDATE identity_sequence SET last_id = last_id + 1 RETURNING last_id";
pub(crate) const INSERT_SESSION: &str =
    "INSERT INTO sessions (instance_name, token_sha256, created_at, last_used_at, identity_id)
     VALUES (?1, ?2, ?3, ?3, ?4)";

pub(crate) const UPSERT_INSTANCE: &str =
    "INSERT INTO instances (name, registered_at, last_seen_at) VALUES (?1, ?2, ?2)
     ON CONFLICT (name) DO UPDATE SET last_seen_at = excluded.last_seen_at";

pub(crate) const INSTANCE_EXISTS: &str = "SELECT 1 FROM instances WHERE name = ?1";

pub(crate) const INSTANCE_LAST_SEEN: &str = "SELECT last_seen_at FROM instances WHERE name = ?1";

pub(crate) const CASE_VARIANT: &str = "SELECT name FROM instances
     WHERE name = ?1 COLLATE NOCASE AND name <> ?1 AND name <> ?2 LIMIT 1";

pub(crate) const LAST_RENAMED_AT: &str = "SELECT last_renamed_at FROM instances WHERE name = ?1";

pub(crate) const LIST_INSTANCES: &str = "SELECT name, last_seen_at FROM instances ORDER BY name";

pub(crate) const LIST_INSTANCES_AFTER: &str =
    "SELECT i.name, i.last_seen_at, s.id, s.last_used_at FROM instances i
     LEFT JOIN sessions s ON s.instance_name = i.name AND s.revoked_at IS NULL
     WHERE i.name > ?1 ORDER BY i.name LIMIT ?2";

/// One instance as `list` reads it: its name, last-seen time and live session, if any.
#[derive(Debug, Clone)]
pub struct ListedInstance {
    pub name: InstanceName,
    pub last_seen: Timestamp,
    /// The live session (not revoked) and when it was last used, as stored.
    pub session: Option<(SessionId, Timestamp)>,
}

pub(crate) const RENAME_INSTANCE_ROW: &str =
    "UPDATE instances SET name = ?2, last_renamed_at = ?3, last_seen_at = ?3 WHERE name = ?1";
/// Only the live session moves: a session replaced earlier stays under the name it was
/// replaced in, which is what its holder is told.
pub(crate) const RENAME_SESSIONS: &str =
    "UPDATE sessions SET instance_name = ?2 WHERE instance_name = ?1 AND revoked_at IS NULL";
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

impl Tx<'_> {
    pub fn find_session(&self, token: &TokenHash) -> Result<Option<SessionRow>, StoreError> {
        let session = self
            .conn
            .prepare_cached(FIND_SESSION)?
            .query_row([token], |row| {
                let revoked_at: Option<Timestamp> = row.get(5)?;
                let replaced_by: Option<String> = row.get(6)?;
                Ok(SessionRow {
                    id: SessionId(row.get(0)?),
                    instance_name: row.get(1)?,
                    last_used_at: row.get(2)?,
                    revoked: row.get(3)?,
                    identity: IdentityId(row.get(4)?),
                    replaced: revoked_at
                        .zip(replaced_by)
                        .map(|(at, by)| Replacement { at, by }),
                })
            })
            .optional()?;
        Ok(session)
    }

    /// The session holding `name` now (not revoked; it may be idle or expired), if any.
    pub fn name_holder(&self, name: &InstanceName) -> Result<Option<Holder>, StoreError> {
        let holder = self
            .conn
            .prepare_cached(NAME_HOLDER)?
            .query_row([name], |row| {
                Ok(Holder {
                    session_id: SessionId(row.get(0)?),
                    token_sha256: row.get(1)?,
                    last_used_at: row.get(2)?,
                })
            })
            .optional()?;
        Ok(holder)
    }

    /// Refreshes the sliding expiry of a session and the instance's last-seen time.
    pub fn touch_session(
        &self,
        session: SessionId,
        name: &InstanceName,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(TOUCH_SESSION)?
            .execute(params![session.0, now])?;
        self.conn
            .prepare_cached(TOUCH_INSTANCE)?
            .execute(params![name, now])?;
        Ok(())
    }

    /// Revokes every active session of `name` (one active session per instance), recording
    /// that a registration from peer `by` replaced them. Only the newest `keep` revoked
    /// sessions of the name are kept, so a script that registers in a loop cannot grow the
    /// table.
    pub fn replace_sessions(
        &self,
        name: &InstanceName,
        now: Timestamp,
        by: &str,
        keep: u32,
    ) -> Result<usize, StoreError> {
        let replaced = self
            .conn
            .prepare_cached(REVOKE_SESSIONS)?
            .execute(params![name, now, by])?;
        self.conn
            .prepare_cached(FORGET_OLD_REPLACED)?
            .execute(params![name, keep])?;
        Ok(replaced)
    }

    /// Ends one session (its holder logged out): revoked, replaced by nobody, so it is swept
    /// and its next use is a plain `invalid_session`.
    pub fn end_session(&self, session: SessionId, now: Timestamp) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(END_SESSION)?
            .execute(params![session.0, now])?;
        Ok(())
    }

    /// A new session for `name`, under a new identity: whoever registers a name starts
    /// afresh, so no nonce of an earlier holder applies to it.
    pub fn insert_session(
        &self,
        name: &InstanceName,
        token: &TokenHash,
        now: Timestamp,
    ) -> Result<SessionId, StoreError> {
        let identity: i64 = self
            .conn
            .prepare_cached(NEXT_IDENTITY)?
            .query_row([], |row| row.get(0))?;
        self.conn
            .prepare_cached(INSERT_SESSION)?
            .execute(params![name, token, now, identity])?;
        Ok(SessionId(self.conn.last_insert_rowid()))
    }

    /// Registers `name`, or refreshes its last-seen time if it is registered already.
    pub fn upsert_instance(&self, name: &InstanceName, now: Timestamp) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(UPSERT_INSTANCE)?
            .execute(params![name, now])?;
        Ok(())
    }

    pub fn instance_exists(&self, name: &InstanceName) -> Result<bool, StoreError> {
        Ok(self.conn.prepare_cached(INSTANCE_EXISTS)?.exists([name])?)
    }

    /// When `name` was last seen; `None` if it is not registered.
    pub fn instance_last_seen(&self, name: &InstanceName) -> Result<Option<Timestamp>, StoreError> {
        let seen = self
            .conn
            .prepare_cached(INSTANCE_LAST_SEEN)?
            .query_row([name], |row| row.get(0))
            .optional()?;
        Ok(seen)
    }

    /// A registered instance other than `except` whose name differs from `name` only in
    /// letter case, if any.
    pub fn case_variant(
        &self,
        name: &InstanceName,
        except: &InstanceName,
    ) -> Result<Option<InstanceName>, StoreError> {
        let variant = self
            .conn
            .prepare_cached(CASE_VARIANT)?
            .query_row([name, except], |row| row.get(0))
            .optional()?;
        Ok(variant)
    }

    /// When `name` last renamed itself, if ever.
    pub fn last_renamed_at(&self, name: &InstanceName) -> Result<Option<Timestamp>, StoreError> {
        let renamed = self
            .conn
            .prepare_cached(LAST_RENAMED_AT)?
            .query_row([name], |row| row.get(0))
            .optional()?;
        Ok(renamed.flatten())
    }

    /// Registered instances, by name, with their last-seen time.
    pub fn list_instances(&self) -> Result<Vec<(InstanceName, Timestamp)>, StoreError> {
        let mut statement = self.conn.prepare_cached(LIST_INSTANCES)?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Hands registered instances named after `after` (all of them without it), in name
    /// order, to `take` with their last-seen time and live session, until `take` refuses one
    /// or `limit` were taken. Returns whether any was left (the reply's `more`). Rows are read
    /// one at a time, so a page costs only what it holds.
    pub fn list_instances_after(
        &self,
        after: Option<&InstanceName>,
        limit: u32,
        mut take: impl FnMut(&ListedInstance) -> bool,
    ) -> Result<bool, StoreError> {
        let mut statement = self.conn.prepare_cached(LIST_INSTANCES_AFTER)?;
        let after = after.map_or("", InstanceName::as_str);
        let mut rows = statement.query(params![after, i64::from(limit) + 1])?;
        let mut taken = 0;
        while let Some(row) = rows.next()? {
            let session: Option<i64> = row.get(2)?;
            let last_used: Option<Timestamp> = row.get(3)?;
            let listed = ListedInstance {
                name: row.get(0)?,
                last_seen: row.get(1)?,
                session: session.map(SessionId).zip(last_used),
            };
            if taken == limit || !take(&listed) {
                return Ok(true);
            }
            taken += 1;
        }
        Ok(false)
    }

    /// Moves everything that belongs to `old` to `new`: the instance row, its sessions, its
    /// pending mail (merged with mail already waiting for `new`), its rate-limit window,
    /// forwards that pointed at `old`, and the receipts of the mail it sent. Then `old` forwards to `new` until
    /// `forward_expires_at`.
    pub fn rename_instance(
        &self,
        old: &InstanceName,
        new: &InstanceName,
        now: Timestamp,
        forward_expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        let conn = self.conn;
        conn.execute(RENAME_INSTANCE_ROW, params![old, new, now])?;
        conn.execute(RENAME_SESSIONS, params![old, new])?;
        conn.execute(RENAME_PENDING_MAIL, params![old, new])?;
        conn.execute(RENAME_REQUEST_LOG, params![old, new])?;
        conn.execute(RENAME_FORWARD_TARGETS, params![old, new])?;
        self.move_receipts(old, new)?;
        self.move_received_mail(old, new)?;
        self.delete_forward(new)?;
        conn.execute(UPSERT_FORWARD, params![old, new, now, forward_expires_at])?;
        Ok(())
    }
}

// ---- forwards ----

pub(crate) const RESOLVE_FORWARD: &str =
    "SELECT new_name FROM name_forwards WHERE old_name = ?1 AND expires_at > ?2";

pub(crate) const DELETE_FORWARD: &str = "DELETE FROM name_forwards WHERE old_name = ?1";

pub(crate) const FORWARD_KNOWN: &str = "SELECT 1 FROM name_forwards WHERE old_name = ?1";

impl Tx<'_> {
    /// Where mail to `name` goes now, if `name` has a live forward.
    pub fn resolve_forward(
        &self,
        name: &InstanceName,
        now: Timestamp,
    ) -> Result<Option<InstanceName>, StoreError> {
        let target = self
            .conn
            .prepare_cached(RESOLVE_FORWARD)?
            .query_row(params![name, now], |row| row.get(0))
            .optional()?;
        Ok(target)
    }

    /// Whether a forward from `name` is kept, live or expired and not yet swept: the name was
    /// an instance's until it renamed.
    pub fn forward_known(&self, name: &InstanceName) -> Result<bool, StoreError> {
        Ok(self.conn.prepare_cached(FORWARD_KNOWN)?.exists([name])?)
    }

    /// Drops the forward from `name`: a real instance now holds that name.
    pub fn delete_forward(&self, name: &InstanceName) -> Result<(), StoreError> {
        self.conn.prepare_cached(DELETE_FORWARD)?.execute([name])?;
        Ok(())
    }
}

// ---- messages ----

pub(crate) const INSERT_MESSAGE: &str =
    "INSERT INTO messages (sender, addressed_to, recipient, kind, content, data, large_file,
                           nonce, sender_timestamp, received_at, large_file_bytes, sent_by,
                           thread_id, reply_to, subject, received_by)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?3)";

pub(crate) const PENDING_COUNT: &str =
    "SELECT count(*) FROM messages WHERE recipient = ?1 AND delivered_at IS NULL";

pub(crate) const SENDER_LARGE_FILE_BYTES: &str = "SELECT coalesce(sum(bytes), 0) FROM
       (SELECT max(large_file_bytes) AS bytes FROM messages
        WHERE sender = ?1 AND large_file IS NOT NULL GROUP BY large_file)";
pub(crate) const TOTAL_LARGE_FILE_BYTES: &str = "SELECT coalesce(sum(bytes), 0) FROM
       (SELECT max(large_file_bytes) AS bytes FROM messages
        WHERE large_file IS NOT NULL GROUP BY sender, large_file)";

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

pub(crate) const WAITING_SENDERS: &str = concat!(
    "SELECT sender FROM messages WHERE ",
    available_to_recipient!(),
    " GROUP BY sender ORDER BY min(id) LIMIT ?3"
);

pub(crate) const AVAILABLE_FOR: &str = concat!(
    "SELECT id, sender, addressed_to, recipient, kind, content, data, nonce,
            sender_timestamp, received_at, delivery_count, coalesce(thread_id, id), reply_to,
            subject
     FROM messages WHERE ",
    available_to_recipient!(),
    " ORDER BY id LIMIT ?3"
);

/// [`AVAILABLE_FOR`], only the mail answering message `?4`.
pub(crate) const AVAILABLE_REPLIES_FOR: &str = concat!(
    "SELECT id, sender, addressed_to, recipient, kind, content, data, nonce,
            sender_timestamp, received_at, delivery_count, coalesce(thread_id, id), reply_to,
            subject
     FROM messages WHERE ",
    available_to_recipient!(),
    " AND reply_to = ?4 ORDER BY id LIMIT ?3"
);

pub(crate) const NEXT_LEASE_EXPIRY: &str = "SELECT min(leased_until) FROM messages
     WHERE recipient = ?1 AND delivered_at IS NULL AND leased_until > ?2";

pub(crate) const LEASE: &str = "UPDATE messages
     SET leased_until = ?2, delivery_count = delivery_count + 1, read_at = coalesce(read_at, ?3)
     WHERE id = ?1 AND delivered_at IS NULL";

pub(crate) const HOLD: &str =
    "UPDATE messages SET leased_until = ?2, read_at = coalesce(read_at, ?3)
     WHERE id = ?1 AND delivered_at IS NULL";

pub(crate) const DELIVER_HELD: &str =
    "UPDATE messages SET delivered_at = ?2, delivery_count = delivery_count + 1
     WHERE id = ?1 AND delivered_at IS NULL AND leased_until = ?3";

pub(crate) const RELEASE_HELD: &str = "UPDATE messages SET leased_until = NULL
     WHERE id = ?1 AND delivered_at IS NULL AND leased_until = ?2";

pub(crate) const RELEASE_OWNED: &str = "UPDATE messages SET leased_until = NULL
     WHERE id = ?1 AND recipient = ?2 AND delivered_at IS NULL";

// Left to itself the planner scans every waiting message; the partial index holds only the
// leased ones, so start-up time does not grow with the queue.
pub(crate) const RELEASE_LEASES: &str =
    "UPDATE messages INDEXED BY messages_leased_by_recipient SET leased_until = NULL
     WHERE delivered_at IS NULL AND leased_until IS NOT NULL";

pub(crate) const ACK_OWNED: &str =
    "SELECT delivered_at IS NOT NULL FROM messages WHERE id = ?1 AND recipient = ?2";
pub(crate) const ACK_SETTLE: &str = "UPDATE messages SET delivered_at = ?2 WHERE id = ?1";

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

impl Tx<'_> {
    pub fn insert_message(&self, message: &NewMessage<'_>) -> Result<MessageId, StoreError> {
        self.conn.prepare_cached(INSERT_MESSAGE)?.execute(params![
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
            message.large_file_bytes.map(|bytes| bytes as i64),
            message.sent_by,
            message.thread_id,
            message.reply_to,
            message.subject,
        ])?;
        Ok(MessageId(self.conn.last_insert_rowid()))
    }

    /// Every message not yet delivered to `recipient`, leased or not: what the queue cap
    /// counts.
    pub fn pending_count(&self, recipient: &InstanceName) -> Result<u32, StoreError> {
        Ok(self
            .conn
            .prepare_cached(PENDING_COUNT)?
            .query_row([recipient], |row| row.get(0))?)
    }

    /// Bytes of large-message files that `sender`'s stored mail refers to, each file once.
    pub fn sender_large_file_bytes(&self, sender: &InstanceName) -> Result<u64, StoreError> {
        let bytes: i64 = self
            .conn
            .prepare_cached(SENDER_LARGE_FILE_BYTES)?
            .query_row([sender], |row| row.get(0))?;
        Ok(bytes.max(0) as u64)
    }

    /// Bytes of large-message files that all stored mail refers to, each file once.
    pub fn total_large_file_bytes(&self) -> Result<u64, StoreError> {
        let bytes: i64 = self
            .conn
            .prepare_cached(TOTAL_LARGE_FILE_BYTES)?
            .query_row([], |row| row.get(0))?;
        Ok(bytes.max(0) as u64)
    }

    /// How many messages a `check` at `now` could hand out to `recipient`: its pending mail
    /// less what live leases hold. Both counts are read from partial indexes alone, never the
    /// table.
    pub fn available_count(
        &self,
        recipient: &InstanceName,
        now: Timestamp,
    ) -> Result<u32, StoreError> {
        let pending = self.pending_count(recipient)?;
        let leased: u32 = self
            .conn
            .prepare_cached(LEASED_COUNT)?
            .query_row(params![recipient, now], |row| row.get(0))?;
        Ok(pending.saturating_sub(leased))
    }

    /// What `count` reports: how many messages a `check` at `now` could hand out to
    /// `recipient` (leased mail is not waiting), and up to `max_senders` distinct senders of
    /// them, ordered by each sender's oldest such message. Reads only.
    pub fn waiting_summary(
        &self,
        recipient: &InstanceName,
        now: Timestamp,
        max_senders: u32,
    ) -> Result<(u32, Vec<String>), StoreError> {
        let count = self.available_count(recipient, now)?;
        let mut statement = self.conn.prepare_cached(WAITING_SENDERS)?;
        let senders = statement
            .query_map(params![recipient, now, max_senders], |row| row.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok((count, senders))
    }

    /// Hands the oldest messages a `check` at `now` may give `recipient` to `take`, oldest
    /// first, until `take` refuses one or `limit` were taken. Returns whether any such message
    /// was left (the reply's `more`). Rows are read one at a time, so a long queue costs only
    /// what fits.
    pub fn available_for(
        &self,
        recipient: &InstanceName,
        now: Timestamp,
        limit: u32,
        take: impl FnMut(&StoredMessage) -> bool,
    ) -> Result<bool, StoreError> {
        let mut statement = self.conn.prepare_cached(AVAILABLE_FOR)?;
        let rows = statement.query(params![recipient, now, i64::from(limit) + 1])?;
        take_messages(rows, limit, take)
    }

    /// [`Tx::available_for`], only the mail that answers message `reply_to`.
    pub fn available_replies_for(
        &self,
        recipient: &InstanceName,
        now: Timestamp,
        reply_to: MessageId,
        limit: u32,
        take: impl FnMut(&StoredMessage) -> bool,
    ) -> Result<bool, StoreError> {
        let mut statement = self.conn.prepare_cached(AVAILABLE_REPLIES_FOR)?;
        let rows = statement.query(params![recipient, now, i64::from(limit) + 1, reply_to])?;
        take_messages(rows, limit, take)
    }

    /// When the first lease held on `recipient`'s mail after `now` runs out, if any does.
    pub fn next_lease_expiry(
        &self,
        recipient: &InstanceName,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(NEXT_LEASE_EXPIRY)?
            .query_row(params![recipient, now], |row| row.get(0))?)
    }

    /// Leases these messages until `until`, counting the hand-out; the first hand-out is
    /// recorded as read at `now`.
    pub fn lease(
        &self,
        ids: &[MessageId],
        until: Timestamp,
        now: Timestamp,
    ) -> Result<usize, StoreError> {
        self.hand_out(LEASE, ids, until, now)
    }

    /// Holds these messages until `until` while a reply carrying them is on its way: nobody
    /// else is handed them meanwhile. Unlike [`Tx::lease`] it does not count a hand-out;
    /// settling does. The first hand-out is recorded as read at `now`.
    pub fn hold(
        &self,
        ids: &[MessageId],
        until: Timestamp,
        now: Timestamp,
    ) -> Result<usize, StoreError> {
        self.hand_out(HOLD, ids, until, now)
    }

    /// Runs a lease or hold (`?1` the id, `?2` its end, `?3` now) for each id.
    fn hand_out(
        &self,
        update: &str,
        ids: &[MessageId],
        until: Timestamp,
        now: Timestamp,
    ) -> Result<usize, StoreError> {
        let mut statement = self.conn.prepare_cached(update)?;
        let mut changed = 0;
        for id in ids {
            changed += statement.execute(params![id, until, now])?;
        }
        Ok(changed)
    }

    /// Marks held messages delivered, but only those still held by this very hold (`until`):
    /// a hold that ran out may have let another reader take the mail since.
    pub fn deliver_held(
        &self,
        ids: &[MessageId],
        until: Timestamp,
        now: Timestamp,
    ) -> Result<usize, StoreError> {
        let mut statement = self.conn.prepare_cached(DELIVER_HELD)?;
        let mut changed = 0;
        for id in ids {
            changed += statement.execute(params![id, now, until])?;
        }
        Ok(changed)
    }

    /// Ends a hold or lease taken until `until`, so the mail is handed out again at once; a
    /// newer lease on the same mail (this one ran out and another reader took it) is left
    /// alone.
    pub fn release_held(&self, ids: &[MessageId], until: Timestamp) -> Result<usize, StoreError> {
        self.update_waiting(RELEASE_HELD, ids, until)
    }

    /// Runs `update` (with `?1` the id and `?2` the time) for each id; returns the rows
    /// changed.
    fn update_waiting(
        &self,
        update: &str,
        ids: &[MessageId],
        at: Timestamp,
    ) -> Result<usize, StoreError> {
        let mut statement = self.conn.prepare_cached(update)?;
        let mut changed = 0;
        for id in ids {
            changed += statement.execute(params![id, at])?;
        }
        Ok(changed)
    }

    /// Hands message `id` back to `recipient`'s queue if it owns it and it is not delivered.
    pub fn release_owned(
        &self,
        recipient: &InstanceName,
        id: MessageId,
    ) -> Result<Released, StoreError> {
        Ok(match self.delivered(recipient, id)? {
            None => Released::Unknown,
            Some(true) => Released::AlreadyAcked,
            Some(false) => {
                self.conn
                    .prepare_cached(RELEASE_OWNED)?
                    .execute(params![id, recipient])?;
                Released::Released
            }
        })
    }

    /// Ends every lease. Run at start-up: a lease taken by a reader of the previous run may
    /// have been committed without its reply ever reaching the reader (the broker died in
    /// between), so the mail is handed out again at once instead of staying hidden until the
    /// lease runs out. A reader that did get it may see it twice, which at-least-once allows;
    /// its ack still works.
    pub fn release_leases(&self) -> Result<usize, StoreError> {
        Ok(self.conn.execute(RELEASE_LEASES, [])?)
    }

    /// Settles message `id` if `recipient` owns it.
    pub fn ack(
        &self,
        recipient: &InstanceName,
        id: MessageId,
        now: Timestamp,
    ) -> Result<Settled, StoreError> {
        Ok(match self.delivered(recipient, id)? {
            None => Settled::Unknown,
            Some(true) => Settled::AlreadyAcked,
            Some(false) => {
                self.conn
                    .prepare_cached(ACK_SETTLE)?
                    .execute(params![id, now])?;
                Settled::Acked
            }
        })
    }

    /// Whether `recipient`'s message `id` was delivered; `None` if it has no such message.
    fn delivered(
        &self,
        recipient: &InstanceName,
        id: MessageId,
    ) -> Result<Option<bool>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(ACK_OWNED)?
            .query_row(params![id, recipient], |row| row.get::<_, bool>(0))
            .optional()?)
    }
}

/// Hands messages from `rows` (a query asked for `limit + 1`) to `take` until it refuses one or
/// `limit` were taken; returns whether any was left over (a reply's `more`).
fn take_messages(
    mut rows: rusqlite::Rows<'_>,
    limit: u32,
    mut take: impl FnMut(&StoredMessage) -> bool,
) -> Result<bool, StoreError> {
    let mut taken = 0;
    while let Some(row) = rows.next()? {
        if taken == limit || !take(&stored_message(row)?) {
            return Ok(true);
        }
        taken += 1;
    }
    Ok(false)
}

fn stored_message(row: &Row<'_>) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        id: row.get(0)?,
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
        thread_id: row.get(11)?,
        reply_to: row.get(12)?,
        subject: row.get(13)?,
    })
}

// ---- announcements: what a `watch` told each watcher, consuming nothing ----

/// Undelivered mail for `?1` (leased or not) that watcher `?2` was not told about, oldest
/// first. Walks the recipient's waiting mail in the index and looks each one up by the
/// announcements' key.
pub(crate) const UNANNOUNCED_FOR: &str =
    "SELECT m.id, m.sender, m.addressed_to, m.recipient, m.kind, m.content, m.data, m.nonce,
            m.sender_timestamp, m.received_at, m.delivery_count, coalesce(m.thread_id, m.id),
            m.reply_to, m.subject
     FROM messages m
     WHERE m.recipient = ?1 AND m.delivered_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM announcements a
                       WHERE a.message_id = m.id AND a.watcher = ?2)
     ORDER BY m.id LIMIT ?3";

pub(crate) const ANNOUNCE: &str =
    "INSERT OR IGNORE INTO announcements (watcher, message_id, announced_at, push)
     VALUES (?1, ?2, ?3, ?4)";

pub(crate) const MARK_PUSHED: &str =
    "UPDATE messages SET pushed_at = ?2 WHERE id = ?1 AND pushed_at IS NULL";

pub(crate) const UNANNOUNCE: &str =
    "DELETE FROM announcements WHERE message_id = ?1 AND watcher = ?2 AND announced_at = ?3";

/// After an un-recorded push: `pushed_at` becomes the earliest push still recorded, if any.
pub(crate) const UNMARK_PUSHED: &str = "UPDATE messages SET pushed_at =
       (SELECT min(announced_at) FROM announcements WHERE message_id = ?1 AND push = 1)
     WHERE id = ?1 AND pushed_at = ?2";

pub(crate) const ANNOUNCEMENTS_OF: &str =
    "SELECT watcher, announced_at, push FROM announcements WHERE message_id = ?1
     ORDER BY announced_at, watcher";

pub(crate) const PUSHED_AT: &str = "SELECT pushed_at FROM messages WHERE id = ?1";

/// One announcement of a message, as [`Tx::announcements_of`] reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub watcher: String,
    pub announced_at: Timestamp,
    pub push: bool,
}

impl Tx<'_> {
    /// Hands `recipient`'s undelivered mail that `watcher` was never told about to `take`,
    /// oldest first, until `take` refuses one or `limit` were taken. Returns whether any was
    /// left (the reply's `more`). Reads only; [`Tx::announce`] records what was taken.
    pub fn unannounced_for(
        &self,
        recipient: &InstanceName,
        watcher: &str,
        limit: u32,
        take: impl FnMut(&StoredMessage) -> bool,
    ) -> Result<bool, StoreError> {
        let mut statement = self.conn.prepare_cached(UNANNOUNCED_FOR)?;
        let rows = statement.query(params![recipient, watcher, i64::from(limit) + 1])?;
        take_messages(rows, limit, take)
    }

    /// Records these messages as announced to `watcher` at `now`; with `push`, also as pushed
    /// (`messages.pushed_at`, set only the first time). Consumes nothing.
    pub fn announce(
        &self,
        watcher: &str,
        ids: &[MessageId],
        now: Timestamp,
        push: bool,
    ) -> Result<(), StoreError> {
        let mut announce = self.conn.prepare_cached(ANNOUNCE)?;
        for id in ids {
            announce.execute(params![watcher, id, now, push])?;
        }
        if push {
            let mut pushed = self.conn.prepare_cached(MARK_PUSHED)?;
            for id in ids {
                pushed.execute(params![id, now])?;
            }
        }
        Ok(())
    }

    /// Forgets the announcement of these messages to `watcher` made at `at` (its reply never
    /// reached the watcher), and the push it recorded: `pushed_at` falls back to the earliest
    /// push still recorded. Returns the announcements removed.
    pub fn unannounce(
        &self,
        watcher: &str,
        ids: &[MessageId],
        at: Timestamp,
    ) -> Result<usize, StoreError> {
        let mut forget = self.conn.prepare_cached(UNANNOUNCE)?;
        let mut unmark = self.conn.prepare_cached(UNMARK_PUSHED)?;
        let mut removed = 0;
        for id in ids {
            removed += forget.execute(params![id, watcher, at])?;
            unmark.execute(params![id, at])?;
        }
        Ok(removed)
    }

    /// Every announcement of message `id`, oldest first (for `claude-ipc` tooling and tests).
    pub fn announcements_of(&self, id: MessageId) -> Result<Vec<Announcement>, StoreError> {
        let mut statement = self.conn.prepare_cached(ANNOUNCEMENTS_OF)?;
        let rows = statement.query_map([id], |row| {
            Ok(Announcement {
                watcher: row.get(0)?,
                announced_at: row.get(1)?,
                push: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// When message `id` was first pushed into a live session, if ever (and if it exists).
    pub fn pushed_at(&self, id: MessageId) -> Result<Option<Timestamp>, StoreError> {
        let pushed = self
            .conn
            .prepare_cached(PUSHED_AT)?
            .query_row([id], |row| row.get(0))
            .optional()?;
        Ok(pushed.flatten())
    }
}

// ---- replay protection ----

pub(crate) const FIND_NONCE: &str = "SELECT message_id FROM send_nonces
     WHERE identity_id = ?1 AND nonce = ?2 AND seen_at >= ?3";

pub(crate) const RECORD_NONCE: &str =
    "INSERT INTO send_nonces (identity_id, nonce, sender, message_id, seen_at)
     VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT (identity_id, nonce) DO UPDATE SET
       sender = excluded.sender, message_id = excluded.message_id, seen_at = excluded.seen_at";

impl Tx<'_> {
    /// The message a nonce from `identity` stored, if it was seen at or after `since`.
    pub fn find_nonce(
        &self,
        identity: IdentityId,
        nonce: &str,
        since: Timestamp,
    ) -> Result<Option<MessageId>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(FIND_NONCE)?
            .query_row(params![identity.0, nonce, since], |row| row.get(0))
            .optional()?)
    }

    /// Remembers that `identity` (named `sender` just now, for people reading the table)
    /// stored message `id` under `nonce`.
    pub fn record_nonce(
        &self,
        identity: IdentityId,
        sender: &InstanceName,
        nonce: &str,
        id: MessageId,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(RECORD_NONCE)?
            .execute(params![identity.0, nonce, sender, id, now])?;
        Ok(())
    }
}

// ---- rate limit and auth failures ----

pub(crate) const REQUESTS_SINCE: &str = "SELECT count(*), min(at) FROM request_log
     WHERE instance_name = ?1 AND at >= ?2 AND at <= ?3";

pub(crate) const FORGET_OLD_REQUESTS: &str =
    "DELETE FROM request_log WHERE instance_name = ?1 AND (at < ?2 OR at > ?3)";
pub(crate) const LOG_REQUEST: &str = "INSERT INTO request_log (instance_name, at) VALUES (?1, ?2)";

/// What a per-peer counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerActivity {
    /// An authenticated request, under any of the peer's names.
    Request,
    /// A registration that created a new name.
    Register,
}

impl PeerActivity {
    fn as_str(self) -> &'static str {
        match self {
            PeerActivity::Request => "request",
            PeerActivity::Register => "register",
        }
    }
}

pub(crate) const PEER_ACTIVITY_SINCE: &str = "SELECT count(*), min(at) FROM peer_activity
     WHERE kind = ?1 AND peer_key = ?2 AND at >= ?3";
pub(crate) const ALL_ACTIVITY_SINCE: &str =
    "SELECT count(*), min(at) FROM peer_activity WHERE kind = ?1 AND at >= ?2";
pub(crate) const FORGET_OLD_PEER_ACTIVITY: &str =
    "DELETE FROM peer_activity WHERE kind = ?1 AND peer_key = ?2 AND at < ?3";
pub(crate) const LOG_PEER_ACTIVITY: &str =
    "INSERT INTO peer_activity (kind, peer_key, at) VALUES (?1, ?2, ?3)";

/// One authentication failure, for [`Tx::record_auth_failure`].
#[derive(Debug, Clone, Copy)]
pub struct AuthFailure<'a> {
    pub at: Timestamp,
    pub name: Option<&'a InstanceName>,
    /// The connection's address, kept from a row's first failure for people.
    pub peer: &'a str,
    pub peer_key: &'a str,
    pub reason: &'a str,
}

pub(crate) const COUNT_AUTH_FAILURE: &str =
    "UPDATE auth_failures SET failures = failures + 1, last_at = ?5
     WHERE peer_key = ?1 AND minute = ?2 AND instance_name IS ?3 AND reason = ?4";
pub(crate) const RECORD_AUTH_FAILURE: &str =
    "INSERT INTO auth_failures (at, instance_name, peer, reason, failures, peer_key, minute, last_at)
     VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?1)";
pub(crate) const TRIM_AUTH_FAILURES: &str =
    "DELETE FROM auth_failures WHERE id <= (SELECT max(id) FROM auth_failures) - ?1";

impl Tx<'_> {
    /// How many requests `name` made from `since` up to `now`, and the earliest of them. A
    /// row stamped after `now` (written before the broker's time went back, which only a
    /// reboot with no persisted time can do) is not counted: it could otherwise hold the limit
    /// shut for far longer than its window.
    pub fn requests_since(
        &self,
        name: &InstanceName,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<(u32, Option<Timestamp>), StoreError> {
        Ok(self
            .conn
            .prepare_cached(REQUESTS_SINCE)?
            .query_row(params![name, since, now], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?)
    }

    /// Records one request and forgets this instance's requests outside the window: older
    /// than it, or stamped in the future (see [`Tx::requests_since`]).
    pub fn log_request(
        &self,
        name: &InstanceName,
        now: Timestamp,
        window_start: Timestamp,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(FORGET_OLD_REQUESTS)?
            .execute(params![name, window_start, now])?;
        self.conn
            .prepare_cached(LOG_REQUEST)?
            .execute(params![name, now])?;
        Ok(())
    }

    /// How many `kind` events `peer_key` had at or after `since`, and the earliest of them.
    pub fn peer_activity_since(
        &self,
        kind: PeerActivity,
        peer_key: &str,
        since: Timestamp,
    ) -> Result<(u32, Option<Timestamp>), StoreError> {
        Ok(self
            .conn
            .prepare_cached(PEER_ACTIVITY_SINCE)?
            .query_row(params![kind.as_str(), peer_key, since], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?)
    }

    /// How many `kind` events all peers together had at or after `since`, and the earliest.
    pub fn all_activity_since(
        &self,
        kind: PeerActivity,
        since: Timestamp,
    ) -> Result<(u32, Option<Timestamp>), StoreError> {
        Ok(self
            .conn
            .prepare_cached(ALL_ACTIVITY_SINCE)?
            .query_row(params![kind.as_str(), since], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?)
    }

    /// Records one `kind` event of `peer_key` and forgets its events older than the window.
    pub fn log_peer_activity(
        &self,
        kind: PeerActivity,
        peer_key: &str,
        now: Timestamp,
        window_start: Timestamp,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(FORGET_OLD_PEER_ACTIVITY)?
            .execute(params![kind.as_str(), peer_key, window_start])?;
        self.conn
            .prepare_cached(LOG_PEER_ACTIVITY)?
            .execute(params![kind.as_str(), peer_key, now])?;
        Ok(())
    }

    /// Counts a failure in its peer/name/reason/minute row, starting the row if it is the
    /// minute's first; a new row beyond `max_rows` removes the oldest rows.
    pub fn record_auth_failure(
        &self,
        failure: &AuthFailure<'_>,
        max_rows: u32,
    ) -> Result<(), StoreError> {
        let minute = minute_of(failure.at);
        let counted = self
            .conn
            .prepare_cached(COUNT_AUTH_FAILURE)?
            .execute(params![
                failure.peer_key,
                minute,
                failure.name,
                failure.reason,
                failure.at
            ])?;
        if counted > 0 {
            return Ok(());
        }
        self.conn
            .prepare_cached(RECORD_AUTH_FAILURE)?
            .execute(params![
                failure.at,
                failure.name,
                failure.peer,
                failure.reason,
                failure.peer_key,
                minute
            ])?;
        self.conn
            .prepare_cached(TRIM_AUTH_FAILURES)?
            .execute([max_rows])?;
        Ok(())
    }
}

/// The stored text of the minute `at` falls in: the row its failures are counted in.
fn minute_of(at: Timestamp) -> String {
    let text = at.to_text();
    format!("{}:00.000Z", &text[..16])
}

// ---- broker runs ----

pub(crate) const RECORD_START: &str =
    "INSERT INTO broker_runs (pid, version, addr, started_at) VALUES (?1, ?2, ?3, ?4)";

pub(crate) const RECORD_STOP: &str = "UPDATE broker_runs SET stopped_at = ?2 WHERE id = ?1";

// ---- the broker clock's anchor (see crate::clock::BrokerClock) ----

pub(crate) const LOAD_CLOCK_ANCHOR: &str =
    "SELECT broker_time, boot_id, since_boot_ms FROM broker_clock WHERE id = 1";

pub(crate) const SAVE_CLOCK_ANCHOR: &str =
    "INSERT INTO broker_clock (id, broker_time, boot_id, since_boot_ms, wall_time)
     VALUES (1, ?1, ?2, ?3, ?4)
     ON CONFLICT (id) DO UPDATE SET
       broker_time = excluded.broker_time, boot_id = excluded.boot_id,
       since_boot_ms = excluded.since_boot_ms, wall_time = excluded.wall_time";

pub(crate) const LATEST_RUN_TIME: &str =
    "SELECT max(max(started_at), coalesce(max(stopped_at), '')) FROM broker_runs";

impl Tx<'_> {
    /// Records this run's start; returns its id, for [`Tx::record_stop`].
    pub fn record_start(
        &self,
        pid: u32,
        version: &str,
        addr: &str,
        now: Timestamp,
    ) -> Result<i64, StoreError> {
        self.conn
            .execute(RECORD_START, params![pid, version, addr, now])?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn record_stop(&self, run_id: i64, now: Timestamp) -> Result<(), StoreError> {
        self.conn.execute(RECORD_STOP, params![run_id, now])?;
        Ok(())
    }

    /// The broker clock's anchor the last run persisted; `None` if there is none or it is
    /// unreadable (an operator's edit), in which case the broker starts as if it had never
    /// persisted one.
    pub fn load_clock_anchor(&self) -> Result<Option<ClockAnchor>, StoreError> {
        let row = self
            .conn
            .query_row(LOAD_CLOCK_ANCHOR, [], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, Option<String>>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })
            .optional()?;
        Ok(row.and_then(|(broker_time, boot_id, since_boot_ms)| {
            Some(ClockAnchor {
                broker_time: crate::clock::parse(&broker_time)?,
                boot: BootTime {
                    boot_id,
                    since_boot: chrono::Duration::milliseconds(since_boot_ms),
                },
            })
        }))
    }

    /// Persists the broker clock's anchor, with what the wall clock said at the time (for
    /// people).
    pub fn save_clock_anchor(
        &self,
        anchor: &ClockAnchor,
        wall_time: Timestamp,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(SAVE_CLOCK_ANCHOR)?
            .execute(params![
                Timestamp::new(anchor.broker_time),
                anchor.boot.boot_id,
                anchor.boot.since_boot.num_milliseconds(),
                wall_time,
            ])?;
        Ok(())
    }

    /// The latest start or stop any run recorded, for a database from before the anchor
    /// existed.
    pub fn latest_run_time(&self) -> Result<Option<Timestamp>, StoreError> {
        let latest: Option<String> = self.conn.query_row(LATEST_RUN_TIME, [], |row| row.get(0))?;
        Ok(latest.as_deref().and_then(Timestamp::parse))
    }
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
    /// Instances removed: unused past their retention (their notices went with them).
    pub instances: usize,
    pub peer_activity: usize,
    /// Large-message files no message referred to, removed by the orphan pass.
    pub orphan_files: usize,
    /// Records of expired mail (see [`Tx::record_expiry`]) kept past their retention.
    pub expired_receipts: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct SweepCutoffs {
    pub now: Timestamp,
    pub session_idle_before: Timestamp,
    pub future_mail_before: Timestamp,
    pub delivered_before: Timestamp,
    pub nonces_before: Timestamp,
    pub request_log_before: Timestamp,
    pub auth_failures_before: Timestamp,
    /// Instances last seen before this may be reaped...
    pub instances_unseen_before: Timestamp,
    /// ...if they did not rename after this (their cooldown would be forgotten with them).
    pub renamed_before: Timestamp,
    pub peer_activity_before: Timestamp,
    /// Records of mail that expired undelivered go once older than this.
    pub expired_receipts_before: Timestamp,
}

/// Revoked sessions go at once, except those a registration replaced: they stay (a few per
/// name, see [`Tx::replace_sessions`]) until idle past the expiry, so their holder learns why.
pub(crate) const SWEEP_SESSIONS: &str = "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions
       WHERE (revoked_at IS NOT NULL AND replaced_by IS NULL) OR last_used_at < ?1 LIMIT ?2)";
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
pub(crate) const SWEEP_PEER_ACTIVITY: &str =
    "DELETE FROM peer_activity WHERE rowid IN (SELECT rowid FROM peer_activity
       WHERE at < ?1 LIMIT ?2)";
/// Instances nobody uses: unseen since ?1, no rename after ?2 (so no cooldown is running), no
/// live session (idle cut-off ?3), no waiting mail but rename notices, no live forward to the
/// name (now ?4).
pub(crate) const REAPABLE_INSTANCES: &str = "SELECT name FROM instances i
     WHERE last_seen_at < ?1
       AND (last_renamed_at IS NULL OR last_renamed_at < ?2)
       AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.instance_name = i.name
                         AND s.revoked_at IS NULL AND s.last_used_at >= ?3)
       AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.recipient = i.name
                         AND m.delivered_at IS NULL AND m.kind <> 'system')
       AND NOT EXISTS (SELECT 1 FROM name_forwards f WHERE f.new_name = i.name
                         AND f.expires_at > ?4)
     LIMIT ?5";
pub(crate) const DELETE_NOTICES_FOR: &str =
    "DELETE FROM messages WHERE recipient = ?1 AND delivered_at IS NULL AND kind = 'system'";
pub(crate) const DELETE_SESSIONS_OF: &str = "DELETE FROM sessions WHERE instance_name = ?1";
pub(crate) const DELETE_INSTANCE: &str = "DELETE FROM instances WHERE name = ?1";
pub(crate) const SWEEP_FUTURE_MAIL: &str = "SELECT id, large_file FROM messages
     WHERE delivered_at IS NULL AND received_at < ?1
       AND recipient NOT IN (SELECT name FROM instances)
     LIMIT ?2";
pub(crate) const SWEEP_DELIVERED_MAIL: &str =
    "SELECT id, large_file FROM messages WHERE delivered_at < ?1 LIMIT ?2";
pub(crate) const DELETE_MESSAGE: &str = "DELETE FROM messages WHERE id = ?1";
pub(crate) const LARGE_FILE_IN_USE: &str = "SELECT 1 FROM messages WHERE large_file = ?1";
/// The same by file name, for a message stored under another spelling of the data directory.
/// Walks the partial index of large messages; run only for files the exact lookup missed.
pub(crate) const LARGE_FILE_NAMED: &str = "SELECT 1 FROM messages
     WHERE large_file IS NOT NULL AND substr(large_file, -length(?1)) = ?1";

impl Tx<'_> {
    /// Of `paths` (files under `large-messages/`), those no stored message refers to. File
    /// names are unique (a time and 64 random bits), so a message naming the file refers to
    /// it.
    pub fn unreferenced_files(&self, paths: &[String]) -> Result<Vec<String>, StoreError> {
        let mut by_path = self.conn.prepare_cached(LARGE_FILE_IN_USE)?;
        let mut by_name = self.conn.prepare_cached(LARGE_FILE_NAMED)?;
        let mut unreferenced = Vec::new();
        for path in paths {
            if by_path.exists([path])? {
                continue;
            }
            let name = match path.rsplit_once('/') {
                Some((_, name)) => format!("/{name}"),
                None => path.clone(),
            };
            if !by_name.exists([name])? {
                unreferenced.push(path.clone());
            }
        }
        Ok(unreferenced)
    }

    pub fn sweep(
        &self,
        cut: &SweepCutoffs,
        tables: SweepTables,
        batch: u32,
    ) -> Result<SweepReport, StoreError> {
        let delete = |wanted: bool, sql: &str, before: Timestamp| -> rusqlite::Result<usize> {
            if wanted {
                self.conn.execute(sql, params![before, batch])
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
            peer_activity: delete(
                tables.peer_activity,
                SWEEP_PEER_ACTIVITY,
                cut.peer_activity_before,
            )?,
            expired_receipts: delete(
                tables.expired_receipts,
                super::receipts::SWEEP_EXPIRED_MAIL,
                cut.expired_receipts_before,
            )?,
            ..SweepReport::default()
        };
        if tables.instances {
            report.instances = self.reap_instances(cut, batch)?;
        }
        let mail = |wanted: bool, select: &str, before: Timestamp, expires: Option<Timestamp>| {
            if wanted {
                self.delete_messages_returning_files(select, before, batch, expires)
            } else {
                Ok((0, Vec::new()))
            }
        };
        // Mail removed undelivered expired: its sender's receipt says so.
        let future = mail(
            tables.future_mail,
            SWEEP_FUTURE_MAIL,
            cut.future_mail_before,
            Some(cut.now),
        )?;
        let delivered = mail(
            tables.delivered_mail,
            SWEEP_DELIVERED_MAIL,
            cut.delivered_before,
            None,
        )?;
        report.future_mail = future.0;
        report.delivered_mail = delivered.0;
        report.files_to_remove = future.1.into_iter().chain(delivered.1).collect();
        Ok(report)
    }

    /// Removes up to `batch` instances nobody uses, with their rename notices and their dead
    /// sessions: a later holder of the name starts afresh and no old token can come back to
    /// life.
    fn reap_instances(&self, cut: &SweepCutoffs, batch: u32) -> Result<usize, StoreError> {
        let conn = self.conn;
        let names: Vec<String> = conn
            .prepare(REAPABLE_INSTANCES)?
            .query_map(
                params![
                    cut.instances_unseen_before,
                    cut.renamed_before,
                    cut.session_idle_before,
                    cut.now,
                    batch
                ],
                |row| row.get(0),
            )?
            .collect::<rusqlite::Result<_>>()?;
        for name in &names {
            self.forget_receipts(name)?;
            self.forget_received_mail(name)?;
            conn.execute(DELETE_NOTICES_FOR, [name])?;
            conn.execute(DELETE_SESSIONS_OF, [name])?;
            conn.execute(DELETE_INSTANCE, [name])?;
        }
        Ok(names.len())
    }

    /// Deletes the messages `select` finds (up to `batch`); with `expired_at`, each is first
    /// recorded as expired then (see [`Tx::record_expiry`]).
    fn delete_messages_returning_files(
        &self,
        select: &str,
        before: Timestamp,
        batch: u32,
        expired_at: Option<Timestamp>,
    ) -> Result<(usize, Vec<String>), StoreError> {
        let mut statement = self.conn.prepare(select)?;
        let rows: Vec<(i64, Option<String>)> = statement
            .query_map(params![before, batch], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut delete = self.conn.prepare_cached(DELETE_MESSAGE)?;
        for (id, _) in &rows {
            if let Some(at) = expired_at {
                self.record_expiry(*id, at)?;
            }
            delete.execute([id])?;
        }
        // Broadcast copies share one file: remove it only when no message refers to it any
        // more.
        let mut still_used = self.conn.prepare_cached(LARGE_FILE_IN_USE)?;
        let mut files = Vec::new();
        for file in rows.iter().filter_map(|(_, file)| file.as_deref()) {
            if !still_used.exists([file])? && !files.iter().any(|f| f == file) {
                files.push(file.to_owned());
            }
        }
        Ok((rows.len(), files))
    }
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
    pub instances: bool,
    pub peer_activity: bool,
    pub expired_receipts: bool,
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
        instances: true,
        peer_activity: true,
        expired_receipts: true,
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
            instances: report.instances >= batch,
            peer_activity: report.peer_activity >= batch,
            expired_receipts: report.expired_receipts >= batch,
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
            || self.instances
            || self.peer_activity
            || self.expired_receipts
    }
}
