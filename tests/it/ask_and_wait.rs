//! Ask and wait for the answer: `check` with `reply_to` hands out only mail answering that
//! message and long-polls for it; other mail arriving meanwhile neither ends the wait nor is
//! leased, and stays waiting for a plain check. Over the wire, through the MCP `send` tool's
//! `wait_for_reply_seconds`, and through `claude-ipc send --wait-reply` with its exit code.

use crate::common;

use std::time::Duration;

use claude_ipc::client::{CheckOptions, Client, Received};
use claude_ipc::protocol::schema::ReceiptState;
use common::{cli, legacy, McpProcess, TestBroker};
use serde_json::{json, Value};

fn send(client: &mut Client, token: &str, to: &str, content: &str, reply_to: Option<i64>) -> i64 {
    let mut request = json!({
        "action": "send", "session_token": token, "to_id": to,
        "message": {"content": content},
    });
    if let Some(parent) = reply_to {
        request["reply_to"] = parent.into();
    }
    let reply = client.call(&request).expect("send");
    reply["message_id"].as_i64().unwrap()
}

/// A manual-ack check for the answers to `question`, waiting up to `wait_ms`.
fn check_replies(client: &mut Client, token: &str, question: i64, wait_ms: u64) -> Value {
    let request = json!({"action": "check", "session_token": token, "reply_to": question,
                         "ack": "manual", "wait_ms": wait_ms});
    client.set_timeout(Duration::from_secs(30)).unwrap();
    client.request(&request).expect("check")
}

fn ids(reply: &Value) -> Vec<i64> {
    reply["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{reply}"))
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect()
}

/// The next message for `token`, waiting for it and settling it.
fn next_message(client: &mut Client, token: &str) -> Received {
    let options = CheckOptions {
        wait: Some(Duration::from_secs(10)),
        limit: Some(1),
        ..CheckOptions::default()
    };
    let checked = client.check_with(token, options).expect("check");
    client.ping().expect("delivery confirmed");
    checked.messages.into_iter().next().expect("a message came")
}

/// What `sent` says of one message its sender sent.
fn state_of(client: &mut Client, sender: &str, id: i64) -> (ReceiptState, u32, bool) {
    let reply = client.sent(sender, None, Some(&[id])).expect("sent");
    let receipt = &reply.messages[0];
    (
        receipt.state,
        receipt.delivery_count,
        receipt.read_at.is_some(),
    )
}

#[test]
fn the_answer_wakes_the_wait_and_other_mail_neither_ends_it_nor_is_leased() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let carol = broker.register("carol");
    let mut client = broker.client();
    let question = send(&mut client, &alice, "bob", "ready to merge?", None);
    let earlier = send(&mut client, &carol, "alice", "already waiting", None);

    let waiter = {
        let addr = broker.addr();
        let alice = alice.clone();
        std::thread::spawn(move || {
            let mut client = Client::connect(&addr, common::TIMEOUT).unwrap();
            check_replies(&mut client, &alice, question, 20_000)
        })
    };
    broker.wait_until_waiting_for_mail("alice");
    // Mail that answers something else rings alice's doorbell: the wait must go on.
    let unrelated = send(&mut client, &carol, "alice", "unrelated", None);
    let other_reply = send(
        &mut client,
        &carol,
        "alice",
        "re: something else",
        Some(earlier),
    );
    std::thread::sleep(Duration::from_millis(300));
    let answer = send(&mut client, &bob, "alice", "yes, merge", Some(question));

    let woken = waiter.join().unwrap();
    assert_eq!(woken["status"], "ok", "{woken}");
    assert_eq!(ids(&woken), [answer]);
    assert_eq!(woken["messages"][0]["reply_to"], question);
    assert_eq!(woken["messages"][0]["thread_id"], question);
    assert_eq!(woken["ack"], "manual");

    for id in [earlier, unrelated, other_reply] {
        assert_eq!(
            state_of(&mut client, &carol, id),
            (ReceiptState::Waiting, 0, false),
            "message {id} was not handed out"
        );
    }
    assert_eq!(state_of(&mut client, &bob, answer).0, ReceiptState::Read);
    let rest = client.check(&alice).expect("plain check");
    assert_eq!(rest.ids(), [earlier, unrelated, other_reply]);
}

