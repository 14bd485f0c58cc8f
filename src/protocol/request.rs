//! Turning one frame into a typed [`Request`], with an error that names the bad field.
//!
//! Claimed identities (`from_id`, `instance_id` on anything but `register`, `old_id`) are
//! deliberately not read at all: the session decides who is speaking.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::thread_cursor::ThreadCursor;
use super::{ErrorCode, Reply};
pub use crate::domain::InstanceName;
use crate::domain::{MessageId, Subject};
pub use crate::protocol::request::search_fields::{
    search_cursor, SearchFilters, SearchOptions, DEFAULT_SEARCH_LIMIT, MAX_SEARCH_LIMIT,
};

mod search_fields;

mod history;
pub use history::{HistoryCursor, HistoryOptions, DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT};

/// A request that passed parsing; the broker still checks the session and its rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Absent on `ping` and `register`; on other actions a missing token is refused by the
    /// broker with the legacy "Invalid or missing session token".
    pub session_token: Option<String>,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Ping,
    /// Asks for a fresh server nonce to register `instance_id` with, and the broker's proof
    /// that it knows the shared secret (see [`super::auth`]).
    Challenge {
        instance_id: InstanceName,
        client_nonce: String,
    },
    Register {
        instance_id: InstanceName,
        /// The legacy static token (`sha256(name:secret)`).
        auth_token: Option<String>,
        /// Sent (true or false) only by this project's own clients: whether to replace a
        /// session that holds the name and is in use. Absent: a legacy register, which
        /// replaces it silently as the original did.
        takeover: Option<bool>,
        /// The answer to a `challenge`, which replaces the static token.
        challenge: Option<ChallengeAnswer>,
    },
    Send {
        to_id: InstanceName,
        message: MessageBody,
        stamp: SenderStamp,
        thread: Threading,
    },
    Broadcast {
        message: MessageBody,
        stamp: SenderStamp,
        thread: Threading,
    },
    Check(CheckOptions),
    /// Settles messages a manual-ack `check` leased, or with `release` hands them back to
    /// the queue at once: the reader did not take them (its caller gave up).
    Ack {
        ids: Vec<i64>,
        release: bool,
    },
    List(ListOptions),
    Rename {
        new_id: InstanceName,
    },
    /// How much mail is waiting and from whom, without delivering any of it. With `wait`, and
    /// nothing waiting, answers as soon as some is committed, or at the deadline.
    Count {
        wait: Option<Duration>,
    },
    /// Ends the caller's own session: the name is free at once for the next `register`, which
    /// then needs no takeover. Sent by an MCP server that shuts down.
    Logout,
    /// Announces the caller's undelivered mail that `watcher` was not told about yet, without
    /// consuming any of it.
    Watch(WatchOptions),
    /// Receipts for the caller's own mail: what became of each message, and when.
    Sent(SentSelection),
    /// One conversation the caller took part in, oldest first, one page at a time.
    Thread(ThreadQuery),
    /// The caller's sent and received mail, newest first, read without changing it.
    History(HistoryOptions),
    /// Full-text search over the caller's own mail.
    Search(SearchOptions),
}

/// Which thread a `thread` reads, and which page of it.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadQuery {
    /// The thread's id, or the id of any message in it the caller can see.
    pub thread_id: MessageId,
    /// At most this many messages (1 to [`MAX_THREAD_LIMIT`]).
    pub limit: u32,
    /// Where the previous page ended.
    pub cursor: Option<ThreadCursor>,
}

/// The most messages one `thread` page holds, and how many without a `limit`.
pub const MAX_THREAD_LIMIT: u32 = 100;
pub const DEFAULT_THREAD_LIMIT: u32 = 20;

/// Which of its mail a `sent` asks about.
#[derive(Debug, Clone, PartialEq)]
pub enum SentSelection {
    /// Its newest messages, at most this many.
    Newest(u32),
    /// Exactly these ids, in this order.
    Ids(Vec<i64>),
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Ping => "ping",
            Action::Challenge { .. } => "challenge",
            Action::Register { .. } => "register",
            Action::Send { .. } => "send",
            Action::Broadcast { .. } => "broadcast",
            Action::Check(_) => "check",
            Action::Ack { .. } => "ack",
            Action::List(_) => "list",
            Action::Rename { .. } => "rename",
            Action::Count { .. } => "count",
            Action::Logout => "logout",
            Action::Watch(_) => "watch",
            Action::Sent(_) => "sent",
            Action::Thread(_) => "thread",
            Action::History(_) => "history",
            Action::Search(_) => "search",
        }
    }
}

/// Where a `send` or `broadcast` sits in a conversation: the message it answers, if any, and
/// its subject. Both optional; a legacy client sends neither.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Threading {
    /// Joins the thread of this message, which the caller must have sent or received.
    pub reply_to: Option<MessageId>,
    pub subject: Option<Subject>,
}

/// A `register`'s answer to an earlier `challenge`: which one, and the client's proof.
#[derive(Debug, Clone, PartialEq)]
pub struct ChallengeAnswer {
    pub challenge_id: String,
    pub auth_proof: String,
}

