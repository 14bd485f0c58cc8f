//! `claude-ipc sent [IDS...]`: what became of the mail you sent.

use crate::cli::output::out;
use clap::Args;

use super::{arg, output, CliError, ClientArgs};
use crate::session_file::SessionFile;

#[derive(Debug, Args)]
#[command(
    after_help = "Each message you sent is waiting (not handed out now), read (handed out, not acknowledged
yet), delivered (acknowledged) or expired (nobody registered its name in time), with when
each happened. Mail you sent before a rename is still yours.

Examples:
  claude-ipc sent                  your 20 newest messages
  claude-ipc sent --limit 100      your 100 newest
  claude-ipc sent 42 57            just these ids (as send printed them)"
)]
pub struct SentArgs {
    /// Only these message ids; without them, your newest messages.
    #[arg(value_name = "ID", value_parser = arg::message_id)]
    pub ids: Vec<i64>,
    /// How many of your newest messages to show (1-500; the broker's default is 20).
    #[arg(long, conflicts_with = "ids")]
    pub limit: Option<u32>,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn run(args: SentArgs) -> Result<(), CliError> {
    let session = SessionFile::load()?;
    let mut client = args.client.connect_or_start()?;
    let ids = (!args.ids.is_empty()).then_some(args.ids.as_slice());
    let reply = client.sent(&session.session_token, args.limit, ids)?;
    if args.client.json {
        output::json(&crate::protocol::Reply::from(reply).to_json());
        return Ok(());
    }
    let hint = "More of your mail is kept: pass --limit, or the ids you want.";
    let text = crate::mcp::format::receipts(&reply, chrono::Utc::now(), hint);
    out!("{}", output::block_for_terminal(&text, ""));
    Ok(())
}
