//! The rules of the post office. [`Broker::handle`] takes one parsed request and returns the
//! reply (and, for `check`, a receipt to confirm once the reply is written).
//!
//! Each request becomes one job on the store's writer thread, so authentication, the rate
//! limit and the action itself see one consistent database and commit together.
//!
//! - [`identity`]: sessions, register, rename, list, the rate limits (per instance, per
//!   peer, and on new names).
//! - [`challenge`]: the challenge-response registration's challenges, in memory.
//! - [`auth_guard`]: throttles peers that keep failing authentication.
//! - [`mail`]: send, broadcast, check, ack and delivery receipts.
//! - [`receipts`]: `sent`, what became of the caller's own mail.
//! - [`thread`]: `thread`, one conversation as the caller took part in it.
//! - [`search`]: `search`, full-text search over the caller's own mail.
//! - [`typos`]: the name a send to a never-seen name probably meant.
//! - [`doorbell`]: wakes long-polling checks when mail for them is committed, and tells the
//!   dashboard's live streams that something changed.
//! - [`human`]: the dashboard's person, a reserved name that sends with kind `human`.
//! - [`reader`]: tells a long-poll that its reader's connection closed.
//! - [`listening`]: which sessions have a long-poll open, so their names count as in use.
//! - [`online`]: presence: who is online now and whose session a pushing server holds.
//! - [`watch`]: announces undelivered mail to a watcher once, consuming none (the waking
//!   hook, push), and which watches are open.
//! - [`unsettled`]: legacy replies waiting for evidence that their client took them.
//! - [`sweeper`]: expiry and purging in bounded batches.
//! - [`timekeeping`]: the broker clock every rule runs on, resumed and persisted.

pub mod auth_guard;
pub mod challenge;
pub mod conversation;
pub mod doorbell;
pub mod history;
pub mod human;
pub mod identity;
pub mod large_message;
pub mod listening;
pub mod mail;
pub mod online;
pub mod peer;
pub mod reader;
pub mod receipts;
pub mod search;
pub mod session;
pub mod storage_failure;
pub mod sweeper;
pub mod thread;
pub mod timekeeping;
pub mod typos;
pub mod unsettled;
pub mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};

use crate::clock::{self, BrokerClock};
use crate::config::Limits;
use crate::domain::{MessageId, Timestamp, TokenHash};
use crate::protocol::schema::{
    ErrorReply, PingRefusal, PingReply, SecurityMode, StaticToken, StoreWork,
};
use crate::protocol::{Action, ErrorCode, Reply, Request};
use crate::store::queries::{self, SessionId};
use crate::store::{Durability, Fault, Store, StoreError, Tx};

pub use challenge::ChallengeRefusal;
pub use identity::Caller;
pub use mail::DeliveryReceipt;
pub use peer::Peer;
pub use reader::Presence;

