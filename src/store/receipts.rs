//! The statements behind receipts (`sent`): a sender's mail, newest first or by id, with the
//! facts a receipt reports (handed out, pushed, delivered, expired, and when), and the record the
//! sweeper keeps of mail it removed undelivered because its time ran out.
//!
//! Mail belongs to its sender by `messages.sent_by`, the sender's current name: a rename moves
//! it ([`Tx::move_receipts`]), removing the instance forgets it ([`Tx::forget_receipts`]).

use rusqlite::{params, OptionalExtension, Row};

use super::{StoreError, Tx};
use crate::domain::{InstanceName, MessageId, MessageKind, Timestamp};

/// One message as its sender's receipt reports it: what happened to it and when. The broker
/// turns these facts into a state.
#[derive(Debug, Clone, PartialEq)]
pub struct SentRow {
    pub id: MessageId,
    /// Who holds it now (a forward's target, or the name it was sent to).
    pub recipient: InstanceName,
    pub addressed_to: InstanceName,
    pub kind: MessageKind,
    pub sent_at: Timestamp,
    /// Its first hand-out, by a check of either kind.
    pub read_at: Option<Timestamp>,
    /// When a `watch` with `push` first announced it (`messages.pushed_at`).
    pub pushed_at: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
    /// When the sweeper removed it undelivered.
    pub expired_at: Option<Timestamp>,
    pub delivery_count: u32,
    /// A lease or hold on it is live: handed out and not acknowledged yet.
    pub held: bool,
}

/// The columns every receipt statement returns, in [`sent_row`]'s order; `?2` is now
/// (an expired record needs none: nothing holds it).
macro_rules! receipt_columns {
    () => {
        "SELECT id, recipient, addressed_to, kind, received_at, read_at, delivered_at,
                NULL, delivery_count, coalesce(delivered_at IS NULL AND leased_until > ?2, 0),
                pushed_at
         FROM messages"
    };
}

macro_rules! expired_columns {
    () => {
        "SELECT id, recipient, addressed_to, kind, sent_at, read_at, NULL,
                expired_at, delivery_count, 0, pushed_at
         FROM expired_mail"
    };
}

/// `?1` the sender, `?2` now, `?3` how many.
pub(crate) const SENT_BY: &str = concat!(
    receipt_columns!(),
    " WHERE sent_by = ?1 ORDER BY id DESC LIMIT ?3"
);
pub(crate) const EXPIRED_SENT_BY: &str = concat!(
    expired_columns!(),
    " WHERE sent_by = ?1 ORDER BY id DESC LIMIT ?3"
);
/// `?1` the sender, `?2` now, `?3` the id.
pub(crate) const SENT_ONE: &str = concat!(receipt_columns!(), " WHERE id = ?3 AND sent_by = ?1");
pub(crate) const EXPIRED_ONE: &str = concat!(expired_columns!(), " WHERE id = ?3 AND sent_by = ?1");

pub(crate) const MOVE_SENT_MAIL: &str = "UPDATE messages SET sent_by = ?2 WHERE sent_by = ?1";
pub(crate) const MOVE_EXPIRED_MAIL: &str =
    "UPDATE expired_mail SET sent_by = ?2 WHERE sent_by = ?1";
pub(crate) const FORGET_SENT_MAIL: &str = "UPDATE messages SET sent_by = NULL WHERE sent_by = ?1";
pub(crate) const FORGET_EXPIRED_MAIL: &str = "DELETE FROM expired_mail WHERE sent_by = ?1";

/// Copies message `?1` into `expired_mail` at `?2`, if it has a sender to tell and was never
/// delivered. A message id SQLite gave out again replaces the older record.
pub(crate) const RECORD_EXPIRY: &str = "INSERT OR REPLACE INTO expired_mail
       (id, sent_by, addressed_to, recipient, kind, sent_at, read_at, pushed_at, delivery_count,
        expired_at)
     SELECT id, sent_by, addressed_to, recipient, kind, received_at, read_at, pushed_at,
            delivery_count, ?2
     FROM messages WHERE id = ?1 AND sent_by IS NOT NULL AND delivered_at IS NULL";

pub(crate) const SWEEP_EXPIRED_MAIL: &str =
    "DELETE FROM expired_mail WHERE id IN (SELECT id FROM expired_mail
       WHERE expired_at < ?1 LIMIT ?2)";

impl Tx<'_> {
    /// `sender`'s newest `limit` messages, stored or expired, newest first.
    pub fn sent_by(
        &self,
        sender: &InstanceName,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<SentRow>, StoreError> {
        let read = |sql: &str| -> Result<Vec<SentRow>, StoreError> {
            let mut statement = self.conn.prepare_cached(sql)?;
            let rows = statement.query_map(params![sender, now, limit], sent_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        };
        let stored = read(SENT_BY)?;
        let expired = read(EXPIRED_SENT_BY)?;
        Ok(newest_first(stored, expired, limit as usize))
    }

    /// `sender`'s message `id`, stored or expired; `None` if `sender` sent no such message
    /// that is still kept (someone else's looks the same).
    pub fn sent_message(
        &self,
        sender: &InstanceName,
        id: MessageId,
        now: Timestamp,
    ) -> Result<Option<SentRow>, StoreError> {
        for sql in [SENT_ONE, EXPIRED_ONE] {
            let row = self
                .conn
                .prepare_cached(sql)?
                .query_row(params![sender, now, id], sent_row)
                .optional()?;
            if row.is_some() {
                return Ok(row);
            }
        }
        Ok(None)
    }

    /// `old`'s receipts become `new`'s: the instance renamed itself.
    pub(crate) fn move_receipts(
        &self,
        old: &InstanceName,
        new: &InstanceName,
    ) -> Result<(), StoreError> {
        self.conn.execute(MOVE_SENT_MAIL, params![old, new])?;
        self.conn.execute(MOVE_EXPIRED_MAIL, params![old, new])?;
        Ok(())
    }

    /// Forgets whose mail `name` sent: its instance is removed, and a later holder of the
    /// name must not be shown it.
    pub(crate) fn forget_receipts(&self, name: &str) -> Result<(), StoreError> {
        self.conn.execute(FORGET_SENT_MAIL, [name])?;
        self.conn.execute(FORGET_EXPIRED_MAIL, [name])?;
        Ok(())
    }

    /// Records that message `id`, about to be removed undelivered, expired at `now`.
    pub(crate) fn record_expiry(&self, id: i64, now: Timestamp) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(RECORD_EXPIRY)?
            .execute(params![id, now])?;
        Ok(())
    }
}

/// Both lists are newest first; merged, the first `limit`. A stored message wins over an
/// expired record with the same id (SQLite may give the id of the newest removed message out
/// again).
fn newest_first(stored: Vec<SentRow>, expired: Vec<SentRow>, limit: usize) -> Vec<SentRow> {
    let mut rows: Vec<SentRow> = stored;
    for record in expired {
        if !rows.iter().any(|row| row.id == record.id) {
            rows.push(record);
        }
    }
    rows.sort_by_key(|row| std::cmp::Reverse(row.id));
    rows.truncate(limit);
    rows
}

fn sent_row(row: &Row<'_>) -> rusqlite::Result<SentRow> {
    Ok(SentRow {
        id: row.get(0)?,
        recipient: row.get(1)?,
        addressed_to: row.get(2)?,
        kind: row.get(3)?,
        sent_at: row.get(4)?,
        read_at: row.get(5)?,
        delivered_at: row.get(6)?,
        expired_at: row.get(7)?,
        delivery_count: row.get(8)?,
        held: row.get(9)?,
        pushed_at: row.get(10)?,
    })
}