/// How a `check` reads: how much, whether it settles the mail itself, and how long it waits.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CheckOptions {
    /// At most this many messages; the reply also stays under the legacy read size.
    pub limit: Option<u32>,
    pub ack: AckMode,
    /// Long-poll: with no mail waiting, answer as soon as some is committed, or empty at this
    /// deadline.
    pub wait: Option<Duration>,
    /// Only mail answering this message (one the caller sent) is handed out, and waited
    /// for; the rest stays waiting, untouched.
    pub reply_to: Option<MessageId>,
}

/// What a `watch` asks for: whom to tell, how long to wait, how much, and whether the caller
/// pushes the mail into a live session.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchOptions {
    /// Who is being told: each message is announced to one watcher once.
    pub watcher: Watcher,
    /// Long-poll: with nothing new, answer as soon as some is committed, or empty at this
    /// deadline.
    pub wait: Option<Duration>,
    /// At most this many messages (1 to [`MAX_WATCH_LIMIT`]); the reply also stays under the
    /// legacy read size.
    pub limit: u32,
    /// The caller pushes what it is told into a live session (a channel-mode MCP server):
    /// recorded with the announcement, and as the message's `pushed_at` the first time.
    pub push: bool,
}

/// The name of whoever a `watch` tells: 1 to [`WATCHER_MAX_CHARS`] ASCII letters, digits and
/// `-_.:` (a Claude Code `session_id`, or a random id per MCP server session).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Watcher(String);

/// The longest `watcher` a `watch` may name.
pub const WATCHER_MAX_CHARS: usize = 128;
/// The most messages one `watch` returns, and its default.
pub const MAX_WATCH_LIMIT: u32 = 500;
pub const DEFAULT_WATCH_LIMIT: u32 = 100;

impl Watcher {
    pub fn parse(text: &str) -> Option<Watcher> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
        let fits = (1..=WATCHER_MAX_CHARS).contains(&text.len());
        (fits && text.chars().all(allowed)).then(|| Watcher(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which page of `list` to return: names after `after` (in name order), at most `limit`.
/// Without either, the first page; the reply also stays under [`super::REPLY_BUDGET`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListOptions {
    /// The `next_after` of the previous page: the last name it held.
    pub after: Option<InstanceName>,
    pub limit: Option<u32>,
    /// Asked without a session: answered read-only to the broker's own user (see
    /// `Broker::list`). A request with a session is served as always.
    pub without_session: bool,
}

/// Who settles the mail a `check` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckMode {
    /// The legacy meaning: marked delivered once the reply is written.
    #[default]
    Auto,
    /// Leased for `lease`; settled by an `ack`, or handed out again when the lease ends.
    Manual { lease: Duration },
}

/// Default lease of a manual-ack `check`.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// Longest lease a client may ask for.
pub const MAX_LEASE_MS: u64 = 3_600_000;
/// Longest long-poll a client may ask for; a client wanting longer asks again.
pub const MAX_WAIT_MS: u64 = 300_000;
/// Most ids one `ack` may settle, and one `sent` may ask about.
pub const MAX_ACK_IDS: usize = 1000;
/// How many of its newest messages a `sent` reports without a `limit`.
pub const DEFAULT_SENT_LIMIT: u32 = 20;
/// The most a `sent` may ask for.
pub const MAX_SENT_LIMIT: u32 = 500;

/// What a sender wrote: `{content, data?}`.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageBody {
    pub content: String,
    pub data: Option<Map<String, Value>>,
}

impl MessageBody {
    /// The bytes `content` takes as a JSON string: what a check reply must fit.
    pub fn content_json_bytes(&self) -> usize {
        Value::String(self.content.clone()).to_string().len()
    }

    /// `data` as the JSON text it is stored as.
    pub fn data_text(&self) -> Option<String> {
        self.data
            .as_ref()
            .map(|data| Value::Object(data.clone()).to_string())
    }

    /// `data` as stored for content moved to a large-message file: the sender's fields, and
    /// beside them the file and the content's original size.
    pub fn large_data_text(&self, file: &str, original_size_kb: f64) -> String {
        let mut data = self.data.clone().unwrap_or_default();
        data.insert("large_message_file".into(), file.into());
        data.insert("original_size_kb".into(), original_size_kb.into());
        Value::Object(data).to_string()
    }
}

/// The sender's optional replay-protection fields.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SenderStamp {
    pub nonce: Option<String>,
    pub timestamp: Option<DateTime<Utc>>,
}

/// Why a frame is not a usable request; becomes an error reply.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestError {
    pub code: ErrorCode,
    pub message: String,
}

impl RequestError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RequestError {
            code,
            message: message.into(),
        }
    }

    pub fn into_reply(self) -> Reply {
        Reply::error(self.code, self.message)
    }
}

/// Every action the broker answers, in the order the docs list them.
pub const ACTION_NAMES: [&str; 16] = [
    "ping",
    "challenge",
    "register",
    "send",
    "broadcast",
    "check",
    "ack",
    "list",
    "rename",
    "count",
    "logout",
    "watch",
    "sent",
    "thread",
    "history",
    "search",
];
/// The most characters of a client's own text an error message repeats back, so a reply
/// never grows with the request.
const ECHO_MAX_CHARS: usize = 64;
const NONCE_MAX_CHARS: usize = 128;

