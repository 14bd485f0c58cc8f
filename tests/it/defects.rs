//! One test per defect of the Python original that the spec lists (section 6, items 1-8, 11
//! and 12). Each test fails against the behaviour described there and passes against ours.
use crate::common;

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Duration as Span, Utc};
use common::*;
use serde_json::{json, Value};

/// A read-write connection of the test's own, as a second process on the machine would have.
fn writable_db(broker: &TestBroker) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(broker.db_path()).expect("open db read-write");
    conn.busy_timeout(TIMEOUT).unwrap();
    conn
}

/// Every legacy check until the queue is empty, returning the contents in arrival order.
fn drain(addr: &str, token: &str) -> Vec<String> {
    let mut all = Vec::new();
    loop {
        let batch = contents(&legacy_check(addr, token));
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

/// Defect 1: the original read one `recv(4096)`, so any request over ~3.9 KB failed and the
/// large-message path was unreachable.
#[test]
fn defect_01_a_50_kb_legacy_send_works_and_takes_the_large_message_path() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let alice = legacy_register(&addr, "alice");
    let bob = legacy_register(&addr, "bob");

    // Over 4 KB but under the large-message threshold: stored inline, in full.
    let medium: String = (0..500).map(|i| format!("{i:09}\n")).collect();
    assert_eq!(medium.len(), 5000);
    assert_eq!(
        legacy_send(&addr, &bob, "alice", &medium)["status"],
        "ok",
        "a 5 KB request"
    );

    let large: String = (0..5000).map(|i| format!("line {i:04}\n")).collect();
    assert_eq!(large.len(), 50_000);
    let request = json!({"action": "send", "session_token": bob, "to_id": "alice",
                         "message": {"content": large, "data": {"task": 7}}})
    .to_string();
    assert!(request.len() > 50_000);
    let reply: Value = serde_json::from_slice(&legacy_raw(&addr, request.as_bytes())).unwrap();
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(reply["message"], "Message sent");

    let mail = legacy_check(&addr, &alice);
    let messages = mail["messages"].as_array().unwrap();
    assert_eq!(messages[0]["message"]["content"], medium.as_str());
    let body = &messages[1]["message"];
    let file = body["data"]["large_message_file"]
        .as_str()
        .expect("data.large_message_file");
    let summary = body["content"].as_str().unwrap();
    assert!(summary.contains(file), "summary names the file: {summary}");
    assert!(summary.starts_with("line 0000"), "{summary}");
    assert!(
        summary.len() < 1000,
        "summary is short: {} bytes",
        summary.len()
    );
    assert_eq!(body["data"]["task"], 7, "the sender's own data is kept");
    let size_kb = body["data"]["original_size_kb"].as_f64().unwrap();
    assert!((size_kb - 48.8).abs() < 0.05, "original_size_kb {size_kb}");

    let file = Path::new(file);
    assert_eq!(
        file.parent(),
        Some(broker.data_dir().join("large-messages").as_path())
    );
    let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "large-message file mode {mode:o}");
    let saved = std::fs::read_to_string(file).unwrap();
    assert!(saved.contains(&large), "the file holds the whole content");
}

/// Defect 2, first half: a check reply over 64 KiB was cut by the client's single read, after
/// the queue had been emptied. Here a reply stays under one read and says `more`; what did not
/// fit stays queued in the database (even across a restart) and arrives exactly once.
#[test]
fn defect_02_a_check_never_outgrows_one_read_and_the_rest_stays_queued() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let alice = legacy_register(&addr, "alice");
    let bob = legacy_register(&addr, "bob");
    let filler = "y".repeat(9000);
    let sent: Vec<String> = (0..20).map(|i| format!("{i:02} {filler}")).collect();
    let mut client = broker.client();
    for content in &sent {
        client.send(&bob, "alice", content, None, None).unwrap();
    }

    let bytes = legacy_raw(
        &addr,
        json!({"action": "check", "session_token": alice})
            .to_string()
            .as_bytes(),
    );
    assert!(bytes.len() < 65536, "reply of {} bytes", bytes.len());
    let first: Value = serde_json::from_slice(&bytes).expect("one whole reply in one read");
    assert_eq!(first["more"], true);
    let got = contents(&first);
    assert!(!got.is_empty() && got.len() < sent.len());
    assert_eq!(got, sent[..got.len()]);
    // The broker marks mail delivered just after writing the reply, so the client may read
    // it a moment before the mark is committed.
    let queued = || {
        broker.count(
            "SELECT count(*) FROM messages WHERE recipient = 'alice' AND delivered_at IS NULL",
        ) as usize
    };
    wait_until("the returned mail is marked delivered", || {
        queued() < sent.len()
    });
    assert_eq!(
        queued(),
        sent.len() - got.len(),
        "exactly what was not returned is still queued"
    );

    let broker = broker.restart();
    let mut received = got;
    received.extend(drain(&broker.addr(), &alice));
    assert_eq!(received, sent, "every message once, in order");
}

