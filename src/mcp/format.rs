//! The short texts the tools return to the model. No session token ever passes through here:
//! these functions only see names, times and message bodies.

use chrono::{DateTime, Utc};

use super::command::CommandRun;
use crate::client::{Checked, Instance, Received, Waiting};

/// "3 min ago" for a broker timestamp, or nothing if it does not parse.
pub fn ago(timestamp: &str, now: DateTime<Utc>) -> String {
    let Some(at) = crate::clock::parse(timestamp) else {
        return "at an unknown time".to_owned();
    };
    let seconds = (now - at).num_seconds().max(0);
    match seconds {
        0..=9 => "just now".to_owned(),
        10..=59 => format!("{seconds} s ago"),
        60..=3599 => format!("{} min ago", seconds / 60),
        3600..=86_399 => format!("{} h ago", seconds / 3600),
        _ => format!("{} d ago", seconds / 86_400),
    }
}

/// "1 message" / "2 messages".
pub fn messages(count: usize) -> String {
    if count == 1 {
        "1 message".to_owned()
    } else {
        format!("{count} messages")
    }
}

/// What `check` says when nothing is waiting.
pub const NO_MAIL: &str = "No new messages.";

/// What `wait_for_messages` found: how much mail waits and from whom. The mail itself is left
/// for `check`, so a wait whose caller gave up consumes nothing.
pub fn waiting(waiting: &Waiting) -> String {
    /// `count` names at most this many senders.
    const SENDERS_NAMED: usize = 10;
    let mut from = waiting.senders.join(", ");
    if waiting.senders.len() >= SENDERS_NAMED && waiting.count as usize > waiting.senders.len() {
        from.push_str(" and others");
    }
    let (what, them) = match waiting.count {
        1 => ("1 new message".to_owned(), "it"),
        n => (format!("{n} new messages"), "them"),
    };
    format!("{what} from {from} — call check to read {them}.")
}

/// A check's mail: sender, relative and absolute time, content, and data when present.
pub fn mail(checked: &Checked, now: DateTime<Utc>) -> String {
    if checked.messages.is_empty() {
        return NO_MAIL.to_owned();
    }
    let mut text = format!("{}:\n", messages(checked.messages.len()));
    for message in &checked.messages {
        text.push('\n');
        text.push_str(&one_message(message, now));
    }
    if checked.more {
        text.push_str("\nMore mail is waiting: call check again.\n");
    }
    text
}

fn one_message(message: &Received, now: DateTime<Utc>) -> String {
    let mut text = format!(
        "From {}, {} ({}):\n{}\n",
        message.from,
        ago(&message.timestamp, now),
        message.timestamp,
        message.message.content
    );
    if let Some(data) = &message.message.data {
        text.push_str(&format!(
            "data: {}\n",
            serde_json::Value::Object(data.clone())
        ));
    }
    text
}

/// Who is registered, marking the caller.
pub fn instances(instances: &[Instance], me: &str, now: DateTime<Utc>) -> String {
    if instances.is_empty() {
        return "No instances are registered.".to_owned();
    }
    let mut text = format!("{} registered:\n", count_of(instances.len(), "instance"));
    for instance in instances {
        let you = if instance.id == me { " (you)" } else { "" };
        text.push_str(&format!(
            "- {}{you}: last seen {}\n",
            instance.id,
            ago(&instance.last_seen, now)
        ));
    }
    text
}

fn count_of(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// The message body `share_command` sends.
pub fn command_report(command: &str, run: &CommandRun, timeout_seconds: u64) -> String {
    let status = match (run.exit_code, run.timed_out) {
        (_, true) => format!("killed after the {timeout_seconds} s timeout"),
        (Some(code), false) => format!("exit code {code}"),
        (None, false) => "killed by a signal".to_owned(),
    };
    let mut text = format!("$ {command}\n({status})\n");
    for (name, output) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
        if output.is_empty() {
            text.push_str(&format!("--- {name}: (empty) ---\n"));
        } else {
            text.push_str(&format!("--- {name} ---\n{output}"));
            if !output.ends_with('\n') {
                text.push('\n');
            }
        }
    }
    if run.truncated {
        text.push_str("(output was cut at the size cap)\n");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn ages_read_naturally() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
        assert_eq!(ago("2026-01-01T12:00:00.000Z", now), "just now");
        assert_eq!(ago("2026-01-01T11:59:30.000Z", now), "30 s ago");
        assert_eq!(ago("2026-01-01T11:57:00.000Z", now), "3 min ago");
        assert_eq!(ago("2026-01-01T10:00:00.000Z", now), "2 h ago");
        assert_eq!(ago("2025-12-29T12:00:00.000Z", now), "3 d ago");
    }
}
