//! The client's calls for conversations: one page of a thread, a reply to a message (to the
//! other party of it, in its thread), and waiting for the answer to a message (ask and wait).

use std::time::{Duration, Instant};

use super::{millis, Checked, Client, ClientError, Sent, Stamp};
use crate::protocol::schema::requests::{
    CheckRequest, ClientRequest, ThreadRequest, ThreadingFields,
};
use crate::protocol::schema::{ConversationMessage, Direction, ManualAck, ThreadReply};

/// The most a `thread` page holds (the broker's cap).
pub const THREAD_PAGE_MAX: u32 = 100;
/// The longest single long-poll a broker takes; a longer wait is a chain of them.
const LONGEST_POLL: Duration = Duration::from_millis(crate::protocol::request::MAX_WAIT_MS);

/// A reply sent by [`Client::reply`]: the broker's answer and whom it went to.
#[derive(Debug, Clone)]
pub struct Replied {
    pub sent: Sent,
    /// The other party of the message answered.
    pub to: String,
}

impl Client {
    /// One page of the thread `thread_id` names (its id or any of its messages' ids), after
    /// `cursor` (a previous page's `next_cursor`), at most `limit` messages.
    pub fn thread(
        &mut self,
        token: &str,
        thread_id: i64,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<ThreadReply, ClientError> {
        self.call_as(ClientRequest::Thread(ThreadRequest {
            session_token: token.to_owned(),
            thread_id,
            limit,
            cursor: cursor.map(str::to_owned),
        }))
    }

    /// Message `id` as this session sees it, found in its thread page by page.
    pub fn conversation_message(
        &mut self,
        token: &str,
        id: i64,
    ) -> Result<ConversationMessage, ClientError> {
        let mut cursor: Option<String> = None;
        loop {
            let page = self.thread(token, id, Some(THREAD_PAGE_MAX), cursor.as_deref())?;
            if let Some(found) = page.messages.into_iter().find(|m| m.id.0 == id) {
                return Ok(found);
            }
            match (page.more, page.next_cursor) {
                (true, Some(next)) if cursor.as_deref() != Some(next.as_str()) => {
                    cursor = Some(next)
                }
                _ => {
                    return Err(ClientError::Protocol(format!(
                        "message {id} is not in the thread the broker returned for it"
                    )))
                }
            }
        }
    }

    /// Answers message `id`: to its sender if this session received it, to its recipient if
    /// this session sent it, in its thread. The stamp makes a retry safe.
    pub fn reply(
        &mut self,
        token: &str,
        id: i64,
        content: &str,
        subject: Option<&str>,
        stamp: &Stamp,
    ) -> Result<Replied, ClientError> {
        let original = self.conversation_message(token, id)?;
        let to = other_party(&original)
            .ok_or_else(|| ClientError::Protocol(no_party_to_answer(&original)))?
            .to_owned();
        let thread = ThreadingFields {
            reply_to: Some(id),
            subject: subject.map(str::to_owned),
        };
        let sent = self.send_threaded(token, &to, content, None, &thread, stamp)?;
        Ok(Replied { sent, to })
    }

    /// Waits up to `wait` for mail answering message `id`, leaving all other mail waiting.
    /// What comes is leased for `lease` (settle it with [`Client::ack`]); an empty reply
    /// means no answer came in time.
    pub fn wait_for_reply(
        &mut self,
        token: &str,
        id: i64,
        wait: Duration,
        lease: Duration,
    ) -> Result<Checked, ClientError> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let poll = left.min(LONGEST_POLL);
            let request = ClientRequest::Check(CheckRequest {
                session_token: token.to_owned(),
                ack: Some(ManualAck::Manual),
                lease_ms: Some(millis(lease)),
                limit: None,
                wait_ms: Some(millis(poll)),
                reply_to: Some(id),
            });
            let checked: Checked = self.with_wait(poll, |client| client.call_as(request))?;
            if !checked.messages.is_empty() || Instant::now() >= deadline {
                return Ok(checked);
            }
        }
    }
}

/// Whom a reply to `message` goes to: the other party under its current name (`peer`), so
/// a reply follows a rename however long ago it was, and never goes to an old name that
/// someone else may hold by now. `None` when that instance is gone.
pub fn other_party(message: &ConversationMessage) -> Option<&str> {
    message.peer.as_deref()
}

/// Why a reply to `message` cannot be addressed, and what to do instead.
fn no_party_to_answer(message: &ConversationMessage) -> String {
    let id = message.id;
    let gone = match message.direction {
        Direction::Received => &message.from,
        Direction::Sent => &message.to,
    };
    format!(
        "nobody to answer message {id}: {gone} is no longer registered (its instance was removed, or it is the broker's notice or mail imported from the original), so nothing was sent; send to a name that `list` shows, with reply_to {id} to keep the thread"
    )
}
