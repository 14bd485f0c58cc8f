//! A typed, blocking client for the broker's protocol, used by the CLI and the tests.
//!
//! It keeps one persistent connection, over TCP or the broker's Unix socket, and sends one
//! JSON request per line. Before it sends anything on a new connection, it checks that the
//! broker is run by the expected local user (see [`broker_owner`]).

mod broker_owner;
mod threads;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use chrono::{DateTime, Utc};

use crate::protocol::auth::{self, constant_time_eq, expected_auth_token, ProofUid};
use crate::protocol::reply::parse_reply;
use crate::protocol::schema::requests::HistoryRequest;
use crate::protocol::schema::requests::{
    AckRequest, BroadcastRequest, ChallengeRequest, CheckRequest, CountRequest, ListRequest,
    LogoutRequest, RegisterRequest, RenameRequest, RequestBody, RequestStamp, SendRequest,
    SentRequest, WatchRequest,
};
use crate::protocol::schema::HistoryReply;
use crate::protocol::schema::{
    AckReply, BroadcastReply, ChallengeReply, CheckReply, ClientRequest, CountReply, ErrorReply,
    InstanceEntry, ListReply, LogoutReply, ManualAck, PingReply, RefusedId, RegisterReply,
    ReleaseReply, RenameReply, SecurityMode, SendReply, SentReply, WatchReply, WireBody,
    WireMessage,
};
use crate::protocol::ErrorCode;

pub use crate::protocol::schema::requests::ThreadingFields;
pub use broker_owner::{BrokerUser, Expected, NamedUser, BROKER_USER_ENV};
pub use threads::{other_party, Replied, THREAD_PAGE_MAX};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no broker at {addr} ({reason}); start one with `claude-ipc serve`")]
    Unreachable { addr: String, reason: String },
    #[error("connection to the broker failed: {0}; it may have stopped or restarted: check with `claude-ipc status`, then retry")]
    Io(#[from] std::io::Error),
    #[error("the broker closed the connection before replying; it may have stopped — `claude-ipc status` tells")]
    Closed,
    #[error("the broker sent something that is not a reply: {0}; is another program listening at that address? `claude-ipc status` tells")]
    Protocol(String),
    #[error("{message} [{code}]{}", hint.as_deref().map(|hint| format!(": {hint}")).unwrap_or_default())]
    Broker {
        code: ErrorCode,
        message: String,
        /// The broker's explanation beside a message whose text is fixed for the legacy
        /// scripts (a replaced session's `Invalid or missing session token`).
        hint: Option<String>,
    },
    #[error("the broker on {target} runs without a shared secret (open mode), although this client has one (IPC_SHARED_SECRET); someone may have started it by mistake or on purpose. Nothing was sent to it: stop it and start it with the secret (IPC_SHARED_SECRET=... claude-ipc serve) [{}]", ErrorCode::BrokerOpenMode.as_str())]
    BrokerOpenMode { target: String },
    #[error("the broker on {target} serves the data directory {theirs}, but this client is configured with {ours}, so it would read and write someone else's store. Nothing was sent to it: point IPC_DATA_DIR at {theirs}, or run a separate broker for {ours} on another IPC_ADDR [{}]", ErrorCode::DataDirMismatch.as_str())]
    DataDirMismatch {
        target: String,
        ours: String,
        theirs: String,
    },
    /// The broker did not prove it knows the shared secret; nothing more was sent to it.
    #[error("the broker at {addr} did not prove that it knows the shared secret: {reason}. Nothing else was sent to it, so it got no credential of yours. Either it is not the broker you share IPC_SHARED_SECRET with, or your secret differs from the broker's, or something relays your connection; `claude-ipc status` shows who answers there [challenge_failed]")]
    BrokerUnproven { addr: String, reason: String },
    #[error("refusing to talk to the broker on {addr}: it is run by {owner}, not by {expected}. Another user may be impersonating the broker; stop it, or if this is a deliberate service account set IPC_BROKER_USER={}", owner.setting())]
    BrokerWrongUser {
        addr: String,
        owner: NamedUser,
        expected: Expected,
    },
    #[error("refusing to talk to the broker on {addr}: cannot tell which user runs it ({reason}); if you trust whatever answers there, set IPC_BROKER_USER=any to skip this check deliberately")]
    BrokerOwnerUnknown { addr: String, reason: String },
    #[error("IPC_BROKER_USER (or --broker-user) is {value:?}, which names no user on this machine; give a user name, a numeric uid, or `any`")]
    BadBrokerUser { value: String },
}

