//! [`ErrorCode`]: the stable, machine-readable code of every error reply, shared by the broker
//! and its clients. On the wire it is the snake_case text of [`ErrorCode::as_str`].

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A stable, machine-readable error code. The `message` beside it is for people; legacy
/// clients match some message texts, so those texts are fixed too (see `docs/PROTOCOL.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidJson,
    NotAnObject,
    MissingField,
    InvalidField,
    UnknownAction,
    InvalidName,
    ReservedName,
    RequestTooLarge,
    ReadTimeout,
    IdleTimeout,
    TooManyConnections,
    ConnectionEvicted,
    ConnectionQuota,
    ForbiddenPeer,
    InvalidAuth,
    InvalidSession,
    QueueFull,
    RenameCooldown,
    RateLimited,
    NameTaken,
    SameName,
    StaleTimestamp,
    DataTooLarge,
    StorageFailed,
    Internal,
    PeerRateLimited,
    PeerRegisterLimited,
    RegisterLimited,
    LargeMessageSenderFull,
    LargeMessageTotalFull,
    AuthThrottled,
    /// The database's files were removed or replaced under the running broker.
    DatabaseGone,
    /// SQLite reports the database corrupt.
    DatabaseDamaged,
    /// A broker refused to start: its data directory is protected by a shared secret it does
    /// not have.
    DataDirProtected,
    /// A client holding the shared secret refused a broker in open mode (client-side).
    BrokerOpenMode,
    /// A client refused a broker that serves another data directory than its own
    /// (client-side).
    DataDirMismatch,
    /// A `register` that did not ask to take over named a session in use.
    NameInUse,
    /// The session was replaced by a later `register` of its name.
    SessionReplaced,
    /// The name differs only in letter case from another instance's.
    NameTooSimilar,
    /// A challenge-response registration failed: open mode, an unknown, used or expired
    /// challenge, one for another name, or a wrong proof; or, client-side, a broker that did
    /// not prove it knows the secret.
    ChallengeFailed,
    /// A legacy register with the static `auth_token`, which the broker was told to refuse.
    StaticTokenRefused,
    /// A `reply_to` naming a message the caller neither sent nor received (or one that does
    /// not exist, or was purged: alike, so ids cannot be probed).
    UnknownReplyTo,
    /// A `thread` naming a thread the caller took no part in (or one that does not exist, or
    /// was purged: alike, so threads cannot be probed).
    UnknownThread,
    /// A `search` query that does not parse, or is too long.
    InvalidQuery,
    /// A `send` or `broadcast` whose content is empty or only whitespace.
    EmptyMessage,
    /// A code this client does not know: a newer broker's. Never sent.
    Unknown,
}

impl ErrorCode {
    /// Every code the broker or this client can give (not [`ErrorCode::Unknown`]).
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::InvalidJson,
        ErrorCode::NotAnObject,
        ErrorCode::MissingField,
        ErrorCode::InvalidField,
        ErrorCode::UnknownAction,
        ErrorCode::InvalidName,
        ErrorCode::ReservedName,
        ErrorCode::RequestTooLarge,
        ErrorCode::ReadTimeout,
        ErrorCode::IdleTimeout,
        ErrorCode::TooManyConnections,
        ErrorCode::ConnectionEvicted,
        ErrorCode::ConnectionQuota,
        ErrorCode::ForbiddenPeer,
        ErrorCode::InvalidAuth,
        ErrorCode::InvalidSession,
        ErrorCode::QueueFull,
        ErrorCode::RenameCooldown,
        ErrorCode::RateLimited,
        ErrorCode::NameTaken,
        ErrorCode::SameName,
        ErrorCode::StaleTimestamp,
        ErrorCode::DataTooLarge,
        ErrorCode::StorageFailed,
        ErrorCode::Internal,
        ErrorCode::PeerRateLimited,
        ErrorCode::PeerRegisterLimited,
        ErrorCode::RegisterLimited,
        ErrorCode::LargeMessageSenderFull,
        ErrorCode::LargeMessageTotalFull,
        ErrorCode::AuthThrottled,
        ErrorCode::DatabaseGone,
        ErrorCode::DatabaseDamaged,
        ErrorCode::DataDirProtected,
        ErrorCode::BrokerOpenMode,
        ErrorCode::DataDirMismatch,
        ErrorCode::NameInUse,
        ErrorCode::SessionReplaced,
        ErrorCode::NameTooSimilar,
        ErrorCode::ChallengeFailed,
        ErrorCode::StaticTokenRefused,
        ErrorCode::UnknownReplyTo,
        ErrorCode::UnknownThread,
        ErrorCode::InvalidQuery,
        ErrorCode::EmptyMessage,
    ];

    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            InvalidJson => "invalid_json",
            NotAnObject => "not_an_object",
            MissingField => "missing_field",
            InvalidField => "invalid_field",
            UnknownAction => "unknown_action",
            InvalidName => "invalid_name",
            ReservedName => "reserved_name",
            RequestTooLarge => "request_too_large",
            ReadTimeout => "read_timeout",
            IdleTimeout => "idle_timeout",
            TooManyConnections => "too_many_connections",
            ConnectionEvicted => "connection_evicted",
            ConnectionQuota => "connection_quota",
            ForbiddenPeer => "forbidden_peer",
            InvalidAuth => "invalid_auth",
            InvalidSession => "invalid_session",
            QueueFull => "queue_full",
            RenameCooldown => "rename_cooldown",
            RateLimited => "rate_limited",
            NameTaken => "name_taken",
            SameName => "same_name",
            StaleTimestamp => "stale_timestamp",
            DataTooLarge => "data_too_large",
            StorageFailed => "storage_failed",
            Internal => "internal",
            PeerRateLimited => "peer_rate_limited",
            PeerRegisterLimited => "peer_register_limited",
            RegisterLimited => "register_limited",
            LargeMessageSenderFull => "large_message_sender_full",
            LargeMessageTotalFull => "large_message_total_full",
            AuthThrottled => "auth_throttled",
            DatabaseGone => "database_gone",
            DatabaseDamaged => "database_damaged",
            DataDirProtected => "data_dir_protected",
            BrokerOpenMode => "broker_open_mode",
            DataDirMismatch => "data_dir_mismatch",
            NameInUse => "name_in_use",
            SessionReplaced => "session_replaced",
            NameTooSimilar => "name_too_similar",
            ChallengeFailed => "challenge_failed",
            StaticTokenRefused => "static_token_refused",
            UnknownReplyTo => "unknown_reply_to",
            UnknownThread => "unknown_thread",
            InvalidQuery => "invalid_query",
            EmptyMessage => "empty_message",
            Unknown => "unknown",
        }
    }

    /// The code whose [`ErrorCode::as_str`] is `text`; a code this build does not know is
    /// [`ErrorCode::Unknown`].
    pub fn parse(text: &str) -> ErrorCode {
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|code| code.as_str() == text)
            .unwrap_or(ErrorCode::Unknown)
    }
}

/// A code equals its wire text.
impl PartialEq<str> for ErrorCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Never fails on a string: a newer broker's codes must not make an older client's reply
/// unreadable.
impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        Ok(ErrorCode::parse(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_from_its_text_and_an_unknown_text_is_unknown() {
        for code in ErrorCode::ALL {
            let text = serde_json::to_string(code).unwrap();
            assert_eq!(text, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&text).unwrap(), *code);
        }
        let newer: ErrorCode = serde_json::from_str("\"a_code_from_a_newer_broker\"").unwrap();
        assert_eq!(newer, ErrorCode::Unknown);
    }
}
