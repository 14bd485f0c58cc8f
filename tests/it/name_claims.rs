//! A name in use is not taken silently: two MCP servers of one name do not split its mail,
//! `register` over a live name is refused unless it asks to take over, the replaced holder is
//! told so (and an MCP server does not fight back), the legacy `register` keeps replacing,
//! and no name passes for `system` or for another instance by letter case.
use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use claude_ipc::client::{Client, ClientError};
use claude_ipc::clock::Clock;
use common::*;
use serde_json::{json, Value};

/// A broker on the real clock, for MCP servers (they stamp sends with real time).
fn real_clock_broker() -> TestBroker {
    TestBroker::start_with_clock(|_| {}, Clock::system())
}

fn mcp_for(broker: &TestBroker) -> McpProcess {
    McpProcess::start(&broker.addr(), &broker.data_dir(), &[], &[])
}

/// Sessions of `name` that are not revoked, as the broker's database holds them.
fn active_sessions(broker: &TestBroker, name: &str) -> i64 {
    broker.count(&format!(
        "SELECT count(*) FROM sessions WHERE instance_name = '{name}' AND revoked_at IS NULL"
    ))
}

/// The broker's refusal code and message for a typed-client call that must fail.
fn refusal<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (String, String) {
    match result {
        Err(ClientError::Broker { code, message, .. }) => (code.to_string(), message),
        other => panic!("expected a broker refusal, got {other:?}"),
    }
}

fn register_legacy(addr: &str, name: &str) -> Value {
    legacy(
        addr,
        &json!({"action": "register", "instance_id": name, "auth_token": ""}),
    )
}

