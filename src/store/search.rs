//! The statements behind `search`: a match in the FTS5 index `search_index` (migration V15)
//! over the subject and content of the caller's own mail, ranked by bm25 over the caller's
//! newest matches ([`search_rank`]), with a snippet.
//!
//! The client's query reaches FTS5 only as the expression [`SearchQuery::to_fts5`] builds (every
//! term a quoted string), confined to the `subject` and `content` columns. The broker adds the
//! rest from the `parties` column's tokens: `v<hex name>` for who may see a message (its sender
//! and its recipient by their current names), `s…`/`r…` for `from`/`to`, `t<id>` for the
//! thread. The rows found are read back through [`Tx::visible_message`], which checks the
//! visibility rule once more.

use rusqlite::params;

use super::conversation::ConversationRow;
use super::search_rank::{self, Candidate, CLOSE_MARK, OPEN_MARK};
use super::{StoreError, Tx};
use crate::domain::{InstanceName, Timestamp};
use crate::protocol::request::SearchFilters;
use crate::protocol::schema::search::{SNIPPET_CLOSE, SNIPPET_OPEN};
use crate::protocol::search_query::SearchQuery;

/// The most matches one query ranks: the caller's newest matches, at most this many. Ranking
/// grows with the rows ranked; a query matching more says so (`capped`).
pub const RANKED_MATCHES: usize = 1000;

/// `?1` the FTS5 expression, `?2` the earliest time or NULL, `?3` how many, `?4`/`?5` the marks:
/// the newest matches, each with its subject and content with the matches marked (which
/// [`search_rank`] ranks).
pub(crate) const SEARCH_MATCHES: &str = "SELECT search_index.rowid,
       highlight(search_index, 0, ?4, ?5), highlight(search_index, 1, ?4, ?5)
     FROM search_index JOIN messages m ON m.id = search_index.rowid
     WHERE search_index MATCH ?1 AND (?2 IS NULL OR m.received_at >= ?2)
     ORDER BY search_index.rowid DESC LIMIT ?3";

/// `?1` the caller: how much mail it sent and received, the collection its ranking counts in.
pub(crate) const VISIBLE_COUNT: &str = "SELECT
       (SELECT count(*) FROM messages WHERE sent_by = ?1)
     + (SELECT count(*) FROM messages WHERE received_by = ?1)";

/// `?1` the FTS5 expression, `?2` the message, `?3`/`?4` the marks: a snippet of the content and
/// one of the subject, around the matched words.
pub(crate) const SEARCH_SNIPPETS: &str = "SELECT
       snippet(search_index, 1, ?3, ?4, '…', 16),
       snippet(search_index, 0, ?3, ?4, '…', 16)
     FROM search_index WHERE search_index MATCH ?1 AND rowid = ?2";

/// Whether any message waits to be indexed (migration V16).
const ANY_PENDING: &str = "SELECT EXISTS (SELECT 1 FROM search_pending)";
/// Indexes every queued message from its row as it is now, in id order (FTS5 appends rows in
/// ascending order without writing out what it holds first).
const INDEX_PENDING: &str = "INSERT INTO search_index (rowid, subject, content, parties)
     SELECT s.id, s.subject, s.content, s.parties
     FROM search_pending p JOIN search_source s ON s.id = p.message_id
     ORDER BY p.message_id";
const CLEAR_PENDING: &str = "DELETE FROM search_pending";

/// Writes the messages queued in `search_pending` into the search index and empties the queue.
/// Runs in the transaction about to commit, outside every job's savepoint, so that FTS5 writes
/// one segment per commit instead of one per message (V16 says why). A failure fails the whole
/// transaction: nothing is committed without its index entries.
pub(crate) fn index_pending(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    let pending: bool = conn
        .prepare_cached(ANY_PENDING)?
        .query_row([], |r| r.get(0))?;
    if pending {
        conn.prepare_cached(INDEX_PENDING)?.execute([])?;
        conn.prepare_cached(CLEAR_PENDING)?.execute([])?;
    }
    Ok(())
}

/// One match as the store found it.
#[derive(Debug, Clone)]
pub struct SearchHit {
    pub row: ConversationRow,
    /// The snippet with its marks (see [`crate::protocol::schema::search`]).
    pub snippet: String,
}

/// One page of matches.
#[derive(Debug, Clone, Default)]
pub struct SearchPage {
    pub hits: Vec<SearchHit>,
    /// More matches follow this page.
    pub more: bool,
    /// More than [`RANKED_MATCHES`] matched: only the newest were ranked.
    pub capped: bool,
}