/// A refusal by a broker rule, or a failure underneath one. Each has a stable wire code.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("Invalid or missing session token")]
    InvalidSession,
    #[error("Invalid auth token")]
    InvalidAuth,
    #[error("`{0}` is reserved for broker notices; choose another name")]
    ReservedName(String),
    #[error("`{0}` is reserved for the person at the dashboard (serve --web-human names it); no client can register or rename to it. Choose another name")]
    ReservedForHuman(String),
    #[error("`{0}` is a name reserved for the broker's own notices: no instance can ever hold it, so mail to it would never be read; nothing was sent. Send to an instance's name (`list` shows them)")]
    ReservedRecipient(String),
    #[error("reply_to {0} is not a message you sent or received (or it was purged after the history retention); reply to an id your check, history, thread or search showed you")]
    UnknownReplyTo(MessageId),
    /// The same text whatever the reason, so a thread's existence cannot be probed.
    #[error("no thread you took part in has that id (or it was purged after the history retention); name a thread, or a message in it, that your check, history, thread or search showed you")]
    UnknownThread,
    #[error("`cursor` belongs to another thread; pass the `next_cursor` of this thread's previous page, or start again without it")]
    CursorOfAnotherThread,
    #[error("check's reply_to {0} is not a message you sent (or it was purged after the history retention); wait for the answers to an id your send or broadcast returned")]
    UnknownQuestion(MessageId),
    #[error("Message queue full for {name} ({cap} message limit)")]
    QueueFull { name: String, cap: u32 },
    #[error("Rate limit: can rename again in {minutes} minutes")]
    RenameCooldown { minutes: i64 },
    #[error(
        "Rate limit: {limit} requests per 60 s exceeded for {name}; retry in {retry_seconds} s"
    )]
    RateLimited {
        name: String,
        limit: u32,
        retry_seconds: i64,
    },
    #[error("Peer rate limit: {limit} requests per 60 s exceeded by {peer} across all its names; retry in {retry_seconds} s (the broker's --peer-rate-limit raises it)")]
    PeerRateLimited {
        peer: String,
        limit: u32,
        retry_seconds: i64,
    },
    #[error("Registration limit: {peer} registered {limit} new names in the last 60 s; retry in {retry_seconds} s or reuse a name you registered (the broker's --peer-register-limit raises it)")]
    PeerRegisterLimited {
        peer: String,
        limit: u32,
        retry_seconds: i64,
    },
    #[error("Registration limit: {limit} new names were registered in the last 60 s by all clients together; retry in {retry_seconds} s (the broker's --register-limit raises it)")]
    RegisterLimited { limit: u32, retry_seconds: i64 },
    #[error("Large-message quota: {sender}'s stored mail already holds {used} bytes of large-message files and this message needs {bytes} more, over the {limit}-byte cap per sender; wait until it is read and purged, send smaller content, or raise the broker's --large-message-sender-bytes")]
    LargeMessageSenderFull {
        sender: String,
        used: u64,
        bytes: u64,
        limit: u64,
    },
    #[error("Large-message quota: stored mail already holds {used} bytes of large-message files and this message needs {bytes} more, over the {limit}-byte cap for all senders; retry once stored mail is read and purged, send smaller content, or raise the broker's --large-message-total-bytes")]
    LargeMessageTotalFull { used: u64, bytes: u64, limit: u64 },
    #[error("Too many failed authentications from {peer}: {limit} in 60 s, so its requests that need authentication are refused unchecked for {retry_seconds} s; fix the session token or secret, then retry (the broker's --auth-failure-limit sets the limit)")]
    AuthThrottled {
        peer: String,
        limit: u32,
        retry_seconds: u64,
    },
    #[error(transparent)]
    Challenge(#[from] ChallengeRefusal),
    #[error("this broker requires challenge-response registration and refuses the static `auth_token` (it runs with --no-static-token): register with this project's client (`claude-ipc register NAME` or the MCP server), or restart the broker without --no-static-token and without IPC_NO_STATIC_TOKEN to accept the static token again")]
    StaticTokenRefused,
    #[error("Instance {0} already exists")]
    NameTaken(String),
    #[error("You are already named {0}")]
    SameName(String),
    #[error("`timestamp` {given} is {} s away from the broker's clock (limit {} s); check this machine's clock", seconds_text(*.off_by_ms), seconds_text(*.limit_ms))]
    StaleTimestamp {
        given: String,
        off_by_ms: i64,
        limit_ms: i64,
    },
    #[error("`message.data` is {bytes} bytes of JSON; the limit is {limit}. Put large payloads in `content`, which is stored as a file when large")]
    DataTooLarge { bytes: usize, limit: usize },
    #[error("cannot write the large-message file: {0}; nothing was stored")]
    LargeFile(std::io::Error),
    #[error("cannot make a session token: {0}")]
    Entropy(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{name} is in use by another session (last active {last_active}); pass --takeover (CLI) or takeover: true (MCP register) to replace it, or choose another name")]
    NameInUse { name: String, last_active: String },
    /// The legacy text, since the original's scripts match it; the hint says why.
    #[error("Invalid or missing session token")]
    SessionReplaced {
        name: String,
        replacement: queries::Replacement,
    },
    #[error("`{name}` differs only in letter case from the instance `{existing}`, so readers could take one for the other; choose a name that differs in more than case")]
    NameTooSimilar { name: String, existing: String },
}

impl BrokerError {
    pub fn code(&self) -> ErrorCode {
        use BrokerError::*;
        match self {
            InvalidSession => ErrorCode::InvalidSession,
            InvalidAuth => ErrorCode::InvalidAuth,
            ReservedName(_) | ReservedRecipient(_) | ReservedForHuman(_) => ErrorCode::ReservedName,
            QueueFull { .. } => ErrorCode::QueueFull,
            UnknownReplyTo(_) => ErrorCode::UnknownReplyTo,
            UnknownThread => ErrorCode::UnknownThread,
            CursorOfAnotherThread => ErrorCode::InvalidField,
            UnknownQuestion(_) => ErrorCode::UnknownReplyTo,
            RenameCooldown { .. } => ErrorCode::RenameCooldown,
            RateLimited { .. } => ErrorCode::RateLimited,
            PeerRateLimited { .. } => ErrorCode::PeerRateLimited,
            PeerRegisterLimited { .. } => ErrorCode::PeerRegisterLimited,
            RegisterLimited { .. } => ErrorCode::RegisterLimited,
            LargeMessageSenderFull { .. } => ErrorCode::LargeMessageSenderFull,
            LargeMessageTotalFull { .. } => ErrorCode::LargeMessageTotalFull,
            AuthThrottled { .. } => ErrorCode::AuthThrottled,
            Challenge(_) => ErrorCode::ChallengeFailed,
            StaticTokenRefused => ErrorCode::StaticTokenRefused,
            NameTaken(_) => ErrorCode::NameTaken,
            SameName(_) => ErrorCode::SameName,
            StaleTimestamp { .. } => ErrorCode::StaleTimestamp,
            DataTooLarge { .. } => ErrorCode::DataTooLarge,
            Store(StoreError::Unavailable(fault)) => fault_code(fault),
            LargeFile(_) | Store(_) => ErrorCode::StorageFailed,
            Entropy(_) => ErrorCode::Internal,
            NameInUse { .. } => ErrorCode::NameInUse,
            SessionReplaced { .. } => ErrorCode::SessionReplaced,
            NameTooSimilar { .. } => ErrorCode::NameTooSimilar,
        }
    }

    pub fn into_reply(self) -> Reply {
        let mut reply = ErrorReply::new(self.code(), self.to_string());
        if let BrokerError::SessionReplaced { name, replacement } = self {
            reply.hint = Some(identity::replaced_hint(&name, &replacement));
            reply.replaced_at = Some(replacement.at.to_text());
        }
        Reply::Error(reply)
    }

    /// Whether this refusal can only come after the caller's session was proved, so the
    /// request still shows the connection belongs to a known client. When in doubt, no: a
    /// stranger taken for a client could hold a connection slot it cannot be evicted from.
    fn follows_authentication(&self) -> bool {
        use BrokerError::*;
        match self {
            QueueFull { .. }
            | RenameCooldown { .. }
            | RateLimited { .. }
            | PeerRateLimited { .. }
            | LargeMessageSenderFull { .. }
            | LargeMessageTotalFull { .. }
            | NameTaken(_)
            | SameName(_)
            | UnknownReplyTo(_)
            | UnknownThread
            | CursorOfAnotherThread
            | UnknownQuestion(_)
            | ReservedRecipient(_) => true,
            InvalidSession
            | InvalidAuth
            | AuthThrottled { .. }
            | Challenge(_)
            | StaticTokenRefused
            | PeerRegisterLimited { .. }
            | RegisterLimited { .. }
            | ReservedName(_)
            | ReservedForHuman(_)
            | StaleTimestamp { .. }
            | DataTooLarge { .. }
            | LargeFile(_)
            | Entropy(_)
            | Store(_)
            | NameInUse { .. }
            | SessionReplaced { .. }
            | NameTooSimilar { .. } => false,
        }
    }
}

/// What a request produced: the reply, and for a `check` the receipt for the mail it holds
/// (see [`DeliveryReceipt`]).
pub struct Outcome {
    pub reply: Reply,
    pub receipt: Option<DeliveryReceipt>,
    /// The request proved a live session, or registered: the connection belongs to a known
    /// client. The connection layer never evicts such a connection to make room.
    pub authenticated: bool,
}

impl Outcome {
    /// A reply with no receipt to settle.
    pub fn reply(reply: impl Into<Reply>) -> Self {
        Outcome {
            reply: reply.into(),
            receipt: None,
            authenticated: false,
        }
    }
}

/// The broker: rules over a [`Store`]. Cheap to share behind an `Arc`.
pub struct Broker {
    store: Store,
    limits: Limits,
    shared_secret: Option<String>,
    large_message_dir: PathBuf,
    /// What every rule measures time with: real elapsed time, not the wall clock.
    clock: BrokerClock,
    offset_report: timekeeping::OffsetReport,
    /// The Unix socket the broker also listens on, reported by `ping`.
    socket: Option<PathBuf>,
    /// The data directory's canonical path, reported by `ping`, so a client configured with
    /// another one can tell it is about to use someone else's store.
    data_dir: Option<PathBuf>,
    /// When this broker started, by its clock; `ping` reports it and the uptime.
    started_at: DateTime<Utc>,
    /// One check at a time per session, so two connections of one instance never both receive
    /// the same mail before it is marked delivered. A std `Mutex` guards only the map and is
    /// never held across an `.await`.
    check_locks: Mutex<HashMap<Option<TokenHash>, Arc<tokio::sync::Mutex<()>>>>,
    doorbells: doorbell::Doorbells,
    /// Failed-authentication counters per peer; shared with jobs on the writer thread.
    auth_guard: Arc<auth_guard::AuthGuard>,
    /// When the sweeper last looked for orphaned large-message files, by the broker's clock.
    /// A std `Mutex`, held only to read and set it.
    last_orphan_pass: Mutex<Option<DateTime<Utc>>>,
    unsettled: unsettled::Unsettled,
    /// Sessions with a long-poll open; shared with `register` jobs on the writer thread.
    listening: Arc<listening::Listening>,
    /// Challenges waiting for their `register`; memory only, bounded.
    challenges: challenge::Challenges,
    /// The watches open now, one per session and watcher.
    watchers: Arc<watch::Watchers>,
    /// Each session's last request, for presence; shared with jobs on the writer thread.
    activity: Arc<online::Activity>,
    /// The dashboard's person's reserved name, when the dashboard is on (see [`human`]).
    human: Option<crate::domain::InstanceName>,
    /// The human's session token, kept only in memory. A std `Mutex`, held only to read or
    /// replace it.
    human_session: Mutex<Option<String>>,
    /// The dashboard's address (without its token), for `ping` and `status`.
    web_url: std::sync::OnceLock<String>,
}

impl Broker {
    pub fn new(
        store: Store,
        limits: Limits,
        shared_secret: Option<String>,
        large_message_dir: PathBuf,
        clock: BrokerClock,
    ) -> Self {
        Broker {
            store,
            auth_guard: Arc::new(auth_guard::AuthGuard::new(limits.auth_failure_limit)),
            limits,
            shared_secret,
            large_message_dir,
            started_at: clock.now(),
            clock: clock.clone(),
            offset_report: timekeeping::OffsetReport::default(),
            socket: None,
            data_dir: None,
            check_locks: Mutex::new(HashMap::new()),
            doorbells: doorbell::Doorbells::default(),
            last_orphan_pass: Mutex::new(None),
            unsettled: unsettled::Unsettled::default(),
            listening: Arc::default(),
            challenges: challenge::Challenges::default(),
            watchers: Arc::new(watch::Watchers::new(clock.clone())),
            activity: Arc::default(),
            human: None,
            human_session: Mutex::new(None),
            web_url: std::sync::OnceLock::new(),
        }
    }

    /// Reserves `human` for the dashboard's person (see [`human`]).
    pub fn with_human(mut self, human: Option<crate::domain::InstanceName>) -> Self {
        self.human = human;
        self
    }

    /// Records the dashboard's address once it listens, so `ping` can report it.
    pub fn set_web_url(&self, url: String) {
        let _ = self.web_url.set(url);
    }

    /// A receiver woken after each commit of mail, delivery state or presence.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.doorbells.changes()
    }

    /// Records the Unix socket the server listens on, so `ping` can report it.
    pub fn with_socket(mut self, socket: Option<PathBuf>) -> Self {
        self.socket = socket;
        self
    }

    /// Records the data directory's canonical path, so `ping` can report it.
    pub fn with_data_dir(mut self, data_dir: PathBuf) -> Self {
        self.data_dir = Some(data_dir);
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Answers every waiting long-poll now (empty if no mail came): the broker is stopping.
    pub fn stop_waiting(&self) {
        self.doorbells.close();
    }

    /// Whether `session_id` has a long-poll (`check` or `count` with a wait) listening for its
    /// doorbell now: from then on any commit of mail for it answers the wait.
    pub fn is_waiting_for_mail(&self, session_id: SessionId) -> bool {
        self.listening.is_waiting(session_id)
    }

    /// What decides who is online, for jobs on the writer thread.
    fn online_rule(&self) -> online::OnlineRule {
        online::OnlineRule {
            activity: self.activity.clone(),
            listening: self.listening.clone(),
            watchers: self.watchers.clone(),
        }
    }

    /// The writer's work so far, for `ping`: jobs run and commits made. Jobs per commit is
    /// how much group commit is sharing each disk flush.
    fn store_work(&self) -> StoreWork {
        let stats = self.store.stats();
        StoreWork {
            jobs: stats.jobs,
            commits: stats.commits,
        }
    }

    pub fn is_open_mode(&self) -> bool {
        self.shared_secret.is_none()
    }

    /// Answers one request from `peer`, whose connection nobody watches.
    pub async fn handle(&self, request: Request, peer: &Peer) -> Outcome {
        self.handle_for(request, peer, Presence::unwatched()).await
    }

    /// Answers one request from `peer`; a long-poll stops waiting once `reader` is gone.
    pub async fn handle_for(&self, request: Request, peer: &Peer, reader: Presence) -> Outcome {
        let action_name = request.action.name();
        // Every action but `ping` and `challenge` passes a session check or registers before it
        // succeeds; anyone may ask for a challenge, so it shows nothing about the connection.
        let proves_session = !matches!(request.action, Action::Ping | Action::Challenge { .. });
        let result = self.dispatch(request, peer, reader).await;
        let peer = peer.label.as_str();
        match result {
            Ok(outcome) => Outcome {
                authenticated: proves_session,
                ..outcome
            },
            Err(error) => {
                let authenticated = error.follows_authentication();
                // A database gone or damaged was logged once, when the store turned
                // unavailable; its refusals are not logged again for each request.
                if let ErrorCode::StorageFailed | ErrorCode::Internal = error.code() {
                    tracing::error!(action = action_name, peer, "request failed: {error}");
                }
                let reply = if error.code() == ErrorCode::StorageFailed {
                    self.storage_failure_reply(error).await
                } else {
                    error.into_reply()
                };
                Outcome {
                    authenticated,
                    ..Outcome::reply(reply)
                }
            }
        }
    }

    /// A storage failure's reply, saying "the disk is full" or "read-only" when that is why.
    async fn storage_failure_reply(&self, error: BrokerError) -> Reply {
        let data_dir = self.data_dir().to_owned();
        let diagnosis = tokio::task::spawn_blocking(move || {
            let problem = storage_failure::diagnose(&error, &data_dir);
            (problem, error, data_dir)
        })
        .await;
        match diagnosis {
            Ok((Some(problem), _, data_dir)) => {
                Reply::error(ErrorCode::StorageFailed, problem.advice(&data_dir))
            }
            Ok((None, error, _)) => error.into_reply(),
            Err(e) => Reply::error(
                ErrorCode::StorageFailed,
                format!("storing failed and nothing was stored ({e}); retry"),
            ),
        }
    }

    /// The data directory: the parent of `large-messages/`.
    fn data_dir(&self) -> &std::path::Path {
        self.large_message_dir
            .parent()
            .unwrap_or(&self.large_message_dir)
    }

    /// The refusal for a registration from a peer that has used up its authentication
    /// failures (see [`Broker::register`]).
    fn auth_throttled(&self, peer: &Peer, retry: std::time::Duration) -> BrokerError {
        BrokerError::AuthThrottled {
            peer: peer.key(),
            limit: self.auth_guard.limit(),
            retry_seconds: retry.as_secs().max(1),
        }
    }

    async fn dispatch(
        &self,
        request: Request,
        peer: &Peer,
        reader: Presence,
    ) -> Result<Outcome, BrokerError> {
        // Hashed once here; every check of this request (a long-poll makes several) uses it.
        let token = request.session_token.as_deref().map(TokenHash::of);
        match request.action {
            Action::Ping => Ok(Outcome::reply(self.ping().await)),
            Action::Challenge {
                instance_id,
                client_nonce,
            } => self
                .challenge(instance_id, client_nonce, peer)
                .map(Outcome::reply),
            Action::Register {
                instance_id,
                auth_token,
                takeover,
                challenge,
            } => {
                let claim = identity::Claim::from_request(takeover, token);
                self.register(instance_id, auth_token, challenge, claim, peer)
                    .await
                    .map(Outcome::reply)
            }
            Action::Send {
                to_id,
                message,
                stamp,
                thread,
            } => self
                .send(token, peer, to_id, message, stamp, thread)
                .await
                .map(Outcome::reply),
            Action::Broadcast {
                message,
                stamp,
                thread,
            } => self
                .broadcast(token, peer, message, stamp, thread)
                .await
                .map(Outcome::reply),
            Action::Check(options) => self.check(token, peer, options, reader).await,
            Action::Ack {
                ids,
                release: false,
            } => self.ack(token, peer, ids).await.map(Outcome::reply),
            Action::Ack { ids, release: true } => {
                self.release(token, peer, ids).await.map(Outcome::reply)
            }
            Action::List(options) => self.list(token, peer, options).await.map(Outcome::reply),
            Action::Rename { new_id } => self.rename(token, peer, new_id).await.map(Outcome::reply),
            Action::Count { wait } => self
                .count(token, peer, wait, reader)
                .await
                .map(Outcome::reply),
            Action::Logout => self.logout(token, peer).await.map(Outcome::reply),
            Action::Watch(options) => self.watch(token, peer, options, reader).await,
            Action::Sent(selection) => self.sent(token, peer, selection).await.map(Outcome::reply),
            Action::Thread(query) => self.thread(token, peer, query).await.map(Outcome::reply),
            Action::History(options) => {
                self.history(token, peer, options).await.map(Outcome::reply)
            }
            Action::Search(options) => self.search(token, peer, options).await.map(Outcome::reply),
        }
    }

    /// `ping`: version, protocol and security mode, which process hosts the broker since
    /// when (for `claude-ipc status`), and the Unix socket when there is one. `database` says
    /// "ok" or "checking" (its integrity check still runs); a removed or damaged database
    /// makes the reply an error with the same fields, so nothing reports healthy while
    /// requests fail.
    async fn ping(&self) -> PingReply {
        self.report_clock_offset();
        let mode = if self.is_open_mode() {
            SecurityMode::Open
        } else {
            SecurityMode::Secret
        };
        let uptime = (self.now() - self.started_at).num_seconds().max(0);
        let (refusal, database) = match self.store.check_files().await {
            Some(fault) => (
                Some(PingRefusal {
                    code: fault_code(&fault),
                    message: fault.message().to_owned(),
                }),
                fault.state(),
            ),
            None if self.store.is_checking() => (None, "checking"),
            None => (None, "ok"),
        };
        PingReply {
            refusal,
            database: database.to_owned(),
            version: crate::VERSION.to_owned(),
            protocol: crate::protocol::PROTOCOL_VERSION,
            mode: Some(mode),
            pid: std::process::id(),
            started_at: Some(text(self.started_at)),
            uptime_seconds: uptime,
            clock: Some(self.clock_report()),
            store: Some(self.store_work()),
            data_dir: self
                .data_dir
                .as_ref()
                .map(|path| path.display().to_string()),
            socket: self.socket.as_ref().map(|path| path.display().to_string()),
            static_token: self
                .shared_secret
                .as_ref()
                .map(|_| self.static_token_state()),
            web: self.web_url.get().cloned(),
        }
    }

    /// What `ping` reports, for the dashboard's broker page.
    pub async fn status_report(&self) -> PingReply {
        self.ping().await
    }

    /// Whether a legacy register with the static `auth_token` is accepted, or refused
    /// (`--no-static-token`).
    pub fn static_token_state(&self) -> StaticToken {
        if self.limits.static_token_accepted {
            StaticToken::Accepted
        } else {
            StaticToken::Refused
        }
    }

    /// The broker clock's "now": what every rule measures time with (injectable in tests).
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The clock to check a sender's `timestamp` against (see [`BrokerClock::senders_clock`]).
    fn senders_clock(&self, stamp: Option<DateTime<Utc>>) -> DateTime<Utc> {
        self.clock.senders_clock(stamp)
    }

    /// Runs `work` as the caller the session `token` proves, as a new request, in one flushed
    /// job (see [`Broker::job`]): a session that does not check out refuses the job before
    /// `work` runs, and that refusal commits the authentication failure it recorded. Work
    /// that is not a new request or need not be flushed checks its own
    /// [`identity::SessionCheck`] inside [`Broker::job`].
    async fn as_caller<T, F>(
        &self,
        token: Option<TokenHash>,
        peer: &Peer,
        work: F,
    ) -> Result<T, BrokerError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>, &Caller, Timestamp) -> Result<JobEnd<T>, StoreError> + Send + 'static,
    {
        let check = self.session_check(token, peer);
        self.job(Durability::Flushed, move |tx, now| {
            check.caller(tx, now)?.then(|caller| work(tx, &caller, now))
        })
        .await
    }

    /// Runs `work` as one job on the store's writer thread at the broker clock's `now`,
    /// committed with `durability`. Every broker job goes through here.
    ///
    /// How the job ends decides what is kept: `Ok(JobEnd::Done)` and `Ok(JobEnd::Refused)`
    /// both commit (a refusal keeps what was recorded before it, such as an authentication
    /// failure or a counted request), while `Err(StoreError)` rolls the job back. A storage
    /// failure that says the database is corrupt turns the store "damaged" here, so every
    /// path (requests, receipts, the sweeper) reports it the same way.
    async fn job<T, F>(&self, durability: Durability, work: F) -> Result<T, BrokerError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>, Timestamp) -> Result<JobEnd<T>, StoreError> + Send + 'static,
    {
        let now = Timestamp::new(self.now());
        match self.store.write(durability, move |tx| work(tx, now)).await {
            Ok(JobEnd::Done(done)) => Ok(done),
            Ok(JobEnd::Refused(refusal)) => Err(refusal),
            Err(failure) => Err(match self.store.notice(&failure) {
                Some(fault) => StoreError::Unavailable(fault),
                None => failure,
            }
            .into()),
        }
    }
}

