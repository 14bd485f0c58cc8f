//! Who is speaking: register, sessions, rename, list, and the rate limits: per instance, per
//! peer over all its names, and on registering new names (per peer and for everyone), so that
//! making fresh names escapes none of them.
//!
//! Identity always comes from the session token. Names a request claims (`from_id`,
//! `instance_id`, `old_id`) are never read.
//!
//! A name in use is not taken silently: a `register` from this project's own clients
//! ([`Claim::Asked`]) is refused a name whose session is live unless it asks to take it over,
//! and a replaced session's next request is told who replaced it and when. The original's
//! scripts (no `takeover` field, [`Claim::Legacy`]) replace it as they always did, and their
//! old holder is told the same way. No name may differ from another only in letter case, and
//! `system` is reserved in every spelling.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rusqlite::Connection;

use super::auth_guard::{AuthGuard, Failure};
use super::listening::Listening;
use super::session::{constant_time_eq, expected_auth_token, new_token, token_hash};
use super::{minus, plus, text, Broker, BrokerError, ChallengeRefusal, Peer};
use crate::protocol::schema::{InstanceEntry, ListReply, LogoutReply, RegisterReply, RenameReply};
use crate::protocol::{ChallengeAnswer, EntryBudget, InstanceName, ListOptions};
use crate::store::queries::{self, AuthFailure, IdentityId, PeerActivity, Replacement};

/// The most instances one `list` page holds, whatever `limit` asks for.
const LIST_MAX_INSTANCES: u32 = 1000;
/// A `list` reply without its entries: status, `more`, and the longest `next_after`.
const LIST_REPLY_FIXED_BYTES: usize = 100;

/// The name reserved for the broker's own notices, so nobody can pose as it. Reserved in
/// every letter case: `System` would read just like it.
pub const SYSTEM_SENDER: &str = "system";
/// How many replaced sessions of one name are kept to tell their holders; older ones are
/// forgotten (their holder then sees a plain invalid session).
const REPLACED_KEPT_PER_NAME: u32 = 8;

/// Whether `name` is the broker's own or could be read as it: any letter case, with
/// separators (`sys_tem`), digits that pass for letters (`5ystem`, `syst3m`) or `rn` for `m`
/// (`systern`). A reader must be able to trust a notice from `system`.
fn is_reserved(name: &str) -> bool {
    look_alike_skeleton(name) == SYSTEM_SENDER
}

/// `name` as a quick reader sees it: lower case, without `-` and `_`, with the digits that
/// pass for letters read as those letters, and `rn` read as `m`.
fn look_alike_skeleton(name: &str) -> String {
    let letters: String = name
        .chars()
        .filter(|c| !matches!(c, '-' | '_'))
        .map(|c| match c.to_ascii_lowercase() {
            '0' => 'o',
            '1' => 'l',
            '3' => 'e',
            '4' => 'a',
            '5' => 's',
            '7' => 't',
            other => other,
        })
        .collect();
    letters.replace("rn", "m")
}

/// How a `register` claims its name.
#[derive(Debug, Clone)]
pub enum Claim {
    /// No `takeover` field: the original's scripts, which replace any earlier session.
    Legacy,
    /// This project's own clients: a session in use is replaced only with `takeover`. A
    /// caller presenting the name's current session token (registering itself again) is
    /// never refused.
    Asked {
        takeover: bool,
        own_token_hash: Option<String>,
    },
}

impl Claim {
    /// The claim a `register` request makes: `takeover` as sent, and its `session_token`.
    pub fn from_request(takeover: Option<bool>, session_token: Option<String>) -> Claim {
        match takeover {
            None => Claim::Legacy,
            Some(takeover) => Claim::Asked {
                takeover,
                own_token_hash: session_token.as_deref().map(token_hash),
            },
        }
    }
}

/// When a name's session counts as in use, checked on the writer thread.
struct LiveRule {
    window: std::time::Duration,
    idle_expiry: std::time::Duration,
    listening: Arc<Listening>,
}

impl LiveRule {
    /// Refuses to replace `name`'s session if it is live: not revoked, not expired, and used
    /// within the window or waiting for mail now. `own_token_hash` matching it is its holder.
    fn refuse_if_in_use(
        &self,
        conn: &Connection,
        name: &str,
        own_token_hash: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), BrokerError> {
        let Some(holder) = queries::name_holder(conn, name)? else {
            return Ok(());
        };
        let is_holder = own_token_hash
            .is_some_and(|own| constant_time_eq(own.as_bytes(), holder.token_sha256.as_bytes()));
        let last_used = crate::clock::parse(&holder.last_used_at).unwrap_or(now);
        let expired = last_used < minus(now, self.idle_expiry);
        if is_holder || expired {
            return Ok(());
        }
        let last_active = if self.listening.is_waiting(holder.session_id) {
            "now: it is waiting for mail".to_owned()
        } else if last_used >= minus(now, self.window) {
            format!("{} s ago", (now - last_used).num_seconds().max(0))
        } else {
            return Ok(());
        };
        Err(BrokerError::NameInUse {
            name: name.to_owned(),
            last_active,
        })
    }
}

