//! Threads and replies over the wire: `send` and `broadcast` with `reply_to` and `subject`,
//! the thread a reply joins, the subject it inherits, the refusal of a `reply_to` the caller
//! never saw, and the thread fields `check` and `watch` show beside the legacy ones, against a
//! real broker.

use crate::common;

use claude_ipc::client::{Client, Stamp, ThreadingFields, WatchOptions};
use claude_ipc::protocol::schema::{BroadcastReply, SendReply};
use common::{legacy, legacy_check, TestBroker};
use serde_json::{json, Value};

fn threaded(reply_to: Option<i64>, subject: Option<&str>) -> ThreadingFields {
    ThreadingFields {
        reply_to,
        subject: subject.map(str::to_owned),
    }
}

fn send_in(
    client: &mut Client,
    token: &str,
    to: &str,
    content: &str,
    thread: ThreadingFields,
) -> SendReply {
    let stamp = Stamp::fresh().expect("stamp");
    client
        .send_threaded(token, to, content, None, &thread, &stamp)
        .expect("send")
}

/// The one message a legacy check returns, as JSON.
fn only_message(reply: &Value) -> &Value {
    let messages = reply["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1, "{reply}");
    &messages[0]
}

#[test]
fn a_message_that_answers_nothing_starts_its_own_thread() {
    let broker = TestBroker::start_on_wall_clock();
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let sent = send_in(
        &mut client,
        &alice,
        "bob",
        "the API",
        threaded(None, Some("API")),
    );
    assert_eq!(sent.thread_id, Some(sent.message_id));

    let checked = legacy_check(&broker.addr(), &bob);
    let message = only_message(&checked);
    assert_eq!(message["id"], sent.message_id.0);
    assert_eq!(message["thread_id"], sent.message_id.0);
    assert_eq!(message["subject"], "API");
    assert!(message.get("reply_to").is_none(), "{message}");
}

#[test]
fn a_reply_joins_the_thread_of_what_it_answers_and_inherits_its_subject() {
    let broker = TestBroker::start_on_wall_clock();
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let question = send_in(
        &mut client,
        &alice,
        "bob",
        "which port?",
        threaded(None, Some("ports")),
    );
    let root = question.message_id.0;
    legacy_check(&broker.addr(), &bob);

    // Bob answers what he received; alice answers bob's answer, with a subject of her own.
    let answer = send_in(
        &mut client,
        &bob,
        "alice",
        "9876",
        threaded(Some(root), None),
    );
    assert_eq!(answer.thread_id, Some(question.message_id));
    let checked = legacy_check(&broker.addr(), &alice);
    let message = only_message(&checked);
    assert_eq!(message["thread_id"], root);
    assert_eq!(message["reply_to"], root);
    assert_eq!(message["subject"], "ports", "inherited from the question");

    let again = send_in(
        &mut client,
        &alice,
        "bob",
        "thanks",
        threaded(Some(answer.message_id.0), Some("ports, settled")),
    );
    assert_eq!(
        again.thread_id,
        Some(question.message_id),
        "deeper replies stay in the thread"
    );
    let checked = legacy_check(&broker.addr(), &bob);
    let message = only_message(&checked);
    assert_eq!(message["reply_to"], answer.message_id.0);
    assert_eq!(message["subject"], "ports, settled");

    // The sender may also follow up on its own message.
    let follow_up = send_in(
        &mut client,
        &alice,
        "bob",
        "also 9877",
        threaded(Some(root), None),
    );
    assert_eq!(follow_up.thread_id, Some(question.message_id));
}

#[test]
fn reply_to_a_message_the_caller_never_saw_is_refused_like_one_that_does_not_exist() {
    let broker = TestBroker::start_on_wall_clock();
    let (_, alice, bob) = broker.alice_and_bob();
    let carol = broker.register("carol");
    let mut client = broker.client();
    let private = send_in(
        &mut client,
        &alice,
        "bob",
        "between us",
        threaded(None, None),
    );

    let refusal = |reply_to: Value| {
        legacy(
            &broker.addr(),
            &json!({"action": "send", "session_token": carol, "to_id": "bob",
                    "message": {"content": "me too"}, "reply_to": reply_to}),
        )
    };
    let others = refusal(json!(private.message_id.0));
    let missing = refusal(json!(999_999));
    assert_eq!(others["status"], "error");
    assert_eq!(others["code"], "unknown_reply_to");
    assert_eq!(missing["code"], "unknown_reply_to");
    let text = |reply: &Value, id: i64| {
        reply["message"]
            .as_str()
            .unwrap()
            .replace(&id.to_string(), "N")
    };
    assert_eq!(
        text(&others, private.message_id.0),
        text(&missing, 999_999),
        "someone else's message and a missing one read alike"
    );
    assert!(text(&others, 0).contains("reply to an id"), "{others}");

    // Nothing was stored: bob has only alice's message.
    let checked = legacy_check(&broker.addr(), &bob);
    assert_eq!(
        checked["messages"].as_array().unwrap().len(),
        1,
        "{checked}"
    );

    // The same refusal for a broadcast.
    let broadcast = legacy(
        &broker.addr(),
        &json!({"action": "broadcast", "session_token": carol,
                "message": {"content": "all"}, "reply_to": private.message_id.0}),
    );
    assert_eq!(broadcast["code"], "unknown_reply_to", "{broadcast}");
    // Bob and alice can still reply to it.
    let ok = send_in(
        &mut client,
        &bob,
        "alice",
        "ok",
        threaded(Some(private.message_id.0), None),
    );
    assert_eq!(ok.thread_id, Some(private.message_id));
}

#[test]
fn bad_thread_fields_get_a_clear_error_naming_the_field() {
    let broker = TestBroker::start_on_wall_clock();
    let (_, alice, _) = broker.alice_and_bob();
    let send = |extra: Value| {
        let mut request = json!({"action": "send", "session_token": alice, "to_id": "bob",
                                 "message": {"content": "x"}});
        for (key, value) in extra.as_object().unwrap() {
            request[key] = value.clone();
        }
        legacy(&broker.addr(), &request)
    };
    for (extra, field) in [
        (json!({"reply_to": "12"}), "reply_to"),
        (json!({"reply_to": -3}), "reply_to"),
        (json!({"reply_to": 1.5}), "reply_to"),
        (json!({"subject": ""}), "subject"),
        (json!({"subject": "   "}), "subject"),
        (json!({"subject": "two\nlines"}), "subject"),
        (json!({"subject": "x".repeat(201)}), "subject"),
        (json!({"subject": 7}), "subject"),
    ] {
        let reply = send(extra.clone());
        assert_eq!(reply["status"], "error", "{extra}: {reply}");
        assert_eq!(reply["code"], "invalid_field", "{extra}: {reply}");
        assert!(
            reply["message"].as_str().unwrap().contains(field),
            "{extra}: {reply}"
        );
    }
    let longest = send(json!({"subject": "é".repeat(200)}));
    assert_eq!(
        longest["status"], "ok",
        "200 characters, not bytes: {longest}"
    );
    let null_fields = send(json!({"subject": null, "reply_to": null}));
    assert_eq!(null_fields["status"], "ok", "null is absent: {null_fields}");
}

#[test]
fn a_broadcast_is_one_thread_and_a_reply_to_any_copy_joins_it() {
    let broker = TestBroker::start_on_wall_clock();
    let (_, alice, bob) = broker.alice_and_bob();
    let carol = broker.register("carol");
    let mut client = broker.client();
    let stamp = Stamp::fresh().expect("stamp");
    let reply = client
        .broadcast_threaded(
            &alice,
            "standup in 5",
            None,
            &threaded(None, Some("standup")),
            &stamp,
        )
        .expect("broadcast");
    let BroadcastReply::Delivered(copies) = reply else {
        panic!("stored nothing: {reply:?}");
    };
    assert_eq!(copies.count, 2);
    let first = copies.first_id.expect("first copy");
    assert_eq!(copies.thread_id, Some(first));

    let mut threads = Vec::new();
    for token in [&bob, &carol] {
        let checked = legacy_check(&broker.addr(), token);
        let message = only_message(&checked).clone();
        assert_eq!(message["thread_id"], first.0, "{message}");
        assert_eq!(message["subject"], "standup");
        assert_eq!(message["kind"], "broadcast");
        threads.push(message["id"].as_i64().unwrap());
    }
    let carols_copy = threads[1];
    let answer = send_in(
        &mut client,
        &carol,
        "alice",
        "on my way",
        threaded(Some(carols_copy), None),
    );
    assert_eq!(answer.thread_id, Some(first));
}

#[test]
fn watch_and_the_legacy_fields_show_the_thread_beside_everything_a_legacy_client_reads() {
    let broker = TestBroker::start_on_wall_clock();
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let question = send_in(&mut client, &alice, "bob", "q", threaded(None, Some("s")));
    let answer = send_in(
        &mut client,
        &bob,
        "alice",
        "a",
        threaded(Some(question.message_id.0), None),
    );

    let watched = client
        .watch(
            &alice,
            &WatchOptions {
                watcher: "w-1".into(),
                wait: None,
                limit: None,
                push: false,
            },
        )
        .expect("watch");
    assert_eq!(watched.messages.len(), 1);
    let seen = &watched.messages[0];
    assert_eq!(seen.id, answer.message_id);
    assert_eq!(seen.thread_id, Some(question.message_id));
    assert_eq!(seen.reply_to, Some(question.message_id));
    assert_eq!(seen.subject.as_deref(), Some("s"));

    // A legacy check still carries every field the original sent, unchanged.
    let checked = legacy_check(&broker.addr(), &alice);
    let message = only_message(&checked);
    for key in ["from", "to", "timestamp", "message"] {
        assert!(message.get(key).is_some(), "{key} missing: {message}");
    }
    assert_eq!(message["from"], "bob");
    assert_eq!(message["message"]["content"], "a");
}

#[test]
fn threads_survive_a_rename_of_either_side_and_a_restart() {
    let broker = TestBroker::start_on_wall_clock();
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let question = send_in(&mut client, &alice, "bob", "q", threaded(None, Some("s")));
    legacy_check(&broker.addr(), &bob);
    let renamed = legacy(
        &broker.addr(),
        &json!({"action": "rename", "session_token": bob, "new_id": "robert"}),
    );
    assert_eq!(renamed["status"], "ok", "{renamed}");

    // Robert (once bob) still answers what bob received: his received mail moved with him.
    let answer = send_in(
        &mut client,
        &bob,
        "alice",
        "a",
        threaded(Some(question.message_id.0), None),
    );
    assert_eq!(answer.thread_id, Some(question.message_id));

    let broker = broker.restart();
    let mut client = broker.client();
    let later = send_in(
        &mut client,
        &alice,
        "robert",
        "b",
        threaded(Some(answer.message_id.0), None),
    );
    assert_eq!(
        later.thread_id,
        Some(question.message_id),
        "kept across a restart"
    );
}
