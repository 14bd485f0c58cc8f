//! The wire protocol as the legacy clients use it: both framings, the six legacy actions with
//! their exact field names and texts, the error texts and codes they match on, the shared-secret
//! formula, the fields added beside the legacy ones, and identity taken from the session.
use crate::common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use chrono::Duration as Span;
use common::*;
use serde_json::{json, Value};

/// Asserts an error reply with exactly this code and text.
fn expect_error(reply: &Value, code: &str, message: &str) {
    assert_eq!(reply["status"], "error", "{reply}");
    assert_eq!(reply["code"], code, "{reply}");
    assert_eq!(reply["message"], message, "{reply}");
}

/// Writes every request in one `write`, one per line, then reads one reply line per request.
fn pipelined(addr: &str, requests: &[Value]) -> Vec<Value> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut bytes = Vec::new();
    for request in requests {
        bytes.extend(request.to_string().into_bytes());
        bytes.push(b'\n');
    }
    stream.write_all(&bytes).expect("one write");
    let mut reader = BufReader::new(stream);
    requests
        .iter()
        .map(|_| {
            let mut line = String::new();
            assert!(reader.read_line(&mut line).expect("reply line") > 0);
            serde_json::from_str(&line).expect("each reply is one JSON line")
        })
        .collect()
}

fn send(token: &str, to: &str, content: &str) -> Value {
    json!({"action": "send", "session_token": token, "to_id": to,
           "message": {"content": content}})
}

fn check(token: &str) -> Value {
    json!({"action": "check", "session_token": token})
}

// ---- framing ----

#[test]
fn legacy_framing_one_object_without_newline_gets_one_whole_reply() {
    let broker = TestBroker::start();
    let bytes = legacy_raw(&broker.addr(), br#"{"action": "ping"}"#);
    assert_eq!(bytes.last(), Some(&b'\n'), "reply ends with a newline");
    assert_eq!(
        bytes.iter().filter(|b| **b == b'\n').count(),
        1,
        "exactly one reply line"
    );
    let reply: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(reply["status"], "ok");

    // An object spread over several lines, still with no terminator, is one request.
    let bytes = legacy_raw(
        &broker.addr(),
        b"{\n  \"action\":\n    \"register\",\n  \"instance_id\": \"alice\"\n}",
    );
    let reply: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(reply["message"], "Registered alice", "{reply}");
}

#[test]
fn persistent_connection_answers_pipelined_requests_in_order() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let alice = legacy_register(&addr, "alice");
    let bob = legacy_register(&addr, "bob");
    let replies = pipelined(
        &addr,
        &[
            json!({"action": "ping"}),
            send(&alice, "bob", "one"),
            send(&alice, "bob", "two"),
            json!({"action": "fly", "session_token": alice}),
            check(&bob),
            json!({"action": "list", "session_token": alice}),
            send(&alice, "bob", "three"),
            check(&bob),
        ],
    );
    assert_eq!(replies.len(), 8);
    assert_eq!(replies[0]["version"], claude_ipc::VERSION);
    assert_eq!(replies[1]["message"], "Message sent");
    assert_eq!(replies[2]["message"], "Message sent");
    assert!(
        replies[1]["message_id"].as_i64() < replies[2]["message_id"].as_i64(),
        "sends were stored in the order they were written"
    );
    expect_error(&replies[3], "unknown_action", "Unknown action: fly");
    // The first check sees exactly what was sent before it on the line, not what came after.
    assert_eq!(contents(&replies[4]), ["one", "two"]);
    assert_eq!(replies[5]["instances"].as_array().unwrap().len(), 2);
    assert_eq!(replies[6]["message"], "Message sent");
    assert_eq!(contents(&replies[7]), ["three"]);
}

