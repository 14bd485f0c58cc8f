//! The `challenge` action and the table of challenges waiting for their `register`.
//!
//! A challenge gives the client a fresh server nonce and the broker's proof that it knows the
//! shared secret; the client's `register` then answers it with its own proof (formulas in
//! [`crate::protocol::auth`]). Each challenge is bound to the name it was issued for, serves
//! one register (right or wrong), and lasts [`LIFETIME`] by the broker clock.
//!
//! The table lives in memory only: challenges are short-lived and single-use, and a restart
//! that forgets them only makes a client ask again. It is bounded per peer and overall, the
//! oldest dropped first, so a flood of challenges costs a fixed amount of memory, and one
//! user's flood can crowd out only its own challenges.

use std::collections::VecDeque;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use super::{plus, Broker, BrokerError, Peer};
use crate::protocol::auth::{self, constant_time_eq, ProofUid};
use crate::protocol::schema::ChallengeReply;
use crate::protocol::{ChallengeAnswer, InstanceName};

/// How long a challenge can be answered. A client answers in one round trip; this is long
/// enough for a slow machine and short enough that an unanswered challenge is soon gone.
pub const LIFETIME: std::time::Duration = std::time::Duration::from_secs(30);
/// Challenges one peer (by [`Peer::key`]) may have outstanding; its oldest goes first.
pub const MAX_PER_PEER: usize = 16;
/// Challenges outstanding for all peers together; the oldest goes first.
pub const MAX_OUTSTANDING: usize = 4096;

/// Why a challenge or its answer was refused. Each is a `challenge_failed` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeRefusal {
    #[error("this broker runs in open mode (no shared secret): it has no secret to prove and asks none, so a client holding IPC_SHARED_SECRET must not register here. Start the broker with IPC_SHARED_SECRET set, or unset it in this client to use an open-mode broker deliberately")]
    OpenMode,
    #[error("this challenge is unknown or was already answered: each challenge serves one register, right or wrong. Ask for a new one with the `challenge` action")]
    Unknown,
    #[error("this challenge expired: it was issued {age_seconds} s ago and lasts {} s. Ask for a new one with the `challenge` action", LIFETIME.as_secs())]
    Expired { age_seconds: i64 },
    #[error("this challenge was issued for `{issued_for}`, not `{name}`; ask for one naming the instance you register")]
    OtherName { issued_for: String, name: String },
    #[error("Invalid auth proof: it does not match this broker's shared secret for this challenge, name and user. Set IPC_SHARED_SECRET to the broker's secret and register again; if it is right, something between you and the broker relays your connection")]
    WrongProof,
}

impl ChallengeRefusal {
    /// The reason an authentication failure is recorded under (`auth_failures.reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            ChallengeRefusal::OpenMode => "challenge in open mode",
            ChallengeRefusal::Unknown => "unknown or used challenge",
            ChallengeRefusal::Expired { .. } => "expired challenge",
            ChallengeRefusal::OtherName { .. } => "challenge for another name",
            ChallengeRefusal::WrongProof => "wrong challenge proof",
        }
    }
}

/// One challenge waiting for its register.
#[derive(Debug, Clone)]
struct Issued {
    id: String,
    name: String,
    peer_key: String,
    client_nonce: String,
    server_nonce: String,
    issued_at: DateTime<Utc>,
}

/// The outstanding challenges, oldest first. A std `Mutex` guards them; it is held for a
/// scan of at most [`MAX_OUTSTANDING`] entries and never across an `.await`.
#[derive(Default)]
pub struct Challenges {
    issued: Mutex<VecDeque<Issued>>,
}

impl Challenges {
    /// How many challenges are outstanding (expired ones included until the next is issued).
    pub fn outstanding(&self) -> usize {
        self.lock().len()
    }

    /// Adds `issued`, first dropping expired challenges, then the peer's oldest past its share,
    /// then the oldest of all past the total.
    fn issue(&self, issued: Issued) {
        let now = issued.issued_at;
        let mut table = self.lock();
        table.retain(|old| !expired(old, now));
        let mine = table
            .iter()
            .filter(|old| old.peer_key == issued.peer_key)
            .count();
        if mine >= MAX_PER_PEER {
            if let Some(oldest) = table.iter().position(|old| old.peer_key == issued.peer_key) {
                table.remove(oldest);
            }
        }
        if table.len() >= MAX_OUTSTANDING {
            table.pop_front();
        }
        table.push_back(issued);
    }

