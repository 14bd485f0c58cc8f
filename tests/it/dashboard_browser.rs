//! The dashboard in a real browser: headless Chromium (the distribution's package) logs in
//! through the URL that `claude-ipc web` prints, watches mail sent with the CLI appear without
//! a reload, writes as the human from the page's form, and attacks the dashboard the way a web
//! page can: a foreign `Host` (DNS rebinding), a form and a `fetch` from another site, and a
//! browser that never logged in. Each refusal is checked against the database: nothing stored.
//!
//! The same visits take the screenshots of docs/DASHBOARD.md; with `IPC_SCREENSHOTS=DIR` they
//! are written there. Without Chromium each test says what to install and passes, except under
//! `CI` or `IPC_REQUIRE_BROWSER`, where it fails.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::common::browser::{Browsers, Page};
use crate::common::{cli_with_env, BrokerProcess, TIMEOUT};

/// A broker process serving the dashboard, and the login URL its `claude-ipc web` printed.
struct Dashboard {
    broker: BrokerProcess,
    dir: TempDir,
    login_url: String,
    /// `http://127.0.0.1:PORT`, the dashboard's own origin, as the printed URL names it.
    origin: String,
}

impl Dashboard {
    fn start() -> Dashboard {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = BrokerProcess::spawn(&dir.path().join("data"), &["--web", "127.0.0.1:0"]);
        let login_url = printed_login_url(&broker, &dir);
        let origin = login_url
            .split("/login")
            .next()
            .expect("the login URL has a path")
            .to_owned();
        Dashboard {
            broker,
            dir,
            login_url,
            origin,
        }
    }

    /// The dashboard's page at `path` (which starts with `/`).
    fn page(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    fn port(&self) -> &str {
        self.origin.rsplit(':').next().expect("origin has a port")
    }

    /// Registers `name` with the CLI; its session file lives in the test's directory.
    fn agent(&self, name: &str) -> Agent<'_> {
        let agent = self.registered(name);
        agent.ok(&["register", name]);
        agent
    }

    /// An agent [`Dashboard::agent`] registered earlier.
    fn registered(&self, name: &str) -> Agent<'_> {
        Agent {
            name: name.to_owned(),
            session: self.dir.path().join(format!("{name}.session")),
            dashboard: self,
        }
    }

    /// How many messages the broker has stored, read from its database.
    fn stored_messages(&self) -> i64 {
        let db = self.broker.data_dir.join("ipc.db");
        let connection =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .expect("open the database read-only");
        connection
            .query_row("SELECT count(*) FROM messages", [], |row| row.get(0))
            .expect("count messages")
    }

    /// A browser logged in through the printed URL, on the overview page.
    fn logged_in<'b>(&self, browsers: &'b Browsers) -> Page<'b> {
        let page = browsers.open(&[]);
        log_in(&page, self);
        page
    }
}

/// Runs `claude-ipc web --no-open` until the broker has written its web.json, and returns the
/// URL line it prints.
fn printed_login_url(broker: &BrokerProcess, dir: &TempDir) -> String {
    let data_dir = broker.data_dir.to_str().expect("UTF-8 path").to_owned();
    let session = dir.path().join("web.session");
    let started = Instant::now();
    loop {
        let output = cli_with_env(
            &broker.addr,
            &session,
            &["web", "--no-open"],
            &[("IPC_DATA_DIR", &data_dir)],
        );
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let url = stdout
            .lines()
            .map(str::trim)
            .find(|line| line.starts_with("http://") && line.contains("/login?token="));
        if let (true, Some(url)) = (output.status.success(), url) {
            return url.to_owned();
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "`claude-ipc web --no-open` printed no login URL: status {:?}, stdout {stdout}, stderr {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Opens the printed login URL and checks it lands, logged in, on the overview.
fn log_in(page: &Page<'_>, dashboard: &Dashboard) {
    page.goto(&dashboard.login_url);
    assert_eq!(
        page.current_url(),
        dashboard.page("/"),
        "the login URL should redirect to the overview"
    );
    assert_eq!(page.status(), 200, "{}", page.text());
    assert!(
        !page.current_url().contains("token"),
        "the token stays out of the address bar after login"
    );
}

/// An agent using the real CLI with its own session file.
struct Agent<'a> {
    name: String,
    session: PathBuf,
    dashboard: &'a Dashboard,
}

impl Agent<'_> {
    fn run(&self, args: &[&str]) -> std::process::Output {
        cli_with_env(&self.dashboard.broker.addr, &self.session, args, &[])
    }

    /// Runs and insists on exit code 0; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{} {args:?} failed: stdout {} stderr {}",
            self.name,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("UTF-8 output")
    }

    /// Sends with `claude-ipc send --json`; returns the new message's id.
    fn send(&self, to: &str, text: &str) -> i64 {
        self.sent_id(&["send", to, text])
    }

    fn send_about(&self, to: &str, subject: &str, text: &str) -> i64 {
        self.sent_id(&["send", to, text, "--subject", subject])
    }

    fn reply(&self, id: i64, text: &str) -> i64 {
        self.sent_id(&["reply", &id.to_string(), text])
    }

    fn sent_id(&self, args: &[&str]) -> i64 {
        let stdout = self.ok(&[args, &["--json"]].concat());
        let reply: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{args:?} --json printed invalid JSON ({e}): {stdout}"));
        reply["message_id"]
            .as_i64()
            .unwrap_or_else(|| panic!("no message_id in {reply}"))
    }

    /// `claude-ipc check --json`: the messages it handed out (and acknowledged).
    fn check(&self) -> Vec<Value> {
        let stdout = self.ok(&["check", "--json"]);
        let reply: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("check --json printed invalid JSON ({e}): {stdout}"));
        reply["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("no messages in {reply}"))
            .clone()
    }
}