#[test]
fn a_request_dribbled_across_several_writes_is_answered_once_complete() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let alice = legacy_register(&addr, "alice");
    legacy_register(&addr, "bob");
    // Braces, quotes and an escape inside the content, with chunk boundaries falling inside
    // the string and inside the escape.
    let content = r#"a } { " \ ] ["#;
    let request = send(&alice, "bob", content).to_string();
    let escape = request.find(r#"\""#).expect("an escaped quote");
    let cuts = [5, escape + 1, request.len() - 3, request.len() - 1];

    let mut stream = TcpStream::connect(&addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut start = 0;
    for cut in cuts {
        stream.write_all(&request.as_bytes()[start..cut]).unwrap();
        start = cut;
        // Nothing may come back while the object is still open.
        stream
            .set_read_timeout(Some(Duration::from_millis(60)))
            .unwrap();
        let mut probe = [0u8; 1];
        let early = stream.peek(&mut probe);
        assert!(
            matches!(&early, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
            "the broker answered an incomplete request (after {cut} of {} bytes): {early:?}",
            request.len()
        );
    }
    stream.write_all(&request.as_bytes()[start..]).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buffer = vec![0u8; 65536];
    let n = stream.read(&mut buffer).unwrap();
    let reply: Value = serde_json::from_slice(&buffer[..n]).unwrap();
    assert_eq!(reply["message"], "Message sent", "{reply}");
    drop(stream);

    let bob = legacy_register(&addr, "bob");
    let mail = legacy_check(&addr, &bob);
    assert_eq!(contents(&mail), [content]);
}

#[test]
fn typed_client_uses_one_persistent_connection_for_every_action() {
    let broker = TestBroker::start();
    let mut client = broker.client();
    assert_eq!(ping_json(&mut client)["status"], "ok");
    let alice = client.register("alice", None).unwrap();
    assert_eq!(alice.message, "Registered alice");
    let bob = client.register("bob", None).unwrap();
    let sent = client
        .send(
            &alice.session_token,
            "bob",
            "hello",
            Some(json!({"k": 1})),
            None,
        )
        .unwrap();
    assert_eq!(sent.message, "Message sent");
    let broadcast = client.broadcast(&bob.session_token, "to all").unwrap();
    assert_eq!(broadcast.message(), "Broadcast to 1 instances");
    let checked = client.check(&bob.session_token).unwrap();
    assert_eq!(checked.messages.len(), 1);
    assert_eq!(checked.messages[0].id, sent.message_id);
    assert_eq!(checked.messages[0].from, "alice");
    assert_eq!(checked.messages[0].message.content, "hello");
    assert_eq!(checked.messages[0].message.data.as_ref().unwrap()["k"], 1);
    let checked = client.check(&alice.session_token).unwrap();
    assert_eq!(checked.messages[0].message.content, "to all");
    let names: Vec<String> = client
        .list(&alice.session_token)
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    let renamed = client.rename(&alice.session_token, "carol").unwrap();
    assert_eq!(renamed.message, "Renamed alice to carol");
    let names: Vec<String> = client
        .list(&bob.session_token)
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(names, ["bob", "carol"]);
}

// ---- the six legacy actions ----

#[test]
fn register_reply_names_the_instance_and_counts_queued_mail() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let reply = legacy(
        &addr,
        &json!({"action": "register", "instance_id": "alice", "auth_token": ""}),
    );
    assert_eq!(reply["status"], "ok");
    assert_eq!(reply["message"], "Registered alice");
    let token = reply["session_token"].as_str().unwrap();
    assert_eq!(token.len(), 43, "32 random bytes, base64url unpadded");

    for i in 0..3 {
        let sent = legacy_send(&addr, token, "carol", &format!("early {i}"));
        assert_eq!(sent["status"], "ok", "{sent}");
    }
    let reply = legacy(
        &addr,
        &json!({"action": "register", "instance_id": "carol", "auth_token": ""}),
    );
    assert_eq!(reply["message"], "Registered carol with 3 queued messages");

    // Registering again replaces the session: the first token stops working, with the
    // legacy text (the code says it was replaced).
    let again = legacy_register(&addr, "alice");
    assert_ne!(again, token);
    expect_error(
        &legacy_check(&addr, token),
        "session_replaced",
        "Invalid or missing session token",
    );
    assert_eq!(legacy_check(&addr, &again)["status"], "ok");
}

#[test]
fn send_says_sent_queued_or_forwarded() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let alice = legacy_register(&addr, "alice");
    let bob = legacy_register(&addr, "bob");

    let reply = legacy_send(&addr, &alice, "bob", "direct");
    assert_eq!(reply["status"], "ok");
    assert_eq!(reply["message"], "Message sent");
    let reply = legacy_send(&addr, &alice, "nobody", "for later");
    assert_eq!(
        reply["message"],
        "Message queued for nobody (not yet registered)"
    );
    let reply = legacy(
        &addr,
        &json!({"action": "rename", "session_token": bob, "new_id": "bobby"}),
    );
    assert_eq!(reply["message"], "Renamed bob to bobby");
    let reply = legacy_send(&addr, &alice, "bob", "via the old name");
    assert_eq!(reply["message"], "Message forwarded from bob to bobby");

    let mail = legacy_check(&addr, &bob);
    assert_eq!(contents(&mail), ["direct", "via the old name"]);
    for message in mail["messages"].as_array().unwrap() {
        assert_eq!(message["to"], "bobby");
        assert_eq!(message["from"], "alice");
    }
    let nobody = legacy(
        &addr,
        &json!({"action": "register", "instance_id": "nobody", "auth_token": ""}),
    );
    assert_eq!(
        nobody["message"],
        "Registered nobody with 1 queued messages"
    );
}

