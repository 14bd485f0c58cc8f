//! `claude-ipc mcp`: the MCP server over stdio. Only JSON-RPC goes to stdout; logs go to stderr.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args};
use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

use crate::config::{parse_duration, Config};
use crate::mcp::{IpcServer, Settings};
use crate::os::ShutdownSignals;
use crate::secret::{self, SecretError};

#[derive(Debug, Args)]
#[command(
    after_help = "Setup for Claude Code (one line):\n  claude mcp add claude-ipc -s user -- claude-ipc mcp\n\nAs a Claude Code channel (mail pushed into the session; start claude with\n--dangerously-load-development-channels server:claude-ipc), or install the repository's plugin:\n  claude mcp add claude-ipc -s user -- claude-ipc mcp --channel\n\nExample, by hand (it speaks JSON-RPC on stdin and stdout):\n  IPC_ADDR=127.0.0.1:9876 claude-ipc mcp\n  IPC_SOCKET=$HOME/.claude-ipc.sock claude-ipc mcp\n\nIt finds the broker at IPC_ADDR, or on the Unix socket IPC_SOCKET when that is set; if none\nanswers, it hosts one in its own process on the same address, socket and data directory\n(IPC_DATA_DIR), and another MCP server takes over if this one exits. IPC_SHARED_SECRET (or the\n0600 file IPC_SHARED_SECRET_FILE names) is used to register and by a hosted broker. If IPC_SESSION_FILE is set, the session is also\nwritten there for the CLI and the hook. A broker run by another user than this server's is\nrefused before anything is sent to it; IPC_BROKER_USER names a deliberate service account\n(a user name or uid), and `any` skips the check.\n\nshare_command is off unless the user enables it (--allow-share-command or\nIPC_ALLOW_SHARE_COMMAND=1), since a message can talk a model into running a command:\n  claude mcp add claude-ipc -s user -e IPC_ALLOW_SHARE_COMMAND=1 -- claude-ipc mcp"
)]
pub struct McpArgs {
    /// The broker's address (and where to host one if none answers).
    #[arg(long, env = "IPC_ADDR", default_value = "127.0.0.1:9876")]
    pub addr: SocketAddr,
    /// The broker's Unix socket (`serve --socket`): used instead of --addr to find the broker,
    /// and a hosted broker listens on it too.
    #[arg(long, env = "IPC_SOCKET", value_parser = super::socket_parser())]
    pub socket: Option<PathBuf>,
    /// The data directory a hosted broker uses [default: ~/.claude-ipc-data]; given, a broker
    /// serving another one is refused. An empty IPC_DATA_DIR counts as unset.
    #[arg(long, env = "IPC_DATA_DIR", value_parser = super::socket_parser())]
    pub data_dir: Option<PathBuf>,
    /// share_command kills the command after this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub command_timeout: Duration,
    /// share_command keeps at most this many bytes of stdout and of stderr.
    #[arg(long, default_value_t = 64 * 1024)]
    pub command_output_cap: usize,
    /// Let the model run commands with share_command (off by default: a message from another
    /// instance could talk it into running one). Set it where only the user can: this flag or
    /// IPC_ALLOW_SHARE_COMMAND=1 in the server's configuration.
    /// The variable takes 1/0, true/false, yes/no or on/off; anything else is an error rather
    /// than a silent yes.
    #[arg(long, env = "IPC_ALLOW_SHARE_COMMAND", action = ArgAction::SetTrue,
          value_parser = BoolishValueParser::new())]
    pub allow_share_command: bool,
    /// Run as a Claude Code channel: push each message for this session into the
    /// conversation as it arrives (`notifications/claude/channel`), and negotiate an MCP
    /// revision no newer than 2025-11-25. Pushed mail stays waiting until the model calls
    /// `ack` or `check`. Start Claude Code with
    /// `--dangerously-load-development-channels server:claude-ipc` to receive the pushes.
    /// IPC_CHANNEL takes 1/0, true/false, yes/no or on/off.
    #[arg(long, env = "IPC_CHANNEL", action = ArgAction::SetTrue,
          value_parser = BoolishValueParser::new())]
    pub channel: bool,
}

impl McpArgs {
    /// The server's settings; fails only if the shared secret cannot be read.
    fn settings(&self) -> Result<Settings, SecretError> {
        let given = super::given_socket(&self.data_dir).map(PathBuf::from);
        let data_dir = given.clone().unwrap_or_else(Config::default_data_dir);
        let mut broker = Config::new(self.addr, data_dir);
        broker.socket = super::given_socket(&self.socket).map(PathBuf::from);
        broker.shared_secret = secret::shared_secret_from_env()?;
        Ok(Settings {
            broker,
            write_session_file: std::env::var_os("IPC_SESSION_FILE").is_some_and(|p| !p.is_empty()),
            command_timeout: self.command_timeout,
            command_output_cap: self.command_output_cap,
            allow_share_command: self.allow_share_command,
            data_dir_configured: given.is_some(),
            channel: self.channel,
        })
    }
}

/// Serves MCP on stdin/stdout until the client closes stdin or a signal arrives, then stops
/// the broker this process hosts, if any.
pub async fn run(args: McpArgs) -> anyhow::Result<()> {
    let mut signals = ShutdownSignals::install()?;
    let settings = args.settings()?;
    let socket = settings
        .broker
        .socket
        .as_ref()
        .map_or_else(|| "none".to_owned(), |s| s.display().to_string());
    let channel = settings.channel;
    let server = IpcServer::new(settings);
    tracing::info!(
        pid = std::process::id(),
        addr = %args.addr,
        %socket,
        version = crate::VERSION,
        "claude-ipc MCP server ready on stdio"
    );
    let service = server.clone().serve(rmcp::transport::stdio()).await?;
    let stop_pushing = CancellationToken::new();
    let pusher = channel.then(|| {
        let (server, peer, stop) = (server.clone(), service.peer().clone(), stop_pushing.clone());
        tokio::spawn(async move { server.push_mail(peer, stop).await })
    });
    tokio::select! {
        ended = service.waiting() => {
            if let Err(e) = ended {
                tracing::warn!("the MCP session ended with an error: {e}");
            }
        }
        _ = signals.recv() => tracing::info!("signal received; stopping"),
    }
    // The push loop ends first (its long-poll's connection is closed), so it neither holds
    // the session nor races the logout.
    stop_pushing.cancel();
    if let Some(pusher) = pusher {
        if tokio::time::timeout(PUSHER_STOP, pusher).await.is_err() {
            tracing::warn!("the push loop did not stop in time");
        }
    }
    server.shutdown().await;
    Ok(())
}

/// How long the push loop may take to stop on the way out.
const PUSHER_STOP: Duration = Duration::from_secs(2);
