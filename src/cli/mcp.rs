//! `claude-ipc mcp`: the MCP server over stdio. Only JSON-RPC goes to stdout; logs go to stderr.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use rmcp::ServiceExt;

use crate::config::{parse_duration, Config};
use crate::mcp::{IpcServer, Settings};
use crate::server::ShutdownSignals;

#[derive(Debug, Args)]
#[command(
    after_help = "Setup for Claude Code (one line):\n  claude mcp add claude-ipc -s user -- claude-ipc mcp\n\nExample, by hand (it speaks JSON-RPC on stdin and stdout):\n  IPC_ADDR=127.0.0.1:9876 claude-ipc mcp\n\nIt finds the broker at IPC_ADDR; if none answers, it hosts one in its own process on the\nsame address and data directory (IPC_DATA_DIR), and another MCP server takes over if this\none exits. IPC_SHARED_SECRET is used to register (and by a hosted broker). If\nIPC_SESSION_FILE is set, the session is also written there for the CLI and the hook."
)]
pub struct McpArgs {
    /// The broker's address (and where to host one if none answers).
    #[arg(long, env = "IPC_ADDR", default_value = "127.0.0.1:9876")]
    pub addr: SocketAddr,
    /// The data directory a hosted broker uses [default: ~/.claude-ipc-data]
    #[arg(long, env = "IPC_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// share_command kills the command after this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub command_timeout: Duration,
    /// share_command keeps at most this many bytes of stdout and of stderr.
    #[arg(long, default_value_t = 64 * 1024)]
    pub command_output_cap: usize,
}

impl McpArgs {
    fn settings(&self) -> Settings {
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| super::session_file::home_dir().join(".claude-ipc-data"));
        let mut broker = Config::new(self.addr, data_dir);
        broker.shared_secret = std::env::var("IPC_SHARED_SECRET")
            .ok()
            .filter(|s| !s.is_empty());
        Settings {
            broker,
            write_session_file: std::env::var_os("IPC_SESSION_FILE").is_some_and(|p| !p.is_empty()),
            command_timeout: self.command_timeout,
            command_output_cap: self.command_output_cap,
        }
    }
}

/// Serves MCP on stdin/stdout until the client closes stdin or a signal arrives, then stops
/// the broker this process hosts, if any.
pub async fn run(args: McpArgs) -> anyhow::Result<()> {
    let mut signals = ShutdownSignals::install()?;
    let server = IpcServer::new(args.settings());
    tracing::info!(
        pid = std::process::id(),
        addr = %args.addr,
        version = crate::VERSION,
        "claude-ipc MCP server ready on stdio"
    );
    let service = server.clone().serve(rmcp::transport::stdio()).await?;
    tokio::select! {
        ended = service.waiting() => {
            if let Err(e) = ended {
                tracing::warn!("the MCP session ended with an error: {e}");
            }
        }
        _ = signals.recv() => tracing::info!("signal received; stopping"),
    }
    server.shutdown().await;
    Ok(())
}
