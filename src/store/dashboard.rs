//! The dashboard's reads: every statement behind its pages and live stream, on a read-only
//! connection of its own, so looking never queues behind the writer thread, never slows it
//! (WAL lets readers and the writer run side by side) and can never change a row
//! (`SQLITE_OPEN_READ_ONLY` and `query_only`). The dashboard is the operator's view: it reads
//! all mail, never as any one instance.
//!
//! Every list is one page of a keyset (`id < before`, or `name > after`) on an index; none
//! uses OFFSET, so a page costs the same at the millionth message as at the first.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};

use super::queries::SessionId;
use super::StoreError;
use crate::domain::{MessageId, Timestamp};
use crate::protocol::search_query::SearchQuery;

/// A message as the dashboard lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct MailRow {
    pub id: MessageId,
    pub sender: String,
    pub recipient: String,
    /// The name the sender wrote (differs from `recipient` after a forward).
    pub addressed_to: String,
    pub kind: String,
    pub subject: Option<String>,
    /// The content, or for a large message its summary (the full text is in its file).
    pub content: String,
    pub large: bool,
    pub sent_at: String,
    pub read_at: Option<String>,
    pub delivered_at: Option<String>,
    pub thread_id: MessageId,
}

/// Where a message stands: the dashboard shows it, and never changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailState {
    Waiting,
    Read,
    Delivered,
    Expired,
}

impl MailState {
    pub fn as_str(self) -> &'static str {
        match self {
            MailState::Waiting => "waiting",
            MailState::Read => "read",
            MailState::Delivered => "delivered",
            MailState::Expired => "expired",
        }
    }

    fn of(read_at: Option<&str>, delivered_at: Option<&str>) -> MailState {
        match (read_at, delivered_at) {
            (_, Some(_)) => MailState::Delivered,
            (Some(_), None) => MailState::Read,
            (None, None) => MailState::Waiting,
        }
    }
}

impl MailRow {
    pub fn state(&self) -> MailState {
        MailState::of(self.read_at.as_deref(), self.delivered_at.as_deref())
    }
}

/// An instance as the agents table shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRow {
    pub name: String,
    pub registered_at: String,
    pub last_seen_at: String,
    /// Mail for it not yet delivered.
    pub waiting: u64,
    /// When the oldest of that mail was sent.
    pub oldest_waiting: Option<String>,
    /// Its live session and when that was last used, for presence.
    pub session: Option<(SessionId, Timestamp)>,
}

/// A thread as the conversations list shows it: its first message and its newest.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadRow {
    pub thread_id: MessageId,
    pub subject: Option<String>,
    pub started_by: String,
    pub newest_id: MessageId,
    pub newest_at: String,
    pub messages: u64,
}

/// A message whose delivery state the live stream reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateRow {
    pub id: MessageId,
    pub state: MailState,
}

/// The columns every [`MailRow`] statement returns, in [`mail_row`]'s order.
macro_rules! mail_columns {
    () => {
        "SELECT id, sender, recipient, addressed_to, kind, subject, content,
                large_file IS NOT NULL, received_at, read_at, delivered_at,
                coalesce(thread_id, id)
         FROM messages"
    };
}

/// The newest mail, `?1` an id to start below (or none), `?2` how many.
pub(crate) const NEWEST_MAIL: &str = concat!(
    mail_columns!(),
    " WHERE id < coalesce(?1, 9223372036854775807) ORDER BY id DESC LIMIT ?2"
);
/// The newest `?2` messages stored after `?1`, newest first: the live stream's delta.
pub(crate) const MAIL_AFTER: &str =
    concat!(mail_columns!(), " WHERE id > ?1 ORDER BY id DESC LIMIT ?2");
