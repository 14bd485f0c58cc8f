//! Crash safety of the real `claude-ipc serve` process: what was acknowledged survives kill -9,
//! SIGTERM closes the database cleanly, and the broker refuses to start (never falling back to
//! memory) when its address, database or data directory is unusable.
use crate::common;

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use claude_ipc::client::{Client, ClientError, Received};
use common::{serve_expecting_refusal, BrokerProcess, TIMEOUT};
use serde_json::{json, Value};

/// Limits lifted so that many quick sends are never refused by a rule.
const UNLIMITED: &[&str] = &["--rate-limit", "0", "--queue-cap", "0"];

const SENDERS: usize = 4;
const RECIPIENT: &str = "inbox";

/// The content a sender writes for its `seq`-th message: non-ASCII text, and a length that
/// varies from message to message so no two rows look alike on disk.
fn content_for(sender: &str, seq: u64) -> String {
    let padding = "é✓x".repeat((seq % 17) as usize);
    format!("{sender} message #{seq:05} — ünïcödé {padding}")
}

fn data_for(sender: &str, seq: u64) -> Value {
    json!({"sender": sender, "seq": seq, "nested": {"list": [seq, "ok", null], "flag": seq.is_multiple_of(2)}})
}

fn nonce_for(sender: &str, seq: u64) -> String {
    format!("{sender}-nonce-{seq}")
}

/// What one sender thread saw before the broker died under it.
struct SenderReport {
    name: String,
    /// `(seq, message_id)` of every send whose "ok" reply arrived, in order.
    acked: Vec<(u64, i64)>,
    /// The seq that was on the wire when the connection broke (its fate is unknown).
    in_flight: u64,
    /// How the connection failed; must be a broken connection, never a refusal.
    error: ClientError,
}

/// A pseudo-random delay, different from run to run, so the kill lands at a different point
/// of the stream each time (printed so a failing run can be reasoned about).
fn random_ish_millis(range: std::ops::Range<u64>) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    range.start + nanos % (range.end - range.start)
}

fn drain(client: &mut Client, token: &str) -> Vec<Received> {
    let mut all = Vec::new();
    for _ in 0..1000 {
        let checked = client.check(token).expect("check after restart");
        let empty = checked.messages.is_empty();
        all.extend(checked.messages);
        if empty && !checked.more {
            return all;
        }
    }
    panic!("check never ran dry");
}

fn integrity_check(db: &Path) {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open db read-only");
    let verdict: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity_check runs");
    assert_eq!(verdict, "ok", "database damaged after kill -9");
}

