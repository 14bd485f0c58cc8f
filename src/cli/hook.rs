//! `claude-ipc hook`: what the assistants' hooks print when mail is waiting.
//!
//! Two kinds of event:
//! - **Telling** events (Claude Code's `UserPromptSubmit` and `PostToolUse`, Gemini CLI's
//!   `BeforeAgent`, `AfterTool` and `SessionStart`) ask the broker's non-consuming `count`
//!   (over the Unix socket when `IPC_SOCKET` is set, else over TCP) and print one line, as
//!   plain text or inside the client's JSON, while mail waits. The whole run is bounded by
//!   short socket timeouts so it finishes well under 100 ms. Every failure prints nothing on
//!   stdout and exits 0; only a broker it refused (another user's, say) is named on stderr.
//! - **Waking** events (Claude Code's and Codex's `Stop`, Claude Code's `SessionStart`,
//!   Gemini CLI's `AfterAgent`) read the event's JSON on stdin and ask the broker's `watch`
//!   for mail never announced to that session (its `session_id`), waiting up to `--wait`
//!   seconds (see [`wait`]). Mail is never consumed; each message is announced once per
//!   session. Found mail is one line on stderr and exit code 2 (Claude Code's and Codex's
//!   "continue, and tell the model this"), or Gemini CLI's `{"decision":"deny","reason"}`.
//!   Every failure is silent with exit 0, and written to the hook log ([`log`]).

mod event;
mod log;
mod once;
mod wait;

use crate::cli::output::outln;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::client::Waiting;
use crate::session_file::SessionFile;

/// Connecting to a local broker takes well under a millisecond; a broker that is not there
/// refuses at once. This only bounds a machine that is badly stuck.
const HOOK_TIMEOUT: Duration = Duration::from_millis(50);

/// The exit code that makes Claude Code and Codex show the hook's stderr to the model.
const EXIT_TELL_THE_MODEL: u8 = 2;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  claude-ipc hook                                   for a UserPromptSubmit hook
  claude-ipc hook --event post-tool-use             for a PostToolUse hook
  claude-ipc hook --event stop --wait 600           for a Stop hook with \"asyncRewake\": true
  claude-ipc hook --event session-start --wait 600  for a SessionStart hook, likewise
  claude-ipc hook --event stop                      for Codex's Stop hook (no waiting)
  claude-ipc hook --event gemini-before-agent       for Gemini CLI's BeforeAgent hook

