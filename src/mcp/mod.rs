//! The MCP server (`claude-ipc mcp`): tools for a model over the typed [`Client`].
//!
//! The server keeps the session: the model names itself once with `register`, and every other
//! tool speaks as that session. The token never appears in a tool result. Failures come back as
//! tool errors (`isError`) that say what went wrong and what to do.
//!
//! A tool call the client cancels (or abandons) consumes no mail: `wait_for_messages` only
//! counts what is waiting and leaves the reading to `check`, and `check` acknowledges what it
//! read only if the call was not cancelled by then, handing it back to the queue otherwise.
//!
//! In channel mode ([`channel`]) the server also pushes each message into the client's session
//! as it arrives, and the model settles it with the `ack` tool; a push alone settles nothing.
//!
//! The client is blocking, so each broker call runs on tokio's blocking pool with a fresh
//! loopback connection; a cancelled call closes that connection, which ends its long-poll. One client implementation serves the CLI, the tests and this server,
//! and a fresh connection per call means a broker takeover between two calls needs no
//! reconnection logic beyond the election in [`election`].

pub mod channel;
pub mod command;
pub mod election;
pub mod format;
pub mod guard;
mod history;
pub mod share_file;
pub mod threads;

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    ContentBlock, Implementation, IntoContents, ProtocolVersion, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{schemars, tool, tool_handler, tool_router, RoleServer, ServerHandler};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::client::{CheckOptions, Client, ClientError, Stamp, Waiting};
use crate::config::Config;
use crate::domain::MessageId;
use crate::protocol::schema::requests::ThreadingFields;
use crate::protocol::schema::BroadcastReply;
use crate::relative_time::recipient_reach;
use crate::session_file::SessionFile;
use election::Election;

/// How long mail a tool read stays leased to it before it is handed out again unacknowledged.
/// The ack follows within milliseconds; the lease only matters if this process or the broker
/// dies in between.
pub(crate) const CHECK_LEASE: Duration = Duration::from_secs(30);
/// How many times a call is retried after losing its connection to the broker.
const CONNECTION_RETRIES: u32 = 3;
/// The pause before the first such retry; it grows with each one.
const CONNECTION_RETRY_PAUSE: Duration = Duration::from_millis(50);
/// `wait_for_messages` without a timeout waits this long.
const WAIT_DEFAULT_SECONDS: u64 = 30;
/// `wait_for_messages` never waits longer than this (the broker's long-poll cap).
const WAIT_MAX_SECONDS: u64 = 300;
/// The largest file `share_file` sends; the broker refuses requests over 1 MiB, and JSON
/// escaping can nearly double text.
const SHARE_FILE_MAX_BYTES: u64 = 512 * 1024;

/// What the MCP server needs besides the broker's own configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The broker's configuration, used to find it and, if none answers, to host it.
    pub broker: Config,
    /// Write the session to the CLI's session file (`IPC_SESSION_FILE` is set).
    pub write_session_file: bool,
    /// `share_command`'s timeout.
    pub command_timeout: Duration,
    /// `share_command` keeps at most this many bytes of stdout and of stderr.
    pub command_output_cap: usize,
    /// `share_command` runs only when the user enabled it in the server's configuration
    /// (`--allow-share-command`, `IPC_ALLOW_SHARE_COMMAND=1`): text from another instance can
    /// talk a model into running a command.
    pub allow_share_command: bool,
    /// The data directory was given (`IPC_DATA_DIR`, `--data-dir`): a broker serving another
    /// is refused (`data_dir_mismatch`).
    pub data_dir_configured: bool,
    /// Channel mode (`--channel`, `IPC_CHANNEL=1`): declare the `claude/channel` capability,
    /// cap the MCP revision and push mail as it arrives (see [`channel`]).
    pub channel: bool,
}

/// A failure a tool reports to the model: what went wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("Not registered yet: call register with a name for this instance first (for example register(instance_id=\"alice\")).")]
    NotRegistered,
    #[error("No broker answers at {target} and none could be started here ({reason}). Check IPC_ADDR (or IPC_SOCKET) and IPC_DATA_DIR, or start one with `claude-ipc serve`.")]
    NoBroker { target: String, reason: String },
    #[error("The broker refused: {message} [{code}]. {hint}")]
    Refused {
        code: String,
        message: String,
        hint: &'static str,
    },
    #[error("Talking to the broker failed: {0}. Try again; if it keeps failing, check the MCP server's log.")]
    Client(ClientError),
    /// The broker is run by another user (or nobody can tell who runs it): nothing was sent.
    #[error("{0}")]
    UntrustedBroker(ClientError),
    #[error("{0}")]
    Input(String),
    #[error("The call was cancelled; no mail was consumed.")]
    Cancelled,
    /// This server refused the broker it found (open mode although it has the secret, or
    /// another data directory): retrying reaches the same broker, so the text says what a
    /// person must do.
    #[error("Refusing the broker: {0}.")]
    BrokerRefused(ClientError),
    #[error("No broker answers at {target}, and this MCP server may not host one: {refusal} [data_dir_protected].")]
    DataDirProtected { target: String, refusal: String },
    #[error("Your name was taken over by another session: {detail}. This server does not register again on its own, so two holders never keep replacing each other. Call register with takeover: true only if you are sure the other holder is gone or the user asked you to; otherwise register another name.")]
    Replaced { detail: String },
    #[error("This server's session ended (the broker no longer knew it), and registering {name} again was refused: {message} [{code}]. Another session now uses {name}: call register with takeover: true only if you are sure it is gone or the user asked you to; otherwise register another name.")]
    LostName {
        name: String,
        code: String,
        message: String,
    },
    #[error("share_command is disabled on this MCP server, so nothing was run or sent: a message from another instance could otherwise talk you into running a command here. Only the user can enable it, in this server's configuration: start it as `claude-ipc mcp --allow-share-command`, or set IPC_ALLOW_SHARE_COMMAND=1 in its environment (for Claude Code: `claude mcp add claude-ipc -s user -e IPC_ALLOW_SHARE_COMMAND=1 -- claude-ipc mcp`). Tell the user if they want this; do not work around it.")]
    ShareCommandDisabled,
    #[error("Refusing to send {what}: it contains {secret}, which must never leave this server. Nothing was sent.")]
    WouldLeak { what: String, secret: &'static str },
}

