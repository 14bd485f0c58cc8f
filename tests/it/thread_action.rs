//! The `thread` action over the wire: a reply joins the thread of the message it answers; a
//! thread reads back oldest first to its participants, named by any of its messages; it
//! survives renames of either party, a clean restart and kill -9; its pages follow each other
//! without duplicates or gaps while new messages arrive; within a thread each participant sees
//! only what it sent or received; anyone else is refused exactly as for a thread that does
//! not exist; reading changes no delivery state; bad input gets clear errors.

use crate::common;

use claude_ipc::client::Client;
use claude_ipc::protocol::REPLY_BUDGET;
use common::{legacy_raw, BrokerProcess, McpProcess, TestBroker};
use serde_json::{json, Value};

/// A send over the wire, optionally answering `reply_to`, optionally with a subject; returns
/// the reply.
fn send(
    client: &mut Client,
    token: &str,
    to: &str,
    content: &str,
    reply_to: Option<i64>,
    subject: Option<&str>,
) -> Value {
    let mut request = json!({
        "action": "send", "session_token": token, "to_id": to,
        "message": {"content": content},
    });
    if let Some(parent) = reply_to {
        request["reply_to"] = parent.into();
    }
    if let Some(subject) = subject {
        request["subject"] = subject.into();
    }
    client.call(&request).expect("send")
}

fn id_of(reply: &Value) -> i64 {
    reply["message_id"]
        .as_i64()
        .unwrap_or_else(|| panic!("{reply}"))
}

/// One `thread` request's reply, whatever its status.
fn thread(client: &mut Client, token: &str, id: i64, extra: Value) -> Value {
    let mut request = json!({"action": "thread", "session_token": token, "thread_id": id});
    for (key, value) in extra.as_object().unwrap() {
        request[key] = value.clone();
    }
    client.request(&request).expect("thread")
}

fn ids(reply: &Value) -> Vec<i64> {
    reply["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages: {reply}"))
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect()
}

fn contents(reply: &Value) -> Vec<String> {
    reply["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"]["content"].as_str().unwrap().to_owned())
        .collect()
}

/// Every message of the thread `id` names, following the cursors to the end.
fn whole_thread(client: &mut Client, token: &str, id: i64, limit: u32) -> Vec<i64> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let extra = match &cursor {
            Some(cursor) => json!({"limit": limit, "cursor": cursor}),
            None => json!({"limit": limit}),
        };
        let page = thread(client, token, id, extra);
        assert_eq!(page["status"], "ok", "{page}");
        all.extend(ids(&page));
        if page["more"] != true {
            assert!(page.get("next_cursor").is_none(), "{page}");
            return all;
        }
        cursor = Some(page["next_cursor"].as_str().unwrap().to_owned());
    }
}

#[test]
fn a_reply_joins_the_thread_and_the_thread_reads_back_oldest_first_by_any_of_its_ids() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let question = id_of(&send(
        &mut client,
        &alice,
        "bob",
        "is the API frozen?",
        None,
        Some("API freeze"),
    ));
    let answer = send(
        &mut client,
        &bob,
        "alice",
        "yes, since Monday",
        Some(question),
        None,
    );
    assert_eq!(answer["thread_id"], question, "{answer}");
    let answer = id_of(&answer);
    let follow_up = id_of(&send(
        &mut client,
        &alice,
        "bob",
        "thanks",
        Some(answer),
        None,
    ));
    // Unrelated mail between the same pair starts its own thread.
    let other = id_of(&send(&mut client, &alice, "bob", "lunch?", None, None));

    for named_by in [question, answer, follow_up] {
        for token in [&alice, &bob] {
            let reply = thread(&mut client, token, named_by, json!({}));
            assert_eq!(reply["status"], "ok", "{reply}");
            assert_eq!(reply["thread_id"], question);
            assert_eq!(reply["subject"], "API freeze");
            assert_eq!(ids(&reply), [question, answer, follow_up]);
            assert_eq!(
                contents(&reply),
                ["is the API frozen?", "yes, since Monday", "thanks"]
            );
            assert_eq!(reply["more"], false);
        }
    }
    let as_bob = thread(&mut client, &bob, question, json!({}));
    let messages = as_bob["messages"].as_array().unwrap();
    assert_eq!(messages[0]["direction"], "received");
    assert_eq!(messages[1]["direction"], "sent");
    assert_eq!(messages[1]["reply_to"], question);
    assert!(messages[0].get("reply_to").is_none(), "{as_bob}");
    // A reply without a subject carries its thread's.
    assert_eq!(messages[1]["subject"], "API freeze");
    assert_eq!(messages[2]["subject"], "API freeze");
    assert_eq!(
        (messages[1]["from"].as_str(), messages[1]["to"].as_str()),
        (Some("bob"), Some("alice"))
    );
    let alone = thread(&mut client, &alice, other, json!({}));
    assert_eq!(ids(&alone), [other]);
    assert!(alone.get("subject").is_none(), "{alone}");
}