#[test]
fn acknowledged_mail_and_sessions_survive_kill_9_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let broker = BrokerProcess::spawn(&data_dir, UNLIMITED);

    let mut admin = broker.client();
    let inbox_token = admin.register(RECIPIENT, None).unwrap().session_token;
    let senders: Vec<(String, String)> = (0..SENDERS)
        .map(|i| {
            let name = format!("sender{i}");
            let token = admin.register(&name, None).unwrap().session_token;
            (name, token)
        })
        .collect();
    drop(admin);

    let acked_total = Arc::new(AtomicUsize::new(0));
    let (reports, collected) = mpsc::channel();
    for (name, token) in senders.clone() {
        let addr = broker.addr.clone();
        let acked_total = acked_total.clone();
        let reports = reports.clone();
        thread::spawn(move || {
            let mut client = Client::connect(&addr, TIMEOUT).expect("sender connects");
            let mut acked = Vec::new();
            let mut seq = 0;
            let error = loop {
                let sent = client.send(
                    &token,
                    RECIPIENT,
                    &content_for(&name, seq),
                    Some(data_for(&name, seq)),
                    Some(&nonce_for(&name, seq)),
                );
                match sent {
                    Ok(sent) => {
                        assert!(!sent.duplicate, "a fresh nonce was called a duplicate");
                        acked.push((seq, sent.message_id.0));
                        acked_total.fetch_add(1, Ordering::Relaxed);
                        seq += 1;
                    }
                    Err(error) => break error,
                }
            };
            let _ = reports.send(SenderReport {
                name,
                acked,
                in_flight: seq,
                error,
            });
        });
    }
    drop(reports);

    // Let the stream get going, then kill at a moment that differs from run to run.
    let started = Instant::now();
    while acked_total.load(Ordering::Relaxed) < 40 {
        assert!(started.elapsed() < TIMEOUT, "senders made no progress");
        thread::sleep(Duration::from_millis(5));
    }
    let delay = random_ish_millis(50..600);
    thread::sleep(Duration::from_millis(delay));
    let acked_before_kill = acked_total.load(Ordering::Relaxed);
    broker.kill_9();

    let reports: Vec<SenderReport> = (0..SENDERS)
        .map(|_| {
            collected
                .recv_timeout(TIMEOUT)
                .expect("every sender notices the broker died")
        })
        .collect();
    for report in &reports {
        assert!(
            !matches!(report.error, ClientError::Broker { .. }),
            "{} was refused by the broker before the kill: {}",
            report.name,
            report.error
        );
    }
    let acked: usize = reports.iter().map(|r| r.acked.len()).sum();
    println!("killed after {delay} ms of streaming; {acked} sends acknowledged ({acked_before_kill} seen before the kill)");

    let broker = BrokerProcess::spawn(&data_dir, UNLIMITED);
    let mut client = broker.client();

    // Tokens issued before the kill still work, for every identity.
    for (name, token) in &senders {
        let names: Vec<String> = client
            .list(token)
            .unwrap_or_else(|e| panic!("{name}'s pre-kill token refused after restart: {e}"))
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert!(names.contains(name) && names.contains(&RECIPIENT.to_owned()));
    }

    let received = drain(&mut client, &inbox_token);
    let mut ids = HashSet::new();
    let mut by_sender: BTreeMap<String, Vec<(u64, i64)>> = BTreeMap::new();
    for message in &received {
        assert!(
            ids.insert(message.id),
            "message {} delivered twice",
            message.id
        );
        assert_eq!(message.to, RECIPIENT);
        let seq = message.message.data.as_ref().expect("data kept")["seq"]
            .as_u64()
            .expect("seq kept");
        assert_eq!(message.message.content, content_for(&message.from, seq));
        assert_eq!(
            Value::Object(message.message.data.clone().unwrap()),
            data_for(&message.from, seq),
            "data changed in storage"
        );
        assert_eq!(
            message.nonce.as_deref(),
            Some(nonce_for(&message.from, seq).as_str())
        );
        by_sender
            .entry(message.from.clone())
            .or_default()
            .push((seq, message.id.0));
    }
    assert!(
        received.windows(2).all(|w| w[0].id < w[1].id),
        "check must return mail oldest first"
    );

    for report in &reports {
        let got = by_sender.remove(&report.name).unwrap_or_default();
        let seqs: Vec<u64> = got.iter().map(|(seq, _)| *seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{}'s mail is out of order or repeated: {seqs:?}",
            report.name
        );
        // Every acknowledged send is there, under the id its reply named.
        for (seq, id) in &report.acked {
            assert!(
                got.contains(&(*seq, *id)),
                "{}'s acknowledged message #{seq} (id {id}) was lost in the crash",
                report.name
            );
        }
        // The only extra message allowed is the one whose reply the kill swallowed.
        let extra: Vec<u64> = seqs
            .iter()
            .copied()
            .filter(|seq| !report.acked.iter().any(|(s, _)| s == seq))
            .collect();
        assert!(
            extra.is_empty() || extra == [report.in_flight],
            "{} has messages it never sent or sent later: {extra:?} (in flight: {})",
            report.name,
            report.in_flight
        );
    }
    assert!(by_sender.is_empty(), "mail from nobody: {by_sender:?}");

    // The old tokens can still send, and drained mail does not come back.
    for (name, token) in &senders {
        let sent = client
            .send(token, RECIPIENT, &format!("{name} is back"), None, None)
            .unwrap();
        assert_eq!(sent.message, "Message sent");
    }
    let after: Vec<String> = drain(&mut client, &inbox_token)
        .into_iter()
        .map(|m| m.message.content)
        .collect();
    let expected: Vec<String> = senders
        .iter()
        .map(|(name, _)| format!("{name} is back"))
        .collect();
    assert_eq!(after, expected);

    integrity_check(&data_dir.join("ipc.db"));
    assert!(broker.terminate().success());
    integrity_check(&data_dir.join("ipc.db"));
}

#[test]
fn forwards_and_rename_cooldown_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let broker = BrokerProcess::spawn(&data_dir, &[]);
    let mut client = broker.client();
    let alice = client.register("alice", None).unwrap().session_token;
    let bob = client.register("bob", None).unwrap().session_token;
    let renamed = client.rename(&alice, "alice2").unwrap();
    assert_eq!(renamed.message, "Renamed alice to alice2");
    drop(client);
    broker.kill_9();

    let broker = BrokerProcess::spawn(&data_dir, &[]);
    let mut client = broker.client();
    let sent = client
        .send(&bob, "alice", "still there?", None, None)
        .unwrap();
    assert_eq!(sent.message, "Message forwarded from alice to alice2");

    let again = client
        .request(&json!({"action": "rename", "session_token": alice, "new_id": "alice3"}))
        .unwrap();
    assert_eq!(again["status"], "error", "{again}");
    assert_eq!(again["code"], "rename_cooldown", "{again}");
    let text = again["message"].as_str().unwrap();
    assert!(
        text.starts_with("Rate limit: can rename again in ") && text.ends_with(" minutes"),
        "{text}"
    );

    // The renamed session still speaks as alice2 and gets the forwarded mail.
    let mail = client.check(&alice).unwrap().messages;
    let last = mail.last().expect("forwarded mail arrived");
    assert_eq!(
        (last.from.as_str(), last.message.content.as_str()),
        ("bob", "still there?")
    );
    // And bob's rename notice, stored before the kill, is still waiting for him.
    let notices: Vec<String> = client
        .check(&bob)
        .unwrap()
        .messages
        .into_iter()
        .map(|m| m.message.content)
        .collect();
    assert_eq!(notices, ["alice renamed to alice2"]);
    assert!(broker.terminate().success());
}

