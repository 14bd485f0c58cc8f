//! `claude-ipc thread ID`: one conversation, oldest first, as you took part in it.

use crate::cli::output::out;
use clap::Args;

use super::output::{block_for_terminal, for_terminal};
use super::{arg, output, CliError, ClientArgs};
use crate::protocol::schema::{ConversationMessage, ThreadReply};
use crate::relative_time::relative_to_now;
use crate::session_file::SessionFile;

/// What every line of a message's content begins with, so none looks like a header.
const CONTENT_INDENT: &str = "  ";

#[derive(Debug, Args)]
#[command(
    after_help = "Shows the messages of one thread that you sent or received, oldest first, mail already
read included; nothing is consumed. A thread is named by its id (check shows it) or by the
id of any message in it. A long thread comes in pages: the last line says how to get the
next one.

Examples:
  claude-ipc thread 41
  claude-ipc thread 41 --limit 100
  claude-ipc thread 41 --json | jq -r '.messages[] | \"\\(.from): \\(.message.content)\"'"
)]
pub struct ThreadArgs {
    /// The thread's id, or the id of any message in it.
    #[arg(value_parser = arg::message_id)]
    pub id: i64,
    /// Messages per page (1-100; the broker's default is 20).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Where to go on from: the cursor a previous page printed.
    #[arg(long)]
    pub cursor: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn run(args: ThreadArgs) -> Result<(), CliError> {
    let session = SessionFile::load()?;
    let mut client = args.client.connect_or_start()?;
    let reply = client.thread(
        &session.session_token,
        args.id,
        args.limit,
        args.cursor.as_deref(),
    )?;
    if args.client.json {
        output::json(&crate::protocol::Reply::from(reply).to_json());
        return Ok(());
    }
    out!("{}", thread_text(&reply, args.id));
    Ok(())
}

/// A thread for a person: a heading, each message with its header and indented content, and
/// how to get the next page.
fn thread_text(reply: &ThreadReply, asked: i64) -> String {
    let subject = reply
        .subject
        .as_deref()
        .map(|subject| format!(" \"{}\"", for_terminal(subject)))
        .unwrap_or_default();
    let mut text = format!("Thread {}{subject}\n", reply.thread_id);
    for message in &reply.messages {
        text.push_str(&message_text(message));
    }
    if let (true, Some(cursor)) = (reply.more, &reply.next_cursor) {
        text.push_str(&format!(
            "(more: claude-ipc thread {asked} --cursor {})\n",
            for_terminal(cursor)
        ));
    }
    text
}

/// One message: `[id] alice → bob at TIME (ago), subject "…", reply to N`, then its content
/// indented, control characters escaped, so no message can forge another's header.
fn message_text(message: &ConversationMessage) -> String {
    let ago = relative_to_now(&message.timestamp)
        .map(|ago| format!(" ({ago})"))
        .unwrap_or_default();
    let threading = crate::mcp::format::threading(
        message.id.0,
        None,
        message.reply_to,
        message.subject.as_deref(),
    );
    let mut text = format!(
        "[{}] {} → {} at {}{ago}{}\n{}\n",
        message.id,
        for_terminal(&message.from),
        for_terminal(&message.to),
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
