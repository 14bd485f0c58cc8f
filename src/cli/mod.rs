//! The command line: one file per subcommand. `main.rs` parses [`Cli`] and calls [`run`].
//!
//! Exit codes: 0 success, 1 the broker refused the request, 2 a usage error (including "not
//! registered yet"), 3 no broker answered, 4 no answer came in time (`--wait-reply`). With
//! `--json` every outcome is one JSON document on stdout (see [`print_json_error`]).

mod arg;
mod autostart;
mod check;
mod content;
mod history;
pub mod hook;
mod import_legacy;
pub mod mcp;
pub mod output;
mod ping;
mod register;
mod rename;
mod reply;
mod search;
mod send;
mod sent;
pub mod serve;
mod status;
mod stop;
mod thread;
mod web;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::{OsStringValueParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

use crate::client::{BrokerCheck, BrokerUser, Client, ClientError};
use crate::config::Config;
use crate::secret::SecretError;
use crate::session_file::SessionFileError;

pub const EXIT_BROKER_ERROR: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;
/// `send --wait-reply` (or `reply --wait-reply`): no answer came in time.
pub const EXIT_NO_REPLY: u8 = 4;

/// How long the client waits for the broker at each step.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(
    name = "claude-ipc",
    version,
    about = "A local post office for AI assistants: a broker, an MCP server and this client",
    after_help = "Examples:
  claude-ipc serve                          run the broker on 127.0.0.1:9876
  claude-ipc register alice                 register; the session goes to ~/.ipc-session
  claude-ipc send bob \"API changed\"         send bob a message (registered or not yet)
  claude-ipc send bob --file build.log      the message from a file (or `-` for stdin)
  claude-ipc check                          read your mail
  claude-ipc reply 41 \"merged\"              answer message 41, in its thread
  claude-ipc thread 41                      the conversation message 41 belongs to
  claude-ipc sent                           what became of the mail you sent
  claude-ipc history --with bob             what you and bob said, newest first
  claude-ipc search 'deploy NOT draft'      search the mail you sent and received
  claude-ipc status                         the broker, its instances and waiting mail
  claude mcp add claude-ipc -s user -- claude-ipc mcp    give Claude Code the tools

Environment:
  IPC_ADDR            the broker's address (default 127.0.0.1:9876)
  IPC_SOCKET          the broker's Unix socket (serve --socket); used instead of IPC_ADDR
  IPC_SESSION_FILE    where register saves the session (default ~/.ipc-session)
  IPC_SHARED_SECRET   the shared secret; without it the broker runs in open mode
  IPC_SHARED_SECRET_FILE
                      a file (yours, mode 0600) holding the secret instead, so it need not
                      sit in a configuration file; if both are set they must agree
  IPC_DATA_DIR        the broker's data directory (default ~/.claude-ipc-data)
  IPC_AUTOSTART       0 stops a mail command from starting a broker when none answers
  IPC_BROKER_USER     the user the broker must run as (a name or uid; default: you); every
                      client refuses a broker run by anyone else before sending it anything;
                      `any` skips the check (needed for a broker on another machine)
  RUST_LOG            log level: error, warn, info, debug
  NO_COLOR            no colour, even on a terminal

Exit codes: 0 success, 1 the broker refused (or a file or database failed), 2 usage error or
not registered yet, 3 no broker answered (or the one that did is run by another user), 4 no
answer came in time (send --wait-reply, reply --wait-reply). With --json every outcome is one
JSON document on stdout; a failure is {\"status\": \"error\", \"code\": ..., \"message\": ...}.
Durations take a unit: 250ms, 30s, 10m, 2h, 30d.

Each subcommand has its own --help. Guides: README.md and docs/ (OPERATIONS.md for running it)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// `serve` carries every limit's flag; the enum is built once per run, so its size is harmless.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker.
    Serve(serve::ServeArgs),
    /// Register a name and save the session token to the session file.
    Register(register::RegisterArgs),
    /// Send a message to one instance (registered or not yet).
    Send(send::SendArgs),
    /// Send a message to every other registered instance.
    Broadcast(send::BroadcastArgs),
    /// What became of the mail you sent: waiting, read, delivered or expired, and when.
    Sent(sent::SentArgs),
    /// Answer a message: to its other party, in its thread.
    Reply(reply::ReplyArgs),
    /// Show one conversation, oldest first, as you took part in it.
    Thread(thread::ThreadArgs),
    /// The mail you sent and received, newest first; --with NAME for one conversation.
    History(history::HistoryArgs),
    /// Search the mail you sent and received: words, "phrases", prefix*, AND/OR/NOT.
    Search(search::SearchArgs),
    /// Read your waiting mail; it is acknowledged once printed.
    Check(check::CheckArgs),
    /// Print mail as it arrives, until interrupted.
    Watch(check::WatchArgs),
    /// List registered instances (works before you register: names and presence, read-only).
    List(check::ListArgs),
    /// Rename your instance; the old name forwards to the new one for a while.
    Rename(rename::RenameArgs),
    /// Check that a broker answers.
    Ping(ping::PingArgs),
    /// Show the broker, its instances and the mail waiting (also with the broker down).
    Status(status::StatusArgs),
    /// Stop the broker cleanly and keep it stopped until `serve` is run by hand.
    Stop(stop::StopArgs),
    /// Import the Python original's messages.db: unread mail, instances and live forwards.
    ImportLegacy(import_legacy::ImportLegacyArgs),
    /// Run the MCP server on stdio (for Claude Code, Gemini CLI and other MCP clients).
    Mcp(mcp::McpArgs),
    /// For the assistants' hooks: one line when mail waits, or wait for new mail and wake.
    Hook(hook::HookArgs),
    /// Print the web dashboard's login link (`serve --web`) and open it in a browser.
    Web(web::WebArgs),
}

/// Options every client subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The broker's address.
    #[arg(long, env = "IPC_ADDR", default_value = "127.0.0.1:9876")]
    pub addr: String,
    /// The broker's Unix socket (`serve --socket`); when set, it is used instead of --addr.
    #[arg(long, env = "IPC_SOCKET", value_parser = socket_parser())]
    pub socket: Option<PathBuf>,
    /// Print the outcome as one JSON document on stdout, for scripts: the reply, or on any
    /// failure {"status": "error", "code", "message"}.
    #[arg(long)]
    pub json: bool,
    /// The user the broker must run as: a name, a uid, or `any` to skip the check. By default
    /// only a broker run by you is trusted; anything else is refused before a byte is sent.
    #[arg(long, env = "IPC_BROKER_USER", value_name = "USER")]
    pub broker_user: Option<String>,
}

