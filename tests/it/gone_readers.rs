//! Mail is never handed to a reader who is gone: a legacy client that gave up during a stall,
//! a `watch` interrupted while it waits, an MCP tool call that was cancelled or abandoned.
//! Each leaves the mail waiting for the next check. The faults are real: a `sqlite3` shell
//! holding the write lock, a SIGSTOPped broker, SIGINT and SIGKILL, an unread reply.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use claude_ipc::client::CheckOptions;
use claude_ipc::clock::Clock;
use common::{
    binary, cli, closed_by_broker, contents, legacy, legacy_check, legacy_send, read_reply,
    wait_until, BrokerProcess, McpProcess, SqliteLock, TestBroker, PROMPTLY,
};
use serde_json::{json, Value};

/// A legacy client that gives up: sends `request`, waits `patience` for a reply, closes.
/// Returns whether any reply arrived in time.
fn impatient_request(addr: &str, request: &Value, patience: Duration) -> bool {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(patience)).unwrap();
    stream.write_all(request.to_string().as_bytes()).unwrap();
    let mut buffer = [0u8; 65536];
    matches!(stream.read(&mut buffer), Ok(n) if n > 0)
}

fn check_request(token: &str) -> Value {
    json!({"action": "check", "instance_id": "ignored", "session_token": token})
}

/// Messages not yet delivered, and of those the ones held or leased right now.
fn waiting_and_held(db: &Path) -> (i64, i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(
        "SELECT count(*), count(leased_until) FROM messages WHERE delivered_at IS NULL",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .unwrap()
}

/// The mail a legacy check gets once, and that the next check does not get again.
fn exactly_once(addr: &str, token: &str, expected: &str) {
    assert_eq!(contents(&legacy_check(addr, token)), [expected]);
    assert!(contents(&legacy_check(addr, token)).is_empty());
}

// ---- legacy check after a stall ----

#[test]
fn a_legacy_check_given_up_during_an_operators_lock_leaves_the_mail_waiting() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    legacy_send(&addr, &bob, "alice", "sent before the lock");
    let Some(lock) = SqliteLock::hold(&broker.db_path()) else {
        return;
    };
    let started = std::time::Instant::now();
    let answered = impatient_request(&addr, &check_request(&alice), Duration::from_secs(3));
    assert!(!answered, "the broker answered through the lock");
    std::thread::sleep(Duration::from_secs(4).saturating_sub(started.elapsed()));
    lock.release();
    // The very next check: it waits its turn behind the stalled one, and briefly for that
    // one's reply to settle, so the hold does not hide the mail from it.
    exactly_once(&addr, &alice, "sent before the lock");
}

#[test]
fn a_legacy_check_given_up_while_the_broker_was_stopped_leaves_the_mail_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::spawn_with_env(
        &data,
        &["--rate-limit", "0"],
        &[("RUST_LOG", "info,claude_ipc::server=debug")],
    );
    let mut client = broker.client();
    let alice = client.register("alice", None).unwrap().session_token;
    let bob = client.register("bob", None).unwrap().session_token;
    client
        .send(&bob, "alice", "sent before the stop", None, None)
        .unwrap();
    let pid = broker.child.id().to_string();
    signal("-STOP", &pid);
    let started = std::time::Instant::now();
    let answered = impatient_request(&broker.addr, &check_request(&alice), Duration::from_secs(3));
    assert!(!answered, "a stopped broker answered");
    std::thread::sleep(Duration::from_secs(6).saturating_sub(started.elapsed()));
    signal("-CONT", &pid);
    let said = await_log(&broker, "did not take its reply", "reset the connection");
    assert!(said.contains("mail stays queued") || said.contains("before its reply"));
    exactly_once(&broker.addr, &alice, "sent before the stop");
}

#[test]
fn a_reply_never_read_within_the_write_timeout_leaves_the_mail_waiting() {
    // Longer than a check waits for a reply on its way to settle, which is the window below.
    let broker = TestBroker::start_with(|config| {
        config.limits.write_timeout = Duration::from_secs(3);
    });
    let (addr, alice, bob) = broker.alice_and_bob();
    legacy_send(&addr, &bob, "alice", "never read in time");
    let mut silent = TcpStream::connect(&addr).unwrap();
    silent
        .write_all(check_request(&alice).to_string().as_bytes())
        .unwrap();
    wait_until("the unread reply holds the mail", || {
        waiting_and_held(&broker.db_path()) == (1, 1)
    });
    // While the broker waits for the client to take it, nobody else is handed that mail.
    assert!(contents(&legacy_check(&addr, &alice)).is_empty());
    wait_until("the hold is released", || {
        waiting_and_held(&broker.db_path()) == (1, 0)
    });
    assert!(
        closed_by_broker(&mut silent),
        "the silent connection is closed"
    );
    exactly_once(&addr, &alice, "never read in time");
}