impl From<ErrorReply> for ClientError {
    fn from(reply: ErrorReply) -> Self {
        ClientError::Broker {
            code: reply.code,
            message: reply.message,
            hint: reply.hint,
        }
    }
}

impl ClientError {
    /// A stable code for scripts (`--json`): the broker's own code for its refusals.
    pub fn code(&self) -> &str {
        match self {
            ClientError::Unreachable { .. } => "unreachable",
            ClientError::Io(_) => "connection_failed",
            ClientError::Closed => "connection_closed",
            ClientError::Protocol(_) => "bad_reply",
            ClientError::Broker { code, .. } => code.as_str(),
            ClientError::BrokerWrongUser { .. } => "broker_wrong_user",
            ClientError::BrokerOwnerUnknown { .. } => "broker_owner_unknown",
            ClientError::BadBrokerUser { .. } => "bad_broker_user",
            ClientError::BrokerOpenMode { .. } => ErrorCode::BrokerOpenMode.as_str(),
            ClientError::DataDirMismatch { .. } => ErrorCode::DataDirMismatch.as_str(),
            ClientError::BrokerUnproven { .. } => ErrorCode::ChallengeFailed.as_str(),
        }
    }

    /// Whether this client refused the broker (or could not tell who runs it), so nothing was
    /// sent: retrying or starting a broker of its own would not help.
    pub fn is_untrusted_broker(&self) -> bool {
        matches!(
            self,
            ClientError::BrokerWrongUser { .. }
                | ClientError::BrokerOwnerUnknown { .. }
                | ClientError::BadBrokerUser { .. }
        )
    }

    /// Whether this client refused the broker itself (see [`Client::verify_broker`]): trying
    /// again reaches the same broker, so only a person can fix it.
    pub fn is_broker_refused(&self) -> bool {
        matches!(
            self,
            ClientError::BrokerOpenMode { .. }
                | ClientError::DataDirMismatch { .. }
                | ClientError::BrokerUnproven { .. }
        ) || self.is_untrusted_broker()
    }
}

/// What a client expects of the broker before it sends it anything that matters (a register,
/// a session token, mail); checked by [`Client::verify_broker`] with one `ping`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerCheck {
    /// This client holds the shared secret, so a broker in open mode is refused: whoever
    /// started it without the secret would be handed this client's registration and mail.
    pub holds_secret: bool,
    /// The data directory this client is configured with: a broker that reports another is
    /// refused. `None`: any.
    pub data_dir: Option<PathBuf>,
}

impl BrokerCheck {
    /// Whether there is anything to check (otherwise no round trip is spent on it).
    pub fn is_needed(&self) -> bool {
        self.holds_secret || self.data_dir.is_some()
    }
}

/// Extra read time allowed on top of a long-poll's wait when no read timeout was set.
const WAIT_MARGIN: Duration = Duration::from_secs(10);

/// A request's `message`: `{content, data?}`.
fn message(content: &str, data: Option<Value>) -> RequestBody {
    RequestBody {
        content: content.to_owned(),
        data,
    }
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis().try_into().unwrap_or(u64::MAX)
}

/// A connection to a broker.
pub struct Client {
    reader: BufReader<Stream>,
    writer: Stream,
    /// Where it connected, and whom it trusts there, so a stamped send can reconnect and
    /// retry under the same check.
    target: Target,
    broker_user: BrokerUser,
    timeout: Duration,
    /// What [`Client::verify_broker`] checked, so a reconnection checks it again.
    verified: Option<BrokerCheck>,
}

/// Where a client connects: a TCP address or the broker's Unix socket.
#[derive(Debug, Clone)]
enum Target {
    Tcp(String),
    Unix(PathBuf),
}

/// The two ways to reach a broker; both carry the same protocol.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(stream) => Stream::Tcp(stream.try_clone()?),
            Stream::Unix(stream) => Stream::Unix(stream.try_clone()?),
        })
    }

    fn read_timeout(&self) -> std::io::Result<Option<Duration>> {
        match self {
            Stream::Tcp(stream) => stream.read_timeout(),
            Stream::Unix(stream) => stream.read_timeout(),
        }
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.set_read_timeout(timeout),
            Stream::Unix(stream) => stream.set_read_timeout(timeout),
        }
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.set_write_timeout(timeout),
            Stream::Unix(stream) => stream.set_write_timeout(timeout),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.read(buf),
            Stream::Unix(stream) => stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.write(buf),
            Stream::Unix(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.flush(),
            Stream::Unix(stream) => stream.flush(),
        }
    }
}

/// A sender's stamp: a nonce that makes a retry safe, and when the message was written.
#[derive(Debug, Clone)]
pub struct Stamp {
    pub nonce: String,
    pub timestamp: DateTime<Utc>,
}

