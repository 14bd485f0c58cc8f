//! The dashboard (`serve --web ADDR`): a second, loopback-only listener in the broker's own
//! process and runtime, serving server-rendered pages over the store's read-only connection,
//! a live stream fed by the broker's change signal, and a compose box that sends as the
//! reserved human name.
//!
//! The path of a request: [`auth::guard`] (Host, cookie, Origin, security headers) → a handler
//! in [`pages`] (reads through `store::dashboard`), [`events`] (the live stream) or
//! [`compose`] (sends through `broker::human`) → HTML built with [`html::Html`], which escapes
//! every string it did not get from this crate's source.
//!
//! At start the login URL, carrying a fresh random token, is written to `<data dir>/web.json`
//! (mode 0600); `claude-ipc web` prints it. The file is removed at a clean stop.

pub mod auth;
pub mod compose;
pub mod events;
pub mod html;
pub mod pages;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::store::dashboard::Dashboard;

/// The file, in the data directory, that holds the login URL while the dashboard runs.
pub const WEB_FILE: &str = "web.json";

/// How long a stop waits for the dashboard's connections to close.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How long after its oldest waiting message was sent an agent's mail counts as stuck.
const STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// Why the dashboard could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("refusing --web {0}: the dashboard listens only on a loopback address (127.0.0.1, ::1 or localhost), since anyone who can reach it could try to log in. Use --web 127.0.0.1:PORT")]
    NotLoopback(SocketAddr),
    #[error("cannot listen for the dashboard on {addr}: {reason}; choose another --web port (0 picks a free one)")]
    Listen { addr: SocketAddr, reason: String },
    #[error("cannot open the database read-only for the dashboard: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot write {path}: {reason}")]
    WebFile { path: PathBuf, reason: String },
    #[error("cannot make the dashboard's login token: {0}")]
    Entropy(std::io::Error),
    #[error("cannot register the dashboard's human: {0}")]
    Human(String),
}

/// What `web.json` holds: where the dashboard is and how to log in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebFile {
    pub url: String,
    pub login_url: String,
    pub pid: u32,
}

impl WebFile {
    /// Reads `web.json` from `data_dir` (a private file: ours, not a link, mode 0600).
    pub fn read(data_dir: &Path) -> Result<WebFile, crate::private_file::PrivateFileError> {
        let path = data_dir.join(WEB_FILE);
        let text = crate::private_file::read_private(&path)?;
        serde_json::from_str(&text).map_err(|e| crate::private_file::PrivateFileError::Io {
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }
}

/// What every handler shares.
pub struct WebState {
    pub broker: Arc<Broker>,
    pub dashboard: Dashboard,
    pub auth: auth::Auth,
    /// Live streams still allowed to open.
    pub streams: Arc<Semaphore>,
    /// Turns true when the dashboard stops: live streams end.
    pub stop: watch::Receiver<bool>,
    /// The dashboard's own address, `http://127.0.0.1:PORT/`.
    pub url: String,
    /// The broker's own address, for the broker page.
    pub broker_addr: String,
    human: String,
    large_message_dir: PathBuf,
}

impl WebState {
    /// The human's reserved name.
    pub fn human(&self) -> &str {
        &self.human
    }

    /// Mail waiting since before this time is stuck.
    pub fn stuck_before(&self) -> String {
        crate::clock::to_text(
            self.broker.now() - chrono::Duration::from_std(STUCK_AFTER).unwrap_or_default(),
        )
    }

    /// The start of the authentication-failure window the broker page counts (24 h).
    pub fn auth_failures_since(&self) -> String {
        crate::clock::to_text(self.broker.now() - chrono::Duration::hours(24))
    }

    /// A large message's file, if it lies in the broker's large-message directory.
    pub async fn read_large_file(&self, path: &str) -> Option<String> {
        let path = PathBuf::from(path);
        let dir = self.large_message_dir.clone();
        tokio::task::spawn_blocking(move || {
            let dir = std::fs::canonicalize(dir).ok()?;
            let file = std::fs::canonicalize(&path).ok()?;
            file.starts_with(&dir)
                .then(|| std::fs::read_to_string(&file).ok())
                .flatten()
        })
        .await
        .ok()
        .flatten()
    }
}

/// A dashboard that is serving. Call [`WebServer::shutdown`] to stop it.
pub struct WebServer {
    pub addr: SocketAddr,
    pub url: String,
    web_file: PathBuf,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Refuses a dashboard address that is not loopback.
pub fn check_address(addr: SocketAddr) -> Result<(), WebError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(WebError::NotLoopback(addr))
    }
}

/// What the dashboard needs from the broker's configuration.
pub struct WebConfig<'a> {
    pub addr: SocketAddr,
    pub broker_addr: SocketAddr,
    pub data_dir: &'a Path,
    pub database: &'a Path,
    pub large_message_dir: PathBuf,
    pub max_request_bytes: usize,
}

