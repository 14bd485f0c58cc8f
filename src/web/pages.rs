//! The dashboard's pages, rendered on the server from the read-only store (see
//! `store::dashboard`): overview, agents, conversations, a thread, search, the broker, the
//! human's inbox, and a large message's content. Every list is one page of 50 with a
//! `rel="next"` link when more follow. Every string from the database reaches the page only
//! through [`Html::text`], which escapes it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::html::Html;
use super::WebState;
use crate::domain::MessageId;
use crate::protocol::search_query::SearchQuery;
use crate::store::dashboard::{AgentRow, MailRow, ThreadRow};
use crate::store::StoreError;

/// Items on one page of any list.
pub const PAGE: u32 = 50;
/// Agent names offered in the compose box's list.
const COMPOSE_NAMES: u32 = 200;

type Params = Query<HashMap<String, String>>;

/// Why a page could not be shown; each answers with a short page that says so.
pub enum PageError {
    /// A parameter that is not what it should be: 400, saying which and what to give.
    BadRequest(String),
    NotFound(String),
    /// The database could not be read: 500, the cause logged, never shown (no SQL text).
    Store(StoreError),
}

impl From<StoreError> for PageError {
    fn from(error: StoreError) -> Self {
        PageError::Store(error)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, text) = match self {
            PageError::BadRequest(text) => (StatusCode::BAD_REQUEST, text),
            PageError::NotFound(text) => (StatusCode::NOT_FOUND, text),
            PageError::Store(error) => {
                tracing::error!("the dashboard could not read the database: {error}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the dashboard could not read the database; the broker's log says why. Reload to try again".to_owned(),
                )
            }
        };
        let mut body = Html::new();
        body.raw("<p class=\"error\">").text(&text).raw("</p>");
        (
            status,
            html_response(layout("Error", "", &Html::new(), &body)),
        )
            .into_response()
    }
}

type PageResult = Result<Response, PageError>;

/// The page a request without the cookie gets: how to log in, and nothing else.
pub fn login_help(status: StatusCode) -> Response {
    let mut body = Html::new();
    body.raw(
        "<h1>Log in to the claude-ipc dashboard</h1>\
         <p>This dashboard shows only to the person who runs the broker. Run</p>\
         <pre>claude-ipc web</pre>\
         <p>in a terminal: it prints the login link (and opens it when it can).</p>",
    );
    (status, html_response(bare_layout("Log in", &body))).into_response()
}

/// The whole document around a page's body. `live` carries the body's data attributes that
/// tell the script which new messages belong on this page.
fn layout(title: &str, active: &str, live: &Html, body: &Html) -> String {
    let mut page = Html::new();
    page.raw("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">")
        .raw("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">")
        .raw("<title>")
        .text(title)
        .raw(" · claude-ipc</title>")
        .raw("<link rel=\"stylesheet\" href=\"/assets/style.css\">")
        .raw("<link rel=\"icon\" href=\"/assets/icon.svg\" type=\"image/svg+xml\">")
        .raw("<script src=\"/assets/live.js\" defer></script></head><body")
        .fragment(live)
        .raw("><header><nav>");
    for (href, label) in NAV {
        page.raw("<a href=\"").raw(href).raw("\"");
        if *label == active {
            page.raw(" aria-current=\"page\"");
        }
        page.raw(">").raw(label).raw("</a>");
    }
    page.raw("</nav></header><main>")
        .fragment(body)
        .raw("</main></body></html>");
    page.into_string()
}

/// A document with no navigation (the log-in help shows nothing of the dashboard).
fn bare_layout(title: &str, body: &Html) -> String {
    let mut page = Html::new();
    page.raw("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>")
        .text(title)
        .raw(" · claude-ipc</title><link rel=\"stylesheet\" href=\"/assets/style.css\"></head><body><main>")
        .fragment(body)
        .raw("</main></body></html>");
    page.into_string()
}

const NAV: &[(&str, &str)] = &[
    ("/", "Overview"),
    ("/agents", "Agents"),
    ("/conversations", "Conversations"),
    ("/inbox", "Inbox"),
    ("/search", "Search"),
    ("/broker", "Broker"),
];

fn html_response(document: String) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        document,
    )
        .into_response()
}

/// `?before=ID`: where a page of mail starts.
fn before(params: &HashMap<String, String>) -> Result<Option<MessageId>, PageError> {
    match params.get("before").map(String::as_str) {
        None | Some("") => Ok(None),
        Some(text) => text.parse::<i64>().map(|id| Some(MessageId(id))).map_err(|_| {
            PageError::BadRequest(format!(
                "`before` must be a message id (a whole number), not {text:?}; follow the page's own \"Older\" link"
            ))
        }),
    }
}

