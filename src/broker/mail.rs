//! Mail: send, broadcast, check, and the receipt that holds mail while its reply is on the
//! way, so it is marked delivered only once the reader took the reply.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use serde_json::{json, Map, Value};
use tokio::sync::{Notify, OwnedMutexGuard};

use super::reader::Presence;
use super::unsettled::InFlight;
use tokio::time::Instant;

use super::identity::Caller;
use super::{large_message, minus, plus, text, Broker, BrokerError, Outcome};
use crate::protocol::request::SenderStamp;
use crate::protocol::{AckMode, CheckOptions};
use crate::protocol::{InstanceName, MessageBody, Reply, LEGACY_READ_BYTES};
use crate::store::queries::{self, MessageId, NewMessage, Released, Settled, StoredMessage};

/// A check reply is kept under half the legacy single read. Loopback TCP may send the first
/// part of a larger write ahead of the rest, and a client that reads once would then get half
/// a reply; replies up to about 32 KiB were measured to arrive whole.
const CHECK_REPLY_BUDGET: usize = LEGACY_READ_BYTES / 2 - 1024;
/// The most distinct senders a `count` reply names.
const COUNT_MAX_SENDERS: u32 = 10;
/// The most messages one check returns, whatever `limit` asks for.
const CHECK_MAX_MESSAGES: u32 = 500;
/// A legacy check's hold outlasts writing the reply and waiting for the client to take it
/// (a write timeout each) by this much, so it is settled before it can run out.
const HOLD_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a check that finds nothing waits for the caller's legacy replies still on their
/// way to settle. A client that gave up is known within milliseconds; one that stays silent
/// takes up to the write timeout, and the check does not wait for that.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Mail a reply carries, held in the database so that no other reader is handed it while the
/// reply is on its way.
///
/// A legacy (auto-ack) receipt is settled by the connection: [`Broker::confirm_delivery`] once
/// the client took the reply, [`Broker::return_to_queue`] if it did not. A manual-ack receipt
/// is the lease itself: the client's `ack` settles it, and the connection returns it only if
/// the client provably never read it. Dropped unsettled, the hold simply runs out.
#[derive(Debug)]
pub struct DeliveryReceipt {
    recipient: String,
    ids: Vec<MessageId>,
    /// The hold's (or lease's) end, as stored: settling touches only mail still held by it.
    held_until: String,
    settled_by: SettledBy,
    /// Set for a legacy receipt: counts it as on its way until it is settled or dropped.
    in_flight: Option<InFlight>,
}

/// Who settles a receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SettledBy {
    /// The connection, on evidence that the client took the reply (legacy auto ack).
    Receipt,
    /// The client's `ack` (manual ack).
    Ack,
}

impl DeliveryReceipt {
    /// Whether the connection marks this mail delivered itself (legacy auto ack), rather than
    /// leaving it to the client's `ack`.
    pub fn settles_on_receipt(&self) -> bool {
        self.settled_by == SettledBy::Receipt
    }
}

/// What one read of a mailbox found.
struct Batch {
    caller: String,
    messages: Vec<Value>,
    ids: Vec<MessageId>,
    more: bool,
    /// The lease (manual ack) or hold (auto ack) on `ids` runs until then.
    held_until: Option<String>,
    /// With nothing to hand out: when the caller's first leased message comes back.
    next_lease_expiry: Option<String>,
}

impl Batch {
    fn into_outcome(self, ack: AckMode, in_flight: Option<InFlight>) -> Outcome {
        let mut reply = Reply::ok()
            .with("messages", self.messages)
            .with("more", self.more);
        let settled_by = match ack {
            AckMode::Manual { .. } => {
                reply = reply.with("ack", "manual");
                if let Some(until) = self.held_until.as_ref().filter(|_| !self.ids.is_empty()) {
                    reply = reply.with("lease_until", until.clone());
                }
                SettledBy::Ack
            }
            AckMode::Auto => SettledBy::Receipt,
        };
        let receipt = match self.held_until {
            Some(held_until) if !self.ids.is_empty() => Some(DeliveryReceipt {
                in_flight,
                recipient: self.caller,
                ids: self.ids,
                held_until,
                settled_by,
            }),
            _ => None,
        };
        Outcome { reply, receipt }
    }
}

