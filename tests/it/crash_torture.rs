//! Crash torture: concurrent senders and manual-ack readers against `claude-ipc serve`, which
//! is killed with SIGKILL at random moments and restarted on the same data directory.
//!
//! It asserts the delivery claims of docs/RELIABILITY.md:
//! - every acknowledged send is delivered;
//! - no nonce is stored twice, however often a send was retried;
//! - no message is delivered again after its ack was acknowledged;
//! - the database passes `PRAGMA integrity_check`.
//!
//! It runs for about 15 s of sending plus the drain, and prints its counts.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use claude_ipc::client::{CheckOptions, Client, ClientError, Stamp};
use common::BrokerProcess;
use rand::Rng;
use serde_json::{json, Value};

const PERSISTENT_SENDERS: usize = 3;
const RECIPIENTS: [&str; 2] = ["inbox-a", "inbox-b"];
const SENDING_FOR: Duration = Duration::from_secs(12);
const KILLS: usize = 4;
const LEASE: Duration = Duration::from_secs(2);
const DRAIN_DEADLINE: Duration = Duration::from_secs(20);
const STEP_TIMEOUT: Duration = Duration::from_secs(2);

/// The broker's current address; it changes at every restart (port 0).
type Address = Arc<Mutex<String>>;

fn current(addr: &Address) -> String {
    addr.lock().unwrap().clone()
}

/// What a sender got acknowledged: content → message id.
type Acknowledged = HashMap<String, i64>;

/// What a reader saw, and the broken promises it caught.
#[derive(Default)]
struct ReaderLog {
    received: HashSet<String>,
    acked_ids: HashSet<i64>,
    deliveries: usize,
    delivered_after_ack: Vec<i64>,
}

#[test]
fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let limits = ["--rate-limit", "0", "--queue-cap", "0"];
    let mut broker = BrokerProcess::spawn(&data_dir, &limits);
    let addr: Address = Arc::new(Mutex::new(broker.addr.clone()));

    let mut setup = broker.client();
    let mut tokens = HashMap::new();
    for name in RECIPIENTS
        .iter()
        .map(|r| r.to_string())
        .chain((0..=PERSISTENT_SENDERS).map(|i| format!("sender-{i}")))
    {
        tokens.insert(
            name.clone(),
            setup.register(&name, None).unwrap().session_token,
        );
    }
    drop(setup);

    let sending = Arc::new(AtomicBool::new(true));
    let senders: Vec<_> = (0..=PERSISTENT_SENDERS)
        .map(|i| {
            let token = tokens[&format!("sender-{i}")].clone();
            let (addr, sending) = (addr.clone(), sending.clone());
            let legacy = i == PERSISTENT_SENDERS;
            thread::spawn(move || send_until_stopped(i, &token, &addr, &sending, legacy))
        })
        .collect();
    let reading = Arc::new(AtomicBool::new(true));
    let readers: Vec<_> = RECIPIENTS
        .iter()
        .map(|name| {
            let token = tokens[*name].clone();
            let (addr, reading) = (addr.clone(), reading.clone());
            thread::spawn(move || read_until_stopped(&token, &addr, &reading))
        })
        .collect();

    let mut rng = rand::rng();
    let started = Instant::now();
    for kill in 0..KILLS {
        let slot = SENDING_FOR / KILLS as u32;
        let at = slot * kill as u32 + slot.mul_f64(rng.random_range(0.2..0.9));
        thread::sleep(at.saturating_sub(started.elapsed()));
        broker.kill_9();
        broker = BrokerProcess::spawn(&data_dir, &limits);
        *addr.lock().unwrap() = broker.addr.clone();
    }
    thread::sleep(SENDING_FOR.saturating_sub(started.elapsed()));
    sending.store(false, Ordering::SeqCst);
    let acknowledged: Vec<Acknowledged> = senders.into_iter().map(|s| s.join().unwrap()).collect();
    let sent: HashMap<String, i64> = acknowledged.into_iter().flatten().collect();

    // Drain: readers go on until they have seen every acknowledged send (or time runs out).
    let drain_started = Instant::now();
    let seen_everything = || {
        let db = read_only(&data_dir);
        let undelivered: i64 = db
            .query_row(
                "SELECT count(*) FROM messages WHERE delivered_at IS NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        undelivered == 0
    };
    while !seen_everything() && drain_started.elapsed() < DRAIN_DEADLINE {
        thread::sleep(Duration::from_millis(100));
    }
    reading.store(false, Ordering::SeqCst);
    let logs: Vec<ReaderLog> = readers.into_iter().map(|r| r.join().unwrap()).collect();

    let received: HashSet<&String> = logs.iter().flat_map(|l| &l.received).collect();
    let lost: Vec<&String> = sent.keys().filter(|c| !received.contains(c)).collect();
    let delivered_after_ack: Vec<i64> = logs
        .iter()
        .flat_map(|l| l.delivered_after_ack.clone())
        .collect();
    let db = read_only(&data_dir);
    let twice_stored: i64 = db
        .query_row(
            "SELECT count(*) FROM (SELECT sender, nonce FROM messages WHERE nonce IS NOT NULL
               GROUP BY sender, nonce HAVING count(*) > 1)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let stored: i64 = db
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    let integrity: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    let deliveries: usize = logs.iter().map(|l| l.deliveries).sum();
    let acked: usize = logs.iter().map(|l| l.acked_ids.len()).sum();
    println!(
        "crash torture: {KILLS} SIGKILLs; {} sends acknowledged, {stored} messages stored, \
         {deliveries} deliveries, {acked} acked; lost {}, nonces stored twice {twice_stored}, \
         delivered after ack {}, integrity {integrity}",
        sent.len(),
        lost.len(),
        delivered_after_ack.len()
    );
    assert!(sent.len() > 50, "too few sends to mean anything");
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}"
    );
    assert_eq!(twice_stored, 0, "a retried nonce was stored twice");
    assert_eq!(
        stored as usize,
        sent.len(),
        "messages stored that nobody sent, or twice"
    );
    assert!(
        delivered_after_ack.is_empty(),
        "delivered again after an acknowledged ack: {delivered_after_ack:?}"
    );
    assert_eq!(integrity, "ok");
}