impl From<ClientError> for ToolError {
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::Broker {
                code,
                hint: Some(detail),
                ..
            } if code == "session_replaced" => ToolError::Replaced { detail },
            ClientError::Broker { code, message, .. } => ToolError::Refused {
                hint: hint_for(code.as_str()),
                code: code.as_str().to_owned(),
                message,
            },
            // Its text quotes the raw reply, which for a register holds the new token: neither
            // the model nor the log may see that.
            ClientError::Protocol(_) => ToolError::Client(ClientError::Protocol(
                "a reply this server does not understand (is another program listening at IPC_ADDR?)"
                    .to_owned(),
            )),
            untrusted if untrusted.is_untrusted_broker() => ToolError::UntrustedBroker(untrusted),
            refused if refused.is_broker_refused() => ToolError::BrokerRefused(refused),
            other => ToolError::Client(other),
        }
    }
}

impl ToolError {
    fn is_invalid_session(&self) -> bool {
        matches!(self, ToolError::Refused { code, .. } if code == "invalid_session")
    }
}

/// What to do about a broker refusal, by its code.
fn hint_for(code: &str) -> &'static str {
    match code {
        "invalid_auth" => {
            "IPC_SHARED_SECRET in this MCP server's environment must match the broker's."
        }
        "invalid_session" => "Call register again with your name.",
        "challenge_failed" => "Call register again; it asks for a new challenge.",
        "invalid_name" => "Names are 1-32 letters, digits, hyphens or underscores.",
        "name_taken" => "Choose another name, or ask its holder to rename.",
        "rename_cooldown" | "rate_limited" => "Wait and try again later.",
        "queue_full" => "The recipient must read its mail (check) before more can be sent.",
        "data_too_large" => "Put large payloads in content instead of data.",
        "reserved_name" | "name_too_similar" => {
            "Choose another name; to send, use the name of a registered instance (list_instances)."
        }
        "name_in_use" => "Another session uses this name now. Register another name, or pass takeover: true only if you are sure that session is gone or the user asked you to.",
        "session_replaced" => "Another session registered your name. Register with takeover: true only if you are sure it is gone or the user asked you to; otherwise register another name.",
        "same_name" => "Nothing to do.",
        "unknown_thread" | "unknown_reply_to" => {
            "Use an id that check, thread or history showed you (a message you sent or received)."
        }
        _ => "Fix the request and try again.",
    }
}

/// The session this server speaks as.
#[derive(Debug, Clone)]
struct Identity {
    name: String,
    token: String,
}

/// The MCP server: tools over the broker, with the session kept out of the model's sight.
#[derive(Clone)]
pub struct IpcServer {
    state: Arc<State>,
}

