//! `/events`: the live stream (server-sent events) behind every page's updates.
//!
//! A stream waits on the broker's change signal (bumped after each commit of mail, delivery
//! state or presence; see `broker::doorbell`), never on a timer over the database. Woken, it
//! reads the delta from the read-only store: the newest mail stored after the last id it sent
//! (`message` events, each the rendered `<li>` the page inserts; when more arrived than one
//! read sends, a `skipped` event says how many were left out) and the delivery state of the
//! recent messages it tracks (`state` events). Wake-ups are coalesced to at most one read per
//! [`COALESCE`] per stream, so many busy agents do not become a read storm, and the number of
//! open streams is capped ([`MAX_STREAMS`]) so a flood of them cannot take the broker down.
//!
//! A stream opened with `agents=1` (a page showing the first page of the agents table) also
//! gets `agents` events: the table's rows again, when they changed. They are read at most once
//! per [`AGENTS_EVERY`] after a change, and at least every [`AGENTS_AT_LEAST`] without one,
//! since presence also changes by time passing (an agent idle past the online window).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde_json::json;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::html::Html;
use super::pages::message_item;
use super::WebState;
use crate::domain::MessageId;
use crate::store::dashboard::{MailRow, MailState};

/// The most live streams open at once (every dashboard tab holds one).
pub const MAX_STREAMS: usize = 64;
/// The least time between two reads of one stream: well inside the second in which a new
/// message must show, and few enough reads that open streams cost the broker little.
pub const COALESCE: Duration = Duration::from_millis(250);
/// The most messages one read sends. When more arrived since the last read, only the newest
/// are sent and a `skipped` event says how many were left out: a person cannot read faster,
/// and rendering every message of 50 busy agents for every open tab slowed the broker.
const DELTA: u32 = 50;
/// How many recent messages a stream watches the delivery state of.
const TRACKED: usize = 200;
/// The least time between two reads of the agents table by one stream.
pub const AGENTS_EVERY: Duration = Duration::from_secs(1);
/// The most time between two reads of the agents table by one stream.
pub const AGENTS_AT_LEAST: Duration = Duration::from_secs(15);

/// A stream's view of the agents table, when its page shows one.
struct AgentsFeed {
    /// The rows last sent (or rendered with the page: the first read sends them if changed).
    last_rows: String,
    last_read: Instant,
    /// A change came since the last read.
    dirty: bool,
}

impl AgentsFeed {
    fn due(&self) -> Instant {
        if self.dirty {
            self.last_read + AGENTS_EVERY
        } else {
            self.last_read + AGENTS_AT_LEAST
        }
    }
}

/// One open stream's place: what it sent, and the states it last reported.
struct Cursor {
    state: Arc<WebState>,
    changes: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
    last_id: MessageId,
    tracked: HashMap<MessageId, MailState>,
    /// Tracked ids, oldest first, so the map stays bounded.
    order: VecDeque<MessageId>,
    pending: VecDeque<Event>,
    last_read: Option<Instant>,
    /// Read at once, without waiting for a change: true only for the first read.
    behind: bool,
    agents: Option<AgentsFeed>,
    _permit: OwnedSemaphorePermit,
}

/// `GET /events?after=ID`: mail after `ID` (or after the newest now), then everything new.
pub async fn events(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Ok(permit) = state.streams.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("too many live streams are open (the limit is {MAX_STREAMS}); close other dashboard tabs and reload\n"),
        )
            .into_response();
    };
    // A reconnecting EventSource repeats the page's `after` and adds the id it last got.
    let given = [
        params.get("after").map(String::as_str),
        headers.get("last-event-id").and_then(|v| v.to_str().ok()),
    ]
    .into_iter()
    .flatten()
    .filter_map(|text| text.parse::<i64>().ok())
    .max()
    .map(MessageId);
    // Subscribed before the first read, so a commit between the two is not missed.
    let changes = state.broker.changes();
    let recent = state
        .dashboard
        .read(|reader| reader.newest_mail(None, TRACKED as u32))
        .await;
    let recent = match recent {
        Ok(recent) => recent,
        Err(e) => return super::pages::PageError::Store(e).into_response(),
    };
    let newest = recent.first().map_or(MessageId(0), |row| row.id);
    let mut cursor = Cursor {
        changes,
        stop: state.stop.clone(),
        state,
        last_id: given.map_or(newest, |given| given.min(newest)),
        tracked: HashMap::new(),
        order: VecDeque::new(),
        pending: VecDeque::new(),
        last_read: None,
        // The first read runs at once: it sends what came after `given`.
        behind: true,
        agents: (params.get("agents").map(String::as_str) == Some("1")).then(|| AgentsFeed {
            last_rows: String::new(),
            last_read: Instant::now(),
            dirty: true,
        }),
        _permit: permit,
    };
    let start = cursor.last_id;
    for row in recent.iter().rev().filter(|row| row.id <= start) {
        cursor.track(row.id, row.state());
    }
    Sse::new(stream_of(cursor))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn stream_of(cursor: Cursor) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(cursor, |mut cursor| async move {
        loop {
            if let Some(event) = cursor.pending.pop_front() {
                return Some((Ok(event), cursor));
            }
            if !cursor.wait().await {
                return None;
            }
            cursor.read().await;
        }
    })
}