impl ClientArgs {
    /// The socket to use, if one was given (an empty `IPC_SOCKET` counts as unset).
    fn socket(&self) -> Option<&Path> {
        given_socket(&self.socket)
    }

    fn connect(&self) -> Result<Client, CliError> {
        Ok(self.connect_within(CLIENT_TIMEOUT)?)
    }

    /// Connects, starting a broker in the background if none answers (see [`autostart`]),
    /// and refuses a broker this client must not talk to (see [`broker_check`]). Every
    /// command that registers or uses a session connects through here.
    fn connect_or_start(&self) -> Result<Client, CliError> {
        let mut client = autostart::connect_or_start(self, CLIENT_TIMEOUT)?;
        client.verify_broker(&broker_check())?;
        Ok(client)
    }

    /// Connects without ever starting a broker, refusing one this client must not talk to.
    fn connect_verified(&self) -> Result<Client, CliError> {
        let mut client = self.connect()?;
        client.verify_broker(&broker_check())?;
        Ok(client)
    }

    /// Connects over the socket if one was given, else over TCP, waiting at most `timeout`.
    fn connect_within(&self, timeout: Duration) -> Result<Client, ClientError> {
        let broker_user = BrokerUser::parse(self.broker_user.as_deref().unwrap_or_default())?;
        connect_to(&self.addr, self.socket(), broker_user, timeout)
    }

    /// Where the broker is, as a person would write it.
    fn target(&self) -> String {
        match self.socket() {
            Some(path) => format!("socket {}", path.display()),
            None => self.addr.clone(),
        }
    }
}

/// Parses `--socket` / `IPC_SOCKET` (and the MCP server's `IPC_DATA_DIR`) keeping an empty
/// value, which clap's path parser refuses: `IPC_SOCKET=` must mean "no socket" (see
/// [`given_socket`]), not a usage error, above all for the hook, which must never fail.
pub fn socket_parser() -> impl TypedValueParser<Value = PathBuf> {
    OsStringValueParser::new().map(PathBuf::from)
}

/// The socket from `--socket` / `IPC_SOCKET` (or a path parsed the same way), if one was
/// given: an empty value (say `IPC_SOCKET=` in a configuration file) counts as unset.
pub fn given_socket(socket: &Option<PathBuf>) -> Option<&Path> {
    socket.as_deref().filter(|p| !p.as_os_str().is_empty())
}

