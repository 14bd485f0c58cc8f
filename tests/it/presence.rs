//! Presence: `list` says who is online now (a long-poll waiting, or a request within the last
//! minute) and whose session a pushing server holds; `send` says whether its recipient is
//! online; the CLI says "bob is offline, last seen 3 h ago; the mail will wait".

use crate::common;

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use chrono::Utc;
use claude_ipc::client::{CheckOptions, Client};
use claude_ipc::clock::Clock;
use common::{cli, wait_until, TestBroker, TIMEOUT};
use serde_json::json;

/// `name`'s (online, push) as `list` shows it to the holder of `token`.
fn reach(broker: &TestBroker, token: &str, name: &str) -> (bool, bool) {
    let listed = broker.client().list(token).unwrap();
    let entry = listed
        .iter()
        .find(|entry| entry.id == name)
        .unwrap_or_else(|| panic!("{name} is not listed: {listed:?}"));
    (entry.online, entry.push)
}

/// A minute and a second: past the online window.
fn past_the_window(broker: &TestBroker) {
    broker.clock.advance(chrono::Duration::seconds(61));
}

#[test]
fn an_instance_is_online_while_it_waits_and_for_a_minute_after_its_last_request() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    assert_eq!(
        reach(&broker, &bob, "alice"),
        (true, false),
        "just registered"
    );
    past_the_window(&broker);
    assert_eq!(reach(&broker, &bob, "alice"), (false, false));

    // A long-poll keeps alice online however long it waits.
    let (waiting_addr, token) = (addr.clone(), alice.clone());
    let waiter = thread::spawn(move || {
        let mut client = Client::connect(&waiting_addr, TIMEOUT).unwrap();
        let options = CheckOptions {
            wait: Some(Duration::from_secs(30)),
            manual_ack: Some(Duration::from_secs(30)),
            limit: None,
        };
        client.check_with(&token, options).unwrap()
    });
    broker.wait_until_waiting_for_mail("alice");
    broker.clock.advance(chrono::Duration::minutes(10));
    assert_eq!(reach(&broker, &bob, "alice"), (true, false), "waiting");
    broker
        .client()
        .send(&bob, "alice", "wake up", None, None)
        .unwrap();
    assert_eq!(waiter.join().unwrap().messages.len(), 1);
    // Her last request began ten minutes ago, by the broker's clock: offline once it ends.
    wait_until("alice stops waiting", || {
        !broker.is_waiting_for_mail("alice")
    });
    assert_eq!(reach(&broker, &bob, "alice"), (false, false));

    // Any request is a use, and the minute counts from it.
    broker.client().list(&alice).unwrap();
    broker.clock.advance(chrono::Duration::seconds(59));
    assert_eq!(reach(&broker, &bob, "alice"), (true, false));
    broker.clock.advance(chrono::Duration::seconds(2));
    assert_eq!(reach(&broker, &bob, "alice"), (false, false));
}

#[test]
fn push_is_true_exactly_while_a_push_watch_holds_the_session() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    past_the_window(&broker);
    let watch = |push: bool| {
        let mut stream = TcpStream::connect(&addr).unwrap();
        let request = json!({"action": "watch", "session_token": alice, "watcher": "mcp-1",
                             "wait_ms": 60_000, "push": push});
        stream.write_all(format!("{request}\n").as_bytes()).unwrap();
        broker.wait_until_waiting_for_mail("alice");
        stream
    };
    let plain = watch(false);
    assert_eq!(
        reach(&broker, &bob, "alice"),
        (true, false),
        "a watch without push"
    );
    drop(plain);
    wait_until("the plain watch ends", || {
        !broker.is_waiting_for_mail("alice")
    });

    let pushing = watch(true);
    assert_eq!(reach(&broker, &bob, "alice"), (true, true));
    broker.clock.advance(chrono::Duration::minutes(5));
    assert_eq!(
        reach(&broker, &bob, "alice"),
        (true, true),
        "however long it waits"
    );
    drop(pushing);
    wait_until("the push watch ends", || {
        !broker.is_waiting_for_mail("alice")
    });
    // The server asks again at once after each push: a moment between two watches is not
    // the end of push.
    assert_eq!(
        reach(&broker, &bob, "alice"),
        (true, true),
        "within the grace"
    );
    broker.clock.advance(chrono::Duration::seconds(6));
    assert_eq!(reach(&broker, &bob, "alice"), (false, false));
}