/// What a replaced session's holder is told: when, by whom, and how to take the name back.
pub(super) fn replaced_hint(name: &str, replacement: &Replacement) -> String {
    let at = crate::clock::parse(&replacement.at)
        .map(|at| at.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| replacement.at.clone());
    format!(
        "this session was replaced at {at} by a new registration of {name} (from {}); register again with takeover to take the name back (CLI: `claude-ipc register {name} --takeover`; MCP: register with takeover: true), only if the other holder is gone or should give it up",
        replacement.by
    )
}

/// The instance a valid session speaks for.
#[derive(Debug, Clone)]
pub struct Caller {
    pub session_id: i64,
    pub name: String,
    /// Who the caller is across its renames: the scope of its nonces.
    pub identity: IdentityId,
    /// When the session was last refreshed, as stored.
    pub last_used_at: String,
}

/// Everything needed to check a session on the writer thread.
pub(super) struct SessionCheck {
    token_hash: Option<String>,
    peer: PeerRecord,
    idle_expiry: std::time::Duration,
    rate_limit: u32,
    /// Requests per window for all of the peer's names together; 0 is off.
    peer_rate_limit: u32,
}

/// How a peer's failures are counted and recorded, on the writer thread.
#[derive(Clone)]
pub(super) struct PeerRecord {
    label: String,
    key: String,
    guard: Arc<AuthGuard>,
    max_rows: u32,
}

impl PeerRecord {
    /// Counts and (if it is the first of the peer's minute) logs a checked failure, and
    /// records it in its aggregate row.
    fn refused(
        &self,
        conn: &Connection,
        now: DateTime<Utc>,
        name: Option<&str>,
        reason: &str,
    ) -> Result<(), BrokerError> {
        // A peer past its failure limit is still refused as usual, but its failures cost no
        // row and no log line: only the summary counts them. Its valid tokens keep working,
        // because a session token (256 random bits) cannot be guessed, so throttling them
        // would only let a flood of bad tokens lock out the same user's real clients.
        if self.guard.throttled(&self.key).is_some() {
            return Ok(());
        }
        self.guard.failed(&self.failure(name, reason));
        self.record(conn, now, name, reason)
    }

    /// Records a failure already counted by the guard in its aggregate row.
    fn record(
        &self,
        conn: &Connection,
        now: DateTime<Utc>,
        name: Option<&str>,
        reason: &str,
    ) -> Result<(), BrokerError> {
        let at = text(now);
        let minute = format!("{}:00.000Z", &at[..16]);
        let failure = AuthFailure {
            at: &at,
            minute: &minute,
            name,
            peer: &self.label,
            peer_key: &self.key,
            reason,
        };
        queries::record_auth_failure(conn, &failure, self.max_rows)?;
        Ok(())
    }

    fn failure<'a>(&'a self, name: Option<&'a str>, reason: &'a str) -> Failure<'a> {
        Failure {
            peer_key: &self.key,
            peer_label: &self.label,
            name,
            reason,
        }
    }
}

/// The reason recorded for a registration with the wrong shared-secret token.
const WRONG_SECRET: &str = "wrong shared-secret auth token";

