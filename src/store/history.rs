//! The statements behind `history`: the caller's sent and received mail, newest first, one
//! page at a time, optionally only the mail between the caller and one peer.
//!
//! Mail belongs to a caller by `sent_by` or `received_by` (its current name, see
//! [`super::conversation`]). Each side is read through its own index, newest first, and the
//! two are merged, so a page costs two short index walks however much mail others exchange.

use rusqlite::params;

use super::conversation::{conversation_row, ConversationRow};
use super::{StoreError, Tx};
use crate::domain::{InstanceName, MessageId, Timestamp};

/// Which page of history: what the caller asked for, as the store reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage<'a> {
    /// Only the mail between the caller and this instance.
    pub with: Option<&'a InstanceName>,
    /// Only messages with smaller ids (the previous page's last).
    pub older_than: Option<MessageId>,
    /// Only messages the broker received before this time.
    pub received_before: Option<Timestamp>,
    /// At most this many rows.
    pub limit: u32,
}

/// `?1` the caller, `?2` now, `?3` the id to start below, `?4` the received-before time or
/// NULL, `?5` how many. Each side's subquery stops at `?5` rows, so the merge reads at most
/// twice a page.
pub(crate) const HISTORY: &str = concat!(
    conversation_columns!(),
    " WHERE m.id IN (
        SELECT id FROM (SELECT id FROM messages
            WHERE sent_by = ?1 AND id < ?3 AND (?4 IS NULL OR received_at < ?4)
            ORDER BY id DESC LIMIT ?5)
        UNION ALL
        SELECT id FROM (SELECT id FROM messages
            WHERE received_by = ?1 AND id < ?3 AND (?4 IS NULL OR received_at < ?4)
            ORDER BY id DESC LIMIT ?5))
      ORDER BY m.id DESC LIMIT ?5"
);

/// [`HISTORY`] with `?6` the peer: mail the caller sent to it, and mail it sent the caller.
pub(crate) const HISTORY_WITH: &str = concat!(
    conversation_columns!(),
    " WHERE m.id IN (
        SELECT id FROM (SELECT id FROM messages
            WHERE sent_by = ?1 AND received_by = ?6 AND id < ?3
              AND (?4 IS NULL OR received_at < ?4)
            ORDER BY id DESC LIMIT ?5)
        UNION ALL
        SELECT id FROM (SELECT id FROM messages
            WHERE received_by = ?1 AND sent_by = ?6 AND id < ?3
              AND (?4 IS NULL OR received_at < ?4)
            ORDER BY id DESC LIMIT ?5))
      ORDER BY m.id DESC LIMIT ?5"
);

impl Tx<'_> {
    /// Up to `page.limit` of the messages `caller` sent or received, newest first. Reads
    /// only: no lease, delivery or read time changes.
    pub fn history(
        &self,
        caller: &InstanceName,
        page: &HistoryPage<'_>,
        now: Timestamp,
    ) -> Result<Vec<ConversationRow>, StoreError> {
        let below = page.older_than.map_or(i64::MAX, |id| id.0);
        let rows = match page.with {
            None => self
                .conn
                .prepare_cached(HISTORY)?
                .query_map(
                    params![caller, now, below, page.received_before, page.limit],
                    conversation_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?,
            Some(peer) => self
                .conn
                .prepare_cached(HISTORY_WITH)?
                .query_map(
                    params![caller, now, below, page.received_before, page.limit, peer],
                    conversation_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?,
        };
        Ok(rows)
    }
}
