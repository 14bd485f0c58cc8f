//! `sent`: receipts for the caller's own mail. Each message it sent is reported with where it
//! is (`waiting`, `read`, `delivered`, `expired`) and when each change happened, newest first
//! or by id. Mail belongs to the instance that sent it under its current name, so a rename
//! keeps it; ids it did not send are refused one by one, exactly like ids that do not exist.

use super::session::TokenHash;
use super::{done, Broker, BrokerError, Peer};
use crate::domain::{MessageId, Timestamp};
use crate::protocol::budget::entry_bytes;
use crate::protocol::schema::{Receipt, ReceiptState, RefusedId, SentReply};
use crate::protocol::{Capped, EntryBudget, SentSelection};
use crate::store::receipts::SentRow;

/// A `sent` reply lists only the first ids it refused; `refused_count` covers the rest.
const SENT_SHOWN_REFUSALS: usize = 20;
/// A `sent` reply without its entries and refusals: status, `more`, `refused_count`.
const SENT_REPLY_FIXED_BYTES: usize = 100;

impl Broker {
    /// `sent`: the caller's newest messages, or exactly the ids it names, each with what
    /// became of it, as many as fit the reply budget (`more` says some were left out). Reads
    /// only; counts as one request.
    pub(super) async fn sent(
        &self,
        token: Option<TokenHash>,
        peer: &Peer,
        selection: SentSelection,
    ) -> Result<SentReply, BrokerError> {
        self.as_caller(token, peer, move |tx, caller, now| {
            let mut refused = Capped::new(SENT_SHOWN_REFUSALS);
            let (rows, asked) = match selection {
                SentSelection::Newest(limit) => {
                    // One more than asked, to tell whether more are kept.
                    let mut rows = tx.sent_by(&caller.name, now, limit.saturating_add(1))?;
                    let more = rows.len() > limit as usize;
                    rows.truncate(limit as usize);
                    (rows, more)
                }
                SentSelection::Ids(ids) => {
                    let mut rows = Vec::new();
                    for id in distinct(ids) {
                        match tx.sent_message(&caller.name, id, now)? {
                            Some(row) => rows.push(row),
                            None => refused.push(RefusedId::not_sent_by_you(id)),
                        }
                    }
                    (rows, false)
                }
            };
            let refused_count = refused.total();
            let refused = refused.into_shown();
            let mut budget = EntryBudget::new(SENT_REPLY_FIXED_BYTES + entry_bytes(&refused));
            let mut messages = Vec::new();
            let mut left_out = false;
            for row in rows {
                let receipt = receipt(row);
                if !budget.take(&receipt) {
                    left_out = true;
                    break;
                }
                messages.push(receipt);
            }
            done(SentReply {
                messages,
                more: asked || left_out,
                refused_count,
                refused,
            })
        })
        .await
    }
}

/// `ids` without repeats, in the order first given.
fn distinct(ids: Vec<i64>) -> Vec<MessageId> {
    let mut seen = std::collections::HashSet::new();
    ids.into_iter()
        .filter(|id| seen.insert(*id))
        .map(MessageId)
        .collect()
}

/// One stored (or expired) message as its sender's receipt.
fn receipt(row: SentRow) -> Receipt {
    Receipt {
        id: row.id,
        to: row.recipient.to_string(),
        addressed_to: row.addressed_to.to_string(),
        kind: row.kind,
        state: state_of(&row),
        delivery_count: row.delivery_count,
        sent_at: row.sent_at.to_text(),
        read_at: row.read_at.map(Timestamp::to_text),
        pushed_at: row.pushed_at.map(Timestamp::to_text),
        delivered_at: row.delivered_at.map(Timestamp::to_text),
        expired_at: row.expired_at.map(Timestamp::to_text),
    }
}

/// Delivered once acknowledged; expired once dropped; read while a reader holds it
/// unacknowledged; else waiting (also after a lease ran out: it will be handed out again).
fn state_of(row: &SentRow) -> ReceiptState {
    if row.expired_at.is_some() {
        ReceiptState::Expired
    } else if row.delivered_at.is_some() {
        ReceiptState::Delivered
    } else if row.held {
        ReceiptState::Read
    } else {
        ReceiptState::Waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_ids_are_reported_once_in_the_order_first_given() {
        assert_eq!(
            distinct(vec![5, 3, 5, 9, 3]),
            vec![MessageId(5), MessageId(3), MessageId(9)]
        );
    }
}
