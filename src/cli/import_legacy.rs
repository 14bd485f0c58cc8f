//! `claude-ipc import-legacy PATH`: bring the Python original's unread mail, instances and
//! live forwards into this broker's database, once. The work is in [`crate::legacy_import`].

use crate::cli::output::outln;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use clap::Args;
use serde_json::json;

use super::{output, CliError};
use crate::config::parse_duration;
use crate::legacy_import::{self, ImportError, ImportOptions, Progress};

#[derive(Debug, Args)]
#[command(
    after_help = "What is imported: every message the original had not delivered (read_flag 0), with its
sender, recipient, original time (naive local time, read in this machine's time zone and stored
as UTC), data and large-message file path; every instance; and renames still inside their
forward window. Delivered mail and sessions are not imported: users register again.

It is safe to run while the broker runs (the mail is deliverable at once) or while it is
stopped, and safe to run twice: what was imported before is skipped.

Examples:
  claude-ipc import-legacy ~/.claude-ipc-data/messages.db
  claude-ipc import-legacy /backup/messages.db --data-dir /srv/ipc
  claude-ipc import-legacy messages.db --json | jq .report"
)]
pub struct ImportLegacyArgs {
    /// The original's database, usually ~/.claude-ipc-data/messages.db.
    pub path: PathBuf,
    /// The broker's data directory [default: ~/.claude-ipc-data]
    #[arg(long, env = "IPC_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// How long the original's renames forwarded mail; renames older than this are not
    /// imported.
    #[arg(long, default_value = "2h", value_parser = parse_duration)]
    pub forward_duration: Duration,
    /// Print the result as JSON, for scripts.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ImportLegacyArgs) -> Result<(), CliError> {
    let data_dir = super::data_dir_or_default(args.data_dir.clone());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&data_dir)
        .map_err(|e| {
            CliError::Failed(format!(
                "cannot create the data directory {}: {e}; create it or choose another with --data-dir",
                data_dir.display()
            ))
        })?;
    let options = ImportOptions {
        source: args.path.clone(),
        database: data_dir.join("ipc.db"),
        forward_duration: args.forward_duration,
        now: Utc::now(),
    };
    let mut meter = ProgressMeter::new();
    let result = legacy_import::import(&options, |progress| meter.show(progress));
    meter.finish();
    let report = result.map_err(|error| match error {
        ImportError::Source { .. }
        | ImportError::NotLegacy { .. }
        | ImportError::SameDatabase { .. } => CliError::Usage(error.to_string()),
        other => CliError::Failed(other.to_string()),
    })?;
    if args.json {
        output::json(&json!({
            "status": "ok",
            "source": options.source,
            "database": options.database,
            "report": report,
            "summary": report.summary(),
        }));
    } else {
        outln!("{}", report.summary());
        outln!("into {}", options.database.display());
    }
    Ok(())
}

/// A one-line progress display on stderr, shown only when stderr is a terminal and the file
/// is big enough for it to matter.
struct ProgressMeter {
    enabled: bool,
    drawn: bool,
}

impl ProgressMeter {
    /// Below this many messages the import is over before a meter would be read.
    const WORTH_SHOWING: u64 = 2 * legacy_import::BATCH as u64;

    fn new() -> Self {
        ProgressMeter {
            enabled: std::io::stderr().is_terminal(),
            drawn: false,
        }
    }

    fn show(&mut self, progress: Progress) {
        if !self.enabled || progress.total < Self::WORTH_SHOWING {
            return;
        }
        let percent = progress.done * 100 / progress.total.max(1);
        eprint!(
            "\rimporting mail: {}/{} ({percent}%)",
            progress.done, progress.total
        );
        let _ = std::io::stderr().flush();
        self.drawn = true;
    }

    fn finish(&mut self) {
        if self.drawn {
            eprintln!();
        }
    }
}