#[test]
fn legacy_clients_that_read_their_reply_get_each_message_exactly_once() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    // Send, one recv, close: the legacy scripts.
    legacy_send(&addr, &bob, "alice", "one");
    exactly_once(&addr, &alice, "one");
    // A client that half-closes after its request and still reads the reply.
    legacy_send(&addr, &bob, "alice", "two");
    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(check_request(&alice).to_string().as_bytes())
        .unwrap();
    half.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    half.read_to_end(&mut reply).unwrap();
    let reply: Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(contents(&reply), ["two"]);
    drop(half);
    wait_until("the half-closed client's mail is delivered", || {
        waiting_and_held(&broker.db_path()) == (0, 0)
    });
    // A client that keeps its connection: its next request says it took the reply.
    legacy_send(&addr, &bob, "alice", "three");
    let mut kept = TcpStream::connect(&addr).unwrap();
    kept.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    for expected in [vec!["three"], vec![]] {
        let mut line = check_request(&alice).to_string();
        line.push('\n');
        kept.write_all(line.as_bytes()).unwrap();
        assert_eq!(contents(&read_reply(&mut kept)), expected);
    }
    assert_eq!(waiting_and_held(&broker.db_path()), (0, 0));
    let delivered = broker.count("SELECT count(*) FROM messages WHERE delivery_count = 1");
    assert_eq!(delivered, 3, "each message was handed out once");
}

#[test]
fn a_client_that_read_its_reply_and_keeps_the_connection_idle_has_its_mail_delivered() {
    // Neither a next request nor a close comes: the kernel's word that the client read
    // everything is the evidence. A long write timeout shows it is not waited out.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ipc.sock");
    let broker = TestBroker::start_with(|config| {
        config.limits.write_timeout = Duration::from_secs(60);
        config.socket = Some(socket.clone());
    });
    let (addr, alice, bob) = broker.alice_and_bob();
    let tcp = broker.client();
    let unix = claude_ipc::client::Client::connect_unix(&socket, common::TIMEOUT).unwrap();
    for (mut client, how) in [(tcp, "over TCP"), (unix, "over the Unix socket")] {
        legacy_send(&addr, &bob, "alice", how);
        let checked = client.check(&alice).unwrap();
        assert_eq!(checked.messages[0].message.content, how);
        wait_until("the idle client's mail is delivered", || {
            waiting_and_held(&broker.db_path()) == (0, 0)
        });
        drop(client);
    }
}

#[test]
fn a_reply_never_read_over_the_unix_socket_leaves_the_mail_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ipc.sock");
    let broker = TestBroker::start_with(|config| {
        config.limits.write_timeout = Duration::from_millis(500);
        config.socket = Some(socket.clone());
    });
    let (addr, alice, bob) = broker.alice_and_bob();
    legacy_send(&addr, &bob, "alice", "never read on the socket");
    let mut silent = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    silent
        .write_all(check_request(&alice).to_string().as_bytes())
        .unwrap();
    wait_until("the unread reply holds the mail", || {
        waiting_and_held(&broker.db_path()) == (1, 1)
    });
    wait_until("the hold is released", || {
        waiting_and_held(&broker.db_path()) == (1, 0)
    });
    drop(silent);
    exactly_once(&addr, &alice, "never read on the socket");
}

// ---- watch interrupted ----

fn session_file(broker: &TestBroker, dir: &Path, name: &str) -> PathBuf {
    let file = dir.join(format!("{name}.session"));
    let out = cli(&broker.addr(), &file, &["register", name]);
    assert!(out.status.success(), "{out:?}");
    file
}

/// Starts `claude-ipc watch` for `name`'s `session` and returns once its long-poll is on
/// the broker.
fn start_watch(broker: &TestBroker, name: &str, session: &Path) -> std::process::Child {
    let mut watch = Command::new(binary())
        .arg("watch")
        .env("IPC_ADDR", broker.addr())
        .env("IPC_SESSION_FILE", session)
        .env("IPC_AUTOSTART", "0")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(watch.stderr.take().unwrap());
    let mut said = String::new();
    stderr.read_line(&mut said).unwrap();
    assert!(said.contains("watching mail"), "{said}");
    // Kept drained, so the watch never blocks on (or fails writing to) its stderr.
    std::thread::spawn(move || for _ in stderr.lines() {});
    broker.wait_until_waiting_for_mail(name);
    watch
}

