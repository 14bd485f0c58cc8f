//! The broker's notion of "now", injectable so tests can move time instead of sleeping.
//!
//! Every stored time is UTC text in one fixed-width ISO-8601 form, so that SQLite compares
//! times as strings correctly and an operator can read them in the `sqlite3` shell.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, SecondsFormat, Utc};

/// A source of the current time.
#[derive(Clone)]
pub struct Clock {
    source: Source,
}

#[derive(Clone)]
enum Source {
    System,
    /// A clock that only moves when a test says so. A std `Mutex` is fine: it is never held
    /// across an `.await`.
    Manual(Arc<Mutex<DateTime<Utc>>>),
}

impl Clock {
    /// The real wall clock.
    pub fn system() -> Self {
        Clock {
            source: Source::System,
        }
    }

    /// A clock frozen at `start` until [`Clock::advance`] moves it.
    pub fn manual(start: DateTime<Utc>) -> Self {
        Clock {
            source: Source::Manual(Arc::new(Mutex::new(start))),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        match &self.source {
            Source::System => Utc::now(),
            Source::Manual(at) => *at.lock().expect("clock mutex poisoned"),
        }
    }

    /// Moves a manual clock forward. Does nothing to the system clock.
    pub fn advance(&self, by: Duration) {
        if let Source::Manual(at) = &self.source {
            let mut at = at.lock().expect("clock mutex poisoned");
            *at += by;
        }
    }
}

/// Formats a time the way it is stored and sent: `2026-11-24T20:53:45.123Z`.
pub fn to_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses an RFC 3339 time (any offset) into UTC.
pub fn parse(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_times_are_fixed_width_utc_and_sort_as_text() {
        let early = parse("2026-01-02T03:04:05+02:00").unwrap();
        let late = early + Duration::milliseconds(1500);
        assert_eq!(to_text(early), "2026-01-02T01:04:05.000Z");
        assert_eq!(to_text(late), "2026-01-02T01:04:06.500Z");
        assert!(to_text(early) < to_text(late));
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let start = parse("2026-01-01T00:00:00Z").unwrap();
        let clock = Clock::manual(start);
        assert_eq!(clock.now(), start);
        clock.advance(Duration::hours(2));
        assert_eq!(clock.now(), start + Duration::hours(2));
    }
}
