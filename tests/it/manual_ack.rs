//! At-least-once delivery: a `check` with `"ack": "manual"` leases mail, `ack` settles it, and
//! a lease that runs out hands the mail out again with its `delivery_count` raised.

use crate::common;

use std::time::Duration;

use claude_ipc::client::CheckOptions;
use common::{contents, legacy, legacy_check, legacy_send, TestBroker};
use serde_json::{json, Value};

fn manual_check(addr: &str, token: &str) -> Value {
    legacy(
        addr,
        &json!({"action": "check", "session_token": token, "ack": "manual"}),
    )
}

fn ack(addr: &str, token: &str, ids: &[i64]) -> Value {
    legacy(
        addr,
        &json!({"action": "ack", "session_token": token, "ids": ids}),
    )
}

fn ids(check_reply: &Value) -> Vec<i64> {
    check_reply["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect()
}

#[test]
fn a_manual_check_leases_instead_of_delivering() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    legacy_send(&addr, &bob, "alice", "one");
    legacy_send(&addr, &bob, "alice", "two");

    let first = manual_check(&addr, &alice);
    assert_eq!(contents(&first), ["one", "two"]);
    assert_eq!(first["ack"], "manual");
    assert_eq!(first["lease_until"], "2026-01-01T12:00:30.000Z");
    assert_eq!(first["messages"][0]["delivery_count"], 1);

    // Held by the lease: neither kind of check sees it, and nothing is delivered yet.
    assert_eq!(contents(&manual_check(&addr, &alice)), Vec::<String>::new());
    assert_eq!(contents(&legacy_check(&addr, &alice)), Vec::<String>::new());
    assert_eq!(
        broker.count("SELECT count(*) FROM messages WHERE delivered_at IS NULL"),
        2
    );
    assert_eq!(broker.count("SELECT count(*) FROM leased_mail"), 2);
}

#[test]
fn an_ack_settles_the_mail_for_good() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    legacy_send(&addr, &bob, "alice", "settle me");
    let checked = manual_check(&addr, &alice);

    let acked = ack(&addr, &alice, &ids(&checked));
    assert_eq!(acked["status"], "ok", "{acked}");
    assert_eq!(acked["acked"], 1);
    assert_eq!(acked["refused"], json!([]));

    broker.clock.advance(chrono::Duration::hours(1));
    assert_eq!(contents(&manual_check(&addr, &alice)), Vec::<String>::new());
    assert_eq!(
        broker.count("SELECT count(*) FROM messages WHERE delivered_at IS NOT NULL"),
        1
    );
    let again = ack(&addr, &alice, &ids(&checked));
    assert_eq!(again["acked"], 0, "a second ack settles nothing new");
    assert_eq!(again["already_acked"], json!(ids(&checked)));
}

#[test]
fn unacknowledged_mail_comes_back_after_the_lease_with_a_higher_count() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    legacy_send(&addr, &bob, "alice", "did you get this?");
    let first = legacy(
        &addr,
        &json!({"action": "check", "session_token": alice, "ack": "manual", "lease_ms": 5000}),
    );
    assert_eq!(first["lease_until"], "2026-01-01T12:00:05.000Z");

    broker.clock.advance(chrono::Duration::milliseconds(4999));
    assert_eq!(contents(&manual_check(&addr, &alice)), Vec::<String>::new());
    broker.clock.advance(chrono::Duration::milliseconds(1));
    let second = manual_check(&addr, &alice);
    assert_eq!(contents(&second), ["did you get this?"]);
    assert_eq!(second["messages"][0]["id"], first["messages"][0]["id"]);
    assert_eq!(second["messages"][0]["delivery_count"], 2);
    assert_eq!(
        broker.count("SELECT delivery_count FROM messages WHERE recipient = 'alice'"),
        2
    );
}

#[test]
fn a_late_ack_still_settles_mail_whose_lease_ran_out() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    legacy_send(&addr, &bob, "alice", "slow reader");
    let checked = manual_check(&addr, &alice);
    broker.clock.advance(chrono::Duration::seconds(60));
    assert_eq!(ack(&addr, &alice, &ids(&checked))["acked"], 1);
    assert_eq!(contents(&manual_check(&addr, &alice)), Vec::<String>::new());
}

