//! Who is speaking: register, sessions, rename, list, and the per-instance rate limit.
//!
//! Identity always comes from the session token. Names a request claims (`from_id`,
//! `instance_id`, `old_id`) are never read.

use chrono::{DateTime, Utc};
use rusqlite::Connection;

use super::session::{constant_time_eq, expected_auth_token, new_token, token_hash};
use super::{minus, plus, text, Broker, BrokerError};
use crate::protocol::{InstanceName, Reply};
use crate::store::queries;

/// The name reserved for the broker's own notices, so nobody can pose as it.
pub const SYSTEM_SENDER: &str = "system";

/// The instance a valid session speaks for.
#[derive(Debug, Clone)]
pub struct Caller {
    pub session_id: i64,
    pub name: String,
    /// When the session was last refreshed, as stored.
    pub last_used_at: String,
}

/// Everything needed to check a session on the writer thread.
pub(super) struct SessionCheck {
    token_hash: Option<String>,
    peer: String,
    idle_expiry: std::time::Duration,
    rate_limit: u32,
}

const RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// A session used within this long (or a hundredth of its idle expiry, if that is shorter) is
/// not refreshed again. The expiry is measured in hours, and skipping the two updates keeps a
/// busy sender from rewriting the same two pages on every commit, and a reader's `check`,
/// which otherwise changes nothing, from waiting for a disk flush.
const TOUCH_GRANULARITY: std::time::Duration = std::time::Duration::from_secs(60);

impl SessionCheck {
    /// Finds the live session for the token, enforces the rate limit, and refreshes the
    /// session's idle timer. Failures are recorded (they commit with the job).
    pub(super) fn authenticate(
        &self,
        conn: &Connection,
        now: DateTime<Utc>,
    ) -> Result<Caller, BrokerError> {
        let caller = self.verify(conn, now)?;
        self.enforce_rate_limit(conn, &caller.name, now)?;
        let granularity = TOUCH_GRANULARITY.min(self.idle_expiry / 100);
        let last_used = caller.last_used_at.as_str();
        // A last use stamped in the future (written before the broker's time went back) is
        // rewritten too, so the session expires an idle window after its real last use.
        if last_used <= text(minus(now, granularity)).as_str() || last_used > text(now).as_str() {
            queries::touch_session(conn, caller.session_id, &caller.name, &text(now))?;
        }
        Ok(caller)
    }

    /// Finds the live session for the token without counting or refreshing it. A failure is
    /// recorded as an authentication failure.
    pub(super) fn verify(
        &self,
        conn: &Connection,
        now: DateTime<Utc>,
    ) -> Result<Caller, BrokerError> {
        let Some(hash) = &self.token_hash else {
            return self.refuse(conn, now, None, "missing session token");
        };
        let Some(session) = queries::find_session(conn, hash)? else {
            return self.refuse(conn, now, None, "unknown session token");
        };
        if session.revoked {
            return self.refuse(
                conn,
                now,
                Some(&session.instance_name),
                "revoked session token",
            );
        }
        let idle_cutoff = text(minus(now, self.idle_expiry));
        if session.last_used_at < idle_cutoff {
            return self.refuse(
                conn,
                now,
                Some(&session.instance_name),
                "expired session token",
            );
        }
        Ok(Caller {
            session_id: session.id,
            name: session.instance_name,
            last_used_at: session.last_used_at,
        })
    }

    fn refuse(
        &self,
        conn: &Connection,
        now: DateTime<Utc>,
        name: Option<&str>,
        reason: &str,
    ) -> Result<Caller, BrokerError> {
        record_auth_failure(conn, now, name, &self.peer, reason)?;
        Err(BrokerError::InvalidSession)
    }

    fn enforce_rate_limit(
        &self,
        conn: &Connection,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<(), BrokerError> {
        if self.rate_limit == 0 {
            return Ok(());
        }
        let window_start = text(minus(now, RATE_WINDOW));
        let (count, oldest) = queries::requests_since(conn, name, &window_start, &text(now))?;
        if count >= self.rate_limit {
            let frees_at = oldest
                .as_deref()
                .and_then(crate::clock::parse)
                .map(|oldest| plus(oldest, RATE_WINDOW))
                .unwrap_or(now);
            return Err(BrokerError::RateLimited {
                name: name.to_owned(),
                limit: self.rate_limit,
                retry_seconds: (frees_at - now).num_seconds().max(1),
            });
        }
        queries::log_request(conn, name, &text(now), &window_start)?;
        Ok(())
    }
}

fn record_auth_failure(
    conn: &Connection,
    now: DateTime<Utc>,
    name: Option<&str>,
    peer: &str,
    reason: &str,
) -> Result<(), BrokerError> {
    tracing::warn!(
        instance = name.unwrap_or("-"),
        peer,
        reason,
        "authentication failed"
    );
    queries::record_auth_failure(conn, &text(now), name, peer, reason)?;
    Ok(())
}

impl Broker {
    pub(super) fn session_check(&self, token: Option<String>, peer: &str) -> SessionCheck {
        SessionCheck {
            token_hash: token.as_deref().map(token_hash),
            peer: peer.to_owned(),
            idle_expiry: self.limits.session_idle_expiry,
            rate_limit: self.limits.rate_limit,
        }
    }