#[test]
fn reading_a_thread_changes_no_delivery_state() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let id = id_of(&send(
        &mut client,
        &alice,
        "bob",
        "still waiting",
        None,
        None,
    ));
    for token in [&alice, &bob, &bob] {
        let reply = thread(&mut client, token, id, json!({}));
        assert_eq!(reply["messages"][0]["state"], "waiting", "{reply}");
    }
    let receipt = client.sent(&alice, None, Some(&[id])).expect("sent");
    assert_eq!(receipt.messages[0].delivery_count, 0);
    assert_eq!(receipt.messages[0].read_at, None);
    let checked = client.check(&bob).expect("check");
    assert_eq!(checked.ids(), [id]);
    assert_eq!(checked.messages[0].delivery_count, 1, "first hand-out");
}

#[test]
fn a_thread_survives_a_rename_of_either_party_and_a_restart() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let root = id_of(&send(
        &mut client,
        &alice,
        "bob",
        "plan?",
        None,
        Some("plan"),
    ));
    client.check(&bob).expect("bob reads");
    client.ping().expect("delivery confirmed");
    client.rename(&bob, "robert").expect("bob renames");
    let answer = id_of(&send(
        &mut client,
        &bob,
        "alice",
        "this plan",
        Some(root),
        None,
    ));
    client.rename(&alice, "alicia").expect("alice renames");
    let last = id_of(&send(
        &mut client,
        &alice,
        "robert",
        "ok",
        Some(answer),
        None,
    ));

    let broker = broker.restart();
    let mut client = broker.client();
    for token in [&alice, &bob] {
        let reply = thread(&mut client, token, last, json!({}));
        assert_eq!(ids(&reply), [root, answer, last], "{reply}");
        assert_eq!(reply["subject"], "plan");
    }
    let reply = thread(&mut client, &bob, root, json!({}));
    let directions: Vec<_> = reply["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["direction"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(directions, ["received", "sent", "received"]);
}

#[test]
fn a_thread_survives_kill_9_of_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = BrokerProcess::spawn(&data, &[]);
    let mut client = first.client();
    let alice = client.register("alice", None).unwrap().session_token;
    let bob = client.register("bob", None).unwrap().session_token;
    let root = id_of(&send(&mut client, &alice, "bob", "q", None, Some("crash")));
    let answer = id_of(&send(&mut client, &bob, "alice", "a", Some(root), None));
    drop(client);
    first.kill_9();

    let second = BrokerProcess::spawn(&data, &[]);
    let mut client = second.client();
    let reply = thread(&mut client, &alice, answer, json!({}));
    assert_eq!(ids(&reply), [root, answer], "{reply}");
    assert_eq!(reply["subject"], "crash");
    let more = id_of(&send(
        &mut client,
        &alice,
        "bob",
        "after",
        Some(answer),
        None,
    ));
    assert_eq!(
        ids(&thread(&mut client, &bob, root, json!({}))),
        [root, answer, more]
    );
}

