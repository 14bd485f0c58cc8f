//! The replies about mail: `send`, `broadcast`, `check` (with [`WireMessage`], one message as
//! a reader sees it), `ack` and its `release`, `count`, `watch`, and `sent` (with [`Receipt`],
//! one message as its sender sees it).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::domain::{MessageId, MessageKind};

/// `send`: the stored message's id and whom it went to. A nonce already used inside the
/// replay window gives `duplicate: true`, the original id and no `recipient`: nothing new
/// was stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendReply {
    /// `Message sent`, `Message queued for ...`, `Message forwarded from ... to ...`.
    pub message: String,
    pub message_id: MessageId,
    /// The thread the message is in: its own id when it started one, the thread of the
    /// message it answers otherwise. Absent on a duplicate and from an older broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<MessageId>,
    /// Who holds the message now (a forward's target, or the name it was sent to); the
    /// broker wakes that reader's long-poll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    #[serde(default)]
    pub duplicate: bool,
    /// Mail to a name nobody ever registered, close to the name of an instance that is
    /// registered: that instance's name, in case the sender mistyped it. The mail still waits
    /// for the name it was sent to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub did_you_mean: Option<String>,
    /// Whether the recipient is online now (see `list`); false for a name nobody registered.
    /// Absent on a duplicate, which stored nothing, and from an older broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_online: Option<bool>,
    /// When the recipient was last seen, if it ever registered: for "bob is offline, last
    /// seen 3 h ago".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_last_seen: Option<String>,
}

/// The text of a send or broadcast whose nonce was already used.
pub const DUPLICATE_NONCE: &str = "Duplicate nonce: already stored";

impl SendReply {
    /// The reply to a send or broadcast whose nonce was already used: the original's id.
    pub fn duplicate(original: MessageId) -> Self {
        SendReply {
            message: DUPLICATE_NONCE.to_owned(),
            message_id: original,
            thread_id: None,
            recipient: None,
            duplicate: true,
            did_you_mean: None,
            recipient_online: None,
            recipient_last_seen: None,
        }
    }
}

/// `broadcast`: the copies stored, or the first copy of a broadcast whose nonce was already
/// used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BroadcastReply {
    Delivered(BroadcastCopies),
    /// Nothing new was stored; `message_id` is the earlier broadcast's first copy.
    Duplicate(SendReply),
}

impl BroadcastReply {
    /// `Broadcast to 3 instances`, or the duplicate nonce's text.
    pub fn message(&self) -> &str {
        match self {
            BroadcastReply::Delivered(copies) => &copies.message,
            BroadcastReply::Duplicate(original) => &original.message,
        }
    }

    /// How many copies this request stored (none for a duplicate).
    pub fn stored(&self) -> usize {
        match self {
            BroadcastReply::Delivered(copies) => copies.count,
            BroadcastReply::Duplicate(_) => 0,
        }
    }
}

/// A broadcast's copies: every one counted, only the first ids and skipped names listed, so
/// the reply stays small however many instances there are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BroadcastCopies {
    pub message: String,
    pub count: usize,
    pub message_ids: Vec<MessageId>,
    /// Instances whose queue was full, so they got no copy.
    pub skipped_count: usize,
    pub skipped: Vec<String>,
    /// Some ids or names were counted but not listed.
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_id: Option<MessageId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_id: Option<MessageId>,
    /// The thread every copy is in (the first copy's id, unless the broadcast answers a
    /// message); absent when no copy was stored, and from an older broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<MessageId>,
}

/// `check`: the oldest waiting mail, as much as fits a legacy single read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReply {
    pub messages: Vec<WireMessage>,
    /// More mail waits than this reply holds.
    #[serde(default)]
    pub more: bool,
    /// Present when the check asked for a manual ack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<ManualAck>,
    /// With a manual ack and mail: until when it is leased to this reader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<String>,
}

impl CheckReply {
    pub fn ids(&self) -> Vec<i64> {
        self.messages.iter().map(|m| m.id.0).collect()
    }
}

/// A manual-ack check's `ack` field: its mail is leased until an `ack` settles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManualAck {
    Manual,
}

/// One message as `check` shows it: the legacy fields (`from`, `to`, `timestamp`,
/// `message`) and beside them its id, the name it was addressed to, its kind, the sender's
/// stamp and which hand-out this is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireMessage {
    pub id: MessageId,
    pub from: String,
    /// The reader: a forward's target, or the name it was sent to.
    pub to: String,
    /// The name the sender wrote (differs from `to` after a rename's forward).
    pub addressed_to: String,
    pub kind: MessageKind,
    /// When the broker received it.
    pub timestamp: String,
    pub message: WireBody,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// When the sender says it wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_timestamp: Option<String>,
    /// 1 the first time; more after a lease ran out unacknowledged.
    pub delivery_count: u32,
    /// The thread it is in: the id of the thread's first message (its own id when it started
    /// one). Absent from an older broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<MessageId>,
    /// The message it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// What the sender wrote: `{content, data?}`. `data` is the sender's own JSON object, passed
