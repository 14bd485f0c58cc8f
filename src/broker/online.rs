//! Presence: who can be reached now. An instance is `online` while a connection of its
//! session waits in a long-poll (`check` or `count` with `wait_ms`, or `watch`), or while its
//! session made a request within [`ONLINE_WINDOW`]; `push` while a channel-mode MCP server
//! holds a `push` watch of its session (or ended one within [`PUSH_GRACE`]). `list` and
//! `send` report it.
//!
//! The last use is kept in memory as well as in the store: the store refreshes a session's
//! `last_used_at` at most once a minute (see `TOUCH_GRANULARITY`), which is too coarse for a
//! one-minute window. After a restart the memory is empty and the stored time stands in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::listening::Listening;
use super::watch::Watchers;
use crate::domain::Timestamp;
use crate::store::queries::SessionId;

/// A session that made a request this recently counts as online. Clients in use talk to the
/// broker far more often than this (the MCP server on every tool call, the hook on every
/// prompt, a channel server or a waiting hook without pause), and a minute is short enough
/// that "online" still means a sender can expect its mail to be seen soon.
pub const ONLINE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// A session's `push` stays true this long after its last push watch ended: a channel-mode
/// MCP server issues its next watch at once after each push, and the moment between the two
/// must not read as "not pushing".
pub const PUSH_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How many sessions' last uses are kept before the stale ones are dropped.
const ACTIVITY_PRUNE_AT: usize = 4096;

/// Each session's last counted request, by the broker clock. A std `Mutex`: it guards only
/// the map, is never held across an `.await`, and is taken on the writer thread.
#[derive(Debug, Default)]
pub struct Activity {
    last_use: Mutex<HashMap<SessionId, Timestamp>>,
}

impl Activity {
    /// Records a request of `session` at `now`.
    pub fn used(&self, session: SessionId, now: Timestamp) {
        let mut last_use = self.last_use.lock().expect("activity map poisoned");
        if last_use.len() >= ACTIVITY_PRUNE_AT {
            let stale = now.minus(ONLINE_WINDOW);
            last_use.retain(|_, at| *at >= stale);
        }
        last_use.insert(session, now);
    }

    fn last_use(&self, session: SessionId) -> Option<Timestamp> {
        let last_use = self.last_use.lock().expect("activity map poisoned");
        last_use.get(&session).copied()
    }
}

/// Whether an instance can be reached now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reach {
    pub online: bool,
    pub push: bool,
}

/// Everything that decides [`Reach`], shareable with jobs on the writer thread.
#[derive(Clone)]
pub struct OnlineRule {
    pub(super) activity: Arc<Activity>,
    pub(super) listening: Arc<Listening>,
    pub(super) watchers: Arc<Watchers>,
}

impl OnlineRule {
    /// The reach of the instance whose live session is `session`, last used (as stored) at
    /// `stored_last_use`; an instance with no live session is offline.
    pub fn reach(&self, session: Option<(SessionId, Timestamp)>, now: Timestamp) -> Reach {
        let Some((session, stored_last_use)) = session else {
            return Reach::default();
        };
        let last_use = self
            .activity
            .last_use(session)
            .map_or(stored_last_use, |seen| seen.max(stored_last_use));
        let recent = last_use >= now.minus(ONLINE_WINDOW);
        let push = self.watchers.is_pushing(session, now.minus(PUSH_GRACE));
        Reach {
            online: recent || push || self.listening.is_waiting(session),
            push,
        }
    }
}
