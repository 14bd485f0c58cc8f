//! The rules of the post office. [`Broker::handle`] takes one parsed request and returns the
//! reply (and, for `check`, a receipt to confirm once the reply is written).
//!
//! Each request becomes one job on the store's writer thread, so authentication, the rate
//! limit and the action itself see one consistent database and commit together.
//!
//! - [`identity`]: sessions, register, rename, list, the rate limit.
//! - [`mail`]: send, broadcast, check, ack and delivery receipts.
//! - [`doorbell`]: wakes long-polling checks when mail for them is committed.
//! - [`reader`]: tells a long-poll that its reader's connection closed.
//! - [`unsettled`]: legacy replies waiting for evidence that their client took them.
//! - [`sweeper`]: expiry and purging in bounded batches.

pub mod doorbell;
pub mod identity;
pub mod large_message;
pub mod mail;
pub mod peer;
pub mod reader;
pub mod session;
pub mod storage_failure;
pub mod sweeper;
pub mod unsettled;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use rusqlite::Connection;

use crate::clock::{self, Clock};
use crate::config::Limits;
use crate::protocol::{Action, ErrorCode, Reply, Request};
use crate::store::{Store, StoreError};

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
    #[error("Instance {0} already exists")]
    NameTaken(String),
    #[error("You are already named {0}")]
    SameName(String),
    #[error("`timestamp` {given} is {off_by_seconds} s away from the broker's clock (limit {limit_seconds} s); check this machine's clock")]
    StaleTimestamp {
        given: String,
        off_by_seconds: i64,
        limit_seconds: i64,
    },
    #[error("`message.data` is {bytes} bytes of JSON; the limit is {limit}. Put large payloads in `content`, which is stored as a file when large")]
    DataTooLarge { bytes: usize, limit: usize },
    #[error("cannot write the large-message file: {0}; nothing was stored")]
    LargeFile(std::io::Error),
    #[error("cannot make a session token: {0}")]
    Entropy(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for BrokerError {
    fn from(error: rusqlite::Error) -> Self {
        BrokerError::Store(StoreError::Sqlite(error))
    }
}

impl BrokerError {
    pub fn code(&self) -> ErrorCode {
        use BrokerError::*;
        match self {
            InvalidSession => ErrorCode::InvalidSession,
            InvalidAuth => ErrorCode::InvalidAuth,
            ReservedName(_) => ErrorCode::ReservedName,
            QueueFull { .. } => ErrorCode::QueueFull,
            RenameCooldown { .. } => ErrorCode::RenameCooldown,
            RateLimited { .. } => ErrorCode::RateLimited,
            NameTaken(_) => ErrorCode::NameTaken,
            SameName(_) => ErrorCode::SameName,
            StaleTimestamp { .. } => ErrorCode::StaleTimestamp,
            DataTooLarge { .. } => ErrorCode::DataTooLarge,
            LargeFile(_) | Store(_) => ErrorCode::StorageFailed,
            Entropy(_) => ErrorCode::Internal,
        }
    }

    pub fn into_reply(self) -> Reply {
        Reply::error(self.code(), self.to_string())
    }
}

/// What a request produced: the reply, and for a `check` the receipt for the mail it holds
/// (see [`DeliveryReceipt`]).
pub struct Outcome {
    pub reply: Reply,
    pub receipt: Option<DeliveryReceipt>,
}

impl From<Reply> for Outcome {
    fn from(reply: Reply) -> Self {
        Outcome {
            reply,
            receipt: None,
        }
    }
}

/// The broker: rules over a [`Store`]. Cheap to share behind an `Arc`.
pub struct Broker {
    store: Store,
    limits: Limits,
    shared_secret: Option<String>,
    large_message_dir: PathBuf,
    clock: Clock,
    /// The Unix socket the broker also listens on, reported by `ping`.
    socket: Option<PathBuf>,
    /// When this broker started, by its clock; `ping` reports it and the uptime.
    started_at: DateTime<Utc>,
    /// One check at a time per session, so two connections of one instance never both receive
    /// the same mail before it is marked delivered. A std `Mutex` guards only the map and is
    /// never held across an `.await`.
    check_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    doorbells: doorbell::Doorbells,
    unsettled: unsettled::Unsettled,
}

impl Broker {
    pub fn new(
        store: Store,
        limits: Limits,
        shared_secret: Option<String>,
        large_message_dir: PathBuf,
        clock: Clock,
    ) -> Self {
        Broker {
            store,
            limits,
            shared_secret,
            large_message_dir,
            started_at: clock.now(),
            clock,
            socket: None,
            check_locks: Mutex::new(HashMap::new()),
            doorbells: doorbell::Doorbells::default(),
            unsettled: unsettled::Unsettled::default(),
        }
    }

    /// Records the Unix socket the server listens on, so `ping` can report it.
    pub fn with_socket(mut self, socket: Option<PathBuf>) -> Self {
        self.socket = socket;
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

    /// The writer's work so far, for `ping`: jobs run and commits made. Jobs per commit is
    /// how much group commit is sharing each disk flush.
    fn store_work(&self) -> serde_json::Value {
        let stats = self.store.stats();
        serde_json::json!({"jobs": stats.jobs, "commits": stats.commits})
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
        let result = self.dispatch(request, peer, reader).await;
        let peer = peer.label.as_str();
        match result {
            Ok(outcome) => outcome,
            Err(error) => {
                if let ErrorCode::StorageFailed | ErrorCode::Internal = error.code() {
                    tracing::error!(action = action_name, peer, "request failed: {error}");
                }
                if error.code() == ErrorCode::StorageFailed {
                    return self.storage_failure_reply(error).await.into();
                }
                error.into_reply().into()
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

    async fn dispatch(
        &self,
        request: Request,
        peer: &Peer,
        reader: Presence,
    ) -> Result<Outcome, BrokerError> {
        let token = request.session_token;
        let peer = peer.label.as_str();
        match request.action {
            Action::Ping => Ok(self.ping().into()),
            Action::Register {
                instance_id,
                auth_token,
            } => self
                .register(instance_id, auth_token, peer)
                .await
                .map(Outcome::from),
            Action::Send {
                to_id,
                message,
                stamp,
            } => self
                .send(token, peer, to_id, message, stamp)
                .await
                .map(Outcome::from),
            Action::Broadcast { message, stamp } => self
                .broadcast(token, peer, message, stamp)
                .await
                .map(Outcome::from),
            Action::Check(options) => self.check(token, peer, options, reader).await,
            Action::Ack {
                ids,
                release: false,
            } => self.ack(token, peer, ids).await.map(Outcome::from),
            Action::Ack { ids, release: true } => {
                self.release(token, peer, ids).await.map(Outcome::from)
            }
            Action::List => self.list(token, peer).await.map(Outcome::from),
            Action::Rename { new_id } => self.rename(token, peer, new_id).await.map(Outcome::from),
            Action::Count { wait } => self
                .count(token, peer, wait, reader)
                .await
                .map(Outcome::from),
        }
    }

    /// `ping`: version, protocol and security mode, which process hosts the broker since
    /// when (for `claude-ipc status`), and the Unix socket when there is one.
    fn ping(&self) -> Reply {
        let mode = if self.is_open_mode() {
            "open"
        } else {
            "secret"
        };
        let uptime = (self.now() - self.started_at).num_seconds().max(0);
        let reply = Reply::ok()
            .with("version", crate::VERSION)
            .with("protocol", crate::protocol::PROTOCOL_VERSION)
            .with("mode", mode)
            .with("pid", std::process::id())
            .with("started_at", text(self.started_at))
            .with("uptime_seconds", uptime)
            .with("store", self.store_work());
        match &self.socket {
            Some(path) => reply.with("socket", path.display().to_string()),
            None => reply,
        }
    }

    /// The broker's clock's "now" (injectable in tests).
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Runs `action` as the session's caller inside one store job. Rule refusals commit what
    /// was recorded before them (an auth failure, say); storage errors roll the job back.
    async fn as_caller<T, F>(
        &self,
        token: Option<String>,
        peer: &str,
        action: F,
    ) -> Result<T, BrokerError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &Caller, DateTime<Utc>) -> Result<T, BrokerError> + Send + 'static,
    {
        self.in_session(token, peer, Activity::NewRequest, action)
            .await
    }

    /// Like [`Broker::as_caller`], but neither counts a request nor refreshes the session: a
    /// long-poll reading again after a wake-up is still the one request it was.
    async fn as_caller_again<T, F>(
        &self,
        token: Option<String>,
        peer: &str,
        action: F,
    ) -> Result<T, BrokerError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &Caller, DateTime<Utc>) -> Result<T, BrokerError> + Send + 'static,
    {
        self.in_session(token, peer, Activity::SameRequest, action)
            .await
    }

    async fn in_session<T, F>(
        &self,
        token: Option<String>,
        peer: &str,
        activity: Activity,
        action: F,
    ) -> Result<T, BrokerError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &Caller, DateTime<Utc>) -> Result<T, BrokerError> + Send + 'static,
    {
        let check = self.session_check(token, peer);
        let now = self.now();
        self.run(move |conn| {
            let caller = match activity {
                Activity::NewRequest => check.authenticate(conn, now)?,
                Activity::SameRequest => check.verify(conn, now)?,
            };
            action(conn, &caller, now)
        })
        .await
    }

    /// Checks that `token` belongs to a live session, recording a failure if not, without
    /// counting a request. Used before work that must not be done for strangers.
    async fn verify_session(&self, token: Option<String>, peer: &str) -> Result<(), BrokerError> {
        let check = self.session_check(token, peer);
        let now = self.now();
        self.run(move |conn| check.verify(conn, now).map(|_| ()))
            .await
    }

    /// Runs `work` on the writer thread, keeping rule refusals apart from storage failures.
    async fn run<T, F>(&self, work: F) -> Result<T, BrokerError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, BrokerError> + Send + 'static,
    {
        let outcome = self
            .store
            .write(move |conn| match work(conn) {
                Err(BrokerError::Store(error)) => Err(error),
                other => Ok(other),
            })
            .await?;
        outcome
    }
}

/// Whether a session's work is a new request (counted by the rate limit, refreshing the
/// session) or more of one already counted.
#[derive(Clone, Copy)]
enum Activity {
    NewRequest,
    SameRequest,
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
