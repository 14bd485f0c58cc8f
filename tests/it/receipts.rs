//! Receipts for the sender (`sent`): every state a message goes through (waiting, read,
//! delivered, expired) with the time of each change, over the wire against a real broker on
//! the harness's manual clock; receipts follow a rename; ids of others' mail are refused like
//! unknown ones; the reply stays within its budget; the CLI and the MCP tool show them.

use crate::common;

use std::time::Duration;

use chrono::Duration as Span;
use claude_ipc::client::{CheckOptions, Client, WatchOptions};
use claude_ipc::protocol::schema::{Receipt, ReceiptState, SentReply};
use claude_ipc::protocol::REPLY_BUDGET;
use common::{legacy, legacy_check, legacy_raw, wait_until, McpProcess, TestBroker};
use serde_json::{json, Value};

/// The harness clock's start, as the broker writes times.
const START: &str = "2026-01-01T12:00:00.000Z";

fn sent(client: &mut Client, token: &str) -> SentReply {
    client.sent(token, None, None).expect("sent")
}

fn only(reply: &SentReply) -> &Receipt {
    assert_eq!(reply.messages.len(), 1, "{reply:?}");
    &reply.messages[0]
}

fn receipt_of(client: &mut Client, token: &str, id: i64) -> Receipt {
    let reply = client.sent(token, None, Some(&[id])).expect("sent ids");
    only(&reply).clone()
}

fn send(client: &mut Client, token: &str, to: &str, content: &str) -> i64 {
    client
        .send(token, to, content, None, None)
        .expect("send")
        .message_id
        .0
}

#[test]
fn a_message_is_waiting_then_read_then_delivered_each_with_its_time() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let id = send(&mut client, &alice, "bob", "the API changed");

    let waiting = only(&sent(&mut client, &alice)).clone();
    assert_eq!(waiting.id.0, id);
    assert_eq!(waiting.state, ReceiptState::Waiting);
    assert_eq!(
        (waiting.to.as_str(), waiting.addressed_to.as_str()),
        ("bob", "bob")
    );
    assert_eq!(waiting.kind.as_str(), "direct");
    assert_eq!(waiting.sent_at, START);
    assert_eq!(waiting.delivery_count, 0);
    assert_eq!(
        (&waiting.read_at, &waiting.delivered_at, &waiting.expired_at),
        (&None, &None, &None)
    );

    broker.clock.advance(Span::seconds(60));
    let checked = client
        .check_with(
            &bob,
            CheckOptions {
                manual_ack: Some(Duration::from_secs(300)),
                ..CheckOptions::default()
            },
        )
        .expect("manual check");
    assert_eq!(checked.ids(), [id]);
    let read = receipt_of(&mut client, &alice, id);
    assert_eq!(read.state, ReceiptState::Read);
    assert_eq!(read.read_at.as_deref(), Some("2026-01-01T12:01:00.000Z"));
    assert_eq!(read.delivered_at, None);
    assert_eq!(read.delivery_count, 1);

    broker.clock.advance(Span::seconds(60));
    assert_eq!(client.ack(&bob, &[id]).expect("ack").acked, 1);
    let delivered = receipt_of(&mut client, &alice, id);
    assert_eq!(delivered.state, ReceiptState::Delivered);
    assert_eq!(
        delivered.read_at.as_deref(),
        Some("2026-01-01T12:01:00.000Z")
    );
    assert_eq!(
        delivered.delivered_at.as_deref(),
        Some("2026-01-01T12:02:00.000Z")
    );
    assert_eq!(delivered.sent_at, START);
}

