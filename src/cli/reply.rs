//! `claude-ipc reply ID MESSAGE...`: answer a message, to its other party, in its thread.

use clap::Args;

use super::content::{self, ContentArgs};
use super::send::{fresh_stamp, print_sent, wait_for_answer};
use super::{arg, CliError, ClientArgs};
use crate::session_file::SessionFile;

#[derive(Debug, Args)]
#[command(
    after_help = "The reply goes to the message's sender if you received it, or to its recipient if you sent
it, and joins its thread (with its subject, unless you give another). The reply may also be
`-` (standard input) or --file PATH.

Examples:
  claude-ipc reply 41 \"yes, merged\"
  claude-ipc reply 41 \"which branch?\" --wait-reply 60
  cargo test 2>&1 | claude-ipc reply 41 -"
)]
pub struct ReplyArgs {
    /// The id of the message to answer (as check or thread printed it).
    #[arg(value_parser = arg::message_id)]
    pub id: i64,
    #[command(flatten)]
    pub content: ContentArgs,
    /// A subject (1-200 characters on one line); without it the reply keeps its thread's.
    #[arg(long, value_parser = arg::subject)]
    pub subject: Option<String>,
    /// Then wait up to SECONDS for the answer and print it (exit code 4 if none comes).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub wait_reply: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn run(args: ReplyArgs) -> Result<(), CliError> {
    let session = SessionFile::load()?;
    let content = args.content.read()?;
    let mut client = args.client.connect_or_start()?;
    let replied = client
        .reply(
            &session.session_token,
            args.id,
            &content,
            args.subject.as_deref(),
            &fresh_stamp()?,
        )
        .map_err(|e| content::explain_too_large(e, &content))?;
    let sent = replied.sent;
    if !args.client.json || args.wait_reply.is_none() {
        print_sent(&sent, &replied.to, args.client.json);
    }
    match args.wait_reply {
        Some(seconds) => wait_for_answer(&mut client, &session, &sent, seconds, args.client.json),
        None => Ok(()),
    }
}
