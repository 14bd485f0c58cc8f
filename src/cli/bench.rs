//! `claude-ipc bench`: run the load generator and print its report.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::bench::{self, Options};
use crate::client::{Client, ClientError};
use crate::config::parse_duration;

/// How long the check of the broker at `--addr` may wait for it to accept.
const OWNER_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cargo run --release -- bench                    start brokers and measure every workload\n  cargo run --release -- bench --million          also store, restart on and drain a million messages\n  claude-ipc bench --addr 127.0.0.1:9876 --pid 4242   a broker already running (lift its limits first)\n  claude-ipc bench --duration 10s --json > figures.json\n\nWithout --addr, each workload gets a fresh broker (this binary's `serve`, rate limit and queue\ncap off, a throwaway data directory). Every figure is printed beside a bare echo server measured\nin the same run over the same kind of connection. Exits 1 if any acknowledged message was not\ndelivered exactly once. See docs/PERFORMANCE.md."
)]
pub struct BenchArgs {
    /// Drive the broker (or any program speaking the protocol) at this address instead of
    /// starting one. Its rate limit and queue cap must be lifted.
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// The pid of the broker at --addr, so its memory can be read from /proc.
    #[arg(long, requires = "addr")]
    pub pid: Option<u32>,
    /// How long each workload and each ceiling runs (like 3s or 500ms).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Idle connections held open while the broker's memory is read.
    #[arg(long, default_value_t = 1000)]
    pub idle: usize,
    /// Also store a million messages, restart the broker on them and drain them.
    #[arg(long)]
    pub million: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Run only the workloads whose names contain this text, like "persistent sends, 8".
    #[arg(long)]
    pub only: Option<String>,
    /// Where started brokers keep their throwaway data directories; the disk (and its fsync)
    /// is part of what is measured. [default: the system's temporary directory]
    #[arg(long, conflicts_with = "addr")]
    pub data_dir: Option<PathBuf>,
}

pub fn run(args: BenchArgs) -> ExitCode {
    let secret = match crate::secret::shared_secret_from_env() {
        Ok(secret) => secret,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    if let Some(addr) = args.addr {
        if let Err(refused) = check_broker_owner(addr) {
            eprintln!("error: {refused}");
            return ExitCode::from(super::EXIT_UNREACHABLE);
        }
    }
    let options = Options {
        addr: args.addr,
        pid: args.pid,
        secret,
        duration: args.duration,
        idle_connections: args.idle,
        million: args.million,
        json: args.json,
        only: args.only,
        data_parent: args.data_dir.unwrap_or_else(std::env::temp_dir),
    };
    match bench::run(&options) {
        Ok(report) => {
            if options.json {
                println!("{}", report.json());
            } else {
                print!("{}", report.table());
            }
            if report.all_delivered() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(super::EXIT_BROKER_ERROR)
            }
        }
        Err(error) => {
            eprintln!("\nerror: {error}");
            ExitCode::from(super::EXIT_UNREACHABLE)
        }
    }
}

/// The load generator's own connections skip the client's owner check (it would be measured
/// with every connection), so the broker at `--addr` is checked once, before any of them
/// sends its registrations. Only a refusal counts here; the run reports an unreachable
/// address itself.
fn check_broker_owner(addr: SocketAddr) -> Result<(), ClientError> {
    match Client::connect(&addr.to_string(), OWNER_CHECK_TIMEOUT) {
        Err(refused) if refused.is_untrusted_broker() => Err(refused),
        _ => Ok(()),
    }
}