struct State {
    settings: Settings,
    election: Election,
    /// A std `Mutex`: it is only held to copy or replace the identity, never across `.await`.
    identity: Mutex<Option<Identity>>,
    /// Bumped whenever the identity changes, so the push loop (channel mode) starts or moves
    /// its long-poll to the new session at once.
    identity_changed: tokio::sync::watch::Sender<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RegisterArgs {
    /// The name for this instance: 1-32 letters, digits, hyphens or underscores.
    pub instance_id: String,
    /// Replace another session that is using this name now (default false). Only when you
    /// are sure the other holder is gone, or the user asked: it loses the name and its mail.
    #[serde(default)]
    pub takeover: bool,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SendArgs {
    /// The recipient's name (it need not be registered yet).
    pub to_id: String,
    /// The message text.
    pub content: String,
    /// Optional structured data: a JSON object.
    #[serde(default)]
    #[schemars(extend("type" = ["object", "null"]))]
    pub data: Option<Value>,
    /// Optional subject: 1-200 characters on one line. A reply without one keeps its thread's.
    #[serde(default)]
    pub subject: Option<String>,
    /// Optional: the id of the message this answers (as check, thread or a channel tag showed
    /// it); the message joins that message's thread. The reply tool finds the recipient itself.
    #[serde(default)]
    pub reply_to: Option<AckId>,
    /// Optional: after sending, wait up to this many seconds (0-300) for the recipient's
    /// answer and return it in the same result. Other mail is left waiting.
    #[serde(default)]
    pub wait_for_reply_seconds: Option<f64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ReplyArgs {
    /// The id of the message to answer: the msg_id of a channel tag, or the id check or
    /// thread showed.
    pub msg_id: AckId,
    /// The reply text.
    pub content: String,
    /// Optional subject: 1-200 characters on one line; without it the reply keeps its thread's.
    #[serde(default)]
    pub subject: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ThreadArgs {
    /// The thread's id, as check or thread showed it.
    #[serde(default)]
    pub thread_id: Option<AckId>,
    /// Or the id of any message in the thread.
    #[serde(default)]
    pub msg_id: Option<AckId>,
    /// The cursor a previous thread call gave, for the thread's later messages.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Show every message whole instead of one line each (default false).
    #[serde(default)]
    pub full: bool,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct BroadcastArgs {
    /// The message text.
    pub content: String,
    /// Optional structured data: a JSON object.
    #[serde(default)]
    #[schemars(extend("type" = ["object", "null"]))]
    pub data: Option<Value>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RenameArgs {
    /// The new name: 1-32 letters, digits, hyphens or underscores.
    pub new_id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ShareFileArgs {
    /// The recipient's name.
    pub to_id: String,
    /// Path of a local text file (relative paths are from this server's working directory).
    pub filepath: String,
    /// Optional note on what the file is and why it is shared.
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ShareCommandArgs {
    /// The recipient's name.
    pub to_id: String,
    /// A program and its arguments, quoted like in a shell; it runs without a shell.
    pub command: String,
    /// Optional note on why the output is shared.
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SentArgs {
    /// How many of your newest messages to report (1-500, default 20).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Only these message ids (as send returned them), instead of your newest.
    #[serde(default)]
    pub ids: Option<Vec<i64>>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
pub struct SearchArgs {
    /// What to look for: words (all must match), "exact phrases", prefixes like deploy* (2+
    /// letters before the *), OR, NOT, ( ) to group; operators in capitals.
    pub query: String,
    /// Only mail sent by this instance.
    #[serde(default)]
    pub from: Option<String>,
    /// Only mail received by this instance.
    #[serde(default)]
    pub to: Option<String>,
    /// Only this thread (a thread id, as check and thread show it).
    #[serde(default)]
    pub thread_id: Option<i64>,
    /// Only mail since this RFC 3339 time, like 2026-12-01T09:00:00Z.
    #[serde(default)]
    pub since: Option<String>,
    /// How many results (1-100, default 20).
    #[serde(default)]
    pub limit: Option<u32>,
    /// The cursor a previous search gave, for its next page.
    #[serde(default)]
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct WaitArgs {
    /// How long to wait for mail, in seconds (default 30, at most 300).
    #[serde(default)]
    pub timeout_seconds: Option<f64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct AckArgs {
    /// The msg_id of each message to acknowledge, as the channel tag or check showed it
    /// (for example [41, 42]).
    pub ids: Vec<AckId>,
}

/// A message id as a model passes it: a number, or the string a channel tag's `msg_id`
/// attribute holds (every channel meta value is a string).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum AckId {
    Number(i64),
    Text(String),
}

impl AckId {
    fn parse(&self) -> Result<i64, ToolError> {
        match self {
            AckId::Number(id) => Ok(*id),
            AckId::Text(text) => text.trim().parse().map_err(|_| {
                ToolError::Input(format!(
                    "`{text}` is not a message id: pass the msg_id numbers, like ids=[41, 42]. Nothing was acknowledged."
                ))
            }),
        }
    }
}

/// A tool's failure as the model sees it: its text, in a result marked `isError` (rmcp marks
/// the `Err` of a tool's `Result` so).
impl IntoContents for ToolError {
    fn into_contents(self) -> Vec<ContentBlock> {
        tracing::debug!("tool error: {self}");
        vec![ContentBlock::text(self.to_string())]
    }
}

#[tool_router]
impl IpcServer {
    pub fn new(settings: Settings) -> Self {
        let election = Election::new(settings.broker.clone(), settings.data_dir_configured);
        IpcServer {
            state: Arc::new(State {
                settings,
                election,
                identity: Mutex::new(None),
                identity_changed: tokio::sync::watch::Sender::new(0),
            }),
        }
    }

    /// Stops the broker this process hosts, if any.
    pub async fn shutdown(&self) {
        self.log_out().await;
        self.state.election.shutdown().await;
    }

    /// Ends this server's session on the way out, so that the server started next (Claude Code
    /// restarting, say) can register the same name without taking it over. Best effort: a
    /// broker that is gone, or a session already replaced, has nothing to end.
    async fn log_out(&self) {
        let Ok(identity) = self.identity() else {
            return;
        };
        let client = self.state.election.connect_without_hosting().await;
        let token = identity.token.clone();
        let ended = match client {
            Ok(mut client) => blocking(move || client.logout(&token)).await.map(|_| ()),
            Err(error) => Err(error),
        };
        match ended {
            Ok(()) => tracing::info!(name = %identity.name, "logged out: the name is free"),
            Err(error) => tracing::info!(name = %identity.name, "could not log out: {error}"),
        }
    }

    #[tool(
        description = "Use first, once per session: registers this instance under a name so others can message it; says how many messages are waiting. A name another session is using is refused; set takeover to true only if you are sure that session is gone or the user asked you to take the name over."
    )]
    async fn register(
        &self,
        Parameters(args): Parameters<RegisterArgs>,
    ) -> Result<String, ToolError> {
        let RegisterArgs {
            instance_id: name,
            takeover,
        } = args;
        let registration = self.register_name(name.clone(), takeover).await?;
        let waiting = match registration.queued {
            0 => "No messages are waiting.".to_owned(),
            n => format!(
                "{} waiting: call check to read them.",
                format::messages(n as usize)
            ),
        };
        Ok(format!("Registered as {name}. {waiting}"))
    }

    #[tool(
        description = "Use to send a message to one other instance by name (it may register later; the mail waits). To ask a question and get the answer in the same call, set wait_for_reply_seconds. To answer a message, the reply tool is simplest (it finds the recipient and keeps the thread); send with reply_to does the same, also for one pushed as a <channel source=\"claude-ipc\"> tag (to_id = its from): never reply with Claude Code's own SendMessage, which does not reach other instances."
    )]
    async fn send(
        &self,
        Parameters(args): Parameters<SendArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<String, ToolError> {
        let wait = threads::reply_wait(args.wait_for_reply_seconds)?;
        let thread = ThreadingFields {
            reply_to: args.reply_to.as_ref().map(AckId::parse).transpose()?,
            subject: args.subject,
        };
        let (text, id) = self
            .send_threaded(Some(args.to_id), args.content, args.data, thread)
            .await?;
        match (wait, id) {
            (Some(seconds), Some(id)) => {
                let answer = self.await_reply(id, seconds, &context.ct).await?;
                Ok(format!("{text}\n{answer}"))
            }
            _ => Ok(text),
        }
    }

    #[tool(
        description = "Use to answer a message, whether you received it or sent it: the reply goes to its other party and joins its thread, so the conversation stays together. msg_id is the id check, thread or a <channel> tag showed. To wait for the answer to your reply, use send with reply_to and wait_for_reply_seconds instead."
    )]
    async fn reply(&self, Parameters(args): Parameters<ReplyArgs>) -> Result<String, ToolError> {
        let id = args.msg_id.parse()?;
        self.reply_to_message(id, args.content, args.subject).await
    }

    #[tool(
        description = "Use to read a conversation back, e.g. to recall what was said earlier: the messages of one thread that you sent or received, oldest first, one line each (full=true for whole messages). Give thread_id, or msg_id of any message in it. Consumes nothing; mail already read is included."
    )]
    async fn thread(&self, Parameters(args): Parameters<ThreadArgs>) -> Result<String, ToolError> {
        let id = match (&args.thread_id, &args.msg_id) {
            (Some(id), None) | (None, Some(id)) => id.parse()?,
            (Some(thread), Some(msg)) if thread.parse()? == msg.parse()? => thread.parse()?,
            _ => {
                return Err(ToolError::Input(
                    "Give thread_id (or msg_id of a message in the thread), one of them, like thread_id=41.".to_owned(),
                ))
            }
        };
        self.thread_text(id, args.cursor, args.full).await
    }

    #[tool(description = "Use to send one message to every other registered instance.")]
    async fn broadcast(
        &self,
        Parameters(args): Parameters<BroadcastArgs>,
    ) -> Result<String, ToolError> {
        self.send_message(None, args.content, args.data).await
    }

    /// Reads waiting mail, leased to this reader, and acknowledges it only once the tool's
    /// text is built and only if the call was not cancelled by then; a cancelled call hands
    /// the mail back to the queue at once. A broker that dies in between hands the mail out
    /// again when the lease runs out, instead of losing it.
    #[tool(
        description = "Use to read your waiting messages (each is shown once), e.g. when the user says \"check messages\"."
    )]
    async fn check(&self, context: RequestContext<RoleServer>) -> Result<String, ToolError> {
        let cancelled = context.ct;
        let secrets = Arc::new(self.secrets().await);
        let (text, handed_back) = self
            .as_session(move |client, token| {
                let options = CheckOptions {
                    manual_ack: Some(CHECK_LEASE),
                    wait: None,
                    limit: None,
                };
                let checked = client.check_with(token, options)?;
                // The token this call used may be a renewed one: guard it too.
                let secrets = secrets.and_token(token);
                let text = format::mail(&checked, chrono::Utc::now(), &secrets);
                if checked.messages.is_empty() {
                    return Ok((text, false));
                }
                if cancelled.is_cancelled() {
                    client.release(token, &checked.ids())?;
                    return Ok((text, true));
                }
                let acked = client.ack(token, &checked.ids())?;
                if !acked.refused.is_empty() {
                    tracing::warn!(refused = ?acked.refused, "the broker refused some acks; that mail may come again");
                }
                Ok((text, false))
            })
            .await?;
        if handed_back {
            tracing::info!("check was cancelled; its mail was handed back unread");
            return Err(ToolError::Cancelled);
        }
        Ok(text)
    }

    #[tool(
        description = "Use to see what became of messages you sent: waiting, read (handed out, not acknowledged yet), delivered or expired, and when; your newest by default, or the ids send returned."
    )]
    async fn sent(&self, Parameters(args): Parameters<SentArgs>) -> Result<String, ToolError> {
        let SentArgs { limit, ids } = args;
        let reply = self
            .as_session(move |client, token| client.sent(token, limit, ids.as_deref()))
            .await?;
        let hint = "More of your mail is kept: call sent with a larger limit, or with ids.";
        Ok(format::receipts(&reply, chrono::Utc::now(), hint))
    }

