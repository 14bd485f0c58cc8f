//! `watch`: announces the caller's undelivered mail to a named watcher, once per message,
//! without consuming any of it. A waking hook (the watcher is Claude Code's `session_id`) and
//! a channel-mode MCP server (a random id per MCP session, with `push`) are told what arrived
//! while the mail stays waiting for the reader's `check` or `ack`, so telling is never taken
//! for delivering.
//!
//! It long-polls like `check`: the same doorbell wakes it on commit, a stopping broker answers
//! it empty, and a reader who closed the connection ends it before anything is read. A newer
//! watch of the same session and watcher answers an older one at once (`replaced`), so a
//! hook started for the next turn takes over from the last one instead of both waking.
//!
//! A reply that provably never reached the watcher (the connection reset before it was
//! written or read, or writing it failed) un-records its announcement and push through the
//! same receipt the connection settles `check` replies with, so a push that never arrived is
//! not recorded as pushed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::clock::BrokerClock;
use tokio::time::Instant;

use super::mail::{DeliveryReceipt, ReplyBudget};
use super::reader::Presence;
use super::session::TokenHash;
use super::{done, Broker, BrokerError, Outcome, Peer};
use crate::domain::{MessageId, Timestamp};
use crate::protocol::schema::WatchReply;
use crate::protocol::{InstanceName, WatchOptions, Watcher};
use crate::store::queries::SessionId;
use crate::store::{Durability, Tx};

/// What one read for a watch found and announced.
struct Announced {
    caller: InstanceName,
    session_id: SessionId,
    reply: WatchReply,
    ids: Vec<MessageId>,
    /// When the announcement was recorded, as stored.
    at: Timestamp,
}

impl Announced {
    /// The reply, with the receipt that un-records the announcement if the reply never
    /// reaches the watcher (see [`DeliveryReceipt::announcement`]).
    fn into_outcome(self, watcher: &Watcher) -> Outcome {
        let receipt = (!self.ids.is_empty()).then(|| {
            DeliveryReceipt::announcement(
                self.caller,
                watcher.as_str().to_owned(),
                self.ids,
                self.at,
            )
        });
        Outcome {
            receipt,
            ..answer(self.reply)
        }
    }
}

impl Broker {
    /// `watch`: the caller's undelivered mail (waiting, or leased but not acked) that
    /// `options.watcher` was never told about, oldest first, as much as fits the reply
    /// budget; recorded as announced to it in the same job, and as pushed for `push`.
    ///
    /// With `wait` and nothing new, sleeps until a commit rings the caller's doorbell, the
    /// deadline passes, the broker stops, a newer watch of this session and watcher takes
    /// over, or the reader leaves; in every case but the first it answers empty, having
    /// recorded nothing.
    pub(super) async fn watch(
        &self,
        token: Option<TokenHash>,
        peer: &Peer,
        options: WatchOptions,
        mut reader: Presence,
    ) -> Result<Outcome, BrokerError> {
        let deadline = options.wait.map(|wait| Instant::now() + wait);
        let mut closing = self.doorbells.closing();
        let mut bell: Option<Arc<Notify>> = None;
        // Held while this watch waits: its session is in use (see `Listening`).
        let mut _listener = None;
        let mut slot: Option<WatchSlot> = None;
        let mut first_read = true;
        loop {
            // Listen before reading, so a commit between the read and the wait is not missed.
            let listening = bell.clone();
            let mut rung = listening.as_deref().map(|bell| Box::pin(bell.notified()));
            if let Some(rung) = rung.as_mut() {
                rung.as_mut().enable();
            }
            // Once it has read, a watch that was replaced, or whose broker is stopping, ends
            // without reading again; one whose reader left never reads.
            let ended = slot
                .as_ref()
                .is_some_and(|slot| slot.is_replaced() || self.doorbells.is_closing());
            if ended || reader.is_gone() {
                return Ok(answer(WatchReply::nothing(slot.as_ref())));
            }
            let announced = self
                .announce_batch(token.clone(), peer, &options, first_read)
                .await?;
            first_read = false;
            // Claimed once the session is known: from now on an older watch of this session
            // and watcher is answered, and a newer one answers this.
            let slot = slot.get_or_insert_with(|| {
                self.watchers
                    .claim(announced.session_id, options.watcher.as_str(), options.push)
            });
            let out_of_time = deadline.is_none_or(|deadline| Instant::now() >= deadline);
            let stop = out_of_time || self.doorbells.is_closing() || reader.is_gone();
            if !announced.reply.messages.is_empty() || stop {
                return Ok(announced.into_outcome(&options.watcher));
            }
            let Some(rung) = rung else {
                bell = Some(self.doorbells.bell(announced.caller.as_str()));
                _listener = Some(self.listening.start(announced.session_id));
                continue;
            };
            let wake_at = deadline.unwrap_or_else(Instant::now);
            tokio::select! {
                _ = rung => {}
                _ = tokio::time::sleep_until(wake_at) => {}
                _ = closing.wait_for(|closing| *closing) => {}
                _ = slot.replaced() => {}
                _ = reader.gone() => {}
            }
        }
    }

