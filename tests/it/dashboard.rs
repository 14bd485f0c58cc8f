//! The dashboard (`serve --web`) over raw HTTP on TCP, as a browser or an attacker's page
//! would reach it: the login and its cookie, the Host and Origin checks, the pages, the live
//! stream, and the human who writes from it. Each test runs the real binary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{
    binary, cli, cli_with_env, legacy, legacy_check, legacy_register, legacy_send, wait_until,
    BrokerProcess, TIMEOUT,
};

/// A broker with the dashboard on, and what a logged-in browser holds.
struct Dashboard {
    broker: BrokerProcess,
    /// `127.0.0.1:PORT`.
    host: String,
    login_url: String,
    /// `ipc_web=…`, as the browser sends it back.
    cookie: String,
    _dir: tempfile::TempDir,
}

/// One HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Dashboard {
    fn start() -> Dashboard {
        Self::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Dashboard {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let mut args = vec!["--web", "127.0.0.1:0", "--rate-limit", "0"];
        args.extend_from_slice(extra);
        let broker = BrokerProcess::spawn(&data_dir, &args);
        let web = web_file(&data_dir);
        let login_url = web["login_url"].as_str().unwrap().to_owned();
        let host = login_url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let mut dashboard = Dashboard {
            broker,
            host,
            login_url,
            cookie: String::new(),
            _dir: dir,
        };
        let path = dashboard.login_path();
        let login = dashboard.get(&path, &[]);
        assert_eq!(login.status, 303, "{login:?}");
        let set_cookie = login.header("set-cookie").expect("login sets a cookie");
        dashboard.cookie = set_cookie.split(';').next().unwrap().to_owned();
        dashboard
    }

    fn data_dir(&self) -> PathBuf {
        self.broker.data_dir.clone()
    }

    fn login_path(&self) -> String {
        let at = self.login_url.find("/login").unwrap();
        self.login_url[at..].to_owned()
    }

    fn origin(&self) -> String {
        format!("http://{}", self.host)
    }

    /// A request with our own Host and the given headers (nothing else).
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut stream = TcpStream::connect(&self.host).expect("connect to the dashboard");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut text = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            text.push_str(&format!("Host: {}\r\n", self.host));
        }
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        if method == "POST" {
            text.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
            text.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        text.push_str("\r\n");
        text.push_str(body);
        stream.write_all(text.as_bytes()).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read the answer");
        parse_answer(&raw)
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.request("GET", path, headers, "")
    }

    /// A GET as the logged-in browser.
    fn page(&self, path: &str) -> Answer {
        let cookie = self.cookie.clone();
        self.get(path, &[("Cookie", &cookie)])
    }

    /// The compose form posted from the dashboard's own page.
    fn compose(&self, fields: &[(&str, &str)]) -> Answer {
        let (cookie, origin) = (self.cookie.clone(), self.origin());
        self.request(
            "POST",
            "/compose",
            &[("Cookie", &cookie), ("Origin", &origin)],
            &form(fields),
        )
    }

    fn sql(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.data_dir().join("ipc.db")).unwrap()
    }

    fn count(&self, sql: &str) -> i64 {
        self.sql().query_row(sql, [], |row| row.get(0)).unwrap()
    }
}