#[test]
fn broadcast_reaches_every_other_registered_instance_only() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let alice = legacy_register(&addr, "alice");
    let bob = legacy_register(&addr, "bob");
    let carol = legacy_register(&addr, "carol");
    legacy_send(
        &addr,
        &alice,
        "future",
        "direct to a name not yet registered",
    );

    let reply = legacy(
        &addr,
        &json!({"action": "broadcast", "session_token": alice, "from_id": "alice",
                "message": {"content": "hello all"}}),
    );
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(reply["message"], "Broadcast to 2 instances");

    for token in [&bob, &carol] {
        let mail = legacy_check(&addr, token);
        assert_eq!(contents(&mail), ["hello all"]);
        assert_eq!(mail["messages"][0]["from"], "alice");
    }
    assert!(contents(&legacy_check(&addr, &alice)).is_empty());
    let future = legacy(
        &addr,
        &json!({"action": "register", "instance_id": "future", "auth_token": ""}),
    );
    assert_eq!(
        future["message"], "Registered future with 1 queued messages",
        "a broadcast goes only to names registered when it is sent"
    );
}

#[test]
fn check_returns_the_legacy_message_shape_oldest_first() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let alice = legacy_register(&addr, "alice");
    let bob = legacy_register(&addr, "bob");
    legacy_send(&addr, &bob, "alice", "first");
    broker.clock.advance(Span::seconds(1));
    let reply = legacy(
        &addr,
        &json!({"action": "send", "session_token": bob, "to_id": "alice",
                "message": {"content": "second", "data": {"k": [1, 2], "s": "x"}}}),
    );
    assert_eq!(reply["status"], "ok");
    broker.clock.advance(Span::seconds(1));
    legacy_send(&addr, &bob, "alice", "third");

    let mail = legacy_check(&addr, &alice);
    assert_eq!(mail["status"], "ok");
    let messages = mail["messages"].as_array().unwrap();
    assert_eq!(contents(&mail), ["first", "second", "third"]);
    let times: Vec<&str> = messages
        .iter()
        .map(|m| m["timestamp"].as_str().unwrap())
        .collect();
    assert_eq!(
        times,
        [
            "2026-01-01T12:00:00.000Z",
            "2026-01-01T12:00:01.000Z",
            "2026-01-01T12:00:02.000Z"
        ]
    );
    for message in messages {
        assert_eq!(message["from"], "bob");
        assert_eq!(message["to"], "alice");
        assert!(message["message"].is_object());
    }
    assert_eq!(
        messages[1]["message"]["data"],
        json!({"k": [1, 2], "s": "x"})
    );
    assert!(messages[0]["message"].get("data").is_none());
    assert_eq!(mail["more"], false);

    let again = legacy_check(&addr, &alice);
    assert_eq!(again["messages"], json!([]), "delivered mail is not resent");
}

#[test]
fn list_shows_every_instance_with_last_seen_and_no_secrets() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let alice = legacy_register(&addr, "alice");
    broker.clock.advance(Span::minutes(5));
    let bob = legacy_register(&addr, "bob");
    let bytes = legacy_raw(
        &addr,
        json!({"action": "list", "session_token": alice})
            .to_string()
            .as_bytes(),
    );
    let text = String::from_utf8(bytes).unwrap();
    assert!(!text.contains(&alice) && !text.contains(&bob));
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(reply["status"], "ok");
    assert_eq!(
        reply["instances"],
        json!([
            // The legacy fields, and beside them presence, which legacy scripts ignore.
            {"id": "alice", "last_seen": "2026-01-01T12:05:00.000Z", "online": true, "push": false},
            {"id": "bob", "last_seen": "2026-01-01T12:05:00.000Z", "online": true, "push": false},
        ]),
        "alice was seen when she listed, bob when he registered"
    );
}

