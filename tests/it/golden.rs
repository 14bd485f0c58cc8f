//! Golden replies: the exact bytes a legacy client reads for every action and every legacy
//! refusal, so a change to how replies are built cannot change what is written. Values that
//! differ from run to run (tokens, ids, times, the version) are masked by key; everything else,
//! key order, spacing and the field set included, is compared byte for byte.
use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;

/// The legacy client's request bytes, one object with no newline, and the reply it reads.
fn raw(addr: &str, request: &str) -> String {
    String::from_utf8(legacy_raw(addr, request.as_bytes())).expect("replies are UTF-8")
}

/// `reply` with the value after each `"key":` replaced by `<key>` (in quotes if it was a
/// string), the rest untouched.
fn masked(reply: &str, keys: &[&str]) -> String {
    let mut text = reply.to_owned();
    for key in keys {
        text = mask_key(&text, key);
    }
    text
}

/// `reply` with the number after each `uid:` replaced by `<uid>`: hints name the peer's user.
fn masked_uids(reply: &str) -> String {
    let mut parts = reply.split("uid:");
    let mut out = parts.next().unwrap_or_default().to_owned();
    for part in parts {
        out.push_str("uid:<uid>");
        out.push_str(part.trim_start_matches(|c: char| c.is_ascii_digit()));
    }
    out
}

fn mask_key(text: &str, key: &str) -> String {
    let pattern = format!("\"{key}\":");
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(&pattern) {
        let value_start = at + pattern.len();
        out.push_str(&rest[..value_start]);
        let value = &rest[value_start..];
        let value_len = json_scalar_len(value);
        match value.starts_with('"') {
            true => out.push_str(&format!("\"<{key}>\"")),
            false => out.push_str(&format!("<{key}>")),
        }
        rest = &rest[value_start + value_len..];
    }
    out.push_str(rest);
    out
}

/// The length of the JSON string or number at the start of `text`.
fn json_scalar_len(text: &str) -> usize {
    let bytes = text.as_bytes();
    if bytes.first() == Some(&b'"') {
        let mut i = 1;
        while bytes[i] != b'"' {
            i += if bytes[i] == b'\\' { 2 } else { 1 };
        }
        return i + 1;
    }
    bytes
        .iter()
        .take_while(|b| b.is_ascii_digit() || matches!(b, b'-' | b'.'))
        .count()
}

/// Asserts the reply's bytes, once masked, are exactly `expected` and the newline.
fn assert_golden(reply: &str, keys: &[&str], expected: &str) {
    let masked = masked_uids(&masked(reply, keys));
    assert_eq!(masked, format!("{expected}\n"), "raw reply: {reply}");
}

/// What varies in a `ping` reply between runs and builds.
const PING_VARIES: &[&str] = &[
    "version",
    "pid",
    "data_dir",
    "jobs",
    "commits",
    "uptime_seconds",
];

/// The legacy shared secret's token for `alice` under the secret `s3cret`
/// (`printf 'alice:s3cret' | sha256sum`).
const ALICE_S3CRET: &str = "1fe25d9a2d615222be6f64cccdf98ccb67023a1b492f090876ad1bf896833f04";

fn with_secret() -> TestBroker {
    TestBroker::start_with(|c| c.shared_secret = Some("s3cret".into()))
}

