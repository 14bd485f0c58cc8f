//! Mail: send, broadcast, check, and the receipt that holds mail while its reply is on the
//! way, so it is marked delivered only once the reader took the reply.
//!
//! A message with large content is checked against every limit (session, rate limits, stamp
//! and nonce, queue cap, the large-message caps) in one store job before its file is written,
//! so a refused sender costs the disk nothing; then the file is written, then the message is
//! stored in a second job that checks again, and the file is removed if that one refuses.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, OwnedMutexGuard};

use super::reader::Presence;
use super::unsettled::InFlight;
use tokio::time::Instant;

use super::identity::{is_reserved, Caller};
use super::online::OnlineRule;
use super::session::TokenHash;
use super::typos;
use super::{done, large_message, refuse, text, Broker, BrokerError, JobEnd, Outcome, Peer};
use crate::domain::{MessageKind, Timestamp};
use crate::protocol::budget::entry_bytes;
use crate::protocol::request::{SenderStamp, Threading};
use crate::protocol::schema::{
    AckReply, BroadcastCopies, BroadcastReply, CheckReply, CountReply, ManualAck, RefusedId,
    ReleaseReply, SendReply, WireBody, WireMessage,
};
use crate::protocol::{AckMode, Capped, CheckOptions};
use crate::protocol::{InstanceName, MessageBody, REPLY_BUDGET};
use crate::store::queries::{MessageId, NewMessage, Released, SessionId, Settled, StoredMessage};
use crate::store::{Durability, StoreError, Tx};

/// A check reply is kept under the budget every reply keeps (see [`REPLY_BUDGET`]).
const CHECK_REPLY_BUDGET: usize = REPLY_BUDGET;
/// The most distinct senders a `count` reply names.
const COUNT_MAX_SENDERS: u32 = 10;
/// The most messages one check returns, whatever `limit` asks for.
const CHECK_MAX_MESSAGES: u32 = 500;
/// A broadcast reply lists the ids of its first copies and of the first instances it
/// skipped; `count`, `first_id`, `last_id` and `skipped_count` cover the rest.
const BROADCAST_SHOWN_IDS: usize = 100;
const BROADCAST_SHOWN_SKIPPED: usize = 20;
/// An `ack` reply lists the first ids it found already settled and the first it refused;
/// the counts cover the rest.
const ACK_SHOWN_IDS: usize = 100;
const ACK_SHOWN_REFUSALS: usize = 20;
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
    recipient: InstanceName,
    ids: Vec<MessageId>,
    /// The hold's (or lease's) end, as stored: settling touches only mail still held by it.
    held_until: Timestamp,
    settled_by: SettledBy,
    /// Set for a legacy receipt: counts it as on its way until it is settled or dropped.
    in_flight: Option<InFlight>,
}

/// Who settles a receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SettledBy {
    /// The connection, on evidence that the client took the reply (legacy auto ack).
    Receipt,
    /// The client's `ack` (manual ack).
    Ack,
    /// Nobody: a `watch` reply announced this mail to `watcher` and consumed none. Returned
    /// only when the reply provably never reached the client, which un-records the
    /// announcement (and the push), so the mail is announced to that watcher again.
    Announcement { watcher: String },
}

impl DeliveryReceipt {
    /// The receipt of a `watch` reply: the announcement of `ids` to `watcher` at `at`.
    pub(super) fn announcement(
        recipient: InstanceName,
        watcher: String,
        ids: Vec<MessageId>,
        at: Timestamp,
    ) -> Self {
        DeliveryReceipt {
            recipient,
            ids,
            held_until: at,
            settled_by: SettledBy::Announcement { watcher },
            in_flight: None,
        }
    }

    /// Whether the connection marks this mail delivered itself (legacy auto ack), rather than
    /// leaving it to the client's `ack`.
    pub fn settles_on_receipt(&self) -> bool {
        self.settled_by == SettledBy::Receipt
    }

    /// Whether this is a `watch` reply's announcement rather than mail handed out. The
    /// connection forgets it once the client sends its next request, having read the reply.
    pub fn is_announcement(&self) -> bool {
        matches!(self.settled_by, SettledBy::Announcement { .. })
    }
}

/// What one read of a mailbox found.
struct Batch {
    caller: InstanceName,
    session_id: SessionId,
    messages: Vec<WireMessage>,
    ids: Vec<MessageId>,
    more: bool,
    /// The lease (manual ack) or hold (auto ack) on `ids` runs until then.
    held_until: Option<Timestamp>,
    /// With nothing to hand out: when the caller's first leased message comes back.
    next_lease_expiry: Option<Timestamp>,
}