#[test]
fn pages_follow_each_other_without_duplicates_or_gaps_while_messages_arrive() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let root = id_of(&send(&mut client, &alice, "bob", "m0", None, Some("long")));
    let mut expected = vec![root];
    for i in 1..25 {
        let (from, to) = if i % 2 == 0 {
            (&alice, "bob")
        } else {
            (&bob, "alice")
        };
        let parent = *expected.last().unwrap();
        expected.push(id_of(&send(
            &mut client,
            from,
            to,
            &format!("m{i}"),
            Some(parent),
            None,
        )));
    }

    let first = thread(&mut client, &alice, root, json!({"limit": 10}));
    assert_eq!(ids(&first), expected[..10]);
    assert_eq!(first["more"], true);
    // Mail arriving between pages, in this thread and outside it.
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let late = id_of(&send(&mut client, &bob, "alice", "late", Some(root), None));
    send(&mut client, &bob, "alice", "elsewhere", None, None);
    expected.push(late);
    let second = thread(
        &mut client,
        &alice,
        root,
        json!({"limit": 10, "cursor": cursor}),
    );
    assert_eq!(ids(&second), expected[10..20]);
    let cursor = second["next_cursor"].as_str().unwrap().to_owned();
    let third = thread(
        &mut client,
        &alice,
        root,
        json!({"limit": 10, "cursor": cursor}),
    );
    assert_eq!(ids(&third), expected[20..]);
    assert_eq!(third["more"], false);
    assert!(third.get("next_cursor").is_none(), "{third}");

    // The cursor is the thread's whichever message named it; every page size agrees.
    for limit in [1, 3, 7, 100] {
        assert_eq!(whole_thread(&mut client, &bob, late, limit), expected);
    }
}

#[test]
fn a_page_stays_under_the_reply_budget_and_goes_on_where_it_stopped() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let big = "x".repeat(9_000);
    let root = id_of(&send(&mut client, &alice, "bob", &big, None, None));
    let mut expected = vec![root];
    for _ in 0..11 {
        expected.push(id_of(&send(
            &mut client,
            &bob,
            "alice",
            &big,
            Some(root),
            None,
        )));
    }
    let token = alice.clone();
    let first = legacy_raw(
        &broker.addr(),
        json!({"action": "thread", "session_token": token, "thread_id": root, "limit": 100})
            .to_string()
            .as_bytes(),
    );
    assert!(first.len() <= REPLY_BUDGET, "{} bytes", first.len());
    let first: Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(first["more"], true, "{first}");
    let shown = ids(&first);
    assert!(
        !shown.is_empty() && shown.len() < expected.len(),
        "{shown:?}"
    );
    assert_eq!(whole_thread(&mut client, &alice, root, 100), expected);
}

#[test]
fn in_a_broadcast_thread_each_participant_sees_only_its_own_side() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let carol = broker.register("carol");
    let mut client = broker.client();
    let copies = client
        .call(&json!({"action": "broadcast", "session_token": alice,
                       "message": {"content": "who owns auth?"}, "subject": "auth"}))
        .expect("broadcast");
    let (first, last) = (
        copies["first_id"].as_i64().unwrap(),
        copies["last_id"].as_i64().unwrap(),
    );
    let copy_for = |name: &str, client: &mut Client, token: &str| -> i64 {
        let checked = client.check(token).expect("check");
        client.ping().unwrap();
        let copy = checked
            .messages
            .iter()
            .find(|m| m.to == name)
            .expect("a copy");
        copy.id.0
    };
    // dave registers after the broadcast: he took no part in it.
    let dave = broker.register("dave");
    let bobs_copy = copy_for("bob", &mut client, &bob);
    let carols_copy = copy_for("carol", &mut client, &carol);
    assert!((first..=last).contains(&bobs_copy) && (first..=last).contains(&carols_copy));
    let bobs_reply = id_of(&send(
        &mut client,
        &bob,
        "alice",
        "bob's secret",
        Some(bobs_copy),
        None,
    ));
    let carols_reply = id_of(&send(
        &mut client,
        &carol,
        "alice",
        "me",
        Some(carols_copy),
        None,
    ));
    let to_carol = id_of(&send(
        &mut client,
        &alice,
        "carol",
        "thanks carol",
        Some(carols_reply),
        None,
    ));

    // alice sent every copy and received both replies.
    let as_alice = thread(&mut client, &alice, bobs_reply, json!({}));
    assert_eq!(as_alice["thread_id"], first);
    assert!(ids(&as_alice).contains(&bobs_reply) && ids(&as_alice).contains(&carols_reply));
    // carol: her copy, her reply, alice's answer; never bob's copy or bob's reply.
    for named_by in [first, carols_copy, carols_reply, to_carol] {
        let as_carol = thread(&mut client, &carol, named_by, json!({}));
        assert_eq!(
            ids(&as_carol),
            [carols_copy, carols_reply, to_carol],
            "{as_carol}"
        );
        assert_eq!(as_carol["subject"], "auth");
        assert!(!as_carol.to_string().contains("bob's secret"));
    }
    let as_bob = thread(&mut client, &bob, first, json!({}));
    assert_eq!(ids(&as_bob), [bobs_copy, bobs_reply]);

    // Naming a message of the thread that she cannot see tells carol nothing: bob's reply
    // is refused as a message that never existed, and so is the whole thread to dave.
    let missing = thread(&mut client, &carol, 999_999, json!({}));
    assert_eq!(missing["code"], "unknown_thread", "{missing}");
    for (token, id) in [
        (&carol, bobs_reply),
        (&dave, first),
        (&dave, carols_copy),
        (&dave, bobs_reply),
    ] {
        let refused = thread(&mut client, token, id, json!({}));
        assert_eq!(refused, missing, "{id}");
    }
}

