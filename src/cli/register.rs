//! `claude-ipc register NAME`: get a session and save it to the session file.

use crate::cli::output::outln;
use clap::Args;
use serde_json::json;

use super::{arg, output, CliError, ClientArgs};
use crate::secret::shared_secret_from_env;
use crate::session_file::SessionFile;

#[derive(Debug, Args)]
#[command(
    after_help = "Registering again replaces your earlier session, and any mail already waiting for the name
(sent before it was registered) is yours. The token is saved to IPC_SESSION_FILE or
~/.ipc-session (mode 0600), never printed.

A name another session is using (active in the last few minutes, or waiting for mail) is
refused unless you pass --takeover; that session is then told it was replaced. Take over only
when you are sure the other holder is gone, or it should give the name up.

Examples:
  claude-ipc register alice
  claude-ipc register alice --takeover    (replace a session that still uses alice)
  IPC_SHARED_SECRET=the-broker-secret claude-ipc register alice
  IPC_SHARED_SECRET_FILE=~/.config/claude-ipc/secret claude-ipc register alice    (a 0600 file)
  IPC_SESSION_FILE=/tmp/bob.session claude-ipc register bob    (a second identity)"
)]
pub struct RegisterArgs {
    /// The name to register: 1-32 letters, digits, hyphens or underscores.
    #[arg(value_parser = arg::name)]
    pub name: String,
    /// Replace the name's session even if it is in use; its holder is told it was replaced.
    #[arg(long)]
    pub takeover: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn run(args: RegisterArgs) -> Result<(), CliError> {
    let secret = shared_secret_from_env()?;
    SessionFile::check_writable()?;
    // The session file's own session of this name is presented: registering yourself again
    // is never refused as "in use".
    let own = SessionFile::load()
        .ok()
        .filter(|file| file.instance_id == args.name);
    let registered = args.client.connect_or_start()?.register_as(
        &args.name,
        secret.as_deref(),
        args.takeover,
        own.as_ref().map(|file| file.session_token.as_str()),
    )?;
    let path = SessionFile {
        instance_id: args.name.clone(),
        session_token: registered.session_token,
    }
    .save()?;
    if args.client.json {
        // The token is in the session file; it is not printed.
        output::json(&json!({
            "status": "ok", "instance_id": args.name, "message": registered.message,
            "queued": registered.queued, "session_file": path,
        }));
    } else {
        outln!(
            "{} (session saved to {})",
            output::for_terminal(&registered.message),
            path.display()
        );
    }
    Ok(())
}