/// Defect 2, second half: mail is marked delivered only after its reply was written to the
/// socket. This test makes the write fail deterministically: the check is held up behind a
/// database lock the test owns, and meanwhile the client closes its socket with unread data
/// in it (a ping reply), which makes the kernel reset the connection. When the lock is
/// released the check runs, its reply cannot be written, and its mail must still be queued.
///
/// What this does not (and cannot) show: a reply that was written into the socket but never
/// read by the client. The protocol has no acknowledgement after the reply, so a written reply
/// is the delivery point by design.
#[test]
fn defect_02_mail_whose_check_reply_could_not_be_written_stays_queued() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let alice = broker.register("alice");
    let bob = broker.register("bob");
    let mut client = broker.client();
    for i in 0..3 {
        client
            .send(&bob, "alice", &format!("m{i}"), None, None)
            .unwrap();
    }
    // The check's session refresh will record this time, which shows when it has run.
    broker.clock.advance(Span::minutes(1));

    let blocker = writable_db(&broker);
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let requests = format!(
        "{}\n{}\n",
        json!({"action": "ping"}),
        json!({"action": "check", "session_token": alice})
    );
    stream.write_all(requests.as_bytes()).unwrap();
    let mut first_byte = [0u8; 1];
    assert_eq!(stream.peek(&mut first_byte).unwrap(), 1, "the ping reply");
    drop(stream); // unread data in the socket: the close is a reset
    blocker.execute_batch("ROLLBACK").unwrap();

    wait_until("the held-up check has run", || {
        broker.count(
            "SELECT count(*) FROM sessions WHERE instance_name = 'alice'
               AND revoked_at IS NULL AND last_used_at = '2026-01-01T12:01:00.000Z'",
        ) == 1
    });
    // The next check of this session waits for the first to finish with its mail.
    let checked = client.check(&alice).unwrap();
    let got: Vec<&str> = checked
        .messages
        .iter()
        .map(|m| m.message.content.as_str())
        .collect();
    assert_eq!(got, ["m0", "m1", "m2"], "the unwritten reply's mail");
    wait_until("the written reply's mail is marked delivered", || {
        broker.count("SELECT count(*) FROM messages WHERE delivered_at IS NOT NULL") == 3
    });
    assert_eq!(
        broker.count("SELECT max(delivery_count) FROM messages"),
        1,
        "each message was marked delivered once, by the check whose reply was written"
    );
}

/// Defect 3, first half: "ok" must mean stored. The original replied "Message sent" and lost
/// the message on restart.
#[test]
fn defect_03_an_ok_send_survives_a_restart() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let alice = legacy_register(&addr, "alice");
    let bob = legacy_register(&addr, "bob");
    assert_eq!(
        legacy_send(&addr, &bob, "alice", "kept")["message"],
        "Message sent"
    );
    assert_eq!(
        legacy_send(&addr, &bob, "later", "kept too")["status"],
        "ok"
    );

    let broker = broker.restart();
    let addr = broker.addr();
    assert_eq!(contents(&legacy_check(&addr, &alice)), ["kept"]);
    let later = legacy(
        &addr,
        &json!({"action": "register", "instance_id": "later", "auth_token": ""}),
    );
    assert_eq!(later["message"], "Registered later with 1 queued messages");
}