#[test]
fn bad_requests_are_refused_with_what_to_do() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let root = id_of(&send(&mut client, &alice, "bob", "a", None, None));
    let other = id_of(&send(&mut client, &alice, "bob", "b", None, None));
    send(&mut client, &bob, "alice", "c", Some(root), None);
    let page = thread(&mut client, &alice, root, json!({"limit": 1}));
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();

    let code_and_text = |reply: Value| -> (String, String) {
        assert_eq!(reply["status"], "error", "{reply}");
        (
            reply["code"].as_str().unwrap().to_owned(),
            reply["message"].as_str().unwrap().to_owned(),
        )
    };
    for limit in [json!(0), json!(101), json!("5"), json!(-1)] {
        let (code, text) =
            code_and_text(thread(&mut client, &alice, root, json!({"limit": limit})));
        assert_eq!(code, "invalid_field");
        assert!(text.contains("1 to 100"), "{text}");
    }
    for bad in [json!("garbage"), json!(""), json!(7)] {
        let (code, text) = code_and_text(thread(&mut client, &alice, root, json!({"cursor": bad})));
        assert_eq!(code, "invalid_field", "{text}");
        assert!(text.contains("start again without it"), "{text}");
    }
    let (code, text) = code_and_text(thread(
        &mut client,
        &alice,
        other,
        json!({"cursor": cursor}),
    ));
    assert_eq!(code, "invalid_field");
    assert!(text.contains("another thread"), "{text}");

    let no_id = client
        .request(&json!({"action": "thread", "session_token": alice}))
        .unwrap();
    assert_eq!(code_and_text(no_id).0, "missing_field");
    for bad_id in [json!("1"), json!(0), json!(1.5)] {
        let reply = client
            .request(&json!({"action": "thread", "session_token": alice, "thread_id": bad_id}))
            .unwrap();
        assert_eq!(code_and_text(reply).0, "invalid_field");
    }
    let stranger = client
        .request(&json!({"action": "thread", "session_token": "nope", "thread_id": root}))
        .unwrap();
    assert_eq!(
        code_and_text(stranger),
        (
            "invalid_session".into(),
            "Invalid or missing session token".into()
        )
    );
}