fn read_only(data_dir: &std::path::Path) -> rusqlite::Connection {
    let db = rusqlite::Connection::open_with_flags(
        data_dir.join("ipc.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db
}

/// Sends numbered messages round-robin to the recipients until told to stop. Each send is
/// retried, with its original nonce, until the broker acknowledges it.
fn send_until_stopped(
    sender: usize,
    token: &str,
    addr: &Address,
    sending: &AtomicBool,
    legacy: bool,
) -> Acknowledged {
    let mut acknowledged = Acknowledged::new();
    let mut client: Option<Client> = None;
    for n in 0.. {
        if !sending.load(Ordering::SeqCst) {
            break;
        }
        let content = format!("sender-{sender}/{n}");
        let to = RECIPIENTS[n % RECIPIENTS.len()];
        let stamp = Stamp::fresh().unwrap();
        let id = loop {
            let attempt = if legacy {
                legacy_send(&current(addr), token, to, &content, &stamp)
            } else {
                persistent_send(&mut client, addr, token, to, &content, &stamp)
                    .map_err(|e| e.to_string())
            };
            match attempt {
                Ok(id) => break id,
                Err(_) => {
                    client = None;
                    thread::sleep(Duration::from_millis(20));
                }
            }
        };
        acknowledged.insert(content, id);
    }
    acknowledged
}

fn persistent_send(
    client: &mut Option<Client>,
    addr: &Address,
    token: &str,
    to: &str,
    content: &str,
    stamp: &Stamp,
) -> Result<i64, ClientError> {
    if client.is_none() {
        *client = Some(Client::connect(&current(addr), STEP_TIMEOUT)?);
    }
    let sent = client
        .as_mut()
        .unwrap()
        .send_stamped(token, to, content, None, stamp)?;
    Ok(sent.message_id.0)
}

/// What the Python scripts do: one connection per request, no newline, one read.
fn legacy_send(
    addr: &str,
    token: &str,
    to: &str,
    content: &str,
    stamp: &Stamp,
) -> Result<i64, String> {
    let request = json!({
        "action": "send", "session_token": token, "to_id": to,
        "message": {"content": content}, "nonce": stamp.nonce,
    });
    let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    stream
        .write_all(request.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    let mut buffer = vec![0u8; 65536];
    let n = stream.read(&mut buffer).map_err(|e| e.to_string())?;
    let reply: Value = serde_json::from_slice(&buffer[..n]).map_err(|e| e.to_string())?;
    reply["message_id"]
        .as_i64()
        .ok_or_else(|| format!("not acknowledged: {reply}"))
}

/// Long-polls with manual acks until told to stop, recording every delivery and catching any
/// message that comes back after its ack was acknowledged.
fn read_until_stopped(token: &str, addr: &Address, reading: &AtomicBool) -> ReaderLog {
    let mut log = ReaderLog::default();
    let options = CheckOptions {
        manual_ack: Some(LEASE),
        wait: Some(Duration::from_millis(500)),
        limit: None,
    };
    let mut client: Option<Client> = None;
    while reading.load(Ordering::SeqCst) {
        if client.is_none() {
            client = Client::connect(&current(addr), STEP_TIMEOUT).ok();
        }
        let Some(connected) = client.as_mut() else {
            thread::sleep(Duration::from_millis(20));
            continue;
        };
        let Ok(checked) = connected.check_with(token, options) else {
            client = None;
            continue;
        };
        for message in &checked.messages {
            log.deliveries += 1;
            if log.acked_ids.contains(&message.id.0) {
                log.delivered_after_ack.push(message.id.0);
            }
            log.received.insert(message.message.content.clone());
        }
        let ids = checked.ids();
        if ids.is_empty() {
            continue;
        }
        match connected.ack(token, &ids) {
            Ok(acked) if acked.refused.is_empty() => log.acked_ids.extend(ids),
            Ok(acked) => panic!(
                "the broker refused acks for its own mail: {:?}",
                acked.refused
            ),
            Err(_) => client = None, // unknown whether it landed; the mail may come back
        }
    }
    log
}