fn register_new(addr: &str, name: &str, takeover: bool) -> Value {
    legacy(
        addr,
        &json!({"action": "register", "instance_id": name, "auth_token": "", "takeover": takeover}),
    )
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn run_cli(broker: &TestBroker, session: &Path, args: &[&str]) -> std::process::Output {
    cli(&broker.addr(), session, args)
}

#[test]
fn a_second_mcp_server_of_the_same_name_is_refused_and_all_mail_reaches_the_first() {
    let broker = real_clock_broker();
    let mut first = mcp_for(&broker);
    let mut second = mcp_for(&broker);
    first.ok("register", json!({"instance_id": "frontend"}));
    let refused = second.error("register", json!({"instance_id": "frontend"}));
    assert!(refused.contains("name_in_use"), "{refused}");
    assert!(
        refused.contains("frontend is in use by another session"),
        "{refused}"
    );
    assert!(refused.contains("takeover: true"), "{refused}");
    assert_eq!(active_sessions(&broker, "frontend"), 1);

    let backend = broker.register("backend");
    let mut client = broker.client();
    for i in 0..3 {
        client
            .send(&backend, "frontend", &format!("part {i}"), None, None)
            .unwrap();
    }
    let read = first.ok("check", json!({}));
    for i in 0..3 {
        assert!(read.contains(&format!("part {i}")), "{read}");
    }
    let other = second.error("check", json!({}));
    assert!(other.contains("Not registered"), "{other}");
    assert_eq!(
        broker.count(
            "SELECT count(*) FROM messages WHERE recipient = 'frontend' AND delivered_at IS NULL"
        ),
        0,
        "no mail is left for anyone else"
    );
}

#[test]
fn an_mcp_server_that_stops_frees_its_name_and_one_that_is_killed_does_not() {
    let broker = real_clock_broker();
    let mut first = mcp_for(&broker);
    first.ok("register", json!({"instance_id": "frontend"}));
    let backend = broker.register("backend");
    broker
        .client()
        .send(&backend, "frontend", "while you were away", None, None)
        .unwrap();
    // Stopped the way Claude Code stops it, it logs out: the name is free at once.
    assert!(first.terminate().success());
    assert_eq!(active_sessions(&broker, "frontend"), 0);
    let mut second = mcp_for(&broker);
    second.ok("register", json!({"instance_id": "frontend"}));
    let read = second.ok("check", json!({}));
    assert!(
        read.contains("while you were away"),
        "the mail waited: {read}"
    );
    // Killed, it cannot: the broker cannot tell a dead server from an idle one, so the name
    // stays in use until the live window passes or someone takes it over.
    second.kill_9();
    let mut third = mcp_for(&broker);
    let refused = third.error("register", json!({"instance_id": "frontend"}));
    assert!(refused.contains("name_in_use"), "{refused}");
}

#[test]
fn an_mcp_server_whose_name_was_taken_over_is_told_and_does_not_take_it_back() {
    let broker = real_clock_broker();
    let mut first = mcp_for(&broker);
    let mut second = mcp_for(&broker);
    first.ok("register", json!({"instance_id": "frontend"}));
    let took = second.ok(
        "register",
        json!({"instance_id": "frontend", "takeover": true}),
    );
    assert!(took.contains("Registered as frontend"), "{took}");

    let told = first.error("check", json!({}));
    assert!(told.contains("taken over"), "{told}");
    assert!(told.contains("this session was replaced at"), "{told}");
    assert!(told.contains("takeover: true"), "{told}");
    assert!(
        !first.log().contains("registering the same name again"),
        "{}",
        first.log()
    );
    // Every later call says the same, and still does not register again.
    let backend = broker.register("backend");
    let sent = first.error("send", json!({"to_id": "backend", "content": "me?"}));
    assert!(sent.contains("taken over"), "{sent}");
    assert_eq!(active_sessions(&broker, "frontend"), 1);
    assert!(broker.client().check(&backend).unwrap().messages.is_empty());

    // The name's mail goes to the server that took it over, and only there.
    broker
        .client()
        .send(&backend, "frontend", "for the new holder", None, None)
        .unwrap();
    let read = second.ok("check", json!({}));
    assert!(read.contains("for the new holder"), "{read}");
    assert!(first.error("check", json!({})).contains("taken over"));
}

#[test]
fn an_mcp_server_renewing_a_lost_session_does_not_take_a_live_name() {
    let broker = real_clock_broker();
    let mut mcp = mcp_for(&broker);
    mcp.ok("register", json!({"instance_id": "worker"}));
    // An operator revokes the server's session (docs/OPERATIONS.md), so the broker no longer
    // knows it; then someone registers the free name, and is using it.
    rusqlite::Connection::open(broker.db_path())
        .unwrap()
        .execute(
            "UPDATE sessions SET revoked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
             WHERE revoked_at IS NULL",
            [],
        )
        .unwrap();
    let holder = broker.register("worker");
    let told = mcp.error("check", json!({}));
    assert!(told.contains("name_in_use"), "{told}");
    assert!(
        told.contains("registering worker again was refused"),
        "{told}"
    );
    assert!(
        mcp.log().contains("registering the same name again"),
        "it did try once, without taking over: {}",
        mcp.log()
    );
    assert!(
        broker.client().check(&holder).is_ok(),
        "the new holder keeps its session"
    );
    assert_eq!(active_sessions(&broker, "worker"), 1);
}

#[test]
fn cli_register_of_a_live_name_is_refused_and_takeover_tells_the_old_session() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.session");
    let second = dir.path().join("second.session");
    let registered = run_cli(&broker, &first, &["register", "bob"]);
    assert!(registered.status.success(), "{}", stderr(&registered));
    // bob registering himself again, with his own session file, is not refused.
    let again = run_cli(&broker, &first, &["register", "bob"]);
    assert!(again.status.success(), "{}", stderr(&again));

    let refused = run_cli(&broker, &second, &["register", "bob"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    let said = stderr(&refused);
    assert!(said.contains("bob is in use by another session"), "{said}");
    assert!(said.contains("last active 0 s ago"), "{said}");
    assert!(said.contains("--takeover"), "{said}");
    assert!(said.contains("[name_in_use]"), "{said}");
    assert!(
        !second.exists(),
        "a refused register writes no session file"
    );
    let check = run_cli(&broker, &first, &["check"]);
    assert!(check.status.success(), "{}", stderr(&check));

    let took = run_cli(&broker, &second, &["register", "bob", "--takeover"]);
    assert!(took.status.success(), "{}", stderr(&took));
    let old = run_cli(&broker, &first, &["check"]);
    assert_eq!(old.status.code(), Some(1), "{}", stderr(&old));
    let said = stderr(&old);
    assert!(said.contains("Invalid or missing session token"), "{said}");
    assert!(said.contains("[session_replaced]"), "{said}");
    assert!(
        said.contains(
            "this session was replaced at 2026-01-01 12:00:00 UTC by a new registration of bob"
        ),
        "{said}"
    );
    assert!(
        said.contains("claude-ipc register bob --takeover"),
        "{said}"
    );
    let new = run_cli(&broker, &second, &["check"]);
    assert!(new.status.success(), "{}", stderr(&new));
}

#[test]
fn a_legacy_register_still_replaces_a_live_session_and_the_old_holder_is_told() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let first = legacy_register(&addr, "alice");
    assert_eq!(legacy_check(&addr, &first)["status"], "ok");
    let reply = register_legacy(&addr, "alice");
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(reply["message"], "Registered alice");
    let second = reply["session_token"].as_str().unwrap().to_owned();

    // The record of the replacement outlives a sweep, so the old holder learns why.
    broker.sweep();
    let old = legacy_check(&addr, &first);
    assert_eq!(old["status"], "error", "{old}");
    assert_eq!(old["code"], "session_replaced", "{old}");
    assert_eq!(old["message"], "Invalid or missing session token");
    let hint = old["hint"].as_str().unwrap();
    assert!(
        hint.contains("replaced at 2026-01-01 12:00:00 UTC"),
        "{hint}"
    );
    assert!(hint.contains("a new registration of alice"), "{hint}");
    assert!(!hint.contains(&second), "no token in the hint: {hint}");
    assert_eq!(old["replaced_at"], "2026-01-01T12:00:00.000Z");
    assert_eq!(legacy_check(&addr, &second)["status"], "ok");
    let recorded = broker.count(
        "SELECT count(*) FROM sessions WHERE instance_name = 'alice' AND replaced_by IS NOT NULL",
    );
    assert_eq!(recorded, 1);
}

#[test]
fn replaced_sessions_are_kept_only_a_few_per_name_and_swept_once_idle() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let first = legacy_register(&addr, "loop");
    for _ in 0..30 {
        legacy_register(&addr, "loop");
    }
    let kept = broker.count("SELECT count(*) FROM sessions WHERE instance_name = 'loop'");
    assert!(kept <= 9, "at most 8 replaced and the live one: {kept}");
    assert_eq!(active_sessions(&broker, "loop"), 1);
    // The oldest were forgotten: their holder sees a plain invalid session.
    assert_eq!(legacy_check(&addr, &first)["code"], "invalid_session");

    broker
        .clock
        .advance(chrono::Duration::hours(24) + chrono::Duration::seconds(1));
    broker.sweep();
    assert_eq!(
        broker.count("SELECT count(*) FROM sessions WHERE replaced_by IS NOT NULL"),
        0
    );
}

