//! The statements behind `thread` and check's `reply_to`: one thread's messages that a caller
//! sent or received, in id order from a cursor; its subject; which thread a message id names
//! for a caller; and the waiting replies to one message.
//!
//! A thread is every message whose effective thread id, `coalesce(thread_id, id)`, is its
//! root's id. Written as "the root itself, or a message carrying the root's id" so that both
//! halves use an index (the primary key, `messages_by_thread`).

use rusqlite::{params, OptionalExtension};

use super::conversation::{conversation_row, ConversationRow};
use super::{StoreError, Tx};
use crate::domain::{InstanceName, MessageId, Timestamp};

/// `?1` the caller, `?2` now, `?3` the thread, `?4` the last id already shown, `?5` how many.
pub(crate) const THREAD_PAGE: &str = concat!(
    conversation_columns!(),
    " WHERE (m.thread_id = ?3 OR (m.id = ?3 AND m.thread_id IS NULL)) AND m.id > ?4 AND ",
    visible_to_caller!(),
    " ORDER BY m.id LIMIT ?5"
);

/// `?1` the caller, `?2` the thread: the subject of the first message of it the caller sees
/// that has one.
pub(crate) const THREAD_SUBJECT: &str = concat!(
    "SELECT m.subject FROM messages m
     WHERE (m.thread_id = ?2 OR (m.id = ?2 AND m.thread_id IS NULL))
       AND m.subject IS NOT NULL AND ",
    visible_to_caller!(),
    " ORDER BY m.id LIMIT 1"
);

/// `?1` the caller, `?2` a thread id: whether the caller sees a reply in that thread (the
/// root is looked up on its own, as a message).
pub(crate) const SEES_REPLY_IN: &str = concat!(
    "SELECT 1 FROM messages m WHERE m.thread_id = ?2 AND ",
    visible_to_caller!(),
    " LIMIT 1"
);

/// `?1` the caller, `?2` a message id: whether the caller sent it (under any of its names,
/// since `sent_by` follows renames).
pub(crate) const SENT_BY_CALLER: &str = "SELECT 1 FROM messages WHERE id = ?2 AND sent_by = ?1";

impl Tx<'_> {
    /// The thread `id` names for `caller`: the thread of that message if the caller sees it,
    /// else `id` itself if the caller sees a message of a thread by that id. `None` when the
    /// caller sees nothing of it, alike for a thread that does not exist, has been purged, or
    /// is other instances' conversation.
    pub fn thread_seen_by(
        &self,
        caller: &InstanceName,
        id: MessageId,
        now: Timestamp,
    ) -> Result<Option<MessageId>, StoreError> {
        if let Some(row) = self.visible_message(caller, id, now)? {
            return Ok(Some(row.thread_id));
        }
        let sees_reply = self
            .conn
            .prepare_cached(SEES_REPLY_IN)?
            .exists(params![caller, id])?;
        Ok(sees_reply.then_some(id))
    }

    /// Up to `limit` messages of `thread` that `caller` sent or received, after `after`,
    /// oldest first.
    pub fn thread_page(
        &self,
        caller: &InstanceName,
        thread: MessageId,
        after: MessageId,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<ConversationRow>, StoreError> {
        let mut statement = self.conn.prepare_cached(THREAD_PAGE)?;
        let rows =
            statement.query_map(params![caller, now, thread, after, limit], conversation_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The subject of `thread` as `caller` sees it, if any message of it it sees has one.
    pub fn thread_subject(
        &self,
        caller: &InstanceName,
        thread: MessageId,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(THREAD_SUBJECT)?
            .query_row(params![caller, thread], |row| row.get(0))
            .optional()?)
    }

    /// Whether `caller` sent message `id` (and it is still kept).
    pub fn sent_by_caller(&self, caller: &InstanceName, id: MessageId) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached(SENT_BY_CALLER)?
            .exists(params![caller, id])?)
    }
}
