//! `claude-ipc search QUERY`: full-text search over the mail you sent and received.

use crate::cli::output::out;
use clap::Args;

use super::{arg, output, CliError, ClientArgs};
use crate::protocol::schema::SearchRequest;
use crate::session_file::SessionFile;

#[derive(Debug, Args)]
#[command(
    after_help = "The query: words (all must match), \"exact phrases\", prefixes like deploy* (at least 2
letters before the *), OR, NOT, and ( ) to group; operators in capitals. Case and accents do
not matter. Results are best first, the matched words in [brackets]; only mail you sent or
received is searched.

Examples:
  claude-ipc search deploy                          mail about deploy
  claude-ipc search '\"rate limit\" OR throttl*'     a phrase or a prefix
  claude-ipc search 'api NOT draft' --from alice    from alice, without draft
  claude-ipc search schema --since 2026-12-01T00:00:00Z --limit 50"
)]
pub struct SearchArgs {
    /// What to look for (quote it in the shell when it has spaces or quotes).
    pub query: String,
    /// Only mail sent by this instance.
    #[arg(long, value_name = "NAME", value_parser = arg::name)]
    pub from: Option<String>,
    /// Only mail received by this instance.
    #[arg(long, value_name = "NAME", value_parser = arg::name)]
    pub to: Option<String>,
    /// Only this thread (a thread id, as `thread` and `check` show it).
    #[arg(long = "thread", value_name = "ID", value_parser = arg::message_id)]
    pub thread_id: Option<i64>,
    /// Only mail since this RFC 3339 time, like 2026-12-01T09:00:00Z.
    #[arg(long)]
    pub since: Option<String>,
    /// How many results (1-100; the broker's default is 20).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Continue from a previous page (the cursor it printed).
    #[arg(long)]
    pub cursor: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn run(args: SearchArgs) -> Result<(), CliError> {
    let session = SessionFile::load()?;
    let mut client = args.client.connect_or_start()?;
    let reply = client.search(&SearchRequest {
        session_token: session.session_token.clone(),
        query: args.query,
        from: args.from,
        to: args.to,
        thread_id: args.thread_id,
        since: args.since,
        limit: args.limit,
        cursor: args.cursor,
    })?;
    if args.client.json {
        output::json(&crate::protocol::Reply::from(reply).to_json());
        return Ok(());
    }
    let hints = crate::mcp::format::SearchHints {
        next_page: "pass --cursor",
        whole_message: "`claude-ipc thread ID` shows a match whole, in its conversation.",
    };
    let text = crate::mcp::format::search_results(&reply, chrono::Utc::now(), &hints);
    out!("{}", output::block_for_terminal(&text, ""));
    Ok(())
}
