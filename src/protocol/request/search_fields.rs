//! The fields of a `search` request: the query (parsed by [`SearchQuery::parse`], refused with
//! `invalid_query`), the filters, the page size and the cursor.

use serde_json::Value;

use super::{wrong_type, Fields, RequestError};
use crate::domain::{InstanceName, MessageId, Timestamp};
use crate::protocol::search_query::SearchQuery;
use crate::protocol::ErrorCode;

/// Results per page without a `limit`, and the most one page may ask for.
pub const DEFAULT_SEARCH_LIMIT: u32 = 20;
pub const MAX_SEARCH_LIMIT: u32 = 100;
/// How a cursor begins: the rest is the place in the ranking where the next page starts.
const CURSOR_PREFIX: &str = "rank:";

/// A parsed `search`: what to look for, in whose mail, and which page.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchOptions {
    pub query: SearchQuery,
    pub filters: SearchFilters,
    pub limit: u32,
    /// Matches to skip: where the page starts in the ranking.
    pub offset: u32,
}

/// The optional filters of a `search`; every one given must hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SearchFilters {
    /// Sent by this instance (its current name).
    pub from: Option<InstanceName>,
    /// Received by this instance (its current name).
    pub to: Option<InstanceName>,
    pub thread_id: Option<MessageId>,
    pub since: Option<Timestamp>,
}

/// The cursor that starts a page at `offset` in the ranking.
pub fn search_cursor(offset: u32) -> String {
    format!("{CURSOR_PREFIX}{offset}")
}

