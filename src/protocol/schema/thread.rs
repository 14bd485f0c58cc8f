//! The reply of `thread`: one conversation's messages that the caller sent or received, oldest
//! first, one page at a time.

use serde::{Deserialize, Serialize};

use super::conversation::ConversationMessage;
use crate::domain::MessageId;

/// One page of a thread. `more` says later messages are kept; ask again with `next_cursor`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadReply {
    /// The thread's id (the id of the message that started it), whichever of its messages
    /// the request named.
    pub thread_id: MessageId,
    /// The subject of the first message on it the caller can see that has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub messages: Vec<ConversationMessage>,
    #[serde(default)]
    pub more: bool,
    /// Present exactly when `more` is: pass it back as `cursor` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}