#[test]
fn the_mcp_reply_and_thread_tools_answer_in_the_thread_and_read_it_back_compactly() {
    let broker = TestBroker::start_on_wall_clock();
    let bob = broker.register("bob");
    let mut mcp = McpProcess::start(&broker.addr(), &broker.data_dir(), &[], &[]);
    mcp.ok("register", json!({"instance_id": "alice"}));
    let mut client = broker.client();
    let question = id_of(&send(
        &mut client,
        &bob,
        "alice",
        "review #12?",
        None,
        Some("review"),
    ));
    let read = mcp.ok("check", json!({}));
    assert!(
        read.contains(&format!("id {question}, subject \"review\"")),
        "{read}"
    );

    let replied = mcp.ok("reply", json!({"msg_id": question, "content": "on it"}));
    assert!(replied.contains("Replied to bob"), "{replied}");
    let got = client.check(&bob).expect("check");
    client.ping().unwrap();
    let answer = &got.messages[0];
    assert_eq!(answer.reply_to.map(|id| id.0), Some(question));
    assert_eq!(answer.thread_id.map(|id| id.0), Some(question));
    assert_eq!(answer.subject.as_deref(), Some("review"));
    // Following up her own message (its id as a string, as a channel tag gives it) goes to
    // its recipient again.
    let mine = answer.id.0;
    mcp.ok(
        "reply",
        json!({"msg_id": mine.to_string(), "content": "done, see PR"}),
    );
    let got = client.check(&bob).expect("check");
    client.ping().unwrap();
    assert_eq!(got.messages[0].reply_to.map(|id| id.0), Some(mine));
    // send with reply_to and a subject of its own joins the thread too.
    mcp.ok(
        "send",
        json!({"to_id": "bob", "content": "and the docs", "reply_to": question,
               "subject": "review, docs"}),
    );
    let got = client.check(&bob).expect("check");
    client.ping().unwrap();
    assert_eq!(got.messages[0].thread_id.map(|id| id.0), Some(question));
    assert_eq!(got.messages[0].subject.as_deref(), Some("review, docs"));
    let long = format!("{}end", "word ".repeat(100));
    send(
        &mut client,
        &bob,
        "alice",
        &long,
        Some(got.messages[0].id.0),
        None,
    );

    let text = mcp.ok("thread", json!({"msg_id": question}));
    assert!(
        text.starts_with(&format!("Thread {question} \"review\": 5 messages")),
        "{text}"
    );
    assert!(
        text.contains(&format!("#{question} bob→alice [review]")),
        "{text}"
    );
    assert!(
        text.contains(&format!("#{mine} alice→bob [review] ↩#{question}")),
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|line| line.starts_with('#')).count(),
        5,
        "{text}"
    );
    assert!(!text.contains("end\n"), "the long message is cut: {text}");
    assert!(text.contains("full=true"), "{text}");
    let full = mcp.ok("thread", json!({"thread_id": question, "full": true}));
    assert!(full.contains(&format!("│ {long}")), "{full}");

    let unknown = mcp.error("thread", json!({"thread_id": 999_999}));
    assert!(unknown.contains("unknown_thread"), "{unknown}");
    let unknown = mcp.error("reply", json!({"msg_id": 999_999, "content": "x"}));
    assert!(unknown.contains("unknown_thread"), "{unknown}");
    let neither = mcp.error("thread", json!({}));
    assert!(neither.contains("thread_id"), "{neither}");
}

#[test]
fn the_cli_replies_in_the_thread_shows_it_and_check_shows_subjects() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let alice = dir.path().join("alice.session");
    let run = |args: &[&str]| common::cli(&broker.addr(), &alice, args);
    assert!(run(&["register", "alice"]).status.success());
    let bob = broker.register("bob");
    let mut client = broker.client();
    let question = id_of(&send(
        &mut client,
        &bob,
        "alice",
        "which port?",
        None,
        Some("ports"),
    ));

    let checked = run(&["check"]);
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(
        stdout.contains(&format!("[{question}] from bob")),
        "{stdout}"
    );
    assert!(stdout.contains("subject \"ports\""), "{stdout}");

    let question_text = question.to_string();
    let replied = run(&["reply", &question_text, "9876,", "as", "before"]);
    assert!(replied.status.success(), "{replied:?}");
    assert!(String::from_utf8_lossy(&replied.stdout).contains("Message sent"));
    let got = client.check(&bob).expect("check");
    client.ping().unwrap();
    assert_eq!(got.messages[0].message.content, "9876, as before");
    assert_eq!(got.messages[0].reply_to.map(|id| id.0), Some(question));

    let shown = run(&["thread", &question_text]);
    assert!(shown.status.success(), "{shown:?}");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.starts_with(&format!("Thread {question} \"ports\"\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("[{question}] bob → alice at")),
        "{text}"
    );
    assert!(text.contains(&format!("reply to {question}")), "{text}");
    assert!(text.contains("\n  9876, as before\n"), "{text}");

    let json = run(&["thread", &question_text, "--json"]);
    let reply: Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(reply["status"], "ok");
    assert_eq!(reply["thread_id"], question);
    assert_eq!(ids(&reply).len(), 2);

    let missing = run(&["thread", "999999"]);
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("error:"));
}
