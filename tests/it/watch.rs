//! `watch`: undelivered mail is announced to a named watcher once, consuming nothing, by a
//! long-poll the doorbell wakes; a newer watch replaces an older one, a reader who leaves
//! records nothing, and `push` marks the mail pushed without marking it delivered.

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use claude_ipc::client::{CheckOptions, Client, WatchOptions};
use claude_ipc::protocol::schema::WatchReply;
use common::{legacy, legacy_send, wait_until, TestBroker, PROMPTLY, TIMEOUT};
use serde_json::{json, Value};

fn options(watcher: &str) -> WatchOptions {
    WatchOptions {
        watcher: watcher.to_owned(),
        ..WatchOptions::default()
    }
}

fn waiting(watcher: &str, wait: Duration) -> WatchOptions {
    WatchOptions {
        wait: Some(wait),
        ..options(watcher)
    }
}

fn contents(reply: &WatchReply) -> Vec<String> {
    reply
        .messages
        .iter()
        .map(|m| m.message.content.clone())
        .collect()
}

/// Runs one watch on its own connection in a thread; returns the reply and when it came.
fn watch_in_thread(
    broker: &TestBroker,
    token: &str,
    options: WatchOptions,
) -> thread::JoinHandle<(WatchReply, Instant)> {
    let (addr, token) = (broker.addr(), token.to_owned());
    thread::spawn(move || {
        let mut client = Client::connect(&addr, TIMEOUT).unwrap();
        let reply = client.watch(&token, &options).unwrap();
        (reply, Instant::now())
    })
}

/// Starts a watch and returns once the broker says `name` waits for mail.
fn start_watching(
    broker: &TestBroker,
    name: &str,
    token: &str,
    options: WatchOptions,
) -> thread::JoinHandle<(WatchReply, Instant)> {
    let waiter = watch_in_thread(broker, token, options);
    broker.wait_until_waiting_for_mail(name);
    assert!(!waiter.is_finished(), "the watch was answered already");
    waiter
}

fn announcements(broker: &TestBroker, watcher: &str) -> i64 {
    broker.count(&format!(
        "SELECT count(*) FROM announcements WHERE watcher = '{watcher}'"
    ))
}

fn assert_prompt(what: &str, from: Instant, answered: Instant) {
    let took = answered.saturating_duration_since(from);
    assert!(took < PROMPTLY, "{what}: answered after {took:?}");
}

#[test]
fn a_watch_announces_mail_and_consumes_none_of_it() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    legacy_send(&addr, &bob, "alice", "one");
    legacy_send(&addr, &bob, "alice", "two");

    let told = broker.client().watch(&alice, &options("hook-1")).unwrap();
    assert_eq!(contents(&told), ["one", "two"]);
    assert!(!told.more && !told.replaced);
    assert_eq!(told.messages[0].from, "bob");
    assert_eq!(told.messages[0].delivery_count, 1);
    // Nothing was delivered, leased or counted as a hand-out.
    assert_eq!(
        broker.count(
            "SELECT count(*) FROM messages WHERE delivered_at IS NULL AND leased_until IS NULL \
             AND delivery_count = 0 AND pushed_at IS NULL"
        ),
        2
    );
    assert_eq!(announcements(&broker, "hook-1"), 2);

    let checked = broker
        .client()
        .check_with(
            &alice,
            CheckOptions {
                manual_ack: Some(Duration::from_secs(30)),
                ..CheckOptions::default()
            },
        )
        .unwrap();
    assert_eq!(checked.ids(), told.ids());
    assert!(checked.messages.iter().all(|m| m.delivery_count == 1));
}

#[test]
fn the_same_mail_is_announced_once_per_watcher() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    legacy_send(&addr, &bob, "alice", "first");
    let mut client = broker.client();
    assert_eq!(
        contents(&client.watch(&alice, &options("w1")).unwrap()),
        ["first"]
    );
    assert!(client
        .watch(&alice, &options("w1"))
        .unwrap()
        .messages
        .is_empty());
    legacy_send(&addr, &bob, "alice", "second");
    assert_eq!(
        contents(&client.watch(&alice, &options("w1")).unwrap()),
        ["second"]
    );
    // Another watcher is told about everything still undelivered.
    assert_eq!(
        contents(&client.watch(&alice, &options("w2")).unwrap()),
        ["first", "second"]
    );
    assert!(client
        .watch(&alice, &options("w2"))
        .unwrap()
        .messages
        .is_empty());
    assert_eq!(announcements(&broker, "w1"), 2);
    assert_eq!(announcements(&broker, "w2"), 2);

    // Mail a manual-ack reader leased is still undelivered, so still announced; acked mail
    // is not.
    let leased = client
        .check_with(
            &alice,
            CheckOptions {
                manual_ack: Some(Duration::from_secs(30)),
                ..CheckOptions::default()
            },
        )
        .unwrap();
    assert_eq!(
        contents(&client.watch(&alice, &options("w3")).unwrap()),
        ["first", "second"]
    );
    client.ack(&alice, &leased.ids()).unwrap();
    assert!(client
        .watch(&alice, &options("w4"))
        .unwrap()
        .messages
        .is_empty());
}

