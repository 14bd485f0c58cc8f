//! What a client sends: one struct per action, tagged by `action` ([`ClientRequest`]).
//!
//! Names are carried as the caller gave them, not as [`crate::domain::InstanceName`]: the
//! broker checks them, so a bad name is refused with the text legacy clients know.

use serde::{Deserialize, Serialize};

use serde_json::Value;

use super::mail::ManualAck;
use crate::domain::Timestamp;

/// One request, as one JSON object with its `action`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ClientRequest {
    Ping,
    Challenge(ChallengeRequest),
    Register(RegisterRequest),
    Send(SendRequest),
    Broadcast(BroadcastRequest),
    Check(CheckRequest),
    Ack(AckRequest),
    List(ListRequest),
    Rename(RenameRequest),
    Count(CountRequest),
    Logout(LogoutRequest),
    Watch(WatchRequest),
    Sent(SentRequest),
    Thread(ThreadRequest),
    History(HistoryRequest),
    Search(super::search::SearchRequest),
}

impl ClientRequest {
    /// The `action` it is sent as.
    pub fn action(&self) -> &'static str {
        match self {
            ClientRequest::Ping => "ping",
            ClientRequest::Challenge(_) => "challenge",
            ClientRequest::Register(_) => "register",
            ClientRequest::Send(_) => "send",
            ClientRequest::Broadcast(_) => "broadcast",
            ClientRequest::Check(_) => "check",
            ClientRequest::Ack(_) => "ack",
            ClientRequest::List(_) => "list",
            ClientRequest::Rename(_) => "rename",
            ClientRequest::Count(_) => "count",
            ClientRequest::Logout(_) => "logout",
            ClientRequest::Watch(_) => "watch",
            ClientRequest::Sent(_) => "sent",
            ClientRequest::Thread(_) => "thread",
            ClientRequest::History(_) => "history",
            ClientRequest::Search(_) => "search",
        }
    }

    /// The request as one line: its JSON and a newline.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("a request always serializes");
        line.push(b'\n');
        line
    }
}

/// `challenge`: asks the broker to prove it knows the shared secret, before registering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChallengeRequest {
    pub instance_id: String,
    pub client_nonce: String,
}

/// `register`: with the answer to a challenge (secret mode), the legacy static token, or
/// the empty token an open-mode broker accepts.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub instance_id: String,
    /// The legacy static token (`sha256(name:secret)`); `""` in open mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_proof: Option<String>,
    /// Whether to replace a session that holds the name and is in use. Absent: a legacy
    /// register, which replaces it silently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub takeover: Option<bool>,
    /// The name's session this caller holds, if any: registering again is then never
    /// refused as "in use".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
}

/// What the sender wrote: `{content, data?}`. `data` should be a JSON object; it is sent
/// as given, and the broker refuses anything else with the text legacy clients know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestBody {
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// The sender's replay protection: a nonce that makes a retry safe, and when it wrote the
/// message.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RequestStamp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
}

/// Where a send or broadcast sits in a conversation: the message it answers and its
/// subject, both left out when absent (what a legacy client sends).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ThreadingFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// `send`: one message to one name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendRequest {
    pub session_token: String,
    pub to_id: String,
    pub message: RequestBody,
    #[serde(flatten)]
    pub stamp: RequestStamp,
    #[serde(flatten)]
    pub thread: ThreadingFields,
}

/// `broadcast`: one copy for every other registered instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BroadcastRequest {
    pub session_token: String,
    pub message: RequestBody,
    #[serde(flatten)]
    pub stamp: RequestStamp,
    #[serde(flatten)]
    pub thread: ThreadingFields,
}

/// `check`: the legacy read (marked delivered once the reply is written), or with `ack:
/// manual` a lease of `lease_ms`; `wait_ms` long-polls, `limit` caps the count.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CheckRequest {
    pub session_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<ManualAck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    /// Only mail answering this message (one the caller sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<i64>,
}

/// `ack`: settles mail a manual-ack check leased; with `release`, hands it back unread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AckRequest {
    pub session_token: String,
    pub ids: Vec<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub release: bool,
}

/// `list`: one page of instances, names after `after`, at most `limit`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ListRequest {
    /// Empty (and left out) with `without_session`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session_token: String,
    /// Without a session: the read-only list the broker gives its own user.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub without_session: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `rename`: the caller's new name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenameRequest {
    pub session_token: String,
    pub new_id: String,
}

/// `count`: how much mail waits, consuming none; `wait_ms` long-polls.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CountRequest {
    pub session_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// `logout`: ends the caller's session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogoutRequest {
    pub session_token: String,
}

/// `watch`: the caller's undelivered mail not yet announced to `watcher`, consuming none;
/// `wait_ms` long-polls, `limit` caps the count, `push` says the caller pushes it into a live
/// session.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct WatchRequest {
    pub session_token: String,
    pub watcher: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub push: bool,
}

/// `sent`: receipts for the caller's own mail: its newest `limit` messages, or exactly `ids`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SentRequest {
    pub session_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<i64>>,
}

/// `thread`: one page of the thread `thread_id` names (its id, or any of its messages' ids),
/// after `cursor` (a previous page's `next_cursor`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ThreadRequest {
    pub session_token: String,
    pub thread_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `history`: one page of the caller's sent and received mail, newest first; `with` keeps only
/// the mail between it and one peer, `cursor` (a previous reply's `next_cursor`) goes on from
/// the last page, `before` starts at a time.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HistoryRequest {
    pub session_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Timestamp>,
}