impl Tx<'_> {
    /// The `limit` matches from `offset` on, best first, among `caller`'s own mail.
    pub fn search_visible(
        &self,
        caller: &InstanceName,
        (query, filters): (&SearchQuery, &SearchFilters),
        (offset, limit): (u32, u32),
        now: Timestamp,
    ) -> Result<SearchPage, StoreError> {
        let expression = index_expression(caller, query, filters);
        let mut candidates = self.newest_matches(&expression, filters.since)?;
        let capped = candidates.len() > RANKED_MATCHES;
        candidates.truncate(RANKED_MATCHES);
        let collection = self.visible_count(caller)?;
        let ranked = search_rank::rank(&candidates, collection);
        let start = (offset as usize).min(ranked.len());
        let end = start.saturating_add(limit as usize).min(ranked.len());
        let mut hits = Vec::with_capacity(end - start);
        for &(id, _) in &ranked[start..end] {
            let Some(row) = self.visible_message(caller, crate::domain::MessageId(id), now)? else {
                continue;
            };
            let snippet = self.snippet(&expression, id)?;
            hits.push(SearchHit { row, snippet });
        }
        Ok(SearchPage {
            hits,
            more: end < ranked.len(),
            capped,
        })
    }

    /// The newest matches with their matches marked, one more than are ranked (to tell
    /// whether more matched), newest first.
    fn newest_matches(
        &self,
        expression: &str,
        since: Option<Timestamp>,
    ) -> Result<Vec<Candidate>, StoreError> {
        let mut statement = self.conn.prepare_cached(SEARCH_MATCHES)?;
        let (open, close) = (OPEN_MARK.to_string(), CLOSE_MARK.to_string());
        let limit = RANKED_MATCHES as i64 + 1;
        let rows = statement.query_map(params![expression, since, limit, open, close], |row| {
            Ok(Candidate {
                id: row.get(0)?,
                subject: row.get(1)?,
                content: row.get::<_, Option<String>>(2)?.unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How many messages `caller` sent and received (a message to itself counts twice, which
    /// changes nothing a ranking can show).
    fn visible_count(&self, caller: &InstanceName) -> Result<usize, StoreError> {
        let count: i64 = self
            .conn
            .prepare_cached(VISIBLE_COUNT)?
            .query_row([caller], |row| row.get(0))?;
        Ok(count.max(0) as usize)
    }

    /// The content's snippet if a matched word is in the content, else the subject's.
    fn snippet(&self, expression: &str, id: i64) -> Result<String, StoreError> {
        let mut statement = self.conn.prepare_cached(SEARCH_SNIPPETS)?;
        let (open, close) = (OPEN_MARK.to_string(), CLOSE_MARK.to_string());
        let (content, subject): (Option<String>, Option<String>) = statement
            .query_row(params![expression, id, open, close], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?;
        let content = content.unwrap_or_default();
        let chosen = match subject {
            Some(subject) if !content.contains(OPEN_MARK) && subject.contains(OPEN_MARK) => subject,
            _ => content,
        };
        Ok(chosen
            .replace(OPEN_MARK, SNIPPET_OPEN)
            .replace(CLOSE_MARK, SNIPPET_CLOSE))
    }
}

/// The whole FTS5 expression: the client's query on subject and content, AND the caller's
/// visibility token, AND a token for each filter the index can answer.
pub(crate) fn index_expression(
    caller: &InstanceName,
    query: &SearchQuery,
    filters: &SearchFilters,
) -> String {
    let mut expression = format!(
        "{{subject content}} : ({}) AND parties : {}",
        query.to_fts5(),
        party_token('v', caller)
    );
    if let Some(from) = &filters.from {
        expression.push_str(&format!(" AND parties : {}", party_token('s', from)));
    }
    if let Some(to) = &filters.to {
        expression.push_str(&format!(" AND parties : {}", party_token('r', to)));
    }
    if let Some(thread) = filters.thread_id {
        expression.push_str(&format!(" AND parties : \"t{}\"", thread.0));
    }
    expression
}

/// The operator's expression (the dashboard): the query on subject and content over all mail,
/// without any caller's visibility token.
pub(crate) fn operator_expression(query: &SearchQuery) -> String {
    format!("{{subject content}} : ({})", query.to_fts5())
}

/// A `parties` token for a name, quoted: its kind letter and the name's bytes in hex, as the
/// migration's `hex()` writes them (one token whatever the name holds).
fn party_token(kind: char, name: &InstanceName) -> String {
    let hex: String = name.as_str().bytes().map(|b| format!("{b:02X}")).collect();
    format!("\"{kind}{hex}\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    /// Ids whose index entry matches `query` for `caller`, newest first.
    fn matches(conn: &Connection, caller: &str, query: &str) -> Vec<i64> {
        let caller = InstanceName::parse(caller).unwrap();
        let query = SearchQuery::parse(query).unwrap();
        let expression = index_expression(&caller, &query, &SearchFilters::default());
        let mut statement = conn.prepare(SEARCH_MATCHES).unwrap();
        let rows = statement
            .query_map(params![expression, None::<String>, 10, "<", ">"], |row| {
                row.get(0)
            })
            .unwrap();
        rows.collect::<rusqlite::Result<_>>().unwrap()
    }

    #[test]
    fn the_migration_indexes_mail_stored_before_it_and_triggers_keep_it_in_step() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("ipc.db")).unwrap();
        super::super::embedded::migrations::runner()
            .set_target(refinery::Target::Version(14))
            .run(&mut conn)
            .unwrap();
        let at = "2026-01-01T00:00:00.000Z";
        conn.execute_batch(&format!(
            "INSERT INTO messages (id, sender, addressed_to, recipient, kind, content, received_at,
                                   sent_by, received_by, subject)
               VALUES (1, 'alice', 'bob', 'bob', 'direct', 'old harbour news', '{at}',
                       'alice', 'bob', 'Harbour'),
                      (2, 'system', 'bob', 'bob', 'system', 'harbour notice', '{at}',
                       NULL, 'bob', NULL);"
        ))
        .unwrap();
        super::super::embedded::migrations::runner()
            .run(&mut conn)
            .unwrap();
        assert_eq!(matches(&conn, "alice", "harbour"), [1]);
        assert_eq!(matches(&conn, "bob", "harbour"), [2, 1]);
        assert!(matches(&conn, "carol", "harbour").is_empty());

        conn.execute_batch(
            "UPDATE messages SET received_by = 'robert' WHERE received_by = 'bob';
             DELETE FROM messages WHERE id = 2;
             INSERT INTO search_index (search_index) VALUES ('integrity-check');",
        )
        .unwrap();
        assert!(matches(&conn, "bob", "harbour").is_empty());
        assert_eq!(matches(&conn, "robert", "harbour"), [1]);
        let entries: i64 = conn
            .query_row("SELECT count(*) FROM search_index_docsize", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(entries, 1);
    }

    fn pending(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM search_pending", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn new_mail_waits_in_the_queue_until_the_commit_indexes_it_and_changes_before_that_are_safe() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("ipc.db")).unwrap();
        super::super::embedded::migrations::runner()
            .run(&mut conn)
            .unwrap();
        let at = "2026-01-01T00:00:00.000Z";
        let insert = |id: i64, content: &str| {
            conn.execute(
                "INSERT INTO messages (id, sender, addressed_to, recipient, kind, content,
                                       received_at, sent_by, received_by)
                 VALUES (?1, 'alice', 'bob', 'bob', 'direct', ?2, ?3, 'alice', 'bob')",
                params![id, content, at],
            )
            .unwrap();
        };
        conn.execute_batch("BEGIN").unwrap();
        insert(1, "harbour one");
        insert(2, "harbour two");
        insert(3, "harbour three");
        // Queued, not indexed: each change to a queued message must leave FTS5 alone.
        assert_eq!(pending(&conn), 3);
        assert!(matches(&conn, "bob", "harbour").is_empty());
        conn.execute_batch(
            "UPDATE messages SET content = 'lighthouse two', received_by = 'robert' WHERE id = 2;
             DELETE FROM messages WHERE id = 3;",
        )
        .unwrap();
        assert_eq!(pending(&conn), 2, "the deleted message left the queue");
        index_pending(&conn).unwrap();
        conn.execute_batch("COMMIT").unwrap();

        assert_eq!(pending(&conn), 0);
        assert_eq!(matches(&conn, "bob", "harbour"), [1]);
        assert_eq!(matches(&conn, "robert", "lighthouse"), [2]);
        assert!(matches(&conn, "bob", "lighthouse").is_empty());
        // Once indexed, the triggers keep the index in step again.
        conn.execute_batch(
            "UPDATE messages SET received_by = 'robert' WHERE id = 1;
             DELETE FROM messages WHERE id = 2;
             INSERT INTO search_index (search_index) VALUES ('integrity-check');",
        )
        .unwrap();
        assert_eq!(matches(&conn, "robert", "harbour"), [1]);
        assert!(matches(&conn, "robert", "lighthouse").is_empty());
        assert_eq!(pending(&conn), 0);
    }

    #[test]
    fn mail_another_writer_queued_is_indexed_when_the_broker_opens_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipc.db");
        drop(super::super::Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO messages (sender, addressed_to, recipient, kind, content, received_at,
                                   sent_by, received_by)
             VALUES ('alice', 'bob', 'bob', 'direct', 'typed by hand', ?1, 'alice', 'bob')",
            ["2026-01-01T00:00:00.000Z"],
        )
        .unwrap();
        assert_eq!(pending(&conn), 1);
        drop(conn);

        drop(super::super::Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        assert_eq!(pending(&conn), 0);
        assert_eq!(matches(&conn, "bob", "hand").len(), 1);
    }

    /// The ids of the FTS5 segments the index holds: a data row's id carries its segment in
    /// the bits above 37 (FTS5's `FTS5_SEGMENT_ROWID`); rows 1 and 10 are the index's own
    /// records. FTS5 gives a new segment the smallest id not in use, so an index whose only
    /// segment is 1 wrote nothing before it that was merged away.
    fn segments(conn: &Connection) -> Vec<i64> {
        let mut statement = conn
            .prepare("SELECT DISTINCT id >> 37 FROM search_index_data WHERE id >> 37 > 0")
            .unwrap();
        let ids = statement.query_map([], |r| r.get(0)).unwrap();
        ids.collect::<rusqlite::Result<_>>().unwrap()
    }

    #[tokio::test]
    async fn a_group_commit_of_many_sends_writes_one_index_segment() {
        use super::super::{Durability, Store};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipc.db");
        let store = Store::open(&path).unwrap();
        // Hold the writer inside a job while 16 sends queue up, so that they share the next
        // commit, each in its own savepoint: FTS5 wrote out the words it held at each one (V15).
        let (started, writer_is_busy) = std::sync::mpsc::channel();
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let holding = store.write(Durability::Flushed, move |_| {
            started.send(()).unwrap();
            hold.recv().unwrap();
            Ok::<_, StoreError>(())
        });
        writer_is_busy.recv().unwrap();
        let sends: Vec<_> = (0..16)
            .map(|n| {
                store.write(Durability::Flushed, move |tx| {
                    tx.conn.execute(
                        "INSERT INTO messages (sender, addressed_to, recipient, kind, content,
                                               received_at, sent_by, received_by)
                         VALUES ('alice', ?1, ?1, 'direct', 'harbour news', ?2, 'alice', ?1)",
                        params![format!("peer-{n}"), "2026-01-01T00:00:00.000Z"],
                    )?;
                    Ok::<_, StoreError>(())
                })
            })
            .collect();
        release.send(()).unwrap();
        holding.await.unwrap();
        for send in sends {
            send.await.unwrap();
        }
        let stats = store.stats();
        store.shutdown().await;

        assert_eq!(
            stats.jobs - stats.commits,
            15,
            "the 16 sends shared one commit"
        );
        let conn = Connection::open(&path).unwrap();
        // With V15's trigger: segment 17, the merge of the 16 written one per send.
        assert_eq!(segments(&conn), [1], "one segment, written once");
        assert_eq!(matches(&conn, "peer-7", "harbour").len(), 1);
        assert_eq!(
            matches(&conn, "alice", "harbour").len(),
            10,
            "the first page of 16"
        );
    }

    #[test]
    fn the_expression_confines_the_query_and_adds_the_callers_token() {
        let caller = InstanceName::parse("al-ice").unwrap();
        let query = SearchQuery::parse("deploy OR api").unwrap();
        let filters = SearchFilters {
            from: InstanceName::parse("bob"),
            thread_id: Some(crate::domain::MessageId(42)),
            ..SearchFilters::default()
        };
        assert_eq!(
            index_expression(&caller, &query, &filters),
            "{subject content} : ((\"deploy\" OR \"api\")) AND parties : \"v616C2D696365\" \
             AND parties : \"s626F62\" AND parties : \"t42\""
        );
    }
}