/// Connects over the socket if there is one, else over TCP to `addr`, waiting at most
/// `timeout`, to a broker run by `broker_user`.
fn connect_to(
    addr: &str,
    socket: Option<&Path>,
    broker_user: BrokerUser,
    timeout: Duration,
) -> Result<Client, ClientError> {
    match socket {
        Some(path) => Client::connect_unix_as(path, timeout, broker_user),
        None => Client::connect_as(addr, timeout, broker_user),
    }
}

/// What the CLI expects of a broker: secret mode when it holds the secret, and its data
/// directory when `IPC_DATA_DIR` names one (without it the CLI has no directory of its own to
/// compare).
pub fn broker_check() -> BrokerCheck {
    BrokerCheck {
        holds_secret: holds_secret(),
        data_dir: std::env::var_os("IPC_DATA_DIR")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from),
    }
}

/// Whether this client holds the shared secret (`IPC_SHARED_SECRET` or its file). A secret
/// file that cannot be read still counts: its owner meant the broker to be protected.
fn holds_secret() -> bool {
    crate::secret::shared_secret_from_env().map_or(true, |secret| secret.is_some())
}

/// The data directory `serve` uses: `--data-dir` / `IPC_DATA_DIR`, else `~/.claude-ipc-data`.
pub fn data_dir_or_default(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(Config::default_data_dir)
}

/// A failure that ends a subcommand, with its exit code.
#[derive(Debug)]
pub enum CliError {
    Client(ClientError),
    Usage(String),
    /// Something other than the broker failed (a file, a database); exit code 1.
    Failed(String),
    /// The subcommand already printed its full report; exit with this code and say nothing
    /// more (`status` with no broker answering).
    Reported(u8),
}

impl From<ClientError> for CliError {
    fn from(error: ClientError) -> Self {
        CliError::Client(error)
    }
}

/// A secret file that cannot be used: the person must fix it.
impl From<SecretError> for CliError {
    fn from(error: SecretError) -> Self {
        CliError::Usage(error.to_string())
    }
}

/// Not registered, or a session file that cannot be used: the person must act.
impl From<SessionFileError> for CliError {
    fn from(error: SessionFileError) -> Self {
        CliError::Usage(error.to_string())
    }
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Failed(_) => EXIT_BROKER_ERROR,
            CliError::Reported(code) => *code,
            CliError::Client(ClientError::Unreachable { .. }) => EXIT_UNREACHABLE,
            CliError::Client(ClientError::Io(_) | ClientError::Closed) => EXIT_UNREACHABLE,
            CliError::Client(ClientError::BadBrokerUser { .. }) => EXIT_USAGE,
            CliError::Client(
                ClientError::BrokerWrongUser { .. } | ClientError::BrokerOwnerUnknown { .. },
            ) => EXIT_UNREACHABLE,
            CliError::Client(_) => EXIT_BROKER_ERROR,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // One line: a broker's refusal is another party's text, and a newline in it
            // must not start a line of its own.
            CliError::Client(error) => write!(
                f,
                "{}{}",
                output::for_terminal(&error.to_string()),
                next_step(error)
            ),
            CliError::Usage(text) | CliError::Failed(text) => f.write_str(text),
            CliError::Reported(_) => Ok(()),
        }
    }
}

/// What to do about a refusal whose message (kept word for word for the legacy scripts) does
/// not already say it.
fn next_step(error: &ClientError) -> &'static str {
    let ClientError::Broker { code, .. } = error else {
        return "";
    };
    match code.as_str() {
        "invalid_session" => {
            "; your session expired or was replaced: run `claude-ipc register NAME` again"
        }
        "invalid_auth" => {
            "; set IPC_SHARED_SECRET (or IPC_SHARED_SECRET_FILE) to the broker's secret (or unset them for an open-mode broker) and register again"
        }
        "challenge_failed" => "; run `claude-ipc register NAME` again, which asks for a new challenge",
        "static_token_refused" => "; `claude-ipc register NAME` registers by challenge-response, which this broker accepts",
        "queue_full" => "; the recipient must run `claude-ipc check` before more mail fits",
        "name_taken" => "; choose another name, or `claude-ipc list` to see who has it",
        // `name_too_similar` and `reserved_name` already say what to do instead.
        "storage_failed" => "; retry, and if it keeps failing read the broker's log",
        _ => "",
    }
}