fn content(message: &Value) -> &str {
    message["message"]["content"].as_str().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Logging in, live updates, the human's compose box

#[test]
fn the_printed_url_logs_in_and_mail_sent_with_the_cli_appears_without_a_reload() {
    let Some(browsers) = Browsers::start("the live overview test") else {
        return;
    };
    let dashboard = Dashboard::start();
    let (frontend, backend) = (dashboard.agent("frontend"), dashboard.agent("backend"));
    backend.send_about(
        "frontend",
        "API v2",
        "The /users endpoint now pages with ?before=; the old offset parameter is gone.",
    );
    let page = dashboard.logged_in(&browsers);
    page.wait_for_text("#messages li.message", "offset parameter is gone");

    // A mark only this load of the page carries: a reload would wipe it.
    page.execute("window.loadedOnce = 'still the same page'; return null;");
    frontend.send(
        "backend",
        "Thanks. Switching the user list to ?before= cursors now; PR in ten minutes.",
    );
    let arrived = page.wait_for_text("#messages li.message", "Switching the user list");
    assert!(arrived.contains("frontend"), "no sender shown: {arrived}");
    assert_eq!(
        page.execute("return window.loadedOnce || null;"),
        Value::from("still the same page"),
        "the page reloaded instead of inserting the message live"
    );
    let ids = page.attributes("#messages li.message", "data-id");
    assert!(
        ids.iter()
            .all(|id| id.as_deref().is_some_and(|id| id.parse::<i64>().is_ok())),
        "every message item carries its id: {ids:?}"
    );
    backend.send_about(
        "frontend",
        "API v2",
        "Also: /teams follows the same cursor scheme from tomorrow.",
    );
    page.wait_for_text("#messages li.message", "/teams follows");
    page.screenshot("overview");
}

#[test]
fn the_human_writes_from_the_page_and_the_agent_reads_it_and_answers_to_the_inbox() {
    let Some(browsers) = Browsers::start("the compose test") else {
        return;
    };
    let dashboard = Dashboard::start();
    let reviewer = dashboard.agent("reviewer");
    let page = dashboard.logged_in(&browsers);
    let form = "form#compose";
    page.fill(form, "to", "reviewer");
    page.fill(form, "subject", "before you merge");
    page.fill(
        form,
        "content",
        "Please run the browser suite once more before merging.",
    );
    page.click_to_load(&format!("{form} button[type=\"submit\"]"));
    assert_eq!(
        page.current_url(),
        dashboard.page("/"),
        "compose goes back to the page it was sent from; the page says: {}",
        page.text()
    );

    let mail = reviewer.check();
    assert_eq!(mail.len(), 1, "{mail:?}");
    let message = &mail[0];
    assert_eq!(message["from"], "human", "{message}");
    assert_eq!(message["kind"], "human", "{message}");
    assert_eq!(message["subject"], "before you merge", "{message}");
    assert_eq!(
        content(message),
        "Please run the browser suite once more before merging."
    );

    let id = message["id"].as_i64().expect("message id");
    reviewer.reply(id, "Ran it twice: 6 passed. Merging after lunch.");
    page.goto(&dashboard.page("/inbox"));
    page.wait_for_text("#messages li.message", "Ran it twice: 6 passed");
    page.screenshot("inbox");
}

#[test]
fn every_page_shows_the_agents_conversation() {
    let Some(browsers) = Browsers::start("the pages test") else {
        return;
    };
    let dashboard = Dashboard::start();
    let frontend = dashboard.agent("frontend");
    let backend = dashboard.agent("backend");
    let reviewer = dashboard.agent("reviewer");
    let question = frontend.send_about(
        "backend",
        "release 2.1",
        "Is the build green on main? I would like to tag 2.1 this afternoon.",
    );
    backend.check();
    backend.reply(
        question,
        "Green: 412 tests passed, the migration ran on a copy of prod.",
    );
    frontend.reply(question, "Tagging 2.1 now.");
    reviewer.send_about(
        "frontend",
        "migration review",
        "Reviewed the V16 migration: the new index covers the dashboard's queries.",
    );
    backend.ok(&["broadcast", "Deploying 2.1 to staging in five minutes."]);
    // Frontend reads its mail; backend leaves the broadcast waiting, so states differ.
    frontend.check();

    let page = dashboard.logged_in(&browsers);

    page.goto(&dashboard.page("/agents"));
    let agents = page.attributes("#agents tr[data-agent]", "data-agent");
    for name in ["frontend", "backend", "reviewer"] {
        assert!(
            agents.iter().any(|a| a.as_deref() == Some(name)),
            "{name} missing from /agents: {agents:?}"
        );
    }
    let online = page.attributes("#agents tr[data-agent]", "data-online");
    assert!(
        online
            .iter()
            .all(|o| matches!(o.as_deref(), Some("true" | "false"))),
        "{online:?}"
    );
    page.screenshot("agents");

    page.goto(&dashboard.page("/conversations"));
    let threads = page.attributes("#threads li[data-thread]", "data-thread");
    assert!(threads.len() >= 3, "three threads at least: {threads:?}");
    page.wait_for_text("#threads li", "release 2.1");
    page.screenshot("conversations");

    page.goto(&dashboard.page(&format!("/thread/{question}")));
    let messages = page.texts("#messages li.message");
    assert_eq!(messages.len(), 3, "{messages:?}");
    for said in [
        "Is the build green on main?",
        "Green: 412 tests passed",
        "Tagging 2.1 now.",
    ] {
        assert!(
            messages.iter().any(|m| m.contains(said)),
            "{said:?} not in {messages:?}"
        );
    }
    let states = page.attributes("#messages li.message", "data-state");
    assert!(
        states.iter().all(|s| matches!(
            s.as_deref(),
            Some("waiting" | "read" | "delivered" | "expired")
        )),
        "{states:?}"
    );
    page.screenshot("thread");

    page.goto(&dashboard.page("/conversations?with=frontend&and=backend"));
    let pair = page.texts("#messages li.message").join("\n");
    assert!(pair.contains("Tagging 2.1 now."), "{pair}");
    assert!(
        !pair.contains("Reviewed the V16"),
        "another pair's mail: {pair}"
    );

    page.goto(&dashboard.page("/search?q=migration"));
    let results = page.texts("#results li.message");
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(results.iter().any(|r| r.contains("Reviewed the V16")));
    assert!(results.iter().any(|r| r.contains("ran on a copy of prod")));
    page.screenshot("search");
    page.goto(&dashboard.page("/search?q=%22unclosed"));
    let error = page.texts("p.error").join(" ");
    assert!(
        !error.trim().is_empty(),
        "no error shown for a malformed query"
    );

    page.goto(&dashboard.page("/broker"));
    let status = page.texts("dl#broker").join("\n");
    assert!(
        status.contains(env!("CARGO_PKG_VERSION")),
        "no version: {status}"
    );
    assert!(
        status.contains(&dashboard.broker.addr),
        "no address: {status}"
    );
    page.screenshot("broker");
}

// ---------------------------------------------------------------------------------------------
// Attacks: each refused, nothing stored

/// The text a refused page must not show: mail content and the agents' names.
const SECRET: &str = "the staging password rotates at noon";

/// A dashboard with two agents and one message the attacker would like to read.
fn dashboard_with_a_secret() -> (Dashboard, i64) {
    let dashboard = Dashboard::start();
    let ops = dashboard.agent("ops-agent");
    dashboard.agent("deployer");
    let id = ops.send_about("deployer", "credentials", SECRET);
    (dashboard, id)
}

fn assert_shows_nothing(page: &Page<'_>, what: &str) {
    let html = page.source();
    for leaked in [SECRET, "ops-agent", "deployer"] {
        assert!(!html.contains(leaked), "{what} shows {leaked:?}: {html}");
    }
}

/// `fetch` from the open page; returns `{status, body}`, or `{error}` when the browser refused
/// to hand the response over.
fn fetch(page: &Page<'_>, url: &str, post: Option<&str>) -> Value {
    let options = match post {
        Some(form) => {
            format!("{{method: 'POST', credentials: 'include', body: new URLSearchParams({form})}}")
        }
        None => "{credentials: 'include'}".to_owned(),
    };
    page.execute_async(&format!(
        "const done = arguments[arguments.length - 1];
         fetch({url:?}, {options})
           .then(r => r.text().then(body => done({{status: r.status, body}})))
           .catch(e => done({{error: String(e)}}));"
    ))
}

#[test]
fn a_foreign_host_is_refused_even_with_the_right_token() {
    let Some(browsers) = Browsers::start("the DNS rebinding test") else {
        return;
    };
    let (dashboard, _) = dashboard_with_a_secret();
    let stored = dashboard.stored_messages();
    // The attacker's name resolves to the dashboard: the browser sends Host: evil.example:PORT.
    let page = browsers.open(&["--host-resolver-rules=MAP evil.example 127.0.0.1"]);
    let rebound = dashboard.login_url.replace("127.0.0.1", "evil.example");
    assert!(rebound.starts_with("http://evil.example:"), "{rebound}");

    page.goto(&rebound);
    assert_eq!(
        page.status(),
        421,
        "login under a foreign Host: {}",
        page.text()
    );
    assert_shows_nothing(&page, "the login under a foreign Host");
    let evil = format!("http://evil.example:{}", dashboard.port());
    for path in ["/", "/agents", "/inbox"] {
        page.goto(&format!("{evil}{path}"));
        assert_eq!(page.status(), 421, "{path}: {}", page.text());
        assert_shows_nothing(&page, path);
    }
    // The rebound page's own script: same origin as far as the browser knows.
    let read = fetch(&page, "/thread/1", None);
    assert_eq!(read["status"], 421, "{read}");
    assert!(!read["body"].as_str().unwrap_or("").contains(SECRET));
    let post = fetch(
        &page,
        "/compose",
        Some("{to: 'deployer', subject: 'x', content: 'rebound'}"),
    );
    assert_eq!(post["status"], 421, "{post}");
    assert_eq!(
        dashboard.stored_messages(),
        stored,
        "a rebound POST stored mail"
    );

    // The same browser at the printed URL gets in: the Host alone made the difference.
    log_in(&page, &dashboard);
    page.wait_for_text("#messages li.message", SECRET);
}

/// A second web site on this machine: serves one page, whatever is asked, with a form that
/// posts a message to the dashboard's compose.
struct AttackerSite {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl AttackerSite {
    fn start(dashboard: &Dashboard) -> AttackerSite {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().unwrap().port();
        let page = format!(
            "<!doctype html><title>Free cat pictures</title>\
             <form id=\"attack\" method=\"post\" action=\"{}\">\
             <input name=\"to\" value=\"deployer\"><input name=\"subject\" value=\"urgent\">\
             <textarea name=\"content\">forged from another site</textarea>\
             <button type=\"submit\">See cats</button></form>",
            dashboard.page("/compose")
        );
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || serve_one_page(&listener, &page, &stopping));
        AttackerSite { port, stop }
    }
}

impl Drop for AttackerSite {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_one_page(listener: &TcpListener, page: &str, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut stream, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(TIMEOUT));
        let mut request = Vec::new();
        let mut buffer = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buffer[..n]),
            }
        }
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{page}",
            page.len()
        );
    }
}

