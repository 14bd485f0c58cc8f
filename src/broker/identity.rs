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

use super::auth_guard::{AuthGuard, Failure};
use super::listening::Listening;
use super::online::Activity;
use super::session::{new_token, TokenHash};
use super::{done, refuse, Broker, BrokerError, ChallengeRefusal, JobEnd, Peer};
use crate::domain::{MessageKind, Timestamp, SYSTEM_SENDER};
use crate::protocol::auth::{constant_time_eq, expected_auth_token};
use crate::protocol::schema::{InstanceEntry, ListReply, LogoutReply, RegisterReply, RenameReply};
use crate::protocol::{ChallengeAnswer, EntryBudget, InstanceName, ListOptions};
use crate::store::queries::{
    AuthFailure, IdentityId, NewMessage, PeerActivity, Replacement, SessionId,
};
use crate::store::{Durability, StoreError, Tx};

/// The most instances one `list` page holds, whatever `limit` asks for.
const LIST_MAX_INSTANCES: u32 = 1000;
/// A `list` reply without its entries: status, `more`, and the longest `next_after`.
const LIST_REPLY_FIXED_BYTES: usize = 100;

/// How many replaced sessions of one name are kept to tell their holders; older ones are
/// forgotten (their holder then sees a plain invalid session).
const REPLACED_KEPT_PER_NAME: u32 = 8;

/// Whether `name` is the broker's own or could be read as it: any letter case, with
/// separators (`sys_tem`), digits that pass for letters (`5ystem`, `syst3m`) or `rn` for `m`
/// (`systern`). A reader must be able to trust a notice from `system`.
pub(super) fn is_reserved(name: &str) -> bool {
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
        own_token_hash: Option<TokenHash>,
    },
}

