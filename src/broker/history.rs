//! `history`: the caller's sent and received mail, newest first, optionally only the mail
//! between it and one peer, one page at a time. Reading changes nothing: no lease, no
//! delivery, no read time. Mail belongs to an instance by its current name (on both sides), so
//! a rename of either keeps a conversation together, and the mail of a removed instance is
//! nobody's.

use super::conversation::conversation_message;
use super::session::TokenHash;
use super::{done, Broker, BrokerError, Peer};
use crate::domain::InstanceName;
use crate::protocol::request::{HistoryCursor, HistoryOptions};
use crate::protocol::schema::HistoryReply;
use crate::protocol::EntryBudget;
use crate::store::conversation::ConversationRow;
use crate::store::history::HistoryPage;

/// A `history` reply without its messages: status, `more` and a cursor.
const HISTORY_REPLY_FIXED_BYTES: usize = 100;

impl Broker {
    /// `history`: one page of the caller's mail, as much of `options.limit` as fits the reply
    /// budget (`more` and `next_cursor` say where to go on). Reads only; counts as one request.
    pub(super) async fn history(
        &self,
        token: Option<TokenHash>,
        peer: &Peer,
        options: HistoryOptions,
    ) -> Result<HistoryReply, BrokerError> {
        self.as_caller(token, peer, move |tx, caller, now| {
            let page = HistoryPage {
                with: options.with.as_ref(),
                older_than: options.cursor.map(HistoryCursor::older_than),
                received_before: options.before,
                // One more than asked, to tell whether more is kept.
                limit: options.limit.saturating_add(1),
            };
            let rows = tx.history(&caller.name, &page, now)?;
            done(history_page(&rows, &caller.name, options.limit as usize))
        })
        .await
    }
}

/// The first `limit` of `rows` (newest first, one more than asked if more is kept) that fit
/// the reply budget, always at least one, and the cursor after the last of them.
fn history_page(rows: &[ConversationRow], caller: &InstanceName, limit: usize) -> HistoryReply {
    let mut budget = EntryBudget::new(HISTORY_REPLY_FIXED_BYTES);
    let mut messages = Vec::new();
    for row in rows.iter().take(limit) {
        let message = conversation_message(row, caller);
        // A message larger than the whole budget still goes out alone, so paging never
        // stalls on it.
        if !budget.take(&message) && !messages.is_empty() {
            break;
        }
        messages.push(message);
    }
    let more = rows.len() > messages.len();
    let next_cursor = more
        .then(|| messages.last())
        .flatten()
        .map(|last| HistoryCursor::after(last.id).to_text());
    HistoryReply {
        messages,
        more,
        next_cursor,
    }
}
