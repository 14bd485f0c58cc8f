//! The reply of `history`: one page of the caller's sent and received mail, newest first.

use serde::{Deserialize, Serialize};

use super::ConversationMessage;

/// One page of history. `more` says older mail is kept beyond it; pass `next_cursor` back as
/// `cursor` for the next page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryReply {
    /// Newest first.
    pub messages: Vec<ConversationMessage>,
    pub more: bool,
    /// Present exactly when `more` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}
