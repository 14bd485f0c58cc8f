//! Privacy between three parties, across every action that reads past mail: `thread`,
//! `history`, `search` and `check`'s `reply_to`. Alice and bob talk; alice broadcasts to bob
//! and carol, who both answer; carol talks to dave. No action shows anyone a message they
//! neither sent nor received, and no refusal tells an outsider whether someone else's message
//! or thread exists. Against a real broker over the wire, with raw requests as any client
//! would write them.

use crate::common;

use common::{legacy, TestBroker};
use serde_json::{json, Value};

/// Everyone's session, and the ids of everything said.
struct Conversations {
    broker: TestBroker,
    alice: String,
    bob: String,
    carol: String,
    dave: String,
    /// alice → bob, "alpha", and bob's answer.
    plan: i64,
    plan_answer: i64,
    /// alice's broadcast copies to bob and carol, and each one's answer to alice.
    bobs_copy: i64,
    carols_copy: i64,
    bobs_answer: i64,
    carols_answer: i64,
    /// carol → dave.
    gamma: i64,
}

fn call(broker: &TestBroker, request: Value) -> Value {
    legacy(&broker.addr(), &request)
}

fn ok(broker: &TestBroker, request: Value) -> Value {
    let reply = call(broker, request.clone());
    assert_eq!(reply["status"], "ok", "{request} → {reply}");
    reply
}

fn send(broker: &TestBroker, token: &str, to: &str, content: &str, extra: Value) -> i64 {
    let mut request = json!({"action": "send", "session_token": token, "to_id": to,
                             "message": {"content": content}});
    for (key, value) in extra.as_object().unwrap() {
        request[key] = value.clone();
    }
    ok(broker, request)["message_id"].as_i64().unwrap()
}

fn converse() -> Conversations {
    let broker = TestBroker::start_on_wall_clock();
    let (_, alice, bob) = broker.alice_and_bob();
    let carol = broker.register("carol");
    let dave = broker.register("dave");
    let plan = send(
        &broker,
        &alice,
        "bob",
        "alpha launch codes for bob",
        json!({"subject": "plan ab"}),
    );
    let plan_answer = send(
        &broker,
        &bob,
        "alice",
        "alpha acknowledged",
        json!({"reply_to": plan}),
    );
    let broadcast = ok(
        &broker,
        json!({"action": "broadcast", "session_token": alice, "subject": "standup",
               "message": {"content": "standup beta in five"}}),
    );
    let (first, last) = (
        broadcast["first_id"].as_i64().unwrap(),
        broadcast["last_id"].as_i64().unwrap(),
    );
    // Copies go in name order: bob's, then carol's, then dave's.
    assert_eq!(last - first, 2, "{broadcast}");
    let (bobs_copy, carols_copy) = (first, first + 1);
    let bobs_answer = send(
        &broker,
        &bob,
        "alice",
        "beta from bob",
        json!({"reply_to": bobs_copy}),
    );
    let carols_answer = send(
        &broker,
        &carol,
        "alice",
        "beta from carol",
        json!({"reply_to": carols_copy}),
    );
    let gamma = send(&broker, &carol, "dave", "gamma for dave only", json!({}));
    Conversations {
        broker,
        alice,
        bob,
        carol,
        dave,
        plan,
        plan_answer,
        bobs_copy,
        carols_copy,
        bobs_answer,
        carols_answer,
        gamma,
    }
}

/// The ids of the messages in a `thread` or `history` reply.
fn ids(reply: &Value) -> Vec<i64> {
    reply["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages: {reply}"))
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect()
}

/// The ids of the messages in a `search` reply.
fn found(reply: &Value) -> Vec<i64> {
    reply["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {reply}"))
        .iter()
        .map(|r| r["message"]["id"].as_i64().unwrap())
        .collect()
}

fn sorted(mut ids: Vec<i64>) -> Vec<i64> {
    ids.sort_unstable();
    ids
}

fn history(c: &Conversations, token: &str, with: Option<&str>) -> Vec<i64> {
    let mut request = json!({"action": "history", "session_token": token, "limit": 100});
    if let Some(with) = with {
        request["with"] = json!(with);
    }
    sorted(ids(&ok(&c.broker, request)))
}