impl Batch {
    fn into_outcome(self, ack: AckMode, in_flight: Option<InFlight>) -> Outcome {
        let mut reply = CheckReply {
            messages: self.messages,
            more: self.more,
            ack: None,
            lease_until: None,
        };
        let settled_by = match ack {
            AckMode::Manual { .. } => {
                reply.ack = Some(ManualAck::Manual);
                reply.lease_until = self
                    .held_until
                    .filter(|_| !self.ids.is_empty())
                    .map(Timestamp::to_text);
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
        Outcome {
            reply: reply.into(),
            receipt,
            authenticated: true,
        }
    }
}

/// What one look at a mailbox found for `count`.
struct Summary {
    caller: InstanceName,
    session_id: SessionId,
    count: u32,
    senders: Vec<String>,
    /// With nothing waiting: when the caller's first leased message comes back.
    next_lease_expiry: Option<Timestamp>,
}

impl Summary {
    fn into_reply(self) -> CountReply {
        CountReply {
            count: self.count,
            senders: self.senders,
        }
    }
}

/// A message body ready to store: content possibly swapped for a summary and a file.
struct Prepared {
    content: String,
    data: Option<String>,
    large: Option<LargeFile>,
}

/// The file large content goes to: chosen before any check, written only after all pass.
struct LargeFile {
    path: PathBuf,
    text: String,
}

impl LargeFile {
    fn bytes(&self) -> u64 {
        self.text.len() as u64
    }
}

/// A message on its way in: prepared body, the sender's stamp, and the caps to respect.
pub(super) struct Outgoing {
    prepared: Prepared,
    stamp: SenderStamp,
    thread: Threading,
    queue_cap: u32,
    max_clock_skew: std::time::Duration,
    replay_window: std::time::Duration,
    /// Large-message bytes per sender and in total; 0 is unlimited.
    large_sender_cap: u64,
    large_total_cap: u64,
    /// The wall clock the `timestamp` is checked against, not the broker clock: senders
    /// stamp with the wall clock, so after a wall-clock jump only it still agrees with them.
    senders_clock: DateTime<Utc>,
    /// Written by the person at the dashboard: stored with kind `human` (see [`super::human`]).
    pub(super) from_human: bool,
}

impl Outgoing {
    /// Refuses a large message whose file would take its sender's stored large mail, or
    /// everyone's, past its cap. Files are counted from the stored rows, once each.
    fn large_cap_refusal(
        &self,
        tx: &Tx<'_>,
        sender: &InstanceName,
    ) -> Result<Option<BrokerError>, StoreError> {
        let Some(large) = &self.prepared.large else {
            return Ok(None);
        };
        let bytes = large.bytes();
        if self.large_sender_cap > 0 {
            let used = tx.sender_large_file_bytes(sender)?;
            if used + bytes > self.large_sender_cap {
                return Ok(Some(BrokerError::LargeMessageSenderFull {
                    sender: sender.to_string(),
                    used,
                    bytes,
                    limit: self.large_sender_cap,
                }));
            }
        }
        if self.large_total_cap > 0 {
            let used = tx.total_large_file_bytes()?;
            if used + bytes > self.large_total_cap {
                return Ok(Some(BrokerError::LargeMessageTotalFull {
                    used,
                    bytes,
                    limit: self.large_total_cap,
                }));
            }
        }
        Ok(None)
    }

    /// Refuses a sender `timestamp` too far from the broker's clock, to the millisecond: a
    /// stamp 10.9 s off is outside a 10 s skew.
    fn check_stamp(&self, now: DateTime<Utc>) -> Result<(), BrokerError> {
        let Some(given) = self.stamp.timestamp else {
            return Ok(());
        };
        let off_by_ms = (given - now).num_milliseconds().saturating_abs();
        let limit_ms = i64::try_from(self.max_clock_skew.as_millis()).unwrap_or(i64::MAX);
        if off_by_ms > limit_ms {
            return Err(BrokerError::StaleTimestamp {
                given: text(given),
                off_by_ms,
                limit_ms,
            });
        }
        Ok(())
    }

    /// The message this sender's identity already stored under this nonce inside the replay
    /// window. The identity, not the name: a rename keeps it, a new holder of the name does
    /// not get it.
    fn earlier_copy(
        &self,
        tx: &Tx<'_>,
        caller: &Caller,
        now: Timestamp,
    ) -> Result<Option<MessageId>, StoreError> {
        let Some(nonce) = &self.stamp.nonce else {
            return Ok(None);
        };
        tx.find_nonce(caller.identity, nonce, now.minus(self.replay_window))
    }

    /// Where the message goes in its conversation: the thread of the message it answers,
    /// which the caller must have sent or received, and that message's subject unless it
    /// brings its own. A message that answers nothing starts a thread.
    fn place(
        &self,
        tx: &Tx<'_>,
        caller: &Caller,
        now: Timestamp,
    ) -> Result<Result<Place, BrokerError>, StoreError> {
        let subject = self.thread.subject.as_ref().map(|s| s.as_str().to_owned());
        let Some(parent) = self.thread.reply_to else {
            return Ok(Ok(Place {
                thread_id: None,
                reply_to: None,
                subject,
            }));
        };
        let Some(answered) = tx.visible_message(&caller.name, parent, now)? else {
            return Ok(Err(BrokerError::UnknownReplyTo(parent)));
        };
        Ok(Ok(Place {
            thread_id: Some(answered.thread_id),
            reply_to: Some(parent),
            subject: subject.or(answered.subject),
        }))
    }

    fn remember_nonce(
        &self,
        tx: &Tx<'_>,
        caller: &Caller,
        id: MessageId,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        if let Some(nonce) = &self.stamp.nonce {
            tx.record_nonce(caller.identity, &caller.name, nonce, id, now)?;
        }
        Ok(())
    }
}

impl Broker {
    /// `send`: stores one message for `to_id` (following a live forward), or reports the
    /// original id if the sender already used this nonce inside the replay window. The reply
    /// says whether the recipient is online now and when it was last seen.
    pub(super) async fn send(
        &self,
        token: Option<TokenHash>,
        peer: &Peer,
        to_id: InstanceName,
        message: MessageBody,
        stamp: SenderStamp,
        thread: Threading,
    ) -> Result<SendReply, BrokerError> {
        let outgoing = self.outgoing(&message, stamp, thread)?;
        self.send_outgoing(token, peer, to_id, outgoing).await
    }

    /// Stores a prepared message for `to_id` as the caller `token` proves: `send`'s rules,
    /// shared with the dashboard's human (see [`super::human`]).
    pub(super) async fn send_outgoing(
        &self,
        token: Option<TokenHash>,
        peer: &Peer,
        to_id: InstanceName,
        outgoing: Outgoing,
    ) -> Result<SendReply, BrokerError> {
        let to = to_id.clone();
        let check = move |tx: &Tx<'_>, caller: &Caller, now, outgoing: &Outgoing| {
            Ok(
                plan_send(tx, caller, now, &to, outgoing)?.map(|plan| match plan {
                    SendPlan::Duplicate(original) => Some(SendReply::duplicate(original)),
                    SendPlan::Deliver { .. } => None,
                }),
            )
        };
        let online = self.online_rule();
        let store = move |tx: &Tx<'_>, caller: &Caller, now, outgoing: &Outgoing| {
            store_send(tx, caller, now, &to_id, outgoing, &online)
        };
        let reply = self
            .store_outgoing(token, peer, outgoing, check, store, |reply: &SendReply| {
                !reply.duplicate
            })
            .await?;
        if let Some(recipient) = &reply.recipient {
            self.doorbells.ring(recipient.as_str());
        }
        Ok(reply)
    }

