//! The person at the dashboard: a reserved instance name (`human` unless configured) that no
//! client can register or rename to, whose mail is stored with kind `human`. Agents send to
//! it like to any instance (it is registered while the dashboard runs, and kept from the
//! sweeper); the dashboard shows that mail without consuming it.
//!
//! The human sends through the same rules, store path and doorbells as any `send` or
//! `broadcast`: the broker keeps a session for it in memory and renews it when the sweeper
//! expired it, so a long-polling `check` or a channel-mode session wakes at once.

use serde_json::json;

use super::session::new_token;
use super::{done, Broker, BrokerError, Peer};
use crate::domain::{InstanceName, TokenHash};
use crate::protocol::schema::{BroadcastReply, SendReply};
use crate::protocol::{Action, ErrorCode, Request};
use crate::store::Durability;

/// How many replaced sessions of the human's name are remembered (as for any name).
const REPLACED_KEPT: u32 = 8;

/// What the person wrote in the compose box.
#[derive(Debug, Clone)]
pub struct HumanMessage {
    /// An instance name, or `*` for everyone.
    pub to: String,
    pub subject: Option<String>,
    pub content: String,
    pub reply_to: Option<i64>,
}

/// What became of a message from the human.
#[derive(Debug)]
pub enum HumanSent {
    One(SendReply),
    Everyone(BroadcastReply),
}

/// Why the human's message was not stored: the same code and text a client would get.
#[derive(Debug, Clone)]
pub struct HumanRefusal {
    pub code: ErrorCode,
    pub message: String,
}

impl From<BrokerError> for HumanRefusal {
    fn from(error: BrokerError) -> Self {
        HumanRefusal {
            code: error.code(),
            message: error.to_string(),
        }
    }
}

impl Broker {
    /// Whether the instance whose live session is `session` is online and pushing now, as
    /// `list` reports it (for the dashboard's agents table).
    pub fn reach(
        &self,
        session: Option<(crate::store::queries::SessionId, crate::domain::Timestamp)>,
    ) -> super::online::Reach {
        let now = crate::domain::Timestamp::new(self.now());
        self.online_rule().reach(session, now)
    }

    /// The reserved name of the dashboard's person, when the dashboard is on.
    pub fn human_name(&self) -> Option<&InstanceName> {
        self.human.as_ref()
    }

    /// Whether `name` is the human's reserved name, in any letter case.
    pub(super) fn is_human_name(&self, name: &str) -> bool {
        self.human
            .as_ref()
            .is_some_and(|human| human.as_str().eq_ignore_ascii_case(name))
    }

    /// Registers the human's name with a fresh session kept in memory, so agents can send to
    /// it and it can send. Ends any earlier session of the name (one a client held before
    /// the name was reserved). Called at start and whenever the session has expired.
    pub async fn admit_human(&self) -> Result<(), BrokerError> {
        let Some(name) = self.human.clone() else {
            return Ok(());
        };
        let token = new_token().map_err(BrokerError::Entropy)?;
        let hash = TokenHash::of(&token);
        let stored = hash.clone();
        self.job(Durability::Flushed, move |tx, now| {
            tx.replace_sessions(&name, now, "dashboard", REPLACED_KEPT)?;
            tx.upsert_instance(&name, now)?;
            tx.delete_forward(&name)?;
            tx.insert_session(&name, &stored, now)?;
            done(())
        })
        .await?;
        *self.human_session.lock().expect("human session poisoned") = Some(token);
        self.doorbells.changed();
        Ok(())
    }

    /// Sends the person's message to one instance or (`*`) to everyone, with kind `human`,
    /// through the same checks as a client's `send` or `broadcast`.
    pub async fn send_as_human(&self, message: HumanMessage) -> Result<HumanSent, HumanRefusal> {
        match self.try_send_as_human(&message).await {
            Err(refusal) if refusal.code == ErrorCode::InvalidSession => {
                // The sweeper expired the session after a long idle spell: renew it, once.
                self.admit_human().await?;
                self.try_send_as_human(&message).await
            }
            other => other,
        }
    }

    /// Marks the human's mail `ids` read and done, as an `ack` of its own: the person pressed
    /// "Done" on the inbox (looking alone never does this). Ids not addressed to the human
    /// are refused one by one, as for any `ack`. Returns how many were settled now.
    pub async fn human_done(&self, ids: Vec<i64>) -> Result<u32, HumanRefusal> {
        let first = self.try_human_done(ids.clone()).await;
        match first {
            Err(refusal) if refusal.code == ErrorCode::InvalidSession => {
                self.admit_human().await?;
                self.try_human_done(ids).await
            }
            other => other,
        }
    }

    async fn try_human_done(&self, ids: Vec<i64>) -> Result<u32, HumanRefusal> {
        let token = self.human_token()?;
        let peer = Peer::new("dashboard", Some(crate::os::users::effective_uid()));
        let reply = self.ack(Some(TokenHash::of(&token)), &peer, ids).await?;
        Ok(reply.acked as u32)
    }

    /// The human's session token, or why there is none.
    fn human_token(&self) -> Result<String, HumanRefusal> {
        let token = self
            .human_session
            .lock()
            .expect("human session poisoned")
            .clone();
        token.ok_or_else(|| HumanRefusal {
            code: ErrorCode::InvalidSession,
            message: "the dashboard is off: there is no human to act as".to_owned(),
        })
    }

    async fn try_send_as_human(&self, message: &HumanMessage) -> Result<HumanSent, HumanRefusal> {
        let token = self.human_token()?;
        let request =
            Request::parse(human_frame(&token, message).as_bytes()).map_err(|e| HumanRefusal {
                code: e.code,
                message: e.message,
            })?;
        let hash = Some(TokenHash::of(&token));
        let peer = Peer::new("dashboard", Some(crate::os::users::effective_uid()));
        match request.action {
            Action::Send {
                to_id,
                message,
                stamp,
                thread,
            } => {
                let mut outgoing = self.outgoing(&message, stamp, thread)?;
                outgoing.from_human = true;
                let reply = self.send_outgoing(hash, &peer, to_id, outgoing).await?;
                Ok(HumanSent::One(reply))
            }
            Action::Broadcast {
                message,
                stamp,
                thread,
            } => {
                let mut outgoing = self.outgoing(&message, stamp, thread)?;
                outgoing.from_human = true;
                let reply = self.broadcast_outgoing(hash, &peer, outgoing).await?;
                Ok(HumanSent::Everyone(reply))
            }
            _ => unreachable!("human_frame builds only send and broadcast"),
        }
    }
}

/// The person's message as the wire request a client would send, so the request parser's
/// checks (name, subject, sizes) and their error texts apply unchanged.
fn human_frame(token: &str, message: &HumanMessage) -> String {
    let mut request = json!({
        "session_token": token,
        "message": {"content": message.content},
    });
    if message.to.trim() == "*" {
        request["action"] = json!("broadcast");
    } else {
        request["action"] = json!("send");
        request["to_id"] = json!(message.to.trim());
    }
    if let Some(subject) = message.subject.as_deref().filter(|s| !s.trim().is_empty()) {
        request["subject"] = json!(subject);
    }
    if let Some(reply_to) = message.reply_to {
        request["reply_to"] = json!(reply_to);
    }
    request.to_string()
}