impl Fields<'_> {
    pub(super) fn search_options(&self) -> Result<SearchOptions, RequestError> {
        let text = self.string("query")?;
        let query = SearchQuery::parse(text)
            .map_err(|e| RequestError::new(ErrorCode::InvalidQuery, format!("query: {e}")))?;
        Ok(SearchOptions {
            query,
            filters: SearchFilters {
                from: self.filter_name("from")?,
                to: self.filter_name("to")?,
                thread_id: self.thread_filter()?,
                since: self.since()?,
            },
            limit: self.search_limit()?,
            offset: self.search_offset()?,
        })
    }

    fn filter_name(&self, key: &str) -> Result<Option<InstanceName>, RequestError> {
        let Some(text) = self.optional_string(key)? else {
            return Ok(None);
        };
        InstanceName::parse(&text).map(Some).ok_or_else(|| {
            RequestError::new(
                ErrorCode::InvalidField,
                format!("`{key}` must be an instance name: 1-32 letters, digits, hyphens or underscores"),
            )
        })
    }

    fn thread_filter(&self) -> Result<Option<MessageId>, RequestError> {
        match self.0.get("thread_id") {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value.as_i64().map(|id| Some(MessageId(id))).ok_or_else(|| {
                wrong_type(
                    "thread_id",
                    "a thread id (a whole number, as replies give it)",
                    value,
                )
            }),
        }
    }

    fn since(&self) -> Result<Option<Timestamp>, RequestError> {
        let Some(text) = self.optional_string("since")? else {
            return Ok(None);
        };
        Timestamp::parse(&text).map(Some).ok_or_else(|| {
            RequestError::new(
                ErrorCode::InvalidField,
                "`since` must be an RFC 3339 time like 2026-12-01T09:30:00Z",
            )
        })
    }

    fn search_limit(&self) -> Result<u32, RequestError> {
        let expected = format!("a whole number from 1 to {MAX_SEARCH_LIMIT}");
        match self.0.get("limit") {
            None | Some(Value::Null) => Ok(DEFAULT_SEARCH_LIMIT),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(limit) if (1..=u64::from(MAX_SEARCH_LIMIT)).contains(&limit) => {
                    Ok(limit as u32)
                }
                _ => Err(wrong_type("limit", &expected, &Value::Number(n.clone()))),
            },
            Some(other) => Err(wrong_type("limit", &expected, other)),
        }
    }

    fn search_offset(&self) -> Result<u32, RequestError> {
        let Some(cursor) = self.optional_string("cursor")? else {
            return Ok(0);
        };
        cursor
            .strip_prefix(CURSOR_PREFIX)
            .filter(|digits| !digits.is_empty() && digits.len() <= 9)
            .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse().ok())
            .ok_or_else(|| {
                RequestError::new(
                    ErrorCode::InvalidField,
                    "cursor is not one this broker gave; start again without it",
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Action, Request};

    fn options(text: &str) -> Result<SearchOptions, RequestError> {
        match Request::parse(text.as_bytes())?.action {
            Action::Search(options) => Ok(options),
            other => panic!("parsed as {}", other.name()),
        }
    }

    fn code(text: &str) -> ErrorCode {
        options(text).unwrap_err().code
    }

    #[test]
    fn a_search_takes_its_filters_page_and_cursor() {
        let parsed = options(
            r#"{"action":"search","query":"deploy","from":"alice","to":"bob","thread_id":7,
                "since":"2026-12-01T09:30:00+01:00","limit":5,"cursor":"rank:40"}"#,
        )
        .unwrap();
        assert_eq!(parsed.filters.from, InstanceName::parse("alice"));
        assert_eq!(parsed.filters.to, InstanceName::parse("bob"));
        assert_eq!(parsed.filters.thread_id, Some(MessageId(7)));
        assert_eq!(
            parsed.filters.since.map(Timestamp::to_text).as_deref(),
            Some("2026-12-01T08:30:00.000Z")
        );
        assert_eq!((parsed.limit, parsed.offset), (5, 40));
        let bare = options(r#"{"action":"search","query":"deploy"}"#).unwrap();
        assert_eq!((bare.limit, bare.offset), (DEFAULT_SEARCH_LIMIT, 0));
        assert_eq!(bare.filters, SearchFilters::default());
    }

    #[test]
    fn bad_fields_say_which_and_a_bad_query_is_invalid_query() {
        assert_eq!(code(r#"{"action":"search"}"#), ErrorCode::MissingField);
        assert_eq!(
            code(r#"{"action":"search","query":"x OR"}"#),
            ErrorCode::InvalidQuery
        );
        let error = options(r#"{"action":"search","query":"(a"}"#).unwrap_err();
        assert!(error
            .message
            .starts_with("query: this `(` is never closed (at character 1)"));
        for bad in [
            r#"{"action":"search","query":"a","limit":0}"#,
            r#"{"action":"search","query":"a","limit":101}"#,
            r#"{"action":"search","query":"a","limit":"5"}"#,
            r#"{"action":"search","query":"a","since":"yesterday"}"#,
            r#"{"action":"search","query":"a","from":"no spaces"}"#,
            r#"{"action":"search","query":"a","thread_id":"7"}"#,
            r#"{"action":"search","query":"a","cursor":"rank:"}"#,
            r#"{"action":"search","query":"a","cursor":"rank:-1"}"#,
            r#"{"action":"search","query":"a","cursor":"20"}"#,
            r#"{"action":"search","query":"a","cursor":"rank:99999999999"}"#,
        ] {
            assert_eq!(code(bad), ErrorCode::InvalidField, "{bad}");
        }
        let error = options(r#"{"action":"search","query":"a","limit":500}"#).unwrap_err();
        assert!(error.message.contains("from 1 to 100"), "{}", error.message);
        let error = options(r#"{"action":"search","query":"a","cursor":"x"}"#).unwrap_err();
        assert_eq!(
            error.message,
            "cursor is not one this broker gave; start again without it"
        );
    }

    #[test]
    fn a_cursor_reads_back_its_offset() {
        let text = format!(
            r#"{{"action":"search","query":"a","cursor":"{}"}}"#,
            search_cursor(60)
        );
        assert_eq!(options(&text).unwrap().offset, 60);
    }
}
