//! The workloads. Each drives the target with blocking clients, one thread per client, and
//! returns what it measured; the same closed loop drives the echo ceiling with the same bytes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use claude_ipc::protocol::auth::{self, ProofUid};
use serde_json::{json, Value};

use crate::latency::Samples;
use crate::wire::{self, expect_ok, Connection, WireError};

/// How often a legacy-only target is polled where this broker would be long-polled.
const LEGACY_POLL_INTERVAL: Duration = Duration::from_millis(5);
/// How long fan-out readers keep reading after the last broadcast before giving up on mail
/// that never came.
const DELIVERY_GRACE: Duration = Duration::from_secs(10);

/// How a client uses its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Connect, one request, one reply, close: what the Python original's clients do.
    Legacy,
    /// One connection per client, request after request.
    Persistent,
}

/// Where a workload sends, and how.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The target keeps connections open for more than one request.
    pub persistent: bool,
    /// The broker's shared secret, for register's auth token.
    pub secret: Option<String>,
    /// Makes this run's names unique on a broker that other runs have used.
    pub prefix: String,
}

/// A closed loop's totals: operations finished, how long the loop ran, and each latency.
#[derive(Debug, Default, Clone)]
pub struct Run {
    pub ops: u64,
    pub elapsed: Duration,
    pub latency: Samples,
}

impl Run {
    pub fn rate(&self) -> f64 {
        per_second(self.ops, self.elapsed)
    }

    /// Adds another stretch of the same workload: its operations, its time, its latencies.
    pub fn extend(&mut self, more: Run) {
        self.ops += more.ops;
        self.elapsed += more.elapsed;
        self.latency.merge(more.latency);
    }
}

pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Runs `clients` threads, each repeating `op` on its own state until `duration` has passed;
/// the clock starts once every client has finished `setup`. Returns the totals and the
/// clients' final states.
pub fn closed_loop<S: Send>(
    clients: usize,
    duration: Duration,
    setup: impl Fn(usize) -> Result<S, WireError> + Sync,
    op: impl Fn(&mut S, u64) -> Result<(), WireError> + Sync,
) -> Result<(Run, Vec<S>), WireError> {
    let barrier = Barrier::new(clients);
    let outcomes: Vec<Result<(S, Samples, Duration), WireError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|client| {
                let (barrier, setup, op) = (&barrier, &setup, &op);
                scope.spawn(move || {
                    let state = setup(client);
                    barrier.wait();
                    let mut state = state?;
                    let (started, mut samples) = (Instant::now(), Samples::default());
                    let mut seq = 0;
                    while started.elapsed() < duration {
                        let begun = Instant::now();
                        op(&mut state, seq)?;
                        samples.record(begun.elapsed());
                        seq += 1;
                    }
                    Ok((state, samples, started.elapsed()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a bench client panicked"))
            .collect()
    });
    let mut run = Run::default();
    let mut states = Vec::new();
    for outcome in outcomes {
        let (state, samples, elapsed) = outcome?;
        run.ops += samples.len() as u64;
        run.elapsed = run.elapsed.max(elapsed);
        run.latency.merge(samples);
        states.push(state);
    }
    Ok((run, states))
}

/// A registered name and its session token.
#[derive(Debug, Clone)]
pub struct Instance {
    pub name: String,
    pub token: String,
}

/// Registers `name` and returns it with its session token: in open mode the way the Python
/// original's scripts do (one bare request); with a secret by challenge-response, so the
/// benchmark works against a broker that refuses the static token too.
pub fn register(target: &Target, name: &str) -> Result<Instance, WireError> {
    let token = match target.secret.as_deref() {
        Some(secret) => register_by_challenge(target, name, secret)?,
        None => register_open(target, name)?,
    };
    Ok(Instance {
        name: name.to_owned(),
        token,
    })
}

fn register_open(target: &Target, name: &str) -> Result<String, WireError> {
    let request = json!({"action": "register", "instance_id": name, "auth_token": ""});
    let reply = expect_ok(wire::legacy_request(
        target.addr,
        &frame(&request, Kind::Legacy),
    )?)?;
    session_token(&reply)
}

/// Registration by challenge-response, as the product's client does it: the broker proves it
/// knows the secret (for this name, nonce and the uid it sees this connection as) before the
/// client's proof is sent.
fn register_by_challenge(target: &Target, name: &str, secret: &str) -> Result<String, WireError> {
    let nonce = auth::fresh_nonce()?;
    let mut connection = Connection::open(target.addr)?;
    let request = json!({"action": "challenge", "instance_id": name, "client_nonce": nonce});
    let challenge = expect_ok(connection.request(&frame(&request, Kind::Persistent))?)?;
    let field = |key: &str| challenge[key].as_str().unwrap_or_default().to_owned();
    let (server_nonce, uid) = (field("server_nonce"), own_proof_uid(&field("client_uid")));
    let expected = auth::server_proof(secret, name, &nonce, &server_nonce, uid);
    if !auth::constant_time_eq(field("server_proof").as_bytes(), expected.as_bytes()) {
        return Err(WireError::Refused(format!(
            "the target's challenge reply does not prove it knows the secret: {challenge}"
        )));
    }
    let proof = auth::client_proof(secret, name, &server_nonce, &nonce, uid);
    let request = json!({"action": "register", "instance_id": name,
        "challenge_id": field("challenge_id"), "auth_proof": proof});
    let reply = expect_ok(connection.request(&frame(&request, Kind::Persistent))?)?;
    session_token(&reply)
}

/// The uid both proofs cover: this process's, unless the broker says it cannot see it.
fn own_proof_uid(seen_by_broker: &str) -> ProofUid {
    if seen_by_broker == auth::UNKNOWN_UID {
        ProofUid(None)
    } else {
        // SAFETY: geteuid has no preconditions and cannot fail.
        ProofUid(Some(unsafe { libc::geteuid() }))
    }
}

fn session_token(reply: &Value) -> Result<String, WireError> {
    reply["session_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| WireError::Refused(format!("register replied without a token: {reply}")))
}

/// Registers `count` names `<prefix>-<role>-<i>`.
pub fn register_many(
    target: &Target,
    role: &str,
    count: usize,
) -> Result<Vec<Instance>, WireError> {
    (0..count)
        .map(|i| register(target, &format!("{}-{role}-{i}", target.prefix)))
        .collect()
}

/// A request's bytes: legacy clients send the bare object, persistent ones end it with `\n`.
pub fn frame(request: &Value, kind: Kind) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(request).expect("JSON values always serialize");
    if kind == Kind::Persistent {
        bytes.push(b'\n');
    }
    bytes
}

// Requests carry `from_id` and `instance_id` as the Python clients do: this broker ignores
// them (the session decides who speaks), but the original may expect them.

pub fn send_request(from: &Instance, to: &str, content: &str) -> Value {
    json!({"action": "send", "session_token": from.token, "from_id": from.name, "to_id": to,
        "message": {"content": content}})
}

pub fn broadcast_request(from: &Instance, content: &str) -> Value {
    json!({"action": "broadcast", "session_token": from.token, "from_id": from.name,
        "message": {"content": content}})
}

pub fn check_request(who: &Instance) -> Value {
    json!({"action": "check", "session_token": who.token, "instance_id": who.name})
}

/// The content a sender puts in its `seq`th message, so the drain can match every one.
pub fn content(sender: usize, seq: u64) -> String {
    format!("bench message {seq} from client {sender}")
}

/// A client of [`sends`]: its connection (persistent only) and how many sends it finished.
pub struct Sender {
    link: Link,
    me: Instance,
    client: usize,
    sent: u64,
}

/// Where a run of [`sends`] goes and what it expects back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replies {
    /// A ceiling: the same bytes are written and echoed back, whatever they say.
    Echoed,
    /// The broker: every reply must be `ok`.
    Checked,
}

/// Sends as fast as `senders.len()` closed-loop clients can, every one to `sink`, for
/// `duration`. Client `i` numbers its contents on from `sent_before[i]` (zero when absent), so
/// runs in turns send each content once; returns each client's total.
pub fn sends(
    addr: SocketAddr,
    kind: Kind,
    (senders, sink): (&[Instance], &str),
    duration: Duration,
    replies: Replies,
    sent_before: &[u64],
) -> Result<(Run, Vec<u64>), WireError> {
    let setup = |client: usize| {
        Ok(Sender {
            link: Link::with_kind(addr, kind)?,
            me: senders[client].clone(),
            client,
            sent: sent_before.get(client).copied().unwrap_or(0),
        })
    };
    let op = |sender: &mut Sender, _seq: u64| {
        let text = content(sender.client, sender.sent);
        let reply = sender
            .link
            .exchange(&send_request(&sender.me, sink, &text))?;
        if replies == Replies::Checked {
            expect_ok(reply)?;
        }
        sender.sent += 1;
        Ok(())
    };
    let (run, finished) = closed_loop(senders.len(), duration, setup, op)?;
    Ok((run, finished.iter().map(|s| s.sent).collect()))
}

/// The texts of the mail in a `check` reply (the Python original nests them the same way).
pub fn contents(reply: &Value) -> Vec<String> {
    reply["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .filter_map(|m| m["message"]["content"].as_str().or(m["content"].as_str()))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// One client's way to the target: a persistent connection where the target keeps them open,
/// else a new connection for every request, as the Python original requires.
pub struct Link {
    addr: SocketAddr,
    connection: Option<Connection>,
}

impl Link {
    /// The kind of link the target supports: persistent where it can be.
    pub fn open(target: &Target) -> Result<Link, WireError> {
        let kind = if target.persistent {
            Kind::Persistent
        } else {
            Kind::Legacy
        };
        Link::with_kind(target.addr, kind)
    }

    /// A link of the given kind, whatever the target supports: the send workloads measure
    /// legacy connections against a broker that could keep them open.
    pub fn with_kind(addr: SocketAddr, kind: Kind) -> Result<Link, WireError> {
        let connection = match kind {
            Kind::Persistent => Some(Connection::open(addr)?),
            Kind::Legacy => None,
        };
        Ok(Link { addr, connection })
    }

    pub fn is_persistent(&self) -> bool {
        self.connection.is_some()
    }

    /// One request and its reply, whatever the reply says.
    pub fn exchange(&mut self, request: &Value) -> Result<Value, WireError> {
        match &mut self.connection {
            Some(connection) => connection.request(&frame(request, Kind::Persistent)),
            None => wire::legacy_request(self.addr, &frame(request, Kind::Legacy)),
        }
    }

    /// One request and its reply, which must be `ok`.
    pub fn request(&mut self, request: &Value) -> Result<Value, WireError> {
        expect_ok(self.exchange(request)?)
    }

    /// Several requests: written in one go and then read (pipelined) on a persistent
    /// connection, one after another otherwise. Every reply must be `ok`.
    pub fn requests(&mut self, requests: &[Value]) -> Result<Vec<Value>, WireError> {
        let Some(connection) = &mut self.connection else {
            return requests.iter().map(|r| self.request(r)).collect();
        };
        let bytes: Vec<u8> = requests
            .iter()
            .flat_map(|r| frame(r, Kind::Persistent))
            .collect();
        connection.write(&bytes)?;
        requests
            .iter()
            .map(|_| expect_ok(connection.read_reply()?))
            .collect()
    }
}

/// Reads one instance's mail: over one persistent connection (long-polling when asked), or
/// one legacy connection per check where the target only speaks legacy.
pub struct Mailbox {
    who: Instance,
    link: Link,
}

impl Mailbox {
    pub fn open(target: &Target, who: &Instance) -> Result<Mailbox, WireError> {
        Ok(Mailbox {
            who: who.clone(),
            link: Link::open(target)?,
        })
    }

    /// One `check`, auto-acknowledged. `wait` long-polls on a persistent connection; a
    /// legacy-only target is polled instead, so it may return empty early.
    pub fn check(&mut self, wait: Option<Duration>) -> Result<Vec<String>, WireError> {
        let mut request = check_request(&self.who);
        let persistent = self.link.is_persistent();
        if let (Some(wait), true) = (wait, persistent) {
            request["wait_ms"] = json!(wait.as_millis() as u64);
        }
        let mail = contents(&self.link.request(&request)?);
        if mail.is_empty() && wait.is_some() && !persistent {
            std::thread::sleep(LEGACY_POLL_INTERVAL);
        }
        Ok(mail)
    }

    /// Checks until a check comes back empty; returns everything read.
    pub fn drain(&mut self) -> Result<Vec<String>, WireError> {
        let mut all = Vec::new();
        loop {
            let batch = self.check(None)?;
            if batch.is_empty() {
                return Ok(all);
            }
            all.extend(batch);
        }
    }
}

/// Whether every message that was acknowledged arrived exactly once.
#[derive(Debug, Default, Clone, Copy)]
pub struct Delivery {
    pub expected: u64,
    pub delivered: u64,
    pub missing: u64,
    pub duplicated: u64,
}

impl Delivery {
    pub fn compare(expected: impl IntoIterator<Item = String>, received: &[String]) -> Delivery {
        let mut seen: HashMap<&str, u64> = HashMap::new();
        for text in received {
            *seen.entry(text.as_str()).or_default() += 1;
        }
        let mut delivery = Delivery {
            delivered: received.len() as u64,
            ..Delivery::default()
        };
        for text in expected {
            delivery.expected += 1;
            match seen.get(text.as_str()) {
                None => delivery.missing += 1,
                Some(times) => delivery.duplicated += times - 1,
            }
        }
        delivery
    }

    pub fn complete(&self) -> bool {
        self.missing == 0 && self.duplicated == 0
    }
}

/// What [`sends`] sent, as the contents the drain should find.
pub fn expected_contents(sent_per_client: &[u64]) -> impl Iterator<Item = String> + '_ {
    sent_per_client
        .iter()
        .enumerate()
        .flat_map(|(client, &sent)| (0..sent).map(move |seq| content(client, seq)))
}

/// A mixed client: sends to its neighbour, then checks its own mail, over and over.
pub struct MixedClient {
    connection: Connection,
    me: Instance,
    neighbour: String,
    client: usize,
    pub sent: u64,
    pub received: Vec<String>,
    pub send_latency: Samples,
    pub check_latency: Samples,
}

/// Clients in a ring, each alternating a send to the next with a check of its own mail.
pub fn mixed(
    target: &Target,
    names: &[Instance],
    duration: Duration,
) -> Result<(Run, Vec<MixedClient>), WireError> {
    let setup = |client: usize| {
        Ok(MixedClient {
            connection: Connection::open(target.addr)?,
            me: names[client].clone(),
            neighbour: names[(client + 1) % names.len()].name.clone(),
            client,
            sent: 0,
            received: Vec::new(),
            send_latency: Samples::default(),
            check_latency: Samples::default(),
        })
    };
    let op = |c: &mut MixedClient, seq: u64| {
        let begun = Instant::now();
        if seq.is_multiple_of(2) {
            let text = content(c.client, c.sent);
            let request = send_request(&c.me, &c.neighbour, &text);
            expect_ok(c.connection.request(&frame(&request, Kind::Persistent))?)?;
            c.sent += 1;
            c.send_latency.record(begun.elapsed());
        } else {
            let request = check_request(&c.me);
            let reply = expect_ok(c.connection.request(&frame(&request, Kind::Persistent))?)?;
            c.received.extend(contents(&reply));
            c.check_latency.record(begun.elapsed());
        }
        Ok(())
    };
    closed_loop(names.len(), duration, setup, op)
}

/// `check` latency with exactly `queued` messages waiting, repeated until `duration` passes:
/// a sender queues them (pipelined on one connection), then one timed check reads them.
pub fn check_queued(
    target: &Target,
    queued: usize,
    duration: Duration,
) -> Result<(Samples, u64), WireError> {
    let sender = register(target, &format!("{}-queue-sender", target.prefix))?;
    let reader = register(target, &format!("{}-queue-reader", target.prefix))?;
    let mut sending = Link::open(target)?;
    let mut mailbox = Mailbox::open(target, &reader)?;
    let (started, mut samples, mut short_checks) = (Instant::now(), Samples::default(), 0);
    while started.elapsed() < duration || samples.is_empty() {
        let batch: Vec<Value> = (0..queued)
            .map(|i| send_request(&sender, &reader.name, &format!("queued {i}")))
            .collect();
        sending.requests(&batch)?;
        let begun = Instant::now();
        let read = mailbox.check(None)?.len();
        samples.record(begun.elapsed());
        if read < queued {
            short_checks += 1;
            mailbox.drain()?;
        }
    }
    Ok((samples, short_checks))
}

/// Long-poll wake-up: a reader waits in `check`; a sender sends it one message. Records the
/// time from the send's first byte to the reader's reply, and from the send's acknowledgement
/// (which follows its commit) to the reader's reply.
pub struct Wakeups {
    pub send_to_reply: Samples,
    pub ack_to_reply: Samples,
}

pub fn long_poll(target: &Target, duration: Duration) -> Result<Wakeups, WireError> {
    let sender = register(target, &format!("{}-poll-sender", target.prefix))?;
    let reader = register(target, &format!("{}-poll-reader", target.prefix))?;
    let mut sending = Link::open(target)?;
    let mut mailbox = Mailbox::open(target, &reader)?;
    let (woken_tx, woken) = mpsc::channel::<Result<Instant, WireError>>();
    let (go_tx, go) = mpsc::channel::<()>();
    let mut wakeups = Wakeups {
        send_to_reply: Samples::default(),
        ack_to_reply: Samples::default(),
    };
    std::thread::scope(|scope| {
        scope.spawn(move || {
            while go.recv().is_ok() {
                let result = loop {
                    match mailbox.check(Some(Duration::from_secs(10))) {
                        Ok(mail) if mail.is_empty() => continue,
                        Ok(_) => break Ok(Instant::now()),
                        Err(e) => break Err(e),
                    }
                };
                if woken_tx.send(result).is_err() {
                    return;
                }
            }
        });
        let started = Instant::now();
        let mut seq = 0u64;
        while started.elapsed() < duration || wakeups.send_to_reply.is_empty() {
            go_tx.send(()).expect("the reader outlives the loop");
            // Give the reader's check time to reach the broker and go to sleep there.
            std::thread::sleep(Duration::from_millis(2));
            let begun = Instant::now();
            let request = send_request(&sender, &reader.name, &format!("wake {seq}"));
            sending.request(&request)?;
            let acked = Instant::now();
            let woke = woken.recv().expect("the reader answers every go")?;
            wakeups.send_to_reply.record(woke - begun);
            wakeups
                .ack_to_reply
                .record(woke.saturating_duration_since(acked));
            seq += 1;
        }
        drop(go_tx);
        Ok(wakeups)
    })
}

/// Broadcast fan-out: one sender broadcasts to `receivers` instances that all long-poll.
pub struct FanOut {
    pub broadcasts: Run,
    pub deliveries: u64,
    pub expected_deliveries: u64,
    /// From the start of a broadcast to each receiver's reply carrying it.
    pub delivery_latency: Samples,
    /// From the first broadcast to the last delivery.
    pub delivery_elapsed: Duration,
}

pub fn fan_out(target: &Target, receivers: usize, duration: Duration) -> Result<FanOut, WireError> {
    let sender = register(target, &format!("{}-fan-sender", target.prefix))?;
    let names = register_many(target, "fan", receivers)?;
    let epoch = Instant::now();
    let stopped_at: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let delivered = AtomicU64::new(0);
    let expected = AtomicU64::new(u64::MAX);
    std::thread::scope(|scope| {
        let readers: Vec<_> = names
            .iter()
            .map(|who| {
                let (stopped_at, delivered, expected) = (&stopped_at, &delivered, &expected);
                scope.spawn(move || -> Result<(Samples, Instant), WireError> {
                    let mut mailbox = Mailbox::open(target, who)?;
                    let (mut samples, mut last) = (Samples::default(), Instant::now());
                    let mut mine = 0u64;
                    let finished = |mine: u64| match *stopped_at.lock().expect("not poisoned") {
                        None => false,
                        Some(at) => {
                            mine >= expected.load(Ordering::SeqCst) || at.elapsed() > DELIVERY_GRACE
                        }
                    };
                    while !finished(mine) {
                        for text in mailbox.check(Some(Duration::from_millis(200)))? {
                            let now = Instant::now();
                            if let Some(sent_at) = broadcast_sent_at(&text) {
                                samples.record(now.duration_since(epoch + sent_at));
                            }
                            mine += 1;
                            last = now;
                            delivered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok((samples, last))
                })
            })
            .collect();
        let sent = fan_out_sender(target, &sender, epoch, duration);
        let broadcasts = sent.as_ref().map(|run| run.ops).unwrap_or(0);
        expected.store(broadcasts, Ordering::SeqCst);
        *stopped_at.lock().expect("not poisoned") = Some(Instant::now());
        let mut latency = Samples::default();
        let mut last_delivery = epoch;
        for reader in readers {
            let (samples, last) = reader.join().expect("a bench reader panicked")?;
            latency.merge(samples);
            last_delivery = last_delivery.max(last);
        }
        let broadcasts_run = sent?;
        Ok(FanOut {
            expected_deliveries: broadcasts_run.ops * receivers as u64,
            broadcasts: broadcasts_run,
            deliveries: delivered.load(Ordering::SeqCst),
            delivery_latency: latency,
            delivery_elapsed: last_delivery.duration_since(epoch),
        })
    })
}

/// Broadcasts in a closed loop; each carries the moment it was sent, relative to `epoch`.
fn fan_out_sender(
    target: &Target,
    sender: &Instance,
    epoch: Instant,
    duration: Duration,
) -> Result<Run, WireError> {
    let op = |link: &mut Link, seq: u64| {
        let sent_at = epoch.elapsed().as_micros();
        let request = broadcast_request(sender, &format!("broadcast {seq} at {sent_at}"));
        link.request(&request).map(drop)
    };
    Ok(closed_loop(1, duration, |_| Link::open(target), op)?.0)
}

fn broadcast_sent_at(text: &str) -> Option<Duration> {
    let micros = text.rsplit(' ').next()?.parse().ok()?;
    Some(Duration::from_micros(micros))
}