#[test]
fn a_send_says_whether_its_recipient_is_online() {
    let broker = TestBroker::start();
    let (_addr, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let sent = client.send(&bob, "alice", "hi", None, None).unwrap();
    assert_eq!(sent.recipient_online, Some(true));
    assert_eq!(
        sent.recipient_last_seen.as_deref(),
        Some("2026-01-01T12:00:00.000Z")
    );

    past_the_window(&broker);
    let sent = client
        .send(&bob, "alice", "still there?", None, None)
        .unwrap();
    assert_eq!(sent.recipient_online, Some(false));
    assert_eq!(
        sent.recipient_last_seen.as_deref(),
        Some("2026-01-01T12:00:00.000Z")
    );

    let nobody = client.send(&bob, "nobody", "hello?", None, None).unwrap();
    assert_eq!(nobody.recipient_online, Some(false));
    assert_eq!(nobody.recipient_last_seen, None);

    // On the wire, beside the legacy fields.
    let reply = common::legacy(
        &broker.addr(),
        &json!({"action": "send", "session_token": alice, "to_id": "bob",
                "message": {"content": "back"}}),
    );
    assert_eq!(reply["recipient_online"], true, "{reply}");
    assert_eq!(reply["message"], "Message sent");
}

#[test]
fn the_cli_says_an_offline_recipient_was_last_seen_hours_ago_and_the_mail_waits() {
    // The broker's clock starts three hours back, so alice is last seen three hours before
    // the CLI's own clock once it is moved on.
    let three_hours = chrono::Duration::hours(3);
    let broker = TestBroker::start_with_clock(|_| {}, Clock::manual(Utc::now() - three_hours));
    broker.register("alice");
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("bob.session");
    let registered = cli(&broker.addr(), &session, &["register", "bob"]);
    assert!(registered.status.success(), "{registered:?}");
    broker.clock.advance(three_hours);

    let sent = cli(
        &broker.addr(),
        &session,
        &["send", "alice", "are you there?"],
    );
    let stdout = String::from_utf8_lossy(&sent.stdout);
    assert!(sent.status.success(), "{sent:?}");
    assert!(
        stdout.contains("alice is offline, last seen 3 h ago; the mail will wait"),
        "{stdout}"
    );
    // bob just used his session: he is online, and `list` says so.
    let sent = cli(&broker.addr(), &session, &["send", "bob", "note to self"]);
    let stdout = String::from_utf8_lossy(&sent.stdout);
    assert!(stdout.contains("bob is online"), "{stdout}");
    let listed = cli(&broker.addr(), &session, &["list"]);
    let stdout = String::from_utf8_lossy(&listed.stdout);
    let line = |name: &str| {
        stdout
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
            .to_owned()
    };
    assert!(line("alice").contains("offline"), "{stdout}");
    assert!(line("bob").contains("online"), "{stdout}");

    let json = cli(&broker.addr(), &session, &["list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(listed["instances"][0]["id"], "alice");
    assert_eq!(listed["instances"][0]["online"], false);
    assert_eq!(listed["instances"][1]["online"], true);
    assert_eq!(listed["instances"][1]["push"], false);
}

#[test]
fn status_shows_presence_as_the_broker_sees_it() {
    let broker = TestBroker::start_on_wall_clock();
    let alice = broker.register("alice");
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("bob.session");
    assert!(cli(&broker.addr(), &session, &["register", "bob"])
        .status
        .success());
    let mut stream = TcpStream::connect(broker.addr()).unwrap();
    let request = json!({"action": "watch", "session_token": alice, "watcher": "mcp-1",
                         "wait_ms": 60_000, "push": true});
    stream.write_all(format!("{request}\n").as_bytes()).unwrap();
    broker.wait_until_waiting_for_mail("alice");

    let data_dir = broker.data_dir();
    let env = [("IPC_DATA_DIR", data_dir.to_str().unwrap())];
    let status = common::cli_with_env(&broker.addr(), &session, &["status", "--json"], &env);
    let report: serde_json::Value =
        serde_json::from_slice(&status.stdout).unwrap_or_else(|e| panic!("{e}: {status:?}"));
    assert_eq!(report["presence"], "broker", "{report}");
    let alice = &report["instances"][0];
    assert_eq!(
        (&alice["name"], &alice["online"], &alice["push"]),
        (&json!("alice"), &json!(true), &json!(true))
    );
    let text = common::cli_with_env(&broker.addr(), &session, &["status"], &env);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("as the broker sees them now"), "{text}");
    let line = text
        .lines()
        .find(|line| line.trim_start().starts_with("alice"))
        .unwrap();
    assert!(line.contains("push"), "{text}");
    drop(stream);
}

/// `instances.last_seen_at` as the stock shell would read it.
fn last_seen_at(broker: &TestBroker, name: &str) -> String {
    broker
        .sql()
        .query_row(
            "SELECT last_seen_at FROM instances WHERE name = ?1",
            [name],
            |row| row.get(0),
        )
        .unwrap()
}

/// STORAGE.md: `last_seen_at` moves in 60-second steps, not on every request.
#[test]
fn last_seen_at_moves_in_sixty_second_steps() {
    let broker = TestBroker::start();
    let alice = broker.register("alice");
    let mut client = broker.client();
    let registered = last_seen_at(&broker, "alice");

    broker.clock.advance(chrono::Duration::seconds(59));
    client.list(&alice).unwrap();
    assert_eq!(
        last_seen_at(&broker, "alice"),
        registered,
        "a request 59 s later leaves it"
    );

    broker.clock.advance(chrono::Duration::seconds(2));
    client.list(&alice).unwrap();
    let moved = last_seen_at(&broker, "alice");
    assert!(
        moved > registered,
        "a request 61 s after the stored time moves it: {registered} -> {moved}"
    );
}
