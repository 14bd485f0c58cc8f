//! `claude-ipc check` (read your mail) and `claude-ipc list` (who is registered).

use clap::Args;
use serde_json::json;

use super::session_file::SessionFile;
use super::{output, CliError, ClientArgs};

#[derive(Debug, Args)]
#[command(
    after_help = "Each message shows its id, sender and time (with how long ago); mail is marked\ndelivered only after the reply arrived, so an interrupted check loses nothing.\n\nExamples:\n  claude-ipc check\n  claude-ipc check --json | jq -r '.messages[].message.content'"
)]
pub struct CheckArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  claude-ipc list\n  claude-ipc list --json | jq -r '.instances[].id'"
)]
pub struct ListArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn run(args: CheckArgs) -> Result<(), CliError> {
    let session = SessionFile::load()?;
    let checked = args.client.connect()?.check(&session.session_token)?;
    if args.client.json {
        let messages: Vec<_> = checked
            .messages
            .iter()
            .map(|m| {
                json!({"id": m.id, "from": m.from, "to": m.to, "timestamp": m.timestamp,
                       "message": {"content": m.message.content, "data": m.message.data},
                       "nonce": m.nonce, "sender_timestamp": m.sender_timestamp})
            })
            .collect();
        output::json(&json!({"status": "ok", "messages": messages, "more": checked.more}));
        return Ok(());
    }
    if checked.messages.is_empty() {
        println!("No new messages");
    }
    for message in &checked.messages {
        let ago = output::relative_to_now(&message.timestamp)
            .map(|ago| format!(" ({ago})"))
            .unwrap_or_default();
        println!(
            "[{}] from {} at {}{ago}",
            message.id, message.from, message.timestamp
        );
        println!("  {}", message.message.content.replace('\n', "\n  "));
        if let Some(data) = &message.message.data {
            println!("  data: {}", serde_json::Value::Object(data.clone()));
        }
    }
    if checked.more {
        println!("(more waiting: run check again)");
    }
    Ok(())
}

pub fn run_list(args: ListArgs) -> Result<(), CliError> {
    let session = SessionFile::load()?;
    let instances = args.client.connect()?.list(&session.session_token)?;
    if args.client.json {
        let instances: Vec<_> = instances
            .iter()
            .map(|i| json!({"id": i.id, "last_seen": i.last_seen}))
            .collect();
        output::json(&json!({"status": "ok", "instances": instances}));
        return Ok(());
    }
    if instances.is_empty() {
        println!("No instances registered");
    }
    for instance in instances {
        let ago = output::relative_to_now(&instance.last_seen)
            .map(|ago| format!(" ({ago})"))
            .unwrap_or_default();
        println!("{:<32}  last seen {}{ago}", instance.id, instance.last_seen);
    }
    Ok(())
}
