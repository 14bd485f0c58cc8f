//! The CLI's part in broker takeover: a mail command (register, send, broadcast, check, watch,
//! list, rename) that finds no broker starts `claude-ipc serve` in the background on the same
//! address and data directory, then carries on.
//!
//! A CLI process exits as soon as its command is done, so it cannot host the broker itself the
//! way an MCP server does; it starts a detached `serve` instead, in its own process group so a
//! Ctrl-C in the terminal does not take it down. The data-directory lock still decides: if
//! another process wins the race, this one's `serve` exits and the winner answers.
//! `IPC_AUTOSTART=0` turns this off, and so does the marker `claude-ipc stop` leaves (see
//! [`crate::stop_marker`]); `ping`, `status`, `hook` and `watch` never start a broker.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{data_dir_or_default, ClientArgs};
use crate::background_serve::{self, BackgroundServe};
use crate::client::{Client, ClientError};
use crate::stop_marker;

/// How long a freshly started broker gets to answer.
const START_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(25);
/// The started broker's log, inside its data directory.
const LOG_FILE: &str = "broker.log";

/// Connects, starting a broker in the background first if none answers.
pub fn connect_or_start(args: &ClientArgs, timeout: Duration) -> Result<Client, ClientError> {
    let unreachable = match args.connect_within(timeout) {
        Err(error @ ClientError::Unreachable { .. }) => error,
        other => return other,
    };
    if !loopback(args) {
        return Err(unreachable);
    }
    let data_dir = data_dir_or_default(std::env::var_os("IPC_DATA_DIR").map(PathBuf::from));
    if let Some(hold) = stop_marker::hold_reason(&data_dir) {
        return Err(held_off(unreachable, &hold));
    }
    let mut started = match spawn_serve(args, &data_dir) {
        Ok(started) => started,
        Err(e) => {
            eprintln!("could not start a broker in the background: {e}");
            return Err(unreachable);
        }
    };
    let pid = started.child.id();
    let since = Instant::now();
    while since.elapsed() < START_WAIT {
        if let Ok(client) = args.connect_within(timeout) {
            eprintln!(
                "note: no broker answered at {}, so one was started in the background \
                 (pid {pid}, data {}, log {}); stop it with `kill {pid}`",
                args.target(),
                data_dir.display(),
                data_dir.join(LOG_FILE).display()
            );
            return Ok(client);
        }
        // A broker that refused to start (a data directory protected by a secret this client
        // lacks, say) has exited: its reason goes to the person, not only into the log.
        // One that lost the race to another broker exits too, and the winner answers soon.
        let exited = started.child.try_wait().ok().flatten();
        if let Some(status) = exited.filter(|s| s.code() != Some(super::serve::EXIT_TAKEN.into())) {
            eprintln!(
                "the broker started in the background (pid {pid}) exited ({status}): {}",
                refusal(&started)
            );
            return Err(ClientError::Unreachable {
                addr: args.target(),
                reason: "the broker started for it refused to start, as said above".to_owned(),
            });
        }
        std::thread::sleep(POLL);
    }
    eprintln!(
        "a broker was started in the background (pid {pid}) but did not answer within {} s; \
         see {}",
        START_WAIT.as_secs(),
        data_dir.join(LOG_FILE).display()
    );
    Err(unreachable)
}

/// The unreachable error, with why no broker was started and how to start one.
pub fn held_off(unreachable: ClientError, hold: &str) -> ClientError {
    match unreachable {
        ClientError::Unreachable { addr, reason } => ClientError::Unreachable {
            addr,
            reason: format!("{reason}; {hold}"),
        },
        other => other,
    }
}

/// Only a broker on this machine can be started from here.
fn loopback(args: &ClientArgs) -> bool {
    if args.socket().is_some() {
        return true;
    }
    args.addr
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|addr| addr.ip().is_loopback())
}

/// Why the broker started in the background exited: the error lines it wrote to the log since
/// it was started (the last few lines if it wrote no error line).
fn refusal(started: &BackgroundServe) -> String {
    let log = &started.log;
    let mut text = String::new();
    let read = File::open(log).and_then(|mut file| {
        file.seek(SeekFrom::Start(started.log_offset))?;
        file.take(REFUSAL_READ_MAX).read_to_string(&mut text)
    });
    if let Err(e) = read {
        return format!(
            "it exited, and its log {} cannot be read: {e}",
            log.display()
        );
    }
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    let errors: Vec<&str> = lines
        .iter()
        .filter_map(|line| line.strip_prefix("error: "))
        .collect();
    if errors.is_empty() {
        let tail = lines[lines.len().saturating_sub(3)..].join("\n");
        return format!("it exited; the end of {}:\n{tail}", log.display());
    }
    errors.join("\n")
}

/// The most of the log read back to find why a started broker exited.
const REFUSAL_READ_MAX: u64 = 64 * 1024;

/// Starts `claude-ipc serve` detached, logging to `<data_dir>/broker.log`. It inherits this
/// process's environment, so it runs with this client's shared secret (or none), never
/// another mode than the client's.
fn spawn_serve(args: &ClientArgs, data_dir: &Path) -> std::io::Result<BackgroundServe> {
    let exe = std::env::current_exe()?;
    background_serve::spawn(&exe, &args.addr, data_dir, LOG_FILE, |command| {
        command.env("NO_COLOR", "1").process_group(0);
        if let Some(socket) = args.socket() {
            command.arg("--socket").arg(socket);
        }
    })
}