/// One thread's mail, newest first: `?1` the thread, `?2` the id to start below.
pub(crate) const THREAD_MAIL: &str = concat!(
    mail_columns!(),
    " WHERE thread_id = ?1 AND id < coalesce(?2, 9223372036854775807)
      ORDER BY id DESC LIMIT ?3"
);
/// A thread's first message, which has no `thread_id` of its own when it started it.
pub(crate) const THREAD_ROOT: &str = concat!(mail_columns!(), " WHERE id = ?1");
/// Mail for one recipient (the human's inbox), newest first.
pub(crate) const MAIL_FOR: &str = concat!(
    mail_columns!(),
    " WHERE received_by = ?1 AND id < coalesce(?2, 9223372036854775807)
      ORDER BY id DESC LIMIT ?3"
);
/// Mail between two names either way, newest first: `?1` and `?2` the names.
pub(crate) const PAIR_MAIL: &str = concat!(
    mail_columns!(),
    " WHERE id IN (
        SELECT id FROM (
          SELECT id FROM messages
          WHERE sent_by = ?1 AND received_by = ?2 AND id < coalesce(?3, 9223372036854775807)
          ORDER BY id DESC LIMIT ?4)
        UNION ALL
        SELECT id FROM (
          SELECT id FROM messages
          WHERE sent_by = ?2 AND received_by = ?1 AND id < coalesce(?3, 9223372036854775807)
          ORDER BY id DESC LIMIT ?4))
      ORDER BY id DESC LIMIT ?4"
);
/// All mail matching the FTS5 expression `?1` below `?2`, newest first (the operator's search,
/// see [`super::search::operator_expression`]).
pub(crate) const SEARCH_ALL: &str = concat!(
    mail_columns!(),
    " WHERE id IN (SELECT rowid FROM search_index
                   WHERE search_index MATCH ?1 AND rowid < coalesce(?2, 9223372036854775807)
                   ORDER BY rowid DESC LIMIT ?3)
      ORDER BY id DESC"
);
/// One message by id.
pub(crate) const ONE_MAIL: &str = concat!(mail_columns!(), " WHERE id = ?1");
/// A message's content and its large-message file, if any.
pub(crate) const MAIL_CONTENT: &str = "SELECT content, large_file FROM messages WHERE id = ?1";
/// The delivery state of one message, by id.
pub(crate) const MAIL_STATE: &str = "SELECT read_at, delivered_at FROM messages WHERE id = ?1";
/// Instances by name after `?1`, `?2` how many.
pub(crate) const AGENTS: &str = "SELECT name, registered_at, last_seen_at FROM instances
     WHERE name > ?1 ORDER BY name LIMIT ?2";
/// The first `?1` instance names, for the compose box's list.
pub(crate) const AGENT_NAMES: &str =
    "SELECT name FROM instances WHERE name > '' ORDER BY name LIMIT ?1";
/// Mail waiting for `?1` and when the oldest was sent.
///
/// The count reads only the pending index; the oldest is the lowest id's `received_at` (ids
/// grow with arrival), one row, where `min(received_at)` read every waiting row: with 1,000
/// waiting messages an agent, a page of 50 agents went from 50,000 row reads to 50.
pub(crate) const WAITING_FOR: &str = "SELECT count(*),
            (SELECT received_at FROM messages
             WHERE recipient = ?1 AND delivered_at IS NULL ORDER BY id LIMIT 1)
     FROM messages WHERE recipient = ?1 AND delivered_at IS NULL";
/// The live session of `?1`: the same statement as the writer's name holder.
pub(crate) const LIVE_SESSION: &str = "SELECT id, last_used_at FROM sessions
     WHERE instance_name = ?1 AND revoked_at IS NULL ORDER BY id DESC LIMIT 1";
/// Threads by their newest message, newest first: the thread ids of the newest messages
/// below `?1`, each once.
/// Each row also says the lowest id it saw and how many, so the caller knows where the window
/// ended and whether it reached the oldest mail.
pub(crate) const NEWEST_THREADS: &str = "SELECT coalesce(thread_id, id) AS thread, max(id),
            min(id), count(*)
     FROM (SELECT id, thread_id FROM messages
           WHERE id < coalesce(?1, 9223372036854775807) AND kind <> 'system'
           ORDER BY id DESC LIMIT ?2)
     GROUP BY thread ORDER BY max(id) DESC";
/// A thread's newest message (`?1` the thread): its last reply, or its first message.
pub(crate) const THREAD_NEWEST: &str =
    "SELECT coalesce(max(id), ?1) FROM messages WHERE thread_id = ?1";
/// How many messages a thread holds.
pub(crate) const THREAD_SIZE: &str =
    "SELECT count(*) + (SELECT count(*) FROM messages WHERE id = ?1 AND thread_id IS NULL)
     FROM messages WHERE thread_id = ?1";

/// Authentication failures since `?1` by reason: the statement `status` reads.
pub(crate) const AUTH_FAILURES: &str = "SELECT reason, sum(failures) AS total FROM auth_failures
     WHERE coalesce(last_at, at) > ?1
     GROUP BY reason ORDER BY total DESC, reason";