impl Stamp {
    /// A fresh random nonce, stamped now.
    pub fn fresh() -> std::io::Result<Stamp> {
        Ok(Stamp {
            nonce: auth::fresh_nonce()?,
            timestamp: Utc::now(),
        })
    }

    fn fields(&self) -> RequestStamp {
        RequestStamp {
            nonce: Some(self.nonce.clone()),
            timestamp: Some(self.timestamp.into()),
        }
    }
}

// The replies, by the names this client's callers know them by: the shared wire types of
// `protocol::schema`.
/// `register`'s reply.
pub type Registered = RegisterReply;
/// `challenge`'s reply: the broker's nonce and its proof that it knows the secret.
pub type Challenge = ChallengeReply;
/// `send`'s reply.
pub type Sent = SendReply;
/// One message as `check` returns it.
pub type Received = WireMessage;
/// What a sender wrote.
pub type Body = WireBody;
/// `check`'s reply.
pub type Checked = CheckReply;
/// `ack`'s reply. The lists hold only the first few ids of each kind; the counts cover all.
pub type Acked = AckReply;
/// `ack` with `release`'s reply.
pub type Released = ReleaseReply;
/// An id an `ack` could not settle, and why.
pub type Refused = RefusedId;
/// `count`'s reply: waiting mail, not consumed.
pub type Waiting = CountReply;
/// One entry of `list`.
pub type Instance = InstanceEntry;
/// One page of `list`: instances in name order, and where the next page starts.
pub type InstancePage = ListReply;

/// A challenge whose server proof checked out: the broker knows the secret, and sees this
/// client as the user it is.
#[derive(Debug, Clone)]
pub struct ProvenChallenge {
    pub challenge_id: String,
    pub client_nonce: String,
    pub server_nonce: String,
    /// The uid both proofs were computed for.
    pub uid: ProofUid,
}

/// How to `check`: see [`Client::check_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions {
    /// Lease the mail for this long instead of having it marked delivered; settle it with
    /// [`Client::ack`].
    pub manual_ack: Option<Duration>,
    /// Wait up to this long for mail when none is waiting.
    pub wait: Option<Duration>,
    pub limit: Option<u32>,
}

/// How to `watch`: see [`Client::watch`].
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// Who is being told (1-128 letters, digits, `-_.:`): each message is announced to one
    /// watcher once.
    pub watcher: String,
    /// Wait up to this long for new mail when nothing new is waiting.
    pub wait: Option<Duration>,
    /// At most this many messages (1-500; the broker's default is 100).
    pub limit: Option<u32>,
    /// The caller pushes what it is told into a live session (a channel-mode MCP server).
    pub push: bool,
}

/// Closes a client's connection from another thread, which ends a call blocked on it (with
/// an error) and tells the broker this reader is gone.
pub struct Closer(Stream);