/// Defect 3: when the database cannot be written, a send must say so. Here another process
/// holds SQLite's write lock longer than the broker's busy timeout (5 s), so the broker cannot
/// even begin its transaction.
#[test]
fn defect_03_a_send_that_cannot_be_written_is_an_error_not_ok() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let alice = legacy_register(&addr, "alice");
    let bob = legacy_register(&addr, "bob");

    let blocker = writable_db(&broker);
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let started = Instant::now();
    let reply = legacy_send(&addr, &bob, "alice", "doomed");
    let waited = started.elapsed();
    blocker.execute_batch("ROLLBACK").unwrap();
    assert_eq!(reply["status"], "error", "{reply}");
    assert_eq!(reply["code"], "storage_failed", "{reply}");
    assert!(
        waited >= Duration::from_secs(4),
        "the broker gave up after {waited:?}, before its busy timeout"
    );
    assert_eq!(
        broker.count("SELECT count(*) FROM messages WHERE content = 'doomed'"),
        0
    );

    // The broker recovers once the lock is gone.
    assert_eq!(
        legacy_send(&addr, &bob, "alice", "after")["message"],
        "Message sent"
    );
    assert_eq!(contents(&legacy_check(&addr, &alice)), ["after"]);
}

/// Defect 3, the commit itself failing: the send's own statements succeed, then the group
/// commit fails. The test makes that happen deterministically with a deferred foreign key that
/// only a message with the content "doomed" violates; SQLite checks it at COMMIT.
#[test]
fn defect_03_a_send_whose_commit_fails_is_an_error_not_ok() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let alice = legacy_register(&addr, "alice");
    let bob = legacy_register(&addr, "bob");
    writable_db(&broker)
        .execute_batch(
            "CREATE TABLE test_doom_parent (id INTEGER PRIMARY KEY);
             ALTER TABLE messages ADD COLUMN test_doom INTEGER
               REFERENCES test_doom_parent (id) DEFERRABLE INITIALLY DEFERRED;
             CREATE TRIGGER test_doom AFTER INSERT ON messages WHEN NEW.content = 'doomed'
             BEGIN UPDATE messages SET test_doom = 1 WHERE id = NEW.id; END;",
        )
        .unwrap();

    let reply = legacy_send(&addr, &bob, "alice", "doomed");
    assert_eq!(reply["status"], "error", "{reply}");
    assert_eq!(reply["code"], "storage_failed", "{reply}");
    assert_eq!(
        broker.count("SELECT count(*) FROM messages WHERE content = 'doomed'"),
        0
    );
    assert_eq!(
        legacy_send(&addr, &bob, "alice", "fine")["message"],
        "Message sent"
    );
    let broker = broker.restart();
    assert_eq!(contents(&legacy_check(&broker.addr(), &alice)), ["fine"]);
}

/// Defect 4: rename trusted the claimed `old_id`, so anyone could rename anyone.
#[test]
fn defect_04_rename_ignores_a_claimed_old_id() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let mallory = legacy_register(&addr, "mallory");
    let bob = legacy_register(&addr, "bob");
    legacy_send(&addr, &mallory, "bob", "bob's mail");

    let reply = legacy(
        &addr,
        &json!({"action": "rename", "session_token": mallory, "old_id": "bob",
                "new_id": "stolen"}),
    );
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(reply["message"], "Renamed mallory to stolen");

    let names: Vec<String> = broker
        .client()
        .list(&bob)
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(names, ["bob", "stolen"]);
    assert_eq!(
        broker.count("SELECT count(*) FROM name_forwards WHERE old_name = 'bob'"),
        0
    );
    // Bob is still bob: his session speaks for him, his mail is his, mail to him is not
    // forwarded.
    assert_eq!(
        legacy_send(&addr, &bob, "stolen", "hi")["message"],
        "Message sent"
    );
    assert_eq!(
        legacy_send(&addr, &mallory, "bob", "more")["message"],
        "Message sent"
    );
    let mail = legacy_check(&addr, &bob);
    assert_eq!(
        contents(&mail),
        ["bob's mail", "mallory renamed to stolen", "more"]
    );
    assert_eq!(mail["messages"][2]["from"], "stolen");
    let mallorys = legacy_check(&addr, &mallory);
    assert_eq!(contents(&mallorys), ["hi"]);
    assert_eq!(mallorys["messages"][0]["from"], "bob");
    assert_eq!(mallorys["messages"][0]["to"], "stolen");
}

