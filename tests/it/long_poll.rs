//! Long-poll: a `check` with `wait_ms` answers as soon as mail is committed for the caller, is
//! woken by the commit rather than by polling, and answers empty at its deadline.

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use claude_ipc::clock::Clock;
use common::{contents, legacy, legacy_send, TestBroker, PROMPTLY};
use serde_json::{json, Value};

/// Sends one request on a fresh connection and reads one reply line, however long it takes;
/// returns the reply and when it arrived.
fn waiting_request(addr: &str, request: Value) -> thread::JoinHandle<(Value, Instant)> {
    let addr = addr.to_owned();
    thread::spawn(move || {
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        stream.write_all(format!("{request}\n").as_bytes()).unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        (serde_json::from_str(&line).unwrap(), Instant::now())
    })
}

fn check_request(token: &str, wait_ms: u64) -> Value {
    json!({"action": "check", "session_token": token, "wait_ms": wait_ms, "ack": "manual"})
}

/// Starts a manual-ack check for `name` that waits up to `wait_ms`, and returns once it is
/// asleep.
fn long_poll(
    broker: &TestBroker,
    name: &str,
    token: &str,
    wait_ms: u64,
) -> thread::JoinHandle<(Value, Instant)> {
    start_waiting(broker, name, check_request(token, wait_ms))
}

/// Starts `request` and returns once the broker's registry of open waits says `name` is
/// listening for its doorbell: mail committed from then on must answer it.
fn start_waiting(
    broker: &TestBroker,
    name: &str,
    request: Value,
) -> thread::JoinHandle<(Value, Instant)> {
    let waiter = waiting_request(&broker.addr(), request);
    broker.wait_until_waiting_for_mail(name);
    assert!(!waiter.is_finished(), "the waiter was answered already");
    waiter
}

fn store_jobs(broker: &TestBroker) -> u64 {
    broker.broker().store().stats().jobs
}

/// `answered` is no earlier than `from + at_least` and within [`PROMPTLY`] after that.
fn assert_answered_between(what: &str, from: Instant, at_least: Duration, answered: Instant) {
    let took = answered.saturating_duration_since(from);
    assert!(
        took >= at_least && took < at_least + PROMPTLY,
        "{what}: answered after {took:?}, expected {at_least:?} to {:?}",
        at_least + PROMPTLY
    );
}

#[test]
fn a_waiting_check_answers_as_soon_as_mail_is_sent() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    let waiter = long_poll(&broker, "alice", &alice, 30_000);
    let sending = Instant::now();
    legacy_send(&addr, &bob, "alice", "wake up");
    let (reply, answered) = waiter.join().unwrap();
    assert_eq!(contents(&reply), ["wake up"]);
    assert_answered_between("at the send", sending, Duration::ZERO, answered);
}

#[test]
fn a_waiting_check_answers_empty_at_its_deadline() {
    let broker = TestBroker::start();
    let alice = broker.register("alice");
    let asking = Instant::now();
    let (reply, answered) = waiting_request(&broker.addr(), check_request(&alice, 300))
        .join()
        .unwrap();
    assert_eq!(reply["status"], "ok");
    assert_eq!(contents(&reply), Vec::<String>::new());
    assert_answered_between(
        "at the deadline",
        asking,
        Duration::from_millis(300),
        answered,
    );
}

/// Two reads before sleeping (one finds the mailbox empty, one more after listening for the
/// doorbell, so a commit between them is not missed) and one at the deadline are all a wait
/// needs; a waiter that polled the store while asleep would run more.
#[test]
fn a_sleeping_waiter_makes_no_database_work() {
    let broker = TestBroker::start();
    let alice = broker.register("alice");
    let before = store_jobs(&broker);
    let asking = Instant::now();
    let (reply, answered) = waiting_request(&broker.addr(), check_request(&alice, 2_000))
        .join()
        .unwrap();
    let jobs = store_jobs(&broker) - before;
    assert_eq!(contents(&reply), Vec::<String>::new());
    assert_answered_between("at the deadline", asking, Duration::from_secs(2), answered);
    assert!(
        (1..=3).contains(&jobs),
        "a 2 s wait ran {jobs} store jobs; two reads before sleeping and one at the deadline \
         are all it needs"
    );
}

