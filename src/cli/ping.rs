//! `claude-ipc ping`: does a broker answer, and which version is it?

use clap::Args;

use super::{output, CliError, ClientArgs};

#[derive(Debug, Args)]
#[command(
    after_help = "Needs no session. Exits with 3 when no broker answers, and with 1 when it answers
that it refuses requests (its database was removed, replaced or is damaged; the message says
what to do). A broker run by another user is refused before anything is sent to it, with
exit code 3 (IPC_BROKER_USER names a deliberate service account).

Examples:
  claude-ipc ping
  claude-ipc ping --addr 127.0.0.1:9900
  claude-ipc ping --json"
)]
pub struct PingArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn run(args: PingArgs) -> Result<(), CliError> {
    let reply = args.client.connect()?.ping()?;
    if args.client.json {
        output::json(&reply);
    } else {
        println!(
            "broker at {} is up: version {}, protocol {}, {} mode",
            args.client.target(),
            reply["version"].as_str().unwrap_or("?"),
            reply["protocol"],
            reply["mode"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}