#[test]
fn sigterm_exits_zero_and_closes_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut broker = BrokerProcess::spawn(&data_dir, &[]);
    let mut client = broker.client();
    let alice = client.register("alice", None).unwrap().session_token;
    client
        .send(&alice, "bob", "before the stop", None, None)
        .unwrap();
    // An idle connection left open must not hold the shutdown up.
    let idle = broker.client();

    let log = std::mem::replace(&mut broker.log, mpsc::channel().1);
    let asked = Instant::now();
    let status = broker.terminate();
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(0), "SIGTERM must end in a clean exit");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    drop((client, idle));

    let mut lines = Vec::new();
    while let Ok(line) = log.recv_timeout(TIMEOUT) {
        lines.push(line);
    }
    assert!(
        lines.iter().any(|l| l.contains("shutting down")),
        "no shutdown line in the log: {lines:#?}"
    );

    let db = data_dir.join("ipc.db");
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let (started, stopped): (String, Option<String>) = conn
        .query_row(
            "SELECT started_at, stopped_at FROM broker_runs ORDER BY id DESC LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    let stopped = stopped.expect("broker_runs.stopped_at recorded on SIGTERM");
    assert!(
        stopped >= started,
        "stopped {stopped} before it started {started}"
    );
    let queued: String = conn
        .query_row(
            "SELECT content FROM messages WHERE recipient = 'bob' AND delivered_at IS NULL",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(queued, "before the stop");
    drop(conn);
    // Closing the last connection checkpoints the WAL into the main file and removes it.
    let wal = data_dir.join("ipc.db-wal");
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal_len, 0, "the WAL was not checkpointed at shutdown");
}

#[test]
fn refuses_a_non_loopback_address_without_allow_remote() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let output = serve_expecting_refusal(&[
        "--addr",
        "0.0.0.0:0",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("0.0.0.0:0"), "{stderr}");
    assert!(stderr.contains("loopback"), "{stderr}");
    assert!(stderr.contains("--allow-remote"), "{stderr}");
    assert!(!data_dir.exists(), "nothing is created before the refusal");
}

#[test]
fn refuses_a_corrupt_database_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let db = data_dir.join("ipc.db");
    // Deterministic garbage, a few pages of it.
    let mut state: u32 = 0x2545_f491;
    let garbage: Vec<u8> = (0..16 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect();
    std::fs::write(&db, &garbage).unwrap();

    let output = serve_expecting_refusal(&[
        "--addr",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(db.to_str().unwrap()),
        "path not named: {stderr}"
    );
    assert!(
        stderr.contains("corrupt") || stderr.contains("not a database"),
        "does not say the file is corrupt: {stderr}"
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        garbage,
        "the broker must leave a damaged database as it found it"
    );
}

#[test]
fn refuses_a_data_directory_it_cannot_create_or_write() {
    // Permission bits do not stop root, and tests may run as root. A path *below a regular
    // file* cannot be created by anyone (ENOTDIR), and a regular file cannot be used as the
    // directory itself, so both fail whoever runs the test.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a_file");
    std::fs::write(&file, b"not a directory").unwrap();
    for data_dir in [file.join("sub"), file.clone()] {
        let output = serve_expecting_refusal(&[
            "--addr",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(data_dir.to_str().unwrap()),
            "path not named: {stderr}"
        );
        assert!(stderr.contains("data directory"), "{stderr}");
        assert!(
            stderr.contains("--data-dir"),
            "no way out suggested: {stderr}"
        );
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
}

#[test]
fn data_directory_is_0700_and_database_0600() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("nested").join("data");
    let broker = BrokerProcess::spawn(&data_dir, &[]);
    let mut client = broker.client();
    let token = client.register("alice", None).unwrap().session_token;
    client.send(&token, "bob", "hello", None, None).unwrap();

    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data_dir), 0o700, "data directory mode");
    assert_eq!(mode(&data_dir.join("ipc.db")), 0o600, "ipc.db mode");
    for side_file in ["ipc.db-wal", "ipc.db-shm"] {
        let path = data_dir.join(side_file);
        if path.exists() {
            assert_eq!(mode(&path), 0o600, "{side_file} mode");
        }
    }
    assert!(broker.terminate().success());
}