/// `/`: agents, the newest mail (live), and the compose box.
pub async fn overview(State(state): State<Arc<WebState>>, Query(params): Params) -> PageResult {
    let before = before(&params)?;
    let (agents, mail, names) = state
        .dashboard
        .read(move |reader| {
            Ok((
                reader.agents("", PAGE + 1)?,
                reader.newest_mail(before, PAGE + 1)?,
                reader.agent_names(COMPOSE_NAMES)?,
            ))
        })
        .await?;
    let mut body = Html::new();
    body.raw("<h1>Overview</h1><section><h2>Agents</h2>");
    agents_table(&mut body, &state, &agents, "/agents?after=");
    body.raw("</section><section><h2>Write as ")
        .text(state.human())
        .raw("</h2>");
    compose_form(&mut body, &state, &names, None, "/");
    body.raw("</section><section><h2>Newest messages</h2>");
    mail_list(&mut body, &mail, "/?before=");
    body.raw("</section>");
    let mut live = Html::new();
    live.raw(" data-live=\"all\"");
    if before.is_some() {
        // An older page is history: new mail belongs on the first page only.
        live = Html::new();
    }
    Ok(html_response(layout("Overview", "Overview", &live, &body)))
}

/// `/agents`: every instance, by name, 50 a page.
pub async fn agents(State(state): State<Arc<WebState>>, Query(params): Params) -> PageResult {
    let after = params.get("after").cloned().unwrap_or_default();
    let first_page = after.is_empty();
    let agents = state
        .dashboard
        .read(move |reader| reader.agents(&after, PAGE + 1))
        .await?;
    let mut body = Html::new();
    body.raw("<h1>Agents</h1>");
    agents_table_from(&mut body, &state, &agents, "/agents?after=", first_page);
    Ok(html_response(layout(
        "Agents",
        "Agents",
        &Html::new(),
        &body,
    )))
}

fn agents_table(body: &mut Html, state: &WebState, agents: &[AgentRow], next: &'static str) {
    agents_table_from(body, state, agents, next, true)
}

/// The agents table; `first_page` marks it for live updates (the stream sends the first
/// page's rows again when they change).
fn agents_table_from(
    body: &mut Html,
    state: &WebState,
    agents: &[AgentRow],
    next: &'static str,
    first_page: bool,
) {
    let shown = &agents[..agents.len().min(PAGE as usize)];
    body.raw("<table id=\"agents\"");
    if first_page {
        body.raw(" data-live=\"agents\"");
    }
    body.raw(
        "><thead><tr><th>Name</th><th>Online</th><th>Push</th>\
         <th>Last seen</th><th>Mail waiting</th><th>Oldest waiting since</th></tr></thead><tbody>",
    );
    agent_rows(body, state, shown);
    body.raw("</tbody></table>");
    if agents.len() > PAGE as usize {
        if let Some(last) = shown.last() {
            body.raw("<p><a rel=\"next\" href=\"")
                .raw(next)
                .query_value(&last.name)
                .raw("\">More agents</a></p>");
        }
    }
}

/// One `<tr>` per agent: presence, last seen, mail waiting and since when (stuck mail marked).
pub fn agent_rows(body: &mut Html, state: &WebState, agents: &[AgentRow]) {
    let stuck_before = state.stuck_before();
    for agent in agents {
        let reach = state.broker.reach(agent.session);
        let stuck = agent
            .oldest_waiting
            .as_deref()
            .is_some_and(|oldest| oldest < stuck_before.as_str());
        body.raw("<tr data-agent=\"")
            .text(&agent.name)
            .raw("\" data-online=\"")
            .raw(if reach.online { "true" } else { "false" })
            .raw("\" data-push=\"")
            .raw(if reach.push { "true" } else { "false" })
            .raw("\" data-waiting=\"")
            .value(agent.waiting)
            .raw("\"");
        if stuck {
            body.raw(" class=\"stuck\"");
        }
        body.raw("><td><a href=\"/conversations?with=")
            .query_value(&agent.name)
            .raw("\">")
            .text(&agent.name)
            .raw("</a></td><td>")
            .raw(if reach.online { "online" } else { "offline" })
            .raw("</td><td>")
            .raw(if reach.push { "push" } else { "" })
            .raw("</td><td><time>")
            .text(&agent.last_seen_at)
            .raw("</time></td><td>")
            .value(agent.waiting)
            .raw("</td><td>");
        if let Some(oldest) = &agent.oldest_waiting {
            body.raw("<time>").text(oldest).raw("</time>");
            if stuck {
                body.raw(" <strong>stuck</strong>");
            }
        }
        body.raw("</td></tr>");
    }
}