    /// One read of the caller's unannounced mail, recorded as announced in the same job.
    /// Only the first read of a request counts against the rate limit. Flushed: an
    /// announcement a crash forgot would be announced, and so wake a session, again.
    async fn announce_batch(
        &self,
        token: Option<TokenHash>,
        peer: &Peer,
        options: &WatchOptions,
        first_read: bool,
    ) -> Result<Announced, BrokerError> {
        let watcher = options.watcher.as_str().to_owned();
        let (limit, push) = (options.limit, options.push);
        let read = move |tx: &Tx<'_>, caller: &super::Caller, now: Timestamp| {
            let mut budget = ReplyBudget::new();
            let more =
                tx.unannounced_for(&caller.name, &watcher, limit, |stored| budget.take(stored))?;
            tx.announce(&watcher, &budget.ids, now, push)?;
            done(Announced {
                caller: caller.name.clone(),
                session_id: caller.session_id,
                reply: WatchReply {
                    messages: budget.messages,
                    more,
                    replaced: false,
                },
                ids: budget.ids,
                at: now,
            })
        };
        let check = self.session_check(token, peer);
        let check = if first_read { check } else { check.uncounted() };
        self.job(Durability::Flushed, move |tx, now| {
            check.caller(tx, now)?.then(|caller| read(tx, &caller, now))
        })
        .await
    }
}

fn answer(reply: WatchReply) -> Outcome {
    Outcome {
        authenticated: true,
        ..Outcome::reply(reply)
    }
}

impl WatchReply {
    /// The empty answer of a watch that ends without reading: `replaced` if a newer watch
    /// took its place.
    fn nothing(slot: Option<&WatchSlot>) -> WatchReply {
        WatchReply {
            messages: Vec::new(),
            more: false,
            replaced: slot.is_some_and(WatchSlot::is_replaced),
        }
    }
}

/// Which session and watcher a watch is for: a newer watch with the same key replaces the
/// older.
type SlotKey = (SessionId, String);

/// The watches open now, one per session and watcher, and when each session's last push
/// watch ended (for [`super::online`]).
pub struct Watchers {
    /// A std `Mutex`: it guards only the map and is never held across an `.await`; the
    /// writer thread reads it for `list` and `send`.
    open: Mutex<HashMap<SlotKey, Arc<SlotState>>>,
    /// When each session's last push watch ended, by the broker clock. A std `Mutex` as
    /// above; entries go once a session has a push watch open again or past the grace.
    push_ended: Mutex<HashMap<SessionId, Timestamp>>,
    next_generation: AtomicU64,
    clock: BrokerClock,
}

impl std::fmt::Debug for Watchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchers")
            .field("open", &self.open)
            .finish()
    }
}

/// One open watch's shared state: the registry sets `replaced` when a newer watch claims its
/// key.
#[derive(Debug)]
struct SlotState {
    generation: u64,
    push: bool,
    replaced: AtomicBool,
    notify: Notify,
}

/// An open watch's claim on its key; dropping it (the watch ended) gives the key up, unless
/// a newer watch holds it already.
#[derive(Debug)]
pub struct WatchSlot {
    watchers: Arc<Watchers>,
    key: SlotKey,
    state: Arc<SlotState>,
}

