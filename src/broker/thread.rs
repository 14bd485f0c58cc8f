//! `thread`: one conversation, oldest first, as the caller took part in it. A thread is
//! named by its id or by the id of any message in it the caller can see. Within it the caller
//! sees only what it sent or received, so a participant never learns what two others said to
//! each other; a caller that sees nothing of a thread is refused exactly as for a thread that
//! does not exist. Reading changes no message's delivery state.

use super::conversation::conversation_message;
use super::session::TokenHash;
use super::{done, refuse, Broker, BrokerError, Peer};
use crate::domain::{InstanceName, MessageId};
use crate::protocol::request::ThreadQuery;
use crate::protocol::schema::ThreadReply;
use crate::protocol::thread_cursor::ThreadCursor;
use crate::protocol::EntryBudget;
use crate::store::conversation::ConversationRow;

/// A `thread` reply without its messages: status, the thread's id, `more`, the cursor, and a
/// subject of up to 200 characters of up to 4 bytes each, some of them escaped.
const THREAD_REPLY_FIXED_BYTES: usize = 1_400;

impl Broker {
    /// `thread`: one page of the thread `query` names, oldest first, after its cursor. Reads
    /// only; counts as one request.
    pub(super) async fn thread(
        &self,
        token: Option<TokenHash>,
        peer: &Peer,
        query: ThreadQuery,
    ) -> Result<ThreadReply, BrokerError> {
        self.as_caller(token, peer, move |tx, caller, now| {
            let Some(thread_id) = tx.thread_seen_by(&caller.name, query.thread_id, now)? else {
                return refuse(BrokerError::UnknownThread);
            };
            let after = match query.cursor {
                None => MessageId(0),
                Some(cursor) if cursor.thread_id == thread_id => cursor.after,
                Some(_) => return refuse(BrokerError::CursorOfAnotherThread),
            };
            // One more than asked, to tell whether more are kept.
            let rows = tx.thread_page(&caller.name, thread_id, after, now, query.limit + 1)?;
            let subject = tx.thread_subject(&caller.name, thread_id)?;
            done(page(thread_id, subject, &rows, query.limit, &caller.name))
        })
        .await
    }
}

/// The reply for `rows` (at most one more than `limit`, oldest first): as many as `limit`
/// allows and the reply budget holds, and where the next page starts if any are left.
fn page(
    thread_id: MessageId,
    subject: Option<String>,
    rows: &[ConversationRow],
    limit: u32,
    caller: &InstanceName,
) -> ThreadReply {
    let mut budget = EntryBudget::new(THREAD_REPLY_FIXED_BYTES);
    let mut messages = Vec::new();
    let mut more = rows.len() > limit as usize;
    for row in rows.iter().take(limit as usize) {
        let message = conversation_message(row, caller);
        // The first always goes in, so a page always moves the cursor on.
        if !budget.take(&message) && !messages.is_empty() {
            more = true;
            break;
        }
        messages.push(message);
    }
    let next_cursor = match messages.last() {
        Some(last) if more => Some(
            ThreadCursor {
                thread_id,
                after: last.id,
            }
            .encode(),
        ),
        _ => None,
    };
    ThreadReply {
        thread_id,
        subject,
        messages,
        more,
        next_cursor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::budget::entry_bytes;

    #[test]
    fn the_fixed_part_covers_the_longest_subject_and_cursor() {
        let reply = ThreadReply {
            thread_id: MessageId(i64::MAX),
            subject: Some("\u{10FFFF}".repeat(190) + &"\"".repeat(10)),
            messages: Vec::new(),
            more: true,
            next_cursor: Some(
                ThreadCursor {
                    thread_id: MessageId(i64::MAX),
                    after: MessageId(i64::MAX),
                }
                .encode(),
            ),
        };
        let with_status = entry_bytes(&reply) + r#","status":"ok""#.len();
        assert!(with_status <= THREAD_REPLY_FIXED_BYTES, "{with_status}");
    }
}