fn search(c: &Conversations, token: &str, query: &str, extra: Value) -> Vec<i64> {
    let mut request = json!({"action": "search", "session_token": token, "query": query});
    for (key, value) in extra.as_object().unwrap() {
        request[key] = value.clone();
    }
    sorted(found(&ok(&c.broker, request)))
}

#[test]
fn history_shows_each_party_only_its_own_mail() {
    let c = converse();
    assert_eq!(
        history(&c, &c.carol, None),
        vec![c.carols_copy, c.carols_answer, c.gamma]
    );
    assert_eq!(
        history(&c, &c.carol, Some("alice")),
        vec![c.carols_copy, c.carols_answer]
    );
    assert_eq!(history(&c, &c.carol, Some("bob")), Vec::<i64>::new());
    assert_eq!(history(&c, &c.dave, None), vec![c.carols_copy + 1, c.gamma]);
    assert_eq!(
        history(&c, &c.bob, Some("alice")),
        vec![c.plan, c.plan_answer, c.bobs_copy, c.bobs_answer]
    );
    let alices = history(&c, &c.alice, None);
    assert!(!alices.contains(&c.gamma), "{alices:?}");
}

#[test]
fn a_thread_shows_a_participant_only_its_own_part_and_an_outsider_nothing() {
    let c = converse();
    // The broadcast's thread: alice sees every copy and both answers; carol only her copy and
    // her answer, never bob's.
    let thread = |token: &str, id: i64| {
        call(
            &c.broker,
            json!({"action": "thread", "session_token": token, "thread_id": id}),
        )
    };
    let carols = thread(&c.carol, c.bobs_copy);
    assert_eq!(carols["status"], "ok", "{carols}");
    assert_eq!(sorted(ids(&carols)), vec![c.carols_copy, c.carols_answer]);
    let alices = sorted(ids(&thread(&c.alice, c.carols_answer)));
    for id in [c.bobs_copy, c.carols_copy, c.bobs_answer, c.carols_answer] {
        assert!(alices.contains(&id), "{id} missing from {alices:?}");
    }

    // The alice–bob thread is refused to carol exactly as a thread that does not exist.
    let outsider = thread(&c.carol, c.plan);
    let by_answer = thread(&c.carol, c.plan_answer);
    let missing = thread(&c.carol, 987_654);
    for reply in [&outsider, &by_answer, &missing] {
        assert_eq!(reply["status"], "error", "{reply}");
        assert_eq!(reply["code"], "unknown_thread", "{reply}");
    }
    let text = |reply: &Value, id: i64| {
        reply["message"]
            .as_str()
            .unwrap()
            .replace(&id.to_string(), "N")
    };
    assert_eq!(text(&outsider, c.plan), text(&missing, 987_654));
    assert!(!outsider.to_string().contains("alpha"), "{outsider}");
    assert!(!outsider.to_string().contains("plan ab"), "{outsider}");
}

#[test]
fn search_finds_only_mail_the_caller_sent_or_received_whatever_the_filters_say() {
    let c = converse();
    assert_eq!(search(&c, &c.carol, "alpha", json!({})), Vec::<i64>::new());
    assert_eq!(
        search(&c, &c.carol, "alpha", json!({"from": "alice"})),
        Vec::<i64>::new()
    );
    assert_eq!(
        search(&c, &c.carol, "alpha", json!({"to": "bob"})),
        Vec::<i64>::new()
    );
    assert_eq!(
        search(&c, &c.carol, "alpha", json!({"thread_id": c.plan})),
        Vec::<i64>::new()
    );
    assert_eq!(
        search(&c, &c.carol, "beta", json!({})),
        vec![c.carols_copy, c.carols_answer]
    );
    assert_eq!(search(&c, &c.dave, "gamma", json!({})), vec![c.gamma]);
    assert_eq!(search(&c, &c.bob, "gamma", json!({})), Vec::<i64>::new());
    assert_eq!(
        search(&c, &c.bob, "alpha", json!({})),
        vec![c.plan, c.plan_answer]
    );
    // A subject is searched too, and is as private as the content.
    assert_eq!(
        search(&c, &c.carol, "\"plan ab\"", json!({})),
        Vec::<i64>::new()
    );
    assert_eq!(
        search(&c, &c.bob, "\"plan ab\"", json!({})),
        vec![c.plan, c.plan_answer]
    );
}