/// Defect 5: renaming onto a name with queued future mail overwrote that mail.
#[test]
fn defect_05_renaming_onto_a_name_with_future_mail_merges_the_queues() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let alice = legacy_register(&addr, "alice");
    let bob = legacy_register(&addr, "bob");
    for i in 1..=2 {
        let reply = legacy_send(&addr, &bob, "newname", &format!("for newname {i}"));
        assert_eq!(
            reply["message"],
            "Message queued for newname (not yet registered)"
        );
        legacy_send(&addr, &bob, "alice", &format!("for alice {i}"));
    }

    let reply = legacy(
        &addr,
        &json!({"action": "rename", "session_token": alice, "new_id": "newname"}),
    );
    assert_eq!(reply["message"], "Renamed alice to newname", "{reply}");
    assert_eq!(
        broker.count(
            "SELECT count(*) FROM messages WHERE recipient = 'newname' AND delivered_at IS NULL"
        ),
        4
    );
    let mail = legacy_check(&addr, &alice);
    assert_eq!(
        contents(&mail),
        [
            "for newname 1",
            "for alice 1",
            "for newname 2",
            "for alice 2"
        ]
    );
    for message in mail["messages"].as_array().unwrap() {
        assert_eq!(message["to"], "newname");
    }
}

/// Defect 6: after a rename the session still spoke for the old name, and neither the forward
/// nor the notices were stored.
#[test]
fn defect_06_after_a_rename_the_session_forward_and_notices_are_stored() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let alice = legacy_register(&addr, "alice");
    let bob = legacy_register(&addr, "bob");
    let carol = legacy_register(&addr, "carol");
    let reply = legacy(
        &addr,
        &json!({"action": "rename", "session_token": alice, "new_id": "alice2"}),
    );
    assert_eq!(reply["message"], "Renamed alice to alice2");

    let forward: (String, String, String) = broker
        .sql()
        .query_row(
            "SELECT old_name, new_name, expires_at FROM name_forwards",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        forward,
        (
            "alice".into(),
            "alice2".into(),
            "2026-01-01T14:00:00.000Z".into()
        )
    );
    let notices: Vec<(String, String, String, String)> = broker
        .sql()
        .prepare(
            "SELECT recipient, sender, kind, content FROM messages
             WHERE kind = 'system' ORDER BY recipient",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let notice = |to: &str| {
        (
            to.to_owned(),
            "system".to_owned(),
            "system".to_owned(),
            "alice renamed to alice2".to_owned(),
        )
    };
    assert_eq!(notices, [notice("bob"), notice("carol")]);

    let broker = broker.restart();
    let addr = broker.addr();
    // The old token speaks for the new name.
    legacy_send(&addr, &alice, "bob", "from the renamed one");
    let mail = legacy_check(&addr, &bob);
    assert_eq!(
        contents(&mail),
        ["alice renamed to alice2", "from the renamed one"]
    );
    assert_eq!(mail["messages"][0]["from"], "system");
    assert_eq!(mail["messages"][1]["from"], "alice2");
    assert_eq!(
        contents(&legacy_check(&addr, &carol)),
        ["alice renamed to alice2"]
    );
    // The forward outlived the restart.
    assert_eq!(
        legacy_send(&addr, &bob, "alice", "to the old name")["message"],
        "Message forwarded from alice to alice2"
    );
    let mail = legacy_check(&addr, &alice);
    assert_eq!(contents(&mail), ["to the old name"]);
    assert_eq!(mail["messages"][0]["to"], "alice2");
}