/// What the compose box is filled with when it answers a thread.
struct Reply<'a> {
    to: &'a str,
    subject: Option<&'a str>,
    /// The message answered: one the human sent or received, or none (a new thread).
    reply_to: Option<MessageId>,
}

/// The compose box: to one agent or `*`, subject, content, and `reply_to` when answering.
fn compose_form(
    body: &mut Html,
    state: &WebState,
    names: &[String],
    reply: Option<Reply<'_>>,
    back: &str,
) {
    body.raw("<form id=\"compose\" method=\"post\" action=\"/compose\">")
        .raw("<input type=\"hidden\" name=\"back\" value=\"")
        .text(back)
        .raw("\"><label>To <input name=\"to\" list=\"agent-names\" required placeholder=\"an agent, or * for everyone\" value=\"");
    if let Some(reply) = &reply {
        body.text(reply.to);
    }
    body.raw("\"></label><datalist id=\"agent-names\"><option value=\"*\">everyone</option>");
    for name in names.iter().filter(|name| *name != state.human()) {
        body.raw("<option value=\"").text(name).raw("\">");
    }
    body.raw("</datalist><label>Subject <input name=\"subject\" maxlength=\"200\" value=\"");
    if let Some(subject) = reply.as_ref().and_then(|r| r.subject) {
        body.text(subject);
    }
    body.raw("\"></label>");
    if let Some(parent) = reply.as_ref().and_then(|r| r.reply_to) {
        body.raw("<input type=\"hidden\" name=\"reply_to\" value=\"")
            .value(parent.0)
            .raw("\">");
    }
    body.raw("<label>Message <textarea name=\"content\" rows=\"4\" required></textarea></label>")
        .raw("<button type=\"submit\">Send</button></form>");
}

/// A list of messages, `<ol id="messages">`, with a link to the next (older) page.
fn mail_list(body: &mut Html, mail: &[MailRow], next: &'static str) {
    message_list(body, "<ol id=\"messages\">", mail);
    older_link(body, mail, |h| {
        h.raw(next);
    });
}

fn older_link(body: &mut Html, mail: &[MailRow], href: impl FnOnce(&mut Html)) {
    if mail.len() > PAGE as usize {
        if let Some(last) = mail.get(PAGE as usize - 1) {
            body.raw("<p><a rel=\"next\" href=\"");
            href(body);
            body.value(last.id.0).raw("\">Older</a></p>");
        }
    }
}

/// A page of messages as the list `open` starts (`<ol id="…">`): the first [`PAGE`] of `mail`,
/// which holds one more when older ones follow.
fn message_list(body: &mut Html, open: &'static str, mail: &[MailRow]) {
    body.raw(open);
    for row in mail.iter().take(PAGE as usize) {
        message_item(body, row);
    }
    body.raw("</ol>");
}

/// One message: who to whom, subject, time, delivery state, and the content (a large
/// message's summary and a link to its content).
pub fn message_item(body: &mut Html, row: &MailRow) {
    body.raw("<li class=\"message\" data-id=\"")
        .value(row.id.0)
        .raw("\" data-state=\"")
        .raw(row.state().as_str())
        .raw("\" data-kind=\"")
        .text(&row.kind)
        .raw("\" data-thread=\"")
        .value(row.thread_id.0)
        .raw("\" data-to=\"")
        .text(&row.recipient)
        .raw("\"><div class=\"head\"><span class=\"from\">")
        .text(&row.sender)
        .raw("</span> → <span class=\"to\">")
        .text(&row.recipient)
        .raw("</span>");
    if row.addressed_to != row.recipient {
        body.raw(" <span class=\"via\">(sent to ")
            .text(&row.addressed_to)
            .raw(")</span>");
    }
    body.raw(" <a class=\"subject\" href=\"/thread/")
        .value(row.thread_id.0)
        .raw("\">")
        .text(row.subject.as_deref().unwrap_or("(no subject)"))
        .raw("</a> <time>")
        .text(&row.sent_at)
        .raw("</time> <span class=\"state\">")
        .raw(row.state().as_str())
        .raw("</span> <span class=\"kind\">")
        .text(&row.kind)
        .raw("</span> <span class=\"id\">#")
        .value(row.id.0)
        .raw("</span></div><pre class=\"content\">")
        .text(&row.content)
        .raw("</pre>");
    if row.large {
        body.raw("<a class=\"large\" href=\"/message/")
            .value(row.id.0)
            .raw("/content\">Full content</a>");
    }
    body.raw("</li>");
}