    #[tool(
        description = "Use to look back at your conversations: the messages you sent and received (delivered ones too, kept 30 days by default), newest first, one line each; with=\"bob\" shows only those between you and bob. Reading history changes nothing (waiting mail stays waiting for check). Page back with the cursor it gives."
    )]
    async fn history(
        &self,
        Parameters(args): Parameters<history::HistoryArgs>,
    ) -> Result<String, ToolError> {
        self.history_text(args).await
    }

    #[tool(
        description = "Use to find earlier messages you sent or received by what they said (\"what did alice say about the API?\"): full-text search over subject and content, best match first, one line each with the matched words in [brackets]. Query: words (all must match), \"exact phrases\", prefixes like deploy*, OR, NOT, parentheses; narrow with from, to, thread_id, since. Reading never marks mail delivered."
    )]
    async fn search(&self, Parameters(args): Parameters<SearchArgs>) -> Result<String, ToolError> {
        let reply = self
            .as_session(move |client, token| {
                client.search(&crate::protocol::schema::SearchRequest {
                    session_token: token.to_owned(),
                    query: args.query.clone(),
                    from: args.from.clone(),
                    to: args.to.clone(),
                    thread_id: args.thread_id,
                    since: args.since.clone(),
                    limit: args.limit,
                    cursor: args.cursor.clone(),
                })
            })
            .await?;
        let hints = format::SearchHints {
            next_page: "call search again with the same query and cursor",
            whole_message:
                "call thread with msg_id=<the #id> to read a match whole, in its conversation.",
        };
        Ok(format::search_results(&reply, chrono::Utc::now(), &hints))
    }

    /// Settles mail by id: pushed mail stays waiting until this (or `check`). The broker's
    /// `ack` settles waiting mail whether or not a check leased it.
    #[tool(
        description = "Use after reading messages pushed as <channel source=\"claude-ipc\" msg_id=...> tags: acknowledges them by msg_id (ids=[41, 42]). Until acknowledged a message stays waiting, check shows it again and a new session pushes it again. Reply to it with send, not SendMessage."
    )]
    async fn ack(&self, Parameters(args): Parameters<AckArgs>) -> Result<String, ToolError> {
        let ids = args
            .ids
            .iter()
            .map(AckId::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if ids.is_empty() {
            return Err(ToolError::Input(
                "`ids` is empty: pass the msg_id of each message to acknowledge, like ids=[41, 42]."
                    .to_owned(),
            ));
        }
        let acked = self
            .as_session(move |client, token| client.ack(token, &ids))
            .await?;
        Ok(format::acked(&acked))
    }

    #[tool(
        description = "Use to see which instances are registered, which are online now (and whether mail is pushed into their session), and when each was last seen."
    )]
    async fn list_instances(&self) -> Result<String, ToolError> {
        let instances = self.as_session(|client, token| client.list(token)).await?;
        let me = self.identity()?.name;
        Ok(format::instances(&instances, &me, chrono::Utc::now()))
    }

    #[tool(
        description = "Use to change this instance's name, at most once an hour (the broker refuses a sooner rename and says when it may be done); mail to the old name forwards to the new one for a while."
    )]
    async fn rename(&self, Parameters(args): Parameters<RenameArgs>) -> Result<String, ToolError> {
        let new_name = args.new_id;
        let wanted = new_name.clone();
        let reply = self
            .as_session(move |client, token| client.rename(token, &wanted))
            .await?;
        let token = self.identity()?.token;
        self.set_identity(Identity {
            name: new_name.clone(),
            token,
        });
        let said = reply.message.as_str();
        Ok(format!(
            "{said}. You are now {new_name}; mail to the old name forwards to you for a while."
        ))
    }

    #[tool(
        description = "Use to send the contents of a local text file to another instance (large files arrive as a saved file). Regular text files only, up to 512 KiB; it refuses credential stores (~/.ssh, ~/.aws, .env files, private keys...), this server's session and data, and /proc, /sys and /dev."
    )]
    async fn share_file(
        &self,
        Parameters(args): Parameters<ShareFileArgs>,
    ) -> Result<String, ToolError> {
        self.identity()?;
        let protected = share_file::Protected::for_this_user(&self.settings().broker.data_dir);
        let given = args.filepath.clone();
        let read = tokio::task::spawn_blocking(move || {
            share_file::read(&given, &protected, SHARE_FILE_MAX_BYTES)
        })
        .await
        .map_err(|e| ToolError::Input(format!("Reading the file failed: {e}. Nothing was sent.")))?
        .map_err(|e| ToolError::Input(format!("{e}. Nothing was sent.")))?;
        let path = read.path.display().to_string();
        let size = read.text.len();
        let mut content = format!("Shared file: {path} ({size} bytes)\n");
        if let Some(description) = &args.description {
            content.push_str(&format!("{description}\n"));
        }
        content.push('\n');
        content.push_str(&read.text);
        self.refuse_leak(&args.filepath, &content).await?;
        let data = json!({"shared_file": path, "size_bytes": size});
        let sent = self
            .send_message(Some(args.to_id), content, Some(data))
            .await?;
        Ok(format!("Shared {path} ({size} bytes). {sent}"))
    }

    #[tool(
        description = "Use to run a command here and send its stdout, stderr and exit code to another instance; off unless the user enabled it in this MCP server's configuration (--allow-share-command or IPC_ALLOW_SHARE_COMMAND=1), because text from another instance could talk a model into running a command. No shell, a minimal environment, 30 s limit."
    )]
    async fn share_command(
        &self,
        Parameters(args): Parameters<ShareCommandArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<String, ToolError> {
        if !self.settings().allow_share_command {
            return Err(ToolError::ShareCommandDisabled);
        }
        self.identity()?;
        let timeout = self.settings().command_timeout;
        let cap = self.settings().command_output_cap;
        let run = command::run(&args.command, timeout, cap, &context.ct)
            .await
            .map_err(|e| ToolError::Input(format!("{e}; nothing was sent.")))?;
        let mut content = String::new();
        if let Some(description) = &args.description {
            content.push_str(&format!("{description}\n"));
        }
        content.push_str(&format::command_report(
            &args.command,
            &run,
            timeout.as_secs(),
        ));
        self.refuse_leak(&format!("the output of `{}`", args.command), &content)
            .await?;
        let data = json!({
            "command": args.command, "argv": run.argv, "exit_code": run.exit_code,
            "timed_out": run.timed_out, "truncated": run.truncated,
        });
        let sent = self
            .send_message(Some(args.to_id), content, Some(data))
            .await?;
        let outcome = match (run.exit_code, run.timed_out) {
            (_, true) => format!("was killed after {} s", timeout.as_secs()),
            (Some(code), _) => format!("exited with {code}"),
            (None, _) => "was killed by a signal".to_owned(),
        };
        Ok(format!(
            "`{}` {outcome}; its output was sent. {sent}",
            args.command
        ))
    }

    /// Long-polls the broker until mail arrives or the time is up, and says what waits: the
    /// mail is read by `check`, so a wait the client gave up on, told or not, consumes
    /// nothing. A broker that stops answers its waiters early and empty, so the wait resumes
    /// (through the election) until the deadline.
    #[tool(
        description = "Use to wait for a reply: returns as soon as mail arrives (saying how much and from whom; then call check to read it), or at the timeout."
    )]
    async fn wait_for_messages(
        &self,
        Parameters(args): Parameters<WaitArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<String, ToolError> {
        let seconds = args
            .timeout_seconds
            .filter(|s| s.is_finite())
            .unwrap_or(WAIT_DEFAULT_SECONDS as f64)
            .clamp(0.0, WAIT_MAX_SECONDS as f64);
        let waited = self.wait_for_mail(seconds, &context.ct).await?;
        Ok(match waited {
            Some(waiting) => format::waiting(&waiting),
            None => format!("No new messages after waiting {seconds} s."),
        })
    }
}