impl Closer {
    pub fn close(&self) {
        let _ = match &self.0 {
            Stream::Tcp(stream) => stream.shutdown(std::net::Shutdown::Both),
            Stream::Unix(stream) => stream.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl Client {
    /// Connects to `addr` (`host:port`), waiting at most `timeout` for each step, and trusts
    /// the broker there only if it runs as the user `IPC_BROKER_USER` names (by default this
    /// process's own).
    pub fn connect(addr: &str, timeout: Duration) -> Result<Client, ClientError> {
        Client::connect_as(addr, timeout, BrokerUser::from_env()?)
    }

    /// [`Client::connect`], trusting the broker only if it runs as `broker_user`.
    pub fn connect_as(
        addr: &str,
        timeout: Duration,
        broker_user: BrokerUser,
    ) -> Result<Client, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            addr: addr.to_owned(),
            reason,
        };
        let target = addr
            .to_socket_addrs()
            .map_err(|e| unreachable(e.to_string()))?
            .next()
            .ok_or_else(|| unreachable("the address resolves to nothing".into()))?;
        let stream =
            TcpStream::connect_timeout(&target, timeout).map_err(|e| unreachable(e.to_string()))?;
        broker_owner::check_tcp(&stream, addr, broker_user)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let target = Target::Tcp(addr.to_owned());
        Self::over(Stream::Tcp(stream), target, broker_user, timeout)
    }

    /// Connects to the broker's Unix socket at `path`, waiting at most `timeout` for each
    /// read or write; the broker must run as the user `IPC_BROKER_USER` names, as in
    /// [`Client::connect`].
    pub fn connect_unix(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        Client::connect_unix_as(path, timeout, BrokerUser::from_env()?)
    }

    /// [`Client::connect_unix`], trusting the broker only if it runs as `broker_user`.
    pub fn connect_unix_as(
        path: &Path,
        timeout: Duration,
        broker_user: BrokerUser,
    ) -> Result<Client, ClientError> {
        let addr = format!("socket {}", path.display());
        let stream = UnixStream::connect(path).map_err(|e| ClientError::Unreachable {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
        broker_owner::check_unix(&stream, &addr, broker_user)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let target = Target::Unix(path.to_owned());
        Self::over(Stream::Unix(stream), target, broker_user, timeout)
    }

    fn over(
        stream: Stream,
        target: Target,
        broker_user: BrokerUser,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            target,
            broker_user,
            timeout,
            verified: None,
        })
    }

    /// Where this client connects, as a person would write it.
    pub fn target(&self) -> String {
        match &self.target {
            Target::Tcp(addr) => addr.clone(),
            Target::Unix(path) => format!("socket {}", path.display()),
        }
    }

    /// Refuses a broker that is not the one this client expects, before anything that matters
    /// is sent to it: one `ping`, none when `check` expects nothing. Every client of this
    /// project calls it right after connecting; a reconnection repeats it.
    pub fn verify_broker(&mut self, check: &BrokerCheck) -> Result<(), ClientError> {
        if !check.is_needed() {
            return Ok(());
        }
        // Read whatever the status: a broker whose database is gone still says its mode.
        let line = self.exchange(&ClientRequest::Ping.to_line())?;
        let reply: PingReply = serde_json::from_str(&line).map_err(|e| bad_reply(e, &line))?;
        if check.holds_secret {
            match reply.mode {
                Some(SecurityMode::Secret) => {}
                Some(SecurityMode::Open) => {
                    return Err(ClientError::BrokerOpenMode {
                        target: self.target(),
                    })
                }
                _ => {
                    return Err(ClientError::Protocol(format!(
                        "the broker on {} does not say whether it requires the shared secret, so nothing was sent to it",
                        self.target()
                    )))
                }
            }
        }
        if let (Some(ours), Some(theirs)) = (&check.data_dir, reply.data_dir) {
            if !same_directory(ours, Path::new(&theirs)) {
                return Err(ClientError::DataDirMismatch {
                    target: self.target(),
                    ours: ours.display().to_string(),
                    theirs,
                });
            }
        }
        self.verified = Some(check.clone());
        Ok(())
    }

    /// A new connection to the same broker, the same way, under the same checks.
    fn reconnect(&self) -> Result<Client, ClientError> {
        let mut client = match &self.target {
            Target::Tcp(addr) => Client::connect_as(addr, self.timeout, self.broker_user)?,
            Target::Unix(path) => Client::connect_unix_as(path, self.timeout, self.broker_user)?,
        };
        if let Some(check) = &self.verified {
            client.verify_broker(check)?;
        }
        Ok(client)
    }

    /// Sends a stamped request; if the connection fails on the way, connects again and sends
    /// the very same request once more. The nonce makes the broker store it only once.
    fn call_stamped<T: DeserializeOwned>(
        &mut self,
        request: ClientRequest,
    ) -> Result<T, ClientError> {
        let line = request.to_line();
        match self.call_line(&line) {
            Err(ClientError::Io(_) | ClientError::Closed) => {
                *self = self.reconnect()?;
                self.call_line(&line)
            }
            other => other,
        }
    }

    /// `send` with a stamp, retried once with the same nonce after a connection failure.
    pub fn send_stamped(
        &mut self,
        token: &str,
        to: &str,
        content: &str,
        data: Option<Value>,
        stamp: &Stamp,
    ) -> Result<Sent, ClientError> {
        let thread = ThreadingFields::default();
        self.send_threaded(token, to, content, data, &thread, stamp)
    }

    /// `send_stamped` in a conversation: answering `thread.reply_to`, with a subject.
    pub fn send_threaded(
        &mut self,
        token: &str,
        to: &str,
        content: &str,
        data: Option<Value>,
        thread: &ThreadingFields,
        stamp: &Stamp,
    ) -> Result<Sent, ClientError> {
        self.call_stamped(ClientRequest::Send(SendRequest {
            session_token: token.to_owned(),
            to_id: to.to_owned(),
            message: message(content, data),
            stamp: stamp.fields(),
            thread: thread.clone(),
        }))
    }

    /// `broadcast` with a stamp, retried once with the same nonce after a connection failure.
    pub fn broadcast_stamped(
        &mut self,
        token: &str,
        content: &str,
        data: Option<Value>,
        stamp: &Stamp,
    ) -> Result<BroadcastReply, ClientError> {
        let thread = ThreadingFields::default();
        self.broadcast_threaded(token, content, data, &thread, stamp)
    }

    /// `broadcast_stamped` in a conversation: answering `thread.reply_to`, with a subject.
    pub fn broadcast_threaded(
        &mut self,
        token: &str,
        content: &str,
        data: Option<Value>,
        thread: &ThreadingFields,
        stamp: &Stamp,
    ) -> Result<BroadcastReply, ClientError> {
        self.call_stamped(ClientRequest::Broadcast(BroadcastRequest {
            session_token: token.to_owned(),
            message: message(content, data),
            stamp: stamp.fields(),
            thread: thread.clone(),
        }))
    }

    /// Changes how long each later request may wait for the broker (say, for a long poll).
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        self.writer.set_read_timeout(Some(timeout))?;
        self.writer.set_write_timeout(Some(timeout))?;
        self.timeout = timeout;
        Ok(())
    }

