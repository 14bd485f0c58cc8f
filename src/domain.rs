//! The values every layer shares, from the wire to the database: who ([`InstanceName`]),
//! which message ([`MessageId`]), what kind ([`MessageKind`]), when ([`Timestamp`]), which
//! session ([`TokenHash`], what the store keeps of a session token) and what about
//! ([`Subject`]).
//!
//! They live below `protocol`, `broker` and `store` so that each of those can name them
//! without importing another layer.

use std::fmt;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::clock;

/// The name reserved for the broker's own notices, so nobody can pose as it. Reserved in
/// every letter case (`System` would read just like it), and shown by the MCP server as a
/// notice from the broker rather than a message from someone.
pub const SYSTEM_SENDER: &str = "system";

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

impl From<InstanceName> for serde_json::Value {
    fn from(name: InstanceName) -> Self {
        serde_json::Value::String(name.0)
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

/// A message's subject: short text the sender gives, shown with the message and in its
/// thread. 1 to [`Subject::MAX_CHARS`] characters, none of them a control character (a
/// subject is one line, and a terminal shows it as it is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject(String);

impl Subject {
    pub const MAX_CHARS: usize = 200;

    /// The subject, or `None` for text that is empty, too long or holds a control character.
    pub fn parse(text: &str) -> Option<Self> {
        let chars = text.chars().count();
        let valid = (1..=Self::MAX_CHARS).contains(&chars)
            && !text.trim().is_empty()
            && !text.chars().any(char::is_control);
        valid.then(|| Subject(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
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
    /// Written by the person at the dashboard (sender: the reserved human name).
    Human,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Direct => "direct",
            MessageKind::Broadcast => "broadcast",
            MessageKind::System => "system",
            MessageKind::Human => "human",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "direct" => Some(MessageKind::Direct),
            "broadcast" => Some(MessageKind::Broadcast),
            "system" => Some(MessageKind::System),
            "human" => Some(MessageKind::Human),
            _ => None,
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A moment in UTC to the millisecond, written everywhere (wire and database) as the one
/// fixed-width RFC 3339 text of [`clock::to_text`], so SQLite compares stored times as strings
/// correctly.
///
/// It holds no more than that text does, so comparing two `Timestamp`s gives what SQLite's
/// comparison of their stored texts gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// `at`, less what its text would not show (below the millisecond).
    pub fn new(at: DateTime<Utc>) -> Self {
        Timestamp(at.trunc_subsecs(3))
    }

    /// This moment plus `by`, saturating at the end of time instead of panicking on an
    /// absurd configuration.
    pub fn plus(self, by: std::time::Duration) -> Self {
        let later = chrono::Duration::from_std(by)
            .ok()
            .and_then(|by| self.0.checked_add_signed(by));
        Timestamp::new(later.unwrap_or(DateTime::<Utc>::MAX_UTC))
    }

    /// This moment less `by`, saturating at the start of time.
    pub fn minus(self, by: std::time::Duration) -> Self {
        let earlier = chrono::Duration::from_std(by)
            .ok()
            .and_then(|by| self.0.checked_sub_signed(by));
        Timestamp::new(earlier.unwrap_or(DateTime::<Utc>::MIN_UTC))
    }

    /// Reads stored or received text (any RFC 3339 offset).
    pub fn parse(text: &str) -> Option<Self> {
        clock::parse(text).map(Timestamp::new)
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
        Timestamp::new(at)
    }
}

impl From<Timestamp> for serde_json::Value {
    fn from(at: Timestamp) -> Self {
        serde_json::Value::String(at.to_text())
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

/// What the store keeps in place of a session token: its SHA-256 in lowercase hex, so a copy
/// of the database cannot be used to speak as anyone. A request's token is hashed once, when
/// the request arrives, and the hash goes with it to every check.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TokenHash(String);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        #[cfg(test)]
        HASHED.with(|hashed| hashed.set(hashed.get() + 1));
        let hex = Sha256::digest(token.as_bytes())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        TokenHash(hex)
    }

    /// A hash as the store read it back.
    pub fn from_stored(hex: String) -> Self {
        TokenHash(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// How many tokens this thread has hashed so far, for the tests that count them.
    #[cfg(test)]
    pub(crate) fn hashed_on_this_thread() -> u64 {
        HASHED.with(std::cell::Cell::get)
    }
}

#[cfg(test)]
thread_local! {
    static HASHED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Not the hash itself: logs need not carry what identifies a session.
impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_hash_is_lowercase_hex_sha256() {
        // `hashlib.sha256(b"abc").hexdigest()`.
        assert_eq!(
            TokenHash::of("abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_timestamp_holds_what_its_text_holds_and_compares_as_it() {
        let at = |text: &str| Timestamp::new(clock::parse(text).unwrap());
        let fine = at("2026-12-01T08:00:00.123456Z");
        assert_eq!(fine, at("2026-12-01T08:00:00.123Z"));
        assert!(at("2026-12-01T08:00:00.123Z") < at("2026-12-01T08:00:00.124Z"));
        assert_eq!(
            fine.plus(std::time::Duration::from_secs(60)).to_text(),
            "2026-12-01T08:01:00.123Z"
        );
        assert_eq!(
            fine.minus(std::time::Duration::MAX),
            Timestamp::new(DateTime::<Utc>::MIN_UTC)
        );
    }

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
            MessageKind::Human,
        ] {
            assert_eq!(MessageKind::parse(kind.as_str()), Some(kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }
}