#[tool_handler]
impl ServerHandler for IpcServer {
    fn get_info(&self) -> ServerConfig {
        let server_info = Implementation::new("claude-ipc", crate::VERSION);
        if !self.settings().channel {
            return ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
                .with_server_info(server_info)
                .with_instructions(channel::PLAIN_INSTRUCTIONS);
        }
        let capabilities = ServerCapabilities::builder()
            .enable_experimental_with(channel::experimental_capabilities())
            .enable_tools()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(server_info)
            .with_protocol_version(channel::MAX_REVISION)
            .with_instructions(channel::INSTRUCTIONS)
    }

    /// In channel mode, nothing newer than [`channel::MAX_REVISION`], whatever the client
    /// asks: Claude Code refuses a channel server that negotiates 2026-07-28.
    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        if self.settings().channel {
            Cow::Borrowed(ProtocolVersion::known_up_to(&channel::MAX_REVISION))
        } else {
            Cow::Borrowed(ProtocolVersion::KNOWN_VERSIONS)
        }
    }
}

/// Runs blocking client work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ClientError> + Send + 'static,
) -> Result<T, ClientError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(ClientError::Protocol(format!("client task failed: {e}"))))
}

/// Whether a client error means the connection (or the broker behind it) went away.
fn is_connection_lost(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Io(_) | ClientError::Closed | ClientError::Unreachable { .. }
    )
}