    /// Writes one request line and reads one reply line.
    fn exchange(&mut self, line: &[u8]) -> Result<String, ClientError> {
        self.writer.write_all(line)?;
        let mut reply = String::new();
        if self.reader.read_line(&mut reply)? == 0 {
            return Err(ClientError::Closed);
        }
        Ok(reply)
    }

    /// Sends any JSON request (one the typed methods would not send, say) and returns the
    /// reply as JSON, whatever its status.
    pub fn request(&mut self, request: &Value) -> Result<Value, ClientError> {
        let mut line =
            serde_json::to_vec(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        let reply = self.exchange(&line)?;
        serde_json::from_str(&reply).map_err(|e| bad_reply(e, &reply))
    }

    /// [`Client::request`], with an error reply as [`ClientError::Broker`].
    pub fn call(&mut self, request: &Value) -> Result<Value, ClientError> {
        let mut line =
            serde_json::to_vec(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.call_line(&line)
    }

    /// Sends a typed request and reads its typed reply; an error reply becomes
    /// [`ClientError::Broker`].
    fn call_as<T: DeserializeOwned>(&mut self, request: ClientRequest) -> Result<T, ClientError> {
        self.call_line(&request.to_line())
    }

    fn call_line<T: DeserializeOwned>(&mut self, line: &[u8]) -> Result<T, ClientError> {
        let reply = self.exchange(line)?;
        match parse_reply(reply.as_bytes()) {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(refusal)) => Err(refusal.into()),
            Err(e) => Err(bad_reply(e, &reply)),
        }
    }

    /// `ping`: the broker's version, mode and health. A broker whose database is gone or
    /// damaged answers with an error ([`ClientError::Broker`]).
    pub fn ping(&mut self) -> Result<PingReply, ClientError> {
        self.call_as(ClientRequest::Ping)
    }

    /// Registers `name`. With a secret, by challenge-response ([`Client::register_by_challenge`]):
    /// nothing that crosses the wire can be replayed, and a broker that cannot prove it knows
    /// the secret gets no register at all. Without one, as an open-mode broker expects.
    pub fn register(
        &mut self,
        name: &str,
        secret: Option<&str>,
    ) -> Result<Registered, ClientError> {
        self.register_with(name, secret, false)
    }

    /// Registers `name`; with `takeover`, even while another session is using it (that
    /// session is then told it was replaced).
    pub fn register_with(
        &mut self,
        name: &str,
        secret: Option<&str>,
        takeover: bool,
    ) -> Result<Registered, ClientError> {
        self.register_as(name, secret, takeover, None)
    }

    /// [`Client::register_with`], presenting `own_token`, the name's session this caller
    /// holds (if it still does, registering again is never refused as "in use").
    pub fn register_as(
        &mut self,
        name: &str,
        secret: Option<&str>,
        takeover: bool,
        own_token: Option<&str>,
    ) -> Result<Registered, ClientError> {
        let request = match secret {
            Some(secret) => self.challenge_register(name, secret)?,
            None => RegisterRequest {
                instance_id: name.to_owned(),
                auth_token: Some(String::new()),
                ..RegisterRequest::default()
            },
        };
        self.call_as(ClientRequest::Register(RegisterRequest {
            takeover: Some(takeover),
            session_token: own_token.map(str::to_owned),
            ..request
        }))
    }

    /// Registers `name` by challenge-response, not taking over a name in use.
    pub fn register_by_challenge(
        &mut self,
        name: &str,
        secret: &str,
    ) -> Result<Registered, ClientError> {
        self.register_as(name, Some(secret), false, None)
    }

    /// Asks for a challenge, checks the broker's proof that it knows `secret` (and sees this
    /// client as the user it is), and only then returns the register request carrying this
    /// client's proof over both nonces, the name and that uid. There is no fallback to the
    /// static token.
    fn challenge_register(
        &mut self,
        name: &str,
        secret: &str,
    ) -> Result<RegisterRequest, ClientError> {
        let proven = self.prove_broker(name, secret)?;
        let auth_proof = auth::client_proof(
            secret,
            name,
            &proven.server_nonce,
            &proven.client_nonce,
            proven.uid,
        );
        Ok(RegisterRequest {
            instance_id: name.to_owned(),
            challenge_id: Some(proven.challenge_id),
            auth_proof: Some(auth_proof),
            ..RegisterRequest::default()
        })
    }

    /// The legacy registration, as the Python original's scripts do it: the static
    /// `auth_token = sha256(name:secret)`, which never changes, so whoever sees it can replay
    /// it. For tests of that path; this project's clients use [`Client::register`].
    pub fn register_static_token(
        &mut self,
        name: &str,
        secret: &str,
    ) -> Result<Registered, ClientError> {
        self.call_as(ClientRequest::Register(RegisterRequest {
            instance_id: name.to_owned(),
            auth_token: Some(expected_auth_token(name, secret)),
            ..RegisterRequest::default()
        }))
    }

    /// Sends a `challenge` for `name` and checks the broker's `server_proof`, so the broker
    /// proves it knows `secret` before anything else is sent. A refusal, a wrong proof, or a
    /// broker that sees this connection as another user's is [`ClientError::BrokerUnproven`].
    pub fn prove_broker(
        &mut self,
        name: &str,
        secret: &str,
    ) -> Result<ProvenChallenge, ClientError> {
        let client_nonce = auth::fresh_nonce()?;
        let challenge: Challenge = self
            .call_as(ClientRequest::Challenge(ChallengeRequest {
                instance_id: name.to_owned(),
                client_nonce: client_nonce.clone(),
            }))
            .map_err(|error| match error {
                ClientError::Broker {
                    code: ErrorCode::UnknownAction,
                    ..
                } => self.unproven(
                    "it does not know the `challenge` action (an older broker, or the Python original); this client does not fall back to the static auth_token, which anyone who sees it can replay".into(),
                ),
                ClientError::Broker { code, message, .. } => {
                    let (code, message) = (
                        auth::printable(code.as_str(), 40),
                        auth::printable(&message, 400),
                    );
                    self.unproven(format!("it refused the challenge: {message} [{code}]"))
                }
                other => other,
            })?;
        let uid = self
            .proof_uid(challenge.client_uid.as_deref())
            .map_err(|reason| self.unproven(reason))?;
        let expected =
            auth::server_proof(secret, name, &client_nonce, &challenge.server_nonce, uid);
        if !constant_time_eq(challenge.server_proof.as_bytes(), expected.as_bytes()) {
            return Err(self.unproven(
                "its server_proof does not match your secret for this challenge".into(),
            ));
        }
        Ok(ProvenChallenge {
            challenge_id: challenge.challenge_id,
            client_nonce,
            server_nonce: challenge.server_nonce,
            uid,
        })
    }

    /// The uid to check the broker's proof with and to bind this client's proof to: this
    /// process's own, or "unknown" when the broker says it cannot tell and the connection is
    /// not local (a remote address, where no uid can be seen). A broker that sees a local
    /// connection as another uid is answering a relay run by that user.
    fn proof_uid(&self, seen_by_broker: Option<&str>) -> Result<ProofUid, String> {
        let own = ProofUid(Some(crate::os::users::effective_uid()));
        match seen_by_broker {
            Some(auth::UNKNOWN_UID) if !self.is_local() => Ok(ProofUid(None)),
            Some(seen) if seen != own.text() => Err(format!(
                "it sees this connection as uid {}, but this client runs as uid {}: another user's process may be relaying it",
                auth::printable(seen, 16),
                own.text()
            )),
            _ => Ok(own),
        }
    }

    /// Whether the broker is on this machine by the connection itself: the Unix socket, or
    /// a loopback TCP address.
    fn is_local(&self) -> bool {
        match &self.writer {
            Stream::Unix(_) => true,
            Stream::Tcp(stream) => stream.peer_addr().is_ok_and(|addr| addr.ip().is_loopback()),
        }
    }

    fn unproven(&self, reason: String) -> ClientError {
        let addr = match &self.target {
            Target::Tcp(addr) => addr.clone(),
            Target::Unix(path) => format!("socket {}", path.display()),
        };
        ClientError::BrokerUnproven { addr, reason }
    }

    /// Sends `content` (and optional `data`) to `to`. `nonce` makes a retry safe.
    pub fn send(
        &mut self,
        token: &str,
        to: &str,
        content: &str,
        data: Option<Value>,
        nonce: Option<&str>,
    ) -> Result<Sent, ClientError> {
        self.call_as(ClientRequest::Send(SendRequest {
            session_token: token.to_owned(),
            to_id: to.to_owned(),
            message: message(content, data),
            stamp: RequestStamp {
                nonce: nonce.map(str::to_owned),
                timestamp: None,
            },
            thread: ThreadingFields::default(),
        }))
    }

    pub fn broadcast(&mut self, token: &str, content: &str) -> Result<BroadcastReply, ClientError> {
        self.call_as(ClientRequest::Broadcast(BroadcastRequest {
            session_token: token.to_owned(),
            message: message(content, None),
            stamp: RequestStamp::default(),
            thread: ThreadingFields::default(),
        }))
    }

    /// The legacy check: what it returns is marked delivered once the reply is written.
    pub fn check(&mut self, token: &str) -> Result<Checked, ClientError> {
        self.check_with(token, CheckOptions::default())
    }

    /// A check with a manual ack, a long-poll, or a limit. While it long-polls, the read
    /// timeout is stretched to cover the wait.
    pub fn check_with(
        &mut self,
        token: &str,
        options: CheckOptions,
    ) -> Result<Checked, ClientError> {
        let request = ClientRequest::Check(CheckRequest {
            session_token: token.to_owned(),
            ack: options.manual_ack.map(|_| ManualAck::Manual),
            lease_ms: options.manual_ack.map(millis),
            limit: options.limit,
            wait_ms: options.wait.map(millis),
            reply_to: None,
        });
        match options.wait {
            Some(wait) => self.with_wait(wait, |client| client.call_as(request)),
            None => self.call_as(request),
        }
    }

    /// Settles mail a manual-ack check returned.
    pub fn ack(&mut self, token: &str, ids: &[i64]) -> Result<Acked, ClientError> {
        self.call_as(ClientRequest::Ack(AckRequest {
            session_token: token.to_owned(),
            ids: ids.to_vec(),
            release: false,
        }))
    }

    /// Every registered instance, in name order: follows `list`'s pages to the end.
    pub fn list(&mut self, token: &str) -> Result<Vec<Instance>, ClientError> {
        self.list_all(token, false)
    }

    /// Every registered instance without a session: the read-only list a broker gives a
    /// process of its own user (anyone else gets `invalid_session`).
    pub fn list_without_session(&mut self) -> Result<Vec<Instance>, ClientError> {
        self.list_all("", true)
    }

    fn list_all(
        &mut self,
        token: &str,
        without_session: bool,
    ) -> Result<Vec<Instance>, ClientError> {
        let mut instances = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page: InstancePage = self.call_as(ClientRequest::List(ListRequest {
                session_token: token.to_owned(),
                without_session,
                after: after.clone(),
                limit: None,
            }))?;
            instances.extend(page.instances);
            if !page.more {
                return Ok(instances);
            }
            match page.next_after {
                // A cursor that does not move on would ask for the same page for ever.
                Some(next) if after.as_deref().is_none_or(|last| next.as_str() > last) => {
                    after = Some(next.as_str().to_owned())
                }
                other => {
                    return Err(ClientError::Protocol(format!(
                        "`list` said there is more but gave no later cursor ({other:?})"
                    )))
                }
            }
        }
    }