#[test]
fn a_waiting_watch_is_woken_by_the_send_not_by_polling() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    let jobs_before = broker.broker().store().stats().jobs;
    let waiter = start_watching(
        &broker,
        "alice",
        &alice,
        waiting("w", Duration::from_secs(30)),
    );
    thread::sleep(Duration::from_millis(500));
    let jobs_asleep = broker.broker().store().stats().jobs - jobs_before;
    let sending = Instant::now();
    legacy_send(&addr, &bob, "alice", "wake up");
    let (reply, answered) = waiter.join().unwrap();
    assert_eq!(contents(&reply), ["wake up"]);
    assert_prompt("at the send", sending, answered);
    println!("watch answered {:?} after the send", answered - sending);
    // Two reads before sleeping (one empty, one after listening for the doorbell); a
    // watch that polled would have run more in half a second.
    assert!(jobs_asleep <= 2, "{jobs_asleep} store jobs while asleep");
    assert_eq!(
        broker.count("SELECT count(*) FROM messages WHERE delivered_at IS NULL"),
        1
    );
}

#[test]
fn a_watch_answers_empty_at_its_deadline_and_when_the_broker_stops() {
    let broker = TestBroker::start();
    let alice = broker.register("alice");
    let asking = Instant::now();
    let reply = broker
        .client()
        .watch(&alice, &waiting("w", Duration::from_millis(300)))
        .unwrap();
    let took = asking.elapsed();
    assert!(reply.messages.is_empty() && !reply.replaced);
    assert!(
        took >= Duration::from_millis(300),
        "answered after {took:?}"
    );

    let waiter = start_watching(
        &broker,
        "alice",
        &alice,
        waiting("w", Duration::from_secs(120)),
    );
    let stopping = Instant::now();
    drop(broker);
    let (reply, answered) = waiter.join().unwrap();
    assert!(reply.messages.is_empty() && !reply.replaced);
    assert_prompt("at shutdown", stopping, answered);
}

#[test]
fn a_newer_watch_for_the_same_watcher_replaces_the_waiting_one() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    let older = start_watching(
        &broker,
        "alice",
        &alice,
        waiting("session-1", Duration::from_secs(30)),
    );
    // Another watcher's watch of the same session is not replaced.
    let other = watch_in_thread(
        &broker,
        &alice,
        waiting("session-2", Duration::from_secs(30)),
    );
    thread::sleep(Duration::from_millis(200));
    assert!(!older.is_finished());
    let replacing = Instant::now();
    let newer = watch_in_thread(
        &broker,
        &alice,
        waiting("session-1", Duration::from_secs(30)),
    );
    let (reply, answered) = older.join().unwrap();
    assert!(reply.replaced, "{reply:?}");
    assert!(reply.messages.is_empty() && !reply.more);
    assert_prompt("when replaced", replacing, answered);
    assert!(!other.is_finished() && !newer.is_finished());

    legacy_send(&addr, &bob, "alice", "for the newer");
    let (reply, _) = newer.join().unwrap();
    assert_eq!(contents(&reply), ["for the newer"]);
    assert!(!reply.replaced);
    let (reply, _) = other.join().unwrap();
    assert_eq!(contents(&reply), ["for the newer"]);
}

#[test]
fn a_watcher_that_closes_while_waiting_ends_the_wait_and_is_told_nothing() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    let mut stream = TcpStream::connect(&addr).unwrap();
    let request = json!({"action": "watch", "session_token": alice, "watcher": "gone",
                         "wait_ms": 60_000});
    stream.write_all(format!("{request}\n").as_bytes()).unwrap();
    broker.wait_until_waiting_for_mail("alice");
    stream.shutdown(std::net::Shutdown::Both).unwrap();
    drop(stream);
    wait_until("the watch stops waiting", || {
        !broker.is_waiting_for_mail("alice")
    });
    legacy_send(&addr, &bob, "alice", "after they left");
    thread::sleep(Duration::from_millis(200));
    assert_eq!(announcements(&broker, "gone"), 0);
    // The same watcher, back, is told about it.
    let told = broker.client().watch(&alice, &options("gone")).unwrap();
    assert_eq!(contents(&told), ["after they left"]);
}

