//! `claude-ipc-bench`: the load generator. It starts brokers (`claude-ipc serve`, the binary
//! built beside this one) or drives one at an address, measures every workload beside two
//! ceilings of the same shape, and prints the report (docs/PERFORMANCE.md).
//!
//! - [`generator`]: the run itself, workload after workload.
//! - [`wire`]: the minimal blocking clients both sides are driven with.
//! - [`echo`]: the ceilings, the plain echo and the durable echo.
//! - [`target`]: the broker under test, started here or reached at an address.
//! - [`workloads`]: what is measured; [`memory`]: the million-message run and idle connections.
//! - [`search`]: full-text search over a million stored messages.
//! - [`dashboard`]: the dashboard's pages over a million messages, and what its live
//!   streams cost busy agents; [`http`]: the HTTP client for it.
//! - [`report`]: the table and the targets.

mod dashboard;
mod echo;
mod generator;
mod http;
mod latency;
mod memory;
mod push;
mod report;
mod search;
mod target;
mod wire;
mod workloads;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use claude_ipc::config::parse_duration;
use generator::Options;

/// Exit status when an acknowledged message was lost or duplicated.
const EXIT_UNDELIVERED: u8 = 1;
/// Exit status for bad arguments or environment.
const EXIT_USAGE: u8 = 2;
/// Exit status when the run could not be made (no broker, no target, no echo).
const EXIT_UNREACHABLE: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "claude-ipc-bench",
    about = "Measure a claude-ipc broker under load, beside an echo and a durable echo",
    after_help = "Examples:\n  cargo run --release -p claude-ipc-bench                      start brokers and measure every workload\n  cargo run --release -p claude-ipc-bench -- --million         also store, restart on and drain a million messages\n  cargo run --release -p claude-ipc-bench -- --only search --search --data-dir /var/tmp   time search over a million messages\n  cargo run --release -p claude-ipc-bench -- --only web --data-dir /var/tmp   time every dashboard page over a million messages, and its streams' cost\n  cargo run --release -p claude-ipc-bench -- --only \"persistent sends\" --data-dir /var/tmp\n  claude-ipc-bench --addr 127.0.0.1:9876 --pid 4242           a broker already running (lift its limits first)\n\nWithout --addr, each workload gets a fresh broker (`claude-ipc serve` from --broker-bin, by\ndefault the claude-ipc binary built beside this one; rate limit and queue cap off; a throwaway\ndata directory). Every figure is printed beside a bare echo server and a durable echo (each\nrequest written to a file and fdatasync'ed, group-synced) measured in the same run over the same\nkind of connection. Exits 1 if any acknowledged message was not delivered exactly once. See\ndocs/PERFORMANCE.md."
)]
struct Args {
    /// Drive the broker (or any program speaking the protocol) at this address instead of
    /// starting one. Its rate limit and queue cap must be lifted.
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// The pid of the broker at --addr, so its memory can be read from /proc.
    #[arg(long, requires = "addr")]
    pid: Option<u32>,
    /// How long each workload and each ceiling runs (like 3s or 500ms).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    duration: Duration,
    /// Idle connections held open while the broker's memory is read.
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// Also store a million messages, restart the broker on them and drain them.
    #[arg(long)]
    million: bool,
    /// Also store this many messages (1000000 unless given) between 100 instances and time
    /// `search` queries over them.
    #[arg(long, num_args = 0..=1, default_missing_value = "1000000", value_name = "MESSAGES")]
    search: Option<u64>,
    /// Also store this many messages (1000000 unless given) between 1,000 instances and time
    /// every dashboard page over them (`--only web` does this too).
    #[arg(long, num_args = 0..=1, default_missing_value = "1000000", value_name = "MESSAGES")]
    web: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Run only the workloads whose names contain this text, like "persistent sends, 8".
    #[arg(long)]
    only: Option<String>,
    /// Where started brokers keep their throwaway data directories, and where the durable
    /// echo keeps its file: the disk (and its fsync) is part of what is measured.
    /// [default: the system's temporary directory]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The `claude-ipc` binary whose `serve` is measured. [default: `claude-ipc` in the
    /// directory of this program, as `cargo build` leaves it]
    #[arg(long, conflicts_with = "addr")]
    broker_bin: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let secret = match claude_ipc::secret::shared_secret_from_env() {
        Ok(secret) => secret,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let broker_bin = match args.addr {
        Some(_) => None,
        None => match target::broker_binary(args.broker_bin) {
            Ok(path) => Some(path),
            Err(missing) => {
                eprintln!("error: {missing}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
    };
    let options = Options {
        addr: args.addr,
        pid: args.pid,
        secret,
        duration: args.duration,
        idle_connections: args.idle,
        million: args.million,
        search: args.search,
        web: args.web,
        only: args.only,
        data_parent: args.data_dir.unwrap_or_else(std::env::temp_dir),
        broker_bin,
    };
    match generator::run(&options) {
        Ok(report) => {
            if args.json {
                println!("{}", report.json());
            } else {
                print!("{}", report.table());
            }
            if report.all_delivered() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_UNDELIVERED)
            }
        }
        Err(error) => {
            eprintln!("\nerror: {error}");
            ExitCode::from(EXIT_UNREACHABLE)
        }
    }
}