/// Defect 7: mail was marked read by recipient + timestamp, so a check marked messages it had
/// not returned (same timestamp) and redelivered others after a restart.
#[test]
fn defect_07_delivery_is_marked_per_message_id() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let alice = legacy_register(&addr, "alice");
    let bob = legacy_register(&addr, "bob");
    legacy_send(&addr, &bob, "alice", "first");
    legacy_send(&addr, &bob, "alice", "second");
    assert_eq!(
        broker.count("SELECT count(DISTINCT received_at) FROM messages WHERE recipient = 'alice'"),
        1,
        "the clock did not move: both messages share one timestamp"
    );

    let one = legacy(
        &addr,
        &json!({"action": "check", "session_token": alice, "limit": 1}),
    );
    assert_eq!(contents(&one), ["first"]);
    assert_eq!(one["more"], true);
    let delivered = || broker.count("SELECT count(*) FROM messages WHERE delivered_at IS NOT NULL");
    wait_until("the returned message is marked delivered", || {
        delivered() > 0
    });
    assert_eq!(delivered(), 1, "only the message returned is marked");
    let delivered: String = broker
        .sql()
        .query_row(
            "SELECT content FROM messages WHERE delivered_at IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(delivered, "first", "the row marked is the one returned");
    assert_eq!(contents(&legacy_check(&addr, &alice)), ["second"]);
    assert!(contents(&legacy_check(&addr, &alice)).is_empty());

    let broker = broker.restart();
    assert!(
        contents(&legacy_check(&broker.addr(), &alice)).is_empty(),
        "nothing is delivered twice after a restart"
    );
    assert_eq!(broker.count("SELECT max(delivery_count) FROM messages"), 1);
}

/// Defect 8: no dedupe; the same request sent 10 times stored 10 messages.
#[test]
fn defect_08_a_repeated_nonce_stores_one_message() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let alice = legacy_register(&addr, "alice");
    let bob = legacy_register(&addr, "bob");
    let carol = legacy_register(&addr, "carol");
    let request = |token: &str, nonce: &str| {
        json!({"action": "send", "session_token": token, "to_id": "alice",
               "message": {"content": "pay 10"}, "nonce": nonce})
    };
    let replies: Vec<Value> = (0..10)
        .map(|_| legacy(&addr, &request(&bob, "retry-1")))
        .collect();
    let id = replies[0]["message_id"].as_i64().expect("message_id");
    assert_eq!(replies[0]["duplicate"], false);
    for reply in &replies {
        assert_eq!(reply["status"], "ok", "{reply}");
        assert_eq!(reply["message_id"], id);
    }
    for reply in &replies[1..] {
        assert_eq!(reply["duplicate"], true, "{reply}");
    }
    assert_eq!(
        broker.count("SELECT count(*) FROM messages WHERE nonce = 'retry-1'"),
        1
    );

    // A new nonce, or the same nonce from another sender, is a new message.
    assert_ne!(legacy(&addr, &request(&bob, "retry-2"))["message_id"], id);
    assert_ne!(legacy(&addr, &request(&carol, "retry-1"))["message_id"], id);
    let mail = legacy_check(&addr, &alice);
    let from: Vec<&str> = mail["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["from"].as_str().unwrap())
        .collect();
    assert_eq!(from, ["bob", "bob", "carol"]);
    assert_eq!(mail["messages"][0]["id"], id);
}

/// Defect 11, throughput side: the original serialised every send behind a global lock held
/// across several fsyncs. Many concurrent persistent senders all succeed, and every message
/// arrives once, in each sender's order.
#[test]
fn defect_11_concurrent_sends_all_succeed_and_all_arrive() {
    const SENDERS: usize = 8;
    const EACH: usize = 50;
    let broker = TestBroker::start_with(|c| c.limits.queue_cap = 0);
    let addr = broker.addr();
    let sink = broker.register("sink");
    let tokens: Vec<String> = (0..SENDERS)
        .map(|s| broker.register(&format!("sender{s}")))
        .collect();

    std::thread::scope(|scope| {
        for (s, token) in tokens.iter().enumerate() {
            let addr = &addr;
            scope.spawn(move || {
                let mut client = claude_ipc::client::Client::connect(addr, TIMEOUT).unwrap();
                for i in 0..EACH {
                    let sent = client
                        .send(token, "sink", &format!("{s}:{i}"), None, None)
                        .unwrap_or_else(|e| panic!("sender{s} send {i}: {e}"));
                    assert_eq!(sent.message, "Message sent");
                }
            });
        }
    });
    assert_eq!(
        broker.count("SELECT count(*) FROM messages WHERE recipient = 'sink'"),
        (SENDERS * EACH) as i64
    );
    let journal: String = broker
        .sql()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");

    let mut next = [0usize; SENDERS];
    let mut client = broker.client();
    loop {
        let checked = client.check(&sink).unwrap();
        if checked.messages.is_empty() {
            break;
        }
        for message in checked.messages {
            let (s, i) = message.message.content.split_once(':').unwrap();
            let (s, i): (usize, usize) = (s.parse().unwrap(), i.parse().unwrap());
            assert_eq!(message.from, format!("sender{s}"));
            assert_eq!(i, next[s], "sender{s}'s messages in order, each once");
            next[s] += 1;
        }
    }
    assert_eq!(next, [EACH; SENDERS]);
}