#[test]
fn rename_reply_says_renamed_old_to_new() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let alice = legacy_register(&addr, "alice");
    let bob = legacy_register(&addr, "bob");
    let reply = legacy(
        &addr,
        &json!({"action": "rename", "session_token": alice, "new_id": "alice2",
                "old_id": "alice"}),
    );
    assert_eq!(reply["status"], "ok");
    assert_eq!(reply["message"], "Renamed alice to alice2");
    let list = legacy(&addr, &json!({"action": "list", "session_token": alice}));
    let names = instance_names(&list);
    assert_eq!(names, ["alice2", "bob"]);
    // The same token now speaks for the new name.
    legacy_send(&addr, &alice, "bob", "hi");
    let mail = legacy_check(&addr, &bob);
    assert_eq!(contents(&mail), ["alice renamed to alice2", "hi"]);
    assert_eq!(mail["messages"][1]["from"], "alice2");
}

// ---- error texts and codes ----

#[test]
fn a_wrong_shared_secret_token_is_refused_with_invalid_auth() {
    let broker = TestBroker::start_with(|c| c.shared_secret = Some("s3cret".into()));
    let reply = legacy(
        &broker.addr(),
        &json!({"action": "register", "instance_id": "alice", "auth_token": "0".repeat(64)}),
    );
    expect_error(&reply, "invalid_auth", "Invalid auth token");
    assert!(reply.get("session_token").is_none());
}

#[test]
fn a_missing_or_unknown_session_token_is_refused_with_invalid_session() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    legacy_register(&addr, "bob");
    let bad_tokens = [None, Some(""), Some("not-a-token")];
    for token in bad_tokens {
        let requests = [
            json!({"action": "send", "to_id": "bob", "message": {"content": "x"}}),
            json!({"action": "broadcast", "message": {"content": "x"}}),
            json!({"action": "check", "instance_id": "bob"}),
            json!({"action": "list"}),
            json!({"action": "rename", "new_id": "eve", "old_id": "bob"}),
        ];
        for mut request in requests {
            if let Some(token) = token {
                request["session_token"] = token.into();
            }
            expect_error(
                &legacy(&addr, &request),
                "invalid_session",
                "Invalid or missing session token",
            );
        }
    }
    let bob = legacy_register(&addr, "bob");
    assert!(
        contents(&legacy_check(&addr, &bob)).is_empty(),
        "refused sends stored nothing"
    );
}

#[test]
fn an_unknown_action_is_named_in_the_error() {
    let broker = TestBroker::start();
    expect_error(
        &legacy(&broker.addr(), &json!({"action": "delete_everything"})),
        "unknown_action",
        "Unknown action: delete_everything",
    );
}

#[test]
fn a_full_queue_is_refused_with_the_default_cap_in_the_text() {
    let broker = TestBroker::start();
    let alice = broker.register("alice");
    let bob = broker.register("bob");
    let mut client = broker.client();
    for i in 0..100 {
        client
            .send(&alice, "bob", &format!("m{i}"), None, None)
            .unwrap();
    }
    let reply = legacy_send(&broker.addr(), &alice, "bob", "one too many");
    expect_error(
        &reply,
        "queue_full",
        "Message queue full for bob (100 message limit)",
    );
    // Draining the queue makes room again; the refused message was not stored.
    let mut received = Vec::new();
    loop {
        let checked = client.check(&bob).unwrap();
        if checked.messages.is_empty() {
            break;
        }
        received.extend(checked.messages.into_iter().map(|m| m.message.content));
    }
    assert_eq!(received.len(), 100);
    assert!(!received.iter().any(|c| c == "one too many"));
    assert_eq!(
        legacy_send(&broker.addr(), &alice, "bob", "room again")["status"],
        "ok"
    );
}

#[test]
fn a_full_queue_names_the_configured_cap_and_covers_future_mail() {
    let broker = TestBroker::start_with(|c| c.limits.queue_cap = 3);
    let addr = broker.addr();
    let alice = legacy_register(&addr, "alice");
    for name in ["bob", "unregistered"] {
        if name == "bob" {
            legacy_register(&addr, name);
        }
        for i in 0..3 {
            assert_eq!(
                legacy_send(&addr, &alice, name, &format!("m{i}"))["status"],
                "ok"
            );
        }
        expect_error(
            &legacy_send(&addr, &alice, name, "m3"),
            "queue_full",
            &format!("Message queue full for {name} (3 message limit)"),
        );
    }
}

