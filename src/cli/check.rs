//! `claude-ipc check` (read your mail), `claude-ipc watch` (print mail as it arrives) and
//! `claude-ipc list` (who is registered).
//!
//! Both readers lease the mail with a manual ack and acknowledge it only once it has been
//! written to stdout, so mail printed to a closed pipe comes back instead of being lost.

use crate::cli::output::outln;
use std::io::Write;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use super::output::{block_for_terminal, for_terminal};
use super::{output, CliError, ClientArgs};
use crate::client::{CheckOptions, Checked, Client, ClientError, Received};
use crate::relative_time::{reach, relative_to_now};
use crate::session_file::{SessionFile, SessionFileError};

/// How long printed-but-unacknowledged mail is held before it is handed out again.
pub(super) const LEASE: Duration = Duration::from_secs(30);
/// How long one `watch` long-poll waits before asking again.
const WATCH_POLL: Duration = Duration::from_secs(25);
/// What every line of a message's content and data begins with, so none looks like a header.
const CONTENT_INDENT: &str = "  ";
/// Pause before `watch` reconnects to a broker that went away.
const WATCH_RECONNECT: Duration = Duration::from_secs(1);

#[derive(Debug, Args)]
#[command(
    after_help = "Each message shows its id, sender and time (with how long ago). Mail is acknowledged only\nafter it was written to stdout, so an interrupted check loses nothing.\n\nExamples:\n  claude-ipc check\n  claude-ipc check --json | jq -r '.messages[].message.content'"
)]
pub struct CheckArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  claude-ipc watch\n  claude-ipc watch --json | jq -c .   (one JSON object per message)"
)]
pub struct WatchArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  claude-ipc list\n  claude-ipc list --json | jq -r '.instances[].id'"
)]
pub struct ListArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn run(args: CheckArgs) -> Result<(), CliError> {
    let session = SessionFile::load()?;
    let mut client = args.client.connect_or_start()?;
    let options = CheckOptions {
        manual_ack: Some(LEASE),
        ..CheckOptions::default()
    };
    let checked = client.check_with(&session.session_token, options)?;
    let text = if args.client.json {
        check_json(&checked)
    } else {
        check_text(&checked)
    };
    print_then_ack(&mut client, &session, &text, &checked)
}

/// `watch`: long-polls until interrupted, printing and acknowledging each batch. A broker
/// that goes away is waited for, so a restart does not end the watch.
pub fn run_watch(args: WatchArgs) -> Result<(), CliError> {
    let session = SessionFile::load()?;
    let options = CheckOptions {
        manual_ack: Some(LEASE),
        wait: Some(WATCH_POLL),
        limit: None,
    };
    let mut client = wait_for_broker(&args.client, false)?;
    if !args.client.json {
        eprintln!("watching mail for {} (Ctrl-C to stop)", session.instance_id);
    }
    loop {
        match client.check_with(&session.session_token, options) {
            Ok(checked) if checked.messages.is_empty() => continue,
            Ok(checked) => {
                let text = if args.client.json {
                    checked
                        .messages
                        .iter()
                        .map(|m| format!("{}\n", output::json_line(&message_json(m))))
                        .collect()
                } else {
                    checked
                        .messages
                        .iter()
                        .map(message_text)
                        .collect::<String>()
                };
                print_then_ack(&mut client, &session, &text, &checked)?;
            }
            Err(ClientError::Io(_) | ClientError::Closed | ClientError::Unreachable { .. }) => {
                client = wait_for_broker(&args.client, true)?;
            }
            Err(other) => return Err(other.into()),
        }
    }
}

/// Connects, waiting as long as it takes; says so once on stderr. `watch` never starts a
/// broker: one stopped on purpose (`claude-ipc stop`) must stay stopped while watches wait.
/// A broker that answers but must not be trusted (run by another user, or failing
/// [`Client::verify_broker`]) ends the watch instead: waiting on it would never end.
fn wait_for_broker(args: &ClientArgs, lost: bool) -> Result<Client, CliError> {
    let mut said = false;
    loop {
        match args.connect_verified() {
            Ok(client) => {
                if said {
                    eprintln!("connected to the broker at {}", args.target());
                }
                return Ok(client);
            }
            Err(CliError::Client(error)) if error.is_broker_refused() => return Err(error.into()),
            Err(_) if said => {}
            Err(_) => {
                let what = if lost {
                    "lost the broker"
                } else {
                    "no broker answers"
                };
                eprintln!(
                    "{what} at {}; waiting for it (watch starts none: run `claude-ipc serve`)",
                    args.target()
                );
                said = true;
            }
        }
        std::thread::sleep(WATCH_RECONNECT);
    }
}