/// `web.json`, once the broker has written it.
fn web_file(data_dir: &Path) -> Value {
    let path = data_dir.join("web.json");
    wait_until("the broker writes web.json", || path.exists());
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Status line, headers and body of one HTTP/1.1 answer (chunked bodies de-chunked).
fn parse_answer(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    body
}

/// Every page the dashboard has, for the tests that look at all of them.
fn every_page(first_id: i64) -> Vec<String> {
    vec![
        "/".into(),
        "/agents".into(),
        "/conversations".into(),
        "/conversations?with=alice&and=bob".into(),
        "/conversations?with=alice".into(),
        format!("/thread/{first_id}"),
        "/search?q=secretword".into(),
        "/broker".into(),
        "/inbox".into(),
        format!("/message/{first_id}/content"),
    ]
}

/// Every delivery fact of every message, in id order.
fn delivery_rows(dashboard: &Dashboard) -> Vec<String> {
    let conn = dashboard.sql();
    let mut statement = conn
        .prepare(
            "SELECT id, coalesce(delivered_at, '-'), coalesce(read_at, '-'), delivery_count,
                    coalesce(leased_until, '-'), coalesce(pushed_at, '-')
             FROM messages ORDER BY id",
        )
        .unwrap();
    let rows = statement
        .query_map([], |row| {
            Ok(format!(
                "{} {} {} {} {} {}",
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, String>(5)?
            ))
        })
        .unwrap();
    rows.collect::<rusqlite::Result<_>>().unwrap()
}

#[test]
fn the_login_sets_an_http_only_strict_cookie_and_a_wrong_token_sets_none() {
    let dashboard = Dashboard::start();
    let login = dashboard.get(&dashboard.login_path(), &[]);
    assert_eq!(login.status, 303);
    assert_eq!(login.header("location"), Some("/"));
    let cookie = login.header("set-cookie").unwrap();
    assert!(cookie.starts_with("ipc_web="), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(cookie.contains("Path=/"), "{cookie}");
    let token = dashboard.login_url.split("token=").nth(1).unwrap();
    assert!(!cookie.contains(token), "the cookie is not the token");
    assert_eq!(login.header("referrer-policy"), Some("same-origin"));

    let wrong = dashboard.get(&format!("/login?token={}", "0".repeat(64)), &[]);
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    assert!(wrong.body.contains("claude-ipc web"), "{}", wrong.body);

    let overview = dashboard.page("/");
    assert_eq!(overview.status, 200);
    assert!(overview.body.contains("id=\"messages\""));
    assert_eq!(
        overview
            .header("content-security-policy")
            .map(|c| c.contains("default-src 'self'")),
        Some(true)
    );
    assert_eq!(overview.header("x-frame-options"), Some("DENY"));
    assert!(overview.header("access-control-allow-origin").is_none());
}

#[test]
fn without_the_cookie_every_page_is_401_and_shows_no_data() {
    let dashboard = Dashboard::start();
    let alice = legacy_register(&dashboard.broker.addr, "alice");
    let sent = legacy_send(&dashboard.broker.addr, &alice, "bob", "secretword inside");
    let id = sent["message_id"].as_i64().unwrap();
    let forged = "ipc_web=".to_owned() + &"a".repeat(64);
    for path in every_page(id).iter().chain([&"/events".to_owned()]) {
        for headers in [vec![], vec![("Cookie", forged.as_str())]] {
            let answer = dashboard.get(path, &headers);
            assert_eq!(answer.status, 401, "{path}: {answer:?}");
            assert!(answer.body.contains("claude-ipc web"), "{path}");
            assert!(!answer.body.contains("secretword"), "{path} leaks mail");
            assert!(!answer.body.contains("alice"), "{path} leaks a name");
        }
    }
    // The same pages with the cookie do show it: the refusal above was the cookie's doing.
    assert!(dashboard.page("/").body.contains("secretword"));
}

#[test]
fn a_foreign_host_gets_421_and_no_data() {
    let dashboard = Dashboard::start();
    let alice = legacy_register(&dashboard.broker.addr, "alice");
    legacy_send(&dashboard.broker.addr, &alice, "bob", "secretword inside");
    let cookie = dashboard.cookie.clone();
    let port = dashboard.host.split(':').nth(1).unwrap();
    let other_port = format!("127.0.0.1:{}", port.parse::<u16>().unwrap() ^ 1);
    let rebound = format!("attacker.example:{port}");
    for host in [rebound.as_str(), other_port.as_str(), "attacker.example"] {
        for path in ["/", "/events", "/login"] {
            let answer = dashboard.get(path, &[("Host", host), ("Cookie", &cookie)]);
            assert_eq!(answer.status, 421, "{host}{path}: {answer:?}");
            assert!(!answer.body.contains("secretword"));
            assert!(answer.header("set-cookie").is_none());
        }
    }
    let localhost = format!("localhost:{port}");
    let ours = dashboard.get("/", &[("Host", &localhost), ("Cookie", &cookie)]);
    assert_eq!(
        ours.status, 200,
        "localhost:PORT is the dashboard's own name"
    );
}

#[test]
fn a_post_with_a_foreign_or_missing_origin_is_403_and_stores_nothing() {
    let dashboard = Dashboard::start();
    legacy_register(&dashboard.broker.addr, "alice");
    let cookie = dashboard.cookie.clone();
    let body = form(&[("to", "alice"), ("content", "forged")]);
    let before = dashboard.count("SELECT count(*) FROM messages");
    for origin in [
        Some("http://attacker.example"),
        Some("null"),
        Some("http://127.0.0.1:1"),
        None,
    ] {
        let mut headers = vec![("Cookie", cookie.as_str())];
        if let Some(origin) = origin {
            headers.push(("Origin", origin));
        }
        let answer = dashboard.request("POST", "/compose", &headers, &body);
        assert_eq!(answer.status, 403, "{origin:?}: {answer:?}");
    }
    assert_eq!(dashboard.count("SELECT count(*) FROM messages"), before);
    // Our own origin with the cookie does send: the refusals were the Origin's doing.
    assert_eq!(
        dashboard
            .compose(&[("to", "alice"), ("content", "real")])
            .status,
        303
    );
    assert_eq!(dashboard.count("SELECT count(*) FROM messages"), before + 1);
}

#[test]
fn the_human_reaches_an_agents_check_with_kind_human_and_everyone_by_broadcast() {
    let dashboard = Dashboard::start();
    let addr = dashboard.broker.addr.clone();
    let alice = legacy_register(&addr, "alice");
    let bob = legacy_register(&addr, "bob");
    let sent = dashboard.compose(&[
        ("to", "alice"),
        ("subject", "From your person"),
        ("content", "please stop the deploy"),
        ("back", "/inbox"),
    ]);
    assert_eq!(sent.status, 303, "{sent:?}");
    assert_eq!(sent.header("location"), Some("/inbox"));
    // Without `back`, a same-origin Referer says where to return; another site's never does.
    let (cookie, origin) = (dashboard.cookie.clone(), dashboard.origin());
    let body = form(&[("to", "alice"), ("content", "again")]);
    for (referer, location) in [
        (format!("{origin}/thread/1"), "/thread/1"),
        ("http://attacker.example/x".to_owned(), "/"),
    ] {
        let answer = dashboard.request(
            "POST",
            "/compose",
            &[
                ("Cookie", &cookie),
                ("Origin", &origin),
                ("Referer", &referer),
            ],
            &body,
        );
        assert_eq!(answer.header("location"), Some(location), "{referer}");
    }
    let mail = legacy_check(&addr, &alice);
    let message = &mail["messages"][0];
    assert_eq!(message["from"], "human", "{mail}");
    assert_eq!(message["kind"], "human", "{mail}");
    assert_eq!(message["message"]["content"], "please stop the deploy");
    assert_eq!(message["subject"], "From your person");

    assert_eq!(
        dashboard
            .compose(&[("to", "*"), ("content", "lunch")])
            .status,
        303
    );
    for token in [&alice, &bob] {
        let mail = legacy_check(&addr, token);
        assert_eq!(mail["messages"][0]["kind"], "human", "{mail}");
        assert_eq!(mail["messages"][0]["message"]["content"], "lunch");
    }

    let refused = dashboard.compose(&[("to", "no such name!"), ("content", "x")]);
    assert_eq!(refused.status, 400);
    assert!(refused.body.contains("class=\"error\""), "{}", refused.body);
}

#[test]
fn a_long_polling_check_and_a_push_watch_wake_at_once_for_the_humans_message() {
    let dashboard = Dashboard::start();
    let addr = dashboard.broker.addr.clone();
    let alice = legacy_register(&addr, "alice");
    let bob = legacy_register(&addr, "bob");
    let check = json!({"action": "check", "session_token": alice, "wait_ms": 60_000});
    // What a channel-mode MCP server holds open to push mail into a live session.
    let watch = json!({"action": "watch", "session_token": bob, "watcher": "channel",
                       "push": true, "wait_ms": 60_000});
    let waiting: Vec<_> = [check, watch]
        .into_iter()
        .map(|request| {
            let addr = addr.clone();
            std::thread::spawn(move || long_poll(&addr, &request))
        })
        .collect();
    // Both wait once their sessions are listening; then the human writes to everyone.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        dashboard
            .compose(&[("to", "*"), ("content", "wake up")])
            .status,
        303
    );
    for waiter in waiting {
        let reply = waiter.join().unwrap();
        // Had the doorbell not rung, the wait would have ended empty after 60 s.
        assert_eq!(
            reply["messages"][0]["message"]["content"], "wake up",
            "{reply}"
        );
        assert_eq!(reply["messages"][0]["kind"], "human");
        assert_eq!(reply["messages"][0]["from"], "human");
    }
}

/// Sends one long-polling request and reads its one reply.
fn long_poll(addr: &str, request: &Value) -> Value {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    stream.write_all(request.to_string().as_bytes()).unwrap();
    let mut reply = vec![0u8; 65536];
    let n = stream.read(&mut reply).unwrap();
    serde_json::from_slice::<Value>(&reply[..n]).unwrap()
}

#[test]
fn no_client_can_register_or_rename_to_the_humans_name() {
    let dashboard = Dashboard::start_with(&["--web-human", "operator"]);
    let addr = dashboard.broker.addr.clone();
    for name in ["operator", "Operator", "OPERATOR"] {
        let reply = legacy(
            &addr,
            &json!({"action": "register", "instance_id": name, "auth_token": ""}),
        );
        assert_eq!(reply["status"], "error", "{name}: {reply}");
        assert_eq!(reply["code"], "reserved_name", "{reply}");
        assert!(
            reply["message"].as_str().unwrap().contains("dashboard"),
            "{reply}"
        );
    }
    let alice = legacy_register(&addr, "alice");
    let renamed = legacy(
        &addr,
        &json!({"action": "rename", "session_token": alice, "new_id": "operator"}),
    );
    assert_eq!(renamed["code"], "reserved_name", "{renamed}");
    // `human` is an ordinary name when the person is called `operator`.
    legacy_register(&addr, "human");
    // And the person writes as `operator`.
    assert_eq!(
        dashboard
            .compose(&[("to", "alice"), ("content", "hi")])
            .status,
        303
    );
    assert_eq!(
        legacy_check(&addr, &alice)["messages"][0]["from"],
        "operator"
    );
}

#[test]
fn an_agents_reply_to_the_human_shows_on_the_inbox_without_being_consumed() {
    let dashboard = Dashboard::start();
    let addr = dashboard.broker.addr.clone();
    let alice = legacy_register(&addr, "alice");
    dashboard.compose(&[
        ("to", "alice"),
        ("subject", "Status?"),
        ("content", "how is it"),
    ]);
    let asked = legacy_check(&addr, &alice);
    let question = asked["messages"][0]["id"].as_i64().unwrap();
    let reply = legacy(
        &addr,
        &json!({"action": "send", "session_token": alice, "to_id": "human",
                "reply_to": question, "message": {"content": "all green, boss"}}),
    );
    assert_eq!(reply["status"], "ok", "{reply}");
    let inbox = dashboard.page("/inbox");
    assert_eq!(inbox.status, 200);
    assert!(inbox.body.contains("all green, boss"), "{}", inbox.body);
    assert!(
        inbox.body.contains("data-state=\"waiting\""),
        "{}",
        inbox.body
    );
    let thread = dashboard.page(&format!("/thread/{question}"));
    assert!(thread.body.contains("all green, boss") && thread.body.contains("how is it"));
    // Its reply box answers the agent's reply, in the same thread.
    let answer_id = reply["message_id"].as_i64().unwrap();
    let hidden = format!("name=\"reply_to\" value=\"{answer_id}\"");
    assert!(thread.body.contains(&hidden), "{}", thread.body);
    let answer_id = answer_id.to_string();
    let sent = dashboard.compose(&[
        ("to", "alice"),
        ("content", "thanks"),
        ("reply_to", &answer_id),
    ]);
    assert_eq!(sent.status, 303, "{sent:?}");
    let mail = legacy_check(&addr, &alice);
    assert_eq!(mail["messages"][0]["thread_id"], question, "{mail}");
    assert_eq!(mail["messages"][0]["subject"], "Status?", "{mail}");
    assert_eq!(
        dashboard.count("SELECT count(*) FROM messages WHERE recipient = 'human' AND delivered_at IS NULL AND read_at IS NULL"),
        1
    );
}

#[test]
fn looking_at_every_page_changes_no_delivery_state() {
    let dashboard = Dashboard::start();
    let addr = dashboard.broker.addr.clone();
    let alice = legacy_register(&addr, "alice");
    let bob = legacy_register(&addr, "bob");
    let first = legacy_send(&addr, &alice, "bob", "secretword one")["message_id"]
        .as_i64()
        .unwrap();
    legacy_send(&addr, &bob, "alice", "secretword two");
    legacy_check(&addr, &alice);
    legacy_send(&addr, &alice, "bob", "secretword three");
    legacy_send(&addr, &alice, "carol", "secretword four");
    legacy_send(&addr, &bob, "human", "secretword five");
    let before = delivery_rows(&dashboard);
    for path in every_page(first) {
        let answer = dashboard.page(&path);
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
    }
    let after = delivery_rows(&dashboard);
    assert_eq!(before, after);
    // A thread between agents offers a reply box without a reply_to the human may not use.
    let thread = dashboard.page(&format!("/thread/{first}"));
    assert!(thread.body.contains("id=\"compose\""));
    assert!(
        !thread.body.contains("name=\"reply_to\""),
        "{}",
        thread.body
    );
    // The pages did show the mail they left alone.
    assert!(dashboard.page("/").body.contains("secretword four"));
    assert!(dashboard
        .page("/search?q=secretword")
        .body
        .contains("secretword five"));
}

#[test]
fn the_live_stream_delivers_a_message_sent_from_the_cli() {
    let dashboard = Dashboard::start();
    let session = dashboard._dir.path().join("alice.session");
    let registered = cli(&dashboard.broker.addr, &session, &["register", "alice"]);
    assert!(registered.status.success(), "{registered:?}");
    let (mut stream, mut seen) = open_events(&dashboard);
    let sent = cli(
        &dashboard.broker.addr,
        &session,
        &["send", "bob", "live <b>from</b> the cli"],
    );
    assert!(sent.status.success(), "{sent:?}");
    let text = read_until(
        &mut stream,
        &mut seen,
        "live &lt;b&gt;from&lt;/b&gt; the cli",
    );
    assert!(text.contains("event: message"), "{text}");
    assert!(
        !text.contains("<b>from</b>"),
        "the fragment is escaped: {text}"
    );
}

/// More mail in one read than the stream sends (a broadcast to 60 agents is one commit): the
/// newest 50 are sent, and a `skipped` event says how many were left out.
#[test]
fn a_burst_sends_the_newest_and_says_how_many_were_left_out() {
    let dashboard = Dashboard::start();
    let mut client = dashboard.broker.client();
    let sender = client.register("loud", None).unwrap().session_token;
    for n in 0..60 {
        client.register(&format!("agent{n}"), None).unwrap();
    }
    let (mut stream, mut seen) = open_events(&dashboard);
    let reply = client.broadcast(&sender, "one burst").unwrap();
    let claude_ipc::protocol::schema::mail::BroadcastReply::Delivered(copies) = reply else {
        panic!("{reply:?}")
    };
    let ids: Vec<i64> = copies.message_ids.iter().map(|id| id.0).collect();
    // The 60 agents and the dashboard's person.
    let n = ids.len();
    assert!(n >= 60, "{copies:?}");
    read_until(&mut stream, &mut seen, "event: skipped");
    let text = read_until(&mut stream, &mut seen, &format!("\"id\":{}", ids[n - 1]));
    assert!(text.contains(&format!("\"count\":{}", n - 50)), "{text}");
    assert_eq!(text.matches("event: message").count(), 50, "{text}");
    assert!(
        !text.contains(&format!("\"id\":{},", ids[n - 51])),
        "the oldest are left out: {text}"
    );
}

/// A live stream with the login cookie, read up to its head, so it is open before what the
/// test does next; returns it with the bytes read so far.
fn open_events(dashboard: &Dashboard) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(&dashboard.host).unwrap();
    let request = format!(
        "GET /events HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\nAccept: text/event-stream\r\n\r\n",
        dashboard.host, dashboard.cookie
    );
    stream.write_all(request.as_bytes()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, "text/event-stream");
    (stream, seen)
}

