//! The dashboard workloads (`serve --web`), both over HTTP with the login cookie, logged in
//! through the URL `claude-ipc web --json` prints:
//!
//! - [`pages`]: a database of 1,000 instances and a million messages, filled through the wire
//!   as the search workload fills its own (every row through the broker's own insert), plus a
//!   long thread and mail to the human; then every page is timed, each list's first page and
//!   a deep one reached by following its `rel="next"` links.
//! - [`stream_cost`]: 50 busy agents sending and checking, in interleaved rounds with no
//!   dashboard stream open and with five `/events` streams reading, so a slow spell of the
//!   machine falls on both alike; the ratio of their throughputs is what the stream costs.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http::{next_link, HttpClient};
use crate::latency::Samples;
use crate::search::{self, Vocabulary};
use crate::wire::{expect_ok, Connection, WireError};
use crate::workloads::{self, frame, Delivery, Instance, Kind, Mailbox, Run, Target};

/// The dashboard's part of `serve`'s command line for a broker the run starts.
pub const SERVE_WEB: [&str; 2] = ["--web", "127.0.0.1:0"];

const INSTANCES: usize = 1_000;
/// Replies in the one long thread (between the first two instances).
const THREAD_REPLIES: u64 = 2_000;
/// Messages agents send to the human, for the inbox.
const TO_HUMAN: u64 = 1_000;
/// The human's name when `serve` is not told another.
const HUMAN: &str = "human";
/// Timed loads of each page.
const SAMPLES_PER_PAGE: usize = 100;
/// How far down the newest-first lists of a million the deep pages are: 200 pages of 50 is
/// the 10,000th thread back.
const DEEP_STEPS: usize = 200;
/// Agents in the stream-cost workload, and dashboard streams open in its "with" rounds.
pub const BUSY_AGENTS: usize = 50;
const STREAMS: usize = 5;
/// Rounds of the stream-cost workload, alternating without and with streams.
const ROUNDS: usize = 8;

/// A logged-in dashboard: its address and the cookie the login set.
#[derive(Debug, Clone)]
pub struct Login {
    pub addr: SocketAddr,
    pub cookie: String,
}

impl Login {
    pub fn client(&self) -> HttpClient {
        HttpClient::new(self.addr, Some(self.cookie.clone()))
    }
}

/// Asks `claude-ipc web --no-open --json` for the login URL of the broker on `data_dir`
/// (retrying while the broker writes web.json), opens it, and keeps the cookie it sets.
pub fn log_in(binary: &Path, data_dir: &Path) -> Result<Login, WireError> {
    let login_url = printed_login_url(binary, data_dir)?;
    let rest = login_url
        .strip_prefix("http://")
        .ok_or_else(|| WireError::Refused(format!("not an http URL: {login_url}")))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr: SocketAddr = host
        .parse()
        .map_err(|_| WireError::Refused(format!("not a loopback address: {host}")))?;
    let response = HttpClient::new(addr, None).get(path)?;
    let cookie = response
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .filter(|_| response.status == 303)
        .ok_or_else(|| {
            WireError::Refused(format!(
                "the login answered {} without a cookie: {}",
                response.status,
                response.text()
            ))
        })?;
    Ok(Login {
        addr,
        cookie: cookie.to_owned(),
    })
}