#[test]
fn renaming_again_within_the_hour_is_refused_with_the_minutes_left() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let token = legacy_register(&addr, "alice");
    let rename = |new: &str| {
        legacy(
            &addr,
            &json!({"action": "rename", "session_token": token, "new_id": new}),
        )
    };
    assert_eq!(rename("alice2")["message"], "Renamed alice to alice2");
    expect_error(
        &rename("alice3"),
        "rename_cooldown",
        "Rate limit: can rename again in 60 minutes",
    );
    broker.clock.advance(Span::minutes(30));
    expect_error(
        &rename("alice3"),
        "rename_cooldown",
        "Rate limit: can rename again in 30 minutes",
    );
    broker.clock.advance(Span::minutes(29) + Span::seconds(30));
    expect_error(
        &rename("alice3"),
        "rename_cooldown",
        "Rate limit: can rename again in 1 minutes",
    );
    broker.clock.advance(Span::seconds(30));
    assert_eq!(rename("alice3")["message"], "Renamed alice2 to alice3");
}

// ---- the shared secret ----

#[test]
fn the_auth_token_is_lowercase_hex_sha256_of_name_colon_secret() {
    let broker = TestBroker::start_with(|c| c.shared_secret = Some("s3cret".into()));
    let addr = broker.addr();
    // `printf 'alice:s3cret' | sha256sum`, worked out independently of the broker's code.
    let alice_token = "1fe25d9a2d615222be6f64cccdf98ccb67023a1b492f090876ad1bf896833f04";
    let register = |name: &str, auth: Option<&str>| {
        let mut request = json!({"action": "register", "instance_id": name});
        if let Some(auth) = auth {
            request["auth_token"] = auth.into();
        }
        legacy(&addr, &request)
    };
    let ok = register("alice", Some(alice_token));
    assert_eq!(ok["status"], "ok", "{ok}");
    assert_eq!(ok["message"], "Registered alice");

    let wrong = [
        Some(alice_token.to_uppercase()),
        Some(alice_token[..63].to_owned()),
        Some(String::new()),
        None,
        // The token for a different secret.
        Some(claude_ipc::protocol::auth::expected_auth_token(
            "alice", "other",
        )),
    ];
    for auth in &wrong {
        expect_error(
            &register("alice", auth.as_deref()),
            "invalid_auth",
            "Invalid auth token",
        );
    }
    // A correct token for one name does not register another.
    expect_error(
        &register("bob", Some(alice_token)),
        "invalid_auth",
        "Invalid auth token",
    );
    // The session issued with the right token still works after all those refusals.
    let token = ok["session_token"].as_str().unwrap();
    assert_eq!(legacy_check(&addr, token)["status"], "ok");
}

#[test]
fn open_mode_accepts_the_empty_auth_token_the_legacy_script_sends() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let reply = legacy(
        &addr,
        &json!({"action": "register", "instance_id": "alice", "auth_token": ""}),
    );
    assert_eq!(reply["status"], "ok", "{reply}");
    let reply = legacy(&addr, &json!({"action": "register", "instance_id": "bob"}));
    assert_eq!(reply["status"], "ok", "{reply}");
    let ping = legacy(&addr, &json!({"action": "ping"}));
    assert_eq!(ping["mode"], "open");
}

// ---- fields beside the legacy ones ----

#[test]
fn send_returns_message_id_and_check_shows_id_nonce_and_sender_timestamp() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let alice = legacy_register(&addr, "alice");
    let bob = legacy_register(&addr, "bob");
    let sender_time = broker.clock.now() + Span::seconds(90);
    let stamped = legacy(
        &addr,
        &json!({"action": "send", "session_token": bob, "to_id": "alice",
                "message": {"content": "stamped"}, "nonce": "n-1",
                "timestamp": sender_time.to_rfc3339()}),
    );
    assert_eq!(stamped["status"], "ok", "{stamped}");
    let plain = legacy_send(&addr, &bob, "alice", "plain");
    let (first, second) = (
        stamped["message_id"].as_i64().expect("message_id"),
        plain["message_id"].as_i64().expect("message_id"),
    );
    assert_ne!(first, second);

    let mail = legacy_check(&addr, &alice);
    let messages = mail["messages"].as_array().unwrap();
    assert_eq!(messages[0]["id"], first);
    assert_eq!(messages[0]["nonce"], "n-1");
    let shown = messages[0]["sender_timestamp"].as_str().unwrap();
    assert!(shown.ends_with('Z'), "{shown}");
    assert_eq!(claude_ipc::clock::parse(shown), Some(sender_time));
    assert_eq!(
        messages[0]["timestamp"], "2026-01-01T12:00:00.000Z",
        "the broker's own receive time stays beside the sender's"
    );
    assert_eq!(messages[1]["id"], second);
    assert!(messages[1].get("nonce").is_none());
    assert!(messages[1].get("sender_timestamp").is_none());

    // A sender clock more than five minutes off is refused.
    let stale = legacy(
        &addr,
        &json!({"action": "send", "session_token": bob, "to_id": "alice",
                "message": {"content": "stale"},
                "timestamp": (broker.clock.now() - Span::minutes(6)).to_rfc3339()}),
    );
    assert_eq!(stale["status"], "error");
    assert_eq!(stale["code"], "stale_timestamp");
}

