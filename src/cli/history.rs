//! `claude-ipc history [--with NAME]`: the mail you sent and received, newest first.

use crate::cli::output::out;
use clap::Args;

use super::{arg, output, CliError, ClientArgs};
use crate::client::HistoryQuery;
use crate::domain::Timestamp;
use crate::mcp::format::{self, HistoryHints};
use crate::mcp::guard::Secrets;
use crate::session_file::SessionFile;

#[derive(Debug, Args)]
#[command(
    after_help = "Shows the mail you sent and the mail you received, delivered or still waiting, newest
first, one line each: id, sender→recipient, [subject], ↩ the message it answers, when, and the
start of the content. Reading history changes nothing: waiting mail stays waiting for check.
Delivered mail is kept for the broker's --history-retention (30 days by default). Mail before a
rename, yours or your peer's, is still in the conversation.

Examples:
  claude-ipc history                      your 20 newest messages, sent and received
  claude-ipc history --with bob           only those between you and bob
  claude-ipc history --cursor h41         the page after the one that ended with that cursor
  claude-ipc history --before 2026-01-02T00:00:00Z   what was said before that time
  claude-ipc history --full --limit 5     the 5 newest, each whole"
)]
pub struct HistoryArgs {
    /// Only the mail between you and this instance (by its current name).
    #[arg(long, value_name = "NAME", value_parser = arg::name)]
    pub with: Option<String>,
    /// How many messages to show (1-100; the broker's default is 20).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Go on from where the previous page ended (the cursor it printed).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Only mail the broker received before this time (RFC 3339, like 2026-01-02T15:04:05Z).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub before: Option<Timestamp>,
    /// Show every message whole instead of one line each.
    #[arg(long)]
    pub full: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn run(args: HistoryArgs) -> Result<(), CliError> {
    let session = SessionFile::load()?;
    let mut client = args.client.connect_or_start()?;
    let query = HistoryQuery {
        with: args.with.clone(),
        limit: args.limit,
        cursor: args.cursor.clone(),
        before: args.before,
    };
    let reply = client.history(&session.session_token, &query)?;
    if args.client.json {
        output::json(&crate::protocol::Reply::from(reply).to_json());
        return Ok(());
    }
    let text = format::history(
        &reply,
        args.with.as_deref(),
        chrono::Utc::now(),
        &Secrets::default(),
        args.full,
        &hints(&args),
    );
    out!("{}", output::block_for_terminal(&text, ""));
    Ok(())
}

/// How to ask for the rest, in this command's flags.
fn hints(args: &HistoryArgs) -> HistoryHints {
    let mut same = String::new();
    if let Some(with) = &args.with {
        same.push_str(&format!(" --with {with}"));
    }
    if let Some(limit) = args.limit {
        same.push_str(&format!(" --limit {limit}"));
    }
    if let Some(before) = args.before {
        same.push_str(&format!(" --before {}", before.to_text()));
    }
    HistoryHints {
        whole: "Lines ending in … are cut: add --full to see them whole.".to_owned(),
        next_page: format!("Older mail is kept: claude-ipc history --cursor {{cursor}}{same}"),
    }
}

fn parse_time(text: &str) -> Result<Timestamp, String> {
    Timestamp::parse(text).ok_or_else(|| {
        format!("`{text}` is not a time; write it in RFC 3339, like 2026-01-02T15:04:05Z")
    })
}