/// `/conversations`: threads newest first; with `?with=A&and=B` one pair's mail; with only
/// `?with=A`, A's threads.
pub async fn conversations(
    State(state): State<Arc<WebState>>,
    Query(params): Params,
) -> PageResult {
    let before = before(&params)?;
    let with = params.get("with").filter(|w| !w.is_empty()).cloned();
    let and = params.get("and").filter(|w| !w.is_empty()).cloned();
    if let (Some(a), Some(b)) = (with.clone(), and.clone()) {
        return pair(state, a, b, before).await;
    }
    if let Some(name) = with {
        return agent_mail(state, name, before).await;
    }
    let threads = state
        .dashboard
        .read(move |reader| reader.threads(before, PAGE + 1))
        .await?;
    let mut body = Html::new();
    body.raw("<h1>Conversations</h1>");
    threads_list(&mut body, &threads);
    Ok(html_response(layout(
        "Conversations",
        "Conversations",
        &Html::new(),
        &body,
    )))
}

fn threads_list(body: &mut Html, threads: &[ThreadRow]) {
    let shown = &threads[..threads.len().min(PAGE as usize)];
    body.raw("<ul id=\"threads\">");
    for thread in shown {
        body.raw("<li data-thread=\"")
            .value(thread.thread_id.0)
            .raw("\"><a href=\"/thread/")
            .value(thread.thread_id.0)
            .raw("\">")
            .text(thread.subject.as_deref().unwrap_or("(no subject)"))
            .raw("</a> started by <span class=\"from\">")
            .text(&thread.started_by)
            .raw("</span>, ")
            .value(thread.messages)
            .raw(if thread.messages == 1 {
                " message"
            } else {
                " messages"
            })
            .raw(", newest <time>")
            .text(&thread.newest_at)
            .raw("</time></li>");
    }
    body.raw("</ul>");
    if threads.len() > PAGE as usize {
        if let Some(last) = shown.last() {
            body.raw("<p><a rel=\"next\" href=\"/conversations?before=")
                .value(last.newest_id.0)
                .raw("\">Older</a></p>");
        }
    }
}

/// One pair's mail, either way, newest first.
async fn pair(state: Arc<WebState>, a: String, b: String, before: Option<MessageId>) -> PageResult {
    let (first, second) = (a.clone(), b.clone());
    let mail = state
        .dashboard
        .read(move |reader| reader.pair(&first, &second, before, PAGE + 1))
        .await?;
    let mut body = Html::new();
    body.raw("<h1>Between ")
        .text(&a)
        .raw(" and ")
        .text(&b)
        .raw("</h1>");
    message_list(&mut body, "<ol id=\"messages\">", &mail);
    older_link(&mut body, &mail, |h| {
        h.raw("/conversations?with=")
            .query_value(&a)
            .raw("&amp;and=")
            .query_value(&b)
            .raw("&amp;before=");
    });
    let mut live = Html::new();
    live.raw(" data-live=\"pair\" data-a=\"")
        .text(&a)
        .raw("\" data-b=\"")
        .text(&b)
        .raw("\"");
    if before.is_some() {
        live = Html::new();
    }
    Ok(html_response(layout(
        "Conversation",
        "Conversations",
        &live,
        &body,
    )))
}

/// One agent's mail: what it received, newest first, with links to each of its pairs.
async fn agent_mail(state: Arc<WebState>, name: String, before: Option<MessageId>) -> PageResult {
    let who = name.clone();
    let mail = state
        .dashboard
        .read(move |reader| reader.mail_for(&who, before, PAGE + 1))
        .await?;
    let mut body = Html::new();
    body.raw("<h1>Mail received by ").text(&name).raw("</h1>");
    let mut partners: Vec<&str> = mail.iter().map(|m| m.sender.as_str()).collect();
    partners.sort_unstable();
    partners.dedup();
    if !partners.is_empty() {
        body.raw("<p>Conversations with: ");
        for partner in partners {
            body.raw("<a href=\"/conversations?with=")
                .query_value(&name)
                .raw("&amp;and=")
                .query_value(partner)
                .raw("\">")
                .text(partner)
                .raw("</a> ");
        }
        body.raw("</p>");
    }
    message_list(&mut body, "<ol id=\"messages\">", &mail);
    older_link(&mut body, &mail, |h| {
        h.raw("/conversations?with=")
            .query_value(&name)
            .raw("&amp;before=");
    });
    Ok(html_response(layout(
        "Agent",
        "Conversations",
        &Html::new(),
        &body,
    )))
}