    /// One page of `list`: instances named after `after`, at most `limit` of them.
    pub fn list_page(
        &mut self,
        token: &str,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<InstancePage, ClientError> {
        self.call_as(ClientRequest::List(ListRequest {
            session_token: token.to_owned(),
            without_session: false,
            after: after.map(str::to_owned),
            limit,
        }))
    }

    /// Ends this session, so the name is free for the next `register` without a takeover.
    pub fn logout(&mut self, token: &str) -> Result<LogoutReply, ClientError> {
        self.call_as(ClientRequest::Logout(LogoutRequest {
            session_token: token.to_owned(),
        }))
    }

    pub fn rename(&mut self, token: &str, new_name: &str) -> Result<RenameReply, ClientError> {
        self.call_as(ClientRequest::Rename(RenameRequest {
            session_token: token.to_owned(),
            new_id: new_name.to_owned(),
        }))
    }

    /// How much mail is waiting and from whom, without consuming any.
    pub fn count(&mut self, token: &str) -> Result<Waiting, ClientError> {
        self.call_as(ClientRequest::Count(CountRequest {
            session_token: token.to_owned(),
            wait_ms: None,
        }))
    }

    /// Like [`Client::count`], but with nothing waiting, waits up to `wait` for mail to
    /// arrive. It consumes nothing either way.
    pub fn count_waiting(&mut self, token: &str, wait: Duration) -> Result<Waiting, ClientError> {
        let request = ClientRequest::Count(CountRequest {
            session_token: token.to_owned(),
            wait_ms: Some(millis(wait)),
        });
        self.with_wait(wait, |client| client.call_as(request))
    }

    /// The caller's undelivered mail that `options.watcher` was never told about, recorded as
    /// announced to it; nothing is consumed, so a later `check` still returns it. While it
    /// long-polls, the read timeout is stretched to cover the wait.
    pub fn watch(
        &mut self,
        token: &str,
        options: &WatchOptions,
    ) -> Result<WatchReply, ClientError> {
        let request = ClientRequest::Watch(WatchRequest {
            session_token: token.to_owned(),
            watcher: options.watcher.clone(),
            wait_ms: options.wait.map(millis),
            limit: options.limit,
            push: options.push,
        });
        match options.wait {
            Some(wait) => self.with_wait(wait, |client| client.call_as(request)),
            None => self.call_as(request),
        }
    }

    /// Hands mail a manual-ack check leased back to the queue at once, unread.
    pub fn release(&mut self, token: &str, ids: &[i64]) -> Result<Released, ClientError> {
        self.call_as(ClientRequest::Ack(AckRequest {
            session_token: token.to_owned(),
            ids: ids.to_vec(),
            release: true,
        }))
    }

    /// Receipts for this session's own mail: what became of each message and when. Its
    /// newest `limit` messages (the broker's default of 20 without one), or exactly `ids`.
    pub fn sent(
        &mut self,
        token: &str,
        limit: Option<u32>,
        ids: Option<&[i64]>,
    ) -> Result<SentReply, ClientError> {
        self.call_as(ClientRequest::Sent(SentRequest {
            session_token: token.to_owned(),
            limit,
            ids: ids.map(<[i64]>::to_vec),
        }))
    }

    /// One page of this session's sent and received mail, newest first (see
    /// [`HistoryQuery`]).
    pub fn history(
        &mut self,
        token: &str,
        query: &HistoryQuery,
    ) -> Result<HistoryReply, ClientError> {
        self.call_as(ClientRequest::History(HistoryRequest {
            session_token: token.to_owned(),
            with: query.with.clone(),
            limit: query.limit,
            cursor: query.cursor.clone(),
            before: query.before,
        }))
    }

    /// Full-text search over the mail this session sent or received: `request.query` in the
    /// query language of `docs/PROTOCOL.md`, with its optional filters and page.
    pub fn search(
        &mut self,
        request: &crate::protocol::schema::SearchRequest,
    ) -> Result<crate::protocol::schema::SearchReply, ClientError> {
        self.call_as(ClientRequest::Search(request.clone()))
    }

    /// A handle that closes this connection from another thread.
    pub fn closer(&self) -> Result<Closer, ClientError> {
        Ok(Closer(self.writer.try_clone()?))
    }

    /// Runs `call` with the read timeout stretched to cover a long-poll of `wait`.
    fn with_wait<T>(
        &mut self,
        wait: Duration,
        call: impl FnOnce(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let usual = self.reader.get_ref().read_timeout()?;
        self.reader
            .get_ref()
            .set_read_timeout(Some(wait + usual.unwrap_or(WAIT_MARGIN)))?;
        let result = call(self);
        self.reader.get_ref().set_read_timeout(usual)?;
        result
    }
}

/// Which page of `history` to ask for; all `None` is the newest 20 of all the mail.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryQuery {
    /// Only the mail between this session and this instance.
    pub with: Option<String>,
    /// 1 to 100 messages (the broker's default is 20).
    pub limit: Option<u32>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Only mail the broker received before this time.
    pub before: Option<crate::domain::Timestamp>,
}

/// A reply this client cannot read, with the line it got.
fn bad_reply(error: serde_json::Error, line: &str) -> ClientError {
    ClientError::Protocol(format!("{error}: {}", line.trim_end()))
}

/// Whether two paths name one directory: compared after resolving links and `..`, as the
/// broker reports its own. A path that cannot be resolved (it does not exist) is compared as
/// written, which tells it apart from any directory a broker serves.
fn same_directory(ours: &Path, theirs: &Path) -> bool {
    let ours = std::fs::canonicalize(ours).unwrap_or_else(|_| ours.to_owned());
    ours == theirs
}
