//! `search`: full-text search over the subject and content of the caller's own mail (mail it
//! sent or received, by its current name), best match first, each with a snippet. Reading
//! never changes any message's delivery state.

use super::conversation::conversation_message;
use super::session::TokenHash;
use super::{done, Broker, BrokerError, Peer};
use crate::protocol::budget::EntryBudget;
use crate::protocol::request::{search_cursor, SearchOptions};
use crate::protocol::schema::{SearchReply, SearchResult};

/// A `search` reply without its results: status, `more`, `next_cursor`, `capped`.
const SEARCH_REPLY_FIXED_BYTES: usize = 120;

impl Broker {
    /// One page of the caller's matches, as many as asked and as fit the reply budget (`more`
    /// and `next_cursor` lead on). Reads only; counts as one request.
    pub(super) async fn search(
        &self,
        token: Option<TokenHash>,
        peer: &Peer,
        options: SearchOptions,
    ) -> Result<SearchReply, BrokerError> {
        self.as_caller(token, peer, move |tx, caller, now| {
            let page = tx.search_visible(
                &caller.name,
                (&options.query, &options.filters),
                (options.offset, options.limit),
                now,
            )?;
            let mut budget = EntryBudget::new(SEARCH_REPLY_FIXED_BYTES);
            let mut results = Vec::new();
            let mut left_out = false;
            for (place, hit) in (options.offset..).zip(page.hits) {
                let result = SearchResult {
                    message: conversation_message(&hit.row, &caller.name),
                    snippet: hit.snippet,
                    rank: place + 1,
                };
                if !budget.take(&result) {
                    left_out = true;
                    break;
                }
                results.push(result);
            }
            let more = page.more || left_out;
            let next_cursor = more.then(|| next_offset(options.offset, results.len()));
            done(SearchReply {
                results,
                more,
                next_cursor: next_cursor.map(search_cursor),
                capped: page.capped,
            })
        })
        .await
    }
}

/// Where the next page starts: after the results shown, or (when not even one fitted the
/// budget, which inline mail is kept small enough never to cause) after the one that did not,
/// so paging always moves on.
fn next_offset(offset: u32, shown: usize) -> u32 {
    offset.saturating_add((shown as u32).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_always_moves_on() {
        assert_eq!(next_offset(20, 20), 40);
        assert_eq!(next_offset(20, 0), 21);
    }
}