#[test]
fn nobody_can_reply_into_or_wait_on_someone_elses_message() {
    let c = converse();
    let reply = call(
        &c.broker,
        json!({"action": "send", "session_token": c.carol, "to_id": "alice",
               "message": {"content": "let me in"}, "reply_to": c.plan}),
    );
    assert_eq!(reply["code"], "unknown_reply_to", "{reply}");
    let wait = call(
        &c.broker,
        json!({"action": "check", "session_token": c.carol, "reply_to": c.plan, "wait_ms": 0}),
    );
    // Either refused, or an empty answer: never alice's or bob's mail.
    if wait["status"] == "ok" {
        assert_eq!(wait["messages"], json!([]), "{wait}");
    } else {
        assert_eq!(wait["code"], "unknown_reply_to", "{wait}");
    }
}

#[test]
fn a_rename_keeps_each_side_its_own_mail_and_nobody_elses() {
    let c = converse();
    ok(
        &c.broker,
        json!({"action": "rename", "session_token": c.bob, "new_id": "robert"}),
    );
    assert_eq!(
        history(&c, &c.bob, Some("alice")),
        vec![c.plan, c.plan_answer, c.bobs_copy, c.bobs_answer],
        "robert keeps what bob said and heard"
    );
    // A newcomer who takes the freed name `bob` sees none of it.
    let newcomer = c.broker.register("bob");
    assert_eq!(history(&c, &newcomer, None), Vec::<i64>::new());
    assert_eq!(search(&c, &newcomer, "alpha", json!({})), Vec::<i64>::new());
    let thread = call(
        &c.broker,
        json!({"action": "thread", "session_token": newcomer, "thread_id": c.plan}),
    );
    assert_eq!(thread["code"], "unknown_thread", "{thread}");
}

#[test]
fn reading_past_mail_never_changes_its_delivery() {
    let c = converse();
    // Nobody has checked yet: everything is waiting. Read it every way, as every party.
    for token in [&c.alice, &c.bob, &c.carol, &c.dave] {
        history(&c, token, None);
        search(&c, token, "beta OR alpha OR gamma", json!({}));
        call(
            &c.broker,
            json!({"action": "thread", "session_token": token, "thread_id": c.bobs_copy}),
        );
    }
    let checked = ok(
        &c.broker,
        json!({"action": "check", "session_token": c.carol}),
    );
    let first: Vec<(i64, i64)> = checked["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_i64().unwrap(),
                m["delivery_count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(first, vec![(c.carols_copy, 1)], "{checked}");
}

#[test]
fn a_reply_follows_a_rename_long_after_its_forward_expired_and_never_reaches_the_old_name() {
    use chrono::Duration as Span;
    use claude_ipc::client::Stamp;

    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let question = client
        .send(&bob, "alice", "which port?", None, None)
        .expect("send")
        .message_id
        .0;
    ok(
        &broker,
        json!({"action": "rename", "session_token": bob, "new_id": "robert"}),
    );
    // Long after the rename's forward from `bob` ran out, a newcomer takes the name.
    broker.clock.advance(Span::hours(3));
    let newcomer = broker.register("bob");

    let stamp = Stamp {
        nonce: "reply-after-rename".into(),
        timestamp: broker.clock.now(),
    };
    let replied = client
        .reply(&alice, question, "9876", None, &stamp)
        .expect("reply");
    assert_eq!(
        replied.to, "robert",
        "the sender's current name, not the one it wrote under"
    );
    let to_newcomer = ok(
        &broker,
        json!({"action": "check", "session_token": newcomer}),
    );
    assert_eq!(to_newcomer["messages"], json!([]), "{to_newcomer}");
    let to_robert = ok(&broker, json!({"action": "check", "session_token": bob}));
    assert_eq!(
        to_robert["messages"][0]["message"]["content"], "9876",
        "{to_robert}"
    );
    assert_eq!(to_robert["messages"][0]["reply_to"], question);
}