#[test]
fn a_session_revoked_by_an_operator_is_plainly_invalid_and_swept() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let token = legacy_register(&addr, "alice");
    rusqlite::Connection::open(broker.db_path())
        .unwrap()
        .execute(
            "UPDATE sessions SET revoked_at = '2026-01-01T12:00:00.000Z' WHERE revoked_at IS NULL",
            [],
        )
        .unwrap();
    assert_eq!(legacy_check(&addr, &token)["code"], "invalid_session");
    broker.sweep();
    assert_eq!(broker.count("SELECT count(*) FROM sessions"), 0);
}

#[test]
fn a_session_idle_longer_than_the_live_window_can_be_registered_over_without_takeover() {
    let broker = TestBroker::start();
    let holder = broker.register("alice");
    let mut client = broker.client();
    broker.clock.advance(chrono::Duration::minutes(4));
    let (code, message) = refusal(client.register("alice", None));
    assert_eq!(code, "name_in_use");
    assert!(message.contains("last active 240 s ago"), "{message}");
    assert!(client.list(&holder).is_ok(), "a refusal replaces nothing");

    // list was a use: the window counts from it.
    broker.clock.advance(chrono::Duration::minutes(5));
    assert_eq!(refusal(client.register("alice", None)).0, "name_in_use");
    broker.clock.advance(chrono::Duration::seconds(1));
    let took = client
        .register("alice", None)
        .expect("idle past the window");
    assert_eq!(
        refusal(client.list(&holder)).0,
        "session_replaced",
        "the idle holder is told it was replaced"
    );
    assert!(client.list(&took.session_token).is_ok());
}

#[test]
fn the_live_window_is_a_serve_flag() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::spawn(&dir.path().join("data"), &["--name-live-window", "1s"]);
    let mut client = broker.client();
    client.register("alice", None).unwrap();
    assert_eq!(refusal(client.register("alice", None)).0, "name_in_use");
    std::thread::sleep(Duration::from_millis(2100));
    assert!(client.register("alice", None).is_ok());
}