/// Writes the text to stdout and only then acknowledges the mail in it. If stdout is gone,
/// nothing is acknowledged and the mail is handed out again after its lease.
pub(super) fn print_then_ack(
    client: &mut Client,
    session: &SessionFile,
    text: &str,
    checked: &Checked,
) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| {
            let note = format!(
                "cannot write to stdout ({e}); the mail was not acknowledged and comes back in {} s",
                LEASE.as_secs()
            );
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                // The reader went away: the status a shell expects of a writer to a closed pipe.
                eprintln!("note: {note}");
                std::process::exit(141);
            }
            CliError::Usage(note)
        })?;
    let ids = checked.ids();
    if ids.is_empty() {
        return Ok(());
    }
    if let Err(e) = client.ack(&session.session_token, &ids) {
        eprintln!(
            "warning: could not acknowledge the mail above ({}); it will be shown again in {} s",
            for_terminal(&e.to_string()),
            LEASE.as_secs()
        );
    }
    Ok(())
}

fn check_json(checked: &Checked) -> String {
    output::json_text(&check_value(checked))
}

/// A check's reply as `--json` prints it.
pub(super) fn check_value(checked: &Checked) -> serde_json::Value {
    let messages: Vec<_> = checked.messages.iter().map(message_json).collect();
    json!({"status": "ok", "messages": messages, "more": checked.more})
}

fn message_json(m: &Received) -> serde_json::Value {
    json!({"id": m.id, "from": m.from, "to": m.to, "kind": m.kind, "timestamp": m.timestamp,
           "message": {"content": m.message.content, "data": m.message.data},
           "nonce": m.nonce, "sender_timestamp": m.sender_timestamp,
           "delivery_count": m.delivery_count, "thread_id": m.thread_id,
           "reply_to": m.reply_to, "subject": m.subject})
}

pub(super) fn check_text(checked: &Checked) -> String {
    let mut text = String::new();
    if checked.messages.is_empty() {
        text.push_str("No new messages\n");
    }
    for message in &checked.messages {
        text.push_str(&message_text(message));
    }
    if checked.more {
        text.push_str("(more waiting: run check again)\n");
    }
    text
}

/// One message for a person: header line (with how long ago it arrived), indented content,
/// then data if any. Only the header starts at the margin; every line of the content and data
/// is indented and has its control characters escaped, so a message cannot forge another
/// message's header or drive the terminal.
fn message_text(message: &Received) -> String {
    let ago = relative_to_now(&message.timestamp)
        .map(|ago| format!(" ({ago})"))
        .unwrap_or_default();
    let threading = crate::mcp::format::threading(
        message.id.0,
        message.thread_id,
        message.reply_to,
        message.subject.as_deref(),
    );
    let mut text = format!(
        "[{}] from {} at {}{ago}{}\n{}\n",
        message.id,
        for_terminal(&message.from),
        for_terminal(&message.timestamp),
        for_terminal(&threading),
        block_for_terminal(&message.message.content, CONTENT_INDENT)
    );
    if let Some(data) = &message.message.data {
        let data = serde_json::Value::Object(data.clone()).to_string();
        text.push_str(&format!("{CONTENT_INDENT}data: {}\n", for_terminal(&data)));
    }
    text
}

/// `list`: with a session as that instance; without one (no session file yet) the read-only
/// list the broker gives its own user, names and presence, as `status` shows them.
pub fn run_list(args: ListArgs) -> Result<(), CliError> {
    let instances = match SessionFile::load() {
        Ok(session) => args
            .client
            .connect_or_start()?
            .list(&session.session_token)?,
        Err(SessionFileError::NotRegistered(_)) => {
            let mut client = args.client.connect()?;
            client.verify_broker(&super::broker_check())?;
            client.list_without_session()?
        }
        Err(other) => return Err(other.into()),
    };
    if args.client.json {
        let instances: Vec<_> = instances
            .iter()
            .map(|i| json!({"id": i.id, "last_seen": i.last_seen, "online": i.online, "push": i.push}))
            .collect();
        output::json(&json!({"status": "ok", "instances": instances}));
        return Ok(());
    }
    if instances.is_empty() {
        outln!("No instances registered");
    }
    for instance in instances {
        let ago = relative_to_now(&instance.last_seen)
            .map(|ago| format!(" ({ago})"))
            .unwrap_or_default();
        outln!(
            "{:<32}  {:<17}  last seen {}{ago}",
            for_terminal(&instance.id),
            reach(instance.online, instance.push),
            for_terminal(&instance.last_seen)
        );
    }
    Ok(())
}