#[test]
fn ping_needs_no_session_and_reports_version_and_protocol() {
    let broker = TestBroker::start();
    for request in [
        json!({"action": "ping"}),
        json!({"action": "ping", "session_token": "garbage"}),
    ] {
        let reply = legacy(&broker.addr(), &request);
        assert_eq!(reply["status"], "ok", "{reply}");
        assert_eq!(reply["version"], claude_ipc::VERSION);
        assert_eq!(reply["protocol"], claude_ipc::protocol::PROTOCOL_VERSION);
    }
}

#[test]
fn every_error_reply_has_status_code_and_message() {
    let broker = TestBroker::start_with(|c| {
        c.limits.queue_cap = 1;
        c.limits.max_data_bytes = 100;
    });
    let addr = broker.addr();
    let alice = legacy_register(&addr, "alice");
    legacy_register(&addr, "bob");
    legacy_send(&addr, &alice, "bob", "fills the queue");
    let renamer = legacy_register(&addr, "renamer");
    let renamed = legacy(
        &addr,
        &json!({"action": "rename", "session_token": renamer, "new_id": "renamed"}),
    );
    assert_eq!(renamed["status"], "ok");

    // `invalid_auth` needs a broker with a secret; its own test checks the same shape.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("invalid_json", br#"{"action": ping}"#.to_vec()),
        ("not_an_object", b"[1, 2, 3]".to_vec()),
        ("missing_field", br#"{"instance_id": "alice"}"#.to_vec()),
        ("invalid_field", br#"{"action": 7}"#.to_vec()),
        ("unknown_action", br#"{"action": "fly"}"#.to_vec()),
        (
            "invalid_name",
            br#"{"action": "register", "instance_id": "../etc"}"#.to_vec(),
        ),
        (
            "reserved_name",
            br#"{"action": "register", "instance_id": "system"}"#.to_vec(),
        ),
        ("invalid_session", br#"{"action": "list"}"#.to_vec()),
        (
            "queue_full",
            send(&alice, "bob", "no room").to_string().into(),
        ),
        (
            "data_too_large",
            json!({"action": "send", "session_token": alice, "to_id": "bob",
                   "message": {"content": "x", "data": {"blob": "y".repeat(200)}}})
            .to_string()
            .into(),
        ),
        (
            "stale_timestamp",
            json!({"action": "send", "session_token": alice, "to_id": "carol",
                   "message": {"content": "x"}, "timestamp": "2020-01-01T00:00:00Z"})
            .to_string()
            .into(),
        ),
        (
            "name_taken",
            json!({"action": "rename", "session_token": alice, "new_id": "bob"})
                .to_string()
                .into(),
        ),
        (
            "same_name",
            json!({"action": "rename", "session_token": alice, "new_id": "alice"})
                .to_string()
                .into(),
        ),
        (
            "rename_cooldown",
            json!({"action": "rename", "session_token": renamer, "new_id": "again"})
                .to_string()
                .into(),
        ),
    ];
    // Each once as a legacy request, and all of them as lines on one persistent connection,
    // which stays usable after every error.
    let persistent = TcpStream::connect(&addr).unwrap();
    persistent.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut writer = persistent.try_clone().unwrap();
    let mut reader = BufReader::new(persistent);
    for (code, request) in &cases {
        let legacy_reply: Value = serde_json::from_slice(&legacy_raw(&addr, request))
            .unwrap_or_else(|e| panic!("{code}: not one JSON reply: {e}"));
        writer
            .write_all(&[request.as_slice(), b"\n"].concat())
            .unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let persistent_reply: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{code}: not one JSON line: {e}: {line:?}"));
        for reply in [legacy_reply, persistent_reply] {
            assert_eq!(reply["status"], "error", "{code}: {reply}");
            assert_eq!(reply["code"], *code, "{reply}");
            let message = reply["message"].as_str().unwrap_or("");
            assert!(!message.is_empty(), "{code}: no message: {reply}");
        }
    }
    writer.write_all(b"{\"action\": \"ping\"}\n").unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("\"status\":\"ok\""), "{line}");
}

// ---- a check reply always fits one legacy read ----

/// A reply that reaches the client's single `recv(65536)` in more than one piece fails here,
/// as it would fail the legacy client's JSON parse; and since a written reply counts as
/// delivered, that client would have lost the mail in it.
#[test]
fn a_legacy_check_reply_always_fits_one_read_and_nothing_is_lost() {
    let broker = TestBroker::start_with(|c| c.limits.queue_cap = 0);
    let addr = broker.addr();
    let alice = broker.register("alice");
    let bob = broker.register("bob");
    let mut client = broker.client();
    let filler = "x".repeat(9000);
    let sent: Vec<String> = (0..100).map(|i| format!("msg-{i:03}-{filler}")).collect();
    for content in &sent {
        client.send(&bob, "alice", content, None, None).unwrap();
    }

    let mut received = Vec::new();
    let mut checks = 0;
    loop {
        let bytes = legacy_raw(
            &addr,
            check(&alice).to_string().as_bytes(), // one write, no newline
        );
        checks += 1;
        assert!(bytes.len() < 65536, "reply of {} bytes", bytes.len());
        assert_eq!(
            bytes.last(),
            Some(&b'\n'),
            "the single read got only {} bytes of the reply",
            bytes.len()
        );
        let reply: Value = serde_json::from_slice(&bytes).expect("whole JSON in one read");
        let batch = contents(&reply);
        received.extend(batch.iter().cloned());
        if batch.is_empty() {
            assert_eq!(reply["more"], false);
            break;
        }
        assert_eq!(
            reply["more"],
            received.len() < sent.len(),
            "after {} of {}",
            received.len(),
            sent.len()
        );
        assert!(checks <= 100, "checks are not making progress");
    }
    assert!(
        checks > 10,
        "900 KB of mail cannot come back in {checks} checks of under 64 KiB"
    );
    assert_eq!(received, sent, "every message once, in order");
}

// ---- identity comes from the session ----

#[test]
fn a_claimed_from_id_is_ignored_and_the_session_name_is_the_sender() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let alice = legacy_register(&addr, "alice");
    let bob = legacy_register(&addr, "bob");
    let reply = legacy(
        &addr,
        &json!({"action": "send", "session_token": alice, "from_id": "admin",
                "to_id": "bob", "message": {"content": "trust me"}}),
    );
    assert_eq!(reply["status"], "ok");
    let mail = legacy_check(&addr, &bob);
    assert_eq!(mail["messages"][0]["from"], "alice");
}

#[test]
fn a_check_claiming_another_instance_returns_the_callers_own_mail() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let alice = legacy_register(&addr, "alice");
    let bob = legacy_register(&addr, "bob");
    let carol = legacy_register(&addr, "carol");
    legacy_send(&addr, &carol, "bob", "for bob");
    legacy_send(&addr, &carol, "alice", "for alice");

    let snoop = legacy(
        &addr,
        &json!({"action": "check", "session_token": alice, "instance_id": "bob"}),
    );
    assert_eq!(contents(&snoop), ["for alice"]);
    assert_eq!(snoop["messages"][0]["to"], "alice");
    assert_eq!(contents(&legacy_check(&addr, &bob)), ["for bob"]);
}

#[test]
fn a_rename_claiming_another_old_id_renames_the_caller() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let mallory = legacy_register(&addr, "mallory");
    let victim = legacy_register(&addr, "victim");
    let reply = legacy(
        &addr,
        &json!({"action": "rename", "session_token": mallory, "old_id": "victim",
                "new_id": "victim-new"}),
    );
    assert_eq!(reply["message"], "Renamed mallory to victim-new");
    let list = legacy(&addr, &json!({"action": "list", "session_token": victim}));
    let names = instance_names(&list);
    assert_eq!(names, ["victim", "victim-new"]);
}