    /// `register`: checks the shared secret, revokes any earlier session of this name, and
    /// issues a new token. Mail already waiting for the name is reported, not moved.
    pub(super) async fn register(
        &self,
        name: InstanceName,
        auth_token: Option<String>,
        peer: &str,
    ) -> Result<Reply, BrokerError> {
        let name = name.as_str().to_owned();
        if name == SYSTEM_SENDER {
            return Err(BrokerError::ReservedName(name));
        }
        let secret_ok = match &self.shared_secret {
            None => true,
            Some(secret) => {
                let expected = expected_auth_token(&name, secret);
                let given = auth_token.unwrap_or_default();
                constant_time_eq(given.as_bytes(), expected.as_bytes())
            }
        };
        let token = new_token().map_err(BrokerError::Entropy)?;
        let hash = token_hash(&token);
        let peer = peer.to_owned();
        let now = self.now();
        let queued = self
            .run(move |conn| {
                if !secret_ok {
                    let reason = "wrong shared-secret auth token";
                    record_auth_failure(conn, now, Some(&name), &peer, reason)?;
                    return Err(BrokerError::InvalidAuth);
                }
                let now = text(now);
                queries::revoke_sessions(conn, &name, &now)?;
                queries::upsert_instance(conn, &name, &now)?;
                queries::delete_forward(conn, &name)?;
                queries::insert_session(conn, &name, &hash, &now)?;
                let queued = queries::pending_count(conn, &name)?;
                Ok((name, queued))
            })
            .await;
        let (name, queued) = queued?;
        let message = if queued > 0 {
            format!("Registered {name} with {queued} queued messages")
        } else {
            format!("Registered {name}")
        };
        Ok(Reply::ok()
            .with("session_token", token)
            .with("message", message)
            .with("instance_id", name)
            .with("queued", queued))
    }

    /// `rename`: moves the caller's name, sessions and queued mail to `new_id`, leaves a
    /// forward from the old name, and tells every other registered instance.
    pub(super) async fn rename(
        &self,
        token: Option<String>,
        peer: &str,
        new_id: InstanceName,
    ) -> Result<Reply, BrokerError> {
        let new = new_id.as_str().to_owned();
        let cooldown = self.limits.rename_cooldown;
        let forward_for = self.limits.forward_duration;
        let renamed = self
            .as_caller(token, peer, move |conn, caller, now| {
                let old = caller.name.clone();
                if new == old {
                    return Err(BrokerError::SameName(new));
                }
                if new == SYSTEM_SENDER {
                    return Err(BrokerError::ReservedName(new));
                }
                if queries::instance_exists(conn, &new)? {
                    return Err(BrokerError::NameTaken(new));
                }
                let last = queries::last_renamed_at(conn, &old)?;
                // A rename stamped in the future counts as just now: the wait is never longer
                // than the cooldown.
                if let Some(allowed_at) = last
                    .as_deref()
                    .and_then(crate::clock::parse)
                    .map(|at| plus(at.min(now), cooldown))
                {
                    if allowed_at > now {
                        let seconds = (allowed_at - now).num_seconds();
                        return Err(BrokerError::RenameCooldown {
                            minutes: (seconds + 59) / 60,
                        });
                    }
                }
                let stamp = text(now);
                queries::rename_instance(conn, &old, &new, &stamp, &text(plus(now, forward_for)))?;
                notify_rename(conn, &old, &new, &stamp)?;
                Ok(Reply::ok()
                    .with("message", format!("Renamed {old} to {new}"))
                    .with("old_id", old)
                    .with("new_id", new))
            })
            .await?;
        // Notices went to everyone, and the caller's queued mail now waits under the new name.
        self.doorbells.ring_all();
        Ok(renamed)
    }

    /// `list`: every registered instance and when it was last seen.
    pub(super) async fn list(
        &self,
        token: Option<String>,
        peer: &str,
    ) -> Result<Reply, BrokerError> {
        self.as_caller(token, peer, |conn, _caller, _now| {
            let instances: Vec<serde_json::Value> = queries::list_instances(conn)?
                .into_iter()
                .map(|(id, last_seen)| serde_json::json!({"id": id, "last_seen": last_seen}))
                .collect();
            Ok(Reply::ok().with("instances", instances))
        })
        .await
    }
}

/// Stores a system notice "<old> renamed to <new>" for every other registered instance.
fn notify_rename(conn: &Connection, old: &str, new: &str, now: &str) -> Result<(), BrokerError> {
    let content = format!("{old} renamed to {new}");
    for (recipient, _) in queries::list_instances(conn)? {
        if recipient == new {
            continue;
        }
        queries::insert_message(
            conn,
            &queries::NewMessage {
                sender: SYSTEM_SENDER,
                addressed_to: &recipient,
                recipient: &recipient,
                kind: "system",
                content: &content,
                data: None,
                large_file: None,
                nonce: None,
                sender_timestamp: None,
                received_at: now,
            },
        )?;
    }
    Ok(())
}
