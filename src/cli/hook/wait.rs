//! Waking events (`--event stop`, `session-start`, `gemini-after-agent`): wait for mail never
//! announced to the session, and tell the model when some arrives.
//!
//! The session is the event's `session_id`, passed to the broker's `watch` as the watcher.
//! The broker returns only mail it never announced to that watcher and records each message
//! it returns as announced in the same transaction, so one session is told of a message once,
//! whichever run of the hook told it, and a model that ignores a message is not woken by it
//! again. Nothing is consumed: the mail waits for `check`. A newer `watch` for the same
//! watcher ends this one (`replaced`), so a session has one waiter. The wait is a chain of
//! long-polls of at most [`MAX_POLL`] each until the deadline; a broker that is not there
//! yet gets [`START_GRACE`] to appear, and one that restarts meanwhile is reconnected to. Every failure ends the run with exit 0 and a line in the
//! hook log.

use crate::cli::output::outln;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::{event, log, HookArgs, HookEvent, EXIT_TELL_THE_MODEL};
use crate::client::{Client, ClientError, WatchOptions};
use crate::protocol::schema::WireMessage;
use crate::session_file::SessionFile;

/// A waiting hook may take a moment to connect; it runs in the background.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The broker's longest long-poll (`watch`'s `wait_ms` is at most 300000).
const MAX_POLL: Duration = Duration::from_secs(300);

/// The most mail one wake announces (the broker's largest `limit`); the rest is announced by
/// a later run.
const WATCH_LIMIT: u32 = 500;

/// How many senders the line names before it says how many more there are.
const NAMED_SENDERS: usize = 5;
/// How many subjects the line names before it says how many more there are.
const NAMED_SUBJECTS: usize = 3;

/// How long a waiting hook looks for a broker that is not there when it starts.
const START_GRACE: Duration = Duration::from_secs(5);

/// The longest pause before reconnecting to a broker that went away.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// How a wait ended.
#[derive(Debug)]
enum Outcome {
    /// Mail never announced to this session; it is now recorded as announced.
    Mail {
        messages: Vec<WireMessage>,
        more: bool,
    },
    /// The deadline passed with nothing new.
    Deadline,
    /// A newer waiter for this session took over.
    Replaced,
    /// Something failed; the text says what, for the log.
    Failed(String),
}

/// Reads the event, waits up to `wait` for new mail, and tells the model in the event's way.
pub fn run(args: &HookArgs, event: HookEvent, wait: Duration) -> ExitCode {
    let name = event.name();
    let input = match event::read_stdin() {
        Ok(input) => input,
        Err(error) => {
            log::write(&name, None, &format!("{error}: nothing done"));
            return ExitCode::SUCCESS;
        }
    };
    let session = Some(input.session_id.as_str());
    let watcher = event::watcher_for(&input.session_id);
    match wait_for_mail(args, &watcher, Instant::now() + wait) {
        Outcome::Mail { messages, more } => {
            let line = wake_line(&messages, more);
            log::write(&name, session, &format!("told the model: {line}"));
            tell_the_model(event, &line)
        }
        Outcome::Deadline => ExitCode::SUCCESS,
        Outcome::Replaced => {
            log::write(&name, session, "a newer hook for this session took over");
            ExitCode::SUCCESS
        }
        Outcome::Failed(reason) => {
            log::write(&name, session, &format!("{reason}: nothing done"));
            ExitCode::SUCCESS
        }
    }
}

/// Claude Code and Codex show a hook's stderr to the model when it exits 2 (with
/// `asyncRewake`, Claude Code wakes an idle session for it); Gemini CLI's AfterAgent takes a
/// `deny` decision's reason as the next prompt.
fn tell_the_model(event: HookEvent, line: &str) -> ExitCode {
    match event {
        HookEvent::GeminiAfterAgent => {
            outln!(
                "{}",
                serde_json::json!({"decision": "deny", "reason": line})
            );
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{line}");
            ExitCode::from(EXIT_TELL_THE_MODEL)
        }
    }
}