fn an_interrupted_watch_holds_no_mail(how: &str) {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let alice = session_file(&broker, dir.path(), "alice");
    let bob = session_file(&broker, dir.path(), "bob");
    let mut watch = start_watch(&broker, "alice", &alice);
    signal(how, &watch.id().to_string());
    watch.wait().unwrap();
    assert!(
        cli(&broker.addr(), &bob, &["send", "alice", "after the watch"])
            .status
            .success()
    );
    let out = cli(&broker.addr(), &alice, &["check"]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("after the watch"), "{out:?}");
    // Handed out once, to this check: the dead watch's long-poll never leased it.
    let handed_out = broker.count("SELECT delivery_count FROM messages WHERE recipient = 'alice'");
    assert_eq!(handed_out, 1);
}

#[test]
fn mail_after_a_watch_is_interrupted_is_readable_at_once() {
    an_interrupted_watch_holds_no_mail("-INT");
}

#[test]
fn mail_after_a_watch_is_killed_is_readable_at_once() {
    an_interrupted_watch_holds_no_mail("-KILL");
}

#[test]
fn a_lease_whose_reply_was_never_read_is_handed_back_when_the_connection_resets() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    legacy_send(&addr, &bob, "alice", "leased, never read");
    let mut reader = TcpStream::connect(&addr).unwrap();
    let request = json!({"action": "check", "session_token": alice, "ack": "manual"});
    reader.write_all(request.to_string().as_bytes()).unwrap();
    wait_until("the mail is leased", || {
        waiting_and_held(&broker.db_path()) == (1, 1)
    });
    // Closing with the reply unread resets the connection: provably never read.
    drop(reader);
    wait_until("the lease is handed back", || {
        waiting_and_held(&broker.db_path()) == (1, 0)
    });
    let again = legacy(&addr, &request);
    assert_eq!(contents(&again), ["leased, never read"]);
}

#[test]
fn a_lease_whose_reply_was_read_still_holds_after_a_clean_close() {
    // One connection per request is how the legacy scripts talk: the ack may come on the
    // next connection, so a clean close does not hand the lease back.
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    legacy_send(&addr, &bob, "alice", "read, then closed");
    let request = json!({"action": "check", "session_token": alice, "ack": "manual"});
    let leased = legacy(&addr, &request);
    assert_eq!(contents(&leased), ["read, then closed"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(waiting_and_held(&broker.db_path()), (1, 1));
    assert!(contents(&legacy(&addr, &request)).is_empty());
}

// ---- count waits, ack releases ----

#[test]
fn count_with_wait_ms_answers_when_mail_arrives_and_consumes_nothing() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    let waiter = {
        let (addr, alice) = (addr.clone(), alice.clone());
        std::thread::spawn(move || {
            legacy(
                &addr,
                &json!({"action": "count", "session_token": alice, "wait_ms": 20000}),
            )
        })
    };
    broker.wait_until_waiting_for_mail("alice");
    let sending = std::time::Instant::now();
    legacy_send(&addr, &bob, "alice", "counted, not consumed");
    let counted = waiter.join().unwrap();
    assert!(
        sending.elapsed() < PROMPTLY,
        "answered {:?} after the send: {counted}",
        sending.elapsed()
    );
    assert_eq!(counted["count"], 1, "{counted}");
    assert_eq!(counted["senders"], json!(["bob"]));
    exactly_once(&addr, &alice, "counted, not consumed");
}

#[test]
fn an_ack_with_release_hands_leased_mail_back_at_once() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    legacy_send(&addr, &bob, "alice", "given back");
    let mut client = broker.client();
    let options = CheckOptions {
        manual_ack: Some(Duration::from_secs(30)),
        ..CheckOptions::default()
    };
    let leased = client.check_with(&alice, options).unwrap();
    assert!(client.check(&alice).unwrap().messages.is_empty(), "leased");
    let released = client.release(&alice, &leased.ids()).unwrap();
    assert_eq!(released.released, 1);
    let foreign = client.release(&bob, &leased.ids()).unwrap();
    assert_eq!(foreign.refused.len(), 1, "bob cannot release alice's mail");
    exactly_once(&addr, &alice, "given back");
    wait_until("the legacy check's mail is delivered", || {
        waiting_and_held(&broker.db_path()) == (0, 0)
    });
    let late = client.release(&alice, &leased.ids()).unwrap();
    assert_eq!(late.already_acked, leased.ids());
}

