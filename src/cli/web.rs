//! `claude-ipc web`: print the dashboard's login link (from `web.json` in the data
//! directory, which only this user can read) and open it in a browser when one is at hand.

use crate::cli::output::outln;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use clap::Args;
use serde_json::json;

use super::{output, CliError};
use crate::web::WebFile;

/// What to say when no dashboard runs for this data directory.
const HOW_TO_ENABLE: &str = "start the broker with the dashboard on: `claude-ipc serve --web 127.0.0.1:0` (or IPC_WEB=127.0.0.1:0), then run `claude-ipc web` again";

#[derive(Debug, Args)]
#[command(
    after_help = "The link carries a login token that is new at every start of the broker; anyone\nwho has it can read all mail and write as the human, so do not share it.\n\nExamples:\n  claude-ipc web\n  claude-ipc web --no-open\n  claude-ipc web --json\n\nExits with 2 when no broker with the dashboard runs for this data directory."
)]
pub struct WebArgs {
    /// The broker's data directory [default: ~/.claude-ipc-data]
    #[arg(long, env = "IPC_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Only print the link; do not open a browser.
    #[arg(long)]
    pub no_open: bool,
    /// Print `{"login_url": ..., "url": ...}`.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: WebArgs) -> Result<(), CliError> {
    let data_dir = super::data_dir_or_default(args.data_dir.clone());
    let file = match WebFile::read(&data_dir) {
        Ok(file) => file,
        Err(e) if e.is_missing() => {
            return Err(CliError::Usage(format!(
                "no dashboard runs for {}: {HOW_TO_ENABLE}",
                data_dir.display()
            )))
        }
        Err(e) => {
            return Err(CliError::Usage(format!(
                "cannot read the dashboard's link: {e}"
            )))
        }
    };
    if !process_alive(file.pid) {
        return Err(CliError::Usage(format!(
            "the broker that wrote {} (pid {}) is not running: {HOW_TO_ENABLE}",
            data_dir.join(crate::web::WEB_FILE).display(),
            file.pid
        )));
    }
    if args.json {
        output::json(&json!({"login_url": file.login_url, "url": file.url}));
    } else {
        outln!("{}", file.login_url);
    }
    if !args.no_open {
        open_browser(&file.login_url);
    }
    Ok(())
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // Signal 0 checks only that the process exists (EPERM: it does, as another user's).
    // SAFETY: kill with signal 0 sends nothing.
    let result = unsafe { libc::kill(pid, 0) };
    result == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Opens `url` with the desktop's opener, only where there is a desktop to show it: a
/// headless machine (no display) gets the printed link alone.
fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else if std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
    {
        "xdg-open"
    } else {
        return;
    };
    let spawned = Command::new(opener)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if spawned.is_err() {
        eprintln!("(no browser could be opened; open the link above yourself)");
    }
}