/// Reads `stream` into `seen` until it holds `wanted`, for up to 30 s; returns all read.
fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, wanted: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buffer = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(seen).into_owned();
        if text.contains(wanted) {
            return text;
        }
        assert!(Instant::now() < deadline, "never saw {wanted:?} in {text}");
        match stream.read(&mut buffer) {
            Ok(0) => panic!("the stream closed before {wanted:?}: {text}"),
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("reading the stream: {e}"),
        }
    }
}

#[test]
fn web_json_is_private_holds_the_login_and_goes_at_a_clean_stop() {
    let dashboard = Dashboard::start();
    let path = dashboard.data_dir().join("web.json");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let web = web_file(&dashboard.data_dir());
    assert_eq!(web["url"], format!("http://{}/", dashboard.host));
    assert_eq!(web["pid"], dashboard.broker.child.id());
    let token = web["login_url"]
        .as_str()
        .unwrap()
        .split("token=")
        .nth(1)
        .unwrap();
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));

    // `claude-ipc web` prints it; `ping` names the dashboard without the token.
    let data_dir = dashboard.data_dir();
    let data_dir = data_dir.to_str().unwrap();
    let session = dashboard._dir.path().join("none.session");
    let printed = cli_with_env(
        &dashboard.broker.addr,
        &session,
        &["web", "--no-open"],
        &[("IPC_DATA_DIR", data_dir)],
    );
    assert!(printed.status.success(), "{printed:?}");
    assert_eq!(
        String::from_utf8_lossy(&printed.stdout).trim(),
        web["login_url"].as_str().unwrap()
    );
    let json_out = cli_with_env(
        &dashboard.broker.addr,
        &session,
        &["web", "--no-open", "--json"],
        &[("IPC_DATA_DIR", data_dir)],
    );
    let printed: Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(printed["login_url"], web["login_url"]);
    assert_eq!(printed["url"], web["url"]);
    let ping = legacy(&dashboard.broker.addr, &json!({"action": "ping"}));
    assert_eq!(ping["web"], web["url"], "{ping}");
    assert!(!ping.to_string().contains(token));
    let status = cli_with_env(
        &dashboard.broker.addr,
        &session,
        &["status"],
        &[("IPC_DATA_DIR", data_dir)],
    );
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(said.contains(web["url"].as_str().unwrap()), "{said}");
    assert!(!said.contains(token));

    let Dashboard { broker, _dir, .. } = dashboard;
    assert!(broker.terminate().success());
    assert!(!path.exists(), "web.json is removed at a clean stop");
    let after = cli_with_env(
        "127.0.0.1:1",
        &session,
        &["web", "--no-open"],
        &[("IPC_DATA_DIR", data_dir)],
    );
    assert!(!after.status.success());
    assert!(
        String::from_utf8_lossy(&after.stderr).contains("serve --web"),
        "{after:?}"
    );
}