/// Credentials that did not prove the secret: the refusal, and the reason it is recorded
/// under as an authentication failure.
struct CredentialRefusal {
    error: BrokerError,
    reason: &'static str,
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
        self.enforce_rate_limits(conn, &caller.name, now)?;
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
            let refused = self.refuse(
                conn,
                now,
                Some(&session.instance_name),
                "revoked session token",
            );
            // Recorded like any revoked token; the holder is told what replaced it.
            return match (refused, session.replaced) {
                (Err(BrokerError::InvalidSession), Some(replacement)) => {
                    Err(BrokerError::SessionReplaced {
                        name: session.instance_name,
                        replacement,
                    })
                }
                (refused, _) => refused,
            };
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
            identity: session.identity,
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
        self.peer.refused(conn, now, name, reason)?;
        Err(BrokerError::InvalidSession)
    }

    /// Refuses the request if it would pass the caller's own limit or its peer's (summed
    /// over every name the peer uses), and counts it against both only when neither refuses.
    fn enforce_rate_limits(
        &self,
        conn: &Connection,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<(), BrokerError> {
        let window_start = text(minus(now, RATE_WINDOW));
        if self.rate_limit > 0 {
            let (count, oldest) = queries::requests_since(conn, name, &window_start, &text(now))?;
            if count >= self.rate_limit {
                return Err(BrokerError::RateLimited {
                    name: name.to_owned(),
                    limit: self.rate_limit,
                    retry_seconds: retry_seconds(oldest.as_deref(), now),
                });
            }
        }
        let peer = &self.peer.key;
        if self.peer_rate_limit > 0 {
            let (count, oldest) =
                queries::peer_activity_since(conn, PeerActivity::Request, peer, &window_start)?;
            if count >= self.peer_rate_limit {
                return Err(BrokerError::PeerRateLimited {
                    peer: peer.clone(),
                    limit: self.peer_rate_limit,
                    retry_seconds: retry_seconds(oldest.as_deref(), now),
                });
            }
        }
        let now = text(now);
        if self.rate_limit > 0 {
            queries::log_request(conn, name, &now, &window_start)?;
        }
        if self.peer_rate_limit > 0 {
            queries::log_peer_activity(conn, PeerActivity::Request, peer, &now, &window_start)?;
        }
        Ok(())
    }
}

/// Refuses `name` if another instance (other than `except`) has the same name in another
/// letter case: a look-alike of a peer is how a reader is fooled.
fn refuse_case_variant(conn: &Connection, name: &str, except: &str) -> Result<(), BrokerError> {
    match queries::case_variant(conn, name, except)? {
        Some(existing) => Err(BrokerError::NameTooSimilar {
            name: name.to_owned(),
            existing,
        }),
        None => Ok(()),
    }
}

/// Seconds until the oldest counted event leaves the sliding window (at least 1).
fn retry_seconds(oldest: Option<&str>, now: DateTime<Utc>) -> i64 {
    let frees_at = oldest
        .and_then(crate::clock::parse)
        .map(|oldest| plus(oldest, RATE_WINDOW))
        .unwrap_or(now);
    (frees_at - now).num_seconds().max(1)
}

/// Refuses a registration that would create a new name past the peer's or everyone's
/// limit for the window (`limits`: per peer, for everyone; 0 is off), and counts it
/// otherwise. Only new names are counted: registering again only replaces a session.
fn enforce_register_limits(
    conn: &Connection,
    limits: (u32, u32),
    peer: &str,
    now: DateTime<Utc>,
) -> Result<(), BrokerError> {
    let (per_peer, everyone) = limits;
    let window_start = text(minus(now, RATE_WINDOW));
    if per_peer > 0 {
        let (count, oldest) =
            queries::peer_activity_since(conn, PeerActivity::Register, peer, &window_start)?;
        if count >= per_peer {
            return Err(BrokerError::PeerRegisterLimited {
                peer: peer.to_owned(),
                limit: per_peer,
                retry_seconds: retry_seconds(oldest.as_deref(), now),
            });
        }
    }
    if everyone > 0 {
        let (count, oldest) =
            queries::all_activity_since(conn, PeerActivity::Register, &window_start)?;
        if count >= everyone {
            return Err(BrokerError::RegisterLimited {
                limit: everyone,
                retry_seconds: retry_seconds(oldest.as_deref(), now),
            });
        }
    }
    if per_peer > 0 || everyone > 0 {
        queries::log_peer_activity(
            conn,
            PeerActivity::Register,
            peer,
            &text(now),
            &window_start,
        )?;
    }
    Ok(())
}

impl Broker {
    pub(super) fn session_check(&self, token: Option<String>, peer: &Peer) -> SessionCheck {
        SessionCheck {
            token_hash: token.as_deref().map(token_hash),
            peer: self.peer_record(peer),
            idle_expiry: self.limits.session_idle_expiry,
            rate_limit: self.limits.rate_limit,
            peer_rate_limit: self.limits.effective_peer_rate_limit(),
        }
    }

    fn live_rule(&self) -> LiveRule {
        LiveRule {
            window: self.limits.name_live_window,
            idle_expiry: self.limits.session_idle_expiry,
            listening: self.listening.clone(),
        }
    }

    fn peer_record(&self, peer: &Peer) -> PeerRecord {
        PeerRecord {
            label: peer.label.clone(),
            key: peer.key(),
            guard: self.auth_guard.clone(),
            max_rows: self.limits.auth_failure_rows,
        }
    }