impl IpcServer {
    fn settings(&self) -> &Settings {
        &self.state.settings
    }

    fn identity(&self) -> Result<Identity, ToolError> {
        self.state
            .identity
            .lock()
            .expect("identity lock poisoned")
            .clone()
            .ok_or(ToolError::NotRegistered)
    }

    fn set_identity(&self, identity: Identity) {
        if self.settings().write_session_file {
            let file = SessionFile {
                instance_id: identity.name.clone(),
                session_token: identity.token.clone(),
            };
            match file.save() {
                Ok(path) => tracing::info!(path = %path.display(), "session file written"),
                Err(e) => tracing::warn!("could not write the session file: {e}"),
            }
        }
        *self.state.identity.lock().expect("identity lock poisoned") = Some(identity);
        self.state
            .identity_changed
            .send_modify(|generation| *generation += 1);
    }

    /// Runs `work` on a broker connection. If the connection is lost (the broker died), it
    /// elects a broker again and retries, a few times: a dying broker closes its connections
    /// before its listening socket, so the first reconnection can land on it and be reset too.
    /// Every request this server sends is safe to repeat (sends carry a nonce; mail is acked
    /// only after its reply is read).
    async fn call<T, F>(&self, work: F) -> Result<T, ToolError>
    where
        T: Send + 'static,
        F: Fn(&mut Client) -> Result<T, ClientError> + Clone + Send + 'static,
    {
        self.call_until(work, &CancellationToken::new()).await
    }