#[test]
fn push_marks_mail_pushed_once_and_never_delivered() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    let id = legacy_send(&addr, &bob, "alice", "pushed")["message_id"]
        .as_i64()
        .unwrap();
    let pushed_at = |broker: &TestBroker| -> Option<String> {
        broker
            .sql()
            .query_row(
                "SELECT pushed_at FROM messages WHERE id = ?1",
                [id],
                |row| row.get(0),
            )
            .unwrap()
    };
    let mut client = broker.client();
    client.watch(&alice, &options("hook")).unwrap();
    assert_eq!(
        pushed_at(&broker),
        None,
        "a watch without push is not a push"
    );

    broker.clock.advance(chrono::Duration::seconds(5));
    let push = WatchOptions {
        push: true,
        ..options("mcp-a")
    };
    assert_eq!(contents(&client.watch(&alice, &push).unwrap()), ["pushed"]);
    assert_eq!(
        pushed_at(&broker).as_deref(),
        Some("2026-01-01T12:00:05.000Z")
    );

    broker.clock.advance(chrono::Duration::seconds(5));
    let again = WatchOptions {
        push: true,
        ..options("mcp-b")
    };
    assert_eq!(contents(&client.watch(&alice, &again).unwrap()), ["pushed"]);
    assert_eq!(
        pushed_at(&broker).as_deref(),
        Some("2026-01-01T12:00:05.000Z"),
        "pushed_at is the first push"
    );
    let rows: Vec<(String, String, bool)> = broker
        .sql()
        .prepare("SELECT watcher, announced_at, push FROM announcements ORDER BY announced_at")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(
        rows,
        [
            ("hook".into(), "2026-01-01T12:00:00.000Z".into(), false),
            ("mcp-a".into(), "2026-01-01T12:00:05.000Z".into(), true),
            ("mcp-b".into(), "2026-01-01T12:00:10.000Z".into(), true),
        ]
    );
    assert_eq!(
        broker.count("SELECT count(*) FROM messages WHERE delivered_at IS NULL"),
        1
    );
}

#[test]
fn announcements_go_when_the_sweeper_removes_their_mail() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    legacy_send(&addr, &bob, "alice", "kept");
    legacy_send(&addr, &bob, "alice", "read");
    let mut client = broker.client();
    client.watch(&alice, &options("w")).unwrap();
    let checked = client
        .check_with(
            &alice,
            CheckOptions {
                manual_ack: Some(Duration::from_secs(30)),
                limit: Some(1),
                ..CheckOptions::default()
            },
        )
        .unwrap();
    client.ack(&alice, &checked.ids()).unwrap();
    broker.clock.advance(chrono::Duration::days(31));
    let report = broker.sweep();
    assert_eq!(report.delivered_mail, 1, "{report:?}");
    assert_eq!(announcements(&broker, "w"), 1);
    assert_eq!(
        broker.count("SELECT count(*) FROM announcements a JOIN messages m ON m.id = a.message_id"),
        1
    );
}

#[test]
fn a_long_watch_counts_as_one_request_for_the_rate_limit() {
    let broker = TestBroker::start_with(|config| config.limits.rate_limit = 2);
    let alice = broker.register("alice");
    let mut client = broker.client();
    // Several reads (before sleeping, after listening, at the deadline), one request.
    client
        .watch(&alice, &waiting("w", Duration::from_millis(300)))
        .unwrap();
    client.watch(&alice, &options("w")).unwrap();
    let refused = client.watch(&alice, &options("w")).unwrap_err();
    assert!(refused.to_string().contains("rate_limited"), "{refused}");
}