    /// `register`: checks the shared secret (by the answer to a challenge, or the legacy
    /// static token), replaces any earlier session of this name (a live one only if the
    /// claim allows it, see [`Claim`]), and issues a new token. Mail already waiting for the
    /// name is reported, not moved. A peer that used up its authentication failures is
    /// refused without its secret being looked at, and a new name counts against the
    /// registration limits and must not differ from another only in case.
    pub(super) async fn register(
        &self,
        name: InstanceName,
        auth_token: Option<String>,
        answer: Option<ChallengeAnswer>,
        claim: Claim,
        peer: &Peer,
    ) -> Result<RegisterReply, BrokerError> {
        let name = name.as_str().to_owned();
        if is_reserved(&name) {
            return Err(BrokerError::ReservedName(name));
        }
        let refusal = self.judge_credentials(&name, auth_token, answer.as_ref(), peer)?;
        let record = self.peer_record(peer);
        if self.shared_secret.is_some() {
            let reason = refusal.as_ref().map_or(WRONG_SECRET, |r| r.reason);
            let failure = record.failure(Some(&name), reason);
            if let Err(retry) = self.auth_guard.check_secret(&failure, refusal.is_none()) {
                return Err(self.auth_throttled(peer, retry));
            }
        }
        let token = new_token().map_err(BrokerError::Entropy)?;
        let hash = token_hash(&token);
        let register_limits = (
            self.limits.effective_peer_register_limit(),
            self.limits.effective_register_limit(),
        );
        let live = self.live_rule();
        let now = self.now();
        let queued = self
            .run(move |conn| {
                if let Some(refusal) = refusal {
                    record.record(conn, now, Some(&name), refusal.reason)?;
                    return Err(refusal.error);
                }
                if !queries::instance_exists(conn, &name)? {
                    refuse_case_variant(conn, &name, &name)?;
                    enforce_register_limits(conn, register_limits, &record.key, now)?;
                }
                if let Claim::Asked {
                    takeover: false,
                    own_token_hash,
                } = &claim
                {
                    live.refuse_if_in_use(conn, &name, own_token_hash.as_deref(), now)?;
                }
                let now = text(now);
                queries::replace_sessions(conn, &name, &now, &record.key, REPLACED_KEPT_PER_NAME)?;
                queries::upsert_instance(conn, &name, &now)?;
                queries::delete_forward(conn, &name)?;
                queries::insert_session(conn, &name, &hash, &now)?;
                let queued = queries::pending_count(conn, &name)?;
                Ok((name, queued))
            })
            .await;
        let (name, queued) = queued?;
        // A replaced session's long-poll wakes to learn it was replaced.
        self.doorbells.ring(&name);
        let message = if queued > 0 {
            format!("Registered {name} with {queued} queued messages")
        } else {
            format!("Registered {name}")
        };
        Ok(RegisterReply {
            session_token: token,
            message,
            instance_id: name,
            queued,
        })
    }

    /// Checks a registration's credentials against the shared secret. `Ok(None)`: proved (or
    /// open mode, which asks for nothing). `Ok(Some(_))`: wrong, an authentication failure to
    /// count. `Err`: refused before anything was checked, so nothing is counted: a challenge
    /// answer in open mode, or a static token the broker was told to refuse.
    fn judge_credentials(
        &self,
        name: &str,
        auth_token: Option<String>,
        answer: Option<&ChallengeAnswer>,
        peer: &Peer,
    ) -> Result<Option<CredentialRefusal>, BrokerError> {
        let Some(secret) = &self.shared_secret else {
            return match answer {
                Some(_) => Err(ChallengeRefusal::OpenMode.into()),
                None => Ok(None),
            };
        };
        if let Some(answer) = answer {
            return Ok(self
                .verify_challenge_answer(secret, name, answer, peer)
                .err()
                .map(|refusal| CredentialRefusal {
                    reason: refusal.reason(),
                    error: refusal.into(),
                }));
        }
        if !self.limits.static_token_accepted {
            return Err(BrokerError::StaticTokenRefused);
        }
        let expected = expected_auth_token(name, secret);
        let given = auth_token.unwrap_or_default();
        Ok(
            (!constant_time_eq(given.as_bytes(), expected.as_bytes())).then_some(
                CredentialRefusal {
                    error: BrokerError::InvalidAuth,
                    reason: WRONG_SECRET,
                },
            ),
        )
    }