impl Request {
    /// Parses one frame's bytes.
    pub fn parse(frame: &[u8]) -> Result<Request, RequestError> {
        let value: Value = serde_json::from_slice(frame).map_err(|e| {
            RequestError::new(
                ErrorCode::InvalidJson,
                format!("request is not valid JSON ({e}); send one JSON object per request"),
            )
        })?;
        let Value::Object(fields) = value else {
            return Err(RequestError::new(
                ErrorCode::NotAnObject,
                format!(
                    "request must be a JSON object like {{\"action\": \"ping\"}}, not {}",
                    kind_of(&value)
                ),
            ));
        };
        Fields(&fields).request()
    }
}

/// The fields of one request object, with typed getters that explain what is wrong.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn request(&self) -> Result<Request, RequestError> {
        let action = match self.0.get("action") {
            None => {
                return Err(RequestError::new(
                    ErrorCode::MissingField,
                    format!(
                        "request has no `action`; use one of: {}",
                        ACTION_NAMES.join(", ")
                    ),
                ))
            }
            Some(Value::String(action)) => action.as_str(),
            Some(other) => {
                return Err(RequestError::new(
                    ErrorCode::InvalidField,
                    format!("`action` must be a string, not {}", kind_of(other)),
                ))
            }
        };
        let action = match action {
            "ping" => Action::Ping,
            "challenge" => Action::Challenge {
                instance_id: self.name("instance_id", "Invalid instance ID format")?,
                client_nonce: self.nonce("client_nonce")?,
            },
            "register" => Action::Register {
                instance_id: self.name("instance_id", "Invalid instance ID format")?,
                auth_token: self.optional_string("auth_token")?,
                takeover: self.optional_bool("takeover")?,
                challenge: self.challenge_answer()?,
            },
            "send" => Action::Send {
                to_id: self.name("to_id", "Invalid recipient ID format")?,
                message: self.message()?,
                stamp: self.stamp()?,
                thread: self.threading()?,
            },
            "broadcast" => Action::Broadcast {
                message: self.message()?,
                stamp: self.stamp()?,
                thread: self.threading()?,
            },
            "check" => Action::Check(self.check_options()?),
            "ack" => Action::Ack {
                ids: self.ids()?,
                release: self.optional_bool("release")?.unwrap_or(false),
            },
            "list" => Action::List(self.list_options()?),
            "count" => Action::Count {
                wait: self.optional_millis("wait_ms", 0, MAX_WAIT_MS)?,
            },
            "logout" => Action::Logout,
            "watch" => Action::Watch(self.watch_options()?),
            "sent" => Action::Sent(self.sent_selection()?),
            "thread" => Action::Thread(self.thread_query()?),
            "history" => Action::History(self.history_options()?),
            "search" => Action::Search(self.search_options()?),
            "rename" => Action::Rename {
                new_id: self.name("new_id", "Invalid new instance ID format")?,
            },
            unknown => {
                return Err(RequestError::new(
                    ErrorCode::UnknownAction,
                    format!("Unknown action: {}", echo(unknown)),
                ))
            }
        };
        Ok(Request {
            session_token: self.optional_string("session_token")?,
            action,
        })
    }

    fn string(&self, key: &str) -> Result<&str, RequestError> {
        match self.0.get(key) {
            Some(Value::String(text)) => Ok(text),
            None | Some(Value::Null) => Err(RequestError::new(
                ErrorCode::MissingField,
                format!("missing field `{key}` (a string)"),
            )),
            Some(other) => Err(wrong_type(key, "a string", other)),
        }
    }

    fn optional_string(&self, key: &str) -> Result<Option<String>, RequestError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(wrong_type(key, "a string", other)),
        }
    }

    fn optional_bool(&self, key: &str) -> Result<Option<bool>, RequestError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(*flag)),
            Some(other) => Err(wrong_type(key, "true or false", other)),
        }
    }

    fn name(&self, key: &str, legacy_text: &str) -> Result<InstanceName, RequestError> {
        let text = self.string(key)?;
        InstanceName::parse(text).ok_or_else(|| {
            RequestError::new(
                ErrorCode::InvalidName,
                format!(
                    "{legacy_text}: `{key}` must be 1-32 letters, digits, hyphens or underscores"
                ),
            )
        })
    }

    /// A nonce of the challenge-response registration: hex or base64url, 32-128 characters.
    fn nonce(&self, key: &str) -> Result<String, RequestError> {
        let text = self.string(key)?;
        if !super::auth::is_valid_nonce(text) {
            return Err(RequestError::new(
                ErrorCode::InvalidField,
                format!(
                    "`{key}` must be 32-128 letters, digits, `-` or `_`: at least 16 random bytes in hex or base64url (this project's clients send 32 bytes as 64 hex digits)"
                ),
            ));
        }
        Ok(text.to_owned())
    }

    /// `challenge_id` and `auth_proof`, which come together; a register carrying them must
    /// not also carry a static `auth_token`, so it is never unclear which one was checked.
    fn challenge_answer(&self) -> Result<Option<ChallengeAnswer>, RequestError> {
        let Some(challenge_id) = self.optional_string("challenge_id")? else {
            if self.0.contains_key("auth_proof") {
                return Err(RequestError::new(
                    ErrorCode::MissingField,
                    "`auth_proof` needs the `challenge_id` it answers; ask for one with the `challenge` action",
                ));
            }
            return Ok(None);
        };
        let static_token = self.optional_string("auth_token")?;
        if static_token.is_some_and(|token| !token.is_empty()) {
            return Err(RequestError::new(
                ErrorCode::InvalidField,
                "send either `auth_token` (the static token) or `challenge_id` with `auth_proof`, not both",
            ));
        }
        Ok(Some(ChallengeAnswer {
            challenge_id,
            auth_proof: self.string("auth_proof")?.to_owned(),
        }))
    }

    fn message(&self) -> Result<MessageBody, RequestError> {
        let message = match self.0.get("message") {
            Some(Value::Object(message)) => message,
            None | Some(Value::Null) => {
                return Err(RequestError::new(
                    ErrorCode::MissingField,
                    "missing field `message` (an object like {\"content\": \"hi\"})",
                ))
            }
            Some(other) => return Err(wrong_type("message", "an object", other)),
        };
        let content = match message.get("content") {
            Some(Value::String(content)) => content.clone(),
            None | Some(Value::Null) => {
                return Err(RequestError::new(
                    ErrorCode::MissingField,
                    "missing field `message.content` (a string)",
                ))
            }
            Some(other) => return Err(wrong_type("message.content", "a string", other)),
        };
        let data = match message.get("data") {
            None | Some(Value::Null) => None,
            Some(Value::Object(data)) => Some(data.clone()),
            Some(other) => return Err(wrong_type("message.data", "an object", other)),
        };
        if let Some(key) = data.as_ref().and_then(broker_owned_key) {
            return Err(RequestError::new(
                ErrorCode::InvalidField,
                format!(
                    "`message.data.{key}` is set by the broker for large content; leave it out"
                ),
            ));
        }
        Ok(MessageBody { content, data })
    }

    fn stamp(&self) -> Result<SenderStamp, RequestError> {
        let nonce = self.optional_string("nonce")?;
        if let Some(nonce) = &nonce {
            if nonce.is_empty() || nonce.chars().count() > NONCE_MAX_CHARS {
                return Err(RequestError::new(
                    ErrorCode::InvalidField,
                    format!("`nonce` must be 1-{NONCE_MAX_CHARS} characters"),
                ));
            }
        }
        let timestamp = match self.optional_string("timestamp")? {
            None => None,
            Some(text) => Some(crate::clock::parse(&text).ok_or_else(|| {
                RequestError::new(
                    ErrorCode::InvalidField,
                    format!(
                        "`timestamp` must be RFC 3339, like 2026-01-02T03:04:05Z, not `{}`",
                        echo(&text)
                    ),
                )
            })?),
        };
        Ok(SenderStamp { nonce, timestamp })
    }

    fn check_options(&self) -> Result<CheckOptions, RequestError> {
        let ack = match self.optional_string("ack")?.as_deref() {
            None | Some("auto") => AckMode::Auto,
            Some("manual") => AckMode::Manual {
                lease: self
                    .optional_millis("lease_ms", 1, MAX_LEASE_MS)?
                    .unwrap_or(DEFAULT_LEASE),
            },
            Some(other) => {
                return Err(RequestError::new(
                    ErrorCode::InvalidField,
                    format!("`ack` must be \"manual\" or \"auto\", not `{other}`"),
                ))
            }
        };
        if ack == AckMode::Auto && self.0.get("lease_ms").is_some_and(|v| !v.is_null()) {
            return Err(RequestError::new(
                ErrorCode::InvalidField,
                "`lease_ms` only applies with \"ack\": \"manual\"; add it or drop `lease_ms`",
            ));
        }
        Ok(CheckOptions {
            limit: self.optional_limit()?,
            ack,
            wait: self.optional_millis("wait_ms", 0, MAX_WAIT_MS)?,
            reply_to: self.optional_message_id("reply_to")?,
        })
    }

    /// What a `thread` asks for: `thread_id` (required), `limit`, `cursor`.
    fn thread_query(&self) -> Result<ThreadQuery, RequestError> {
        let Some(thread_id) = self.optional_message_id("thread_id")? else {
            return Err(RequestError::new(
                ErrorCode::MissingField,
                "missing field `thread_id` (the id of the thread, or of any message in it, as check or send gave it)",
            ));
        };
        let expected = format!("a whole number from 1 to {MAX_THREAD_LIMIT}");
        let limit = match self.0.get("limit") {
            None | Some(Value::Null) => DEFAULT_THREAD_LIMIT,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(limit) if (1..=u64::from(MAX_THREAD_LIMIT)).contains(&limit) => limit as u32,
                _ => return Err(wrong_type("limit", &expected, &Value::Number(n.clone()))),
            },
            Some(other) => return Err(wrong_type("limit", &expected, other)),
        };
        Ok(ThreadQuery {
            thread_id,
            limit,
            cursor: self.thread_cursor()?,
        })
    }

    /// `cursor` of a `thread`: absent, or a `next_cursor` this broker gave.
    fn thread_cursor(&self) -> Result<Option<ThreadCursor>, RequestError> {
        let refused = || {
            RequestError::new(
                ErrorCode::InvalidField,
                "`cursor` is not one this broker gave; start again without it",
            )
        };
        match self.0.get("cursor") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => ThreadCursor::parse(text).map(Some).ok_or_else(refused),
            Some(_) => Err(refused()),
        }
    }

    fn watch_options(&self) -> Result<WatchOptions, RequestError> {
        Ok(WatchOptions {
            watcher: self.watcher()?,
            wait: self.optional_millis("wait_ms", 0, MAX_WAIT_MS)?,
            limit: self.watch_limit()?,
            push: self.optional_bool("push")?.unwrap_or(false),
        })
    }

    /// `watcher` of a `watch`: required, and a name only, since it is stored and logged.
    fn watcher(&self) -> Result<Watcher, RequestError> {
        let rule = format!(
            "use 1-{WATCHER_MAX_CHARS} letters, digits, `-`, `_`, `.` or `:` naming who is \
             told, such as a Claude Code session_id"
        );
        let text = match self.0.get("watcher") {
            Some(Value::String(text)) => text,
            None | Some(Value::Null) => {
                return Err(RequestError::new(
                    ErrorCode::MissingField,
                    format!("missing field `watcher`: {rule}"),
                ))
            }
            Some(other) => return Err(wrong_type("watcher", "a string", other)),
        };
        Watcher::parse(text).ok_or_else(|| {
            RequestError::new(
                ErrorCode::InvalidField,
                format!("`watcher` `{}` is not a watcher name: {rule}", echo(text)),
            )
        })
    }

    /// `limit` of a `watch`: 1 to [`MAX_WATCH_LIMIT`], refused (not capped) outside it.
    fn watch_limit(&self) -> Result<u32, RequestError> {
        let expected = format!("a whole number from 1 to {MAX_WATCH_LIMIT}");
        match self.0.get("limit") {
            None | Some(Value::Null) => Ok(DEFAULT_WATCH_LIMIT),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(limit) if (1..=u64::from(MAX_WATCH_LIMIT)).contains(&limit) => {
                    Ok(limit as u32)
                }
                _ => Err(wrong_type("limit", &expected, &Value::Number(n.clone()))),
            },
            Some(other) => Err(wrong_type("limit", &expected, other)),
        }
    }

    /// An optional whole number of milliseconds in `min..=max`.
    fn optional_millis(
        &self,
        key: &str,
        min: u64,
        max: u64,
    ) -> Result<Option<Duration>, RequestError> {
        let expected = format!("a whole number of milliseconds from {min} to {max}");
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(ms) if (min..=max).contains(&ms) => Ok(Some(Duration::from_millis(ms))),
                _ => Err(wrong_type(key, &expected, &Value::Number(n.clone()))),
            },
            Some(other) => Err(wrong_type(key, &expected, other)),
        }
    }

    /// `ids` of an `ack`: a non-empty array of message ids.
    fn ids(&self) -> Result<Vec<i64>, RequestError> {
        let expected = format!("an array of 1 to {MAX_ACK_IDS} message ids");
        if self.0.get("ids").is_none_or(Value::is_null) {
            return Err(RequestError::new(
                ErrorCode::MissingField,
                format!("missing field `ids` ({expected}, as `check` returned them)"),
            ));
        }
        self.id_list(&expected)
    }

    /// What a `sent` asks about: `ids`, or its newest `limit` (1 to [`MAX_SENT_LIMIT`],
    /// default [`DEFAULT_SENT_LIMIT`]); not both.
    fn sent_selection(&self) -> Result<SentSelection, RequestError> {
        let given = |key: &str| self.0.get(key).is_some_and(|value| !value.is_null());
        if given("ids") && given("limit") {
            return Err(RequestError::new(
                ErrorCode::InvalidField,
                "send either `ids` (exactly those messages) or `limit` (your newest ones), not both",
            ));
        }
        if given("ids") {
            let expected = format!("an array of 1 to {MAX_ACK_IDS} message ids you sent");
            return Ok(SentSelection::Ids(self.id_list(&expected)?));
        }
        let expected = format!("a whole number from 1 to {MAX_SENT_LIMIT}");
        let limit = match self.0.get("limit") {
            None | Some(Value::Null) => DEFAULT_SENT_LIMIT,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(limit) if (1..=u64::from(MAX_SENT_LIMIT)).contains(&limit) => limit as u32,
                _ => return Err(wrong_type("limit", &expected, &Value::Number(n.clone()))),
            },
            Some(other) => return Err(wrong_type("limit", &expected, other)),
        };
        Ok(SentSelection::Newest(limit))
    }

    /// `ids`, present: an array of 1 to [`MAX_ACK_IDS`] message ids.
    fn id_list(&self, expected: &str) -> Result<Vec<i64>, RequestError> {
        let items = match self.0.get("ids") {
            Some(Value::Array(items)) if (1..=MAX_ACK_IDS).contains(&items.len()) => items,
            Some(Value::Array(items)) => {
                return Err(RequestError::new(
                    ErrorCode::InvalidField,
                    format!("`ids` has {} entries; send {expected}", items.len()),
                ))
            }
            None | Some(Value::Null) => {
                return Err(RequestError::new(
                    ErrorCode::MissingField,
                    format!("missing field `ids` ({expected})"),
                ))
            }
            Some(other) => return Err(wrong_type("ids", expected, other)),
        };
        items
            .iter()
            .map(|item| {
                item.as_i64()
                    .ok_or_else(|| wrong_type("ids[]", "a message id (a whole number)", item))
            })
            .collect()
    }

    /// `reply_to` and `subject` of a send or broadcast, both optional.
    fn threading(&self) -> Result<Threading, RequestError> {
        Ok(Threading {
            reply_to: self.optional_message_id("reply_to")?,
            subject: self.optional_subject()?,
        })
    }

    /// A message id, if given: a positive whole number.
    pub(super) fn optional_message_id(&self, key: &str) -> Result<Option<MessageId>, RequestError> {
        let expected = "a message id (a positive whole number, as `send` or `check` gave it)";
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => match value.as_i64() {
                Some(id) if id >= 1 => Ok(Some(MessageId(id))),
                _ => Err(wrong_type(key, expected, value)),
            },
        }
    }

    fn optional_subject(&self) -> Result<Option<Subject>, RequestError> {
        let Some(text) = self.optional_string("subject")? else {
            return Ok(None);
        };
        Subject::parse(&text).map(Some).ok_or_else(|| {
            RequestError::new(
                ErrorCode::InvalidField,
                format!(
                    "`subject` must be 1 to {} characters on one line, without control characters; shorten it or leave it out",
                    Subject::MAX_CHARS
                ),
            )
        })
    }

    fn list_options(&self) -> Result<ListOptions, RequestError> {
        let after = match self.optional_string("after")? {
            None => None,
            Some(after) => Some(InstanceName::parse(&after).ok_or_else(|| {
                RequestError::new(
                    ErrorCode::InvalidField,
                    "`after` must be an instance name: pass back the `next_after` of the \
                     previous `list` reply",
                )
            })?),
        };
        Ok(ListOptions {
            after,
            limit: self.optional_limit()?,
            without_session: self.optional_bool("without_session")?.unwrap_or(false),
        })
    }

    fn optional_limit(&self) -> Result<Option<u32>, RequestError> {
        match self.0.get("limit") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(limit) if limit >= 1 => Ok(Some(limit.min(u64::from(u32::MAX)) as u32)),
                _ => Err(wrong_type(
                    "limit",
                    "a positive whole number",
                    &Value::Number(n.clone()),
                )),
            },
            Some(other) => Err(wrong_type("limit", "a positive whole number", other)),
        }
    }
}