/// Defect 11, backlog side: the original listened with a backlog of 5, so a burst of
/// connections overflowed the accept queue; Linux then drops the SYN and the client retries
/// only after a second. Here 300 connections opened at once all connect without such a retry,
/// are open together, and each gets an answer.
#[test]
fn defect_11_a_burst_of_300_connections_is_accepted_and_answered() {
    const CONNECTIONS: usize = 300;
    let broker = TestBroker::start();
    let addr = broker.addr;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcomes: Vec<Result<(), String>> = runtime.block_on(async move {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let all_connected = std::sync::Arc::new(tokio::sync::Barrier::new(CONNECTIONS));
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..CONNECTIONS {
            let all_connected = all_connected.clone();
            tasks.spawn(async move {
                // Under the 1 s a dropped SYN costs.
                let connect = tokio::net::TcpStream::connect(addr);
                let connected = tokio::time::timeout(Duration::from_millis(900), connect).await;
                // Every task reaches the barrier, connected or not, so none waits forever.
                all_connected.wait().await;
                let stream = connected
                    .map_err(|_| format!("connection {n} not established within 900 ms"))?
                    .map_err(|e| format!("connection {n}: {e}"))?;
                let (read, mut write) = stream.into_split();
                write
                    .write_all(b"{\"action\": \"ping\"}")
                    .await
                    .map_err(|e| format!("connection {n}: {e}"))?;
                let mut line = String::new();
                tokio::time::timeout(TIMEOUT, BufReader::new(read).read_line(&mut line))
                    .await
                    .map_err(|_| format!("connection {n}: no answer"))?
                    .map_err(|e| format!("connection {n}: {e}"))?;
                let reply: Value = serde_json::from_str(&line)
                    .map_err(|e| format!("connection {n}: {e}: {line:?}"))?;
                if reply["status"] != "ok" {
                    return Err(format!("connection {n}: {reply}"));
                }
                Ok(())
            });
        }
        tasks.join_all().await
    });
    let failures: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert_eq!(outcomes.len(), CONNECTIONS);
}

/// Asserts one stored or reported time is UTC ISO-8601 in the fixed form ending in `Z`.
fn assert_utc(what: &str, text: &str) {
    let parsed = DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{what} = {text:?} is not RFC 3339: {e}"));
    assert_eq!(parsed.offset().local_minus_utc(), 0, "{what} = {text}");
    assert!(
        text.ends_with('Z') && text.len() == "2026-01-01T12:00:00.000Z".len(),
        "{what} = {text:?}"
    );
}