impl Cursor {
    /// Waits for a change (and out the coalescing interval); false once the dashboard stops.
    async fn wait(&mut self) -> bool {
        if !self.behind {
            let agents_due = self.agents.as_ref().map(AgentsFeed::due);
            let agents_timer = async move {
                match agents_due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                    if let Some(agents) = self.agents.as_mut() {
                        agents.dirty = true;
                    }
                }
                _ = agents_timer => {}
                _ = self.stop.wait_for(|stop| *stop) => return false,
            }
        }
        if let Some(last) = self.last_read {
            tokio::select! {
                _ = tokio::time::sleep_until(last + COALESCE) => {}
                _ = self.stop.wait_for(|stop| *stop) => return false,
            }
        }
        // Everything committed up to now is in the read below.
        self.changes.borrow_and_update();
        !*self.stop.borrow()
    }

    /// Reads the delta and queues its events.
    async fn read(&mut self) {
        self.last_read = Some(Instant::now());
        let after = self.last_id;
        // Delivered is final: only mail still on its way can change state.
        let ids: Vec<MessageId> = self
            .order
            .iter()
            .copied()
            .filter(|id| self.tracked.get(id) != Some(&MailState::Delivered))
            .collect();
        let read = self
            .state
            .dashboard
            .read(move |reader| Ok((reader.mail_after(after, DELTA)?, reader.states(&ids)?)))
            .await;
        let (mail, states) = match read {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!("the dashboard's live stream could not read: {e}");
                return;
            }
        };
        self.behind = false;
        if let Some(oldest) = mail.first() {
            let left_out = oldest.id.0 - after.0 - 1;
            if mail.len() as u32 == DELTA && left_out > 0 {
                self.pending.push_back(skipped_event(left_out));
            }
        }
        for state in states {
            if self.tracked.get(&state.id) != Some(&state.state) {
                self.tracked.insert(state.id, state.state);
                self.pending.push_back(state_event(state.id, state.state));
            }
        }
        for row in mail {
            self.last_id = row.id;
            self.track(row.id, row.state());
            self.pending.push_back(message_event(&row));
        }
        self.read_agents().await;
    }

    /// Sends the agents table's rows again if they are due and changed.
    async fn read_agents(&mut self) {
        let Some(agents) = self.agents.as_ref() else {
            return;
        };
        if Instant::now() < agents.due() {
            return;
        }
        let read = self
            .state
            .dashboard
            .read(|reader| reader.agents("", super::pages::PAGE))
            .await;
        let rows = match read {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!("the dashboard's live stream could not read the agents: {e}");
                return;
            }
        };
        let mut html = Html::new();
        super::pages::agent_rows(&mut html, &self.state, &rows);
        let html = html.into_string();
        let Some(agents) = self.agents.as_mut() else {
            return;
        };
        agents.last_read = Instant::now();
        agents.dirty = false;
        if html != agents.last_rows {
            self.pending.push_back(
                Event::default()
                    .event("agents")
                    .data(json!({"html": html}).to_string()),
            );
            agents.last_rows = html;
        }
    }

    fn track(&mut self, id: MessageId, state: MailState) {
        if self.tracked.insert(id, state).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > TRACKED {
            if let Some(oldest) = self.order.pop_front() {
                self.tracked.remove(&oldest);
            }
        }
    }
}

/// A new message: its id (the event id, so a reconnect resumes after it), where it belongs,
/// and its `<li>` as the pages render it (escaped there).
fn message_event(row: &MailRow) -> Event {
    let mut item = Html::new();
    message_item(&mut item, row);
    let data = json!({
        "id": row.id.0,
        "thread": row.thread_id.0,
        "from": row.sender,
        "to": row.recipient,
        "html": item.as_str(),
    });
    Event::default()
        .event("message")
        .id(row.id.0.to_string())
        .data(data.to_string())
}

/// About `count` messages (ids are a sequence) arrived too fast to be sent one by one.
fn skipped_event(count: i64) -> Event {
    Event::default()
        .event("skipped")
        .data(json!({"count": count}).to_string())
}

fn state_event(id: MessageId, state: MailState) -> Event {
    Event::default()
        .event("state")
        .data(json!({"id": id.0, "state": state.as_str()}).to_string())
}
