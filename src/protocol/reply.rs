//! Replies: `{"status": "ok", ...}` or `{"status": "error", "code": ..., "message": ...}`,
//! serialized as one line.

use serde_json::{Map, Value};

/// A stable, machine-readable error code. The `message` beside it is for people; legacy
/// clients match some message texts, so those texts are fixed too (see `docs/PROTOCOL.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

impl ErrorCode {
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
        }
    }
}

/// One reply, built field by field.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    fields: Map<String, Value>,
}

impl Reply {
    /// `{"status": "ok"}`, to which the action adds its fields.
    pub fn ok() -> Self {
        let mut fields = Map::new();
        fields.insert("status".into(), "ok".into());
        Reply { fields }
    }

    /// `{"status": "error", "code": ..., "message": ...}`.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut fields = Map::new();
        fields.insert("status".into(), "error".into());
        fields.insert("code".into(), code.as_str().into());
        fields.insert("message".into(), message.into().into());
        Reply { fields }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(key.to_owned(), value.into());
        self
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.get(key)
    }

    pub fn is_ok(&self) -> bool {
        self.fields.get("status").and_then(Value::as_str) == Some("ok")
    }

    /// The reply as written on the wire: one JSON object and a newline.
    pub fn to_line(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec(&self.fields).expect("a JSON map always serializes");
        bytes.push(b'\n');
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_status_code_and_message_on_one_line() {
        let line = Reply::error(
            ErrorCode::InvalidSession,
            "Invalid or missing session token",
        )
        .to_line();
        assert_eq!(*line.last().unwrap(), b'\n');
        let value: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["status"], "error");
        assert_eq!(value["code"], "invalid_session");
        assert_eq!(value["message"], "Invalid or missing session token");
    }
}
