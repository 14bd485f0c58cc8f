//! The command line: one file per subcommand. `main.rs` parses [`Cli`] and calls [`run`].
//!
//! Exit codes: 0 success, 1 the broker refused the request, 2 a usage error (including "not
//! registered yet"), 3 no broker answered.

mod check;
pub mod hook;
pub mod mcp;
mod output;
mod ping;
mod register;
mod rename;
mod send;
pub mod serve;
pub mod session_file;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::client::{Client, ClientError};

pub const EXIT_BROKER_ERROR: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;

/// How long the client waits for the broker at each step.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(
    name = "claude-ipc",
    version,
    about = "A local post office for AI assistants: a broker, an MCP server and this client",
    after_help = "Examples:\n  claude-ipc serve                    run the broker on 127.0.0.1:9876\n  claude-ipc register alice           register and save the session to ~/.ipc-session\n  claude-ipc send bob \"API changed\"    send bob a message\n  claude-ipc check                    read your mail"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

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
    /// Read (and so consume) your waiting mail.
    Check(check::CheckArgs),
    /// List registered instances.
    List(check::ListArgs),
    /// Rename your instance; the old name forwards to the new one for a while.
    Rename(rename::RenameArgs),
    /// Check that a broker answers.
    Ping(ping::PingArgs),
    /// Run the MCP server on stdio (for Claude Code, Gemini CLI and other MCP clients).
    Mcp(mcp::McpArgs),
    /// For Claude Code hooks: print one line if mail is waiting, else nothing.
    Hook(hook::HookArgs),
}

/// Options every client subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The broker's address.
    #[arg(long, env = "IPC_ADDR", default_value = "127.0.0.1:9876")]
    pub addr: String,
    /// Print the broker's reply as JSON, for scripts.
    #[arg(long)]
    pub json: bool,
}

impl ClientArgs {
    fn connect(&self) -> Result<Client, CliError> {
        Ok(Client::connect(&self.addr, CLIENT_TIMEOUT)?)
    }
}

/// A failure that ends a subcommand, with its exit code.
#[derive(Debug)]
pub enum CliError {
    Client(ClientError),
    Usage(String),
}

impl From<ClientError> for CliError {
    fn from(error: ClientError) -> Self {
        CliError::Client(error)
    }
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Client(ClientError::Unreachable { .. }) => EXIT_UNREACHABLE,
            CliError::Client(ClientError::Io(_)) => EXIT_UNREACHABLE,
            CliError::Client(_) => EXIT_BROKER_ERROR,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Client(error) => write!(f, "{error}"),
            CliError::Usage(text) => f.write_str(text),
        }
    }
}

/// Runs one client subcommand (`serve` and `mcp` are run by `main`, which owns the runtime).
pub fn run(command: Command) -> ExitCode {
    let result = match command {
        Command::Serve(_) | Command::Mcp(_) => unreachable!("dispatched by main"),
        Command::Hook(args) => {
            hook::run(args);
            Ok(())
        }
        Command::Register(args) => register::run(args),
        Command::Send(args) => send::run(args),
        Command::Broadcast(args) => send::run_broadcast(args),
        Command::Check(args) => check::run(args),
        Command::List(args) => check::run_list(args),
        Command::Rename(args) => rename::run(args),
        Command::Ping(args) => ping::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
