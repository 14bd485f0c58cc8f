//! `claude-ipc send TO MESSAGE...` and `claude-ipc broadcast MESSAGE...`.

use clap::Args;
use serde_json::Value;

use super::{output, CliError, ClientArgs};
use crate::client::Stamp;
use crate::relative_time::recipient_reach;
use crate::session_file::SessionFile;

#[derive(Debug, Args)]
#[command(
    after_help = "Mail to a name nobody has registered yet waits for it (7 days); if the name is close to a
registered one, the reply asks whether you meant that one. Content over 10 KiB is
stored in a file and the recipient gets a summary with its path. Each send carries a fresh
nonce, so a retried request is stored once.

Examples:
  claude-ipc send bob \"the API changed, see src/api.rs\"
  claude-ipc send bob \"build done\" --data '{\"exit\": 0}'
  claude-ipc send reviewer \"$(git diff --stat)\""
)]
pub struct SendArgs {
    /// The recipient's name (it need not be registered yet).
    pub to: String,
    /// The message; several words are joined with spaces.
    #[arg(required = true, num_args = 1..)]
    pub message: Vec<String>,
    /// A JSON object to attach as `data`.
    #[arg(long)]
    pub data: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Goes to every registered instance except you; instances whose queue is full are skipped and
named in the reply.

Example:
  claude-ipc broadcast \"deploying in 5 minutes\""
)]
pub struct BroadcastArgs {
    /// The message; several words are joined with spaces.
    #[arg(required = true, num_args = 1..)]
    pub message: Vec<String>,
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
    let content = args.message.join(" ");
    let mut client = args.client.connect_or_start()?;
    let sent = client.send_stamped(
        &session.session_token,
        &args.to,
        &content,
        data,
        &fresh_stamp()?,
    )?;
    if args.client.json {
        output::json(&serde_json::json!({
            "status": "ok", "message": sent.message, "message_id": sent.message_id,
            "duplicate": sent.duplicate, "recipient_online": sent.recipient_online,
            "recipient_last_seen": sent.recipient_last_seen,
            "did_you_mean": sent.did_you_mean,
        }));
    } else {
        let reach = recipient_reach(&sent, chrono::Utc::now())
            .map(|reach| format!("; {}", output::for_terminal(&reach)))
            .unwrap_or_default();
        println!(
            "{} (id {}){reach}",
            output::for_terminal(&sent.message),
            sent.message_id
        );
        if let Some(meant) = &sent.did_you_mean {
            let hint = crate::mcp::format::did_you_mean(&args.to, meant);
            println!("{}", output::for_terminal(&hint));
        }
    }
    Ok(())
}

pub fn run_broadcast(args: BroadcastArgs) -> Result<(), CliError> {
    let session = SessionFile::load()?;
    let reply = args.client.connect_or_start()?.broadcast_stamped(
        &session.session_token,
        &args.message.join(" "),
        None,
        &fresh_stamp()?,
    )?;
    if args.client.json {
        output::json(&crate::protocol::Reply::from(reply).to_json());
    } else {
        println!("{}", output::for_terminal(reply.message()));
    }
    Ok(())
}

/// A fresh nonce and timestamp per send: if the connection fails, the client sends the same
/// request again and the broker stores it once.
fn fresh_stamp() -> Result<Stamp, CliError> {
    Stamp::fresh().map_err(|e| {
        CliError::Usage(format!(
            "cannot read randomness for the nonce ({e}); check that /dev/urandom is readable"
        ))
    })
}