#[test]
fn mail_for_someone_else_does_not_answer_the_waiter() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let (alice, bob, _carol) = (
        broker.register("alice"),
        broker.register("bob"),
        broker.register("carol"),
    );
    let asking = Instant::now();
    let waiter = long_poll(&broker, "alice", &alice, 1_500);
    legacy_send(&addr, &bob, "carol", "not for alice");
    let (reply, answered) = waiter.join().unwrap();
    assert_eq!(contents(&reply), Vec::<String>::new());
    assert_answered_between(
        "at the deadline, not at carol's mail",
        asking,
        Duration::from_millis(1_500),
        answered,
    );
}

#[test]
fn broadcasts_and_rename_notices_wake_waiters() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let (alice, bob, carol) = (
        broker.register("alice"),
        broker.register("bob"),
        broker.register("carol"),
    );
    let waiter = long_poll(&broker, "alice", &alice, 30_000);
    let broadcasting = Instant::now();
    legacy(
        &addr,
        &json!({"action": "broadcast", "session_token": bob, "message": {"content": "all"}}),
    );
    let (reply, answered) = waiter.join().unwrap();
    assert_eq!(contents(&reply), ["all"]);
    assert_answered_between("at the broadcast", broadcasting, Duration::ZERO, answered);

    let waiter = long_poll(&broker, "alice", &alice, 30_000);
    let renaming = Instant::now();
    legacy(
        &addr,
        &json!({"action": "rename", "session_token": carol, "new_id": "dave"}),
    );
    let (reply, answered) = waiter.join().unwrap();
    assert_eq!(contents(&reply), ["carol renamed to dave"]);
    assert_answered_between("at the rename", renaming, Duration::ZERO, answered);
}

#[test]
fn a_lease_running_out_wakes_the_waiter() {
    const LEASE: Duration = Duration::from_millis(1_000);
    let broker = TestBroker::start_with_clock(|_| {}, Clock::system());
    let (addr, alice, bob) = broker.alice_and_bob();
    legacy_send(&addr, &bob, "alice", "unacked");
    let leasing = Instant::now();
    let first = legacy(
        &addr,
        &json!({"action": "check", "session_token": alice, "ack": "manual",
                "lease_ms": LEASE.as_millis() as u64}),
    );
    let leased = Instant::now();
    assert_eq!(contents(&first), ["unacked"]);
    let (reply, answered) = long_poll(&broker, "alice", &alice, 20_000).join().unwrap();
    assert_eq!(contents(&reply), ["unacked"]);
    assert_eq!(reply["messages"][0]["delivery_count"], 2);
    // The lease ran out between `leasing + LEASE` and `leased + LEASE`.
    assert!(
        answered >= leasing + LEASE && answered < leased + LEASE + PROMPTLY,
        "answered {:?} after the {LEASE:?} lease was taken, not as it ran out",
        answered - leasing
    );
}

#[test]
fn shutdown_answers_waiters_instead_of_making_them_wait() {
    let broker = TestBroker::start();
    let alice = broker.register("alice");
    let waiter = long_poll(&broker, "alice", &alice, 120_000);
    let stopping = Instant::now();
    drop(broker);
    let stopped = Instant::now();
    let (reply, answered) = waiter.join().unwrap();
    assert_eq!(reply["status"], "ok");
    assert_eq!(contents(&reply), Vec::<String>::new());
    assert_answered_between("at shutdown", stopping, Duration::ZERO, answered);
    assert_answered_between("shutdown finished", stopping, Duration::ZERO, stopped);
}

#[test]
fn a_legacy_check_can_long_poll_too() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    let waiter = start_waiting(
        &broker,
        "alice",
        json!({"action": "check", "session_token": alice, "wait_ms": 30_000}),
    );
    let sending = Instant::now();
    legacy_send(&addr, &bob, "alice", "auto-acked");
    let (reply, answered) = waiter.join().unwrap();
    assert_eq!(contents(&reply), ["auto-acked"]);
    assert_answered_between("at the send", sending, Duration::ZERO, answered);
    common::wait_until("the read is marked delivered", || {
        broker.count("SELECT count(*) FROM messages WHERE delivered_at IS NOT NULL") == 1
    });
}