/// How many recent messages a threads page scans for its threads.
const THREAD_SCAN: u32 = 2000;

/// Read-only connections the dashboard keeps: a few, so a page load need not wait for a live
/// stream's read (or another tab's page), and few enough that the dashboard never takes
/// more than a core or two from the broker.
const READERS: usize = 3;

/// The read-only connections. Cheap to clone; a read takes a free one, or waits its turn.
#[derive(Clone)]
pub struct Dashboard {
    /// Std `Mutex`es: each held only inside `spawn_blocking`, never across an `.await`.
    conns: Arc<Vec<Mutex<Connection>>>,
    next: Arc<AtomicUsize>,
}

impl Dashboard {
    /// Opens `path` read-only. The broker's store has created and migrated it already.
    pub fn open(path: &Path) -> Result<Dashboard, StoreError> {
        let conns = (0..READERS)
            .map(|_| open_reader(path).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Dashboard {
            conns: Arc::new(conns),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Runs `read` on a blocking thread, so the async executor never waits on SQLite.
    pub async fn read<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Reader<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let conns = self.conns.clone();
        let first = self.next.fetch_add(1, Ordering::Relaxed) % conns.len();
        tokio::task::spawn_blocking(move || {
            let conn = free_or_first(&conns, first);
            // One snapshot for the whole page, so its parts agree.
            let snapshot = conn.unchecked_transaction()?;
            let result = read(&Reader { conn: &snapshot });
            drop(snapshot);
            result
        })
        .await
        .map_err(|e| StoreError::Panicked(e.to_string()))?
    }
}

/// A free connection, trying `first` and then the others; `first` once it is free, if
/// none is.
fn free_or_first(conns: &[Mutex<Connection>], first: usize) -> MutexGuard<'_, Connection> {
    (0..conns.len())
        .map(|offset| (first + offset) % conns.len())
        .find_map(|i| match conns[i].try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        })
        .unwrap_or_else(|| {
            conns[first]
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        })
}

/// One read-only connection that cannot write even by mistake (`query_only`).
fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| StoreError::Open {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    conn.pragma_update(None, "query_only", true)?;
    conn.busy_timeout(std::time::Duration::from_secs(2))?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// One page's view of the database.
pub struct Reader<'a> {
    conn: &'a Connection,
}