Telling events print e.g. \"📬 2 new messages (from alice, bob): use the check tool\", or
nothing, and exit 0. Waking events (stop, session-start, gemini-after-agent) read the event's
JSON on stdin and wait up to --wait seconds (default 0: look once) for mail never announced
to its session_id; when some arrives, stop and session-start print one line on stderr and exit
2, gemini-after-agent prints {\"decision\":\"deny\",\"reason\":...}; else they exit 0 with
nothing. A newer waiter for a session ends an older one (exit 0). Every failure is silent with
exit 0 and logged to <data directory>/hook.log (IPC_DATA_DIR, default ~/.claude-ipc-data).
No hook consumes mail. The session comes from the session file (IPC_SESSION_FILE); the broker
is at IPC_SOCKET if set, else IPC_ADDR. See docs/CLAUDE_CODE.md, docs/CODEX.md, docs/GEMINI.md.")]
pub struct HookArgs {
    /// The broker's address.
    #[arg(long, env = "IPC_ADDR", default_value = "127.0.0.1:9876")]
    pub addr: String,
    /// The broker's Unix socket (`serve --socket`); when set, it is used instead of --addr.
    #[arg(long, env = "IPC_SOCKET", value_parser = super::socket_parser())]
    pub socket: Option<PathBuf>,
    /// The hook event this runs for: user-prompt-submit (plain line), post-tool-use (Claude
    /// Code's JSON), stop, session-start (waking: stderr and exit 2), gemini-before-agent,
    /// gemini-after-tool, gemini-session-start (Gemini CLI's JSON), gemini-after-agent (waking,
    /// Gemini CLI's JSON). An unknown name is logged and ignored: a hook must not fail.
    #[arg(long, value_name = "EVENT", default_value = "user-prompt-submit")]
    pub event: String,
    /// For waking events: how long to wait for new mail, in seconds (default 0: look once).
    /// A value that is not a whole number of seconds is logged and ignored.
    #[arg(long, value_name = "SECONDS")]
    pub wait: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HookEvent {
    /// Print the line as plain text (Claude Code's and Codex's UserPromptSubmit and
    /// SessionStart take it as context).
    UserPromptSubmit,
    /// Print the line inside Claude Code's JSON hook output.
    PostToolUse,
    /// Wake the session for new mail: one line on stderr and exit 2.
    Stop,
    /// Like `stop`, for a SessionStart hook.
    SessionStart,
    /// Gemini CLI's BeforeAgent: the line as `additionalContext`.
    GeminiBeforeAgent,
    /// Gemini CLI's AfterTool: the line as `additionalContext`.
    GeminiAfterTool,
    /// Gemini CLI's SessionStart: the line as `additionalContext`.
    GeminiSessionStart,
    /// Gemini CLI's AfterAgent: new mail continues the turn with the line as its prompt.
    GeminiAfterAgent,
}

impl HookEvent {
    /// Whether this event waits for unannounced mail rather than counting waiting mail.
    fn wakes(self) -> bool {
        matches!(
            self,
            HookEvent::Stop | HookEvent::SessionStart | HookEvent::GeminiAfterAgent
        )
    }

    /// The name on the command line, for the log.
    fn name(self) -> String {
        self.to_possible_value()
            .map(|value| value.get_name().to_owned())
            .unwrap_or_default()
    }
}

/// Prints what the event calls for; never fails (a waking event may exit 2 by design).
pub fn run(args: HookArgs) -> ExitCode {
    let Ok(event) = HookEvent::from_str(&args.event, false) else {
        log::write(
            &args.event,
            None,
            "unknown --event; see claude-ipc hook --help: nothing done",
        );
        return ExitCode::SUCCESS;
    };
    let wait = match parse_wait(args.wait.as_deref()) {
        Ok(wait) => wait,
        Err(text) => {
            log::write(&event.name(), None, &text);
            return ExitCode::SUCCESS;
        }
    };
    if event.wakes() {
        return wait::run(&args, event, wait.unwrap_or_default());
    }
    if wait.is_some() {
        log::write(
            &event.name(),
            None,
            "--wait applies only to stop, session-start and gemini-after-agent: ignored",
        );
    }
    tell(&args, event);
    ExitCode::SUCCESS
}

/// `--wait SECONDS`: a whole number of seconds, at most a day.
fn parse_wait(given: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(text) = given else {
        return Ok(None);
    };
    match text.trim().parse::<u64>() {
        Ok(seconds) if seconds <= 86_400 => Ok(Some(Duration::from_secs(seconds))),
        _ => Err(format!(
            "--wait {text:?} is not a whole number of seconds from 0 to 86400: nothing done"
        )),
    }
}

/// A telling event: prints the line, in the event's shape, if mail is waiting. A
/// `PostToolUse` with its event on stdin says only what is new to the session (see [`once`]);
/// without one it counts, as the other telling events do.
fn tell(args: &HookArgs, event: HookEvent) {
    let line = match event {
        HookEvent::PostToolUse => match once::new_since_last_notice(args, event) {
            Ok(line) => line,
            Err(()) => counted(args, event),
        },
        _ => counted(args, event),
    };
    let Some(line) = line else {
        return;
    };
    let context = |name: &str| {
        serde_json::json!({"hookSpecificOutput": {
            "hookEventName": name, "additionalContext": line,
        }})
    };
    match event {
        HookEvent::UserPromptSubmit => outln!("{line}"),
        HookEvent::PostToolUse => outln!("{}", context("PostToolUse")),
        HookEvent::GeminiBeforeAgent => outln!("{}", context("BeforeAgent")),
        HookEvent::GeminiAfterTool => outln!("{}", context("AfterTool")),
        HookEvent::GeminiSessionStart => outln!("{}", context("SessionStart")),
        HookEvent::Stop | HookEvent::SessionStart | HookEvent::GeminiAfterAgent => {
            unreachable!("waking events are run by wait::run")
        }
    }
}

/// The count line, or `None`; a failure is written to the hook log, never to stdout.
fn counted(args: &HookArgs, event: HookEvent) -> Option<String> {
    let socket = super::given_socket(&args.socket);
    match waiting(&args.addr, socket) {
        Ok(waiting) => notice(&waiting),
        Err(reason) => {
            log::write(&event.name(), None, &format!("{reason}: nothing said"));
            None
        }
    }
}

fn waiting(addr: &str, socket: Option<&Path>) -> Result<Waiting, String> {
    let session = SessionFile::load().map_err(|e| e.to_string())?;
    // The broker's user comes from IPC_BROKER_USER; a broker run by anyone else gets nothing.
    let broker_user = crate::client::BrokerUser::from_env().map_err(|e| e.to_string())?;
    let connected =
        super::connect_to(addr, socket, broker_user, HOOK_TIMEOUT).and_then(|mut client| {
            // The session token goes only to a broker this client may trust with it.
            client.verify_broker(&super::broker_check())?;
            Ok(client)
        });
    let mut client = connected.map_err(|e| {
        warn_if_refused_ref(&e);
        e.to_string()
    })?;
    client
        .count(&session.session_token)
        .map_err(|e| e.to_string())
}

/// A broker this client refused (another user's, an open one although we hold the secret) is
/// worth a line on stderr, which Claude Code shows the person but not the model; the hook's
/// output stays empty and its exit code 0.
fn warn_if_refused_ref(error: &crate::client::ClientError) {
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

    /// One waiting message from each of `names`, in order, as the broker returns them: the
    /// fixture of the hooks' line tests.
    pub(super) fn mail_from(names: &[&str]) -> Vec<crate::protocol::schema::WireMessage> {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                serde_json::from_value(serde_json::json!({
                    "id": i + 1, "from": name, "to": "carol", "addressed_to": "carol",
                    "kind": "direct", "timestamp": "2026-12-02T03:00:00Z",
                    "message": {"content": "hi"}, "delivery_count": 0,
                }))
                .unwrap()
            })
            .collect()
    }

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
    fn wait_takes_whole_seconds_up_to_a_day_and_nothing_else() {
        assert_eq!(parse_wait(None), Ok(None));
        assert_eq!(parse_wait(Some("600")), Ok(Some(Duration::from_secs(600))));
        assert_eq!(parse_wait(Some("0")), Ok(Some(Duration::ZERO)));
        for bad in ["-1", "1.5", "soon", "", "86401"] {
            let refused = parse_wait(Some(bad)).unwrap_err();
            assert!(refused.contains("whole number of seconds"), "{refused}");
        }
    }

    #[test]
    fn the_event_names_are_the_ones_the_plugin_and_the_docs_use() {
        for (name, wakes) in [
            ("user-prompt-submit", false),
            ("post-tool-use", false),
            ("stop", true),
            ("session-start", true),
            ("gemini-before-agent", false),
            ("gemini-after-tool", false),
            ("gemini-session-start", false),
            ("gemini-after-agent", true),
        ] {
            let event = HookEvent::from_str(name, false).unwrap();
            assert_eq!(event.name(), name);
            assert_eq!(event.wakes(), wakes, "{name}");
        }
        assert!(HookEvent::from_str("Stop", false).is_err());
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