#[test]
fn a_non_loopback_web_address_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for addr in ["0.0.0.0:0", "192.0.2.1:8080"] {
        let output = Command::new(binary())
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--web",
                addr,
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .env_remove("IPC_WEB")
            .output()
            .unwrap();
        assert!(!output.status.success(), "{addr}: {output:?}");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains("loopback"), "{addr}: {said}");
    }
}

#[test]
fn markup_in_a_subject_or_content_is_shown_as_text() {
    let dashboard = Dashboard::start();
    let addr = dashboard.broker.addr.clone();
    let alice = legacy_register(&addr, "alice");
    let attack = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'";
    let sent = legacy(
        &addr,
        &json!({"action": "send", "session_token": alice, "to_id": "human",
                "subject": "<b onmouseover=alert(3)>hi</b>",
                "message": {"content": attack}}),
    );
    assert_eq!(sent["status"], "ok", "{sent}");
    let id = sent["message_id"].as_i64().unwrap();
    for path in [
        "/".to_owned(),
        "/inbox".to_owned(),
        format!("/thread/{id}"),
        "/search?q=alert".to_owned(),
        "/conversations".to_owned(),
    ] {
        let page = dashboard.page(&path);
        assert_eq!(page.status, 200, "{path}");
        assert!(
            !page.body.contains("<script>alert"),
            "{path}: {}",
            page.body
        );
        assert!(!page.body.contains("<img"), "{path}");
        assert!(!page.body.contains("<b onmouseover"), "{path}");
    }
    let overview = dashboard.page("/");
    assert!(overview
        .body
        .contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(overview
        .body
        .contains("&lt;b onmouseover=alert(3)&gt;hi&lt;/b&gt;"));
    // A search query is echoed back escaped too.
    let echoed = dashboard.page("/search?q=%22%3E%3Cscript%3E");
    assert!(!echoed.body.contains("\"><script>"), "{}", echoed.body);
}

#[test]
fn a_malformed_search_shows_the_invalid_query_text() {
    let dashboard = Dashboard::start();
    let answer = dashboard.page("/search?q=%22unclosed");
    assert_eq!(
        answer.status, 200,
        "a page with an error message, not a failed load"
    );
    assert!(
        answer.body.contains("<p class=\"error\">query:"),
        "{}",
        answer.body
    );
}

#[test]
fn the_person_marks_inbox_mail_done_and_only_its_own() {
    let dashboard = Dashboard::start();
    let addr = dashboard.broker.addr.clone();
    let alice = legacy_register(&addr, "alice");
    let to_human = legacy_send(&addr, &alice, "human", "for you")["message_id"]
        .as_i64()
        .unwrap();
    let to_bob = legacy_send(&addr, &alice, "bob", "not yours")["message_id"]
        .as_i64()
        .unwrap();
    let inbox = dashboard.page("/inbox");
    assert!(inbox.body.contains("id=\"done\""), "{}", inbox.body);
    let (cookie, origin) = (dashboard.cookie.clone(), dashboard.origin());
    let ids = format!("{to_human},{to_bob}");
    let done = dashboard.request(
        "POST",
        "/inbox/done",
        &[("Cookie", &cookie), ("Origin", &origin)],
        &form(&[("ids", &ids), ("back", "/inbox")]),
    );
    assert_eq!(done.status, 303, "{done:?}");
    assert_eq!(done.header("x-ipc-settled"), Some("1"));
    let delivered = |id: i64| {
        dashboard.count(&format!(
            "SELECT count(*) FROM messages WHERE id = {id} AND delivered_at IS NOT NULL"
        ))
    };
    assert_eq!(delivered(to_human), 1);
    assert_eq!(
        delivered(to_bob),
        0,
        "bob's mail is not the human's to settle"
    );
    // Without the dashboard's Origin the same post does nothing.
    let to_human_again = legacy_send(&addr, &alice, "human", "again")["message_id"]
        .as_i64()
        .unwrap();
    let forged = dashboard.request(
        "POST",
        "/inbox/done",
        &[("Cookie", &cookie), ("Origin", "http://attacker.example")],
        &form(&[("ids", &to_human_again.to_string())]),
    );
    assert_eq!(forged.status, 403);
    assert_eq!(delivered(to_human_again), 0);
}

#[test]
fn live_streams_are_capped_and_the_broker_keeps_serving() {
    let dashboard = Dashboard::start();
    let open_stream = || {
        let mut stream = TcpStream::connect(&dashboard.host).unwrap();
        let request = format!(
            "GET /events HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\n\r\n",
            dashboard.host, dashboard.cookie
        );
        stream.write_all(request.as_bytes()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        stream
    };
    let mut streams = Vec::new();
    for _ in 0..64 {
        let mut stream = open_stream();
        let mut seen = Vec::new();
        read_until(&mut stream, &mut seen, "200 OK");
        streams.push(stream);
    }
    let mut refused = open_stream();
    let mut seen = Vec::new();
    let text = read_until(&mut refused, &mut seen, "limit is 64");
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    // Pages and the broker itself still answer.
    assert_eq!(dashboard.page("/").status, 200);
    let ping = legacy(&dashboard.broker.addr, &json!({"action": "ping"}));
    assert_eq!(ping["status"], "ok");
    // A closed stream frees its place.
    drop(streams.pop());
    wait_until("a freed stream can be opened again", || {
        let mut again = open_stream();
        let mut seen = Vec::new();
        let head = read_until(&mut again, &mut seen, "\r\n");
        head.starts_with("HTTP/1.1 200")
    });
}

#[test]
fn an_oversized_compose_is_refused_and_stores_nothing() {
    let dashboard = Dashboard::start();
    legacy_register(&dashboard.broker.addr, "alice");
    let huge = "x".repeat(2 * 1024 * 1024);
    let answer = dashboard.compose(&[("to", "alice"), ("content", &huge)]);
    assert_eq!(answer.status, 413, "{:?}", answer.status);
    assert_eq!(dashboard.count("SELECT count(*) FROM messages"), 0);
}

#[test]
fn a_clean_stop_ends_open_live_streams() {
    let dashboard = Dashboard::start();
    let mut stream = TcpStream::connect(&dashboard.host).unwrap();
    let request = format!(
        "GET /events HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\n\r\n",
        dashboard.host, dashboard.cookie
    );
    stream.write_all(request.as_bytes()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, "text/event-stream");
    let Dashboard { broker, _dir, .. } = dashboard;
    assert!(broker.terminate().success());
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut rest = Vec::new();
    assert!(
        stream.read_to_end(&mut rest).is_ok(),
        "the stream was ended"
    );
}

#[test]
fn the_live_stream_sends_the_agents_table_again_when_an_agent_arrives() {
    let dashboard = Dashboard::start();
    let overview = dashboard.page("/");
    assert!(
        overview.body.contains("data-live=\"agents\""),
        "{}",
        overview.body
    );
    let mut stream = TcpStream::connect(&dashboard.host).unwrap();
    let request = format!(
        "GET /events?agents=1 HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\n\r\n",
        dashboard.host, dashboard.cookie
    );
    stream.write_all(request.as_bytes()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, "text/event-stream");
    legacy_register(&dashboard.broker.addr, "carol");
    let text = read_until(&mut stream, &mut seen, "data-agent=\\\"carol\\\"");
    assert!(text.contains("event: agents"), "{text}");
}

#[test]
fn the_sweeper_keeps_the_humans_name_and_its_expired_session_is_renewed() {
    use claude_ipc::broker::human::{HumanMessage, HumanSent};
    let broker = crate::common::TestBroker::start_with(|c| {
        c.limits.instance_retention = Duration::from_secs(7 * 86_400);
        c.human = claude_ipc::domain::InstanceName::parse("human");
    });
    let hub = broker.broker();
    broker.block_on(hub.admit_human()).unwrap();
    broker.register("alice");
    // Ten idle days: past the session expiry (24 h) and the instance retention (7 d).
    for _ in 0..10 {
        broker.clock.advance(chrono::Duration::days(1));
        broker.sweep();
    }
    assert_eq!(
        broker.count("SELECT count(*) FROM instances WHERE name = 'human'"),
        1,
        "agents can still send to the human"
    );
    assert_eq!(
        broker.count("SELECT count(*) FROM instances WHERE name = 'alice'"),
        0,
        "an idle agent was reaped as usual"
    );
    let alice = broker.register("alice");
    let sent = broker.block_on(hub.send_as_human(HumanMessage {
        to: "alice".into(),
        subject: None,
        content: "still here".into(),
        reply_to: None,
    }));
    assert!(matches!(sent, Ok(HumanSent::One(_))), "{sent:?}");
    let mail = legacy_check(&broker.addr.to_string(), &alice);
    assert_eq!(mail["messages"][0]["kind"], "human", "{mail}");
}

#[test]
fn a_large_message_shows_its_summary_and_links_its_content() {
    let dashboard = Dashboard::start();
    let addr = dashboard.broker.addr.clone();
    let alice = legacy_register(&addr, "alice");
    let content = format!("LARGE-START {} LARGE-END", "word ".repeat(20_000));
    let sent = legacy_send(&addr, &alice, "bob", &content);
    let id = sent["message_id"].as_i64().unwrap();
    let overview = dashboard.page("/");
    let link = format!("class=\"large\" href=\"/message/{id}/content\"");
    assert!(overview.body.contains(&link), "{}", overview.body);
    assert!(
        overview.body.contains("LARGE-START"),
        "the summary is shown"
    );
    assert!(
        !overview.body.contains("LARGE-END"),
        "the page holds the summary only"
    );
    let full = dashboard.page(&format!("/message/{id}/content"));
    assert_eq!(full.status, 200);
    assert!(full
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    assert!(
        full.body.contains("LARGE-END"),
        "the link gives the whole content"
    );
    let before = delivery_rows(&dashboard);
    dashboard.page(&format!("/message/{id}/content"));
    assert_eq!(
        delivery_rows(&dashboard),
        before,
        "reading it consumes nothing"
    );
}

/// A GET on `host` with `cookie`, for the in-process dashboard below.
fn get_with_cookie(host: &str, path: &str, cookie: &str) -> Answer {
    let mut stream = TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    parse_answer(&raw)
}

#[test]
fn mail_waiting_past_ten_minutes_marks_its_agent_stuck() {
    let broker = crate::common::TestBroker::start_with(|c| {
        c.human = claude_ipc::domain::InstanceName::parse("human");
    });
    let web = broker
        .block_on(claude_ipc::web::start(
            broker.broker(),
            claude_ipc::web::WebConfig {
                addr: "127.0.0.1:0".parse().unwrap(),
                broker_addr: broker.addr,
                data_dir: &broker.data_dir(),
                database: &broker.db_path(),
                large_message_dir: broker.data_dir().join("large-messages"),
                max_request_bytes: 1024 * 1024,
            },
        ))
        .unwrap();
    let host = web.addr.to_string();
    let login_url = web_file(&broker.data_dir())["login_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let login_path = &login_url[login_url.find("/login").unwrap()..];
    let login = get_with_cookie(&host, login_path, "");
    let cookie = login
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let (alice, bob) = (broker.register("alice"), broker.register("bob"));
    let mut client = broker.client();
    client
        .send(&bob, "alice", "are you there?", None, None)
        .unwrap();
    let row = |page: &Answer| {
        let start = page.body.find("data-agent=\"alice\"").unwrap();
        page.body[start..start + 200].to_owned()
    };
    let fresh = get_with_cookie(&host, "/agents", &cookie);
    assert!(!row(&fresh).contains("stuck"), "{}", row(&fresh));
    assert!(
        row(&fresh).contains("data-waiting=\"1\""),
        "{}",
        row(&fresh)
    );
    broker.clock.advance(chrono::Duration::minutes(11));
    let later = get_with_cookie(&host, "/agents", &cookie);
    assert!(row(&later).contains("class=\"stuck\""), "{}", row(&later));
    // Read at last, the agent is not stuck any more.
    client.check(&alice).unwrap();
    // Marked delivered once the broker knows the reply was taken, just after it is written.
    wait_until("the agent's row is no longer stuck", || {
        !row(&get_with_cookie(&host, "/agents", &cookie)).contains("stuck")
    });
    broker.block_on(web.shutdown());
}
