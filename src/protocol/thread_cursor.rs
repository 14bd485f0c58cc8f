//! The cursor of a `thread` reply: where the next page starts. Opaque to clients (base64url
//! text), it names the thread it belongs to and the last message the previous page held, so
//! pages follow each other by message id: no message is shown twice or skipped, and mail that
//! arrives meanwhile only lengthens the last page.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::domain::MessageId;

/// What every cursor's text starts with before encoding, so a cursor of another action (or
/// random text) is told apart.
const TAG: &str = "thread";
/// A cursor is short; anything much longer was not made by this broker.
const MAX_CURSOR_CHARS: usize = 64;

/// The position after one page of one thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadCursor {
    /// The thread (its effective id) the page belonged to.
    pub thread_id: MessageId,
    /// The last message that page held; the next page starts after it.
    pub after: MessageId,
}

impl ThreadCursor {
    /// The text a reply carries as `next_cursor`.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{TAG}:{}:{}", self.thread_id.0, self.after.0))
    }

    /// A cursor this broker gave, or `None` for any other text.
    pub fn parse(text: &str) -> Option<ThreadCursor> {
        if text.is_empty() || text.len() > MAX_CURSOR_CHARS {
            return None;
        }
        let decoded = URL_SAFE_NO_PAD.decode(text).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let mut parts = decoded.split(':');
        let (tag, thread, after) = (parts.next()?, parts.next()?, parts.next()?);
        if tag != TAG || parts.next().is_some() {
            return None;
        }
        let number = |text: &str| -> Option<MessageId> {
            let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
            digits_only
                .then(|| text.parse().ok())
                .flatten()
                .map(MessageId)
        };
        Some(ThreadCursor {
            thread_id: number(thread)?,
            after: number(after)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_itself() {
        let cursor = ThreadCursor {
            thread_id: MessageId(41),
            after: MessageId(9_000_000_001),
        };
        assert_eq!(ThreadCursor::parse(&cursor.encode()), Some(cursor));
    }

    #[test]
    fn text_this_broker_did_not_give_is_no_cursor() {
        let other_tag = URL_SAFE_NO_PAD.encode("history:1:2");
        let extra_part = URL_SAFE_NO_PAD.encode("thread:1:2:3");
        let negative = URL_SAFE_NO_PAD.encode("thread:1:-2");
        let signed = URL_SAFE_NO_PAD.encode("thread:+1:2");
        let long = "A".repeat(100);
        for bad in [
            "",
            "not a cursor",
            "12",
            other_tag.as_str(),
            extra_part.as_str(),
            negative.as_str(),
            signed.as_str(),
            long.as_str(),
        ] {
            assert_eq!(ThreadCursor::parse(bad), None, "{bad}");
        }
    }
}
