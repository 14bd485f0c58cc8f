//! The conversation tools' work: replying to a message in its thread, reading a thread back,
//! and waiting for the answer to a message just sent (ask and wait). The tools themselves are
//! declared with the others in the router (`super`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{format, IpcServer, ToolError, CHECK_LEASE};
use crate::client::Stamp;
use crate::domain::MessageId;

/// The longest `wait_for_reply_seconds` a send takes: the broker's longest long-poll.
pub const REPLY_WAIT_MAX_SECONDS: f64 = 300.0;

impl IpcServer {
    /// Sends `content` to the other party of message `id`, in its thread.
    pub(super) async fn reply_to_message(
        &self,
        id: i64,
        content: String,
        subject: Option<String>,
    ) -> Result<String, ToolError> {
        let stamp =
            Stamp::fresh().map_err(|e| ToolError::Input(format!("cannot make a nonce: {e}")))?;
        let replied = self
            .as_session(move |client, token| {
                client.reply(token, id, &content, subject.as_deref(), &stamp)
            })
            .await?;
        let thread = replied
            .sent
            .thread_id
            .map(|thread| format!(", thread {thread}"))
            .unwrap_or_default();
        Ok(format!(
            "Replied to {} (message id {}, answering {id}{thread}): {}.",
            replied.to,
            replied.sent.message_id,
            replied.sent.message.trim_end_matches('.')
        ))
    }

    /// One page of the thread `id` names, as compact text (or whole with `full`).
    pub(super) async fn thread_text(
        &self,
        id: i64,
        cursor: Option<String>,
        full: bool,
    ) -> Result<String, ToolError> {
        let secrets = self.secrets().await;
        // One line per message keeps a long thread small; whole messages take more room.
        let limit = if full { 20 } else { 100 };
        let reply = self
            .as_session(move |client, token| {
                client.thread(token, id, Some(limit), cursor.as_deref())
            })
            .await?;
        Ok(format::thread(&reply, chrono::Utc::now(), &secrets, full))
    }

    /// Waits up to `seconds` for the answer to message `id` and returns it as `check` shows
    /// mail, acknowledged; or says that none came. Other mail stays waiting, untouched. A
    /// cancelled wait hands what it read back unread.
    pub(super) async fn await_reply(
        &self,
        id: MessageId,
        seconds: f64,
        cancel: &CancellationToken,
    ) -> Result<String, ToolError> {
        let secrets = Arc::new(self.secrets().await);
        let wait = Duration::from_secs_f64(seconds);
        let cancelled = cancel.clone();
        let (text, handed_back) = self
            .as_session_until(
                move |client, token| {
                    let checked = client.wait_for_reply(token, id.0, wait, CHECK_LEASE)?;
                    if checked.messages.is_empty() {
                        return Ok((None, false));
                    }
                    let secrets = secrets.and_token(token);
                    let text = format::mail(&checked, chrono::Utc::now(), &secrets);
                    if cancelled.is_cancelled() {
                        client.release(token, &checked.ids())?;
                        return Ok((Some(text), true));
                    }
                    client.ack(token, &checked.ids())?;
                    Ok((Some(text), false))
                },
                cancel,
            )
            .await?;
        if handed_back {
            return Err(ToolError::Cancelled);
        }
        Ok(match text {
            Some(text) => format!("The answer came:\n{text}"),
            None => format!(
                "No answer to message {id} came within {seconds} s. It may still come: call wait_for_messages or check later, or thread with thread_id={id} to see the conversation."
            ),
        })
    }
}

/// `wait_for_reply_seconds` as a wait: none for absent or 0, refused when not a number of
/// seconds from 0 to [`REPLY_WAIT_MAX_SECONDS`].
pub fn reply_wait(seconds: Option<f64>) -> Result<Option<f64>, ToolError> {
    match seconds {
        None => Ok(None),
        Some(0.0) => Ok(None),
        Some(s) if s.is_finite() && (0.0..=REPLY_WAIT_MAX_SECONDS).contains(&s) => Ok(Some(s)),
        Some(s) => Err(ToolError::Input(format!(
            "`wait_for_reply_seconds` must be from 0 to {REPLY_WAIT_MAX_SECONDS}, not {s}; nothing was sent."
        ))),
    }
}
