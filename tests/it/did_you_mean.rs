//! Typos and dead ends over the wire: a send to a name nobody ever registered that is close to
//! a registered one carries `did_you_mean` (and the CLI and MCP texts say it), while the mail
//! still waits for the name it was sent to; a name once in use, a far name or a live forward
//! get no suggestion; mail to a reserved name is refused and nothing is stored.

use crate::common;

use chrono::Duration as Span;
use common::{legacy, McpProcess, TestBroker};
use serde_json::{json, Value};

fn send(addr: &str, token: &str, to: &str) -> Value {
    legacy(
        addr,
        &json!({"action": "send", "session_token": token, "to_id": to,
                "message": {"content": "hi"}}),
    )
}

#[test]
fn a_near_miss_of_a_registered_name_gets_a_suggestion_and_the_mail_still_waits() {
    let broker = TestBroker::start();
    let (addr, alice, _bob) = broker.alice_and_bob();
    broker.register("carol");

    let typo = send(&addr, &alice, "bbo");
    assert_eq!(typo["status"], "ok", "{typo}");
    assert_eq!(typo["did_you_mean"], "bob");
    assert_eq!(
        typo["message"],
        "Message queued for bbo (not yet registered)"
    );
    assert_eq!(typo["recipient"], "bbo");
    assert_eq!(
        broker.count("SELECT count(*) FROM messages WHERE recipient = 'bbo'"),
        1,
        "the mail waits for the name it was sent to"
    );
    assert_eq!(send(&addr, &alice, "carl")["did_you_mean"], "carol");
    assert_eq!(
        send(&addr, &alice, "Bob")["did_you_mean"],
        "bob",
        "a case variant"
    );

    for no_suggestion in ["bob", "zed", "bo", "nobody"] {
        let reply = send(&addr, &alice, no_suggestion);
        assert_eq!(reply["status"], "ok", "{reply}");
        assert!(
            reply.get("did_you_mean").is_none(),
            "{no_suggestion}: {reply}"
        );
    }
}

#[test]
fn a_name_that_was_in_use_is_not_second_guessed() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    broker.client().rename(&bob, "bobs").expect("rename");
    // Within the forward, mail to `bob` follows it to `bobs`.
    let forwarded = send(&addr, &alice, "bob");
    assert_eq!(forwarded["recipient"], "bobs");
    assert!(forwarded.get("did_you_mean").is_none(), "{forwarded}");
    // After it ran out (and before the sweeper dropped it) `bob` is queued for as a name
    // once used, not offered `bobs` as a typo (which a never-seen `bob` would be).
    broker.clock.advance(Span::hours(3));
    let queued = send(&addr, &alice, "bob");
    assert_eq!(
        queued["message"],
        "Message queued for bob (not yet registered)"
    );
    assert!(queued.get("did_you_mean").is_none(), "{queued}");
    assert_eq!(send(&addr, &alice, "bobz")["did_you_mean"], "bobs");
}

#[test]
fn mail_to_a_reserved_name_is_refused_and_nothing_is_stored() {
    let broker = TestBroker::start();
    let (addr, alice, _bob) = broker.alice_and_bob();
    for reserved in ["system", "System", "sys_tem", "5ystem"] {
        let reply = send(&addr, &alice, reserved);
        assert_eq!(reply["status"], "error", "{reserved}: {reply}");
        assert_eq!(reply["code"], "reserved_name");
        let message = reply["message"].as_str().unwrap();
        assert!(message.contains("reserved"), "{message}");
        assert!(message.contains("nothing was sent"), "{message}");
    }
    assert_eq!(broker.count("SELECT count(*) FROM messages"), 0);
    assert_eq!(send(&addr, &alice, "bob")["status"], "ok", "still serving");
}

#[test]
fn the_cli_and_the_mcp_send_say_did_you_mean() {
    let broker = TestBroker::start_on_wall_clock();
    broker.register("bob");
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("alice.session");
    let run = |args: &[&str]| common::cli(&broker.addr(), &session, args);
    assert!(run(&["register", "alice"]).status.success());

    let output = run(&["send", "bbo", "hi"]);
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains(
            "no instance named 'bbo' has registered yet; did you mean 'bob'? The mail will wait up to 7 days for 'bbo'."
        ),
        "{stdout}"
    );
    let json: Value =
        serde_json::from_slice(&run(&["send", "bbo", "again", "--json"]).stdout).unwrap();
    assert_eq!(json["did_you_mean"], "bob");
    let refused = run(&["send", "system", "hi"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8(refused.stderr).unwrap();
    assert!(stderr.contains("reserved_name"), "{stderr}");

    let mut mcp = McpProcess::start(&broker.addr(), &broker.data_dir(), &[], &[]);
    mcp.ok("register", json!({"instance_id": "dave"}));
    let said = mcp.ok("send", json!({"to_id": "bbo", "content": "hi"}));
    assert!(
        said.contains(
            "(message id 3); no instance named 'bbo' has registered yet; did you mean 'bob'?"
        ),
        "{said}"
    );
    let error = mcp.error("send", json!({"to_id": "system", "content": "hi"}));
    assert!(error.contains("reserved"), "{error}");
}
