//! Long-poll: a `check` with `wait_ms` answers as soon as mail is committed for the caller, is
//! woken by the commit rather than by polling, and answers empty at its deadline.

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use claude_ipc::clock::Clock;
use common::{contents, legacy, legacy_send, TestBroker};
use serde_json::{json, Value};

/// Sends one request on a fresh connection and reads one reply line, however long it takes.
fn waiting_request(addr: &str, request: Value) -> thread::JoinHandle<(Value, Duration)> {
    let addr = addr.to_owned();
    thread::spawn(move || {
        let started = Instant::now();
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        stream.write_all(format!("{request}\n").as_bytes()).unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        (serde_json::from_str(&line).unwrap(), started.elapsed())
    })
}

fn long_poll(
    broker: &TestBroker,
    token: &str,
    wait_ms: u64,
) -> thread::JoinHandle<(Value, Duration)> {
    start_waiting(
        broker,
        json!({"action": "check", "session_token": token, "wait_ms": wait_ms, "ack": "manual"}),
    )
}

fn store_jobs(broker: &TestBroker) -> u64 {
    broker.broker().store().stats().jobs
}

/// Starts `request` and returns once the broker has read the caller's empty mailbox twice
/// (once to find it empty, once more after listening for its doorbell): it is asleep.
fn start_waiting(broker: &TestBroker, request: Value) -> thread::JoinHandle<(Value, Duration)> {
    let before = store_jobs(broker);
    let waiter = waiting_request(&broker.addr(), request);
    common::wait_until("the waiter is asleep", || store_jobs(broker) >= before + 2);
    waiter
}

#[test]
fn a_waiting_check_answers_as_soon_as_mail_is_sent() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    let waiter = long_poll(&broker, &alice, 30_000);
    legacy_send(&addr, &bob, "alice", "wake up");
    let (reply, took) = waiter.join().unwrap();
    assert_eq!(contents(&reply), ["wake up"]);
    assert!(
        took < Duration::from_secs(20),
        "answered at the send, not the 30 s deadline ({took:?})"
    );
}

#[test]
fn a_waiting_check_answers_empty_at_its_deadline() {
    let broker = TestBroker::start();
    let alice = broker.register("alice");
    let (reply, took) = long_poll(&broker, &alice, 300).join().unwrap();
    assert_eq!(reply["status"], "ok");
    assert_eq!(contents(&reply), Vec::<String>::new());
    assert!(took >= Duration::from_millis(300), "waited only {took:?}");
}

#[test]
fn a_sleeping_waiter_makes_no_database_work() {
    let broker = TestBroker::start();
    let alice = broker.register("alice");
    let waiter = long_poll(&broker, &alice, 2_000);
    let jobs_asleep = store_jobs(&broker);
    thread::sleep(Duration::from_millis(1_000));
    assert_eq!(
        store_jobs(&broker),
        jobs_asleep,
        "the waiter polled the store while asleep"
    );
    assert_eq!(contents(&waiter.join().unwrap().0), Vec::<String>::new());
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
    let waiter = long_poll(&broker, &alice, 1_500);
    legacy_send(&addr, &bob, "carol", "not for alice");
    let (reply, took) = waiter.join().unwrap();
    assert_eq!(contents(&reply), Vec::<String>::new());
    assert!(
        took >= Duration::from_millis(1_500),
        "answered early: {took:?}"
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
    let waiter = long_poll(&broker, &alice, 30_000);
    legacy(
        &addr,
        &json!({"action": "broadcast", "session_token": bob, "message": {"content": "all"}}),
    );
    assert_eq!(contents(&waiter.join().unwrap().0), ["all"]);

    let waiter = long_poll(&broker, &alice, 30_000);
    legacy(
        &addr,
        &json!({"action": "rename", "session_token": carol, "new_id": "dave"}),
    );
    assert_eq!(
        contents(&waiter.join().unwrap().0),
        ["carol renamed to dave"]
    );
}

#[test]
fn a_lease_running_out_wakes_the_waiter() {
    let broker = TestBroker::start_with_clock(|_| {}, Clock::system());
    let (addr, alice, bob) = broker.alice_and_bob();
    legacy_send(&addr, &bob, "alice", "unacked");
    let first = legacy(
        &addr,
        &json!({"action": "check", "session_token": alice, "ack": "manual", "lease_ms": 400}),
    );
    assert_eq!(contents(&first), ["unacked"]);
    let (reply, took) = long_poll(&broker, &alice, 20_000).join().unwrap();
    assert_eq!(contents(&reply), ["unacked"]);
    assert_eq!(reply["messages"][0]["delivery_count"], 2);
    assert!(
        took < Duration::from_secs(10),
        "woke at the lease's end, not the deadline"
    );
}

#[test]
fn shutdown_answers_waiters_instead_of_making_them_wait() {
    let broker = TestBroker::start();
    let alice = broker.register("alice");
    let waiter = long_poll(&broker, &alice, 120_000);
    let stopping = Instant::now();
    drop(broker);
    let (reply, _) = waiter.join().unwrap();
    assert_eq!(reply["status"], "ok");
    assert_eq!(contents(&reply), Vec::<String>::new());
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "shutdown waited for the long-poll ({:?})",
        stopping.elapsed()
    );
}

#[test]
fn a_legacy_check_can_long_poll_too() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    let waiter = start_waiting(
        &broker,
        json!({"action": "check", "session_token": alice, "wait_ms": 30_000}),
    );
    legacy_send(&addr, &bob, "alice", "auto-acked");
    assert_eq!(contents(&waiter.join().unwrap().0), ["auto-acked"]);
    common::wait_until("the read is marked delivered", || {
        broker.count("SELECT count(*) FROM messages WHERE delivered_at IS NOT NULL") == 1
    });
}