#[test]
fn a_form_or_fetch_from_another_site_is_refused_and_stores_nothing() {
    let Some(browsers) = Browsers::start("the cross-site test") else {
        return;
    };
    let (dashboard, _) = dashboard_with_a_secret();
    let deployer = dashboard.registered("deployer");
    assert_eq!(deployer.check().len(), 1, "the secret is read");
    let stored = dashboard.stored_messages();
    let site = AttackerSite::start(&dashboard);
    let page = browsers.open(&["--host-resolver-rules=MAP attacker.example 127.0.0.1"]);
    log_in(&page, &dashboard);

    // Another site altogether: SameSite=Strict keeps the cookie home, and Origin is foreign.
    page.goto(&format!("http://attacker.example:{}/", site.port));
    page.click_to_load("#attack button");
    assert!(
        page.current_url().starts_with(&dashboard.origin),
        "{}",
        page.current_url()
    );
    assert!(
        matches!(page.status(), 401 | 403),
        "a cross-site form post: {} {}",
        page.status(),
        page.text()
    );
    assert_eq!(
        dashboard.stored_messages(),
        stored,
        "a cross-site form stored mail"
    );

    // Same site, other origin (another port on 127.0.0.1): the cookie goes along, so the
    // Origin check alone must refuse it.
    page.goto(&format!("http://127.0.0.1:{}/", site.port));
    page.click_to_load("#attack button");
    assert_eq!(
        page.status(),
        403,
        "an other-origin form post: {}",
        page.text()
    );
    assert_eq!(
        dashboard.stored_messages(),
        stored,
        "an other-origin form stored mail"
    );

    // A script on that page: its post is refused, and it cannot read a page (no CORS).
    page.goto(&format!("http://attacker.example:{}/", site.port));
    let no_cors = page.execute_async(&format!(
        "const done = arguments[arguments.length - 1];
         fetch({:?}, {{method: 'POST', mode: 'no-cors', credentials: 'include',
                       body: new URLSearchParams({{to: 'deployer', content: 'forged by fetch'}})}})
           .then(r => done(r.type)).catch(e => done(String(e)));",
        dashboard.page("/compose")
    ));
    assert_eq!(
        no_cors, "opaque",
        "the fetch was sent and answered: {no_cors}"
    );
    let read = fetch(&page, &dashboard.page("/agents"), None);
    assert!(
        read.get("error").is_some(),
        "another site read the dashboard: {read}"
    );
    assert_eq!(
        dashboard.stored_messages(),
        stored,
        "a cross-site fetch stored mail"
    );

    // The dashboard's own form from the same browser works: the origin made the difference.
    page.goto(&dashboard.page("/"));
    page.fill("form#compose", "to", "deployer");
    page.fill("form#compose", "subject", "genuine");
    page.fill(
        "form#compose",
        "content",
        "The genuine one, from the dashboard.",
    );
    page.click_to_load("form#compose button[type=\"submit\"]");
    let mail = deployer.check();
    let contents: Vec<&str> = mail.iter().map(content).collect();
    assert_eq!(contents, ["The genuine one, from the dashboard."]);
}