/// How a broker job ends when the store did not fail; both ends commit. A rule refuses by
/// returning `Ok(JobEnd::Refused(..))`, keeping what it recorded before (an authentication
/// failure, a counted request, a rate-limit entry); only an `Err(StoreError)` rolls the job
/// back.
#[derive(Debug)]
pub(crate) enum JobEnd<T> {
    Done(T),
    Refused(BrokerError),
}

impl<T> JobEnd<T> {
    /// The result turned by `f`; a refusal stays the refusal.
    fn map<U>(self, f: impl FnOnce(T) -> U) -> JobEnd<U> {
        match self {
            JobEnd::Done(done) => JobEnd::Done(f(done)),
            JobEnd::Refused(refusal) => JobEnd::Refused(refusal),
        }
    }

    /// Goes on with `next` after `Done`; a refusal ends the job as it is.
    fn then<U>(
        self,
        next: impl FnOnce(T) -> Result<JobEnd<U>, StoreError>,
    ) -> Result<JobEnd<U>, StoreError> {
        match self {
            JobEnd::Done(done) => next(done),
            JobEnd::Refused(refusal) => Ok(JobEnd::Refused(refusal)),
        }
    }
}

/// A refusal as a job's end: `refuse(BrokerError::SameName(..))`.
fn refuse<T>(refusal: impl Into<BrokerError>) -> Result<JobEnd<T>, StoreError> {
    Ok(JobEnd::Refused(refusal.into()))
}

