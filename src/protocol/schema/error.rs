//! The error reply: `{"status": "error", "code": ..., "message": ...}`, sometimes with a hint.

use serde::{Deserialize, Serialize};

use crate::protocol::ErrorCode;

/// A refusal or failure. `message` is for people, and some of its texts are fixed for the
/// legacy scripts (see `docs/PROTOCOL.md` §10); `code` is for programs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// Read as [`ErrorCode::Unknown`] when absent: the Python original sends none.
    #[serde(default = "unknown_code")]
    pub code: ErrorCode,
    #[serde(default = "no_message")]
    pub message: String,
    /// Why, when `message` is a legacy text that cannot say it (a replaced session's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// With `session_replaced`: when the session was replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_at: Option<String>,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply {
            code,
            message: message.into(),
            hint: None,
            replaced_at: None,
        }
    }
}

fn unknown_code() -> ErrorCode {
    ErrorCode::Unknown
}

fn no_message() -> String {
    "(no message)".to_owned()
}