// ---- MCP calls cancelled or abandoned ----

fn mcp_for(broker: &TestBroker) -> McpProcess {
    McpProcess::start(&broker.addr(), &broker.data_dir(), &[], &[])
}

fn cancel(mcp: &mut McpProcess, id: u64) {
    mcp.notify(
        "notifications/cancelled",
        json!({"requestId": id, "reason": "the user pressed Esc"}),
    );
}

#[test]
fn a_cancelled_wait_for_messages_consumes_nothing() {
    let broker = TestBroker::start_with_clock(|_| {}, Clock::system());
    let bob = broker.register("bob");
    let mut mcp = mcp_for(&broker);
    mcp.ok("register", json!({"instance_id": "alice"}));
    let waiting = mcp.start_call("wait_for_messages", json!({"timeout_seconds": 20}));
    broker.wait_until_waiting_for_mail("alice");
    cancel(&mut mcp, waiting);
    wait_until("the cancelled wait has left the broker", || {
        !broker.is_waiting_for_mail("alice")
    });
    broker
        .client()
        .send(&bob, "alice", "after the cancel", None, None)
        .unwrap();
    let checked = mcp.ok("check", json!({}));
    assert!(checked.contains("after the cancel"), "{checked}");
}

#[test]
fn a_wait_for_messages_abandoned_unannounced_consumes_nothing() {
    let broker = TestBroker::start_with_clock(|_| {}, Clock::system());
    let bob = broker.register("bob");
    let mut abandoned = mcp_for(&broker);
    abandoned.ok("register", json!({"instance_id": "alice"}));
    let waiting = abandoned.start_call("wait_for_messages", json!({"timeout_seconds": 20}));
    broker.wait_until_waiting_for_mail("alice");
    // The same session is served meanwhile; the wait holds nothing up.
    assert_eq!(abandoned.ok("check", json!({})), "No new messages.");
    broker
        .client()
        .send(&bob, "alice", "nobody was listening", None, None)
        .unwrap();
    // The answer goes to a client that gave up; it only said what waits.
    let unread = abandoned.finish_call(waiting);
    assert!(
        unread.text.contains("1 new message from bob"),
        "{}",
        unread.text
    );
    // alice's session was in use a moment ago: the fresh server takes it over on purpose.
    let mut fresh = mcp_for(&broker);
    fresh.ok(
        "register",
        json!({"instance_id": "alice", "takeover": true}),
    );
    let checked = fresh.ok("check", json!({}));
    assert!(checked.contains("nobody was listening"), "{checked}");
}

#[test]
fn a_check_cancelled_while_the_database_is_locked_hands_its_mail_back() {
    let broker = TestBroker::start_with_clock(|_| {}, Clock::system());
    let bob = broker.register("bob");
    let mut mcp = mcp_for(&broker);
    mcp.ok("register", json!({"instance_id": "alice"}));
    broker
        .client()
        .send(&bob, "alice", "read while cancelled", None, None)
        .unwrap();
    let Some(lock) = SqliteLock::hold(&broker.db_path()) else {
        return;
    };
    let checking = mcp.start_call("check", json!({}));
    std::thread::sleep(Duration::from_millis(500));
    cancel(&mut mcp, checking);
    std::thread::sleep(Duration::from_millis(500));
    lock.release();
    wait_until("the cancelled check has read and handed back", || {
        mcp.log().contains("its mail was handed back")
    });
    assert_eq!(waiting_and_held(&broker.db_path()), (1, 0));
    let checked = mcp.ok("check", json!({}));
    assert!(checked.contains("read while cancelled"), "{checked}");
}

// ---- helpers ----

fn signal(which: &str, pid: &str) {
    let status = Command::new("kill").args([which, pid]).status().unwrap();
    assert!(status.success(), "kill {which} {pid}");
}

/// Waits for a broker log line containing either text; returns it.
fn await_log(broker: &BrokerProcess, one: &str, other: &str) -> String {
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = broker
            .log
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the broker never logged `{one}` or `{other}`"));
        if line.contains(one) || line.contains(other) {
            return line;
        }
    }
}
