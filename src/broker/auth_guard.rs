//! Failed authentication costs the broker a counter, not a check, a row and a log line each.
//!
//! After `auth_failure_limit` failures within a minute from one peer (by [`Peer::key`]), that
//! peer's registrations are refused unchecked until its oldest counted failure is a minute old,
//! so guessing the secret slows to that many tries a minute; its further bad session tokens are
//! still refused as usual but write nothing, and its valid tokens keep working. Only a peer's first failure in each minute is logged in full; the
//! rest of that minute's become one summary line.
//!
//! Times are monotonic ([`Instant`]): a jump of the wall clock neither frees nor locks out a
//! peer. The counters live in memory only; a restart forgets them, which only an operator can
//! cause.
//!
//! [`Peer::key`]: super::Peer::key

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The window both the limit and the log summary cover.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Peers tracked at once; past this the one whose log interval started first is forgotten.
const MAX_PEERS: usize = 4096;

/// The per-peer failure counters. A std `Mutex` guards them; it is held only for a few map
/// operations and never across an `.await`.
pub struct AuthGuard {
    limit: u32,
    peers: Mutex<HashMap<String, PeerFailures>>,
}

#[derive(Debug)]
struct PeerFailures {
    /// The latest counted failures, at most `limit` of them, oldest first.
    recent: VecDeque<Instant>,
    /// When this peer's current log interval began (with a full log line).
    interval_start: Instant,
    /// Failures and unchecked refusals since then that were not logged one by one.
    unlogged: u64,
}

/// One failure, as the log line names it.
pub struct Failure<'a> {
    pub peer_key: &'a str,
    pub peer_label: &'a str,
    pub name: Option<&'a str>,
    pub reason: &'a str,
}

impl AuthGuard {
    /// `limit` failures per minute per peer; 0 never refuses unchecked (the log is still
    /// summarised).
    pub fn new(limit: u32) -> Self {
        AuthGuard {
            limit,
            peers: Mutex::new(HashMap::new()),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// If `peer_key` used up its failures, how long until it may try again; the refusal is
    /// counted for the log summary. `None`: check its credentials as usual.
    pub fn throttled(&self, peer_key: &str) -> Option<Duration> {
        let now = Instant::now();
        let mut peers = self.lock();
        let entry = peers.get_mut(peer_key)?;
        let retry = self.retry_after(entry, now)?;
        entry.unlogged += 1;
        Some(retry)
    }

    /// Decides a shared-secret check in one step, so concurrent guesses cannot slip past the
    /// limit between the check and the count: `Err` with the wait if the peer is throttled
    /// (whether or not the secret was right), else whether it was right, counting it if not.
    pub fn check_secret(&self, failure: &Failure<'_>, secret_ok: bool) -> Result<bool, Duration> {
        let now = Instant::now();
        let mut peers = self.lock();
        if let Some(entry) = peers.get_mut(failure.peer_key) {
            if let Some(retry) = self.retry_after(entry, now) {
                entry.unlogged += 1;
                return Err(retry);
            }
        }
        if !secret_ok {
            self.count(&mut peers, failure, now);
        }
        Ok(secret_ok)
    }

    /// Counts a failure that was checked and refused, and logs it if it is the first of its
    /// peer's interval.
    pub fn failed(&self, failure: &Failure<'_>) {
        let now = Instant::now();
        let mut peers = self.lock();
        self.count(&mut peers, failure, now);
    }

    /// Logs the summary of every interval that has ended and forgets peers with nothing left
    /// to count. The sweeper calls it, so a summary appears even if the peer stops.
    pub fn flush(&self) {
        let now = Instant::now();
        let mut peers = self.lock();
        peers.retain(|key, entry| {
            if now.duration_since(entry.interval_start) < WINDOW {
                return true;
            }
            log_summary(key, entry.unlogged);
            entry.unlogged = 0;
            entry
                .recent
                .back()
                .is_some_and(|last| now.duration_since(*last) < WINDOW)
        });
    }

    fn count(
        &self,
        peers: &mut HashMap<String, PeerFailures>,
        failure: &Failure<'_>,
        now: Instant,
    ) {
        if !peers.contains_key(failure.peer_key) && peers.len() >= MAX_PEERS {
            forget_one(peers);
        }
        let mut first_seen = false;
        let entry = peers.entry(failure.peer_key.to_owned()).or_insert_with(|| {
            first_seen = true;
            PeerFailures {
                recent: VecDeque::new(),
                interval_start: now,
                unlogged: 0,
            }
        });
        if self.limit > 0 {
            if entry.recent.len() >= self.limit as usize {
                entry.recent.pop_front();
            }
            entry.recent.push_back(now);
        }
        if first_seen || now.duration_since(entry.interval_start) >= WINDOW {
            log_summary(failure.peer_key, entry.unlogged);
            entry.interval_start = now;
            entry.unlogged = 0;
            tracing::warn!(
                instance = failure.name.unwrap_or("-"),
                peer = failure.peer_label,
                reason = failure.reason,
                "authentication failed"
            );
        } else {
            entry.unlogged += 1;
        }
    }

    /// How long `entry` stays throttled, if its last `limit` failures all fall in the window.
    fn retry_after(&self, entry: &PeerFailures, now: Instant) -> Option<Duration> {
        if self.limit == 0 || entry.recent.len() < self.limit as usize {
            return None;
        }
        let oldest = *entry.recent.front()?;
        let frees_at = oldest + WINDOW;
        (frees_at > now).then(|| frees_at - now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PeerFailures>> {
        self.peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn log_summary(peer_key: &str, unlogged: u64) {
    if unlogged > 0 {
        tracing::warn!(
            "{unlogged} more authentication failures from {peer_key} in the last {} s",
            WINDOW.as_secs()
        );
    }
}

/// Makes room for a new peer by forgetting the one whose log interval began first.
fn forget_one(peers: &mut HashMap<String, PeerFailures>) {
    let oldest = peers
        .iter()
        .min_by_key(|(_, entry)| entry.interval_start)
        .map(|(key, _)| key.clone());
    if let Some(key) = oldest {
        if let Some(entry) = peers.remove(&key) {
            log_summary(&key, entry.unlogged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(peer_key: &str) -> Failure<'_> {
        Failure {
            peer_key,
            peer_label: peer_key,
            name: None,
            reason: "unknown session token",
        }
    }

    #[test]
    fn a_peer_is_throttled_after_its_limit_and_others_are_not() {
        let guard = AuthGuard::new(3);
        for _ in 0..3 {
            assert!(guard.throttled("uid:1").is_none());
            guard.failed(&failure("uid:1"));
        }
        let wait = guard.throttled("uid:1").expect("throttled after 3");
        assert!(wait <= WINDOW && wait > Duration::from_secs(50), "{wait:?}");
        assert!(guard.throttled("uid:2").is_none());
    }

    #[test]
    fn a_throttled_peer_is_refused_even_with_the_right_secret() {
        let guard = AuthGuard::new(2);
        assert_eq!(guard.check_secret(&failure("p"), false), Ok(false));
        assert_eq!(guard.check_secret(&failure("p"), false), Ok(false));
        assert!(guard.check_secret(&failure("p"), true).is_err());
        assert_eq!(guard.check_secret(&failure("q"), true), Ok(true));
    }

    #[test]
    fn a_limit_of_zero_never_throttles() {
        let guard = AuthGuard::new(0);
        for _ in 0..100 {
            guard.failed(&failure("p"));
        }
        assert!(guard.throttled("p").is_none());
    }
}