/// through as it was stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireBody {
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Map<String, Value>>,
}

impl WireBody {
    /// The body of a stored message: `data` as the JSON text the store holds; text that is
    /// not an object (never stored by this broker) is left out.
    pub fn from_stored(content: String, data: Option<&str>) -> Self {
        WireBody {
            content,
            data: data.and_then(|text| serde_json::from_str(text).ok()),
        }
    }
}

/// `ack`: how many ids it settled, and only the first ids found already settled and the
/// first refusals, with their counts, so it fits a legacy read however many ids it named.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AckReply {
    pub acked: usize,
    #[serde(default)]
    pub already_acked_count: usize,
    #[serde(default)]
    pub already_acked: Vec<MessageId>,
    #[serde(default)]
    pub refused_count: usize,
    #[serde(default)]
    pub refused: Vec<RefusedId>,
    /// Some ids were counted but not listed.
    #[serde(default)]
    pub truncated: bool,
}

/// `ack` with `release`: how many leased ids went back to the queue; the other fields as
/// for [`AckReply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseReply {
    pub released: usize,
    #[serde(default)]
    pub already_acked_count: usize,
    #[serde(default)]
    pub already_acked: Vec<MessageId>,
    #[serde(default)]
    pub refused_count: usize,
    #[serde(default)]
    pub refused: Vec<RefusedId>,
    #[serde(default)]
    pub truncated: bool,
}

/// An id an `ack` could not settle, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusedId {
    pub id: MessageId,
    /// `unknown_message`: no message with this id is addressed to the caller.
    pub code: String,
    pub message: String,
}

impl RefusedId {
    /// An id the caller does not own (or that does not exist: alike, so ids cannot be probed).
    pub fn unknown_message(id: MessageId) -> Self {
        RefusedId {
            id,
            code: "unknown_message".to_owned(),
            message: format!(
                "no message {id} is addressed to you; ack only ids your check returned"
            ),
        }
    }
}

impl RefusedId {
    /// An id `sent` cannot report: the caller sent no such message that is still kept (or
    /// it does not exist: alike, so ids cannot be probed).
    pub fn not_sent_by_you(id: MessageId) -> Self {
        RefusedId {
            id,
            code: "unknown_message".to_owned(),
            message: format!(
                "no message {id} sent by you is kept; ask only for ids your send or broadcast returned (delivered and expired mail is purged after a while)"
            ),
        }
    }
}

/// `count`: waiting mail, not consumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountReply {
    pub count: u32,
    /// Distinct senders, by their oldest waiting message; at most ten.
    pub senders: Vec<String>,
}

/// `watch`: undelivered mail announced to the watcher for the first time, oldest first, each
/// as `check` shows it. Nothing in it was marked delivered or leased.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchReply {
    pub messages: Vec<WireMessage>,
    /// More mail not yet announced to this watcher waits than this reply holds.
    #[serde(default)]
    pub more: bool,
    /// A newer `watch` of the same session and watcher took over: this one ends, empty.
    #[serde(default)]
    pub replaced: bool,
}

impl WatchReply {
    pub fn ids(&self) -> Vec<i64> {
        self.messages.iter().map(|m| m.id.0).collect()
    }
}

/// `sent`: the caller's own mail, newest first (or the ids it asked for, in their order), as
/// much as fits the reply budget; ids it did not send are refused one by one, as `ack`
/// refuses them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentReply {
    pub messages: Vec<Receipt>,
    /// Some messages asked for were left out to keep the reply small: ask for fewer.
    #[serde(default)]
    pub more: bool,
    #[serde(default)]
    pub refused_count: usize,
    /// The first refusals; `refused_count` counts them all.
    #[serde(default)]
    pub refused: Vec<RefusedId>,
}

/// What became of one message, for its sender. A time is absent until its change happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub id: MessageId,
    /// Who holds it now: a forward's target, or the name it was sent to.
    pub to: String,
    /// The name the sender wrote.
    pub addressed_to: String,
    pub kind: MessageKind,
    pub state: ReceiptState,
    /// How many times a check handed it out.
    pub delivery_count: u32,
    pub sent_at: String,
    /// Its first hand-out to a reader (a check of either kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_at: Option<String>,
    /// When a channel-mode MCP server first pushed it into a live session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
    /// When the broker dropped it undelivered: nobody registered the name in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_at: Option<String>,
}

/// Where a message is on its way, as `sent` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptState {
    /// Not handed out now: never yet, or a lease ran out unacknowledged (`read_at` says).
    Waiting,
    /// Handed out to a reader that has not acknowledged it yet (its lease or hold is live).
    Read,
    /// Acknowledged by its reader: done.
    Delivered,
    /// Dropped undelivered when its time ran out.
    Expired,
}

impl ReceiptState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptState::Waiting => "waiting",
            ReceiptState::Read => "read",
            ReceiptState::Delivered => "delivered",
            ReceiptState::Expired => "expired",
        }
    }
}