/// Keys the broker writes into `data` for large content. A sender may not supply them, or it
/// could point a recipient at any file on the machine.
const BROKER_OWNED_DATA_KEYS: [&str; 2] = ["large_message_file", "original_size_kb"];

fn broker_owned_key(data: &Map<String, Value>) -> Option<&'static str> {
    BROKER_OWNED_DATA_KEYS
        .into_iter()
        .find(|key| data.contains_key(*key))
}

/// A client's text as an error repeats it: whole when short, else its start and its length.
fn echo(text: &str) -> String {
    if text.chars().count() <= ECHO_MAX_CHARS {
        return text.to_owned();
    }
    let start: String = text.chars().take(ECHO_MAX_CHARS).collect();
    format!("{start}… ({} bytes)", text.len())
}

fn wrong_type(key: &str, expected: &str, got: &Value) -> RequestError {
    RequestError::new(
        ErrorCode::InvalidField,
        format!("field `{key}` must be {expected}, not {}", kind_of(got)),
    )
}

fn kind_of(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Request, RequestError> {
        Request::parse(text.as_bytes())
    }

    fn code_of(text: &str) -> ErrorCode {
        parse(text).unwrap_err().code
    }

    #[test]
    fn a_legacy_send_parses_and_its_claimed_sender_is_not_read() {
        let request = parse(
            r#"{"action": "send", "from_id": "admin", "to_id": "bob",
                "message": {"content": "hi", "data": {"k": 1}}, "session_token": "t"}"#,
        )
        .unwrap();
        assert_eq!(request.session_token.as_deref(), Some("t"));
        let Action::Send { to_id, message, .. } = request.action else {
            panic!("not a send")
        };
        assert_eq!(to_id.as_str(), "bob");
        assert_eq!(message.content, "hi");
        assert_eq!(message.data.unwrap()["k"], 1);
    }

    #[test]
    fn names_follow_the_spec_pattern() {
        assert!(InstanceName::parse("alice_B-2").is_some());
        assert!(InstanceName::parse(&"a".repeat(32)).is_some());
        assert!(InstanceName::parse(&"a".repeat(33)).is_none());
        assert!(InstanceName::parse("").is_none());
        assert!(InstanceName::parse("../etc").is_none());
        assert!(InstanceName::parse("a b").is_none());
        assert!(InstanceName::parse("é").is_none());
    }

    #[test]
    fn each_kind_of_bad_request_has_its_own_code() {
        assert_eq!(code_of("{not json"), ErrorCode::InvalidJson);
        assert_eq!(code_of("[1, 2]"), ErrorCode::NotAnObject);
        assert_eq!(code_of(r#"{"to_id": "x"}"#), ErrorCode::MissingField);
        assert_eq!(code_of(r#"{"action": 7}"#), ErrorCode::InvalidField);
        assert_eq!(code_of(r#"{"action": "fly"}"#), ErrorCode::UnknownAction);
        assert_eq!(
            code_of(r#"{"action": "send", "to_id": 5}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code_of(r#"{"action": "send", "to_id": "a/b", "message": {"content": ""}}"#),
            ErrorCode::InvalidName
        );
        assert_eq!(
            code_of(
                r#"{"action": "send", "to_id": "b", "message": {"content": "x", "data": [1]}}"#
            ),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code_of(
                r#"{"action": "send", "to_id": "b", "message": {"content": "x"}, "timestamp": "yesterday"}"#
            ),
            ErrorCode::InvalidField
        );
    }

    #[test]
    fn senders_cannot_forge_a_large_message_file_pointer() {
        let error = parse(
            r#"{"action": "send", "to_id": "b", "message": {"content": "see file",
                "data": {"large_message_file": "/etc/shadow"}}}"#,
        )
        .unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidField);
        assert!(error.message.contains("large_message_file"));
    }

    #[test]
    fn a_challenge_and_its_answer_parse_and_a_bad_nonce_is_refused() {
        let nonce = "ab".repeat(32);
        let challenge = parse(&format!(
            r#"{{"action":"challenge","instance_id":"alice","client_nonce":"{nonce}"}}"#
        ))
        .unwrap();
        assert_eq!(
            challenge.action,
            Action::Challenge {
                instance_id: InstanceName::parse("alice").unwrap(),
                client_nonce: nonce,
            }
        );
        let short = r#"{"action":"challenge","instance_id":"alice","client_nonce":"abc"}"#;
        assert_eq!(code_of(short), ErrorCode::InvalidField);
        let register = parse(
            r#"{"action":"register","instance_id":"alice","challenge_id":"c","auth_proof":"p","takeover":false}"#,
        )
        .unwrap();
        let Action::Register {
            challenge,
            auth_token,
            ..
        } = register.action
        else {
            panic!("not a register");
        };
        assert_eq!(auth_token, None);
        assert_eq!(
            challenge,
            Some(ChallengeAnswer {
                challenge_id: "c".into(),
                auth_proof: "p".into()
            })
        );
    }

    #[test]
    fn a_register_carries_one_credential_and_a_proof_needs_its_challenge() {
        let both = r#"{"action":"register","instance_id":"a","auth_token":"t","challenge_id":"c","auth_proof":"p"}"#;
        assert_eq!(code_of(both), ErrorCode::InvalidField);
        let no_id = r#"{"action":"register","instance_id":"a","auth_proof":"p"}"#;
        assert_eq!(code_of(no_id), ErrorCode::MissingField);
        let no_proof = r#"{"action":"register","instance_id":"a","challenge_id":"c"}"#;
        assert_eq!(code_of(no_proof), ErrorCode::MissingField);
        // The legacy shape is unchanged: an empty static token and no challenge.
        let legacy = parse(r#"{"action":"register","instance_id":"a","auth_token":""}"#).unwrap();
        assert!(matches!(
            legacy.action,
            Action::Register { challenge: None, auth_token: Some(ref t), .. } if t.is_empty()
        ));
    }

    #[test]
    fn the_unknown_action_text_is_the_legacy_one() {
        assert_eq!(
            parse(r#"{"action": "fly"}"#).unwrap_err().message,
            "Unknown action: fly"
        );
    }

    #[test]
    fn errors_repeat_at_most_the_start_of_what_the_client_sent() {
        let long = "x".repeat(100_000);
        let unknown = parse(&format!(r#"{{"action": "{long}"}}"#)).unwrap_err();
        assert!(unknown.message.starts_with("Unknown action: xxxx"));
        assert!(
            unknown.message.ends_with("(100000 bytes)"),
            "{}",
            unknown.message
        );
        assert!(unknown.message.len() < 200);
        let stamp = parse(&format!(
            r#"{{"action": "send", "to_id": "b", "message": {{"content": "x"}}, "timestamp": "{long}"}}"#
        ))
        .unwrap_err();
        assert!(stamp.message.len() < 300, "{}", stamp.message);
    }

    #[test]
    fn list_takes_an_optional_cursor_and_limit() {
        let Action::List(options) = parse(r#"{"action": "list"}"#).unwrap().action else {
            panic!("not a list")
        };
        assert_eq!(options, ListOptions::default());
        let Action::List(options) = parse(r#"{"action": "list", "after": "bob", "limit": 5}"#)
            .unwrap()
            .action
        else {
            panic!("not a list")
        };
        assert_eq!(options.after.unwrap().as_str(), "bob");
        assert_eq!(options.limit, Some(5));
        assert_eq!(
            code_of(r#"{"action": "list", "after": "no/such"}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code_of(r#"{"action": "list", "limit": 0}"#),
            ErrorCode::InvalidField
        );
    }

    #[test]
    fn a_watch_names_its_watcher_and_keeps_its_numbers_in_range() {
        let Action::Watch(options) = parse(r#"{"action": "watch", "watcher": "4f1c-9a:b_c.d"}"#)
            .unwrap()
            .action
        else {
            panic!("not a watch")
        };
        assert_eq!(options.watcher.as_str(), "4f1c-9a:b_c.d");
        assert_eq!(
            (options.wait, options.limit, options.push),
            (None, 100, false)
        );
        let full =
            r#"{"action": "watch", "watcher": "w", "wait_ms": 300000, "limit": 500, "push": true}"#;
        let Action::Watch(options) = parse(full).unwrap().action else {
            panic!("not a watch")
        };
        assert_eq!(options.wait, Some(Duration::from_secs(300)));
        assert_eq!((options.limit, options.push), (500, true));
        assert_eq!(code_of(r#"{"action": "watch"}"#), ErrorCode::MissingField);
        let long = format!(r#"{{"action": "watch", "watcher": "{}"}}"#, "w".repeat(129));
        for bad in [
            r#"{"action": "watch", "watcher": ""}"#,
            r#"{"action": "watch", "watcher": "a b"}"#,
            r#"{"action": "watch", "watcher": "a/b"}"#,
            r#"{"action": "watch", "watcher": 7}"#,
            long.as_str(),
            r#"{"action": "watch", "watcher": "w", "wait_ms": 300001}"#,
            r#"{"action": "watch", "watcher": "w", "wait_ms": -1}"#,
            r#"{"action": "watch", "watcher": "w", "limit": 0}"#,
            r#"{"action": "watch", "watcher": "w", "limit": 501}"#,
            r#"{"action": "watch", "watcher": "w", "push": "yes"}"#,
        ] {
            assert_eq!(code_of(bad), ErrorCode::InvalidField, "{bad}");
        }
    }

    #[test]
    fn a_thread_names_its_thread_and_keeps_its_page_in_range() {
        let Action::Thread(query) = parse(r#"{"action": "thread", "thread_id": 41}"#)
            .unwrap()
            .action
        else {
            panic!("not a thread")
        };
        assert_eq!(
            query,
            ThreadQuery {
                thread_id: MessageId(41),
                limit: DEFAULT_THREAD_LIMIT,
                cursor: None
            }
        );
        let cursor = ThreadCursor {
            thread_id: MessageId(41),
            after: MessageId(57),
        };
        let paged = format!(
            r#"{{"action": "thread", "thread_id": 57, "limit": 100, "cursor": "{}"}}"#,
            cursor.encode()
        );
        let Action::Thread(query) = parse(&paged).unwrap().action else {
            panic!("not a thread")
        };
        assert_eq!((query.limit, query.cursor), (100, Some(cursor)));
        assert_eq!(code_of(r#"{"action": "thread"}"#), ErrorCode::MissingField);
        for bad in [
            r#"{"action": "thread", "thread_id": "41"}"#,
            r#"{"action": "thread", "thread_id": 0}"#,
            r#"{"action": "thread", "thread_id": 41, "limit": 0}"#,
            r#"{"action": "thread", "thread_id": 41, "limit": 101}"#,
            r#"{"action": "thread", "thread_id": 41, "cursor": "x"}"#,
            r#"{"action": "thread", "thread_id": 41, "cursor": 5}"#,
        ] {
            assert_eq!(code_of(bad), ErrorCode::InvalidField, "{bad}");
        }
    }

    #[test]
    fn a_check_may_ask_for_the_answers_to_one_message() {
        let Action::Check(options) =
            parse(r#"{"action": "check", "reply_to": 7, "wait_ms": 1000}"#)
                .unwrap()
                .action
        else {
            panic!("not a check")
        };
        assert_eq!(options.reply_to, Some(MessageId(7)));
        let Action::Check(plain) = parse(r#"{"action": "check"}"#).unwrap().action else {
            panic!("not a check")
        };
        assert_eq!(plain.reply_to, None);
        assert_eq!(
            code_of(r#"{"action": "check", "reply_to": "7"}"#),
            ErrorCode::InvalidField
        );
    }

    #[test]
    fn invalid_utf8_and_deep_nesting_are_refused_not_panicked_on() {
        assert_eq!(
            Request::parse(b"{\"action\": \"ping\xff\"}")
                .unwrap_err()
                .code,
            ErrorCode::InvalidJson
        );
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(code_of(&deep), ErrorCode::InvalidJson);
    }
}