/// What one look at a mailbox found for `count`.
struct Summary {
    caller: String,
    count: u32,
    senders: Vec<String>,
    /// With nothing waiting: when the caller's first leased message comes back.
    next_lease_expiry: Option<String>,
}

impl Summary {
    fn into_reply(self) -> Reply {
        Reply::ok()
            .with("count", self.count)
            .with("senders", self.senders)
    }
}

/// The refusal of an `ack` (or release) of an id the caller does not own.
fn unknown_message(id: i64) -> Value {
    json!({
        "id": id,
        "code": "unknown_message",
        "message": format!("no message {id} is addressed to you; ack only ids your check returned"),
    })
}

/// A message body ready to store: content possibly swapped for a summary and a file.
struct Prepared {
    content: String,
    data: Option<String>,
    large_file: Option<PathBuf>,
}

/// A message on its way in: prepared body, the sender's stamp, and the queue cap to respect.
struct Outgoing {
    prepared: Prepared,
    stamp: SenderStamp,
    queue_cap: u32,
    max_clock_skew: std::time::Duration,
    replay_window: std::time::Duration,
}

impl Outgoing {
    /// Refuses a sender `timestamp` too far from the broker's clock.
    fn check_stamp(&self, now: DateTime<Utc>) -> Result<(), BrokerError> {
        let Some(given) = self.stamp.timestamp else {
            return Ok(());
        };
        let off_by = (given - now).num_seconds().abs();
        let limit = self.max_clock_skew.as_secs() as i64;
        if off_by > limit {
            return Err(BrokerError::StaleTimestamp {
                given: text(given),
                off_by_seconds: off_by,
                limit_seconds: limit,
            });
        }
        Ok(())
    }

    /// The message this sender already stored under this nonce inside the replay window.
    fn earlier_copy(
        &self,
        conn: &Connection,
        sender: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<MessageId>, BrokerError> {
        let Some(nonce) = &self.stamp.nonce else {
            return Ok(None);
        };
        let since = text(minus(now, self.replay_window));
        Ok(queries::find_nonce(conn, sender, nonce, &since)?)
    }

    fn remember_nonce(
        &self,
        conn: &Connection,
        sender: &str,
        id: MessageId,
        now: DateTime<Utc>,
    ) -> Result<(), BrokerError> {
        if let Some(nonce) = &self.stamp.nonce {
            queries::record_nonce(conn, sender, nonce, id, &text(now))?;
        }
        Ok(())
    }
}

/// The reply to a send or broadcast whose nonce was already used: nothing new is stored.
fn duplicate_reply(original: MessageId) -> Reply {
    Reply::ok()
        .with("message", "Duplicate nonce: already stored")
        .with("duplicate", true)
        .with("message_id", original.0)
}

impl Broker {
    /// `send`: stores one message for `to_id` (following a live forward), or reports the
    /// original id if the sender already used this nonce inside the replay window.
    pub(super) async fn send(
        &self,
        token: Option<String>,
        peer: &str,
        to_id: InstanceName,
        message: MessageBody,
        stamp: SenderStamp,
    ) -> Result<Reply, BrokerError> {
        let outgoing = self.outgoing(&token, peer, &message, stamp).await?;
        let store = move |conn: &Connection, caller: &Caller, now, outgoing: &Outgoing| {
            store_send(conn, caller, now, to_id.as_str(), outgoing)
        };
        let reply = self
            .store_outgoing(token, peer, outgoing, store, |reply| !is_duplicate(reply))
            .await?;
        if let Some(recipient) = reply.get("recipient").and_then(Value::as_str) {
            self.doorbells.ring(recipient);
        }
        Ok(reply)
    }

    /// `broadcast`: one copy for every registered instance except the sender. Instances whose
    /// queue is full are skipped and named in `skipped`.
    pub(super) async fn broadcast(
        &self,
        token: Option<String>,
        peer: &str,
        message: MessageBody,
        stamp: SenderStamp,
    ) -> Result<Reply, BrokerError> {
        let outgoing = self.outgoing(&token, peer, &message, stamp).await?;
        let reply = self
            .store_outgoing(token, peer, outgoing, store_broadcast, |reply| {
                reply_count(reply) > 0
            })
            .await?;
        self.doorbells.ring_all();
        Ok(reply)
    }