    /// Like [`IpcServer::call`], but a cancelled call closes its connection at once (ending a
    /// long-poll on the broker's side) and returns [`ToolError::Cancelled`].
    async fn call_until<T, F>(&self, work: F, cancel: &CancellationToken) -> Result<T, ToolError>
    where
        T: Send + 'static,
        F: Fn(&mut Client) -> Result<T, ClientError> + Clone + Send + 'static,
    {
        let mut attempt = 0;
        loop {
            let client = self.state.election.connect().await?;
            let closer = client.closer()?;
            let this_try = work.clone();
            let answer = blocking(move || this_try(&mut { client }));
            let result = tokio::select! {
                result = answer => result,
                _ = cancel.cancelled() => {
                    closer.close();
                    return Err(ToolError::Cancelled);
                }
            };
            match result {
                Err(error) if is_connection_lost(&error) && attempt < CONNECTION_RETRIES => {
                    attempt += 1;
                    tracing::info!("lost the broker ({error}); finding it again");
                    tokio::time::sleep(CONNECTION_RETRY_PAUSE * attempt).await;
                }
                other => return Ok(other?),
            }
        }
    }

    /// Runs `work` with this server's session. If the broker no longer knows the session
    /// (expired, revoked, or a reset data directory), registers the same name again, once,
    /// and retries.
    async fn as_session<T, F>(&self, work: F) -> Result<T, ToolError>
    where
        T: Send + 'static,
        F: Fn(&mut Client, &str) -> Result<T, ClientError> + Clone + Send + Sync + 'static,
    {
        self.as_session_until(work, &CancellationToken::new()).await
    }

    /// [`IpcServer::as_session`] for a call that ends early when `cancel` fires.
    async fn as_session_until<T, F>(
        &self,
        work: F,
        cancel: &CancellationToken,
    ) -> Result<T, ToolError>
    where
        T: Send + 'static,
        F: Fn(&mut Client, &str) -> Result<T, ClientError> + Clone + Send + Sync + 'static,
    {
        let identity = self.identity()?;
        let token = identity.token.clone();
        let first = work.clone();
        match self
            .call_until(move |client| first(client, &token), cancel)
            .await
        {
            // Only a session the broker does not know is renewed, never a replaced one
            // (`session_replaced`), and never over a name in use: two servers of one name
            // would otherwise take it from each other for ever, splitting its mail.
            Err(error) if error.is_invalid_session() => {
                tracing::info!(
                    name = %identity.name,
                    "the broker no longer knows this session; registering the same name again"
                );
                let name = identity.name.clone();
                let renewed = match self.register_name(identity.name, false).await {
                    Err(ToolError::Refused { code, message, .. }) if code == "name_in_use" => {
                        tracing::warn!(%name, "registering the same name again was refused: it is in use");
                        return Err(ToolError::LostName {
                            name,
                            code,
                            message,
                        });
                    }
                    other => other?,
                };
                let token = renewed.token;
                self.call_until(move |client| work(client, &token), cancel)
                    .await
            }
            other => other,
        }
    }

    /// Registers `name` with the secret this server has (taking it over from a session in use
    /// only with `takeover`), and makes it the session. This server's own session of the
    /// name is presented, so registering itself again is not refused.
    async fn register_name(&self, name: String, takeover: bool) -> Result<Registration, ToolError> {
        let secret = self.settings().broker.shared_secret.clone();
        let own = self.identity().ok().filter(|held| held.name == name);
        let wanted = name.clone();
        let registered = self
            .call(move |client| {
                let own = own.as_ref().map(|held| held.token.as_str());
                client.register_as(&wanted, secret.as_deref(), takeover, own)
            })
            .await?;
        let identity = Identity {
            name,
            token: registered.session_token,
        };
        self.set_identity(identity.clone());
        Ok(Registration {
            token: identity.token,
            queued: registered.queued,
        })
    }

    /// The values no share may carry and no check may show: the secret, this server's session
    /// token, the token in the session file, and the static auth tokens of those names.
    async fn secrets(&self) -> guard::Secrets {
        let identity = self.identity().ok();
        // A file read: kept off the executor's threads like every other blocking call.
        let on_disk = tokio::task::spawn_blocking(|| SessionFile::load().ok())
            .await
            .ok()
            .flatten();
        let tokens: Vec<&str> = identity
            .iter()
            .map(|i| i.token.as_str())
            .chain(on_disk.iter().map(|f| f.session_token.as_str()))
            .collect();
        let names: Vec<&str> = identity
            .iter()
            .map(|i| i.name.as_str())
            .chain(on_disk.iter().map(|f| f.instance_id.as_str()))
            .collect();
        let secret = self.settings().broker.shared_secret.as_deref();
        guard::Secrets::of(secret, &tokens, &names)
    }

