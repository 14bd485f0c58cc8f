//! The `claude-ipc` binary: parse arguments, set up logging, dispatch. The work is in the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use claude_ipc::cli::{self, Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        // Which process hosts the broker is worth a line; the MCP library's chatter is not.
        Command::Mcp(_) => "info,rmcp=warn",
        _ => "warn",
    };
    // Logs go to stderr so stdout stays clean for replies and JSON.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_env_filter(log_filter(default_level))
        .init();
    match cli.command {
        Command::Serve(args) => run_async(cli::serve::run(args), cli::serve::exit_code),
        Command::Mcp(args) => run_async(cli::mcp::run(args), |_| 1),
        command => cli::run(command),
    }
}

/// `RUST_LOG`, else the command's default; either way refinery's own lines (one per start,
/// "going to apply 0 migrations" included) are kept to warnings unless `RUST_LOG` names it:
/// the store logs each migration it applies itself.
fn log_filter(default_level: &str) -> EnvFilter {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let names_refinery = std::env::var("RUST_LOG").is_ok_and(|given| given.contains("refinery"));
    match "refinery_core=warn".parse() {
        Ok(quiet) if !names_refinery => filter.add_directive(quiet),
        _ => filter,
    }
}

fn run_async(
    work: impl std::future::Future<Output = anyhow::Result<()>>,
    exit_code: fn(&anyhow::Error) -> u8,
) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(work);
    // The work is done (the broker stopped, its store closed), but a blocking read can still
    // hold a runtime thread: the MCP transport's read of stdin ends only when the client
    // closes it, so a server stopped by a signal would otherwise never exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}