    /// `ack`: settles the caller's mail id by id. Unknown ids and other instances' ids are
    /// refused one by one (alike, so ids cannot be probed) without stopping the rest.
    pub(super) async fn ack(
        &self,
        token: Option<String>,
        peer: &str,
        ids: Vec<i64>,
    ) -> Result<Reply, BrokerError> {
        self.as_caller(token, peer, move |conn, caller, now| {
            let now = text(now);
            let (mut acked, mut already, mut refused) = (0, Vec::new(), Vec::new());
            for id in ids {
                match queries::ack(conn, &caller.name, MessageId(id), &now)? {
                    Settled::Acked => acked += 1,
                    Settled::AlreadyAcked => already.push(id),
                    Settled::Unknown => refused.push(unknown_message(id)),
                }
            }
            Ok(Reply::ok()
                .with("acked", acked)
                .with("already_acked", already)
                .with("refused", refused))
        })
        .await
    }

    /// `ack` with `release`: hands the caller's leased mail back to its queue at once, for a
    /// reader that could not take it (its caller gave up). Refusals are as for `ack`.
    pub(super) async fn release(
        &self,
        token: Option<String>,
        peer: &str,
        ids: Vec<i64>,
    ) -> Result<Reply, BrokerError> {
        let (caller, reply) = self
            .as_caller(token, peer, move |conn, caller, _now| {
                let (mut released, mut already, mut refused) = (0, Vec::new(), Vec::new());
                for id in ids {
                    match queries::release_owned(conn, &caller.name, MessageId(id))? {
                        Released::Released => released += 1,
                        Released::AlreadyAcked => already.push(id),
                        Released::Unknown => refused.push(unknown_message(id)),
                    }
                }
                let reply = Reply::ok()
                    .with("released", released)
                    .with("already_acked", already)
                    .with("refused", refused);
                Ok((caller.name.clone(), reply))
            })
            .await?;
        self.doorbells.ring(&caller);
        Ok(reply)
    }

    /// Prepares a message for storing. Large content is written to its file here, outside the
    /// store's thread, so the session is verified first: strangers cannot make the broker
    /// write files.
    async fn outgoing(
        &self,
        token: &Option<String>,
        peer: &str,
        message: &MessageBody,
        stamp: SenderStamp,
    ) -> Result<Outgoing, BrokerError> {
        if self.needs_file(message) {
            self.verify_session(token.clone(), peer).await?;
        }
        Ok(Outgoing {
            prepared: self.prepare(message).await?,
            stamp,
            queue_cap: self.limits.queue_cap,
            max_clock_skew: self.limits.max_clock_skew,
            replay_window: self.limits.replay_window,
        })
    }

    /// Runs `store` as the caller; removes the large-message file again unless `kept_file`
    /// says the reply stored a message that refers to it.
    async fn store_outgoing<F>(
        &self,
        token: Option<String>,
        peer: &str,
        outgoing: Outgoing,
        store: F,
        kept_file: fn(&Reply) -> bool,
    ) -> Result<Reply, BrokerError>
    where
        F: FnOnce(&Connection, &Caller, DateTime<Utc>, &Outgoing) -> Result<Reply, BrokerError>
            + Send
            + 'static,
    {
        let large_file = outgoing.prepared.large_file.clone();
        let result = self
            .as_caller(token, peer, move |conn, caller, now| {
                store(conn, caller, now, &outgoing)
            })
            .await;
        if !matches!(&result, Ok(reply) if kept_file(reply)) {
            remove_orphan(large_file);
        }
        result
    }