#[test]
fn a_browser_without_the_cookie_sees_only_how_to_log_in() {
    let Some(browsers) = Browsers::start("the no-cookie test") else {
        return;
    };
    let (dashboard, thread) = dashboard_with_a_secret();
    let stored = dashboard.stored_messages();
    let page = browsers.open(&[]);
    let thread = format!("/thread/{thread}");
    for path in [
        "/",
        "/agents",
        "/conversations",
        thread.as_str(),
        "/search?q=password",
        "/broker",
        "/inbox",
        "/events",
    ] {
        page.goto(&dashboard.page(path));
        assert_eq!(page.status(), 401, "{path}: {}", page.text());
        assert_shows_nothing(&page, path);
        assert!(
            page.text().contains("claude-ipc web"),
            "{path} does not say how to log in: {}",
            page.text()
        );
    }
    // From the dashboard's own origin (so Origin is right), but without the cookie.
    let post = fetch(
        &page,
        "/compose",
        Some("{to: 'deployer', subject: 'x', content: 'no cookie'}"),
    );
    assert!(matches!(post["status"].as_u64(), Some(401 | 403)), "{post}");
    page.goto(&dashboard.page(&format!("/login?token={}", "0".repeat(64))));
    assert_eq!(page.status(), 401, "a wrong token: {}", page.text());
    page.goto(&dashboard.page("/"));
    assert_eq!(page.status(), 401, "a wrong token gave a cookie");
    assert_eq!(
        dashboard.stored_messages(),
        stored,
        "mail stored without a cookie"
    );

    // The printed URL lets the same browser in.
    log_in(&page, &dashboard);
    page.wait_for_text("#messages li.message", SECRET);
}
