//! How long ago a time was, for people: "just now", "42 s ago", "3 min ago", "2 h ago",
//! "5 days ago", "in 3 min". The CLI and the MCP server say it the same way, and say the same
//! way whether an instance can be reached now ([`reach`], [`recipient_reach`]).

use chrono::{DateTime, Utc};

/// How long ago (or how far ahead) `then` is from `now`, for people: "just now", "42 s ago",
/// "3 min ago", "2 h ago", "5 days ago"; future times read "in 3 min". Differences under five
/// seconds either way are "just now", so small clock differences between machines do not show
/// as "in 1 s".
pub fn relative_time(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (now - then).num_seconds();
    if seconds.abs() < 5 {
        return "just now".to_owned();
    }
    let amount = span(seconds.unsigned_abs());
    if seconds > 0 {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

/// A duration in the largest unit that keeps it readable, rounded down: "42 s", "3 min",
/// "30 h" (hours up to two days), "5 days".
pub fn span(seconds: u64) -> String {
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    match seconds {
        s if s < MINUTE => format!("{s} s"),
        s if s < HOUR => format!("{} min", s / MINUTE),
        s if s < 2 * DAY => format!("{} h", s / HOUR),
        s => format!("{} days", s / DAY),
    }
}

/// [`relative_time`] for a stored time string; `None` if it is not RFC 3339.
pub fn relative_to_now(stored: &str) -> Option<String> {
    crate::clock::parse(stored).map(|then| relative_time(then, Utc::now()))
}

/// An instance's presence in a word or two: "online, pushed to" (a channel-mode MCP server
/// holds its session, so mail reaches the live session), "online", or "offline".
pub fn reach(online: bool, push: bool) -> &'static str {
    match (online, push) {
        (_, true) => "online, pushed to",
        (true, false) => "online",
        (false, false) => "offline",
    }
}

/// What a sender is told about its recipient after a `send`: "bob is online", or "bob is
/// offline, last seen 3 h ago; the mail will wait". `None` when the broker did not say (an
/// older broker, a duplicate) or the name was never registered (the reply's message says so).
pub fn recipient_reach(
    reply: &crate::protocol::schema::SendReply,
    now: DateTime<Utc>,
) -> Option<String> {
    let recipient = reply.recipient.as_deref()?;
    match (
        reply.recipient_online?,
        reply.recipient_last_seen.as_deref(),
    ) {
        (true, _) => Some(format!("{recipient} is online")),
        (false, Some(seen)) => {
            let ago = crate::clock::parse(seen).map_or_else(
                || "at an unknown time".to_owned(),
                |then| relative_time(then, now),
            );
            Some(format!(
                "{recipient} is offline, last seen {ago}; the mail will wait"
            ))
        }
        (false, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn ago(seconds: i64) -> String {
        let now = crate::clock::parse("2026-06-01T12:00:00Z").unwrap();
        relative_time(now - Duration::seconds(seconds), now)
    }

    #[test]
    fn a_recipient_is_said_to_be_online_or_offline_since_when() {
        let now = crate::clock::parse("2026-06-01T12:00:00Z").unwrap();
        let mut reply = crate::protocol::schema::SendReply {
            message: "Message sent".into(),
            message_id: crate::domain::MessageId(1),
            thread_id: None,
            recipient: Some("bob".into()),
            duplicate: false,
            recipient_online: Some(false),
            recipient_last_seen: Some("2026-06-01T09:00:00.000Z".into()),
            did_you_mean: None,
        };
        assert_eq!(
            recipient_reach(&reply, now).as_deref(),
            Some("bob is offline, last seen 3 h ago; the mail will wait")
        );
        reply.recipient_online = Some(true);
        assert_eq!(
            recipient_reach(&reply, now).as_deref(),
            Some("bob is online")
        );
        reply.recipient_online = None;
        assert_eq!(recipient_reach(&reply, now), None);
    }

    #[test]
    fn relative_times_pick_a_readable_unit() {
        assert_eq!(ago(0), "just now");
        assert_eq!(ago(4), "just now");
        assert_eq!(ago(42), "42 s ago");
        assert_eq!(ago(3 * 60 + 59), "3 min ago");
        assert_eq!(ago(2 * 3600 + 10), "2 h ago");
        assert_eq!(ago(30 * 3600), "30 h ago");
        assert_eq!(ago(5 * 86_400 + 7), "5 days ago");
    }

    #[test]
    fn future_times_read_in() {
        assert_eq!(ago(-3), "just now");
        assert_eq!(ago(-90), "in 1 min");
        assert_eq!(ago(-7200), "in 2 h");
    }
}