    /// `check`: the caller's oldest waiting mail, as much as fits a legacy single read.
    ///
    /// - Auto ack (legacy): the mail is held in the same job that reads it, and marked
    ///   delivered when the connection settles the receipt.
    /// - Manual ack: the mail is leased in the same job that reads it; an `ack` settles it.
    /// - `wait`: with nothing waiting, sleeps until a commit rings the caller's doorbell, a
    ///   lease runs out, the deadline passes, the broker stops, or the reader leaves (then it
    ///   answers empty, having read and leased nothing).
    pub(super) async fn check(
        &self,
        token: Option<String>,
        peer: &str,
        options: CheckOptions,
        mut reader: Presence,
    ) -> Result<Outcome, BrokerError> {
        let deadline = options.wait.map(|wait| Instant::now() + wait);
        let mut closing = self.doorbells.closing();
        let mut bell: Option<Arc<Notify>> = None;
        let settle_by = Instant::now() + SETTLE_WAIT;
        let mut first_read = true;
        loop {
            // Listen before reading, so a commit between the read and the wait is not missed.
            let listening = bell.clone();
            let mut rung = listening.as_deref().map(|bell| Box::pin(bell.notified()));
            if let Some(rung) = rung.as_mut() {
                rung.as_mut().enable();
            }
            let turn = self.check_turn(token.as_deref()).await;
            let batch = self
                .read_batch(token.clone(), peer, &options, first_read)
                .await?;
            first_read = false;
            // Counted before the turn is given up, so the session's next check, which waits
            // for the turn, knows this reply is on its way.
            let in_flight = (options.ack == AckMode::Auto && !batch.ids.is_empty())
                .then(|| self.unsettled.start(&batch.caller));
            // The hold (or lease) is committed with the read, so no other reader can be
            // handed this mail once the turn is given up.
            drop(turn);
            if batch.ids.is_empty()
                && self
                    .settled_meanwhile(&batch.caller, settle_by, &mut reader)
                    .await
            {
                continue;
            }
            let out_of_time = deadline.is_none_or(|deadline| Instant::now() >= deadline);
            let stop = out_of_time || self.doorbells.is_closing() || reader.is_gone();
            if !batch.ids.is_empty() || stop {
                return Ok(batch.into_outcome(options.ack, in_flight));
            }
            let Some(rung) = rung else {
                bell = Some(self.doorbells.bell(&batch.caller));
                continue;
            };
            let wake_at = self.wake_time(deadline, batch.next_lease_expiry.as_deref());
            tokio::select! {
                _ = rung => {}
                _ = tokio::time::sleep_until(wake_at) => {}
                _ = closing.wait_for(|closing| *closing) => {}
                _ = reader.gone() => return Ok(batch.into_outcome(options.ack, None)),
            }
        }
    }

    /// With the caller's legacy replies still on their way, waits (until `until` at most) for
    /// one to settle; true if one did, so the mailbox is worth reading again: mail whose
    /// reply was not taken is back in it.
    async fn settled_meanwhile(&self, caller: &str, until: Instant, reader: &mut Presence) -> bool {
        let Some(settling) = self.unsettled.settling(caller) else {
            return false;
        };
        let settled = settling.notified();
        tokio::pin!(settled);
        settled.as_mut().enable();
        if self.unsettled.settling(caller).is_none() {
            return true;
        }
        tokio::select! {
            _ = settled => true,
            _ = tokio::time::sleep_until(until) => false,
            _ = reader.gone() => false,
        }
    }

    /// One read of the caller's mailbox, leasing what it returns when the ack is manual. Only
    /// the first read of a request counts against the rate limit.
    async fn read_batch(
        &self,
        token: Option<String>,
        peer: &str,
        options: &CheckOptions,
        first_read: bool,
    ) -> Result<Batch, BrokerError> {
        let fetch = options
            .limit
            .unwrap_or(CHECK_MAX_MESSAGES)
            .min(CHECK_MAX_MESSAGES);
        let ack = options.ack;
        let hold = self.receipt_hold();
        let read = move |conn: &Connection, caller: &Caller, now: DateTime<Utc>| {
            let now_text = text(now);
            let mut budget = ReplyBudget::new();
            let more = queries::available_for(conn, &caller.name, &now_text, fetch, |stored| {
                budget.take(stored)
            })?;
            let (messages, ids) = (budget.messages, budget.ids);
            let held_until = match ack {
                AckMode::Auto => {
                    let until = text(plus(now, hold));
                    queries::hold(conn, &ids, &until)?;
                    until
                }
                AckMode::Manual { lease } => {
                    let until = text(plus(now, lease));
                    queries::lease(conn, &ids, &until)?;
                    until
                }
            };
            let next_lease_expiry = if ids.is_empty() {
                queries::next_lease_expiry(conn, &caller.name, &now_text)?
            } else {
                None
            };
            Ok(Batch {
                caller: caller.name.clone(),
                more,
                messages,
                ids,
                held_until: Some(held_until),
                next_lease_expiry,
            })
        };
        if first_read {
            self.as_caller(token, peer, read).await
        } else {
            self.as_caller_again(token, peer, read).await
        }
    }

