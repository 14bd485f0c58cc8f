//! `claude-ipc send TO MESSAGE...` and `claude-ipc broadcast MESSAGE...` (the message may
//! also come from `--file PATH` or, as `-`, from standard input: see [`super::content`]).

use crate::cli::output::outln;
use clap::Args;
use serde_json::Value;

use std::time::Duration;

use super::content::{self, ContentArgs};
use super::{arg, check, output, CliError, ClientArgs, EXIT_NO_REPLY};
use crate::client::{Client, Sent, Stamp};
use crate::protocol::schema::requests::ThreadingFields;
use crate::relative_time::recipient_reach;
use crate::session_file::SessionFile;

#[derive(Debug, Args)]
#[command(
    after_help = "Mail to a name nobody has registered yet waits for it (7 days); if the name is close to a
registered one, the reply asks whether you meant that one. The message is the words after
TO, or `-` alone to read it from standard input, or --file PATH; empty messages are refused.
Content over 10 KiB is stored in a file and the recipient gets a summary with its path; one
request may be at most 1 MiB (the broker's --max-request-bytes): for more, send a file's path.
Each send carries a fresh nonce, so a retried request is stored once.

With --wait-reply it then waits for the answer (a message that replies to this one) and
prints it; other mail stays waiting. No answer in time: a line on stderr and exit code 4.

Examples:
  claude-ipc send bob \"the API changed, see src/api.rs\"
  claude-ipc send bob \"build done\" --data '{\"exit\": 0}'
  claude-ipc send reviewer \"$(git diff --stat)\"
  git diff | claude-ipc send reviewer -
  claude-ipc send bob --file build.log
  claude-ipc send bob \"ship it?\" --subject release --wait-reply 60
  claude-ipc send bob \"done\" --reply-to 41"
)]
pub struct SendArgs {
    /// The recipient's name (it need not be registered yet).
    #[arg(value_parser = arg::name)]
    pub to: String,
    #[command(flatten)]
    pub content: ContentArgs,
    /// A JSON object to attach as `data`.
    #[arg(long)]
    pub data: Option<String>,
    /// A subject (1-200 characters on one line); a reply without one keeps its thread's.
    #[arg(long, value_parser = arg::subject)]
    pub subject: Option<String>,
    /// The id of the message this answers; the message joins its thread.
    #[arg(long, value_name = "ID", value_parser = arg::message_id)]
    pub reply_to: Option<i64>,
    /// Then wait up to SECONDS for the answer and print it (exit code 4 if none comes).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub wait_reply: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Goes to every registered instance except you; instances whose queue is full are skipped and
named in the reply.

The message may also be `-` (standard input) or --file PATH.

Examples:
  claude-ipc broadcast \"deploying in 5 minutes\"
  claude-ipc broadcast --file release-notes.md"
)]
pub struct BroadcastArgs {
    #[command(flatten)]
    pub content: ContentArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn run(args: SendArgs) -> Result<(), CliError> {
    let session = SessionFile::load()?;
    let data = match &args.data {
        None => None,
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(value @ Value::Object(_)) => Some(value),
            _ => {
                return Err(CliError::Usage(format!(
                    "--data must be a JSON object, like '{{\"k\": 1}}', not {text}"
                )))
            }
        },
    };
    let content = args.content.read()?;
    let thread = ThreadingFields {
        reply_to: args.reply_to,
        subject: args.subject.clone(),
    };
    let mut client = args.client.connect_or_start()?;
    let sent = client
        .send_threaded(
            &session.session_token,
            &args.to,
            &content,
            data,
            &thread,
            &fresh_stamp()?,
        )
        .map_err(|e| content::explain_too_large(e, &content))?;
    // With --json and a wait, one object at the end holds both the send and the answer.
    if !args.client.json || args.wait_reply.is_none() {
        print_sent(&sent, &args.to, args.client.json);
    }
    match args.wait_reply {
        Some(seconds) => wait_for_answer(&mut client, &session, &sent, seconds, args.client.json),
        None => Ok(()),
    }
}

/// What a send's reply says, for a person or (with `json`) a script.
pub(super) fn print_sent(sent: &Sent, to: &str, json: bool) {
    if json {
        output::json(&sent_json(sent));
        return;
    }
    let reach = recipient_reach(sent, chrono::Utc::now())
        .map(|reach| format!("; {}", output::for_terminal(&reach)))
        .unwrap_or_default();
    outln!(
        "{} (id {}){reach}",
        output::for_terminal(&sent.message),
        sent.message_id
    );
    if let Some(meant) = &sent.did_you_mean {
        let hint = crate::mcp::format::did_you_mean(to, meant);
        outln!("{}", output::for_terminal(&hint));
    }
}

fn sent_json(sent: &Sent) -> Value {
    serde_json::json!({
        "status": "ok", "message": sent.message, "message_id": sent.message_id,
        "duplicate": sent.duplicate, "recipient_online": sent.recipient_online,
        "recipient_last_seen": sent.recipient_last_seen,
        "did_you_mean": sent.did_you_mean, "thread_id": sent.thread_id,
    })
}

/// Waits up to `seconds` for the answer to `sent` and prints it, acknowledging it once
/// printed; other mail stays waiting. None in time: a line on stderr and
/// [`EXIT_NO_REPLY`].
pub(super) fn wait_for_answer(
    client: &mut Client,
    session: &SessionFile,
    sent: &Sent,
    seconds: u64,
    json: bool,
) -> Result<(), CliError> {
    let id = sent.message_id.0;
    let checked = client.wait_for_reply(
        &session.session_token,
        id,
        Duration::from_secs(seconds),
        check::LEASE,
    )?;
    if json {
        let mut both = sent_json(sent);
        both["answer"] = check::check_value(&checked);
        let text = format!("{}\n", output::json_text(&both));
        check::print_then_ack(client, session, &text, &checked)?;
    } else if !checked.messages.is_empty() {
        check::print_then_ack(client, session, &check::check_text(&checked), &checked)?;
    }
    if checked.messages.is_empty() {
        eprintln!(
            "no reply to message {id} came within {seconds} s; it may still come: run `claude-ipc check` later, or `claude-ipc thread {id}` to see the conversation"
        );
        return Err(CliError::Reported(EXIT_NO_REPLY));
    }
    Ok(())
}

pub fn run_broadcast(args: BroadcastArgs) -> Result<(), CliError> {
    let session = SessionFile::load()?;
    let content = args.content.read()?;
    let reply = args
        .client
        .connect_or_start()?
        .broadcast_stamped(&session.session_token, &content, None, &fresh_stamp()?)
        .map_err(|e| content::explain_too_large(e, &content))?;
    if args.client.json {
        output::json(&crate::protocol::Reply::from(reply).to_json());
    } else {
        outln!("{}", output::for_terminal(reply.message()));
    }
    Ok(())
}

/// A fresh nonce and timestamp per send: if the connection fails, the client sends the same
/// request again and the broker stores it once.
pub(super) fn fresh_stamp() -> Result<Stamp, CliError> {
    Stamp::fresh().map_err(|e| {
        CliError::Usage(format!(
            "cannot read randomness for the nonce ({e}); check that /dev/urandom is readable"
        ))
    })
}
