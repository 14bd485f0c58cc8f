//! Printing replies: JSON for scripts with `--json`, short lines for people otherwise. Also the
//! helpers people's output shares: relative times ("3 min ago") and colour that appears only on
//! a terminal and never when `NO_COLOR` is set.

use std::io::IsTerminal;

use chrono::{DateTime, Utc};
use serde_json::Value;

pub fn json(value: &Value) {
    println!("{}", json_text(value).trim_end());
}

/// Pretty JSON with a trailing newline, for callers that write it themselves.
pub fn json_text(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("JSON always serializes");
    text.push('\n');
    text
}

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
/// "2 h", "1 day", "5 days".
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

/// A colour for people's output.
#[derive(Debug, Clone, Copy)]
pub enum Colour {
    Green,
    Yellow,
    Red,
    Dim,
    Bold,
}

/// Whether stdout gets colour: only on a terminal, and never with `NO_COLOR` set (to anything,
/// as <https://no-color.org> asks).
pub fn colour_enabled() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Paints `text` when `enabled`, else returns it unchanged.
pub fn paint(text: &str, colour: Colour, enabled: bool) -> String {
    if !enabled {
        return text.to_owned();
    }
    let code = match colour {
        Colour::Green => "32",
        Colour::Yellow => "33",
        Colour::Red => "31",
        Colour::Dim => "2",
        Colour::Bold => "1",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
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

    #[test]
    fn paint_adds_nothing_when_colour_is_off() {
        assert_eq!(paint("online", Colour::Green, false), "online");
        assert_eq!(
            paint("online", Colour::Green, true),
            "\x1b[32monline\x1b[0m"
        );
    }
}