    /// Removes the challenge `id` and returns it if it is still live: whatever the answer, it
    /// cannot be answered twice.
    fn take(&self, id: &str, now: DateTime<Utc>) -> Result<Issued, ChallengeRefusal> {
        let mut table = self.lock();
        let position = table
            .iter()
            .position(|issued| constant_time_eq(issued.id.as_bytes(), id.as_bytes()))
            .ok_or(ChallengeRefusal::Unknown)?;
        let issued = table.remove(position).ok_or(ChallengeRefusal::Unknown)?;
        if expired(&issued, now) {
            return Err(ChallengeRefusal::Expired {
                age_seconds: (now - issued.issued_at).num_seconds(),
            });
        }
        Ok(issued)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Issued>> {
        self.issued
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn expired(issued: &Issued, now: DateTime<Utc>) -> bool {
    plus(issued.issued_at, LIFETIME) <= now
}

impl Broker {
    /// `challenge`: a fresh server nonce for registering `name`, and the broker's proof over
    /// it, the client's nonce and the uid the broker sees the client as. Refused in open mode,
    /// where there is no secret to prove.
    pub(super) fn challenge(
        &self,
        name: InstanceName,
        client_nonce: String,
        peer: &Peer,
    ) -> Result<ChallengeReply, BrokerError> {
        let Some(secret) = &self.shared_secret else {
            return Err(ChallengeRefusal::OpenMode.into());
        };
        let server_nonce = auth::fresh_nonce().map_err(BrokerError::Entropy)?;
        let id = super::session::new_token().map_err(BrokerError::Entropy)?;
        let uid = ProofUid(peer.uid);
        let server_proof =
            auth::server_proof(secret, name.as_str(), &client_nonce, &server_nonce, uid);
        self.challenges.issue(Issued {
            id: id.clone(),
            name: name.as_str().to_owned(),
            peer_key: peer.key(),
            client_nonce,
            server_nonce: server_nonce.clone(),
            issued_at: self.now(),
        });
        Ok(ChallengeReply {
            challenge_id: id,
            server_nonce,
            server_proof,
            client_uid: Some(uid.text()),
            expires_in_ms: LIFETIME.as_millis() as u64,
        })
    }

    /// Checks a register's answer to a challenge, which is used up by the check. The proof
    /// must be made for the challenge's name and nonces and for the uid the broker sees on
    /// this register's connection, so a proof relayed from another user's process fails.
    pub(super) fn verify_challenge_answer(
        &self,
        secret: &str,
        name: &str,
        answer: &ChallengeAnswer,
        peer: &Peer,
    ) -> Result<(), ChallengeRefusal> {
        let issued = self.challenges.take(&answer.challenge_id, self.now())?;
        if issued.name != name {
            return Err(ChallengeRefusal::OtherName {
                issued_for: issued.name,
                name: name.to_owned(),
            });
        }
        let expected = auth::client_proof(
            secret,
            name,
            &issued.server_nonce,
            &issued.client_nonce,
            ProofUid(peer.uid),
        );
        if !constant_time_eq(answer.auth_proof.as_bytes(), expected.as_bytes()) {
            return Err(ChallengeRefusal::WrongProof);
        }
        Ok(())
    }

    /// Challenges issued and not yet answered or dropped (for tests and `status`).
    pub fn outstanding_challenges(&self) -> usize {
        self.challenges.outstanding()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn issued(id: &str, peer_key: &str, at: DateTime<Utc>) -> Issued {
        Issued {
            id: id.into(),
            name: "alice".into(),
            peer_key: peer_key.into(),
            client_nonce: "c".into(),
            server_nonce: "s".into(),
            issued_at: at,
        }
    }

    fn noon() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
    }

    #[test]
    fn a_challenge_is_taken_once() {
        let table = Challenges::default();
        table.issue(issued("a", "p", noon()));
        assert!(table.take("a", noon()).is_ok());
        assert_eq!(
            table.take("a", noon()).unwrap_err(),
            ChallengeRefusal::Unknown
        );
    }

    #[test]
    fn an_expired_challenge_is_refused_and_gone() {
        let table = Challenges::default();
        table.issue(issued("a", "p", noon()));
        let later = plus(noon(), LIFETIME);
        assert!(matches!(
            table.take("a", later),
            Err(ChallengeRefusal::Expired { age_seconds: 30 })
        ));
        assert_eq!(table.outstanding(), 0);
    }

    #[test]
    fn a_peer_keeps_only_its_newest_challenges_and_others_keep_theirs() {
        let table = Challenges::default();
        table.issue(issued("other", "q", noon()));
        for i in 0..MAX_PER_PEER * 3 {
            table.issue(issued(&format!("p{i}"), "p", noon()));
        }
        assert_eq!(table.outstanding(), MAX_PER_PEER + 1);
        assert!(table.take("p0", noon()).is_err());
        assert!(table
            .take(&format!("p{}", MAX_PER_PEER * 3 - 1), noon())
            .is_ok());
        assert!(table.take("other", noon()).is_ok());
    }

    #[test]
    fn the_table_never_holds_more_than_its_total() {
        let table = Challenges::default();
        for i in 0..MAX_OUTSTANDING + 100 {
            table.issue(issued(&format!("c{i}"), &format!("peer{i}"), noon()));
        }
        assert_eq!(table.outstanding(), MAX_OUTSTANDING);
        assert!(table.take("c0", noon()).is_err());
    }
}