/// Runs one client subcommand (`serve` and `mcp` are run by `main`, which owns the runtime).
pub fn run(command: Command) -> ExitCode {
    let json = command.wants_json();
    let result = match command {
        Command::Serve(_) | Command::Mcp(_) => unreachable!("dispatched by main"),
        // A hook sets its own exit code (2 tells the model) and never reports an error.
        Command::Hook(args) => return hook::run(args),
        Command::Register(args) => register::run(args),
        Command::Send(args) => send::run(args),
        Command::Broadcast(args) => send::run_broadcast(args),
        Command::Sent(args) => sent::run(args),
        Command::Reply(args) => reply::run(args),
        Command::Thread(args) => thread::run(args),
        Command::History(args) => history::run(args),
        Command::Search(args) => search::run(args),
        Command::Check(args) => check::run(args),
        Command::Watch(args) => check::run_watch(args),
        Command::List(args) => check::run_list(args),
        Command::Rename(args) => rename::run(args),
        Command::Ping(args) => ping::run(args),
        Command::Status(args) => status::run(args),
        Command::Stop(args) => stop::run(args),
        Command::ImportLegacy(args) => import_legacy::run(args),
        Command::Web(args) => web::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Reported(code)) => ExitCode::from(code),
        Err(error) => {
            if json {
                print_json_error(&error);
            }
            // Our own messages may run over lines; any control character in them came from
            // elsewhere (a path, a reply quoted in a usage error) and is escaped.
            let text = output::block_for_terminal(&error.to_string(), "");
            eprintln!("error: {text}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// With `--json`, every failure is also printed on stdout as one JSON document, the shape of
/// the broker's own error replies: `{"status": "error", "code", "message"}`. A refusal keeps
/// the broker's code (so a script can tell an impostor broker from a refusal); the CLI's own
/// failures are `usage` (exit code 2) and `failed` (exit code 1).
fn print_json_error(error: &CliError) {
    let code = match error {
        CliError::Client(client_error) => client_error.code(),
        CliError::Usage(_) => "usage",
        CliError::Failed(_) => "failed",
        CliError::Reported(_) => return,
    };
    output::json(&json_error(code, &error.to_string()));
}

/// An error as `--json` prints it (see [`print_json_error`]).
pub fn json_error(code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"status": "error", "code": code, "message": message})
}

/// Parses the command line; on a usage error exits with code 2 after printing it on stderr
/// and, when `--json` was asked for, also as one JSON document on stdout, so a script piping
/// into a JSON parser gets the error too. `--help` and `--version` print as usual.
pub fn parse_or_exit() -> Cli {
    use clap::error::ErrorKind;
    let error = match Cli::try_parse() {
        Ok(cli) => return cli,
        Err(error) => error,
    };
    let informational = matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if !informational && json_was_asked() {
        output::json(&json_error("usage", &clap_error_text(&error)));
    }
    error.exit()
}

/// Whether `--json` is among the arguments (before a `--`, after which words are content).
fn json_was_asked() -> bool {
    std::env::args()
        .skip(1)
        .take_while(|arg| arg != "--")
        .any(|arg| arg == "--json")
}

/// Clap's error without its `error: ` prefix and the usage lines under it.
fn clap_error_text(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let text = rendered.split("\n\n").next().unwrap_or_default();
    text.trim().trim_start_matches("error: ").to_owned()
}

impl Command {
    /// Whether `--json` was given, so that a failure is printed as JSON too.
    fn wants_json(&self) -> bool {
        match self {
            Command::ImportLegacy(args) => args.json,
            command => command.client().is_some_and(|client| client.json),
        }
    }

    /// The client options of a subcommand that talks to the broker.
    fn client(&self) -> Option<&ClientArgs> {
        match self {
            Command::Register(args) => Some(&args.client),
            Command::Send(args) => Some(&args.client),
            Command::Broadcast(args) => Some(&args.client),
            Command::Sent(args) => Some(&args.client),
            Command::Reply(args) => Some(&args.client),
            Command::Thread(args) => Some(&args.client),
            Command::History(args) => Some(&args.client),
            Command::Search(args) => Some(&args.client),
            Command::Check(args) => Some(&args.client),
            Command::Watch(args) => Some(&args.client),
            Command::List(args) => Some(&args.client),
            Command::Rename(args) => Some(&args.client),
            Command::Ping(args) => Some(&args.client),
            Command::Status(args) => Some(&args.client),
            _ => None,
        }
    }
}