#[test]
fn a_session_waiting_for_mail_is_in_use_and_its_wait_learns_of_a_takeover() {
    let broker = TestBroker::start();
    let holder = broker.register("alice");
    let addr = broker.addr();
    let waiter = {
        let holder = holder.clone();
        std::thread::spawn(move || {
            let mut client = Client::connect(&addr, TIMEOUT).unwrap();
            let result = client.count_waiting(&holder, Duration::from_secs(30));
            (result, Instant::now())
        })
    };
    let mut client = broker.client();
    let waiting_refusal = |client: &mut Client| {
        matches!(
            client.register("alice", None),
            Err(ClientError::Broker { ref code, ref message, .. })
                if code == "name_in_use" && message.contains("now: it is waiting for mail")
        )
    };
    wait_until("the wait is open", || waiting_refusal(&mut client));
    // Long past the window by the broker's clock, but the holder is waiting for mail.
    broker.clock.advance(chrono::Duration::hours(1));
    assert!(waiting_refusal(&mut client), "an open wait is use");
    let taking_over = Instant::now();
    client.register_with("alice", None, true).unwrap();
    let (result, answered) = waiter.join().unwrap();
    assert_eq!(refusal(result).0, "session_replaced");
    let took = answered.saturating_duration_since(taking_over);
    assert!(
        took < PROMPTLY,
        "the takeover woke the 30 s wait, {took:?} after it"
    );
}

#[test]
fn registering_with_the_names_own_session_token_is_not_refused() {
    let broker = TestBroker::start();
    let mut client = broker.client();
    let first = client.register("alice", None).unwrap().session_token;
    let again = client
        .register_as("alice", None, false, Some(&first))
        .expect("its own holder registers again");
    assert_ne!(again.session_token, first);
    // Another name's token, or a stale one, is no proof of holding alice.
    let bob = client.register("bob", None).unwrap().session_token;
    let (code, _) = refusal(client.register_as("alice", None, false, Some(&bob)));
    assert_eq!(code, "name_in_use");
    let (code, _) = refusal(client.register_as("alice", None, false, Some(&first)));
    assert_eq!(code, "name_in_use");
}

#[test]
fn system_is_reserved_in_every_letter_case() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    // Every letter case, and the look-alikes a quick reader takes for it.
    for name in [
        "system", "System", "SYSTEM", "sYsTeM", "sys_tem", "5ystem", "systern",
    ] {
        for reply in [
            register_legacy(&addr, name),
            register_new(&addr, name, false),
            register_new(&addr, name, true),
        ] {
            assert_eq!(reply["code"], "reserved_name", "{name}: {reply}");
        }
    }
    let alice = legacy_register(&addr, "alice");
    for name in ["System", "SYSTEM", "Sys-Tem", "syst3m"] {
        let reply = legacy(
            &addr,
            &json!({"action": "rename", "session_token": alice, "new_id": name}),
        );
        assert_eq!(reply["code"], "reserved_name", "{name}: {reply}");
    }
    assert_eq!(broker.count("SELECT count(*) FROM instances"), 1);
}

#[test]
fn a_name_differing_only_in_case_from_an_instance_is_refused() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    legacy_register(&addr, "alice");
    for reply in [
        register_new(&addr, "Alice", false),
        register_new(&addr, "ALICE", true),
        register_legacy(&addr, "aLiCe"),
    ] {
        assert_eq!(reply["code"], "name_too_similar", "{reply}");
        let message = reply["message"].as_str().unwrap();
        assert!(message.contains("differs only in letter case"), "{message}");
        assert!(message.contains("`alice`"), "{message}");
    }
    let bob = legacy_register(&addr, "bob");
    let reply = legacy(
        &addr,
        &json!({"action": "rename", "session_token": bob, "new_id": "Alice"}),
    );
    assert_eq!(reply["code"], "name_too_similar", "{reply}");
    assert_eq!(
        broker.count("SELECT count(*) FROM instances WHERE name = 'alice' COLLATE NOCASE"),
        1
    );
    // A name that differs in more than case is fine.
    assert_eq!(register_new(&addr, "Alicia", false)["status"], "ok");
}

#[test]
fn a_replaced_session_keeps_the_name_it_was_replaced_in_when_the_new_holder_renames() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let old = legacy_register(&addr, "alice");
    let new = legacy_register(&addr, "alice");
    // Renaming to your own name in another case fools nobody: it is allowed.
    let renamed = legacy(
        &addr,
        &json!({"action": "rename", "session_token": new, "new_id": "Alice"}),
    );
    assert_eq!(renamed["status"], "ok", "{renamed}");
    let told = legacy_check(&addr, &old);
    assert_eq!(told["code"], "session_replaced", "{told}");
    let hint = told["hint"].as_str().unwrap();
    assert!(hint.contains("a new registration of alice "), "{hint}");
    assert_eq!(legacy_check(&addr, &new)["status"], "ok");
    assert_eq!(active_sessions(&broker, "Alice"), 1);
}