impl Claim {
    /// The claim a `register` request makes: `takeover` as sent, and its `session_token`.
    pub fn from_request(takeover: Option<bool>, session_token: Option<TokenHash>) -> Claim {
        match takeover {
            None => Claim::Legacy,
            Some(takeover) => Claim::Asked {
                takeover,
                own_token_hash: session_token,
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
    /// The refusal to replace `name`'s session if it is live: not revoked, not expired, and
    /// used within the window or waiting for mail now. `own_token_hash` matching it is its
    /// holder.
    fn in_use_refusal(
        &self,
        tx: &Tx<'_>,
        name: &InstanceName,
        own_token_hash: Option<&TokenHash>,
        now: Timestamp,
    ) -> Result<Option<BrokerError>, StoreError> {
        let Some(holder) = tx.name_holder(name)? else {
            return Ok(None);
        };
        let is_holder = own_token_hash.is_some_and(|own| {
            constant_time_eq(
                own.as_str().as_bytes(),
                holder.token_sha256.as_str().as_bytes(),
            )
        });
        let last_used = holder.last_used_at;
        let expired = last_used < now.minus(self.idle_expiry);
        if is_holder || expired {
            return Ok(None);
        }
        let last_active = if self.listening.is_waiting(holder.session_id) {
            "now: it is waiting for mail".to_owned()
        } else if last_used >= now.minus(self.window) {
            format!("{} s ago", (now.at() - last_used.at()).num_seconds().max(0))
        } else {
            return Ok(None);
        };
        Ok(Some(BrokerError::NameInUse {
            name: name.to_string(),
            last_active,
        }))
    }
}

/// What a replaced session's holder is told: when, by whom, and how to take the name back.
pub(super) fn replaced_hint(name: &str, replacement: &Replacement) -> String {
    let at = replacement.at.at().format("%Y-%m-%d %H:%M:%S UTC");
    format!(
        "this session was replaced at {at} by a new registration of {name} (from {}); register again with takeover to take the name back (CLI: `claude-ipc register {name} --takeover`; MCP: register with takeover: true), only if the other holder is gone or should give it up",
        replacement.by
    )
}

/// The instance a valid session speaks for.
#[derive(Debug, Clone)]
pub struct Caller {
    pub session_id: SessionId,
    pub name: InstanceName,
    /// Who the caller is across its renames: the scope of its nonces.
    pub identity: IdentityId,
    /// When the session was last refreshed, as stored.
    pub last_used_at: Timestamp,
}

/// Everything needed to check a session on the writer thread.
pub(super) struct SessionCheck {
    token_hash: Option<TokenHash>,
    /// A new request is counted by the rate limits and refreshes the session; more of a
    /// request already counted (a long-poll reading again after a wake-up) or a peek
    /// (`count`, which is polled) is not.
    counted: bool,
    peer: PeerRecord,
    idle_expiry: std::time::Duration,
    rate_limit: u32,
    /// Requests per window for all of the peer's names together; 0 is off.
    peer_rate_limit: u32,
    /// Where a counted request is recorded as the session's last use, for presence.
    activity: Arc<Activity>,
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
        tx: &Tx<'_>,
        now: Timestamp,
        name: Option<&InstanceName>,
        reason: &str,
    ) -> Result<(), StoreError> {
        // A peer past its failure limit is still refused as usual, but its failures cost no
        // row and no log line: only the summary counts them. Its valid tokens keep working,
        // because a session token (256 random bits) cannot be guessed, so throttling them
        // would only let a flood of bad tokens lock out the same user's real clients.
        if self.guard.throttled(&self.key).is_some() {
            return Ok(());
        }
        self.guard
            .failed(&self.failure(name.map(InstanceName::as_str), reason));
        self.record(tx, now, name, reason)
    }

    /// Records a failure already counted by the guard in its aggregate row.
    fn record(
        &self,
        tx: &Tx<'_>,
        now: Timestamp,
        name: Option<&InstanceName>,
        reason: &str,
    ) -> Result<(), StoreError> {
        let failure = AuthFailure {
            at: now,
            name,
            peer: &self.label,
            peer_key: &self.key,
            reason,
        };
        tx.record_auth_failure(&failure, self.max_rows)
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
    /// The same check for work that is not a new request.
    pub(super) fn uncounted(self) -> SessionCheck {
        SessionCheck {
            counted: false,
            ..self
        }
    }

    /// The caller the token proves, counted and refreshed if this is a new request.
    pub(super) fn caller(&self, tx: &Tx<'_>, now: Timestamp) -> Result<JobEnd<Caller>, StoreError> {
        if self.counted {
            self.authenticate(tx, now)
        } else {
            self.verify(tx, now)
        }
    }

    /// Finds the live session for the token, enforces the rate limit, and refreshes the
    /// session's idle timer. Failures are recorded (they commit with the job).
    fn authenticate(&self, tx: &Tx<'_>, now: Timestamp) -> Result<JobEnd<Caller>, StoreError> {
        let caller = match self.verify(tx, now)? {
            JobEnd::Done(caller) => caller,
            refused => return Ok(refused),
        };
        if let Some(refusal) = self.rate_limit_refusal(tx, &caller.name, now)? {
            return refuse(refusal);
        }
        self.activity.used(caller.session_id, now);
        let granularity = TOUCH_GRANULARITY.min(self.idle_expiry / 100);
        let last_used = caller.last_used_at;
        // A last use stamped in the future (written before the broker's time went back) is
        // rewritten too, so the session expires an idle window after its real last use.
        if last_used <= now.minus(granularity) || last_used > now {
            tx.touch_session(caller.session_id, &caller.name, now)?;
        }
        done(caller)
    }

    /// Finds the live session for the token without counting or refreshing it. A failure is
    /// recorded as an authentication failure.
    fn verify(&self, tx: &Tx<'_>, now: Timestamp) -> Result<JobEnd<Caller>, StoreError> {
        let Some(hash) = &self.token_hash else {
            return self.refuse(tx, now, None, "missing session token");
        };
        let Some(session) = tx.find_session(hash)? else {
            return self.refuse(tx, now, None, "unknown session token");
        };
        if session.revoked {
            let refused = self.refuse(
                tx,
                now,
                Some(&session.instance_name),
                "revoked session token",
            )?;
            // Recorded like any revoked token; the holder is told what replaced it.
            return Ok(match (refused, session.replaced) {
                (JobEnd::Refused(BrokerError::InvalidSession), Some(replacement)) => {
                    JobEnd::Refused(BrokerError::SessionReplaced {
                        name: session.instance_name.to_string(),
                        replacement,
                    })
                }
                (refused, _) => refused,
            });
        }
        if session.last_used_at < now.minus(self.idle_expiry) {
            return self.refuse(
                tx,
                now,
                Some(&session.instance_name),
                "expired session token",
            );
        }
        done(Caller {
            session_id: session.id,
            name: session.instance_name,
            identity: session.identity,
            last_used_at: session.last_used_at,
        })
    }

    fn refuse(
        &self,
        tx: &Tx<'_>,
        now: Timestamp,
        name: Option<&InstanceName>,
        reason: &str,
    ) -> Result<JobEnd<Caller>, StoreError> {
        self.peer.refused(tx, now, name, reason)?;
        refuse(BrokerError::InvalidSession)
    }

    /// The refusal if the request would pass the caller's own limit or its peer's (summed
    /// over every name the peer uses); counted against both only when neither refuses.
    fn rate_limit_refusal(
        &self,
        tx: &Tx<'_>,
        name: &InstanceName,
        now: Timestamp,
    ) -> Result<Option<BrokerError>, StoreError> {
        let window_start = now.minus(RATE_WINDOW);
        if self.rate_limit > 0 {
            let (count, oldest) = tx.requests_since(name, window_start, now)?;
            if count >= self.rate_limit {
                return Ok(Some(BrokerError::RateLimited {
                    name: name.to_string(),
                    limit: self.rate_limit,
                    retry_seconds: retry_seconds(oldest, now),
                }));
            }
        }
        let peer = &self.peer.key;
        if self.peer_rate_limit > 0 {
            let (count, oldest) =
                tx.peer_activity_since(PeerActivity::Request, peer, window_start)?;
            if count >= self.peer_rate_limit {
                return Ok(Some(BrokerError::PeerRateLimited {
                    peer: peer.clone(),
                    limit: self.peer_rate_limit,
                    retry_seconds: retry_seconds(oldest, now),
                }));
            }
        }
        if self.rate_limit > 0 {
            tx.log_request(name, now, window_start)?;
        }
        if self.peer_rate_limit > 0 {
            tx.log_peer_activity(PeerActivity::Request, peer, now, window_start)?;
        }
        Ok(None)
    }
}

/// Refuses `name` if another instance (other than `except`) has the same name in another
/// letter case: a look-alike of a peer is how a reader is fooled.
fn case_variant_refusal(
    tx: &Tx<'_>,
    name: &InstanceName,
    except: &InstanceName,
) -> Result<Option<BrokerError>, StoreError> {
    Ok(tx
        .case_variant(name, except)?
        .map(|existing| BrokerError::NameTooSimilar {
            name: name.to_string(),
            existing: existing.to_string(),
        }))
}

/// Seconds until the oldest counted event leaves the sliding window (at least 1).
fn retry_seconds(oldest: Option<Timestamp>, now: Timestamp) -> i64 {
    let frees_at = oldest.map_or(now, |oldest| oldest.plus(RATE_WINDOW));
    (frees_at.at() - now.at()).num_seconds().max(1)
}

/// The refusal of a registration that would create a new name past the peer's or everyone's
/// limit for the window (`limits`: per peer, for everyone; 0 is off); counted otherwise.
/// Only new names are counted: registering again only replaces a session.
fn register_limit_refusal(
    tx: &Tx<'_>,
    limits: (u32, u32),
    peer: &str,
    now: Timestamp,
) -> Result<Option<BrokerError>, StoreError> {
    let (per_peer, everyone) = limits;
    let window_start = now.minus(RATE_WINDOW);
    if per_peer > 0 {
        let (count, oldest) = tx.peer_activity_since(PeerActivity::Register, peer, window_start)?;
        if count >= per_peer {
            return Ok(Some(BrokerError::PeerRegisterLimited {
                peer: peer.to_owned(),
                limit: per_peer,
                retry_seconds: retry_seconds(oldest, now),
            }));
        }
    }
    if everyone > 0 {
        let (count, oldest) = tx.all_activity_since(PeerActivity::Register, window_start)?;
        if count >= everyone {
            return Ok(Some(BrokerError::RegisterLimited {
                limit: everyone,
                retry_seconds: retry_seconds(oldest, now),
            }));
        }
    }
    if per_peer > 0 || everyone > 0 {
        tx.log_peer_activity(PeerActivity::Register, peer, now, window_start)?;
    }
    Ok(None)
}

impl Broker {
    pub(super) fn session_check(&self, token: Option<TokenHash>, peer: &Peer) -> SessionCheck {
        SessionCheck {
            token_hash: token,
            counted: true,
            peer: self.peer_record(peer),
            idle_expiry: self.limits.session_idle_expiry,
            rate_limit: self.limits.rate_limit,
            peer_rate_limit: self.limits.effective_peer_rate_limit(),
            activity: self.activity.clone(),
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
        if is_reserved(name.as_str()) {
            return Err(BrokerError::ReservedName(name.to_string()));
        }
        if self.is_human_name(name.as_str()) {
            return Err(BrokerError::ReservedForHuman(name.to_string()));
        }
        let refusal = self.judge_credentials(name.as_str(), auth_token, answer.as_ref(), peer)?;
        let record = self.peer_record(peer);
        if self.shared_secret.is_some() {
            let reason = refusal.as_ref().map_or(WRONG_SECRET, |r| r.reason);
            let failure = record.failure(Some(name.as_str()), reason);
            if let Err(retry) = self.auth_guard.check_secret(&failure, refusal.is_none()) {
                return Err(self.auth_throttled(peer, retry));
            }
        }
        let token = new_token().map_err(BrokerError::Entropy)?;
        let hash = TokenHash::of(&token);
        let register_limits = (
            self.limits.effective_peer_register_limit(),
            self.limits.effective_register_limit(),
        );
        let live = self.live_rule();
        let (name, queued) = self
            .job(Durability::Flushed, move |tx, now| {
                if let Some(refusal) = refusal {
                    record.record(tx, now, Some(&name), refusal.reason)?;
                    return refuse(refusal.error);
                }
                if !tx.instance_exists(&name)? {
                    if let Some(refusal) = case_variant_refusal(tx, &name, &name)? {
                        return refuse(refusal);
                    }
                    if let Some(refusal) =
                        register_limit_refusal(tx, register_limits, &record.key, now)?
                    {
                        return refuse(refusal);
                    }
                }
                if let Claim::Asked {
                    takeover: false,
                    own_token_hash,
                } = &claim
                {
                    if let Some(refusal) =
                        live.in_use_refusal(tx, &name, own_token_hash.as_ref(), now)?
                    {
                        return refuse(refusal);
                    }
                }
                tx.replace_sessions(&name, now, &record.key, REPLACED_KEPT_PER_NAME)?;
                tx.upsert_instance(&name, now)?;
                tx.delete_forward(&name)?;
                tx.insert_session(&name, &hash, now)?;
                let queued = tx.pending_count(&name)?;
                done((name, queued))
            })
            .await?;
        // A replaced session's long-poll wakes to learn it was replaced.
        self.doorbells.ring(name.as_str());
        let message = if queued > 0 {
            format!("Registered {name} with {queued} queued messages")
        } else {
            format!("Registered {name}")
        };
        Ok(RegisterReply {
            session_token: token,
            message,
            instance_id: name.to_string(),
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
        token: Option<TokenHash>,
        peer: &Peer,
    ) -> Result<LogoutReply, BrokerError> {
        let name = self
            .as_caller(token, peer, move |tx, caller, now| {
                tx.end_session(caller.session_id, now)?;
                done(caller.name.clone())
            })
            .await?;
        Ok(LogoutReply {
            message: format!("Logged out {name}"),
            instance_id: name.to_string(),
        })
    }

    pub(super) async fn rename(
        &self,
        token: Option<TokenHash>,
        peer: &Peer,
        new_id: InstanceName,
    ) -> Result<RenameReply, BrokerError> {
        let new = new_id;
        let cooldown = self.limits.rename_cooldown;
        let forward_for = self.limits.forward_duration;
        let queue_cap = self.limits.queue_cap;
        let human = self.human_name().cloned();
        let renamed = self
            .as_caller(token, peer, move |tx, caller, now| {
                let old = caller.name.clone();
                if new == old {
                    return refuse(BrokerError::SameName(new.to_string()));
                }
                if is_reserved(new.as_str()) {
                    return refuse(BrokerError::ReservedName(new.to_string()));
                }
                if human
                    .as_ref()
                    .is_some_and(|h| h.as_str().eq_ignore_ascii_case(new.as_str()))
                {
                    return refuse(BrokerError::ReservedForHuman(new.to_string()));
                }
                if tx.instance_exists(&new)? {
                    return refuse(BrokerError::NameTaken(new.to_string()));
                }
                // Renaming `alice` to `Alice` fools nobody; `bob` to `Alice` would.
                if let Some(refusal) = case_variant_refusal(tx, &new, &old)? {
                    return refuse(refusal);
                }
                // A rename stamped in the future counts as just now: the wait is never longer
                // than the cooldown.
                if let Some(allowed_at) = tx
                    .last_renamed_at(&old)?
                    .map(|at| at.min(now).plus(cooldown))
                {
                    if allowed_at > now {
                        let seconds = (allowed_at.at() - now.at()).num_seconds();
                        return refuse(BrokerError::RenameCooldown {
                            minutes: (seconds + 59) / 60,
                        });
                    }
                }
                tx.rename_instance(&old, &new, now, now.plus(forward_for))?;
                notify_rename(tx, &old, &new, now, queue_cap)?;
                done(RenameReply {
                    message: format!("Renamed {old} to {new}"),
                    old_id: old.to_string(),
                    new_id: new.to_string(),
                })
            })
            .await?;
        // Notices went to everyone, and the caller's queued mail now waits under the new name.
        self.doorbells.ring_all();
        Ok(renamed)
    }

    /// `list`: registered instances in name order, when each was last seen and whether it
    /// is online and pushed to now (see [`super::online`]), one page at a time. A page holds what fits the reply budget (and `limit`); with more left, the reply
    /// says `more` and names its last entry in `next_after`, which the next request passes as
    /// `after`. Name order is stable, so paging returns every instance that stays registered
    /// exactly once.
    pub(super) async fn list(
        &self,
        token: Option<TokenHash>,
        peer: &Peer,
        options: ListOptions,
    ) -> Result<ListReply, BrokerError> {
        let limit = options
            .limit
            .unwrap_or(LIST_MAX_INSTANCES)
            .min(LIST_MAX_INSTANCES);
        let after = options.after;
        let online = self.online_rule();
        self.as_caller(token, peer, move |tx, _caller, now| {
            let mut budget = EntryBudget::new(LIST_REPLY_FIXED_BYTES);
            let mut instances = Vec::new();
            let more = tx.list_instances_after(after.as_ref(), limit, |listed| {
                let reach = online.reach(listed.session, now);
                let entry = InstanceEntry {
                    id: listed.name.to_string(),
                    last_seen: listed.last_seen.to_text(),
                    online: reach.online,
                    push: reach.push,
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
            done(ListReply {
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
    tx: &Tx<'_>,
    old: &InstanceName,
    new: &InstanceName,
    now: Timestamp,
    queue_cap: u32,
) -> Result<(), StoreError> {
    let content = format!("{old} renamed to {new}");
    for (recipient, _) in tx.list_instances()? {
        if recipient == *new {
            continue;
        }
        if queue_cap > 0 && tx.pending_count(&recipient)? >= queue_cap {
            continue;
        }
        tx.insert_message(&NewMessage {
            sender: SYSTEM_SENDER,
            sent_by: None,
            addressed_to: &recipient,
            recipient: &recipient,
            kind: MessageKind::System,
            content: &content,
            data: None,
            large_file: None,
            large_file_bytes: None,
            nonce: None,
            sender_timestamp: None,
            received_at: now,
            thread_id: None,
            reply_to: None,
            subject: None,
        })?;
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
