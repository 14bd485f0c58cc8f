//! One message as its sender or a recipient reads it back later: in a `thread`, in
//! `history`, in `search` results. Unlike `check`'s [`super::WireMessage`] it says which side
//! the caller was on and how far the message got, and reading it never changes that.

use serde::{Deserialize, Serialize};

use super::{ReceiptState, WireBody};
use crate::domain::{MessageId, MessageKind};

/// A message the caller sent or received, as a conversation shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationMessage {
    pub id: MessageId,
    /// The name it was sent under.
    pub from: String,
    /// Who holds it (a forward's target, or the name it was sent to).
    pub to: String,
    /// The name the sender wrote.
    pub addressed_to: String,
    pub kind: MessageKind,
    /// When the broker received it.
    pub timestamp: String,
    pub message: WireBody,
    /// The id of its thread's first message (its own id when it started the thread).
    pub thread_id: MessageId,
    /// The message it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Whether the caller sent it or received it.
    pub direction: Direction,
    /// The other party under its current name, where a reply should go: the recipient of
    /// mail the caller sent, the sender of mail it received (the caller itself for mail to
    /// itself). It follows renames, so it can differ from `from` and `to`, which keep the
    /// names the message was sent under. Absent when that instance is gone (removed, or the
    /// broker's own notices, or mail imported from the original), and from an older broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Where it is on its way: `waiting`, `read` (handed out, not acknowledged) or
    /// `delivered`.
    pub state: ReceiptState,
}

/// Which side of a message the caller is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Sent,
    Received,
}
