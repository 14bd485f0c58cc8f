//! Bad input gets a clear error with a stable code, never takes the broker down, and never
//! loses stored mail. The list of hostile inputs, one test each, is in
//! `hostile_input.rs`; this file holds the cases around them.
use crate::common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Queues one message for bob, to prove later that nothing stored was lost.
fn stored_mail(broker: &TestBroker) -> (String, String) {
    let alice = broker.register("alice");
    let bob = broker.register("bob");
    broker
        .client()
        .send(&alice, "bob", "must survive", None, None)
        .unwrap();
    (alice, bob)
}

fn assert_mail_intact_and_broker_serving(broker: &TestBroker, bob: &str) {
    assert_eq!(ping_json(&mut broker.client())["status"], "ok");
    let checked = broker.client().check(bob).unwrap();
    assert_eq!(checked.messages.len(), 1);
    assert_eq!(checked.messages[0].message.content, "must survive");
}

#[test]
fn a_request_just_under_the_size_limit_is_accepted() {
    let broker = TestBroker::start_with(|c| c.limits.max_request_bytes = 64 * 1024);
    let alice = broker.register("alice");
    let content = "y".repeat(60 * 1024);
    let reply = legacy(
        &broker.addr(),
        &json!({"action": "send", "session_token": alice, "to_id": "bob", "message": {"content": content}}),
    );
    assert_eq!(reply["status"], "ok", "{reply}");
}

#[test]
fn a_client_that_sends_nothing_is_closed_after_the_idle_timeout() {
    let broker = TestBroker::start_with(|c| c.limits.idle_timeout = Duration::from_millis(300));
    let (_, bob) = stored_mail(&broker);
    let mut stream = TcpStream::connect(broker.addr()).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let started = Instant::now();
    let reply = read_reply(&mut stream);
    assert_eq!(reply["code"], "idle_timeout", "{reply}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(closed_by_broker(&mut stream));
    assert_mail_intact_and_broker_serving(&broker, &bob);
}

#[test]
fn dribbled_bytes_cannot_stretch_a_request_past_the_read_timeout() {
    let broker = TestBroker::start_with(|c| c.limits.read_timeout = Duration::from_millis(400));
    let mut stream = TcpStream::connect(broker.addr()).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    // One byte every 50 ms: each read arrives in time, but the request as a whole does not.
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            for byte in b"{\"action\": \"ping\", \"padding\": \"aaaaaaaaaaaaaaaaaaaaaaa\"}" {
                if stream.write_all(&[*byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let reply = read_reply(&mut stream);
    assert_eq!(reply["code"], "read_timeout", "{reply}");
    writer.join().unwrap();
}

#[test]
fn connections_over_the_cap_are_told_so_and_the_broker_recovers() {
    let broker = TestBroker::start_with(|c| c.limits.max_connections = 5);
    let (_, bob) = stored_mail(&broker);
    let held: Vec<TcpStream> = (0..5)
        .map(|i| {
            let mut stream = TcpStream::connect(broker.addr()).unwrap();
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            // A registration proves the broker counted this connection, and makes it one of a
            // known client, which a newcomer may not evict.
            let register = format!("{{\"action\": \"register\", \"instance_id\": \"held{i}\"}}\n");
            stream.write_all(register.as_bytes()).unwrap();
            assert_eq!(read_reply(&mut stream)["status"], "ok");
            stream
        })
        .collect();
    let mut extra = TcpStream::connect(broker.addr()).unwrap();
    extra.set_read_timeout(Some(TIMEOUT)).unwrap();
    let reply = read_reply(&mut extra);
    assert_eq!(reply["code"], "too_many_connections", "{reply}");
    drop(held);
    // Slots free up as the held connections close.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let reply = legacy(&broker.addr(), &json!({"action": "ping"}));
        if reply["status"] == "ok" {
            break;
        }
        assert!(Instant::now() < deadline, "broker never recovered: {reply}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_mail_intact_and_broker_serving(&broker, &bob);
}

/// Drives the real connection code over an in-memory pipe. The client writes a check; if
/// `hang_up` it then disappears, so writing the reply fails. Returns what the client read.
fn check_over_pipe(broker: &TestBroker, bob: &str, hang_up: bool) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let engine = broker.broker();
    broker.block_on(async move {
        let (mut client, server_end) = tokio::io::duplex(1024);
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let connection = tokio::spawn(claude_ipc::server::Connection::new(server_end).serve(
            engine,
            claude_ipc::broker::Peer::unknown("pipe"),
            stopped,
        ));
        let request = json!({"action": "check", "session_token": bob}).to_string();
        client.write_all(request.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        if hang_up {
            drop(client);
        } else {
            client.shutdown().await.unwrap();
            client.read_to_end(&mut reply).await.unwrap();
        }
        connection.await.unwrap();
        reply
    })
}

#[test]
fn mail_whose_reply_cannot_be_written_stays_queued() {
    let broker = TestBroker::start();
    let (_, bob) = stored_mail(&broker);
    let pending = |broker: &TestBroker| -> i64 {
        broker
            .count("SELECT count(*) FROM messages WHERE recipient = 'bob' AND delivered_at IS NULL")
    };
    broker.clock.advance(chrono::Duration::minutes(1));
    assert!(check_over_pipe(&broker, &bob, true).is_empty());
    // The check was served (it refreshed bob's session), yet its mail stayed queued.
    let last_used: String = broker
        .sql()
        .query_row(
            "SELECT last_used_at FROM sessions WHERE instance_name = 'bob' AND revoked_at IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(last_used, claude_ipc::clock::to_text(broker.clock.now()));
    assert_eq!(
        pending(&broker),
        1,
        "a reply that was never written must not mark mail delivered"
    );
    let reply = check_over_pipe(&broker, &bob, false);
    assert!(String::from_utf8_lossy(&reply).contains("must survive"));
    assert_eq!(
        pending(&broker),
        0,
        "a written reply marks the mail delivered"
    );
}

#[test]
fn strangers_cannot_make_the_broker_write_large_message_files() {
    let broker = TestBroker::start();
    let reply = legacy(
        &broker.addr(),
        &json!({"action": "send", "session_token": "not-a-session", "to_id": "bob",
                "message": {"content": "q".repeat(50 * 1024)}}),
    );
    assert_eq!(reply["code"], "invalid_session", "{reply}");
    let large_dir = broker.data_dir().join("large-messages");
    let files = std::fs::read_dir(&large_dir)
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(files, 0);
    let recorded: i64 = broker.count("SELECT count(*) FROM auth_failures");
    assert_eq!(recorded, 1, "the refused stranger is counted");
}

#[test]
fn pipelined_requests_in_one_write_and_a_trailing_half_request_are_each_answered_in_order() {
    let broker = TestBroker::start();
    let mut stream = std::net::TcpStream::connect(broker.addr()).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut requests = "{\"action\": \"ping\"}\n".repeat(2_000);
    requests.push_str("{\"action\": \"teleport\"}{\"action\": \"ping\"}hello");
    stream.write_all(requests.as_bytes()).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut replies = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut replies).unwrap();
    let codes: Vec<String> = String::from_utf8(replies)
        .unwrap()
        .lines()
        .map(|line| {
            let reply: serde_json::Value = serde_json::from_str(line).unwrap();
            reply["code"].as_str().unwrap_or("ok").to_owned()
        })
        .collect();
    assert_eq!(codes.len(), 2_003);
    assert!(codes[..2_000].iter().all(|c| c == "ok"));
    assert_eq!(codes[2_000..], ["unknown_action", "ok", "invalid_json"]);
}
