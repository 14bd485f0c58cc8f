//! The wire protocol, with no I/O: bytes → [`frame`] → [`request::Request`], and
//! [`reply::Reply`] → bytes.
//!
//! One JSON object per request. A legacy client sends it with no terminator and waits; a
//! persistent client sends one per line. The frame scanner finds the end of an object as soon
//! as its last byte arrives, so both work on the same connection code.

pub mod frame;
pub mod reply;
pub mod request;

pub use frame::{FrameScanner, Scan};
pub use reply::{ErrorCode, Reply};
pub use request::{AckMode, Action, CheckOptions, InstanceName, MessageBody, Request};

/// The protocol revision reported by `ping`. Bumped when a field changes meaning.
pub const PROTOCOL_VERSION: u32 = 1;

/// A legacy client reads its reply with one `recv(65536)`: a `check` reply is kept below this.
pub const LEGACY_READ_BYTES: usize = 65_536;