#[test]
fn ping() {
    let broker = TestBroker::start();
    let reply = raw(&broker.addr(), r#"{"action": "ping"}"#);
    assert_golden(
        &reply,
        PING_VARIES,
        r#"{"clock":{"broker":"2026-01-01T12:00:00.000Z","wall":"2026-01-01T12:00:00.000Z","wall_ahead_ms":0},"data_dir":"<data_dir>","database":"ok","mode":"open","pid":<pid>,"protocol":1,"started_at":"2026-01-01T12:00:00.000Z","status":"ok","store":{"commits":<commits>,"jobs":<jobs>},"uptime_seconds":<uptime_seconds>,"version":"<version>"}"#,
    );
    let secret = with_secret();
    let reply = raw(&secret.addr(), r#"{"action": "ping"}"#);
    assert_golden(
        &reply,
        PING_VARIES,
        r#"{"clock":{"broker":"2026-01-01T12:00:00.000Z","wall":"2026-01-01T12:00:00.000Z","wall_ahead_ms":0},"data_dir":"<data_dir>","database":"ok","mode":"secret","pid":<pid>,"protocol":1,"started_at":"2026-01-01T12:00:00.000Z","static_token":"accepted","status":"ok","store":{"commits":<commits>,"jobs":<jobs>},"uptime_seconds":<uptime_seconds>,"version":"<version>"}"#,
    );
}

#[test]
fn register_open_and_with_the_static_token() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let reply = raw(
        &addr,
        r#"{"action": "register", "instance_id": "alice", "auth_token": ""}"#,
    );
    assert_golden(
        &reply,
        &["session_token"],
        r#"{"instance_id":"alice","message":"Registered alice","queued":0,"session_token":"<session_token>","status":"ok"}"#,
    );
    let alice = legacy_register(&addr, "alice");
    legacy_send(&addr, &alice, "carol", "early");
    let reply = raw(&addr, r#"{"action": "register", "instance_id": "carol"}"#);
    assert_golden(
        &reply,
        &["session_token"],
        r#"{"instance_id":"carol","message":"Registered carol with 1 queued messages","queued":1,"session_token":"<session_token>","status":"ok"}"#,
    );

    let secret = with_secret();
    let request = format!(
        r#"{{"action": "register", "instance_id": "alice", "auth_token": "{ALICE_S3CRET}"}}"#
    );
    let reply = raw(&secret.addr(), &request);
    assert_golden(
        &reply,
        &["session_token"],
        r#"{"instance_id":"alice","message":"Registered alice","queued":0,"session_token":"<session_token>","status":"ok"}"#,
    );
}

#[test]
fn send_to_a_known_and_an_unknown_name_and_a_repeated_nonce() {
    let broker = TestBroker::start();
    let (addr, alice, _bob) = broker.alice_and_bob();
    let send = |to: &str, extra: &str| {
        raw(
            &addr,
            &format!(
                r#"{{"action": "send", "session_token": "{alice}", "to_id": "{to}", "message": {{"content": "hi"}}{extra}}}"#
            ),
        )
    };
    assert_golden(
        &send("bob", ""),
        &[],
        r#"{"duplicate":false,"message":"Message sent","message_id":1,"recipient":"bob","recipient_last_seen":"2026-01-01T12:00:00.000Z","recipient_online":true,"status":"ok","thread_id":1}"#,
    );
    assert_golden(
        &send("nobody", ""),
        &[],
        r#"{"duplicate":false,"message":"Message queued for nobody (not yet registered)","message_id":2,"recipient":"nobody","recipient_online":false,"status":"ok","thread_id":2}"#,
    );
    // A never-seen name one edit from a registered one gains `did_you_mean`.
    assert_golden(
        &send("bbo", ""),
        &[],
        r#"{"did_you_mean":"bob","duplicate":false,"message":"Message queued for bbo (not yet registered)","message_id":3,"recipient":"bbo","recipient_online":false,"status":"ok","thread_id":3}"#,
    );
    assert_golden(
        &send("bob", r#", "nonce": "n-1""#),
        &[],
        r#"{"duplicate":false,"message":"Message sent","message_id":4,"recipient":"bob","recipient_last_seen":"2026-01-01T12:00:00.000Z","recipient_online":true,"status":"ok","thread_id":4}"#,
    );
    assert_golden(
        &send("bob", r#", "nonce": "n-1""#),
        &[],
        r#"{"duplicate":true,"message":"Duplicate nonce: already stored","message_id":4,"status":"ok"}"#,
    );
}

#[test]
fn broadcast_to_others_to_nobody_and_a_repeated_nonce() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let alice = legacy_register(&addr, "alice");
    let broadcast = |extra: &str| {
        raw(
            &addr,
            &format!(
                r#"{{"action": "broadcast", "session_token": "{alice}", "message": {{"content": "all"}}{extra}}}"#
            ),
        )
    };
    assert_golden(
        &broadcast(""),
        &[],
        r#"{"count":0,"message":"Broadcast to 0 instances","message_ids":[],"skipped":[],"skipped_count":0,"status":"ok","truncated":false}"#,
    );
    legacy_register(&addr, "bob");
    legacy_register(&addr, "carol");
    assert_golden(
        &broadcast(""),
        &[],
        r#"{"count":2,"first_id":1,"last_id":2,"message":"Broadcast to 2 instances","message_ids":[1,2],"skipped":[],"skipped_count":0,"status":"ok","thread_id":1,"truncated":false}"#,
    );
    assert_golden(
        &broadcast(r#", "nonce": "b-1""#),
        &[],
        r#"{"count":2,"first_id":3,"last_id":4,"message":"Broadcast to 2 instances","message_ids":[3,4],"skipped":[],"skipped_count":0,"status":"ok","thread_id":3,"truncated":false}"#,
    );
    assert_golden(
        &broadcast(r#", "nonce": "b-1""#),
        &[],
        r#"{"duplicate":true,"message":"Duplicate nonce: already stored","message_id":3,"status":"ok"}"#,
    );
}

#[test]
fn check_empty_with_mail_and_with_more_than_fits() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    let check = format!(r#"{{"action": "check", "instance_id": "bob", "session_token": "{bob}"}}"#);
    assert_golden(
        &raw(&addr, &check),
        &[],
        r#"{"messages":[],"more":false,"status":"ok"}"#,
    );

    legacy_send(&addr, &alice, "bob", "plain");
    raw(
        &addr,
        &format!(
            r#"{{"action": "send", "session_token": "{alice}", "to_id": "bob", "message": {{"content": "with data", "data": {{"b": [1, 2], "a": "x"}}}}, "nonce": "n-7", "timestamp": "2026-01-01T12:00:30Z"}}"#
        ),
    );
    raw(
        &addr,
        &format!(
            r#"{{"action": "broadcast", "session_token": "{alice}", "message": {{"content": "to all"}}}}"#
        ),
    );
    assert_golden(
        &raw(&addr, &check),
        &[],
        r#"{"messages":[{"addressed_to":"bob","delivery_count":1,"from":"alice","id":1,"kind":"direct","message":{"content":"plain"},"thread_id":1,"timestamp":"2026-01-01T12:00:00.000Z","to":"bob"},{"addressed_to":"bob","delivery_count":1,"from":"alice","id":2,"kind":"direct","message":{"content":"with data","data":{"a":"x","b":[1,2]}},"nonce":"n-7","sender_timestamp":"2026-01-01T12:00:30.000Z","thread_id":2,"timestamp":"2026-01-01T12:00:00.000Z","to":"bob"},{"addressed_to":"bob","delivery_count":1,"from":"alice","id":3,"kind":"broadcast","message":{"content":"to all"},"thread_id":3,"timestamp":"2026-01-01T12:00:00.000Z","to":"bob"}],"more":false,"status":"ok"}"#,
    );

    // Four of these fill more than one reply's budget: three fit, and `more` says so.
    let filler = "x".repeat(9_000);
    for _ in 0..4 {
        legacy_send(&addr, &alice, "bob", &filler);
    }
    assert_golden(
        &raw(&addr, &check),
        &["content"],
        r#"{"messages":[{"addressed_to":"bob","delivery_count":1,"from":"alice","id":4,"kind":"direct","message":{"content":"<content>"},"thread_id":4,"timestamp":"2026-01-01T12:00:00.000Z","to":"bob"},{"addressed_to":"bob","delivery_count":1,"from":"alice","id":5,"kind":"direct","message":{"content":"<content>"},"thread_id":5,"timestamp":"2026-01-01T12:00:00.000Z","to":"bob"},{"addressed_to":"bob","delivery_count":1,"from":"alice","id":6,"kind":"direct","message":{"content":"<content>"},"thread_id":6,"timestamp":"2026-01-01T12:00:00.000Z","to":"bob"}],"more":true,"status":"ok"}"#,
    );
    assert_golden(
        &raw(&addr, &check),
        &["content"],
        r#"{"messages":[{"addressed_to":"bob","delivery_count":1,"from":"alice","id":7,"kind":"direct","message":{"content":"<content>"},"thread_id":7,"timestamp":"2026-01-01T12:00:00.000Z","to":"bob"}],"more":false,"status":"ok"}"#,
    );

    // Content over the large-message threshold arrives as a file named in `data`.
    legacy_send(&addr, &alice, "bob", &"y".repeat(12_000));
    let masks = ["content", "large_message_file"];
    assert_golden(
        &raw(&addr, &check),
        &masks,
        r#"{"messages":[{"addressed_to":"bob","delivery_count":1,"from":"alice","id":8,"kind":"direct","message":{"content":"<content>","data":{"large_message_file":"<large_message_file>","original_size_kb":11.7}},"thread_id":8,"timestamp":"2026-01-01T12:00:00.000Z","to":"bob"}],"more":false,"status":"ok"}"#,
    );
}

#[test]
fn check_with_manual_ack_then_ack_and_release() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    for text in ["one", "two"] {
        legacy_send(&addr, &alice, "bob", text);
    }
    let check = format!(
        r#"{{"action": "check", "session_token": "{bob}", "ack": "manual", "lease_ms": 30000}}"#
    );
    assert_golden(
        &raw(&addr, &check),
        &[],
        r#"{"ack":"manual","lease_until":"2026-01-01T12:00:30.000Z","messages":[{"addressed_to":"bob","delivery_count":1,"from":"alice","id":1,"kind":"direct","message":{"content":"one"},"thread_id":1,"timestamp":"2026-01-01T12:00:00.000Z","to":"bob"},{"addressed_to":"bob","delivery_count":1,"from":"alice","id":2,"kind":"direct","message":{"content":"two"},"thread_id":2,"timestamp":"2026-01-01T12:00:00.000Z","to":"bob"}],"more":false,"status":"ok"}"#,
    );
    let ack = format!(r#"{{"action": "ack", "session_token": "{bob}", "ids": [1, 1, 999]}}"#);
    assert_golden(
        &raw(&addr, &ack),
        &[],
        r#"{"acked":1,"already_acked":[1],"already_acked_count":1,"refused":[{"code":"unknown_message","id":999,"message":"no message 999 is addressed to you; ack only ids your check returned"}],"refused_count":1,"status":"ok","truncated":false}"#,
    );
    let release =
        format!(r#"{{"action": "ack", "session_token": "{bob}", "ids": [2, 1], "release": true}}"#);
    assert_golden(
        &raw(&addr, &release),
        &[],
        r#"{"already_acked":[1],"already_acked_count":1,"refused":[],"refused_count":0,"released":1,"status":"ok","truncated":false}"#,
    );
}

#[test]
fn list_whole_and_by_pages() {
    let broker = TestBroker::start();
    let (addr, alice, _bob) = broker.alice_and_bob();
    legacy_register(&addr, "carol");
    let list = format!(r#"{{"action": "list", "session_token": "{alice}"}}"#);
    assert_golden(
        &raw(&addr, &list),
        &[],
        r#"{"instances":[{"id":"alice","last_seen":"2026-01-01T12:00:00.000Z","online":true,"push":false},{"id":"bob","last_seen":"2026-01-01T12:00:00.000Z","online":true,"push":false},{"id":"carol","last_seen":"2026-01-01T12:00:00.000Z","online":true,"push":false}],"more":false,"status":"ok"}"#,
    );
    let page = format!(r#"{{"action": "list", "session_token": "{alice}", "limit": 2}}"#);
    assert_golden(
        &raw(&addr, &page),
        &[],
        r#"{"instances":[{"id":"alice","last_seen":"2026-01-01T12:00:00.000Z","online":true,"push":false},{"id":"bob","last_seen":"2026-01-01T12:00:00.000Z","online":true,"push":false}],"more":true,"next_after":"bob","status":"ok"}"#,
    );
    let next =
        format!(r#"{{"action": "list", "session_token": "{alice}", "limit": 2, "after": "bob"}}"#);
    assert_golden(
        &raw(&addr, &next),
        &[],
        r#"{"instances":[{"id":"carol","last_seen":"2026-01-01T12:00:00.000Z","online":true,"push":false}],"more":false,"status":"ok"}"#,
    );
}

#[test]
fn rename_count_and_logout() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    legacy_send(&addr, &alice, "bob", "one");
    legacy_send(&addr, &alice, "bob", "two");
    let count = format!(r#"{{"action": "count", "session_token": "{bob}"}}"#);
    assert_golden(
        &raw(&addr, &count),
        &[],
        r#"{"count":2,"senders":["alice"],"status":"ok"}"#,
    );
    let rename = format!(
        r#"{{"action": "rename", "session_token": "{alice}", "old_id": "alice", "new_id": "robert"}}"#
    );
    assert_golden(
        &raw(&addr, &rename),
        &[],
        r#"{"message":"Renamed alice to robert","new_id":"robert","old_id":"alice","status":"ok"}"#,
    );
    let logout = format!(r#"{{"action": "logout", "session_token": "{bob}"}}"#);
    assert_golden(
        &raw(&addr, &logout),
        &[],
        r#"{"instance_id":"bob","message":"Logged out bob","status":"ok"}"#,
    );
}

#[test]
fn challenge() {
    let broker = with_secret();
    let request = format!(
        r#"{{"action": "challenge", "instance_id": "alice", "client_nonce": "{}"}}"#,
        "ab".repeat(32)
    );
    let reply = raw(&broker.addr(), &request);
    assert_golden(
        &reply,
        &["challenge_id", "server_nonce", "server_proof", "client_uid"],
        r#"{"challenge_id":"<challenge_id>","client_uid":"<client_uid>","expires_in_ms":30000,"server_nonce":"<server_nonce>","server_proof":"<server_proof>","status":"ok"}"#,
    );
}

#[test]
fn refusals_of_malformed_requests() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    for (request, expected) in [
        (
            r#"{"action": ping}"#,
            r#"{"code":"invalid_json","message":"request is not valid JSON (expected value at line 1 column 12); send one JSON object per request","status":"error"}"#,
        ),
        (
            "[1, 2, 3]",
            r#"{"code":"not_an_object","message":"request must be a JSON object like {\"action\": \"ping\"}, not an array","status":"error"}"#,
        ),
        (
            r#"{"instance_id": "alice"}"#,
            r#"{"code":"missing_field","message":"request has no `action`; use one of: ping, challenge, register, send, broadcast, check, ack, list, rename, count, logout, watch, sent, thread, history, search","status":"error"}"#,
        ),
        (
            r#"{"action": 7}"#,
            r#"{"code":"invalid_field","message":"`action` must be a string, not the number 7","status":"error"}"#,
        ),
        (
            r#"{"action": "fly"}"#,
            r#"{"code":"unknown_action","message":"Unknown action: fly","status":"error"}"#,
        ),
        (
            r#"{"action": "register", "instance_id": "../etc"}"#,
            r#"{"code":"invalid_name","message":"Invalid instance ID format: `instance_id` must be 1-32 letters, digits, hyphens or underscores","status":"error"}"#,
        ),
        (
            r#"{"action": "register", "instance_id": "system"}"#,
            r#"{"code":"reserved_name","message":"`system` is reserved for broker notices; choose another name","status":"error"}"#,
        ),
        (
            r#"{"action": "list"}"#,
            r#"{"code":"invalid_session","message":"Invalid or missing session token","status":"error"}"#,
        ),
        (
            r#"{"action": "check", "session_token": "nope"}"#,
            r#"{"code":"invalid_session","message":"Invalid or missing session token","status":"error"}"#,
        ),
        (
            r#"{"action": "send", "session_token": "nope", "to_id": "bob"}"#,
            r#"{"code":"missing_field","message":"missing field `message` (an object like {\"content\": \"hi\"})","status":"error"}"#,
        ),
    ] {
        assert_golden(&raw(&addr, request), &[], expected);
    }
}

#[test]
fn refusals_of_the_rules() {
    let broker = TestBroker::start_with(|c| {
        c.limits.queue_cap = 1;
        c.limits.max_data_bytes = 100;
    });
    let (addr, alice, _bob) = broker.alice_and_bob();
    legacy_send(&addr, &alice, "bob", "fills the queue");
    let renamer = legacy_register(&addr, "renamer");
    raw(
        &addr,
        &format!(r#"{{"action": "rename", "session_token": "{renamer}", "new_id": "renamed"}}"#),
    );
    let big = "y".repeat(200);
    for (request, expected) in [
        (
            format!(
                r#"{{"action": "send", "session_token": "{alice}", "to_id": "bob", "message": {{"content": "no room"}}}}"#
            ),
            r#"{"code":"queue_full","message":"Message queue full for bob (1 message limit)","status":"error"}"#,
        ),
        (
            format!(
                r#"{{"action": "send", "session_token": "{alice}", "to_id": "carol", "message": {{"content": "x", "data": {{"blob": "{big}"}}}}}}"#
            ),
            r#"{"code":"data_too_large","message":"`message.data` is 211 bytes of JSON; the limit is 100. Put large payloads in `content`, which is stored as a file when large","status":"error"}"#,
        ),
        (
            format!(
                r#"{{"action": "send", "session_token": "{alice}", "to_id": "carol", "message": {{"content": "x"}}, "timestamp": "2020-01-01T00:00:00Z"}}"#
            ),
            r#"{"code":"stale_timestamp","message":"`timestamp` 2020-01-01T00:00:00.000Z is 189432000 s away from the broker's clock (limit 300 s); check this machine's clock","status":"error"}"#,
        ),
        (
            format!(r#"{{"action": "rename", "session_token": "{alice}", "new_id": "bob"}}"#),
            r#"{"code":"name_taken","message":"Instance bob already exists","status":"error"}"#,
        ),
        (
            format!(r#"{{"action": "rename", "session_token": "{alice}", "new_id": "alice"}}"#),
            r#"{"code":"same_name","message":"You are already named alice","status":"error"}"#,
        ),
        (
            format!(r#"{{"action": "rename", "session_token": "{renamer}", "new_id": "again"}}"#),
            r#"{"code":"rename_cooldown","message":"Rate limit: can rename again in 60 minutes","status":"error"}"#,
        ),
        (
            r#"{"action": "register", "instance_id": "alice", "takeover": false}"#.to_owned(),
            r#"{"code":"name_in_use","message":"alice is in use by another session (last active 0 s ago); pass --takeover (CLI) or takeover: true (MCP register) to replace it, or choose another name","status":"error"}"#,
        ),
    ] {
        assert_golden(&raw(&addr, &request), &[], expected);
    }
    // A legacy register replaces alice's session; the old token is told why.
    legacy_register(&addr, "alice");
    let check = format!(r#"{{"action": "check", "session_token": "{alice}"}}"#);
    assert_golden(
        &raw(&addr, &check),
        &[],
        r#"{"code":"session_replaced","hint":"this session was replaced at 2026-01-01 12:00:00 UTC by a new registration of alice (from uid:<uid>); register again with takeover to take the name back (CLI: `claude-ipc register alice --takeover`; MCP: register with takeover: true), only if the other holder is gone or should give it up","message":"Invalid or missing session token","replaced_at":"2026-01-01T12:00:00.000Z","status":"error"}"#,
    );
}

#[test]
fn refusal_of_a_wrong_static_token() {
    let broker = with_secret();
    let request = format!(
        r#"{{"action": "register", "instance_id": "bob", "auth_token": "{ALICE_S3CRET}"}}"#
    );
    assert_golden(
        &raw(&broker.addr(), &request),
        &[],
        r#"{"code":"invalid_auth","message":"Invalid auth token","status":"error"}"#,
    );
}

#[test]
fn refusal_of_a_request_over_the_size_limit() {
    let broker = TestBroker::start_with(|c| c.limits.max_request_bytes = 64 * 1024);
    let mut stream = TcpStream::connect(broker.addr()).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let huge = format!(
        r#"{{"action": "send", "to_id": "bob", "message": {{"content": "{}"}}}}"#,
        "x".repeat(100 * 1024)
    );
    // The broker may close while this is still being written; its reply is already sent.
    let _ = stream.write_all(huge.as_bytes());
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    assert_golden(
        &String::from_utf8(reply).unwrap(),
        &[],
        r#"{"code":"request_too_large","message":"request is larger than 65536 bytes (64 KiB), the most this broker takes in one request, message content included (counted as JSON text); the connection is closed. For longer content, write it to a file and send the file's path, or split it into several messages","status":"error"}"#,
    );
}

#[test]
fn sent_receipts_and_a_send_to_a_reserved_name() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    legacy_send(&addr, &alice, "bob", "one");
    legacy_send(&addr, &alice, "nobody", "two");
    legacy(
        &addr,
        &serde_json::json!({"action": "check", "session_token": bob, "ack": "manual"}),
    );
    assert_golden(
        &raw(
            &addr,
            &format!(r#"{{"action": "sent", "session_token": "{alice}", "ids": [1, 2, 9]}}"#),
        ),
        &[],
        r#"{"messages":[{"addressed_to":"bob","delivery_count":1,"id":1,"kind":"direct","read_at":"2026-01-01T12:00:00.000Z","sent_at":"2026-01-01T12:00:00.000Z","state":"read","to":"bob"},{"addressed_to":"nobody","delivery_count":0,"id":2,"kind":"direct","sent_at":"2026-01-01T12:00:00.000Z","state":"waiting","to":"nobody"}],"more":false,"refused":[{"code":"unknown_message","id":9,"message":"no message 9 sent by you is kept; ask only for ids your send or broadcast returned (delivered and expired mail is purged after a while)"}],"refused_count":1,"status":"ok"}"#,
    );
    assert_golden(
        &raw(
            &addr,
            &format!(
                r#"{{"action": "send", "session_token": "{alice}", "to_id": "system", "message": {{"content": "hi"}}}}"#
            ),
        ),
        &[],
        r#"{"code":"reserved_name","message":"`system` is a name reserved for the broker's own notices: no instance can ever hold it, so mail to it would never be read; nothing was sent. Send to an instance's name (`list` shows them)","status":"error"}"#,
    );
}

#[test]
fn history_pages_of_a_conversation() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    legacy(
        &addr,
        &serde_json::json!({"action": "send", "session_token": alice, "to_id": "bob",
                            "message": {"content": "Did the API change?"}, "subject": "the API"}),
    );
    broker.clock.advance(chrono::Duration::seconds(30));
    legacy(
        &addr,
        &serde_json::json!({"action": "send", "session_token": bob, "to_id": "alice",
                            "message": {"content": "Yes: see src/api.rs"}, "reply_to": 1}),
    );
    legacy_check(&addr, &bob);
    wait_until("bob's check is settled", || {
        broker.count("SELECT count(*) FROM messages WHERE delivered_at IS NOT NULL") == 1
    });
    legacy_send(&addr, &alice, "carol", "not with bob");
    assert_golden(
        &raw(
            &addr,
            &format!(
                r#"{{"action": "history", "session_token": "{alice}", "with": "bob", "limit": 1}}"#
            ),
        ),
        &[],
        r#"{"messages":[{"addressed_to":"alice","direction":"received","from":"bob","id":2,"kind":"direct","message":{"content":"Yes: see src/api.rs"},"peer":"bob","reply_to":1,"state":"waiting","subject":"the API","thread_id":1,"timestamp":"2026-01-01T12:00:30.000Z","to":"alice"}],"more":true,"next_cursor":"h2","status":"ok"}"#,
    );
    assert_golden(
        &raw(
            &addr,
            &format!(
                r#"{{"action": "history", "session_token": "{alice}", "with": "bob", "limit": 1, "cursor": "h2"}}"#
            ),
        ),
        &[],
        r#"{"messages":[{"addressed_to":"bob","direction":"sent","from":"alice","id":1,"kind":"direct","message":{"content":"Did the API change?"},"peer":"bob","state":"delivered","subject":"the API","thread_id":1,"timestamp":"2026-01-01T12:00:00.000Z","to":"bob"}],"more":false,"status":"ok"}"#,
    );
    assert_golden(
        &raw(
            &addr,
            &format!(r#"{{"action": "history", "session_token": "{alice}", "cursor": "2"}}"#),
        ),
        &[],
        r#"{"code":"invalid_field","message":"cursor `2` is not one this broker gave; start again without it (pass back the `next_cursor` of the previous `history` reply)","status":"error"}"#,
    );
}

#[test]
fn a_thread_by_pages_and_a_check_for_the_answers_to_one_message() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    let send = |token: &str, to: &str, content: &str, extra: &str| {
        raw(
            &addr,
            &format!(
                r#"{{"action": "send", "session_token": "{token}", "to_id": "{to}", "message": {{"content": "{content}"}}{extra}}}"#
            ),
        )
    };
    send(&alice, "bob", "frozen?", r#", "subject": "API""#);
    send(&bob, "alice", "lunch?", "");
    send(&bob, "alice", "yes", r#", "reply_to": 1"#);
    assert_golden(
        &raw(
            &addr,
            &format!(
                r#"{{"action": "thread", "session_token": "{alice}", "thread_id": 3, "limit": 1}}"#
            ),
        ),
        &[],
        r#"{"messages":[{"addressed_to":"bob","direction":"sent","from":"alice","id":1,"kind":"direct","message":{"content":"frozen?"},"peer":"bob","state":"waiting","subject":"API","thread_id":1,"timestamp":"2026-01-01T12:00:00.000Z","to":"bob"}],"more":true,"next_cursor":"dGhyZWFkOjE6MQ","status":"ok","subject":"API","thread_id":1}"#,
    );
    assert_golden(
        &raw(
            &addr,
            &format!(
                r#"{{"action": "thread", "session_token": "{alice}", "thread_id": 1, "cursor": "dGhyZWFkOjE6MQ"}}"#
            ),
        ),
        &[],
        r#"{"messages":[{"addressed_to":"alice","direction":"received","from":"bob","id":3,"kind":"direct","message":{"content":"yes"},"peer":"bob","reply_to":1,"state":"waiting","subject":"API","thread_id":1,"timestamp":"2026-01-01T12:00:00.000Z","to":"alice"}],"more":false,"status":"ok","subject":"API","thread_id":1}"#,
    );
    assert_golden(
        &raw(
            &addr,
            &format!(r#"{{"action": "check", "session_token": "{alice}", "reply_to": 1}}"#),
        ),
        &[],
        r#"{"messages":[{"addressed_to":"alice","delivery_count":1,"from":"bob","id":3,"kind":"direct","message":{"content":"yes"},"reply_to":1,"subject":"API","thread_id":1,"timestamp":"2026-01-01T12:00:00.000Z","to":"alice"}],"more":false,"status":"ok"}"#,
    );
    assert_golden(
        &raw(
            &addr,
            &format!(r#"{{"action": "thread", "session_token": "{alice}", "thread_id": 99}}"#),
        ),
        &[],
        r#"{"code":"unknown_thread","message":"no thread you took part in has that id (or it was purged after the history retention); name a thread, or a message in it, that your check, history, thread or search showed you","status":"error"}"#,
    );
}