#[test]
fn an_answer_already_waiting_is_handed_out_at_once_and_only_it() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let question = send(&mut client, &alice, "bob", "which port?", None);
    let noise = send(&mut client, &bob, "alice", "unrelated first", None);
    let answer = send(&mut client, &bob, "alice", "9876", Some(question));
    let second = send(&mut client, &bob, "alice", "or 9877", Some(question));

    // A legacy-style auto-ack check with the filter, no wait.
    let reply = legacy(
        &addr,
        &json!({"action": "check", "session_token": alice, "reply_to": question}),
    );
    assert_eq!(ids(&reply), [answer, second], "{reply}");
    let nothing = legacy(
        &addr,
        &json!({"action": "check", "session_token": alice, "reply_to": question}),
    );
    assert_eq!(ids(&nothing), Vec::<i64>::new());
    assert_eq!(
        state_of(&mut client, &bob, noise),
        (ReceiptState::Waiting, 0, false)
    );
    assert_eq!(client.check(&alice).unwrap().ids(), [noise]);
}

#[test]
fn no_answer_by_the_deadline_is_an_empty_reply_that_leases_nothing() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let question = send(&mut client, &alice, "bob", "anyone?", None);
    let other = send(&mut client, &bob, "alice", "not an answer", None);
    let reply = check_replies(&mut client, &alice, question, 200);
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(ids(&reply), Vec::<i64>::new());
    assert_eq!(reply["more"], false);
    assert_eq!(
        state_of(&mut client, &bob, other),
        (ReceiptState::Waiting, 0, false)
    );
}

#[test]
fn reply_to_must_name_a_message_the_caller_sent() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    broker.register("carol");
    let mut client = broker.client();
    let bobs = send(&mut client, &bob, "carol", "between bob and carol", None);
    let to_alice = send(&mut client, &bob, "alice", "bob to alice", None);
    let refused = |client: &mut Client, id: Value| {
        client
            .request(&json!({"action": "check", "session_token": alice, "reply_to": id}))
            .unwrap()
    };
    let missing = refused(&mut client, json!(999_999));
    assert_eq!(missing["code"], "unknown_reply_to", "{missing}");
    // Someone else's message, and one alice received, are refused alike.
    for id in [bobs, to_alice] {
        let reply = refused(&mut client, json!(id));
        assert_eq!(reply["code"], "unknown_reply_to");
        assert_eq!(
            reply["message"]
                .as_str()
                .unwrap()
                .replace(&id.to_string(), "N"),
            missing["message"].as_str().unwrap().replace("999999", "N")
        );
    }
    for bad in [json!("7"), json!(0), json!(-3)] {
        assert_eq!(refused(&mut client, bad)["code"], "invalid_field");
    }
    // Nothing of alice's mail was handed out by the refusals.
    assert_eq!(
        state_of(&mut client, &bob, to_alice),
        (ReceiptState::Waiting, 0, false)
    );
}