#[test]
fn a_legacy_check_delivers_and_a_lapsed_lease_is_waiting_again() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let legacy_read = send(&mut client, &alice, "bob", "for the legacy check");
    broker.clock.advance(Span::seconds(5));
    let messages = legacy_check(&addr, &bob);
    assert_eq!(messages["messages"][0]["id"], legacy_read);
    wait_until("the legacy reply is settled", || {
        receipt_of(&mut client, &alice, legacy_read).state == ReceiptState::Delivered
    });
    let delivered = receipt_of(&mut client, &alice, legacy_read);
    assert_eq!(
        delivered.read_at.as_deref(),
        Some("2026-01-01T12:00:05.000Z")
    );
    assert_eq!(
        delivered.delivered_at.as_deref(),
        Some("2026-01-01T12:00:05.000Z")
    );
    assert_eq!(delivered.delivery_count, 1);

    // A manual reader that never acknowledges: once its lease runs out the mail waits again,
    // and the receipt still says when it was first handed out, and how often.
    let lapsed = send(&mut client, &alice, "bob", "leased and forgotten");
    let lease = CheckOptions {
        manual_ack: Some(Duration::from_secs(1)),
        ..CheckOptions::default()
    };
    assert_eq!(client.check_with(&bob, lease).unwrap().ids(), [lapsed]);
    assert_eq!(
        receipt_of(&mut client, &alice, lapsed).state,
        ReceiptState::Read
    );
    broker.clock.advance(Span::seconds(2));
    let again = receipt_of(&mut client, &alice, lapsed);
    assert_eq!(again.state, ReceiptState::Waiting);
    assert_eq!(again.read_at.as_deref(), Some("2026-01-01T12:00:05.000Z"));
    assert_eq!(again.delivery_count, 1);

    // Newest first.
    let all: Vec<i64> = sent(&mut client, &alice)
        .messages
        .iter()
        .map(|r| r.id.0)
        .collect();
    assert_eq!(all, [lapsed, legacy_read]);
}

#[test]
fn mail_nobody_registered_for_expires_and_is_reported_until_purged() {
    // Alice's session must outlive the five weeks this test spans.
    let broker = TestBroker::start_with(|config| {
        config.limits.session_idle_expiry = Duration::from_secs(60 * 86_400)
    });
    let alice = broker.register("alice");
    let mut client = broker.client();
    let id = send(&mut client, &alice, "carol", "for later");
    assert_eq!(
        receipt_of(&mut client, &alice, id).state,
        ReceiptState::Waiting
    );

    broker.clock.advance(Span::days(7) + Span::minutes(1));
    assert_eq!(broker.sweep().future_mail, 1);
    assert_eq!(broker.count("SELECT count(*) FROM messages"), 0);
    let expired = receipt_of(&mut client, &alice, id);
    assert_eq!(expired.state, ReceiptState::Expired);
    assert_eq!(
        expired.expired_at.as_deref(),
        Some("2026-01-08T12:01:00.000Z")
    );
    assert_eq!(expired.sent_at, START);
    assert_eq!((expired.to.as_str(), expired.delivered_at), ("carol", None));
    assert_eq!(only(&sent(&mut client, &alice)).id.0, id);

    // Kept as long as delivered mail (the 30-day history retention), then swept like it.
    broker.clock.advance(Span::days(29));
    assert_eq!(broker.sweep().expired_receipts, 0);
    broker.clock.advance(Span::days(1) + Span::minutes(1));
    assert_eq!(broker.sweep().expired_receipts, 1);
    let gone = client.sent(&alice, None, Some(&[id])).unwrap();
    assert!(gone.messages.is_empty());
    assert_eq!(gone.refused_count, 1);
    assert!(sent(&mut client, &alice).messages.is_empty());
}

#[test]
fn receipts_follow_a_rename_and_recipients_still_see_the_old_name() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let id = send(&mut client, &alice, "bob", "sent as alice");
    client.rename(&alice, "alicia").expect("rename");

    assert_eq!(only(&sent(&mut client, &alice)).id.0, id, "still alicia's");
    let mail = client.check(&bob).unwrap().messages;
    assert_eq!(mail[0].from, "alice", "what bob sees is unchanged");

    // Whoever registers `alice` next is not shown alicia's mail.
    broker.clock.advance(Span::hours(3));
    let new_alice = broker.register("alice");
    assert!(sent(&mut client, &new_alice).messages.is_empty());
    assert_eq!(
        client
            .sent(&new_alice, None, Some(&[id]))
            .unwrap()
            .refused_count,
        1
    );
}

#[test]
fn each_broadcast_copy_is_reported_and_others_mail_is_refused_like_unknown_mail() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let _carol = broker.register("carol");
    let mut client = broker.client();
    client.broadcast(&alice, "all hands").expect("broadcast");
    let copies = sent(&mut client, &alice).messages;
    let to: Vec<(&str, &str)> = copies
        .iter()
        .map(|r| (r.to.as_str(), r.kind.as_str()))
        .collect();
    assert_eq!(to, [("carol", "broadcast"), ("bob", "broadcast")]);

    let bobs = send(&mut client, &bob, "carol", "bob's own");
    let mine = copies[1].id.0;
    let reply = client
        .sent(&alice, None, Some(&[bobs, 999, mine, mine]))
        .unwrap();
    let reported: Vec<i64> = reply.messages.iter().map(|r| r.id.0).collect();
    assert_eq!(
        reported,
        [mine],
        "repeats once, others' and unknown ids refused"
    );
    assert_eq!(reply.refused_count, 2);
    let refusal = |i: usize| {
        let refused = &reply.refused[i];
        (
            refused.code.clone(),
            refused.message.replace(&refused.id.to_string(), "N"),
        )
    };
    assert_eq!(
        refusal(0),
        refusal(1),
        "someone else's id reads exactly like one that does not exist"
    );
    assert_eq!(reply.refused[0].code, "unknown_message");
}

