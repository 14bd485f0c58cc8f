//! `claude-ipc stop`: stop the broker on purpose, and keep it stopped.
//!
//! It leaves the marker of [`crate::stop_marker`] in the data directory, which the running
//! broker (`serve`, or an MCP server's hosted one) sees and answers by shutting down cleanly
//! (requests in flight finish, the WAL is checkpointed, the database closed), and which holds
//! off every automatic start (CLI, `watch`, `hook`, MCP servers) until `serve` is run by hand.
//! It then waits until the data directory's lock is free, so the database is closed when it
//! returns: a backup may begin. Only the data directory's owner can leave the marker; that is
//! the broker's own user, since a broker serves only a directory its user alone can write.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;

use super::CliError;
use crate::os::users;
use crate::server::lock;
use crate::stop_marker;

/// How long a broker gets to finish its requests in flight and close the database.
const STOP_WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Args)]
#[command(
    after_help = "The broker finishes the requests in flight, checkpoints its WAL and closes the
database; `stop` returns once it has. Until `claude-ipc serve` is run by hand, no client starts
a broker on this data directory (mail commands, watch, hook, MCP servers): they say why.
Only the data directory's owner (the broker's user) can stop it.

Exit codes: 0 when the broker stopped (or none ran), 1 when it did not stop in time, 2 when the
data directory is missing or not yours.

Examples:
  claude-ipc stop
  claude-ipc stop --data-dir /srv/ipc"
)]
pub struct StopArgs {
    /// The broker's data directory [default: ~/.claude-ipc-data]
    #[arg(long, env = "IPC_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

pub fn run(args: StopArgs) -> Result<(), CliError> {
    let data_dir = super::data_dir_or_default(args.data_dir);
    check_owner(&data_dir)?;
    let running = lock::holder(&data_dir);
    stop_marker::leave(&data_dir).map_err(|e| {
        CliError::Usage(format!(
            "cannot leave the stop marker in {}: {e}; only the data directory's owner can stop its broker",
            data_dir.display()
        ))
    })?;
    let Some(pid) = running else {
        println!(
            "no broker serves {}; none will be started automatically until `claude-ipc serve` is run by hand",
            data_dir.display()
        );
        return Ok(());
    };
    wait_until_gone(&data_dir, &pid)?;
    println!(
        "stopped the broker (pid {pid}) serving {}; no client starts one until `claude-ipc serve` is run by hand",
        data_dir.display()
    );
    Ok(())
}

/// Refuses a data directory that is missing or belongs to another user.
fn check_owner(data_dir: &Path) -> Result<(), CliError> {
    let metadata = std::fs::metadata(data_dir).map_err(|e| {
        CliError::Usage(format!(
            "no data directory at {} ({e}); give the broker's with --data-dir or IPC_DATA_DIR",
            data_dir.display()
        ))
    })?;
    let me = users::effective_uid();
    if metadata.uid() != me {
        return Err(CliError::Usage(format!(
            "{} belongs to uid {}, not to you (uid {me}): only the broker's own user can stop it",
            data_dir.display(),
            metadata.uid()
        )));
    }
    Ok(())
}

/// Waits until no broker holds the data directory's lock.
fn wait_until_gone(data_dir: &Path, pid: &str) -> Result<(), CliError> {
    let since = Instant::now();
    while lock::holder(data_dir).is_some() {
        if since.elapsed() > STOP_WAIT {
            return Err(CliError::Failed(format!(
                "the broker (pid {pid}) has not stopped within {} s (an older version that does not \
                 know `stop`?); stop it with `kill {pid}`: the marker stays, so nothing starts another",
                STOP_WAIT.as_secs()
            )));
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}