/// `/thread/ID`: one thread, newest first, with a reply box.
pub async fn thread(
    State(state): State<Arc<WebState>>,
    Path(id): Path<String>,
    Query(params): Params,
) -> PageResult {
    let thread = id.parse::<i64>().map(MessageId).map_err(|_| {
        PageError::BadRequest(format!(
            "a thread is named by a message id (a whole number), not {id:?}"
        ))
    })?;
    let before = before(&params)?;
    let (mail, names) = state
        .dashboard
        .read(move |reader| {
            Ok((
                reader.thread(thread, before, PAGE + 1)?,
                reader.agent_names(COMPOSE_NAMES)?,
            ))
        })
        .await?;
    if mail.is_empty() {
        return Err(PageError::NotFound(format!(
            "no thread {} is stored (or it was purged after the history retention)",
            thread.0
        )));
    }
    let mut body = Html::new();
    let subject = mail
        .iter()
        .rev()
        .find_map(|m| m.subject.clone())
        .unwrap_or_else(|| "(no subject)".to_owned());
    body.raw("<h1>").text(&subject).raw("</h1>");
    let human = state.human();
    // The human can answer only mail it sent or received (the broker's rule for any
    // reply_to); in a thread between agents it writes to the newest sender, in a new thread.
    let answered = mail
        .iter()
        .find(|m| m.sender == human || m.recipient == human);
    let newest = answered.unwrap_or(&mail[0]);
    let other = if newest.sender == human {
        newest.recipient.clone()
    } else {
        newest.sender.clone()
    };
    body.raw("<section><h2>Reply as ").text(human).raw("</h2>");
    let back = format!("/thread/{}", thread.0);
    let reply = Reply {
        to: &other,
        subject: newest.subject.as_deref(),
        reply_to: answered.map(|m| m.id),
    };
    compose_form(&mut body, &state, &names, Some(reply), &back);
    body.raw("</section>");
    message_list(&mut body, "<ol id=\"messages\">", &mail);
    older_link(&mut body, &mail, |h| {
        h.raw("/thread/").value(thread.0).raw("?before=");
    });
    let mut live = Html::new();
    if before.is_none() {
        live.raw(" data-live=\"thread\" data-thread=\"")
            .value(thread.0)
            .raw("\"");
    }
    Ok(html_response(layout(
        "Thread",
        "Conversations",
        &live,
        &body,
    )))
}

/// `/search?q=QUERY`: all mail matching the query, newest first.
pub async fn search(State(state): State<Arc<WebState>>, Query(params): Params) -> PageResult {
    let text = params.get("q").cloned().unwrap_or_default();
    let before = before(&params)?;
    let mut body = Html::new();
    body.raw("<h1>Search</h1><form id=\"search\" method=\"get\" action=\"/search\">")
        .raw("<input name=\"q\" value=\"")
        .text(&text)
        .raw("\" placeholder=\"words, &quot;phrases&quot;, prefix*, AND OR NOT\" autofocus>")
        .raw("<button type=\"submit\">Search</button></form>");
    if text.trim().is_empty() {
        return Ok(html_response(layout(
            "Search",
            "Search",
            &Html::new(),
            &body,
        )));
    }
    let query = match SearchQuery::parse(&text) {
        Ok(query) => query,
        Err(e) => {
            body.raw("<p class=\"error\">query: ")
                .text(&e.to_string())
                .raw("</p>");
            // The page itself is fine (the form, and what was wrong): 200, like any page.
            return Ok(html_response(layout(
                "Search",
                "Search",
                &Html::new(),
                &body,
            )));
        }
    };
    let mail = state
        .dashboard
        .read(move |reader| reader.search(&query, before, PAGE + 1))
        .await?;
    message_list(&mut body, "<ol id=\"results\">", &mail);
    if mail.is_empty() {
        body.raw("<p>No message matches.</p>");
    }
    older_link(&mut body, &mail, |h| {
        h.raw("/search?q=").query_value(&text).raw("&amp;before=");
    });
    Ok(html_response(layout(
        "Search",
        "Search",
        &Html::new(),
        &body,
    )))
}