/// Binds the dashboard, registers the human, writes `web.json` and starts serving.
pub async fn start(broker: Arc<Broker>, config: WebConfig<'_>) -> Result<WebServer, WebError> {
    check_address(config.addr)?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|e| WebError::Listen {
            addr: config.addr,
            reason: e.to_string(),
        })?;
    let addr = listener.local_addr().map_err(|e| WebError::Listen {
        addr: config.addr,
        reason: e.to_string(),
    })?;
    let dashboard = Dashboard::open(config.database)?;
    let auth = auth::Auth::new(addr.ip(), addr.port()).map_err(WebError::Entropy)?;
    let host = if addr.is_ipv6() {
        format!("[::1]:{}", addr.port())
    } else {
        format!("127.0.0.1:{}", addr.port())
    };
    let url = format!("http://{host}/");
    let login_url = format!("{url}login?token={}", auth.token());
    broker
        .admit_human()
        .await
        .map_err(|e| WebError::Human(e.to_string()))?;
    let human = broker
        .human_name()
        .map_or_else(|| "human".to_owned(), |h| h.to_string());
    let web_file = config.data_dir.join(WEB_FILE);
    write_web_file(&web_file, &url, &login_url)?;
    broker.set_web_url(url.clone());
    let (stop, stopped) = watch::channel(false);
    let state = Arc::new(WebState {
        broker,
        dashboard,
        auth,
        streams: Arc::new(Semaphore::new(events::MAX_STREAMS)),
        stop: stopped.clone(),
        url: url.clone(),
        broker_addr: config.broker_addr.to_string(),
        human,
        large_message_dir: config.large_message_dir,
    });
    let app = router(state, compose::body_limit(config.max_request_bytes));
    let mut shutdown = stopped;
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!("the dashboard stopped serving: {e}");
        }
    });
    tracing::info!(%url, "dashboard listening; `claude-ipc web` prints its login link");
    Ok(WebServer {
        addr,
        url,
        web_file,
        stop,
        task,
    })
}

fn router(state: Arc<WebState>, body_limit: usize) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/login", get(login))
        .route("/agents", get(pages::agents))
        .route("/conversations", get(pages::conversations))
        .route("/thread/{id}", get(pages::thread))
        .route("/search", get(pages::search))
        .route("/broker", get(pages::broker))
        .route("/inbox", get(pages::inbox))
        .route("/message/{id}/content", get(pages::content))
        .route("/events", get(events::events))
        .route("/compose", post(compose::compose))
        .route("/inbox/done", post(compose::done))
        .route("/assets/style.css", get(style))
        .route("/assets/live.js", get(script))
        .route("/assets/icon.svg", get(icon))
        .route("/favicon.ico", get(icon))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ))
        .with_state(state)
}

/// `GET /login?token=HEX`: the right token sets the cookie and goes to `/`.
async fn login(
    State(state): State<Arc<WebState>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let given = params.get("token").map(String::as_str).unwrap_or_default();
    if !state.auth.is_token(given) {
        return pages::login_help(StatusCode::UNAUTHORIZED);
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/".to_owned()),
            (header::SET_COOKIE, state.auth.set_cookie()),
        ],
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/style.css"),
    )
        .into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/live.js"),
    )
        .into_response()
}

/// The tab's icon (also at `/favicon.ico`, where browsers look without being told).
async fn icon() -> Response {
    (
        [(header::CONTENT_TYPE, "image/svg+xml")],
        include_str!("assets/icon.svg"),
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "404 Not Found: no such dashboard page; start at /\n",
    )
        .into_response()
}

fn write_web_file(path: &Path, url: &str, login_url: &str) -> Result<(), WebError> {
    let file = WebFile {
        url: url.to_owned(),
        login_url: login_url.to_owned(),
        pid: std::process::id(),
    };
    let text = serde_json::to_string_pretty(&file).expect("web.json serialises") + "\n";
    crate::private_file::write_private(path, text.as_bytes()).map_err(|e| WebError::WebFile {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

impl WebServer {
    /// Ends the live streams, stops serving and removes `web.json`.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        // Streams end at the stop signal and pages take milliseconds; a browser that holds a
        // connection open without reading does not hold up the broker's stop.
        if tokio::time::timeout(SHUTDOWN_GRACE, self.task)
            .await
            .is_err()
        {
            tracing::warn!("the dashboard's connections did not close in time; stopping anyway");
        }
        if let Err(e) = std::fs::remove_file(&self.web_file) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("could not remove {}: {e}", self.web_file.display());
            }
        }
    }
}
