//! `claude-ipc hook`: one short line for Claude Code's hooks when mail is waiting.
//!
//! It reads the session file and asks the broker's non-consuming `count` (over the Unix socket
//! when `IPC_SOCKET` is set, else over TCP), so the mail stays waiting for the `check` tool.
//! Every failure (no session, no broker, a slow broker) prints nothing on stdout and exits 0: a
//! hook must never get in the user's way. Only a broker it refused (another user's, say) is
//! named on stderr. The whole run is bounded by
//! short socket timeouts so it finishes well under 100 ms.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use super::session_file::SessionFile;
use crate::client::Waiting;

/// Connecting to a local broker takes well under a millisecond; a broker that is not there
/// refuses at once. This only bounds a machine that is badly stuck.
const HOOK_TIMEOUT: Duration = Duration::from_millis(50);

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  claude-ipc hook                            for a UserPromptSubmit hook\n  claude-ipc hook --event post-tool-use      for a PostToolUse hook\n\nPrints e.g. \"📬 2 new messages (from alice, bob): use the check tool\", or nothing.\nIt reads the session file (IPC_SESSION_FILE) and never consumes mail. It finds the broker at\nIPC_SOCKET if that is set, else at IPC_ADDR. See docs/CLAUDE_CODE.md."
)]
pub struct HookArgs {
    /// The broker's address.
    #[arg(long, env = "IPC_ADDR", default_value = "127.0.0.1:9876")]
    pub addr: String,
    /// The broker's Unix socket (`serve --socket`); when set, it is used instead of --addr.
    #[arg(long, env = "IPC_SOCKET", value_parser = super::socket_parser())]
    pub socket: Option<PathBuf>,
    /// The hook event this runs for. Claude Code gives the model a UserPromptSubmit hook's
    /// plain output, but a PostToolUse hook's only as JSON `additionalContext`.
    #[arg(long, value_enum, default_value_t = HookEvent::UserPromptSubmit)]
    pub event: HookEvent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HookEvent {
    /// Print the line as plain text.
    UserPromptSubmit,
    /// Print the line inside Claude Code's JSON hook output.
    PostToolUse,
}

/// Prints the line if mail is waiting; never fails.
pub fn run(args: HookArgs) {
    let socket = super::given_socket(&args.socket);
    let Some(line) = waiting(&args.addr, socket).as_ref().and_then(notice) else {
        return;
    };
    match args.event {
        HookEvent::UserPromptSubmit => println!("{line}"),
        HookEvent::PostToolUse => println!(
            "{}",
            serde_json::json!({"hookSpecificOutput": {
                "hookEventName": "PostToolUse", "additionalContext": line,
            }})
        ),
    }
}

fn waiting(addr: &str, socket: Option<&Path>) -> Option<Waiting> {
    let session = SessionFile::load().ok()?;
    // The broker's user comes from IPC_BROKER_USER; a broker run by anyone else gets nothing.
    let broker_user = crate::client::BrokerUser::from_env().ok()?;
    let connected =
        super::connect_to(addr, socket, broker_user, HOOK_TIMEOUT).and_then(|mut client| {
            // The session token goes only to a broker this client may trust with it.
            client.verify_broker(&super::broker_check())?;
            Ok(client)
        });
    let mut client = connected.map_err(warn_if_refused).ok()?;
    client.count(&session.session_token).ok()
}

/// A broker this client refused (another user's, an open one although we hold the secret) is
/// worth a line on stderr, which Claude Code shows the person but not the model; the hook's
/// output stays empty and its exit code 0.
fn warn_if_refused(error: crate::client::ClientError) {
    if error.is_broker_refused() {
        eprintln!(
            "claude-ipc hook: {}",
            super::output::for_terminal(&error.to_string())
        );
    }
}

/// The line for waiting mail, or nothing when none waits.
pub fn notice(waiting: &Waiting) -> Option<String> {
    let noun = match waiting.count {
        0 => return None,
        1 => "new message",
        _ => "new messages",
    };
    let from = if waiting.senders.is_empty() {
        String::new()
    } else {
        // Names come from the broker; escaped, none can break the line or start a new one.
        let names: Vec<_> = waiting
            .senders
            .iter()
            .map(|name| super::output::for_terminal(name))
            .collect();
        format!(" (from {})", names.join(", "))
    };
    Some(format!(
        "📬 {} {noun}{from}: use the check tool",
        waiting.count
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_name_cannot_break_the_line_or_drive_a_terminal() {
        let forged = Waiting {
            count: 1,
            senders: vec!["x\n[7] from alice\u{1b}[2J\u{202e}".into()],
        };
        let line = notice(&forged).unwrap();
        assert_eq!(
            line,
            "📬 1 new message (from x\\n[7] from alice\\e[2J\\u{202e}): use the check tool"
        );
    }

    #[test]
    fn the_notice_counts_and_names_senders() {
        let two = Waiting {
            count: 2,
            senders: vec!["alice".into(), "bob".into()],
        };
        assert_eq!(
            notice(&two).unwrap(),
            "📬 2 new messages (from alice, bob): use the check tool"
        );
        let one = Waiting {
            count: 1,
            senders: vec!["alice".into()],
        };
        assert_eq!(
            notice(&one).unwrap(),
            "📬 1 new message (from alice): use the check tool"
        );
        assert_eq!(
            notice(&Waiting {
                count: 0,
                senders: vec![]
            }),
            None
        );
    }
}