/// Long-polls `watch` until mail comes, the deadline passes, or a newer waiter takes over.
fn wait_for_mail(args: &HookArgs, watcher: &str, deadline: Instant) -> Outcome {
    let mut session = match SessionFile::load() {
        Ok(session) => session,
        Err(error) => return Outcome::Failed(error.to_string()),
    };
    let mut client = match connect_at_start(args, deadline) {
        Ok(client) => client,
        Err(error) => return Outcome::Failed(error.to_string()),
    };
    let mut retry = Duration::from_secs(1);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let options = WatchOptions {
            watcher: watcher.to_owned(),
            wait: Some(remaining.min(MAX_POLL)),
            limit: Some(WATCH_LIMIT),
            push: false,
        };
        match client.watch(&session.session_token, &options) {
            Ok(reply) if reply.replaced => return Outcome::Replaced,
            Ok(reply) if !reply.messages.is_empty() => {
                return Outcome::Mail {
                    messages: reply.messages,
                    more: reply.more,
                }
            }
            Ok(_) => {}
            Err(error) if is_connection_loss(&error) => {
                // The broker stopped or restarted: connect again, until the deadline.
                if Instant::now() + retry >= deadline {
                    return Outcome::Failed(format!("lost the broker until the deadline: {error}"));
                }
                std::thread::sleep(retry);
                retry = (retry * 2).min(MAX_RETRY);
                match connect(args) {
                    Ok(fresh) => client = fresh,
                    Err(error) if is_connection_loss(&error) => {}
                    Err(error) => return Outcome::Failed(error.to_string()),
                }
                continue;
            }
            Err(error) if is_revoked(&error) => match SessionFile::load() {
                // Registered again since (an MCP server writes the file too): use that session.
                Ok(fresh) if fresh.session_token != session.session_token => {
                    session = fresh;
                    continue;
                }
                _ => return Outcome::Failed(error.to_string()),
            },
            Err(error) => return Outcome::Failed(error.to_string()),
        }
        if Instant::now() >= deadline {
            return Outcome::Deadline;
        }
    }
}

/// Connects, giving a broker that is not there yet [`START_GRACE`] to appear: Claude Code
/// starts the MCP server that may host the broker and runs the `SessionStart` hook at the
/// same moment.
fn connect_at_start(args: &HookArgs, deadline: Instant) -> Result<Client, ClientError> {
    let give_up = deadline.min(Instant::now() + START_GRACE);
    let mut pause = Duration::from_millis(100);
    loop {
        match connect(args) {
            Err(error) if is_connection_loss(&error) && Instant::now() + pause < give_up => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            connected => return connected,
        }
    }
}

/// Connects as the other client commands do, and trusts only a broker they would trust.
fn connect(args: &HookArgs) -> Result<Client, ClientError> {
    let broker_user = crate::client::BrokerUser::from_env()?;
    let socket = super::super::given_socket(&args.socket);
    let mut client = super::super::connect_to(&args.addr, socket, broker_user, CONNECT_TIMEOUT)?;
    // The session token goes only to a broker this client may trust with it.
    client.verify_broker(&super::super::broker_check())?;
    Ok(client)
}

/// A broker that is not there (yet, or any more), as opposed to one that refused.
fn is_connection_loss(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Unreachable { .. } | ClientError::Io(_) | ClientError::Closed
    )
}

/// The session in the file is no longer valid (expired, or replaced by a takeover).
fn is_revoked(error: &ClientError) -> bool {
    matches!(error.code(), "invalid_session" | "session_replaced")
}

/// The one line the model is told: how many, from whom, and which tool reads them, e.g.
/// `📬 2 new messages from alice, bob: use the check tool of claude-ipc to read them`.
fn wake_line(messages: &[WireMessage], more: bool) -> String {
    let count = match (messages.len(), more) {
        (1, false) => "1 new message".to_owned(),
        (n, false) => format!("{n} new messages"),
        (n, true) => format!("{n}+ new messages"),
    };
    let it = if messages.len() == 1 && !more {
        "it"
    } else {
        "them"
    };
    format!(
        "📬 {count} from {}{}: use the check tool of claude-ipc to read {it}",
        senders(messages),
        subjects(messages)
    )
}