fn watch_error(addr: &str, fields: Value) -> (String, String) {
    let mut request = json!({"action": "watch"});
    for (key, value) in fields.as_object().unwrap() {
        request[key] = value.clone();
    }
    let reply = legacy(addr, &request);
    assert_eq!(reply["status"], "error", "{reply}");
    (
        reply["code"].as_str().unwrap().to_owned(),
        reply["message"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn bad_watch_fields_are_refused_with_the_field_named() {
    let broker = TestBroker::start();
    let alice = broker.register("alice");
    let addr = broker.addr();
    let (code, message) = watch_error(&addr, json!({"session_token": alice}));
    assert_eq!(code, "missing_field");
    assert!(message.contains("`watcher`"), "{message}");
    for (fields, field) in [
        (json!({"watcher": ""}), "watcher"),
        (json!({"watcher": "has space"}), "watcher"),
        (json!({"watcher": "w".repeat(129)}), "watcher"),
        (json!({"watcher": 42}), "watcher"),
        (json!({"watcher": "w", "wait_ms": 300_001}), "wait_ms"),
        (json!({"watcher": "w", "wait_ms": "soon"}), "wait_ms"),
        (json!({"watcher": "w", "limit": 0}), "limit"),
        (json!({"watcher": "w", "limit": 501}), "limit"),
        (json!({"watcher": "w", "push": 1}), "push"),
    ] {
        let mut fields = fields;
        fields["session_token"] = json!(alice);
        let (code, message) = watch_error(&addr, fields.clone());
        assert_eq!(code, "invalid_field", "{fields}: {message}");
        assert!(
            message.contains(&format!("`{field}`")),
            "{fields}: {message}"
        );
    }
    let (code, _) = watch_error(&addr, json!({"session_token": "nope", "watcher": "w"}));
    assert_eq!(code, "invalid_session");
    // A refused watch recorded nothing and the broker still serves.
    assert_eq!(broker.count("SELECT count(*) FROM announcements"), 0);
    let reply = legacy(
        &addr,
        &json!({"action": "watch", "session_token": alice, "watcher": "w", "limit": 500}),
    );
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(reply["replaced"], false);
}

/// The reply on the wire: the `check` message shape, `more` and `replaced`, in key order.
#[test]
fn a_watch_reply_on_the_wire_carries_messages_more_and_replaced() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    legacy_send(&addr, &bob, "alice", "hello");
    let mut stream = TcpStream::connect(&addr).unwrap();
    let request = json!({"action": "watch", "session_token": alice, "watcher": "w", "limit": 1});
    stream.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    assert!(
        line.starts_with("{\"messages\":[{\"addressed_to\":\"alice\",\"delivery_count\":1,"),
        "{line}"
    );
    assert!(
        line.ends_with("],\"more\":false,\"replaced\":false,\"status\":\"ok\"}\n"),
        "{line}"
    );
}

/// Mail announced to `watcher`, and the messages whose `pushed_at` is set.
fn announced_and_pushed(broker: &TestBroker, watcher: &str) -> (i64, i64) {
    (
        announcements(broker, watcher),
        broker.count("SELECT count(*) FROM messages WHERE pushed_at IS NOT NULL"),
    )
}

#[test]
fn a_push_whose_reply_was_never_read_is_not_recorded() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    legacy_send(&addr, &bob, "alice", "pushed, never read");
    let request = json!({"action": "watch", "session_token": alice, "watcher": "mcp-1",
                         "push": true});
    let mut reader = TcpStream::connect(&addr).unwrap();
    reader.write_all(format!("{request}\n").as_bytes()).unwrap();
    wait_until("the push is recorded", || {
        announced_and_pushed(&broker, "mcp-1") == (1, 1)
    });
    // Closing with the reply unread resets the connection: provably never read.
    drop(reader);
    wait_until("the push is un-recorded", || {
        announced_and_pushed(&broker, "mcp-1") == (0, 0)
    });
    let told = broker
        .client()
        .watch(
            &alice,
            &WatchOptions {
                push: true,
                ..options("mcp-1")
            },
        )
        .unwrap();
    assert_eq!(contents(&told), ["pushed, never read"]);
    assert_eq!(announced_and_pushed(&broker, "mcp-1"), (1, 1));
}

#[test]
fn a_push_whose_reply_was_read_stays_recorded() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    legacy_send(&addr, &bob, "alice", "read, then closed");
    let request = json!({"action": "watch", "session_token": alice, "watcher": "mcp-1",
                         "push": true});
    // Read, then closed cleanly, as the hook does.
    assert_eq!(
        legacy(&addr, &request)["messages"][0]["message"]["content"],
        "read, then closed"
    );
    // Read, then the next request, then a reset: the first reply was taken.
    legacy_send(&addr, &bob, "alice", "read, then reset");
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("read, then reset"), "{line}");
    let waiting = json!({"action": "watch", "session_token": alice, "watcher": "mcp-1",
                         "push": true, "wait_ms": 60_000});
    stream.write_all(format!("{waiting}\n").as_bytes()).unwrap();
    broker.wait_until_waiting_for_mail("alice");
    drop(reader);
    drop(stream);
    wait_until("the watch stops waiting", || {
        !broker.is_waiting_for_mail("alice")
    });
    thread::sleep(Duration::from_millis(300));
    assert_eq!(announced_and_pushed(&broker, "mcp-1"), (2, 2));
}