    /// `rename`: moves the caller's name, sessions and queued mail to `new_id`, leaves a
    /// forward from the old name, and tells every other registered instance.
    /// `logout`: ends the caller's own session, so its name is not "in use" any more and the
    /// next `register` of it needs no takeover. Mail waiting for the name stays waiting.
    pub(super) async fn logout(
        &self,
        token: Option<String>,
        peer: &Peer,
    ) -> Result<LogoutReply, BrokerError> {
        let name = self
            .as_caller(token, peer, move |conn, caller, now| {
                queries::end_session(conn, caller.session_id, &text(now))?;
                Ok(caller.name.clone())
            })
            .await?;
        Ok(LogoutReply {
            message: format!("Logged out {name}"),
            instance_id: name,
        })
    }

    pub(super) async fn rename(
        &self,
        token: Option<String>,
        peer: &Peer,
        new_id: InstanceName,
    ) -> Result<RenameReply, BrokerError> {
        let new = new_id.as_str().to_owned();
        let cooldown = self.limits.rename_cooldown;
        let forward_for = self.limits.forward_duration;
        let queue_cap = self.limits.queue_cap;
        let renamed = self
            .as_caller(token, peer, move |conn, caller, now| {
                let old = caller.name.clone();
                if new == old {
                    return Err(BrokerError::SameName(new));
                }
                if is_reserved(&new) {
                    return Err(BrokerError::ReservedName(new));
                }
                if queries::instance_exists(conn, &new)? {
                    return Err(BrokerError::NameTaken(new));
                }
                // Renaming `alice` to `Alice` fools nobody; `bob` to `Alice` would.
                refuse_case_variant(conn, &new, &old)?;
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
                notify_rename(conn, &old, &new, &stamp, queue_cap)?;
                Ok(RenameReply {
                    message: format!("Renamed {old} to {new}"),
                    old_id: old,
                    new_id: new,
                })
            })
            .await?;
        // Notices went to everyone, and the caller's queued mail now waits under the new name.
        self.doorbells.ring_all();
        Ok(renamed)
    }

    /// `list`: registered instances in name order and when each was last seen, one page at a
    /// time. A page holds what fits the reply budget (and `limit`); with more left, the reply
    /// says `more` and names its last entry in `next_after`, which the next request passes as
    /// `after`. Name order is stable, so paging returns every instance that stays registered
    /// exactly once.
    pub(super) async fn list(
        &self,
        token: Option<String>,
        peer: &Peer,
        options: ListOptions,
    ) -> Result<ListReply, BrokerError> {
        let limit = options
            .limit
            .unwrap_or(LIST_MAX_INSTANCES)
            .min(LIST_MAX_INSTANCES);
        let after = options.after.map(|name| name.as_str().to_owned());
        self.as_caller(token, peer, move |conn, _caller, _now| {
            let mut budget = EntryBudget::new(LIST_REPLY_FIXED_BYTES);
            let mut instances = Vec::new();
            let after = after.as_deref().unwrap_or("");
            let more = queries::list_instances_after(conn, after, limit, |id, last_seen| {
                let entry = InstanceEntry {
                    id: id.to_owned(),
                    last_seen: last_seen.to_owned(),
                };
                let fits = budget.take(&entry);
                if fits {
                    instances.push(entry);
                }
                fits
            })?;
            let next_after = instances
                .last()
                .filter(|_| more)
                .map(|entry| entry.id.clone());
            Ok(ListReply {
                instances,
                more,
                next_after,
            })
        })
        .await
    }
}

/// Stores a system notice "<old> renamed to <new>" for every other registered instance
/// whose queue has room: like a broadcast, a notice never pushes a queue past its cap.
fn notify_rename(
    conn: &Connection,
    old: &str,
    new: &str,
    now: &str,
    queue_cap: u32,
) -> Result<(), BrokerError> {
    let content = format!("{old} renamed to {new}");
    for (recipient, _) in queries::list_instances(conn)? {
        if recipient == new {
            continue;
        }
        if queue_cap > 0 && queries::pending_count(conn, &recipient)? >= queue_cap {
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
                large_file_bytes: None,
                nonce: None,
                sender_timestamp: None,
                received_at: now,
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::is_reserved;

    #[test]
    fn the_brokers_name_is_reserved_in_every_look_alike_and_only_in_those() {
        for name in [
            "system", "System", "SYSTEM", "sys_tem", "Sys-Tem", "5ystem", "syst3m", "systern",
        ] {
            assert!(is_reserved(name), "{name}");
        }
        for name in ["systems", "system2", "sysadmin", "alice", "stem"] {
            assert!(!is_reserved(name), "{name}");
        }
    }
}
