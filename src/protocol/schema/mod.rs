//! The typed wire contract: one request type and one reply type per action, shared by the
//! broker (which builds the replies), the client (which builds the requests and reads the
//! replies), the CLI, the MCP server and the load generator. `docs/PROTOCOL.md` describes these
//! types; where the two disagree, these types are the contract.
//!
//! - [`requests`]: what a client sends, one struct per action ([`requests::ClientRequest`]).
//!   The broker reads requests with the hand parser in [`super::request`], whose error texts
//!   legacy clients match.
//! - [`identity`]: the replies of `ping`, `challenge`, `register`, `rename`, `list`, `logout`.
//! - [`mail`]: the replies of `send`, `broadcast`, `check`, `ack`, `count`, `watch` and `sent`.
//! - [`conversation`]: one message as its sender or a recipient reads it back later, in the
//!   replies of `thread`, `history` and `search`.
//! - [`thread`]: the reply of `thread`, one conversation's messages.
//! - [`history`]: the reply of `history`.
//! - [`search`]: the request and reply of `search`.
//! - [`error`]: the error reply every action may give instead.
//!
//! Every reply is written by [`super::Reply::to_line`], which adds `status`.
//!
//! Ids, kinds, codes and counts are typed. The names and times a broker reports in a reply
//! are kept as the text it sent, not as [`crate::domain::InstanceName`] or
//! [`crate::domain::Timestamp`]: a client shows whatever a broker says (escaped) rather than
//! refuse the whole reply, and a broker that is not ours may say anything (see
//! `tests/it/cli_escaping.rs`). The broker builds them from its domain values.

pub mod conversation;
pub mod error;
pub mod history;
pub mod identity;
pub mod mail;
pub mod requests;
pub mod search;
pub mod thread;

pub use conversation::{ConversationMessage, Direction};
pub use error::ErrorReply;
pub use history::HistoryReply;
pub use identity::{
    ChallengeReply, ClockReport, InstanceEntry, ListReply, LogoutReply, PingRefusal, PingReply,
    RegisterReply, RenameReply, SecurityMode, StaticToken, StoreWork,
};
pub use mail::{
    AckReply, BroadcastCopies, BroadcastReply, CheckReply, CountReply, ManualAck, RefusedId,
    ReleaseReply, SendReply, WatchReply, WireBody, WireMessage,
};
pub use mail::{Receipt, ReceiptState, SentReply};
pub use requests::ClientRequest;
pub use search::{SearchReply, SearchRequest, SearchResult};
pub use thread::ThreadReply;

#[cfg(test)]
mod round_trip;
