//! The statements behind reading past mail (threads, history, search): one stored message as
//! its sender or a recipient sees it, and the rule of who may see it.
//!
//! A caller sees a message it sent (`messages.sent_by`) or received (`messages.received_by`),
//! by its current name: a rename moves both ([`Tx::move_received_mail`] and the receipts'
//! move), removing the instance forgets both, so a later holder of the name sees none of it.

use rusqlite::{params, OptionalExtension, Row};

use super::{StoreError, Tx};
use crate::domain::{InstanceName, MessageId, MessageKind, Timestamp};

/// One stored message as a participant sees it: what was said, where it sits in its thread,
/// and how far it got.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationRow {
    pub id: MessageId,
    /// The name it was sent under (as its recipient saw it).
    pub sender: String,
    /// Who holds it now (a forward's target, or the name it was sent to).
    pub recipient: InstanceName,
    pub addressed_to: InstanceName,
    pub kind: MessageKind,
    pub content: String,
    pub data: Option<String>,
    pub received_at: Timestamp,
    /// Its thread: the first message's id (its own, for a message that started one).
    pub thread_id: MessageId,
    pub reply_to: Option<MessageId>,
    pub subject: Option<String>,
    /// The sending instance by its current name; `None` for the broker's notices, imported
    /// mail, and once the sender's instance is removed.
    pub sent_by: Option<InstanceName>,
    /// The receiving instance by its current name; `None` once it is removed.
    pub received_by: Option<InstanceName>,
    /// Its first hand-out to a reader.
    pub read_at: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
    /// A lease or hold on it is live: handed out and not acknowledged yet.
    pub held: bool,
}

/// The columns of [`conversation_row`], in its order, from `messages m`. Statements built on
/// it bind `?1` to the caller's name and `?2` to now. Every store module declared after this one
/// can use it (`#[macro_use]` in `store/mod.rs`).
macro_rules! conversation_columns {
    () => {
        "SELECT m.id, m.sender, m.recipient, m.addressed_to, m.kind, m.content, m.data,
                m.received_at, coalesce(m.thread_id, m.id), m.reply_to, m.subject, m.sent_by,
                m.received_by, m.read_at, m.delivered_at,
                coalesce(m.delivered_at IS NULL AND m.leased_until > ?2, 0)
         FROM messages m"
    };
}

/// The visibility rule as SQL: the caller (`?1`) sent or received `m`.
macro_rules! visible_to_caller {
    () => {
        "(m.sent_by = ?1 OR m.received_by = ?1)"
    };
}

/// `?1` the caller, `?2` now, `?3` the message.
pub(crate) const VISIBLE_MESSAGE: &str = concat!(
    conversation_columns!(),
    " WHERE m.id = ?3 AND ",
    visible_to_caller!()
);

pub(crate) const MOVE_RECEIVED_MAIL: &str =
    "UPDATE messages SET received_by = ?2 WHERE received_by = ?1";
pub(crate) const FORGET_RECEIVED_MAIL: &str =
    "UPDATE messages SET received_by = NULL WHERE received_by = ?1";

/// Reads one row of a statement built on [`conversation_columns!`].
pub fn conversation_row(row: &Row<'_>) -> rusqlite::Result<ConversationRow> {
    Ok(ConversationRow {
        id: row.get(0)?,
        sender: row.get(1)?,
        recipient: row.get(2)?,
        addressed_to: row.get(3)?,
        kind: row.get(4)?,
        content: row.get(5)?,
        data: row.get(6)?,
        received_at: row.get(7)?,
        thread_id: row.get(8)?,
        reply_to: row.get(9)?,
        subject: row.get(10)?,
        sent_by: row.get(11)?,
        received_by: row.get(12)?,
        read_at: row.get(13)?,
        delivered_at: row.get(14)?,
        held: row.get(15)?,
    })
}

impl Tx<'_> {
    /// Message `id`, if `caller` sent or received it. Someone else's message and a message
    /// that does not exist (or was purged) look the same.
    pub fn visible_message(
        &self,
        caller: &InstanceName,
        id: MessageId,
        now: Timestamp,
    ) -> Result<Option<ConversationRow>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(VISIBLE_MESSAGE)?
            .query_row(params![caller, now, id], conversation_row)
            .optional()?)
    }

    /// `old`'s received mail becomes `new`'s: the instance renamed itself.
    pub(crate) fn move_received_mail(
        &self,
        old: &InstanceName,
        new: &InstanceName,
    ) -> Result<(), StoreError> {
        self.conn.execute(MOVE_RECEIVED_MAIL, params![old, new])?;
        Ok(())
    }

    /// Forgets whose mail `name` received: its instance is removed.
    pub(crate) fn forget_received_mail(&self, name: &str) -> Result<(), StoreError> {
        self.conn.execute(FORGET_RECEIVED_MAIL, [name])?;
        Ok(())
    }
}