/// Defect 12: the original compared naive local timestamps with SQLite's UTC clock, and named
/// large-message files to the second, so two in one second overwrote each other.
#[test]
fn defect_12_every_time_is_utc_with_z_and_large_files_never_collide() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let alice = legacy_register(&addr, "alice");
    let bob = legacy_register(&addr, "bob");
    legacy(
        &addr,
        &json!({"action": "send", "session_token": bob, "to_id": "alice",
                "message": {"content": "stamped"}, "nonce": "n1",
                "timestamp": "2026-01-01T13:01:00+01:00"}),
    );
    // Two large messages while the clock stands still: the same millisecond.
    let large_a = "A".repeat(20_000);
    let large_b = "B".repeat(20_000);
    legacy_send(&addr, &bob, "alice", &large_a);
    legacy_send(&addr, &bob, "alice", &large_b);

    let mail = legacy_check(&addr, &alice);
    let messages = mail["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3);
    for message in messages {
        assert_utc("check timestamp", message["timestamp"].as_str().unwrap());
        assert_eq!(message["timestamp"], "2026-01-01T12:00:00.000Z");
    }
    assert_eq!(messages[0]["sender_timestamp"], "2026-01-01T12:01:00.000Z");
    let file_a = messages[1]["message"]["data"]["large_message_file"]
        .as_str()
        .unwrap();
    let file_b = messages[2]["message"]["data"]["large_message_file"]
        .as_str()
        .unwrap();
    assert_ne!(file_a, file_b);
    assert!(std::fs::read_to_string(file_a).unwrap().contains(&large_a));
    assert!(std::fs::read_to_string(file_b).unwrap().contains(&large_b));

    legacy(
        &addr,
        &json!({"action": "rename", "session_token": alice, "new_id": "alice2"}),
    );
    legacy_register(&addr, "bob"); // revokes bob's first session
    let list = legacy(&addr, &json!({"action": "list", "session_token": alice}));
    for instance in list["instances"].as_array().unwrap() {
        assert_utc("list last_seen", instance["last_seen"].as_str().unwrap());
    }

    let columns = [
        ("messages", "received_at"),
        ("messages", "delivered_at"),
        ("messages", "sender_timestamp"),
        ("sessions", "created_at"),
        ("sessions", "last_used_at"),
        ("sessions", "revoked_at"),
        ("instances", "registered_at"),
        ("instances", "last_seen_at"),
        ("instances", "last_renamed_at"),
        ("name_forwards", "created_at"),
        ("name_forwards", "expires_at"),
        ("send_nonces", "seen_at"),
        ("broker_runs", "started_at"),
    ];
    wait_until("the checked mail is marked delivered", || {
        broker.count("SELECT count(*) FROM messages WHERE delivered_at IS NOT NULL") == 3
    });
    let db = broker.sql();
    for (table, column) in columns {
        let values: Vec<String> = db
            .prepare(&format!(
                "SELECT {column} FROM {table} WHERE {column} IS NOT NULL"
            ))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            !values.is_empty(),
            "{table}.{column} has no values to check"
        );
        for value in values {
            assert_utc(&format!("{table}.{column}"), &value);
        }
    }

    // Stored times compare correctly with SQLite's own UTC clock: with the broker's clock set
    // to the real time, a new forward is live by the `live_forwards` view (which uses SQLite's
    // 'now'), and the one that expired at 14:00 on 2026-01-01 is live only if the real time is
    // still before that.
    broker.clock.advance(Utc::now() - broker.clock.now());
    let bob = legacy_register(&addr, "bob");
    let reply = legacy(
        &addr,
        &json!({"action": "rename", "session_token": bob, "new_id": "bob2"}),
    );
    assert_eq!(reply["status"], "ok", "{reply}");
    let live: Vec<String> = broker
        .sql()
        .prepare("SELECT old_name FROM live_forwards ORDER BY old_name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let alice_forward_expiry: DateTime<Utc> = "2026-01-01T14:00:00Z".parse().unwrap();
    let alice_forward_live = Utc::now() < alice_forward_expiry;
    let expected: &[&str] = if alice_forward_live {
        &["alice", "bob"]
    } else {
        &["bob"]
    };
    assert_eq!(live, expected);
}

/// Defect 11, the fsync half: the original did four fsyncs per send. Here concurrent sends
/// share commits: the writer thread ran fewer transactions than it ran jobs.
#[test]
fn defect_11_concurrent_sends_share_commits() {
    let broker = TestBroker::start_with(|c| c.limits.queue_cap = 0);
    let alice = broker.register("alice");
    broker.register("bob");
    let before = broker.broker().store().stats();
    let senders: Vec<_> = (0..16)
        .map(|_| {
            let (addr, token) = (broker.addr(), alice.clone());
            std::thread::spawn(move || {
                let mut client = claude_ipc::client::Client::connect(&addr, TIMEOUT).unwrap();
                for i in 0..25 {
                    client
                        .send(&token, "bob", &format!("m{i}"), None, None)
                        .unwrap();
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    let after = broker.broker().store().stats();
    let (jobs, commits) = (after.jobs - before.jobs, after.commits - before.commits);
    println!("400 concurrent sends: {jobs} jobs in {commits} commits");
    assert!(jobs >= 400, "every send ran as a job: {jobs}");
    assert!(
        commits < jobs,
        "group commit shares transactions: {commits} commits for {jobs} jobs"
    );
}