/// The subjects (with their threads) of the messages, each once, the first
/// [`NAMED_SUBJECTS`]: ` about "release" (thread 41), "API"`; empty when none has one.
fn subjects(messages: &[WireMessage]) -> String {
    let mut seen: Vec<(&str, Option<i64>)> = Vec::new();
    for message in messages {
        if let Some(subject) = message.subject.as_deref() {
            let thread = message.thread_id.map(|thread| thread.0);
            if !seen.iter().any(|(shown, _)| *shown == subject) {
                seen.push((subject, thread));
            }
        }
    }
    if seen.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = seen
        .iter()
        .take(NAMED_SUBJECTS)
        .map(|(subject, thread)| {
            let subject = super::super::output::for_terminal(subject);
            match thread {
                Some(thread) => format!("\"{subject}\" (thread {thread})"),
                None => format!("\"{subject}\""),
            }
        })
        .collect();
    let more = match seen.len().saturating_sub(NAMED_SUBJECTS) {
        0 => String::new(),
        n => format!(", {n} more"),
    };
    format!(" about {}{more}", shown.join(", "))
}

/// The senders in the order of their first message, each once, escaped so that no name can
/// break the line; past [`NAMED_SENDERS`], how many more.
pub(super) fn senders(messages: &[WireMessage]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for message in messages {
        if !names.contains(&message.from.as_str()) {
            names.push(&message.from);
        }
    }
    let mut shown: Vec<String> = names
        .iter()
        .take(NAMED_SENDERS)
        .map(|name| super::super::output::for_terminal(name).into_owned())
        .collect();
    if names.len() > NAMED_SENDERS {
        shown.push(format!("{} more", names.len() - NAMED_SENDERS));
    }
    shown.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::hook::tests::mail_from as from;

    #[test]
    fn the_line_counts_names_each_sender_once_and_says_which_tool_reads_them() {
        assert_eq!(
            wake_line(&from(&["alice", "bob", "alice"]), false),
            "📬 3 new messages from alice, bob: use the check tool of claude-ipc to read them"
        );
        assert_eq!(
            wake_line(&from(&["alice"]), false),
            "📬 1 new message from alice: use the check tool of claude-ipc to read it"
        );
        assert_eq!(
            wake_line(&from(&["alice"]), true),
            "📬 1+ new messages from alice: use the check tool of claude-ipc to read them"
        );
    }

    #[test]
    fn past_five_senders_the_line_says_how_many_more() {
        let line = wake_line(&from(&["a", "b", "c", "d", "e", "f", "g"]), false);
        assert_eq!(
            line,
            "📬 7 new messages from a, b, c, d, e, 2 more: use the check tool of claude-ipc to read them"
        );
    }

    #[test]
    fn the_line_names_the_subjects_and_their_threads() {
        let mut messages = from(&["alice", "bob", "alice"]);
        messages[0].subject = Some("release".into());
        messages[0].thread_id = Some(crate::domain::MessageId(41));
        messages[2].subject = Some("release".into());
        messages[1].subject = Some("line\nbreak".into());
        assert_eq!(
            wake_line(&messages, false),
            "📬 3 new messages from alice, bob about \"release\" (thread 41), \"line\\nbreak\": use the check tool of claude-ipc to read them"
        );
    }

    #[test]
    fn a_sender_name_cannot_break_the_line() {
        let line = wake_line(&from(&["x\n[7] from alice\u{1b}[2J"]), false);
        assert!(!line.contains('\n') && !line.contains('\u{1b}'), "{line}");
        assert!(line.contains("x\\n[7] from alice\\e[2J"), "{line}");
    }
}
