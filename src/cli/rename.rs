//! `claude-ipc rename NEW`: rename yourself and update the session file.

use crate::cli::output::outln;
use clap::Args;

use super::{arg, output, CliError, ClientArgs};
use crate::session_file::SessionFile;

#[derive(Debug, Args)]
#[command(
    after_help = "At most once an hour. For two hours mail to the old name is forwarded; waiting mail moves
with you, and every other instance gets a notice. The session file is updated.

Example:
  claude-ipc rename alice-review"
)]
pub struct RenameArgs {
    /// The new name: 1-32 letters, digits, hyphens or underscores.
    #[arg(value_parser = arg::name)]
    pub new_name: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn run(args: RenameArgs) -> Result<(), CliError> {
    let mut session = SessionFile::load()?;
    let reply = args
        .client
        .connect_or_start()?
        .rename(&session.session_token, &args.new_name)?;
    session.instance_id = args.new_name.clone();
    session.save()?;
    if args.client.json {
        output::json(&crate::protocol::Reply::from(reply).to_json());
    } else {
        outln!("{}", output::for_terminal(&reply.message));
    }
    Ok(())
}