    /// When a waiting check should look again without being rung: its deadline, or when a
    /// lease on its mail runs out and that mail becomes deliverable again.
    fn wake_time(&self, deadline: Option<Instant>, lease_expiry: Option<&str>) -> Instant {
        let deadline = deadline.unwrap_or_else(Instant::now);
        let Some(expiry) = lease_expiry.and_then(crate::clock::parse) else {
            return deadline;
        };
        let in_a_moment = (expiry - self.now()).to_std().unwrap_or_default();
        deadline.min(Instant::now() + in_a_moment)
    }

    /// `count`: how many messages wait for the caller and the first few distinct senders,
    /// oldest first. Nothing is marked delivered or leased. It is meant to be polled (by the
    /// hook on every prompt, by `wait_for_messages`), so it neither counts against the rate
    /// limit nor refreshes the session's idle timer or `last_seen`: peeking is not activity.
    ///
    /// With `wait` and nothing waiting, it long-polls like `check` (doorbell, lease expiry,
    /// deadline, shutdown, the reader leaving) and still consumes nothing, so a waiter that
    /// gives up unannounced loses no mail.
    pub(super) async fn count(
        &self,
        token: Option<String>,
        peer: &str,
        wait: Option<std::time::Duration>,
        mut reader: Presence,
    ) -> Result<Reply, BrokerError> {
        let deadline = wait.map(|wait| Instant::now() + wait);
        let mut closing = self.doorbells.closing();
        let mut bell: Option<Arc<Notify>> = None;
        loop {
            let listening = bell.clone();
            let mut rung = listening.as_deref().map(|bell| Box::pin(bell.notified()));
            if let Some(rung) = rung.as_mut() {
                rung.as_mut().enable();
            }
            let summary = self.waiting_summary(token.clone(), peer).await?;
            let out_of_time = deadline.is_none_or(|deadline| Instant::now() >= deadline);
            let stop = out_of_time || self.doorbells.is_closing() || reader.is_gone();
            if summary.count > 0 || stop {
                return Ok(summary.into_reply());
            }
            let Some(rung) = rung else {
                bell = Some(self.doorbells.bell(&summary.caller));
                continue;
            };
            let wake_at = self.wake_time(deadline, summary.next_lease_expiry.as_deref());
            tokio::select! {
                _ = rung => {}
                _ = tokio::time::sleep_until(wake_at) => {}
                _ = closing.wait_for(|closing| *closing) => {}
                _ = reader.gone() => return Ok(summary.into_reply()),
            }
        }
    }

    /// One look at the caller's waiting mail for `count`, without counting a request.
    async fn waiting_summary(
        &self,
        token: Option<String>,
        peer: &str,
    ) -> Result<Summary, BrokerError> {
        let auth = self.session_check(token, peer);
        let now = self.now();
        self.run(move |conn| {
            let caller = auth.verify(conn, now)?;
            let now = text(now);
            let (count, senders) =
                queries::waiting_summary(conn, &caller.name, &now, COUNT_MAX_SENDERS)?;
            let next_lease_expiry = match count {
                0 => queries::next_lease_expiry(conn, &caller.name, &now)?,
                _ => None,
            };
            Ok(Summary {
                caller: caller.name,
                count,
                senders,
                next_lease_expiry,
            })
        })
        .await
    }

    /// How long a legacy check holds the mail its reply carries: writing the reply and
    /// waiting for the client to take it may each last a write timeout.
    fn receipt_hold(&self) -> std::time::Duration {
        self.limits.write_timeout * 2 + HOLD_MARGIN
    }

    /// Marks the receipt's mail delivered: the client took the reply. Mail whose hold ran
    /// out and was taken by another reader meanwhile is left to that reader.
    pub async fn confirm_delivery(&self, receipt: DeliveryReceipt) -> Result<usize, BrokerError> {
        let now = text(self.now());
        let DeliveryReceipt {
            ids,
            held_until,
            in_flight,
            ..
        } = receipt;
        let marked = self
            .run(move |conn| Ok(queries::deliver_held(conn, &ids, &held_until, &now)?))
            .await;
        // Settled (or failed) only now that the job is done, so a check woken by this sees it.
        drop(in_flight);
        marked
    }

    /// Ends the receipt's hold (or lease) at once: the client never took the reply, so the
    /// mail waits for the next check, which the doorbell wakes if it is already waiting.
    pub async fn return_to_queue(&self, receipt: DeliveryReceipt) -> Result<usize, BrokerError> {
        let DeliveryReceipt {
            recipient,
            ids,
            held_until,
            in_flight,
            ..
        } = receipt;
        let released = self
            .run(move |conn| Ok(queries::release_held(conn, &ids, &held_until)?))
            .await;
        drop(in_flight);
        self.doorbells.ring(&recipient);
        released
    }