#[test]
fn the_mcp_send_tool_waits_for_the_answer_and_acknowledges_it() {
    let broker = TestBroker::start_on_wall_clock();
    let bob = broker.register("bob");
    let carol = broker.register("carol");
    let mut mcp = McpProcess::start(&broker.addr(), &broker.data_dir(), &[], &[]);
    mcp.ok("register", json!({"instance_id": "alice"}));
    let mut client = broker.client();

    let call = mcp.start_call(
        "send",
        json!({"to_id": "bob", "content": "shall I deploy?", "subject": "deploy",
               "wait_for_reply_seconds": 30}),
    );
    let question = next_message(&mut client, &bob);
    assert_eq!(question.subject.as_deref(), Some("deploy"));
    let unrelated = send(&mut client, &carol, "alice", "lunch?", None);
    let answer = send(
        &mut client,
        &bob,
        "alice",
        "yes, go ahead",
        Some(question.id.0),
    );
    let outcome = mcp.finish_call(call);
    assert!(!outcome.is_error, "{}", outcome.text);
    assert!(outcome.text.contains("Message sent"), "{}", outcome.text);
    assert!(outcome.text.contains("The answer came"), "{}", outcome.text);
    assert!(outcome.text.contains("│ yes, go ahead"), "{}", outcome.text);
    assert!(
        outcome.text.contains("subject \"deploy\""),
        "{}",
        outcome.text
    );
    assert!(!outcome.text.contains("lunch?"), "{}", outcome.text);
    assert_eq!(
        state_of(&mut client, &bob, answer).0,
        ReceiptState::Delivered
    );
    assert_eq!(
        state_of(&mut client, &carol, unrelated),
        (ReceiptState::Waiting, 0, false)
    );
    assert!(mcp.ok("check", json!({})).contains("lunch?"));

    let none = mcp.ok(
        "send",
        json!({"to_id": "bob", "content": "still there?", "wait_for_reply_seconds": 1}),
    );
    assert!(none.contains("No answer to message"), "{none}");
    assert!(none.contains("thread with thread_id="), "{none}");
    let refused = mcp.error(
        "send",
        json!({"to_id": "bob", "content": "x", "wait_for_reply_seconds": 301}),
    );
    assert!(refused.contains("from 0 to 300"), "{refused}");
}

#[test]
fn cli_send_wait_reply_prints_the_answer_or_exits_4_with_a_line_on_stderr() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let alice_file = dir.path().join("alice.session");
    let registered = cli(&broker.addr(), &alice_file, &["register", "alice"]);
    assert!(registered.status.success(), "{registered:?}");
    let bob = broker.register("bob");
    let mut client = broker.client();

    let none = cli(
        &broker.addr(),
        &alice_file,
        &["send", "bob", "anyone?", "--wait-reply", "1"],
    );
    assert_eq!(none.status.code(), Some(4), "{none:?}");
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert!(stderr.contains("no reply to message"), "{stderr}");
    assert!(stderr.contains("claude-ipc thread"), "{stderr}");
    assert!(String::from_utf8_lossy(&none.stdout).contains("Message sent"));
    next_message(&mut client, &bob);
    let as_json = cli(
        &broker.addr(),
        &alice_file,
        &["send", "bob", "again?", "--wait-reply", "1", "--json"],
    );
    assert_eq!(as_json.status.code(), Some(4), "{as_json:?}");
    let printed: Value = serde_json::from_slice(&as_json.stdout).expect("one JSON object");
    assert_eq!(printed["status"], "ok");
    assert!(printed["message_id"].is_i64(), "{printed}");
    assert_eq!(printed["answer"]["messages"], json!([]), "{printed}");
    next_message(&mut client, &bob);

    let addr = broker.addr();
    let file = alice_file.clone();
    let asking = std::thread::spawn(move || {
        cli(
            &addr,
            &file,
            &[
                "send",
                "bob",
                "which port?",
                "--subject",
                "ports",
                "--wait-reply",
                "30",
            ],
        )
    });
    let question = next_message(&mut client, &bob);
    send(&mut client, &bob, "alice", "9876", Some(question.id.0));
    let answered = asking.join().unwrap();
    assert_eq!(answered.status.code(), Some(0), "{answered:?}");
    let stdout = String::from_utf8_lossy(&answered.stdout);
    assert!(stdout.contains("Message sent"), "{stdout}");
    assert!(stdout.contains("  9876"), "{stdout}");
    assert!(stdout.contains("subject \"ports\""), "{stdout}");
}

#[test]
fn the_asker_may_rename_before_the_answer_comes() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let question = send(&mut client, &alice, "bob", "still on for 3pm?", None);
    client.rename(&alice, "alicia").expect("rename");
    // bob answers the name he knows; the forward takes it to alicia, and the question is
    // still hers to wait on.
    let answer = send(&mut client, &bob, "alice", "yes", Some(question));
    let reply = check_replies(&mut client, &alice, question, 5_000);
    assert_eq!(ids(&reply), [answer], "{reply}");
    assert_eq!(reply["messages"][0]["to"], "alicia");
}
