//! The replies about the broker and its instances: `ping`, `challenge`, `register`, `rename`,
//! `list` and `logout`.

use serde::{Deserialize, Serialize};

use crate::protocol::ErrorCode;

/// `ping`: who hosts the broker since when, in which security mode, over which socket and
/// data directory. Every field may be absent when read: an older broker (or the Python
/// original) says less, and a client decides what it needs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PingReply {
    /// A database gone or damaged: the reply is then an error, with these fields beside the
    /// usual ones, so nothing reports healthy while requests fail.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<PingRefusal>,
    /// `ok`, `checking` (its integrity check still runs), `gone` or `damaged`.
    pub database: String,
    pub version: String,
    pub protocol: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<SecurityMode>,
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    pub uptime_seconds: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock: Option<ClockReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreWork>,
    /// The data directory's canonical path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    /// The Unix socket the broker also listens on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// In secret mode: whether the legacy static `auth_token` is accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub static_token: Option<StaticToken>,
    /// The dashboard's address (`serve --web`), without its login token; absent when off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web: Option<String>,
}

/// Why a `ping` is an error: the database's fault, as every other request reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingRefusal {
    pub code: ErrorCode,
    pub message: String,
}

/// Whether the broker requires the shared secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityMode {
    Open,
    Secret,
}

impl SecurityMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityMode::Open => "open",
            SecurityMode::Secret => "secret",
        }
    }
}

/// Whether a secret-mode broker accepts a legacy register with the static `auth_token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StaticToken {
    Accepted,
    /// `serve --no-static-token`.
    Refused,
}

impl StaticToken {
    pub fn as_str(self) -> &'static str {
        match self {
            StaticToken::Accepted => "accepted",
            StaticToken::Refused => "refused",
        }
    }
}

/// `ping`'s `clock`: the broker clock every rule runs on, the wall clock, and how far the
/// wall clock is ahead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClockReport {
    pub broker: String,
    pub wall: String,
    pub wall_ahead_ms: i64,
}

/// `ping`'s `store`: the writer's jobs run and commits made; jobs per commit is how much group
/// commit shares each disk flush.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreWork {
    pub jobs: u64,
    pub commits: u64,
}

/// `challenge`: the broker's nonce and its proof that it knows the shared secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChallengeReply {
    pub challenge_id: String,
    pub server_nonce: String,
    pub server_proof: String,
    /// The uid the broker sees this connection as, which both proofs cover (`-`: unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_uid: Option<String>,
    #[serde(default)]
    pub expires_in_ms: u64,
}

/// `register`: the new session and how much mail already waits for the name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterReply {
    pub session_token: String,
    /// `Registered alice`, or `Registered alice with 3 queued messages`.
    pub message: String,
    pub instance_id: String,
    #[serde(default)]
    pub queued: u32,
}

/// `rename`: `Renamed old to new`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenameReply {
    pub message: String,
    pub old_id: String,
    pub new_id: String,
}

/// One page of `list`: instances in name order, and where the next page starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListReply {
    pub instances: Vec<InstanceEntry>,
    #[serde(default)]
    pub more: bool,
    /// With `more`: the last name on this page, to pass as `after` for the next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// One instance in `list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceEntry {
    pub id: String,
    pub last_seen: String,
    /// A connection of its session waits in a long-poll now, or its session made a request
    /// within the last minute. An older broker does not say: read as false.
    #[serde(default)]
    pub online: bool,
    /// A channel-mode MCP server holds its session: mail is pushed into the live session.
    #[serde(default)]
    pub push: bool,
}

/// `logout`: `Logged out alice`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogoutReply {
    pub message: String,
    pub instance_id: String,
}
