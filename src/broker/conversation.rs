//! Past mail as its sender or a recipient reads it back (threads, history, search): one rule
//! turns a stored row into what the caller is shown.

use crate::domain::InstanceName;
use crate::protocol::schema::{ConversationMessage, Direction, ReceiptState, WireBody};
use crate::store::conversation::ConversationRow;

/// `row` as `caller` sees it. The caller sent it if its sending instance is the caller (a
/// message to oneself counts as sent); otherwise the store only returned it because the
/// caller received it.
pub fn conversation_message(row: &ConversationRow, caller: &InstanceName) -> ConversationMessage {
    let (direction, peer) = if row.sent_by.as_ref() == Some(caller) {
        (Direction::Sent, &row.received_by)
    } else {
        (Direction::Received, &row.sent_by)
    };
    ConversationMessage {
        id: row.id,
        from: row.sender.clone(),
        to: row.recipient.to_string(),
        addressed_to: row.addressed_to.to_string(),
        kind: row.kind,
        timestamp: row.received_at.to_text(),
        message: WireBody::from_stored(row.content.clone(), row.data.as_deref()),
        thread_id: row.thread_id,
        reply_to: row.reply_to,
        subject: row.subject.clone(),
        direction,
        peer: peer.as_ref().map(InstanceName::to_string),
        state: state_of(row),
    }
}

/// Delivered once settled; read while a lease or hold is live; waiting otherwise (never
/// handed out, or a lease ran out unacknowledged).
fn state_of(row: &ConversationRow) -> ReceiptState {
    match (row.delivered_at, row.held) {
        (Some(_), _) => ReceiptState::Delivered,
        (None, true) => ReceiptState::Read,
        (None, false) => ReceiptState::Waiting,
    }
}