    /// The last check before a share leaves: whatever path it took, it carries no secret.
    async fn refuse_leak(&self, what: &str, content: &str) -> Result<(), ToolError> {
        let secrets = self.secrets().await;
        match secrets.found_in(content) {
            Some(secret) => {
                // The model may have written the secret into the command: not even the
                // refusal repeats it.
                let (what, _) = secrets.redact(what);
                tracing::warn!("refused to share {what}: it contains {secret}");
                Err(ToolError::WouldLeak { what, secret })
            }
            None => Ok(()),
        }
    }

    /// `send` (with a recipient) or `broadcast` (without), with a fresh nonce and the
    /// sender's timestamp; a retry after a lost connection repeats the same nonce.
    async fn send_message(
        &self,
        to: Option<String>,
        content: String,
        data: Option<Value>,
    ) -> Result<String, ToolError> {
        let thread = ThreadingFields::default();
        Ok(self.send_threaded(to, content, data, thread).await?.0)
    }

    /// [`IpcServer::send_message`] with a place in a conversation (`reply_to`, `subject`);
    /// also returns the sent message's id (a broadcast's: none).
    async fn send_threaded(
        &self,
        to: Option<String>,
        content: String,
        data: Option<Value>,
        thread: ThreadingFields,
    ) -> Result<(String, Option<MessageId>), ToolError> {
        let data = object_or_none(data)?.map(Value::Object);
        // One stamp for every attempt: a retry after a lost connection (here or inside the
        // client) repeats the same nonce, so the broker stores the message once.
        let stamp =
            Stamp::fresh().map_err(|e| ToolError::Input(format!("cannot make a nonce: {e}")))?;
        self.as_session(move |client, token| match &to {
            Some(to) => client
                .send_threaded(token, to, &content, data.clone(), &thread, &stamp)
                .map(|sent| {
                    let text = sent_text(&sent.message, Some(sent.message_id), &[], 0);
                    let text = match recipient_reach(&sent, chrono::Utc::now()) {
                        Some(reach) => format!("{}; {reach}.", text.trim_end_matches('.')),
                        None => text,
                    };
                    let text = match &sent.did_you_mean {
                        Some(meant) => format!(
                            "{}; {}",
                            text.trim_end_matches('.'),
                            format::did_you_mean(to, meant)
                        ),
                        None => text,
                    };
                    (text, Some(sent.message_id))
                }),
            None => client
                .broadcast_threaded(token, &content, data.clone(), &thread, &stamp)
                .map(|reply| (broadcast_text(&reply), None)),
        })
        .await
    }

    /// Waits up to `wait` for mail without consuming any; a cancelled wait closes its
    /// connection, so the broker stops waiting for it too.
    async fn count_waiting(
        &self,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> Result<Waiting, ToolError> {
        self.as_session_until(
            move |client, token| client.count_waiting(token, wait),
            cancel,
        )
        .await
    }

    /// What is waiting once mail arrives, or `None` when `seconds` pass without any. Each
    /// long-poll is asked for the time left, since a broker that stops answers early.
    async fn wait_for_mail(
        &self,
        seconds: f64,
        cancel: &CancellationToken,
    ) -> Result<Option<Waiting>, ToolError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(seconds);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let waiting = self.count_waiting(left, cancel).await?;
            if waiting.count > 0 {
                return Ok(Some(waiting));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }
}

/// What `register_name` learned.
struct Registration {
    token: String,
    queued: u32,
}

/// `data` must be a JSON object; a string holding one is accepted too, since models often
/// pass JSON as text.
fn object_or_none(data: Option<Value>) -> Result<Option<Map<String, Value>>, ToolError> {
    let bad = |what: &str| {
        ToolError::Input(format!(
            "`data` must be a JSON object like {{\"key\": \"value\"}}, not {what}."
        ))
    };
    match data {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(Value::String(text)) => match serde_json::from_str(&text) {
            Ok(Value::Object(map)) => Ok(Some(map)),
            _ => Err(bad("a string that is not one")),
        },
        Some(_) => Err(bad("another kind of value")),
    }
}

/// The broker's reply to a send or broadcast, for the model: what it said, the message's id
/// and the instances whose queue was full (the broker lists only the first `skipped`).
fn sent_text(
    said: &str,
    id: Option<MessageId>,
    skipped: &[String],
    skipped_count: usize,
) -> String {
    let mut text = said.to_owned();
    if let Some(id) = id {
        text.push_str(&format!(" (message id {id})"));
    }
    if !skipped.is_empty() {
        text.push_str(&format!("; skipped (queue full): {}", skipped.join(", ")));
        let unlisted = skipped_count.saturating_sub(skipped.len());
        if unlisted > 0 {
            text.push_str(&format!(" and {unlisted} more"));
        }
    }
    text.push('.');
    text
}

/// A broadcast's reply for the model; a duplicate names the earlier broadcast's first copy.
fn broadcast_text(reply: &BroadcastReply) -> String {
    match reply {
        BroadcastReply::Delivered(copies) => {
            sent_text(&copies.message, None, &copies.skipped, copies.skipped_count)
        }
        BroadcastReply::Duplicate(original) => {
            sent_text(&original.message, Some(original.message_id), &[], 0)
        }
    }
}