#[test]
fn acks_for_unknown_or_foreign_ids_are_refused_one_by_one() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let (alice, bob, carol) = (
        broker.register("alice"),
        broker.register("bob"),
        broker.register("carol"),
    );
    legacy_send(&addr, &bob, "alice", "for alice");
    legacy_send(&addr, &alice, "carol", "for carol");
    let alices = ids(&manual_check(&addr, &alice));
    let carols = ids(&manual_check(&addr, &carol));

    let reply = ack(&addr, &alice, &[carols[0], 999_999, alices[0]]);
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(reply["acked"], 1);
    let refused: Vec<(i64, String)> = reply["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_i64().unwrap(),
                r["code"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        refused,
        [
            (carols[0], "unknown_message".to_owned()),
            (999_999, "unknown_message".to_owned())
        ]
    );
    assert!(reply["refused"][0]["message"]
        .as_str()
        .unwrap()
        .contains("ack only ids your check returned"));
    // Carol's message is untouched by alice's attempt.
    assert_eq!(
        broker.count(
            "SELECT count(*) FROM messages WHERE recipient = 'carol' AND delivered_at IS NULL"
        ),
        1
    );
}

#[test]
fn the_legacy_check_still_delivers_on_read() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    legacy_send(&addr, &bob, "alice", "legacy");
    let reply = legacy_check(&addr, &alice);
    assert_eq!(contents(&reply), ["legacy"]);
    assert!(reply.get("ack").is_none() && reply.get("lease_until").is_none());
    common::wait_until("the legacy read is marked delivered", || {
        broker.count("SELECT count(*) FROM messages WHERE delivered_at IS NOT NULL") == 1
    });
    broker.clock.advance(chrono::Duration::hours(1));
    assert_eq!(contents(&manual_check(&addr, &alice)), Vec::<String>::new());
}

#[test]
fn the_typed_client_leases_and_acks() {
    let broker = TestBroker::start();
    let (alice, bob) = (broker.register("alice"), broker.register("bob"));
    let mut client = broker.client();
    client.send(&bob, "alice", "typed", None, None).unwrap();
    let options = CheckOptions {
        manual_ack: Some(Duration::from_secs(10)),
        ..CheckOptions::default()
    };
    let checked = client.check_with(&alice, options).unwrap();
    assert_eq!(checked.messages.len(), 1);
    assert_eq!(checked.messages[0].delivery_count, 1);
    assert_eq!(
        checked.lease_until.as_deref(),
        Some("2026-01-01T12:00:10.000Z")
    );
    let acked = client.ack(&alice, &checked.ids()).unwrap();
    assert_eq!((acked.acked, acked.refused.len()), (1, 0));
}

#[test]
fn bad_ack_and_check_options_say_what_to_send() {
    let broker = TestBroker::start();
    let (addr, alice) = (broker.addr(), broker.register("alice"));
    let cases = [
        (
            json!({"action": "check", "session_token": alice, "ack": "sometimes"}),
            "`ack` must be \"manual\" or \"auto\"",
        ),
        (
            json!({"action": "check", "session_token": alice, "ack": "manual", "lease_ms": 0}),
            "field `lease_ms` must be a whole number of milliseconds from 1 to 3600000",
        ),
        (
            json!({"action": "check", "session_token": alice, "lease_ms": 1000}),
            "`lease_ms` only applies with \"ack\": \"manual\"",
        ),
        (
            json!({"action": "check", "session_token": alice, "wait_ms": 300001}),
            "field `wait_ms` must be a whole number of milliseconds from 0 to 300000",
        ),
        (
            json!({"action": "ack", "session_token": alice}),
            "missing field `ids`",
        ),
        (
            json!({"action": "ack", "session_token": alice, "ids": []}),
            "`ids` has 0 entries",
        ),
        (
            json!({"action": "ack", "session_token": alice, "ids": [1, "2"]}),
            "field `ids[]` must be a message id",
        ),
        (
            json!({"action": "ack", "session_token": "not-a-session", "ids": [1]}),
            "Invalid or missing session token",
        ),
    ];
    for (request, expected) in cases {
        let reply = legacy(&addr, &request);
        assert_eq!(reply["status"], "error", "{request} -> {reply}");
        let message = reply["message"].as_str().unwrap();
        assert!(
            message.contains(expected),
            "{request}: `{message}` lacks `{expected}`"
        );
    }
}

#[test]
fn a_restart_hands_leased_mail_out_again_at_once() {
    // A lease may be committed without its reply reaching the reader (the broker died in
    // between), so leases do not outlive the broker that granted them.
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    legacy_send(&addr, &bob, "alice", "leased when the broker stopped");
    let leased = manual_check(&addr, &alice);
    assert_eq!(contents(&manual_check(&addr, &alice)), Vec::<String>::new());

    let broker = broker.restart();
    let again = manual_check(&broker.addr(), &alice);
    assert_eq!(contents(&again), ["leased when the broker stopped"]);
    assert_eq!(again["messages"][0]["id"], leased["messages"][0]["id"]);
    assert_eq!(again["messages"][0]["delivery_count"], 2);
    assert_eq!(ack(&broker.addr(), &alice, &ids(&leased))["acked"], 1);
}