/// `/inbox`: mail addressed to the human, newest first; looking does not consume it.
pub async fn inbox(State(state): State<Arc<WebState>>, Query(params): Params) -> PageResult {
    let before = before(&params)?;
    let human = state.human().to_owned();
    let mail = state
        .dashboard
        .read(move |reader| reader.mail_for(&human, before, PAGE + 1))
        .await?;
    let mut body = Html::new();
    body.raw("<h1>Inbox of ").text(state.human()).raw("</h1>");
    let waiting: Vec<String> = mail
        .iter()
        .take(PAGE as usize)
        .filter(|row| row.state() != crate::store::dashboard::MailState::Delivered)
        .map(|row| row.id.0.to_string())
        .collect();
    if !waiting.is_empty() {
        // Mail to the human waits (and fills its queue) until the person says it is done.
        body.raw("<form id=\"done\" method=\"post\" action=\"/inbox/done\">")
            .raw("<input type=\"hidden\" name=\"back\" value=\"/inbox\">")
            .raw("<input type=\"hidden\" name=\"ids\" value=\"")
            .text(&waiting.join(","))
            .raw("\"><button type=\"submit\">Mark the ")
            .value(waiting.len())
            .raw(" waiting here as read</button></form>");
    }
    mail_list(&mut body, &mail, "/inbox?before=");
    let mut live = Html::new();
    if before.is_none() {
        live.raw(" data-live=\"to\" data-to=\"")
            .text(state.human())
            .raw("\"");
    }
    Ok(html_response(layout("Inbox", "Inbox", &live, &body)))
}

/// `/broker`: what `status` shows.
pub async fn broker(State(state): State<Arc<WebState>>) -> PageResult {
    let report = state.broker.status_report().await;
    let since = state.auth_failures_since();
    let (bytes, failures) = state
        .dashboard
        .read(move |reader| Ok((reader.database_bytes()?, reader.auth_failures(&since)?)))
        .await?;
    let mut body = Html::new();
    body.raw("<h1>Broker</h1><dl id=\"broker\">");
    let mode = match report.mode {
        Some(crate::protocol::schema::SecurityMode::Secret) => "shared secret",
        Some(crate::protocol::schema::SecurityMode::Open) => "open (no shared secret)",
        None => "unknown",
    };
    let rows: Vec<(&'static str, String)> = vec![
        ("Address", state.broker_addr.clone()),
        ("Dashboard", state.url.clone()),
        ("Version", report.version.clone()),
        ("Process", report.pid.to_string()),
        ("Started", report.started_at.clone().unwrap_or_default()),
        ("Uptime", format!("{} s", report.uptime_seconds)),
        ("Security mode", mode.to_owned()),
        ("Database", report.database.clone()),
        ("Database size", format!("{bytes} bytes")),
        (
            "Data directory",
            report.data_dir.clone().unwrap_or_default(),
        ),
        (
            "Unix socket",
            report.socket.clone().unwrap_or_else(|| "none".to_owned()),
        ),
        (
            "Authentication failures (24 h)",
            auth_failures_text(&failures),
        ),
    ];
    for (term, value) in rows {
        body.raw("<dt>")
            .raw(term)
            .raw("</dt><dd>")
            .text(&value)
            .raw("</dd>");
    }
    body.raw("</dl>");
    Ok(html_response(layout(
        "Broker",
        "Broker",
        &Html::new(),
        &body,
    )))
}

fn auth_failures_text(failures: &[(String, i64)]) -> String {
    if failures.is_empty() {
        return "none".to_owned();
    }
    failures
        .iter()
        .map(|(reason, count)| format!("{count} {reason}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `/message/ID/content`: a message's whole content as plain text (a large message's file).
pub async fn content(State(state): State<Arc<WebState>>, Path(id): Path<String>) -> PageResult {
    let id = id.parse::<i64>().map(MessageId).map_err(|_| {
        PageError::BadRequest(format!(
            "a message is named by its id (a whole number), not {id:?}"
        ))
    })?;
    let stored = state
        .dashboard
        .read(move |reader| reader.content(id))
        .await?;
    let Some((content, large_file)) = stored else {
        return Err(PageError::NotFound(format!(
            "no message {} is stored (or it was purged after the history retention)",
            id.0
        )));
    };
    let text = match large_file {
        Some(path) => state.read_large_file(&path).await.unwrap_or(content),
        None => content,
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}
