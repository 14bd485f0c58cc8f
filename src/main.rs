//! The `claude-ipc` binary: parse arguments, set up logging, dispatch. The work is in the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use claude_ipc::cli::{self, Command};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = cli::parse_or_exit();
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

/// `RUST_LOG` if set, else `default_level`; either way without the migration library's info
/// lines (the store logs each migration it applies), unless `RUST_LOG` names it.
fn log_filter(default_level: &str) -> EnvFilter {
    let asked = std::env::var("RUST_LOG").ok();
    let names_refinery = asked
        .as_deref()
        .is_some_and(|spec| spec.contains("refinery"));
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    if names_refinery {
        filter
    } else {
        filter.add_directive("refinery_core=warn".parse().expect("a valid directive"))
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
