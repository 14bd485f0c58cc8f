//! `search`: what a client asks (a query in the language of [`crate::protocol::search_query`]
//! and optional filters) and what it gets back: the matching messages it sent or received, best
//! first, each with a snippet that marks the matched words.

use serde::{Deserialize, Serialize};

use super::conversation::ConversationMessage;

/// How a snippet marks the words that matched: `[` before, `]` after.
pub const SNIPPET_OPEN: &str = "[";
pub const SNIPPET_CLOSE: &str = "]";
/// What a snippet puts where it leaves text out.
pub const SNIPPET_ELLIPSIS: &str = "…";

/// `search`: full-text search over the subject and content of the caller's own mail.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SearchRequest {
    pub session_token: String,
    pub query: String,
    /// Only mail sent by this instance (its current name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Only mail received by this instance (its current name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<i64>,
    /// Only mail the broker received at or after this RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// A previous reply's `next_cursor`, for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// The matches, best first, as many as fit the page and the reply budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchReply {
    pub results: Vec<SearchResult>,
    /// More matches follow: ask again with `next_cursor`.
    #[serde(default)]
    pub more: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// More of the caller's mail matched than the broker ranks for one query: only the newest
    /// matches were ranked. Add words or a filter (`since`, `from`, `to`, `thread_id`) to
    /// reach older ones.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub capped: bool,
}

/// One match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResult {
    pub message: ConversationMessage,
    /// A short piece of the content (or of the subject, when only it matched) with each
    /// matched word between `[` and `]`, and `…` where text was left out.
    pub snippet: String,
    /// Its place in the ranking (bm25 over the caller's own mail, subject weighted above
    /// content), from 1, counted across pages.
    pub rank: u32,
}
