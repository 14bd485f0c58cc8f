//! Reading a `history` request: whose mail (`with`), how much (`limit`), and where the page
//! starts (`cursor`, from the previous page, or `before`, a time).

use serde_json::Value;

use super::{echo, wrong_type, Fields, InstanceName, RequestError};
use crate::domain::{MessageId, Timestamp};
use crate::protocol::ErrorCode;

/// Messages one `history` page holds without a `limit`.
pub const DEFAULT_HISTORY_LIMIT: u32 = 20;
/// The most one `history` page may ask for.
pub const MAX_HISTORY_LIMIT: u32 = 100;

/// What a `history` asks for: the caller's mail, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryOptions {
    /// Only the mail between the caller and this instance (by current names).
    pub with: Option<InstanceName>,
    /// At most this many messages (1 to [`MAX_HISTORY_LIMIT`]); the reply also stays under
    /// the reply budget.
    pub limit: u32,
    /// Continue after the previous page: only messages older than its last one.
    pub cursor: Option<HistoryCursor>,
    /// Only messages the broker received before this time.
    pub before: Option<Timestamp>,
}

/// Where the next `history` page starts. Pages go by message id, newest first, so mail that
/// arrives between two pages lands before the first page, never inside the ones that follow:
/// no message is shown twice and none is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryCursor(MessageId);

impl HistoryCursor {
    /// Marks a `history` cursor apart from any other action's.
    const PREFIX: &'static str = "h";

    /// The cursor of a page whose oldest message is `last`.
    pub fn after(last: MessageId) -> Self {
        HistoryCursor(last)
    }

    /// The next page holds only messages with smaller ids than this.
    pub fn older_than(self) -> MessageId {
        self.0
    }

    pub fn parse(text: &str) -> Option<Self> {
        let digits = text.strip_prefix(Self::PREFIX)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(|id| HistoryCursor(MessageId(id)))
    }

    /// The text a reply's `next_cursor` carries.
    pub fn to_text(self) -> String {
        format!("{}{}", Self::PREFIX, self.0 .0)
    }
}

impl Fields<'_> {
    pub(super) fn history_options(&self) -> Result<HistoryOptions, RequestError> {
        Ok(HistoryOptions {
            with: self.peer_name("with")?,
            limit: self.page_limit(DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT)?,
            cursor: self.history_cursor()?,
            before: self.before()?,
        })
    }

    /// An optional instance name, refused like any other bad name.
    fn peer_name(&self, key: &str) -> Result<Option<InstanceName>, RequestError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.name(key, "Invalid peer ID format").map(Some),
        }
    }

    /// `limit` of a page: `1..=max`, refused (not capped) outside it.
    fn page_limit(&self, default: u32, max: u32) -> Result<u32, RequestError> {
        let expected = format!("a whole number from 1 to {max}");
        match self.0.get("limit") {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(limit) if (1..=u64::from(max)).contains(&limit) => Ok(limit as u32),
                _ => Err(wrong_type("limit", &expected, &Value::Number(n.clone()))),
            },
            Some(other) => Err(wrong_type("limit", &expected, other)),
        }
    }

    fn history_cursor(&self) -> Result<Option<HistoryCursor>, RequestError> {
        let Some(text) = self.optional_string("cursor")? else {
            return Ok(None);
        };
        HistoryCursor::parse(&text).map(Some).ok_or_else(|| {
            RequestError::new(
                ErrorCode::InvalidField,
                format!(
                    "cursor `{}` is not one this broker gave; start again without it (pass \
                     back the `next_cursor` of the previous `history` reply)",
                    echo(&text)
                ),
            )
        })
    }

    fn before(&self) -> Result<Option<Timestamp>, RequestError> {
        let Some(text) = self.optional_string("before")? else {
            return Ok(None);
        };
        let at = crate::clock::parse(&text).ok_or_else(|| {
            RequestError::new(
                ErrorCode::InvalidField,
                format!(
                    "`before` must be a time in RFC 3339, like 2026-01-02T03:04:05Z, not `{}`",
                    echo(&text)
                ),
            )
        })?;
        Ok(Some(Timestamp::new(at)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Action, Request};
    use super::*;

    fn options(text: &str) -> HistoryOptions {
        match Request::parse(text.as_bytes()).unwrap().action {
            Action::History(options) => options,
            other => panic!("not a history: {other:?}"),
        }
    }

    fn refusal(text: &str) -> RequestError {
        Request::parse(text.as_bytes()).unwrap_err()
    }

    #[test]
    fn a_bare_history_asks_for_the_newest_twenty_of_all_the_callers_mail() {
        let bare = options(r#"{"action": "history", "session_token": "t"}"#);
        assert_eq!(
            bare,
            HistoryOptions {
                with: None,
                limit: DEFAULT_HISTORY_LIMIT,
                cursor: None,
                before: None,
            }
        );
    }

    #[test]
    fn every_field_is_read() {
        let full = options(
            r#"{"action": "history", "with": "bob", "limit": 100, "cursor": "h42",
                "before": "2026-01-02T03:04:05Z"}"#,
        );
        assert_eq!(full.with.unwrap().as_str(), "bob");
        assert_eq!(full.limit, 100);
        assert_eq!(full.cursor.unwrap().older_than(), MessageId(42));
        assert_eq!(full.before.unwrap().to_text(), "2026-01-02T03:04:05.000Z");
    }

    #[test]
    fn a_cursor_reads_back_as_it_was_written() {
        let cursor = HistoryCursor::after(MessageId(9001));
        assert_eq!(HistoryCursor::parse(&cursor.to_text()), Some(cursor));
    }

    #[test]
    fn a_bad_with_is_the_usual_invalid_name() {
        let error = refusal(r#"{"action": "history", "with": "no/such"}"#);
        assert_eq!(error.code, ErrorCode::InvalidName);
        assert!(
            error.message.contains("`with` must be 1-32 letters"),
            "{}",
            error.message
        );
    }

    #[test]
    fn a_limit_outside_one_to_a_hundred_is_refused_with_the_range() {
        for bad in ["0", "101", "-1", "2.5", "\"10\""] {
            let error = refusal(&format!(r#"{{"action": "history", "limit": {bad}}}"#));
            assert_eq!(error.code, ErrorCode::InvalidField, "{bad}");
            assert!(error.message.contains("from 1 to 100"), "{}", error.message);
        }
    }

    #[test]
    fn a_cursor_this_broker_did_not_give_is_refused_with_what_to_do() {
        for bad in [
            "",
            "h",
            "42",
            "hx1",
            "h-1",
            "h99999999999999999999999",
            "s42",
        ] {
            let error = refusal(&format!(r#"{{"action": "history", "cursor": "{bad}"}}"#));
            assert_eq!(error.code, ErrorCode::InvalidField, "{bad}");
            assert!(
                error.message.contains("start again without it"),
                "{}",
                error.message
            );
        }
        let error = refusal(r#"{"action": "history", "cursor": 42}"#);
        assert_eq!(error.code, ErrorCode::InvalidField);
    }

    #[test]
    fn before_must_be_a_time() {
        let error = refusal(r#"{"action": "history", "before": "last week"}"#);
        assert_eq!(error.code, ErrorCode::InvalidField);
        assert!(error.message.contains("RFC 3339"), "{}", error.message);
    }
}
