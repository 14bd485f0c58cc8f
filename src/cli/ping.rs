//! `claude-ipc ping`: does a broker answer, which version is it, and, when this client holds
//! the shared secret, does the broker prove it knows it too?

use crate::cli::output::outln;
use clap::Args;

use super::{output, CliError, ClientArgs};
use crate::client::Client;
use crate::protocol::schema::{PingReply, SecurityMode, StaticToken};
use crate::protocol::Reply;

/// The name ping's challenge is issued for. A challenge creates nothing; this one is never
/// answered and expires.
const PROBE_NAME: &str = "claude-ipc-ping";

#[derive(Debug, Args)]
#[command(
    after_help = "Needs no session. Exits with 3 when no broker answers, and with 1 when it answers
that it refuses requests (its database was removed, replaced or is damaged; the message says
what to do). With IPC_SHARED_SECRET set, a broker in secret mode must prove it knows that
secret (a challenge, nothing registered); one that cannot is refused with exit 1. A broker
run by another user is refused before anything is sent to it, with
exit code 3 (IPC_BROKER_USER names a deliberate service account).

Examples:
  claude-ipc ping
  IPC_SHARED_SECRET=the-broker-secret claude-ipc ping
  claude-ipc ping --addr 127.0.0.1:9900
  claude-ipc ping --json"
)]
pub struct PingArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn run(args: PingArgs) -> Result<(), CliError> {
    let secret = crate::secret::shared_secret_from_env()?;
    let mut client = args.client.connect()?;
    let ping = client.ping()?;
    let verified = verify_secret(&mut client, &ping, secret.as_deref())?;
    if args.client.json {
        let mut reply = Reply::from(ping).to_json();
        reply["secret_verified"] = verified.into();
        output::json(&reply);
    } else {
        outln!(
            "broker at {} is up: version {}, protocol {}, {}",
            args.client.target(),
            output::for_terminal(&ping.version),
            ping.protocol,
            mode_text(&ping, secret.is_some(), verified)
        );
    }
    Ok(())
}

/// With a secret and a broker that says it runs in secret mode, has the broker prove it
/// knows the secret; an error if it cannot. `true` only when it did.
fn verify_secret(
    client: &mut Client,
    ping: &PingReply,
    secret: Option<&str>,
) -> Result<bool, CliError> {
    match (secret, ping.mode) {
        (Some(secret), Some(SecurityMode::Secret)) => {
            client.prove_broker(PROBE_NAME, secret)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The security mode as a person reads it, and how much of it this client checked.
fn mode_text(ping: &PingReply, have_secret: bool, verified: bool) -> String {
    let static_token = match ping.static_token {
        Some(StaticToken::Refused) => "; the static auth_token is refused",
        Some(StaticToken::Accepted) => "; the legacy static auth_token is also accepted",
        None => "",
    };
    match ping.mode {
        Some(SecurityMode::Secret) if verified => format!(
            "secret mode, verified: the broker proved it knows your secret{static_token}"
        ),
        Some(SecurityMode::Secret) => format!(
            "secret mode (not verified: set IPC_SHARED_SECRET to have the broker prove it knows the secret){static_token}"
        ),
        Some(SecurityMode::Open) if have_secret => "open mode (no shared secret), although you hold one: this broker is not protected by your IPC_SHARED_SECRET".to_owned(),
        Some(SecurityMode::Open) => "open mode".to_owned(),
        None => "? mode".to_owned(),
    }
}
