//! A typed, blocking client for the broker's protocol, used by the CLI and the tests.
//!
//! It keeps one persistent connection, over TCP or the broker's Unix socket, and sends one
//! JSON request per line. Before it sends anything on a new connection, it checks that the
//! broker is run by the expected local user (see [`broker_owner`]).

mod broker_owner;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use chrono::{DateTime, Utc};

use crate::protocol::auth::{self, constant_time_eq, expected_auth_token, ProofUid};
use crate::protocol::ErrorCode;

pub use broker_owner::{BrokerUser, Expected, NamedUser, BROKER_USER_ENV};

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
        code: String,
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

impl ClientError {
    /// A stable code for scripts (`--json`): the broker's own code for its refusals.
    pub fn code(&self) -> &str {
        match self {
            ClientError::Unreachable { .. } => "unreachable",
            ClientError::Io(_) => "connection_failed",
            ClientError::Closed => "connection_closed",
            ClientError::Protocol(_) => "bad_reply",
            ClientError::Broker { code, .. } => code,
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
fn message(content: &str, data: Option<Value>) -> Value {
    let mut message = json!({"content": content});
    if let Some(data) = data {
        message["data"] = data;
    }
    message
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

    fn apply(&self, request: &mut Value) {
        request["nonce"] = self.nonce.clone().into();
        request["timestamp"] = crate::clock::to_text(self.timestamp).into();
    }
}

/// `register`'s reply.
#[derive(Debug, Clone, Deserialize)]
pub struct Registered {
    pub session_token: String,
    pub message: String,
    #[serde(default)]
    pub queued: u32,
}

/// `challenge`'s reply: the broker's nonce and its proof that it knows the secret.
#[derive(Debug, Clone, Deserialize)]
pub struct Challenge {
    pub challenge_id: String,
    pub server_nonce: String,
    pub server_proof: String,
    /// The uid the broker sees this connection as, which both proofs cover (`-`: unknown).
    #[serde(default)]
    pub client_uid: Option<String>,
    #[serde(default)]
    pub expires_in_ms: u64,
}

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

/// `send`'s reply.
#[derive(Debug, Clone, Deserialize)]
pub struct Sent {
    pub message: String,
    pub message_id: i64,
    #[serde(default)]
    pub duplicate: bool,
}

/// One message as `check` returns it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Received {
    pub id: i64,
    pub from: String,
    pub to: String,
    pub timestamp: String,
    pub message: Body,
    #[serde(default)]
    pub nonce: Option<String>,
    #[serde(default)]
    pub sender_timestamp: Option<String>,
    /// Which hand-out this is: 1 the first time, more after a lease ran out unacknowledged.
    #[serde(default)]
    pub delivery_count: u32,
    /// `direct`, `broadcast` or `system` (a notice from the broker itself).
    #[serde(default)]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Body {
    pub content: String,
    #[serde(default)]
    pub data: Option<Map<String, Value>>,
}

/// `check`'s reply.
#[derive(Debug, Clone, Deserialize)]
pub struct Checked {
    pub messages: Vec<Received>,
    #[serde(default)]
    pub more: bool,
    /// With a manual ack: until when the returned mail is held for this reader.
    #[serde(default)]
    pub lease_until: Option<String>,
}

impl Checked {
    pub fn ids(&self) -> Vec<i64> {
        self.messages.iter().map(|m| m.id).collect()
    }
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

/// `ack`'s reply. The lists hold only the first few ids of each kind; the counts cover all.
#[derive(Debug, Clone, Deserialize)]
pub struct Acked {
    pub acked: u32,
    #[serde(default)]
    pub already_acked: Vec<i64>,
    #[serde(default)]
    pub already_acked_count: u32,
    #[serde(default)]
    pub refused: Vec<Refused>,
    #[serde(default)]
    pub refused_count: u32,
    /// Some ids were counted but not listed.
    #[serde(default)]
    pub truncated: bool,
}

/// `ack` with `release`'s reply.
#[derive(Debug, Clone, Deserialize)]
pub struct Released {
    pub released: u32,
    #[serde(default)]
    pub already_acked: Vec<i64>,
    #[serde(default)]
    pub refused: Vec<Refused>,
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

/// An id an `ack` could not settle, and why.
#[derive(Debug, Clone, Deserialize)]
pub struct Refused {
    pub id: i64,
    pub code: String,
    pub message: String,
}

/// `count`'s reply: waiting mail, not consumed.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Waiting {
    pub count: u32,
    /// Distinct senders, by their oldest waiting message; at most ten.
    pub senders: Vec<String>,
}

/// One entry of `list`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Instance {
    pub id: String,
    pub last_seen: String,
}

/// One page of `list`: instances in name order, and where the next page starts.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct InstancePage {
    pub instances: Vec<Instance>,
    #[serde(default)]
    pub more: bool,
    /// With `more`: the last name on this page, to pass as `after` for the next.
    #[serde(default)]
    pub next_after: Option<String>,
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
        let reply = self.request(&json!({"action": "ping"}))?;
        if check.holds_secret {
            match reply["mode"].as_str() {
                Some("secret") => {}
                Some("open") => {
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
        if let (Some(ours), Some(theirs)) = (&check.data_dir, reply["data_dir"].as_str()) {
            if !same_directory(ours, Path::new(theirs)) {
                return Err(ClientError::DataDirMismatch {
                    target: self.target(),
                    ours: ours.display().to_string(),
                    theirs: theirs.to_owned(),
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
    fn call_stamped<T: for<'de> Deserialize<'de>>(
        &mut self,
        mut request: Value,
        stamp: &Stamp,
    ) -> Result<T, ClientError> {
        stamp.apply(&mut request);
        match self.call_as(&request) {
            Err(ClientError::Io(_) | ClientError::Closed) => {
                *self = self.reconnect()?;
                self.call_as(&request)
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
        let mut request = json!({"action": "send", "session_token": token, "to_id": to});
        request["message"] = message(content, data);
        self.call_stamped(request, stamp)
    }

    /// `broadcast` with a stamp, retried once with the same nonce after a connection failure.
    pub fn broadcast_stamped(
        &mut self,
        token: &str,
        content: &str,
        data: Option<Value>,
        stamp: &Stamp,
    ) -> Result<Value, ClientError> {
        let mut request = json!({"action": "broadcast", "session_token": token});
        request["message"] = message(content, data);
        self.call_stamped(request, stamp)
    }

    /// Changes how long each later request may wait for the broker (say, for a long poll).
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        self.writer.set_read_timeout(Some(timeout))?;
        self.writer.set_write_timeout(Some(timeout))?;
        self.timeout = timeout;
        Ok(())
    }

    /// Sends any request and returns the reply as JSON, whatever its status.
    pub fn request(&mut self, request: &Value) -> Result<Value, ClientError> {
        let mut line =
            serde_json::to_vec(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        let mut reply = String::new();
        if self.reader.read_line(&mut reply)? == 0 {
            return Err(ClientError::Closed);
        }
        serde_json::from_str(&reply).map_err(|e| ClientError::Protocol(format!("{e}: {reply}")))
    }

    /// Sends a request; an error reply becomes [`ClientError::Broker`].
    pub fn call(&mut self, request: &Value) -> Result<Value, ClientError> {
        let reply = self.request(request)?;
        if reply["status"] == "ok" {
            return Ok(reply);
        }
        Err(ClientError::Broker {
            code: reply["code"].as_str().unwrap_or("unknown").to_owned(),
            message: reply["message"]
                .as_str()
                .unwrap_or("(no message)")
                .to_owned(),
            hint: reply["hint"].as_str().map(str::to_owned),
        })
    }

    fn call_as<T: for<'de> Deserialize<'de>>(&mut self, request: &Value) -> Result<T, ClientError> {
        let reply = self.call(request)?;
        serde_json::from_value(reply.clone())
            .map_err(|e| ClientError::Protocol(format!("{e}: {reply}")))
    }

    pub fn ping(&mut self) -> Result<Value, ClientError> {
        self.call(&json!({"action": "ping"}))
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
        let mut request = match secret {
            Some(secret) => self.challenge_register(name, secret)?,
            None => json!({"action": "register", "instance_id": name, "auth_token": ""}),
        };
        request["takeover"] = takeover.into();
        if let Some(token) = own_token {
            request["session_token"] = token.into();
        }
        self.call_as(&request)
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
    fn challenge_register(&mut self, name: &str, secret: &str) -> Result<Value, ClientError> {
        let proven = self.prove_broker(name, secret)?;
        let auth_proof = auth::client_proof(
            secret,
            name,
            &proven.server_nonce,
            &proven.client_nonce,
            proven.uid,
        );
        Ok(json!({
            "action": "register", "instance_id": name, "challenge_id": proven.challenge_id,
            "auth_proof": auth_proof,
        }))
    }

    /// The legacy registration, as the Python original's scripts do it: the static
    /// `auth_token = sha256(name:secret)`, which never changes, so whoever sees it can replay
    /// it. For tests of that path; this project's clients use [`Client::register`].
    pub fn register_static_token(
        &mut self,
        name: &str,
        secret: &str,
    ) -> Result<Registered, ClientError> {
        let auth_token = expected_auth_token(name, secret);
        self.call_as(&json!({"action": "register", "instance_id": name, "auth_token": auth_token}))
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
            .call_as(
                &json!({"action": "challenge", "instance_id": name, "client_nonce": client_nonce}),
            )
            .map_err(|error| match error {
                ClientError::Broker { code, .. } if code == "unknown_action" => self.unproven(
                    "it does not know the `challenge` action (an older broker, or the Python original); this client does not fall back to the static auth_token, which anyone who sees it can replay".into(),
                ),
                ClientError::Broker { code, message, .. } => {
                    let (code, message) =
                        (auth::printable(&code, 40), auth::printable(&message, 400));
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
        let mut request = json!({"action": "send", "session_token": token, "to_id": to});
        request["message"] = message(content, data);
        if let Some(nonce) = nonce {
            request["nonce"] = nonce.into();
        }
        self.call_as(&request)
    }

    pub fn broadcast(&mut self, token: &str, content: &str) -> Result<Value, ClientError> {
        self.call(&json!({
            "action": "broadcast", "session_token": token, "message": {"content": content},
        }))
    }

    /// The legacy check: what it returns is marked delivered once the reply is written.
    pub fn check(&mut self, token: &str) -> Result<Checked, ClientError> {
        self.call_as(&json!({"action": "check", "session_token": token}))
    }

    /// A check with a manual ack, a long-poll, or a limit. While it long-polls, the read
    /// timeout is stretched to cover the wait.
    pub fn check_with(
        &mut self,
        token: &str,
        options: CheckOptions,
    ) -> Result<Checked, ClientError> {
        let mut request = json!({"action": "check", "session_token": token});
        if let Some(lease) = options.manual_ack {
            request["ack"] = "manual".into();
            request["lease_ms"] = millis(lease).into();
        }
        if let Some(limit) = options.limit {
            request["limit"] = limit.into();
        }
        let Some(wait) = options.wait else {
            return self.call_as(&request);
        };
        request["wait_ms"] = millis(wait).into();
        self.with_wait(wait, |client| client.call_as(&request))
    }

    /// Settles mail a manual-ack check returned.
    pub fn ack(&mut self, token: &str, ids: &[i64]) -> Result<Acked, ClientError> {
        self.call_as(&json!({"action": "ack", "session_token": token, "ids": ids}))
    }

    /// Every registered instance, in name order: follows `list`'s pages to the end.
    pub fn list(&mut self, token: &str) -> Result<Vec<Instance>, ClientError> {
        let mut instances = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.list_page(token, after.as_deref(), None)?;
            instances.extend(page.instances);
            if !page.more {
                return Ok(instances);
            }
            match page.next_after {
                // A cursor that does not move on would ask for the same page for ever.
                Some(next) if after.as_deref().is_none_or(|last| next.as_str() > last) => {
                    after = Some(next)
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
        let mut request = json!({"action": "list", "session_token": token});
        if let Some(after) = after {
            request["after"] = after.into();
        }
        if let Some(limit) = limit {
            request["limit"] = limit.into();
        }
        self.call_as(&request)
    }

    /// Ends this session, so the name is free for the next `register` without a takeover.
    pub fn logout(&mut self, token: &str) -> Result<Value, ClientError> {
        self.call(&json!({"action": "logout", "session_token": token}))
    }

    pub fn rename(&mut self, token: &str, new_name: &str) -> Result<Value, ClientError> {
        self.call(&json!({"action": "rename", "session_token": token, "new_id": new_name}))
    }

    /// How much mail is waiting and from whom, without consuming any.
    pub fn count(&mut self, token: &str) -> Result<Waiting, ClientError> {
        self.call_as(&json!({"action": "count", "session_token": token}))
    }

    /// Like [`Client::count`], but with nothing waiting, waits up to `wait` for mail to
    /// arrive. It consumes nothing either way.
    pub fn count_waiting(&mut self, token: &str, wait: Duration) -> Result<Waiting, ClientError> {
        let request = json!({"action": "count", "session_token": token, "wait_ms": millis(wait)});
        self.with_wait(wait, |client| client.call_as(&request))
    }

    /// Hands mail a manual-ack check leased back to the queue at once, unread.
    pub fn release(&mut self, token: &str, ids: &[i64]) -> Result<Released, ClientError> {
        self.call_as(&json!({"action": "ack", "session_token": token, "ids": ids, "release": true}))
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

/// Whether two paths name one directory: compared after resolving links and `..`, as the
/// broker reports its own. A path that cannot be resolved (it does not exist) is compared as
/// written, which tells it apart from any directory a broker serves.
fn same_directory(ours: &Path, theirs: &Path) -> bool {
    let ours = std::fs::canonicalize(ours).unwrap_or_else(|_| ours.to_owned());
    ours == theirs
}