    /// `broadcast`: one copy for every registered instance except the sender. Instances whose
    /// queue is full are skipped. The reply counts both and lists only the first few of each,
    /// so it stays small however many instances there are.
    pub(super) async fn broadcast(
        &self,
        token: Option<TokenHash>,
        peer: &Peer,
        message: MessageBody,
        stamp: SenderStamp,
        thread: Threading,
    ) -> Result<BroadcastReply, BrokerError> {
        let outgoing = self.outgoing(&message, stamp, thread)?;
        self.broadcast_outgoing(token, peer, outgoing).await
    }

    /// Stores one copy of a prepared message for every other instance: `broadcast`'s rules,
    /// shared with the dashboard's human.
    pub(super) async fn broadcast_outgoing(
        &self,
        token: Option<TokenHash>,
        peer: &Peer,
        outgoing: Outgoing,
    ) -> Result<BroadcastReply, BrokerError> {
        let check = |tx: &Tx<'_>, caller: &Caller, now, outgoing: &Outgoing| {
            Ok(
                plan_broadcast(tx, caller, now, outgoing)?.map(|plan| match plan {
                    BroadcastPlan::Duplicate(original) => {
                        Some(BroadcastReply::Duplicate(SendReply::duplicate(original)))
                    }
                    BroadcastPlan::Deliver {
                        recipients,
                        skipped,
                        ..
                    } if recipients.is_empty() => {
                        Some(broadcast_reply(Capped::new(0), skipped, None))
                    }
                    BroadcastPlan::Deliver { .. } => None,
                }),
            )
        };
        let reply = self
            .store_outgoing(
                token,
                peer,
                outgoing,
                check,
                store_broadcast,
                |reply: &BroadcastReply| reply.stored() > 0,
            )
            .await?;
        self.doorbells.ring_all();
        Ok(reply)
    }

    /// `ack`: settles the caller's mail id by id. Unknown ids and other instances' ids are
    /// refused one by one (alike, so ids cannot be probed) without stopping the rest. The
    /// reply counts each outcome and lists only the first few ids of each.
    pub(super) async fn ack(
        &self,
        token: Option<TokenHash>,
        peer: &Peer,
        ids: Vec<i64>,
    ) -> Result<AckReply, BrokerError> {
        let acked = self
            .as_caller(token, peer, move |tx, caller, now| {
                let mut acked = 0;
                let mut already = Capped::new(ACK_SHOWN_IDS);
                let mut refused = Capped::new(ACK_SHOWN_REFUSALS);
                for id in ids {
                    match tx.ack(&caller.name, MessageId(id), now)? {
                        Settled::Acked => acked += 1,
                        Settled::AlreadyAcked => already.push(MessageId(id)),
                        Settled::Unknown => refused.push(RefusedId::unknown_message(MessageId(id))),
                    }
                }
                let unsettled = Unsettled::of(already, refused);
                done(AckReply {
                    acked,
                    truncated: unsettled.truncated,
                    already_acked_count: unsettled.already_count,
                    already_acked: unsettled.already,
                    refused_count: unsettled.refused_count,
                    refused: unsettled.refused,
                })
            })
            .await;
        self.doorbells.changed();
        acked
    }

    /// `ack` with `release`: hands the caller's leased mail back to its queue at once, for a
    /// reader that could not take it (its caller gave up). Refusals are as for `ack`.
    pub(super) async fn release(
        &self,
        token: Option<TokenHash>,
        peer: &Peer,
        ids: Vec<i64>,
    ) -> Result<ReleaseReply, BrokerError> {
        let (caller, reply) = self
            .as_caller(token, peer, move |tx, caller, _now| {
                let mut released = 0;
                let mut already = Capped::new(ACK_SHOWN_IDS);
                let mut refused = Capped::new(ACK_SHOWN_REFUSALS);
                for id in ids {
                    match tx.release_owned(&caller.name, MessageId(id))? {
                        Released::Released => released += 1,
                        Released::AlreadyAcked => already.push(MessageId(id)),
                        Released::Unknown => {
                            refused.push(RefusedId::unknown_message(MessageId(id)))
                        }
                    }
                }
                let unsettled = Unsettled::of(already, refused);
                let reply = ReleaseReply {
                    released,
                    truncated: unsettled.truncated,
                    already_acked_count: unsettled.already_count,
                    already_acked: unsettled.already,
                    refused_count: unsettled.refused_count,
                    refused: unsettled.refused,
                };
                done((caller.name.clone(), reply))
            })
            .await?;
        self.doorbells.ring(caller.as_str());
        Ok(reply)
    }

    /// Prepares a message for storing: checks the data size and, for large content, picks the
    /// file and builds its text and summary. Nothing is written yet.
    pub(super) fn outgoing(
        &self,
        message: &MessageBody,
        stamp: SenderStamp,
        thread: Threading,
    ) -> Result<Outgoing, BrokerError> {
        Ok(Outgoing {
            prepared: self.prepare(message)?,
            senders_clock: self.senders_clock(stamp.timestamp),
            stamp,
            thread,
            queue_cap: self.limits.queue_cap,
            max_clock_skew: self.limits.max_clock_skew,
            replay_window: self.limits.replay_window,
            large_sender_cap: self.limits.large_message_sender_bytes,
            large_total_cap: self.limits.large_message_total_bytes,
            from_human: false,
        })
    }

    /// Runs `store` as the caller. For large content, first runs `check` as the caller (which
    /// counts the request): a refusal, or a final answer such as a duplicate, means the file
    /// is never written. Then the file is written, and `store` runs without counting the
    /// request again; the file is removed unless `kept_file` says the reply stored a message
    /// that refers to it.
    async fn store_outgoing<R, C, F>(
        &self,
        token: Option<TokenHash>,
        peer: &Peer,
        outgoing: Outgoing,
        check: C,
        store: F,
        kept_file: fn(&R) -> bool,
    ) -> Result<R, BrokerError>
    where
        R: Send + 'static,
        C: FnOnce(&Tx<'_>, &Caller, Timestamp, &Outgoing) -> Result<JobEnd<Option<R>>, StoreError>
            + Send
            + 'static,
        F: FnOnce(&Tx<'_>, &Caller, Timestamp, &Outgoing) -> Result<JobEnd<R>, StoreError>
            + Send
            + 'static,
    {
        if outgoing.prepared.large.is_none() {
            return self
                .as_caller(token, peer, move |tx, caller, now| {
                    store(tx, caller, now, &outgoing)
                })
                .await;
        }
        let outgoing = Arc::new(outgoing);
        let checked = outgoing.clone();
        let answer = self
            .as_caller(token.clone(), peer, move |tx, caller, now| {
                check(tx, caller, now, &checked)
            })
            .await?;
        if let Some(reply) = answer {
            return Ok(reply);
        }
        let path = self.write_large_file(outgoing.clone()).await?;
        // The same request as the check above, which counted it.
        let again = self.session_check(token, peer).uncounted();
        let result = self
            .job(Durability::Flushed, move |tx, now| {
                again
                    .caller(tx, now)?
                    .then(|caller| store(tx, &caller, now, &outgoing))
            })
            .await;
        if !matches!(&result, Ok(reply) if kept_file(reply)) {
            remove_orphan(path);
        }
        result
    }

    /// Writes the large-message file of `outgoing` (off the async executor) and returns its
    /// path.
    async fn write_large_file(&self, outgoing: Arc<Outgoing>) -> Result<PathBuf, BrokerError> {
        let dir = self.large_message_dir.clone();
        tokio::task::spawn_blocking(move || {
            let large = outgoing.prepared.large.as_ref().expect("large content");
            large_message::write_at(&dir, &large.path, &large.text).map(|()| large.path.clone())
        })
        .await
        .map_err(|e| BrokerError::LargeFile(std::io::Error::other(e.to_string())))?
        .map_err(BrokerError::LargeFile)
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
        token: Option<TokenHash>,
        peer: &Peer,
        options: CheckOptions,
        mut reader: Presence,
    ) -> Result<Outcome, BrokerError> {
        let deadline = options.wait.map(|wait| Instant::now() + wait);
        let mut closing = self.doorbells.closing();
        let mut bell: Option<Arc<Notify>> = None;
        // Held while this check waits: its session is in use (see `Listening`).
        let mut _listener = None;
        let settle_by = Instant::now() + SETTLE_WAIT;
        let mut first_read = true;
        loop {
            // Listen before reading, so a commit between the read and the wait is not missed.
            let listening = bell.clone();
            let mut rung = listening.as_deref().map(|bell| Box::pin(bell.notified()));
            if let Some(rung) = rung.as_mut() {
                rung.as_mut().enable();
            }
            let turn = self.check_turn(token.as_ref()).await;
            let batch = self
                .read_batch(token.clone(), peer, &options, first_read)
                .await?;
            first_read = false;
            // Counted before the turn is given up, so the session's next check, which waits
            // for the turn, knows this reply is on its way.
            let in_flight = (options.ack == AckMode::Auto && !batch.ids.is_empty())
                .then(|| self.unsettled.start(batch.caller.as_str()));
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
                if !batch.ids.is_empty() {
                    // Handed out: its delivery state changed (the dashboard shows `read`).
                    self.doorbells.changed();
                }
                return Ok(batch.into_outcome(options.ack, in_flight));
            }
            let Some(rung) = rung else {
                bell = Some(self.doorbells.bell(batch.caller.as_str()));
                _listener = Some(self.listening.start(batch.session_id));
                continue;
            };
            let wake_at = self.wake_time(deadline, batch.next_lease_expiry);
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
    async fn settled_meanwhile(
        &self,
        caller: &InstanceName,
        until: Instant,
        reader: &mut Presence,
    ) -> bool {
        let Some(settling) = self.unsettled.settling(caller.as_str()) else {
            return false;
        };
        let settled = settling.notified();
        tokio::pin!(settled);
        settled.as_mut().enable();
        if self.unsettled.settling(caller.as_str()).is_none() {
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
        token: Option<TokenHash>,
        peer: &Peer,
        options: &CheckOptions,
        first_read: bool,
    ) -> Result<Batch, BrokerError> {
        let fetch = options
            .limit
            .unwrap_or(CHECK_MAX_MESSAGES)
            .min(CHECK_MAX_MESSAGES);
        let ack = options.ack;
        let reply_to = options.reply_to;
        let hold = self.receipt_hold();
        let read = move |tx: &Tx<'_>, caller: &Caller, now: Timestamp| {
            let mut budget = ReplyBudget::new();
            let take = |stored: &StoredMessage| budget.take(stored);
            let more = match reply_to {
                None => tx.available_for(&caller.name, now, fetch, take)?,
                Some(question) if tx.sent_by_caller(&caller.name, question)? => {
                    tx.available_replies_for(&caller.name, now, question, fetch, take)?
                }
                Some(question) => return refuse(BrokerError::UnknownQuestion(question)),
            };
            let (messages, ids) = (budget.messages, budget.ids);
            let held_until = match ack {
                AckMode::Auto => {
                    let until = now.plus(hold);
                    tx.hold(&ids, until, now)?;
                    until
                }
                AckMode::Manual { lease } => {
                    let until = now.plus(lease);
                    tx.lease(&ids, until, now)?;
                    until
                }
            };
            let next_lease_expiry = if ids.is_empty() {
                tx.next_lease_expiry(&caller.name, now)?
            } else {
                None
            };
            done(Batch {
                caller: caller.name.clone(),
                session_id: caller.session_id,
                more,
                messages,
                ids,
                held_until: Some(held_until),
                next_lease_expiry,
            })
        };
        let check = self.session_check(token, peer);
        let check = if first_read { check } else { check.uncounted() };
        // The hold or lease this read puts on the mail need not be flushed before the reply:
        // a crash loses it, and every start releases those anyway. Marking the mail delivered
        // (or an `ack`) is flushed as ever.
        self.job(Durability::Unflushed, move |tx, now| {
            check.caller(tx, now)?.then(|caller| read(tx, &caller, now))
        })
        .await
    }

    /// When a waiting check should look again without being rung: its deadline, or when a
    /// lease on its mail runs out and that mail becomes deliverable again.
    fn wake_time(&self, deadline: Option<Instant>, lease_expiry: Option<Timestamp>) -> Instant {
        let deadline = deadline.unwrap_or_else(Instant::now);
        let Some(expiry) = lease_expiry else {
            return deadline;
        };
        let in_a_moment = (expiry.at() - self.now()).to_std().unwrap_or_default();
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
        token: Option<TokenHash>,
        peer: &Peer,
        wait: Option<std::time::Duration>,
        mut reader: Presence,
    ) -> Result<CountReply, BrokerError> {
        let deadline = wait.map(|wait| Instant::now() + wait);
        let mut closing = self.doorbells.closing();
        let mut bell: Option<Arc<Notify>> = None;
        // Held while this count waits: its session is in use (see `Listening`).
        let mut _listener = None;
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
                bell = Some(self.doorbells.bell(summary.caller.as_str()));
                _listener = Some(self.listening.start(summary.session_id));
                continue;
            };
            let wake_at = self.wake_time(deadline, summary.next_lease_expiry);
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
        token: Option<TokenHash>,
        peer: &Peer,
    ) -> Result<Summary, BrokerError> {
        let peek = self.session_check(token, peer).uncounted();
        self.job(Durability::Flushed, move |tx, now| {
            let caller = match peek.caller(tx, now)? {
                JobEnd::Done(caller) => caller,
                JobEnd::Refused(refusal) => return refuse(refusal),
            };
            let (count, senders) = tx.waiting_summary(&caller.name, now, COUNT_MAX_SENDERS)?;
            let next_lease_expiry = match count {
                0 => tx.next_lease_expiry(&caller.name, now)?,
                _ => None,
            };
            done(Summary {
                session_id: caller.session_id,
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
        if receipt.is_announcement() {
            // An announcement delivers nothing.
            return Ok(0);
        }
        let DeliveryReceipt {
            ids,
            held_until,
            in_flight,
            ..
        } = receipt;
        let marked = self
            .job(Durability::Flushed, move |tx, now| {
                done(tx.deliver_held(&ids, held_until, now)?)
            })
            .await;
        // Settled (or failed) only now that the job is done, so a check woken by this sees it.
        drop(in_flight);
        self.doorbells.changed();
        marked
    }

    /// Ends the receipt's hold (or lease) at once: the client never took the reply, so the
    /// mail waits for the next check, which the doorbell wakes if it is already waiting.
    /// For a `watch` reply, un-records its announcement instead: that watcher is told again.
    pub async fn return_to_queue(&self, receipt: DeliveryReceipt) -> Result<usize, BrokerError> {
        let DeliveryReceipt {
            recipient,
            ids,
            held_until,
            in_flight,
            settled_by,
        } = receipt;
        let released = self
            .job(Durability::Flushed, move |tx, _now| match &settled_by {
                SettledBy::Announcement { watcher } => {
                    done(tx.unannounce(watcher, &ids, held_until)?)
                }
                SettledBy::Receipt | SettledBy::Ack => done(tx.release_held(&ids, held_until)?),
            })
            .await;
        drop(in_flight);
        self.doorbells.ring(recipient.as_str());
        released
    }

    /// Waits for this session's turn to check; unauthenticated requests share one turn, which
    /// is harmless because they are refused before reading mail.
    async fn check_turn(&self, token: Option<&TokenHash>) -> OwnedMutexGuard<()> {
        let key = token.cloned();
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
        message.content_json_bytes() > self.limits.large_message_bytes
    }

    /// Checks the data size and, for large content, chooses its file and builds the summary
    /// that is queued in its place.
    fn prepare(&self, message: &MessageBody) -> Result<Prepared, BrokerError> {
        let data = message.data_text();
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
                large: None,
            });
        }
        let (content, now) = (&message.content, self.now());
        let path = large_message::new_path(&self.large_message_dir, now);
        let data =
            message.large_data_text(&path.display().to_string(), large_message::size_kb(content));
        Ok(Prepared {
            content: large_message::summary(content, &path),
            data: Some(data),
            large: Some(LargeFile {
                text: large_message::file_text(content, now),
                path,
            }),
        })
    }
}

/// What a send will do, once every rule has passed.
enum SendPlan {
    /// The nonce was used already: answer with that message.
    Duplicate(MessageId),
    Deliver {
        recipient: InstanceName,
        forwarded_to: Option<InstanceName>,
        registered: bool,
        place: Place,
    },
}

/// Where a message goes in its conversation (see [`Outgoing::place`]).
struct Place {
    /// The thread it joins; `None` starts one.
    thread_id: Option<MessageId>,
    reply_to: Option<MessageId>,
    subject: Option<String>,
}

/// Checks a send against every rule without storing anything.
fn plan_send(
    tx: &Tx<'_>,
    caller: &Caller,
    now: Timestamp,
    to_id: &InstanceName,
    outgoing: &Outgoing,
) -> Result<JobEnd<SendPlan>, StoreError> {
    if let Err(refusal) = outgoing.check_stamp(outgoing.senders_clock) {
        return refuse(refusal);
    }
    if let Some(original) = outgoing.earlier_copy(tx, caller, now)? {
        return done(SendPlan::Duplicate(original));
    }
    let place = match outgoing.place(tx, caller, now)? {
        Ok(place) => place,
        Err(refusal) => return refuse(refusal),
    };
    let forwarded_to = tx.resolve_forward(to_id, now)?;
    let recipient = forwarded_to.as_ref().unwrap_or(to_id).clone();
    let registered = tx.instance_exists(&recipient)?;
    if forwarded_to.is_none() && !registered && is_reserved(to_id.as_str()) {
        return refuse(BrokerError::ReservedRecipient(to_id.to_string()));
    }
    if let Some(refusal) = room_refusal(tx, &recipient, outgoing.queue_cap)? {
        return refuse(refusal);
    }
    if let Some(refusal) = outgoing.large_cap_refusal(tx, &caller.name)? {
        return refuse(refusal);
    }
    done(SendPlan::Deliver {
        recipient,
        forwarded_to,
        registered,
        place,
    })
}

fn store_send(
    tx: &Tx<'_>,
    caller: &Caller,
    now: Timestamp,
    to_id: &InstanceName,
    outgoing: &Outgoing,
    online: &OnlineRule,
) -> Result<JobEnd<SendReply>, StoreError> {
    plan_send(tx, caller, now, to_id, outgoing)?.then(|plan| {
        let (recipient, forwarded_to, registered, place) = match plan {
            SendPlan::Duplicate(original) => return done(SendReply::duplicate(original)),
            SendPlan::Deliver {
                recipient,
                forwarded_to,
                registered,
                place,
            } => (recipient, forwarded_to, registered, place),
        };
        let to = Addressing {
            addressed_to: to_id,
            recipient: &recipient,
            kind: MessageKind::Direct,
        };
        let id = insert(tx, caller, now, &to, outgoing, &place)?;
        outgoing.remember_nonce(tx, caller, id, now)?;
        let message = match (&forwarded_to, registered) {
            (Some(new), _) => format!("Message forwarded from {to_id} to {new}"),
            (None, false) => format!("Message queued for {recipient} (not yet registered)"),
            (None, true) => "Message sent".to_owned(),
        };
        let did_you_mean = match (&forwarded_to, registered) {
            (None, false) => meant_instead(tx, to_id)?,
            _ => None,
        };
        let holder = tx.name_holder(&recipient)?;
        let reach = online.reach(holder.map(|h| (h.session_id, h.last_used_at)), now);
        done(SendReply {
            message,
            message_id: id,
            thread_id: Some(place.thread_id.unwrap_or(id)),
            recipient: Some(recipient.to_string()),
            duplicate: false,
            did_you_mean,
            recipient_online: Some(reach.online),
            recipient_last_seen: tx.instance_last_seen(&recipient)?.map(Timestamp::to_text),
        })
    })
}

/// The registered name a send to `to_id`, a name no instance holds, probably meant: only for
/// a name never seen (no forward from it either), so mail sent ahead to a peer that has yet
/// to register is not second-guessed once the name has been in use.
fn meant_instead(tx: &Tx<'_>, to_id: &InstanceName) -> Result<Option<String>, StoreError> {
    if tx.forward_known(to_id)? {
        return Ok(None);
    }
    let known = tx.list_instances()?;
    let names = known.iter().map(|(name, _)| name.as_str());
    Ok(typos::closest(to_id.as_str(), names).map(str::to_owned))
}

/// What a broadcast will do, once every rule has passed.
enum BroadcastPlan {
    Duplicate(MessageId),
    Deliver {
        recipients: Vec<InstanceName>,
        /// Registered instances whose queue is full.
        skipped: Capped<String>,
        place: Place,
    },
}

/// Checks a broadcast against every rule and finds who has room, without storing anything.
fn plan_broadcast(
    tx: &Tx<'_>,
    caller: &Caller,
    now: Timestamp,
    outgoing: &Outgoing,
) -> Result<JobEnd<BroadcastPlan>, StoreError> {
    if let Err(refusal) = outgoing.check_stamp(outgoing.senders_clock) {
        return refuse(refusal);
    }
    if let Some(original) = outgoing.earlier_copy(tx, caller, now)? {
        return done(BroadcastPlan::Duplicate(original));
    }
    let place = match outgoing.place(tx, caller, now)? {
        Ok(place) => place,
        Err(refusal) => return refuse(refusal),
    };
    let mut recipients = Vec::new();
    let mut skipped = Capped::new(BROADCAST_SHOWN_SKIPPED);
    for (recipient, _) in tx.list_instances()? {
        if recipient == caller.name {
            continue;
        }
        if room_refusal(tx, &recipient, outgoing.queue_cap)?.is_some() {
            skipped.push(recipient.to_string());
        } else {
            recipients.push(recipient);
        }
    }
    if !recipients.is_empty() {
        if let Some(refusal) = outgoing.large_cap_refusal(tx, &caller.name)? {
            return refuse(refusal);
        }
    }
    done(BroadcastPlan::Deliver {
        recipients,
        skipped,
        place,
    })
}

fn store_broadcast(
    tx: &Tx<'_>,
    caller: &Caller,
    now: Timestamp,
    outgoing: &Outgoing,
) -> Result<JobEnd<BroadcastReply>, StoreError> {
    plan_broadcast(tx, caller, now, outgoing)?.then(|plan| {
        let (recipients, skipped, mut place) = match plan {
            BroadcastPlan::Duplicate(original) => {
                return done(BroadcastReply::Duplicate(SendReply::duplicate(original)))
            }
            BroadcastPlan::Deliver {
                recipients,
                skipped,
                place,
            } => (recipients, skipped, place),
        };
        let mut ids = Capped::new(BROADCAST_SHOWN_IDS);
        let (mut first_id, mut last_id) = (None, None);
        for recipient in &recipients {
            let to = Addressing {
                addressed_to: recipient,
                recipient,
                kind: MessageKind::Broadcast,
            };
            let id = insert(tx, caller, now, &to, outgoing, &place)?;
            // One broadcast is one thread: the first copy starts it (unless it answers a
            // message), and every later copy joins that copy's thread.
            place.thread_id.get_or_insert(id);
            first_id.get_or_insert(id);
            last_id = Some(id);
            ids.push(id);
        }
        if let Some(first) = first_id {
            // A retry with this nonce is answered with the first copy's id.
            outgoing.remember_nonce(tx, caller, first, now)?;
        }
        let mut reply = broadcast_reply(ids, skipped, first_id.zip(last_id));
        if let BroadcastReply::Delivered(copies) = &mut reply {
            copies.thread_id = place.thread_id;
        }
        done(reply)
    })
}

/// What an `ack` (or a release) did not settle: only the first ids found already settled
/// and the first refusals, with their counts, so the reply fits a legacy read however many
/// ids it named.
struct Unsettled {
    already_count: usize,
    already: Vec<MessageId>,
    refused_count: usize,
    refused: Vec<RefusedId>,
    truncated: bool,
}

impl Unsettled {
    fn of(already: Capped<MessageId>, refused: Capped<RefusedId>) -> Self {
        Unsettled {
            truncated: already.truncated() || refused.truncated(),
            already_count: already.total(),
            already: already.into_shown(),
            refused_count: refused.total(),
            refused: refused.into_shown(),
        }
    }
}

/// The broadcast reply: every copy counted, only the first ids and skipped names listed, so
/// it fits a legacy read however many instances there are.
fn broadcast_reply(
    ids: Capped<MessageId>,
    skipped: Capped<String>,
    first_and_last: Option<(MessageId, MessageId)>,
) -> BroadcastReply {
    let count = ids.total();
    BroadcastReply::Delivered(BroadcastCopies {
        message: format!("Broadcast to {count} instances"),
        count,
        truncated: ids.truncated() || skipped.truncated(),
        message_ids: ids.into_shown(),
        skipped_count: skipped.total(),
        skipped: skipped.into_shown(),
        first_id: first_and_last.map(|(first, _)| first),
        last_id: first_and_last.map(|(_, last)| last),
        thread_id: None,
    })
}

/// The refusal of mail for `recipient` when its queue is at its cap (0: no cap).
fn room_refusal(
    tx: &Tx<'_>,
    recipient: &InstanceName,
    cap: u32,
) -> Result<Option<BrokerError>, StoreError> {
    if cap > 0 && tx.pending_count(recipient)? >= cap {
        return Ok(Some(BrokerError::QueueFull {
            name: recipient.to_string(),
            cap,
        }));
    }
    Ok(None)
}

/// To whom one stored copy goes, and as what.
struct Addressing<'a> {
    addressed_to: &'a InstanceName,
    recipient: &'a InstanceName,
    kind: MessageKind,
}

fn insert(
    tx: &Tx<'_>,
    caller: &Caller,
    now: Timestamp,
    to: &Addressing<'_>,
    outgoing: &Outgoing,
    place: &Place,
) -> Result<MessageId, StoreError> {
    let (prepared, stamp) = (&outgoing.prepared, &outgoing.stamp);
    let large_file = prepared
        .large
        .as_ref()
        .map(|large| large.path.display().to_string());
    tx.insert_message(&NewMessage {
        sender: caller.name.as_str(),
        sent_by: Some(&caller.name),
        addressed_to: to.addressed_to,
        recipient: to.recipient,
        kind: if outgoing.from_human {
            MessageKind::Human
        } else {
            to.kind
        },
        content: &prepared.content,
        data: prepared.data.as_deref(),
        large_file: large_file.as_deref(),
        large_file_bytes: prepared.large.as_ref().map(LargeFile::bytes),
        nonce: stamp.nonce.as_deref(),
        sender_timestamp: stamp.timestamp.map(Timestamp::new),
        received_at: now,
        thread_id: place.thread_id,
        reply_to: place.reply_to,
        subject: place.subject.as_deref(),
    })
}

/// The reply entries of one `check`, oldest first, filled until the next would make the reply
/// outgrow a legacy client's single read. Always takes at least one message.
pub(super) struct ReplyBudget {
    used: usize,
    pub(super) messages: Vec<WireMessage>,
    pub(super) ids: Vec<MessageId>,
}

impl ReplyBudget {
    pub(super) fn new() -> Self {
        ReplyBudget {
            used: 64, // {"status":"ok","more":false,"messages":[]}
            messages: Vec::new(),
            ids: Vec::new(),
        }
    }

    /// Adds the message if it fits; false means it did not and the reply is full.
    pub(super) fn take(&mut self, stored: &StoredMessage) -> bool {
        let entry = wire_message(stored);
        let size = entry_bytes(&entry) + 1;
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
fn wire_message(stored: &StoredMessage) -> WireMessage {
    WireMessage {
        id: stored.id,
        from: stored.sender.clone(),
        to: stored.recipient.to_string(),
        addressed_to: stored.addressed_to.to_string(),
        kind: stored.kind,
        timestamp: stored.received_at.to_text(),
        message: WireBody::from_stored(stored.content.clone(), stored.data.as_deref()),
        nonce: stored.nonce.clone(),
        sender_timestamp: stored.sender_timestamp.map(Timestamp::to_text),
        delivery_count: stored.delivery_count + 1,
        thread_id: Some(stored.thread_id),
        reply_to: stored.reply_to,
        subject: stored.subject.clone(),
    }
}

/// Removes a large-message file whose message was not stored.
fn remove_orphan(file: PathBuf) {
    if let Err(e) = std::fs::remove_file(&file) {
        tracing::warn!(
            "cannot remove unused large-message file {}: {e}",
            file.display()
        );
    }
}