fn printed_login_url(binary: &Path, data_dir: &Path) -> Result<String, WireError> {
    let started = Instant::now();
    loop {
        let output = Command::new(binary)
            .args(["web", "--no-open", "--json", "--data-dir"])
            .arg(data_dir)
            .output()?;
        if output.status.success() {
            let printed: Value = serde_json::from_slice(&output.stdout)
                .map_err(|e| WireError::NotJson(e.to_string()))?;
            if let Some(url) = printed["login_url"].as_str() {
                return Ok(url.to_owned());
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err(WireError::Refused(format!(
                "`claude-ipc web` printed no login URL: {}",
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One page's timings.
#[derive(Debug, Clone)]
pub struct PageFigures {
    pub page: String,
    pub path: String,
    /// `rel="next"` links followed to reach it, and whether the list ended before the
    /// workload meant to stop.
    pub depth: usize,
    pub ended_early: bool,
    pub bytes: usize,
    pub latency: Samples,
}

/// What the pages workload measured.
#[derive(Debug, Clone)]
pub struct WebFigures {
    pub stored: u64,
    pub fill_elapsed: Duration,
    pub pages: Vec<PageFigures>,
}

impl WebFigures {
    /// The slowest page's p99: the figure the target is about.
    pub fn slowest_p99(&self) -> Duration {
        self.pages
            .iter()
            .map(|p| p.latency.summary().p99)
            .max()
            .unwrap_or_default()
    }

    pub fn describe(&self) -> String {
        format!(
            "{} messages between {INSTANCES} instances (one thread of {}, {TO_HUMAN} to the human) \
             stored in {:.1} s; each page loaded {SAMPLES_PER_PAGE} times with the cookie",
            self.stored,
            THREAD_REPLIES + 1,
            self.fill_elapsed.as_secs_f64()
        )
    }
}

/// Fills the broker with `messages` messages and times every dashboard page.
pub fn pages(target: &Target, login: &Login, messages: u64) -> Result<WebFigures, WireError> {
    let instances = workloads::register_many(target, "web", INSTANCES)?;
    let vocabulary = Vocabulary::new();
    let started = Instant::now();
    search::fill(target, &instances, &vocabulary, messages)?;
    let root = long_thread(target, &instances[0], &instances[1])?;
    mail_to_human(target, &instances)?;
    let fill_elapsed = started.elapsed();
    let stored = messages + THREAD_REPLIES + 1 + TO_HUMAN;
    let (a, b) = (&instances[0].name, &instances[1].name);
    let plan: Vec<(&str, String, usize)> = vec![
        ("overview", "/".into(), 0),
        ("agents, first page", "/agents".into(), 0),
        ("agents, last page", "/agents".into(), usize::MAX),
        ("conversations, first page", "/conversations".into(), 0),
        (
            "conversations, 200 pages back",
            "/conversations".into(),
            DEEP_STEPS,
        ),
        ("thread of 2,001, first page", format!("/thread/{root}"), 0),
        (
            "thread of 2,001, last page",
            format!("/thread/{root}"),
            usize::MAX,
        ),
        (
            "pair, first page",
            format!("/conversations?with={a}&and={b}"),
            0,
        ),
        (
            "pair, last page",
            format!("/conversations?with={a}&and={b}"),
            usize::MAX,
        ),
        (
            "one agent's mail, first page",
            format!("/conversations?with={a}"),
            0,
        ),
        (
            "search, common word",
            format!("/search?q={}", vocabulary.word(0)),
            0,
        ),
        (
            "search, common word, 200 pages back",
            format!("/search?q={}", vocabulary.word(0)),
            DEEP_STEPS,
        ),
        (
            "search, rare word",
            format!("/search?q={}", vocabulary.word(12_000)),
            0,
        ),
        ("broker", "/broker".into(), 0),
        ("inbox, first page", "/inbox".into(), 0),
        ("inbox, last page", "/inbox".into(), usize::MAX),
    ];
    let mut client = login.client();
    let pages = plan
        .into_iter()
        .map(|(page, start, steps)| {
            let (path, depth) = walk(&mut client, &start, steps)?;
            let mut figures = time_page(&mut client, page, path)?;
            figures.depth = depth;
            figures.ended_early = steps != usize::MAX && depth < steps;
            Ok::<_, WireError>(figures)
        })
        .collect::<Result<_, _>>()?;
    Ok(WebFigures {
        stored,
        fill_elapsed,
        pages,
    })
}

/// Follows `rel="next"` from `start` up to `steps` times; returns the page reached and how
/// many links led there.
fn walk(client: &mut HttpClient, start: &str, steps: usize) -> Result<(String, usize), WireError> {
    let mut path = start.to_owned();
    let mut taken = 0;
    while taken < steps {
        let page = ok_page(client, &path)?;
        match next_link(&page.text()) {
            Some(next) => path = next,
            None => break,
        }
        taken += 1;
    }
    Ok((path, taken))
}

fn time_page(client: &mut HttpClient, page: &str, path: String) -> Result<PageFigures, WireError> {
    let mut latency = Samples::default();
    let mut bytes = 0;
    for _ in 0..SAMPLES_PER_PAGE {
        let begun = Instant::now();
        bytes = ok_page(client, &path)?.body.len();
        latency.record(begun.elapsed());
    }
    eprint!(
        "\r  {page}: p99 {:.1} ms   ",
        latency.summary().p99.as_secs_f64() * 1e3
    );
    Ok(PageFigures {
        page: page.to_owned(),
        path,
        depth: 0,
        ended_early: false,
        bytes,
        latency,
    })
}

fn ok_page(client: &mut HttpClient, path: &str) -> Result<crate::http::Response, WireError> {
    let response = client.get(path)?;
    if response.status != 200 {
        return Err(WireError::Refused(format!(
            "{path} answered {}: {}",
            response.status,
            response.text()
        )));
    }
    Ok(response)
}

/// One question from `a` to `b` and [`THREAD_REPLIES`] answers to it, from both sides in
/// turn, pipelined on one connection; returns the thread's id (the question's).
fn long_thread(target: &Target, a: &Instance, b: &Instance) -> Result<i64, WireError> {
    let mut connection = Connection::open(target.addr)?;
    let question = json!({"action": "send", "session_token": a.token, "to_id": b.name,
        "subject": "the long thread", "message": {"content": "shall we page this thread?"}});
    let reply = expect_ok(connection.request(&frame(&question, Kind::Persistent))?)?;
    let root = reply["message_id"]
        .as_i64()
        .ok_or_else(|| WireError::Refused(format!("send replied without an id: {reply}")))?;
    let answers: Vec<u8> = (0..THREAD_REPLIES)
        .flat_map(|i| {
            let (from, to) = if i % 2 == 0 { (b, a) } else { (a, b) };
            let answer = json!({"action": "send", "session_token": from.token,
                "to_id": to.name, "reply_to": root,
                "message": {"content": format!("answer {i} in the long thread")}});
            frame(&answer, Kind::Persistent)
        })
        .collect();
    connection.write(&answers)?;
    for _ in 0..THREAD_REPLIES {
        expect_ok(connection.read_reply()?)?;
    }
    Ok(root)
}

/// [`TO_HUMAN`] messages from the instances in turn to the human, pipelined.
fn mail_to_human(target: &Target, instances: &[Instance]) -> Result<(), WireError> {
    let mut connection = Connection::open(target.addr)?;
    let sends: Vec<u8> = (0..TO_HUMAN)
        .flat_map(|i| {
            let from = &instances[i as usize % instances.len()];
            let send = workloads::send_request(from, HUMAN, &format!("report {i} for the human"));
            frame(&send, Kind::Persistent)
        })
        .collect();
    connection.write(&sends)?;
    for _ in 0..TO_HUMAN {
        expect_ok(connection.read_reply()?)?;
    }
    Ok(())
}

/// What the stream-cost workload measured.
#[derive(Debug, Clone)]
pub struct StreamCost {
    pub without: Run,
    pub with: Run,
    pub delivery: Delivery,
    /// `message` events each stream received, over all its rounds.
    pub events_per_stream: Vec<u64>,
}

impl StreamCost {
    /// Throughput with the streams open as a share of throughput without.
    pub fn ratio(&self) -> f64 {
        self.with.rate() / self.without.rate().max(1e-9)
    }

    pub fn describe(&self) -> String {
        format!(
            "{BUSY_AGENTS} agents sending and checking, {ROUNDS} interleaved rounds: {:.0}/s \
             without a stream, {:.0}/s with {STREAMS} /events streams open ({:.3}x); \
             events read per stream: {:?}",
            self.without.rate(),
            self.with.rate(),
            self.ratio(),
            self.events_per_stream
        )
    }
}

/// Runs the busy agents in rounds, every other one with [`STREAMS`] streams reading.
pub fn stream_cost(
    target: &Target,
    login: &Login,
    round: Duration,
) -> Result<StreamCost, WireError> {
    let names = workloads::register_many(target, "busy", BUSY_AGENTS)?;
    let mut cost = StreamCost {
        without: Run::default(),
        with: Run::default(),
        delivery: Delivery::default(),
        events_per_stream: vec![0; STREAMS],
    };
    for number in 0..ROUNDS {
        let streaming = number % 2 == 1;
        let streams = if streaming {
            Some(Streams::open(login)?)
        } else {
            None
        };
        let (run, finished) = workloads::mixed(target, &names, round)?;
        if let Some(streams) = streams {
            for (total, events) in cost.events_per_stream.iter_mut().zip(streams.close()?) {
                *total += events;
            }
            cost.with.extend(run);
        } else {
            cost.without.extend(run);
        }
        let delivery = drain_round(target, &names, finished)?;
        cost.delivery = add(cost.delivery, delivery);
    }
    Ok(cost)
}

/// Reads what is left in every mailbox and compares all the round's mail with what was sent.
fn drain_round(
    target: &Target,
    names: &[Instance],
    finished: Vec<workloads::MixedClient>,
) -> Result<Delivery, WireError> {
    let sent: Vec<u64> = finished.iter().map(|c| c.sent).collect();
    let mut received = Vec::new();
    for (client, who) in finished.into_iter().zip(names) {
        received.extend(client.received);
        received.extend(Mailbox::open(target, who)?.drain()?);
    }
    Ok(Delivery::compare(
        workloads::expected_contents(&sent),
        &received,
    ))
}

fn add(a: Delivery, b: Delivery) -> Delivery {
    Delivery {
        expected: a.expected + b.expected,
        delivered: a.delivered + b.delivered,
        missing: a.missing + b.missing,
        duplicated: a.duplicated + b.duplicated,
    }
}

/// Dashboard event streams, each read by its own thread as a browser tab would.
struct Streams {
    stop: Arc<AtomicBool>,
    readers: Vec<std::thread::JoinHandle<Result<u64, WireError>>>,
}

impl Streams {
    fn open(login: &Login) -> Result<Streams, WireError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut readers = Vec::new();
        for _ in 0..STREAMS {
            let (head, reader) = login.client().open_stream("/events")?;
            if head.status != 200 {
                return Err(WireError::Refused(format!(
                    "/events answered {}",
                    head.status
                )));
            }
            reader
                .get_ref()
                .set_read_timeout(Some(Duration::from_millis(100)))?;
            let stop = stop.clone();
            readers.push(std::thread::spawn(move || read_events(reader, &stop)));
        }
        Ok(Streams { stop, readers })
    }

    /// Stops the readers; returns how many `message` events each read.
    fn close(self) -> Result<Vec<u64>, WireError> {
        self.stop.store(true, Ordering::Relaxed);
        self.readers
            .into_iter()
            .map(|reader| reader.join().expect("a stream reader panicked"))
            .collect()
    }
}

fn read_events(
    mut reader: std::io::BufReader<std::net::TcpStream>,
    stop: &AtomicBool,
) -> Result<u64, WireError> {
    let mut events = 0;
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_line(&mut line) {
            Ok(0) => return Err(WireError::Closed),
            Ok(_) => {
                if line.trim_end() == "event: message" {
                    events += 1;
                }
                line.clear();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(events)
}