impl Reader<'_> {
    /// The newest mail below `before`, newest first.
    pub fn newest_mail(
        &self,
        before: Option<MessageId>,
        limit: u32,
    ) -> Result<Vec<MailRow>, StoreError> {
        self.mail(NEWEST_MAIL, params![before, limit])
    }

    /// The newest `limit` messages stored after `after`, oldest first: when more came, the
    /// older ones are left out (a live view shows the newest, not a backlog).
    pub fn mail_after(&self, after: MessageId, limit: u32) -> Result<Vec<MailRow>, StoreError> {
        let mut newest_first = self.mail(MAIL_AFTER, params![after, limit])?;
        newest_first.reverse();
        Ok(newest_first)
    }

    /// One thread, newest first; its first message last.
    pub fn thread(
        &self,
        thread: MessageId,
        before: Option<MessageId>,
        limit: u32,
    ) -> Result<Vec<MailRow>, StoreError> {
        let mut rows = self.mail(THREAD_MAIL, params![thread, before, limit])?;
        let root_fits = (rows.len() as u32) < limit && before.is_none_or(|b| thread < b);
        if root_fits {
            let root = self.mail(THREAD_ROOT, params![thread])?;
            rows.extend(root.into_iter().filter(|row| row.thread_id == thread));
            rows.dedup_by_key(|row| row.id);
        }
        Ok(rows)
    }

    /// Mail received by `name`, newest first.
    pub fn mail_for(
        &self,
        name: &str,
        before: Option<MessageId>,
        limit: u32,
    ) -> Result<Vec<MailRow>, StoreError> {
        self.mail(MAIL_FOR, params![name, before, limit])
    }

    /// Mail between `a` and `b`, either way, newest first.
    pub fn pair(
        &self,
        a: &str,
        b: &str,
        before: Option<MessageId>,
        limit: u32,
    ) -> Result<Vec<MailRow>, StoreError> {
        self.mail(PAIR_MAIL, params![a, b, before, limit])
    }

    /// All mail matching `query`, newest first: the same query language as `search`, over
    /// every instance's mail.
    pub fn search(
        &self,
        query: &SearchQuery,
        before: Option<MessageId>,
        limit: u32,
    ) -> Result<Vec<MailRow>, StoreError> {
        let expression = super::search::operator_expression(query);
        self.mail(SEARCH_ALL, params![expression, before, limit])
    }

    pub fn one(&self, id: MessageId) -> Result<Option<MailRow>, StoreError> {
        Ok(self.mail(ONE_MAIL, params![id])?.pop())
    }

    /// A message's stored content and its large-message file path, if it has one.
    pub fn content(&self, id: MessageId) -> Result<Option<(String, Option<String>)>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(MAIL_CONTENT)?
            .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?)
    }

    /// The delivery state of each of `ids` still stored; one stored no longer was expired or
    /// purged, and is left out.
    pub fn states(&self, ids: &[MessageId]) -> Result<Vec<StateRow>, StoreError> {
        let mut statement = self.conn.prepare_cached(MAIL_STATE)?;
        let mut states = Vec::with_capacity(ids.len());
        for &id in ids {
            let found = statement
                .query_row([id], |row| {
                    let read: Option<String> = row.get(0)?;
                    let delivered: Option<String> = row.get(1)?;
                    Ok(MailState::of(read.as_deref(), delivered.as_deref()))
                })
                .optional()?;
            if let Some(state) = found {
                states.push(StateRow { id, state });
            }
        }
        Ok(states)
    }

    /// Instances by name after `after`, with the mail waiting for each.
    pub fn agents(&self, after: &str, limit: u32) -> Result<Vec<AgentRow>, StoreError> {
        let names: Vec<(String, String, String)> = self
            .conn
            .prepare_cached(AGENTS)?
            .query_map(params![after, limit], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut waiting = self.conn.prepare_cached(WAITING_FOR)?;
        let mut session = self.conn.prepare_cached(LIVE_SESSION)?;
        names
            .into_iter()
            .map(|(name, registered_at, last_seen_at)| {
                let (count, oldest): (i64, Option<String>) =
                    waiting.query_row([&name], |row| Ok((row.get(0)?, row.get(1)?)))?;
                let live = session
                    .query_row([&name], |row| Ok((SessionId(row.get(0)?), row.get(1)?)))
                    .optional()?;
                Ok(AgentRow {
                    name,
                    registered_at,
                    last_seen_at,
                    waiting: count.max(0) as u64,
                    oldest_waiting: oldest,
                    session: live,
                })
            })
            .collect()
    }

    /// The first `limit` instance names, by name.
    pub fn agent_names(&self, limit: u32) -> Result<Vec<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(AGENT_NAMES)?
            .query_map([limit], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// Threads whose newest message is below `before`, newest first: found window by window
    /// among the newest messages, so a page costs about the same however much mail is stored,
    /// and a long thread (more messages than one window) never hides the threads behind it.
    pub fn threads(
        &self,
        before: Option<MessageId>,
        limit: u32,
    ) -> Result<Vec<ThreadRow>, StoreError> {
        let mut threads = Vec::new();
        let mut window_below = before;
        while threads.len() < limit as usize {
            let window: Vec<(MessageId, MessageId, MessageId, u32)> = self
                .conn
                .prepare_cached(NEWEST_THREADS)?
                .query_map(params![window_below, THREAD_SCAN], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let scanned: u32 = window.iter().map(|(_, _, _, count)| count).sum();
            let Some(lowest) = window.iter().map(|(_, _, low, _)| *low).min() else {
                break;
            };
            for (thread_id, newest_id, _, _) in window {
                if threads.len() == limit as usize {
                    break;
                }
                if let Some(thread) = self.thread_row(thread_id, newest_id)? {
                    threads.push(thread);
                }
            }
            if scanned < THREAD_SCAN {
                break; // the window reached the oldest message
            }
            window_below = Some(lowest);
        }
        Ok(threads)
    }

    /// The list entry of a thread seen with `newest_id` as its newest message in a window, or
    /// `None` if it has a newer one (it was listed on an earlier page or window).
    fn thread_row(
        &self,
        thread_id: MessageId,
        newest_id: MessageId,
    ) -> Result<Option<ThreadRow>, StoreError> {
        let newest_anywhere: MessageId = self
            .conn
            .prepare_cached(THREAD_NEWEST)?
            .query_row([thread_id], |row| row.get(0))?;
        if newest_anywhere != newest_id {
            return Ok(None);
        }
        let root = self.mail(THREAD_ROOT, params![thread_id])?.pop();
        let Some(newest) = self.mail(ONE_MAIL, params![newest_id])?.pop() else {
            return Ok(None);
        };
        let messages: i64 = self
            .conn
            .prepare_cached(THREAD_SIZE)?
            .query_row([thread_id], |row| row.get(0))?;
        Ok(Some(ThreadRow {
            thread_id,
            subject: root
                .as_ref()
                .and_then(|r| r.subject.clone())
                .or(newest.subject),
            started_by: root.map_or_else(|| newest.sender.clone(), |r| r.sender),
            newest_id,
            newest_at: newest.sent_at,
            messages: messages.max(1) as u64,
        }))
    }

    /// Authentication failures since `since`, summed by reason, most first (as `status`).
    pub fn auth_failures(&self, since: &str) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(AUTH_FAILURES)?
            .query_map([since], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// The database's size in bytes (pages in use times the page size).
    pub fn database_bytes(&self) -> Result<u64, StoreError> {
        let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let size: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok((pages.max(0) * size.max(0)) as u64)
    }

    fn mail(&self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<MailRow>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(sql)?
            .query_map(params, mail_row)?
            .collect::<rusqlite::Result<_>>()?)
    }
}

fn mail_row(row: &Row<'_>) -> rusqlite::Result<MailRow> {
    Ok(MailRow {
        id: row.get(0)?,
        sender: row.get(1)?,
        recipient: row.get(2)?,
        addressed_to: row.get(3)?,
        kind: row.get(4)?,
        subject: row.get(5)?,
        content: row.get(6)?,
        large: row.get(7)?,
        sent_at: row.get(8)?,
        read_at: row.get(9)?,
        delivered_at: row.get(10)?,
        thread_id: row.get(11)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_dashboards_connections_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipc.db");
        let writer = super::super::open_side_connection(&path).unwrap();
        writer
            .execute_batch(
                "INSERT INTO messages (id, sender, addressed_to, recipient, content, received_at)
                 VALUES (1, 'alice', 'bob', 'bob', 'hi', '2026-01-01T00:00:00.000Z');",
            )
            .unwrap();
        let dashboard = Dashboard::open(&path).unwrap();
        for _ in 0..READERS + 1 {
            let tried = dashboard
                .read(|reader| {
                    Ok(reader
                        .conn
                        .execute("UPDATE messages SET delivered_at = 'x' WHERE id = 1", [])
                        .is_err())
                })
                .await
                .unwrap();
            assert!(tried, "a dashboard connection wrote");
        }
        let rows = dashboard
            .read(|reader| reader.newest_mail(None, 10))
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].state(), MailState::Waiting);
    }

    /// A thread longer than one scan window (2,000 messages) does not end the list: the
    /// threads behind it are on the same and the following pages.
    #[tokio::test]
    async fn a_thread_longer_than_a_window_hides_no_older_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipc.db");
        let writer = super::super::open_side_connection(&path).unwrap();
        let insert = "INSERT INTO messages (id, sender, addressed_to, recipient, content,
                          received_at, thread_id)
                      VALUES (?1, 'alice', 'bob', 'bob', 'hi', '2026-01-01T00:00:00.000Z', ?2)";
        // Ten one-message threads (ids 1..=10), then one thread of 2,500 (ids 11..=2510).
        for id in 1..=10i64 {
            writer.execute(insert, params![id, None::<i64>]).unwrap();
        }
        writer.execute(insert, params![11i64, None::<i64>]).unwrap();
        for id in 12..=2510i64 {
            writer.execute(insert, params![id, 11i64]).unwrap();
        }
        let dashboard = Dashboard::open(&path).unwrap();
        let first = dashboard.read(|r| r.threads(None, 5)).await.unwrap();
        let ids: Vec<i64> = first.iter().map(|t| t.thread_id.0).collect();
        assert_eq!(ids, [11, 10, 9, 8, 7]);
        assert_eq!(first[0].messages, 2500);
        let next = first.last().unwrap().newest_id;
        let second = dashboard
            .read(move |r| r.threads(Some(next), 50))
            .await
            .unwrap();
        let ids: Vec<i64> = second.iter().map(|t| t.thread_id.0).collect();
        assert_eq!(ids, [6, 5, 4, 3, 2, 1]);
    }
}
