//! The wire protocol, with no I/O: bytes → [`frame`] → [`request::Request`], and
//! [`reply::Reply`] → bytes. The request and reply types of every action, which clients
//! share, are in [`schema`].
//!
//! One JSON object per request. A legacy client sends it with no terminator and waits; a
//! persistent client sends one per line. The frame scanner finds the end of an object as soon
//! as its last byte arrives, so both work on the same connection code.

pub mod auth;
pub mod budget;
pub mod error_code;
pub mod frame;
pub mod reply;
pub mod request;
pub mod schema;
pub mod search_query;
pub mod thread_cursor;

pub use budget::{Capped, EntryBudget};
pub use error_code::ErrorCode;
pub use frame::{FrameScanner, FrameTooLarge, Scan};
pub use reply::Reply;
pub use request::{
    AckMode, Action, ChallengeAnswer, CheckOptions, InstanceName, ListOptions, MessageBody,
    Request, SentSelection, ThreadQuery, WatchOptions, Watcher, ACTION_NAMES,
};

/// The protocol revision reported by `ping`. Bumped when a field changes meaning.
pub const PROTOCOL_VERSION: u32 = 1;

/// A legacy client reads its reply with one `recv(65536)`: a `check` reply is kept below this.
pub const LEGACY_READ_BYTES: usize = 65_536;

/// What every reply to every action is kept under: half the legacy single read. Loopback TCP
/// may send the first part of a larger write ahead of the rest, and a client that reads once
/// would then get half a reply; replies up to about 32 KiB were measured to arrive whole.
/// Replies that grow with the data (`check`, `list`, `broadcast`, `ack`) page or summarise
/// to stay under it.
pub const REPLY_BUDGET: usize = LEGACY_READ_BYTES / 2 - 1024;