    /// Waits for this session's turn to check; unauthenticated requests share one turn, which
    /// is harmless because they are refused before reading mail.
    async fn check_turn(&self, token: Option<&str>) -> OwnedMutexGuard<()> {
        let key = token.map(super::session::token_hash).unwrap_or_default();
        let lock = {
            let mut locks = self.check_locks.lock().expect("check lock map poisoned");
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            locks.entry(key).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Whether content is over the large-message threshold, measured as JSON text because
    /// that is what a check reply must fit.
    fn needs_file(&self, message: &MessageBody) -> bool {
        Value::String(message.content.clone()).to_string().len() > self.limits.large_message_bytes
    }

    /// Checks the data size and moves large content to a file (off the async executor).
    async fn prepare(&self, message: &MessageBody) -> Result<Prepared, BrokerError> {
        let data = message
            .data
            .as_ref()
            .map(|data| Value::Object(data.clone()).to_string());
        let data_bytes = data.as_ref().map_or(0, String::len);
        if data_bytes > self.limits.max_data_bytes {
            return Err(BrokerError::DataTooLarge {
                bytes: data_bytes,
                limit: self.limits.max_data_bytes,
            });
        }
        if !self.needs_file(message) {
            return Ok(Prepared {
                content: message.content.clone(),
                data,
                large_file: None,
            });
        }
        let dir = self.large_message_dir.clone();
        let (content, now) = (message.content.clone(), self.now());
        let written = tokio::task::spawn_blocking(move || {
            large_message::write_file(&dir, &content, now).map(|path| (path, content))
        })
        .await
        .map_err(|e| BrokerError::LargeFile(std::io::Error::other(e.to_string())))?;
        let (path, content) = written.map_err(BrokerError::LargeFile)?;
        let mut data_object = message.data.clone().unwrap_or_default();
        data_object.insert(
            "large_message_file".into(),
            path.display().to_string().into(),
        );
        data_object.insert(
            "original_size_kb".into(),
            large_message::size_kb(&content).into(),
        );
        Ok(Prepared {
            content: large_message::summary(&content, &path),
            data: Some(Value::Object(data_object).to_string()),
            large_file: Some(path),
        })
    }
}

fn store_send(
    conn: &Connection,
    caller: &Caller,
    now: DateTime<Utc>,
    to_id: &str,
    outgoing: &Outgoing,
) -> Result<Reply, BrokerError> {
    outgoing.check_stamp(now)?;
    if let Some(original) = outgoing.earlier_copy(conn, &caller.name, now)? {
        return Ok(duplicate_reply(original));
    }
    let forwarded_to = queries::resolve_forward(conn, to_id, &text(now))?;
    let recipient = forwarded_to.as_deref().unwrap_or(to_id);
    let registered = queries::instance_exists(conn, recipient)?;
    ensure_room(conn, recipient, outgoing.queue_cap)?;
    let id = insert(conn, caller, now, to_id, recipient, "direct", outgoing)?;
    outgoing.remember_nonce(conn, &caller.name, id, now)?;
    let message = match (&forwarded_to, registered) {
        (Some(new), _) => format!("Message forwarded from {to_id} to {new}"),
        (None, false) => format!("Message queued for {recipient} (not yet registered)"),
        (None, true) => "Message sent".to_owned(),
    };
    Ok(Reply::ok()
        .with("message", message)
        .with("message_id", id.0)
        .with("recipient", recipient)
        .with("duplicate", false))
}

fn store_broadcast(
    conn: &Connection,
    caller: &Caller,
    now: DateTime<Utc>,
    outgoing: &Outgoing,
) -> Result<Reply, BrokerError> {
    outgoing.check_stamp(now)?;
    if let Some(original) = outgoing.earlier_copy(conn, &caller.name, now)? {
        return Ok(duplicate_reply(original));
    }
    let mut ids = Vec::new();
    let mut skipped = Vec::new();
    for (recipient, _) in queries::list_instances(conn)? {
        if recipient == caller.name {
            continue;
        }
        if ensure_room(conn, &recipient, outgoing.queue_cap).is_err() {
            skipped.push(recipient);
            continue;
        }
        ids.push(
            insert(
                conn,
                caller,
                now,
                &recipient,
                &recipient,
                "broadcast",
                outgoing,
            )?
            .0,
        );
    }
    if let Some(first) = ids.first() {
        // A retry with this nonce is answered with the first copy's id.
        outgoing.remember_nonce(conn, &caller.name, MessageId(*first), now)?;
    }
    Ok(Reply::ok()
        .with("message", format!("Broadcast to {} instances", ids.len()))
        .with("count", ids.len())
        .with("message_ids", ids)
        .with("skipped", skipped))
}

fn ensure_room(conn: &Connection, recipient: &str, cap: u32) -> Result<(), BrokerError> {
    if cap > 0 && queries::pending_count(conn, recipient)? >= cap {
        return Err(BrokerError::QueueFull {
            name: recipient.to_owned(),
            cap,
        });
    }
    Ok(())
}

fn insert(
    conn: &Connection,
    caller: &Caller,
    now: DateTime<Utc>,
    addressed_to: &str,
    recipient: &str,
    kind: &str,
    outgoing: &Outgoing,
) -> Result<MessageId, BrokerError> {
    let (prepared, stamp) = (&outgoing.prepared, &outgoing.stamp);
    let large_file = prepared
        .large_file
        .as_ref()
        .map(|p| p.display().to_string());
    let sender_timestamp = stamp.timestamp.map(text);
    Ok(queries::insert_message(
        conn,
        &NewMessage {
            sender: &caller.name,
            addressed_to,
            recipient,
            kind,
            content: &prepared.content,
            data: prepared.data.as_deref(),
            large_file: large_file.as_deref(),
            nonce: stamp.nonce.as_deref(),
            sender_timestamp: sender_timestamp.as_deref(),
            received_at: &text(now),
        },
    )?)
}

/// The reply entries of one `check`, oldest first, filled until the next would make the reply
/// outgrow a legacy client's single read. Always takes at least one message.
struct ReplyBudget {
    used: usize,
    messages: Vec<Value>,
    ids: Vec<MessageId>,
}

impl ReplyBudget {
    fn new() -> Self {
        ReplyBudget {
            used: 64, // {"status":"ok","more":false,"messages":[]}
            messages: Vec::new(),
            ids: Vec::new(),
        }
    }

    /// Adds the message if it fits; false means it did not and the reply is full.
    fn take(&mut self, stored: &StoredMessage) -> bool {
        let entry = wire_message(stored);
        let size = entry.to_string().len() + 1;
        if !self.messages.is_empty() && self.used + size > CHECK_REPLY_BUDGET {
            return false;
        }
        self.used += size;
        self.messages.push(entry);
        self.ids.push(stored.id);
        true
    }
}

/// One message as `check` shows it: the legacy fields plus id, nonce, sender_timestamp and
/// which hand-out this is (`delivery_count`, 1 the first time).
fn wire_message(stored: &StoredMessage) -> Value {
    let mut body = Map::new();
    body.insert("content".into(), stored.content.clone().into());
    if let Some(data) = stored
        .data
        .as_deref()
        .and_then(|d| serde_json::from_str::<Value>(d).ok())
    {
        body.insert("data".into(), data);
    }
    let mut entry = json!({
        "id": stored.id.0,
        "from": stored.sender,
        "to": stored.recipient,
        "addressed_to": stored.addressed_to,
        "kind": stored.kind,
        "timestamp": stored.received_at,
        "message": body,
        "delivery_count": stored.delivery_count + 1,
    });
    if let Some(nonce) = &stored.nonce {
        entry["nonce"] = nonce.clone().into();
    }
    if let Some(at) = &stored.sender_timestamp {
        entry["sender_timestamp"] = at.clone().into();
    }
    entry
}

fn is_duplicate(reply: &Reply) -> bool {
    reply.get("duplicate") == Some(&Value::Bool(true))
}

fn reply_count(reply: &Reply) -> u64 {
    reply.get("count").and_then(Value::as_u64).unwrap_or(0)
}

/// Removes a large-message file whose message was not stored.
fn remove_orphan(file: Option<PathBuf>) {
    if let Some(file) = file {
        if let Err(e) = std::fs::remove_file(&file) {
            tracing::warn!(
                "cannot remove unused large-message file {}: {e}",
                file.display()
            );
        }
    }
}