#[test]
fn the_newest_are_reported_up_to_the_limit_and_within_the_reply_budget() {
    let broker = TestBroker::start_with(|config| config.limits.queue_cap = 0);
    let (addr, alice, _bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let ids: Vec<i64> = (0..300)
        .map(|i| send(&mut client, &alice, "bob", &format!("note {i}")))
        .collect();

    let default = sent(&mut client, &alice);
    assert_eq!(default.messages.len(), 20, "20 without a limit");
    assert!(default.more);
    assert_eq!(default.messages[0].id.0, ids[299]);

    let three = client.sent(&alice, Some(3), None).unwrap();
    let newest: Vec<i64> = three.messages.iter().map(|r| r.id.0).collect();
    assert_eq!(newest, [ids[299], ids[298], ids[297]]);
    assert!(three.more);

    let line = legacy_raw(
        &addr,
        json!({"action": "sent", "session_token": alice, "limit": 500})
            .to_string()
            .as_bytes(),
    );
    assert!(line.len() < REPLY_BUDGET, "{} bytes", line.len());
    let most: Value = serde_json::from_slice(&line).unwrap();
    let shown = most["messages"].as_array().unwrap().len();
    assert!((50..300).contains(&shown), "{shown} receipts fit");
    assert_eq!(most["more"], true);

    // Asking by id keeps the same budget, in the order asked.
    let by_id = client.sent(&alice, None, Some(&ids)).unwrap();
    assert!(by_id.more);
    assert!((50..300).contains(&by_id.messages.len()));
    assert_eq!(by_id.messages[0].id.0, ids[0]);
}

#[test]
fn bad_limits_and_ids_are_refused_with_what_to_send_instead() {
    let broker = TestBroker::start();
    let (addr, alice, _bob) = broker.alice_and_bob();
    let refusal = |extra: Value| {
        let mut request = json!({"action": "sent", "session_token": alice});
        request
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let reply = legacy(&addr, &request);
        assert_eq!(reply["status"], "error", "{request}: {reply}");
        (
            reply["code"].as_str().unwrap().to_owned(),
            reply["message"].as_str().unwrap().to_owned(),
        )
    };
    for limit in [json!(0), json!(501), json!(-1), json!(2.5), json!("10")] {
        let (code, message) = refusal(json!({ "limit": limit }));
        assert_eq!(code, "invalid_field");
        assert!(message.contains("from 1 to 500"), "{message}");
    }
    let (code, message) = refusal(json!({"ids": []}));
    assert_eq!(code, "invalid_field");
    assert!(message.contains("1 to 1000"), "{message}");
    let too_many: Vec<i64> = (1..=1001).collect();
    assert_eq!(refusal(json!({ "ids": too_many })).0, "invalid_field");
    assert_eq!(refusal(json!({"ids": ["7"]})).0, "invalid_field");
    assert_eq!(refusal(json!({"ids": 7})).0, "invalid_field");
    let (code, message) = refusal(json!({"ids": [1], "limit": 5}));
    assert_eq!(code, "invalid_field");
    assert!(message.contains("not both"), "{message}");

    // The texts PROTOCOL.md shows.
    assert_eq!(
        refusal(json!({"limit": 501})).1,
        "field `limit` must be a whole number from 1 to 500, not the number 501"
    );
    assert_eq!(
        refusal(json!({"ids": []})).1,
        "`ids` has 0 entries; send an array of 1 to 1000 message ids you sent"
    );

    let stranger = legacy(&addr, &json!({"action": "sent", "session_token": "nope"}));
    assert_eq!(stranger["code"], "invalid_session");
    assert_eq!(stranger["message"], "Invalid or missing session token");
    // The broker is still serving.
    let fine = legacy(&addr, &json!({"action": "sent", "session_token": alice}));
    assert_eq!(fine["status"], "ok", "{fine}");
    assert_eq!(fine["messages"], json!([]));
}

#[test]
fn the_cli_and_the_mcp_tool_say_what_became_of_each_message() {
    let broker = TestBroker::start_on_wall_clock();
    let bob = broker.register("bob");
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("alice.session");
    let run = |args: &[&str]| {
        let output = common::cli(&broker.addr(), &session, args);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    run(&["register", "alice"]);
    run(&["send", "bob", "first"]);
    run(&["send", "bob", "second"]);
    let mut client = broker.client();
    let checked = client.check(&bob).unwrap();
    client.ping().expect("delivery confirmed");
    let first = checked.ids()[0];

    let text = run(&["sent"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[1].starts_with(&format!("#{first} to bob: delivered ")),
        "{text}"
    );
    assert!(lines[0].contains(": delivered "), "{text}");

    run(&["send", "carol", "third"]);
    let text = run(&["sent", "--limit", "1"]);
    assert!(text.contains("to carol: waiting, sent just now"), "{text}");
    assert!(text.contains("More of your mail is kept"), "{text}");

    let json: Value = serde_json::from_str(&run(&["sent", &first.to_string(), "--json"])).unwrap();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["messages"][0]["id"], first);
    assert_eq!(json["messages"][0]["state"], "delivered");

    let mut mcp = McpProcess::start(&broker.addr(), &broker.data_dir(), &[], &[]);
    mcp.ok("register", json!({"instance_id": "dave"}));
    mcp.ok("send", json!({"to_id": "bob", "content": "from the tool"}));
    let said = mcp.ok("sent", json!({}));
    assert!(said.contains("to bob: waiting, sent just now"), "{said}");
    let refused = mcp.ok("sent", json!({"ids": [first]}));
    assert!(
        refused.contains(&format!("#{first}: not found")),
        "{refused}"
    );
}

#[test]
fn a_removed_instance_takes_its_receipts_along() {
    let broker = TestBroker::start();
    let (_, alice, _bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let id = send(&mut client, &alice, "bob", "before alice went away");
    // Unused past the instance retention (and its session past the idle expiry), alice is
    // removed by the sweeper; bob, with mail waiting, is kept.
    broker.clock.advance(Span::days(8));
    assert_eq!(broker.sweep().instances, 1);
    let next_alice = broker.register("alice");
    assert!(sent(&mut client, &next_alice).messages.is_empty());
    let asked = client.sent(&next_alice, None, Some(&[id])).unwrap();
    assert_eq!(
        asked.refused_count, 1,
        "not shown the earlier holder's mail"
    );
}

#[test]
fn a_push_by_a_channel_watcher_shows_as_pushed_and_is_not_delivery() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let id = send(&mut client, &alice, "bob", "pushed, not yet read");
    broker.clock.advance(Span::seconds(10));
    let hook = WatchOptions {
        watcher: "claude-session-1".into(),
        wait: None,
        limit: None,
        push: false,
    };
    assert_eq!(client.watch(&bob, &hook).unwrap().ids(), [id]);
    let told = receipt_of(&mut client, &alice, id);
    assert_eq!(told.pushed_at, None, "announcing without a push is no push");

    broker.clock.advance(Span::seconds(10));
    let channel = WatchOptions {
        watcher: "mcp-7f3a9c".into(),
        push: true,
        ..hook
    };
    assert_eq!(client.watch(&bob, &channel).unwrap().ids(), [id]);
    let pushed = receipt_of(&mut client, &alice, id);
    assert_eq!(
        pushed.pushed_at.as_deref(),
        Some("2026-01-01T12:00:20.000Z")
    );
    assert_eq!(
        pushed.state,
        ReceiptState::Waiting,
        "a push is not delivery"
    );
    assert_eq!((pushed.delivery_count, &pushed.read_at), (0, &None));

    broker.clock.advance(Span::seconds(10));
    let checked = client.check(&bob).unwrap();
    assert_eq!(checked.ids(), [id]);
    wait_until("the check is settled", || {
        receipt_of(&mut client, &alice, id).state == ReceiptState::Delivered
    });
    let delivered = receipt_of(&mut client, &alice, id);
    assert_eq!(
        delivered.pushed_at.as_deref(),
        Some("2026-01-01T12:00:20.000Z")
    );
    assert_eq!(
        delivered.delivered_at.as_deref(),
        Some("2026-01-01T12:00:30.000Z")
    );
}
