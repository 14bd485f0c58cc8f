//! The values every layer shares, from the wire to the database: who ([`InstanceName`]),
//! which message ([`MessageId`]), what kind ([`MessageKind`]) and when ([`Timestamp`]).
//!
//! They live below `protocol`, `broker` and `store` so that each of those can name them
//! without importing another layer.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::clock;

/// An instance name: `^[A-Za-z0-9_-]{1,32}$`, case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceName(String);

impl InstanceName {
    pub fn parse(text: &str) -> Option<Self> {
        let valid = (1..=32).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        valid.then(|| InstanceName(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for InstanceName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for InstanceName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        InstanceName::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{text}` is not an instance name (1-32 letters, digits, `-` or `_`)"
            ))
        })
    }
}

/// The id of a stored message; also what `send` returns and `check` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub i64);

impl PartialEq<i64> for MessageId {
    fn eq(&self, other: &i64) -> bool {
        self.0 == *other
    }
}

impl PartialEq<MessageId> for i64 {
    fn eq(&self, other: &MessageId) -> bool {
        *self == other.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How a message came to its recipient, stored in `messages.kind` and shown by `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// Sent to one name with `send`.
    Direct,
    /// One copy of a `broadcast`.
    Broadcast,
    /// A notice from the broker itself (sender `system`).
    System,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Direct => "direct",
            MessageKind::Broadcast => "broadcast",
            MessageKind::System => "system",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "direct" => Some(MessageKind::Direct),
            "broadcast" => Some(MessageKind::Broadcast),
            "system" => Some(MessageKind::System),
            _ => None,
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A moment in UTC, written everywhere (wire and database) as the one fixed-width RFC 3339
/// text of [`clock::to_text`], so SQLite compares stored times as strings correctly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    pub fn new(at: DateTime<Utc>) -> Self {
        Timestamp(at)
    }

    /// Reads stored or received text (any RFC 3339 offset).
    pub fn parse(text: &str) -> Option<Self> {
        clock::parse(text).map(Timestamp)
    }

    pub fn at(self) -> DateTime<Utc> {
        self.0
    }

    /// The stored text: what goes into SQLite and onto the wire.
    pub fn to_text(self) -> String {
        clock::to_text(self.0)
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(at: DateTime<Utc>) -> Self {
        Timestamp(at)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_text())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timestamp::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("`{text}` is not an RFC 3339 time")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_is_stored_as_the_clocks_fixed_width_text() {
        let at = Timestamp::parse("2026-12-01T10:00:00+02:00").unwrap();
        assert_eq!(at.to_text(), "2026-12-01T08:00:00.000Z");
        assert_eq!(
            serde_json::to_string(&at).unwrap(),
            "\"2026-12-01T08:00:00.000Z\""
        );
        let back: Timestamp = serde_json::from_str("\"2026-12-01T08:00:00.000Z\"").unwrap();
        assert_eq!(back, at);
    }

    #[test]
    fn a_bad_name_or_kind_does_not_deserialize() {
        assert!(serde_json::from_str::<InstanceName>("\"bad name\"").is_err());
        assert_eq!(
            serde_json::from_str::<InstanceName>("\"alice\"")
                .unwrap()
                .as_str(),
            "alice"
        );
        assert!(serde_json::from_str::<MessageKind>("\"shout\"").is_err());
        for kind in [
            MessageKind::Direct,
            MessageKind::Broadcast,
            MessageKind::System,
        ] {
            assert_eq!(MessageKind::parse(kind.as_str()), Some(kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }
}