impl Watchers {
    pub fn new(clock: BrokerClock) -> Self {
        Watchers {
            open: Mutex::default(),
            push_ended: Mutex::default(),
            next_generation: AtomicU64::new(0),
            clock,
        }
    }

    /// Takes the key for a new watch, answering the older watch that held it.
    pub fn claim(self: &Arc<Self>, session_id: SessionId, watcher: &str, push: bool) -> WatchSlot {
        let key = (session_id, watcher.to_owned());
        let state = Arc::new(SlotState {
            generation: self.next_generation.fetch_add(1, Ordering::Relaxed),
            push,
            replaced: AtomicBool::new(false),
            notify: Notify::new(),
        });
        if let Some(older) = self.open().insert(key.clone(), state.clone()) {
            older.replaced.store(true, Ordering::SeqCst);
            // A stored permit: an older watch that is reading right now sees it when it
            // next waits.
            older.notify.notify_one();
        }
        WatchSlot {
            watchers: self.clone(),
            key,
            state,
        }
    }

    /// Whether `session_id` has a watch with `push` open now, or ended one after
    /// `ended_after`.
    pub fn is_pushing(&self, session_id: SessionId, ended_after: Timestamp) -> bool {
        let open = self
            .open()
            .iter()
            .any(|((session, _), state)| *session == session_id && state.push);
        open || self
            .push_ended()
            .get(&session_id)
            .is_some_and(|ended| *ended > ended_after)
    }

    /// Records that a push watch of `session_id` ended now.
    fn push_ends(&self, session_id: SessionId) {
        let now = Timestamp::new(self.clock.now());
        let mut ended = self.push_ended();
        let stale = now.minus(super::online::PUSH_GRACE);
        ended.retain(|_, at| *at > stale);
        ended.insert(session_id, now);
    }

    fn push_ended(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Timestamp>> {
        self.push_ended.lock().expect("push registry poisoned")
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<SlotKey, Arc<SlotState>>> {
        self.open.lock().expect("watch registry poisoned")
    }
}

impl WatchSlot {
    pub fn is_replaced(&self) -> bool {
        self.state.replaced.load(Ordering::SeqCst)
    }

    /// Resolves once a newer watch has taken this one's key.
    async fn replaced(&self) {
        while !self.is_replaced() {
            self.state.notify.notified().await;
        }
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        {
            let mut open = self.watchers.open();
            if open
                .get(&self.key)
                .is_some_and(|state| state.generation == self.state.generation)
            {
                open.remove(&self.key);
            }
        }
        if self.state.push {
            self.watchers.push_ends(self.key.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watchers() -> Arc<Watchers> {
        let clock = crate::clock::Clock::manual(chrono::Utc::now());
        Arc::new(Watchers::new(BrokerClock::resume(clock, None, None).0))
    }

    #[test]
    fn a_newer_claim_replaces_the_older_and_outlives_it() {
        let watchers = watchers();
        let older = watchers.claim(SessionId(1), "w", true);
        let other = watchers.claim(SessionId(1), "other", false);
        let newer = watchers.claim(SessionId(1), "w", false);
        assert!(older.is_replaced());
        assert!(!other.is_replaced() && !newer.is_replaced());
        let long_ago = Timestamp::new(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        assert!(!watchers.is_pushing(SessionId(1), Timestamp::new(chrono::Utc::now())));
        // The replaced push watch is no longer open; once it ends, it counts for a while.
        drop(older);
        assert!(watchers.is_pushing(SessionId(1), long_ago));
        assert!(watchers
            .open()
            .contains_key(&(SessionId(1), "w".to_owned())));
        drop(newer);
        drop(other);
        assert!(watchers.open().is_empty());
    }

    #[tokio::test]
    async fn a_replaced_watch_wakes_even_if_it_was_not_waiting_yet() {
        let watchers = watchers();
        let older = watchers.claim(SessionId(1), "w", false);
        let _newer = watchers.claim(SessionId(1), "w", false);
        let woke = tokio::time::timeout(std::time::Duration::from_secs(5), older.replaced()).await;
        assert!(woke.is_ok());
    }
}