/// A job's result as its end.
fn done<T>(result: T) -> Result<JobEnd<T>, StoreError> {
    Ok(JobEnd::Done(result))
}

/// The wire code for a fault that makes the store refuse work.
fn fault_code(fault: &Fault) -> ErrorCode {
    match fault {
        Fault::Gone(_) => ErrorCode::DatabaseGone,
        Fault::Damaged(_) => ErrorCode::DatabaseDamaged,
    }
}

/// Adds a std duration to a time, saturating instead of panicking on absurd configs.
fn plus(at: DateTime<Utc>, by: std::time::Duration) -> DateTime<Utc> {
    Duration::from_std(by)
        .ok()
        .and_then(|by| at.checked_add_signed(by))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn minus(at: DateTime<Utc>, by: std::time::Duration) -> DateTime<Utc> {
    Duration::from_std(by)
        .ok()
        .and_then(|by| at.checked_sub_signed(by))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn text(at: DateTime<Utc>) -> String {
    clock::to_text(at)
}

/// Milliseconds as seconds for people: `10.9`, `300`, `0.001`.
fn seconds_text(ms: i64) -> String {
    let whole = format!("{}.{:03}", ms / 1000, (ms % 1000).abs());
    whole.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod job_tests;

#[cfg(test)]
mod tests {
    use super::seconds_text;

    #[test]
    fn milliseconds_read_as_seconds_without_trailing_zeros() {
        assert_eq!(seconds_text(10_900), "10.9");
        assert_eq!(seconds_text(300_000), "300");
        assert_eq!(seconds_text(1), "0.001");
        assert_eq!(seconds_text(0), "0");
    }
}
