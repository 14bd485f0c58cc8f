//! Full-text search (`search`) over the wire against a real broker: phrases, prefixes and
//! boolean queries; the filters; bm25 ranking with the subject above the content; snippets;
//! paging; malformed and hostile queries refused with `invalid_query` while the broker stays
//! up; privacy between three parties; the index following deleted mail, renames and restarts.

use crate::common;

use std::time::Duration;

use chrono::Duration as Span;
use claude_ipc::protocol::schema::{SearchReply, SearchRequest};
use claude_ipc::protocol::REPLY_BUDGET;
use common::{legacy, legacy_check, legacy_raw, McpProcess, TestBroker};
use serde_json::{json, Value};

/// Sends `content` (with `subject`, if any) and returns the message id.
fn send(addr: &str, token: &str, to: &str, content: &str, subject: Option<&str>) -> i64 {
    let mut request = json!({"action": "send", "session_token": token, "to_id": to,
        "message": {"content": content}});
    if let Some(subject) = subject {
        request["subject"] = json!(subject);
    }
    let reply = legacy(addr, &request);
    assert_eq!(reply["status"], "ok", "{reply}");
    reply["message_id"].as_i64().expect("message_id")
}

/// The raw reply to a search by `token` with `extra` fields.
fn search_raw(addr: &str, token: &str, query: &str, extra: Value) -> Value {
    let mut request = json!({"action": "search", "session_token": token, "query": query});
    if let Value::Object(fields) = extra {
        for (key, value) in fields {
            request[key] = value;
        }
    }
    legacy(addr, &request)
}

/// The ids found, best first.
fn found(addr: &str, token: &str, query: &str) -> Vec<i64> {
    found_with(addr, token, query, json!({}))
}

fn found_with(addr: &str, token: &str, query: &str, extra: Value) -> Vec<i64> {
    let reply = search_raw(addr, token, query, extra);
    assert_eq!(reply["status"], "ok", "{query}: {reply}");
    ids(&reply)
}

fn ids(reply: &Value) -> Vec<i64> {
    reply["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["message"]["id"].as_i64().expect("id"))
        .collect()
}

fn sorted(mut ids: Vec<i64>) -> Vec<i64> {
    ids.sort_unstable();
    ids
}

#[test]
fn words_phrases_prefixes_and_operators_find_exactly_the_matching_mail() {
    let broker = TestBroker::start();
    let (addr, alice, _bob) = broker.alice_and_bob();
    let rate = send(&addr, &alice, "bob", "the rate limit is too low", None);
    let limit = send(&addr, &alice, "bob", "limit the rate of retries", None);
    let deploy = send(&addr, &alice, "bob", "deployment went fine", None);
    let draft = send(&addr, &alice, "bob", "draft of the deploy notes", None);
    let cafe = send(&addr, &alice, "bob", "meet at the Café Müller", None);

    assert_eq!(sorted(found(&addr, &alice, "rate")), [rate, limit]);
    assert_eq!(found(&addr, &alice, "\"rate limit\""), [rate]);
    assert_eq!(sorted(found(&addr, &alice, "deploy*")), [deploy, draft]);
    assert_eq!(found(&addr, &alice, "deploy"), [draft]);
    assert_eq!(found(&addr, &alice, "deploy* NOT draft"), [deploy]);
    assert_eq!(found(&addr, &alice, "deploy* AND notes"), [draft]);
    assert_eq!(found(&addr, &alice, "deploy* notes"), [draft]);
    assert_eq!(
        sorted(found(&addr, &alice, "retries OR deployment")),
        [limit, deploy]
    );
    assert_eq!(
        sorted(found(&addr, &alice, "(retries OR notes) the")),
        [limit, draft]
    );
    // Case and diacritics are folded; lower-case operators are words.
    assert_eq!(found(&addr, &alice, "cafe MULLER"), [cafe]);
    assert_eq!(found(&addr, &alice, "rate and limit"), Vec::<i64>::new());
    assert!(found(&addr, &alice, "nothing-like-this").is_empty());
}

#[test]
fn the_subject_is_searched_and_ranks_above_the_content() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    let once = send(&addr, &alice, "bob", "we should look at the schema", None);
    let both = send(
        &addr,
        &alice,
        "bob",
        "the schema needs a new column",
        Some("schema change"),
    );
    let subject_only = send(
        &addr,
        &bob,
        "alice",
        "see the title",
        Some("Quarterly budget"),
    );
    assert_eq!(found(&addr, &alice, "schema"), [both, once]);
    assert_eq!(found(&addr, &bob, "budget"), [subject_only]);

    let reply = search_raw(&addr, &alice, "schema", json!({}));
    let results = reply["results"].as_array().unwrap();
    assert_eq!(results[0]["rank"], 1);
    assert_eq!(results[1]["rank"], 2);
    assert!(
        results[0].get("score").is_none(),
        "index-wide statistics stay inside"
    );
    assert_eq!(results[0]["message"]["subject"], "schema change");
    assert_eq!(results[0]["message"]["direction"], "sent");
    assert_eq!(results[0]["message"]["from"], "alice");
    assert_eq!(results[0]["message"]["to"], "bob");
}

#[test]
fn snippets_mark_the_matched_words_in_the_content_or_else_the_subject() {
    let broker = TestBroker::start();
    let (addr, alice, _bob) = broker.alice_and_bob();
    send(
        &addr,
        &alice,
        "bob",
        "Before the release we must rotate the signing keys and tell everyone",
        Some("keys"),
    );
    send(&addr, &alice, "bob", "nothing here", Some("Offsite agenda"));
    let reply = search_raw(&addr, &alice, "rotat* keys", json!({}));
    let snippet = reply["results"][0]["snippet"].as_str().unwrap();
    assert!(snippet.contains("[rotate]"), "{snippet}");
    assert!(snippet.contains("[keys]"), "{snippet}");
    assert!(!snippet.contains('\u{E000}'), "{snippet}");
    let reply = search_raw(&addr, &alice, "agenda", json!({}));
    assert_eq!(reply["results"][0]["snippet"], "Offsite [agenda]");
}

#[test]
fn filters_narrow_by_sender_recipient_thread_and_time() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    let carol = broker.register("carol");
    let to_bob = send(&addr, &alice, "bob", "status report one", None);
    let from_bob = send(&addr, &bob, "alice", "status report two", None);
    let to_carol = send(&addr, &alice, "carol", "status report three", None);
    broker.clock.advance(Span::hours(2));
    let later = send(&addr, &carol, "alice", "status report four", None);
    let reply = legacy(
        &addr,
        &json!({"action": "send", "session_token": bob, "to_id": "alice",
                "message": {"content": "status report five"}, "reply_to": to_bob}),
    );
    assert_eq!(reply["status"], "ok", "{reply}");
    let in_thread = reply["message_id"].as_i64().unwrap();

    let all = sorted(found(&addr, &alice, "status"));
    assert_eq!(all, [to_bob, from_bob, to_carol, later, in_thread]);
    let from = |name: &str| sorted(found_with(&addr, &alice, "status", json!({"from": name})));
    assert_eq!(from("alice"), [to_bob, to_carol]);
    assert_eq!(from("bob"), [from_bob, in_thread]);
    let to = sorted(found_with(&addr, &alice, "report", json!({"to": "carol"})));
    assert_eq!(to, [to_carol]);
    let both = found_with(
        &addr,
        &alice,
        "report",
        json!({"from": "carol", "to": "alice"}),
    );
    assert_eq!(both, [later]);
    let thread = sorted(found_with(
        &addr,
        &alice,
        "status",
        json!({"thread_id": to_bob}),
    ));
    assert_eq!(thread, [to_bob, in_thread]);
    let since = sorted(found_with(
        &addr,
        &alice,
        "status",
        json!({"since": "2026-01-01T13:00:00Z"}),
    ));
    assert_eq!(since, [later, in_thread]);
    // An offset in the time is read as the moment it names.
    let since = found_with(
        &addr,
        &alice,
        "four",
        json!({"since": "2026-01-01T14:59:00+01:00"}),
    );
    assert_eq!(since, [later]);

    let bad = search_raw(&addr, &alice, "status", json!({"since": "last tuesday"}));
    assert_eq!(bad["code"], "invalid_field", "{bad}");
    assert!(bad["message"].as_str().unwrap().contains("RFC 3339"));
    let bad = search_raw(&addr, &alice, "status", json!({"from": "not a name!"}));
    assert_eq!(bad["code"], "invalid_field", "{bad}");
}

#[test]
fn a_third_party_never_finds_another_pairs_mail() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    let carol = broker.register("carol");
    let secret = send(
        &addr,
        &alice,
        "bob",
        "the merger codename is bluebird",
        Some("merger"),
    );
    send(&addr, &bob, "alice", "bluebird acknowledged", None);
    let own = send(
        &addr,
        &carol,
        "alice",
        "is there news about bluebird?",
        None,
    );

    assert_eq!(found(&addr, &carol, "bluebird"), [own]);
    for filters in [
        json!({"from": "alice"}),
        json!({"to": "bob"}),
        json!({"from": "bob", "to": "alice"}),
        json!({"thread_id": secret}),
    ] {
        assert!(
            found_with(&addr, &carol, "bluebird OR merger", filters.clone()).is_empty(),
            "{filters}"
        );
    }
    assert!(found(&addr, &carol, "merger").is_empty());
    assert!(found(&addr, &carol, "codename").is_empty());
    // Alice and bob each find what they sent and received.
    assert_eq!(found(&addr, &bob, "bluebird").len(), 2);
    assert_eq!(found(&addr, &alice, "bluebird").len(), 3);
}

#[test]
fn malformed_and_hostile_queries_get_invalid_query_and_the_broker_stays_up() {
    let broker = TestBroker::start();
    let (addr, alice, _bob) = broker.alice_and_bob();
    send(
        &addr,
        &alice,
        "bob",
        "content subject parties rowid near",
        Some("subject"),
    );
    let long = "x".repeat(10_000);
    let hostile = [
        ("", "empty"),
        ("   ", "empty"),
        ("\"unclosed phrase", "never closed"),
        ("\"", "never closed"),
        ("(((", "ends where a term"),
        ("(a b", "never closed"),
        ("a b)", "no `(`"),
        ("x OR", "OR at the end"),
        ("AND AND", "AND needs a term before it"),
        ("NOT x", "NOT needs something"),
        ("*", "must follow a word"),
        ("\"a\" *", "must follow a word"),
        ("a*", "at least 2"),
        ("^", "no letters or digits"),
        ("ab\u{0}cd", "control character"),
        (long.as_str(), "10000 characters"),
    ];
    for (query, problem) in hostile {
        let reply = search_raw(&addr, &alice, query, json!({}));
        assert_eq!(reply["status"], "error", "{query:?}: {reply}");
        assert_eq!(reply["code"], "invalid_query", "{query:?}: {reply}");
        let message = reply["message"].as_str().unwrap();
        assert!(message.contains(problem), "{query:?}: {message}");
        assert!(
            message.contains("\"exact phrases\""),
            "{query:?}: {message}"
        );
        for leak in ["fts5", "SQL", "syntax error", "search_index", "parties :"] {
            assert!(!message.contains(leak), "{query:?}: {message}");
        }
    }
    let too_many = vec!["w"; 17].join(" ");
    let reply = search_raw(&addr, &alice, &too_many, json!({}));
    assert_eq!(reply["code"], "invalid_query", "{reply}");

    // FTS5's own syntax is plain text here: it finds words, never columns or hidden tokens.
    for query in [
        "content:x",
        "subject:subject",
        "{subject}:x",
        "NEAR(content subject)",
        "parties:v",
        "rowid",
        "x+y",
        "-subject",
    ] {
        let reply = search_raw(&addr, &alice, query, json!({}));
        assert_eq!(reply["status"], "ok", "{query:?}: {reply}");
    }
    assert_eq!(found(&addr, &alice, "rowid").len(), 1);
    assert!(found(&addr, &alice, "parties:v").is_empty());
    assert!(found(&addr, &alice, "v616C696365").is_empty());

    let raw = legacy_raw(
        &addr,
        br#"{"action":"search","session_token":"x","query":7}"#,
    );
    assert!(String::from_utf8_lossy(&raw).contains("invalid_field"));
    let reply = legacy(&addr, &json!({"action": "search", "query": "x"}));
    assert_eq!(reply["status"], "error");
    assert_eq!(reply["message"], "Invalid or missing session token");
    // Still serving.
    assert_eq!(found(&addr, &alice, "near").len(), 1);
}

#[test]
fn pages_follow_the_cursor_without_repeats_and_reading_changes_nothing() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    let mut sent = Vec::new();
    for i in 0..7 {
        sent.push(send(
            &addr,
            &alice,
            "bob",
            &format!("invoice number {i}"),
            None,
        ));
    }
    let mut seen = Vec::new();
    let mut cursor = None::<String>;
    loop {
        let mut extra = json!({"limit": 3});
        if let Some(cursor) = &cursor {
            extra["cursor"] = json!(cursor);
        }
        let reply = search_raw(&addr, &bob, "invoice", extra);
        assert_eq!(reply["status"], "ok", "{reply}");
        let page = ids(&reply);
        seen.extend(page.iter().copied());
        if reply["more"] == false {
            assert!(reply.get("next_cursor").is_none(), "{reply}");
            break;
        }
        assert_eq!(page.len(), 3);
        cursor = Some(reply["next_cursor"].as_str().unwrap().to_owned());
    }
    assert_eq!(sorted(seen), sent);
    // Nothing was delivered by searching: bob's check still gets every message.
    assert_eq!(common::contents(&legacy_check(&addr, &bob)).len(), 7);

    for bad in [
        json!({"limit": 0}),
        json!({"limit": 101}),
        json!({"cursor": "bogus"}),
    ] {
        let reply = search_raw(&addr, &bob, "invoice", bad.clone());
        assert_eq!(reply["code"], "invalid_field", "{bad}: {reply}");
    }
    let reply = search_raw(&addr, &bob, "invoice", json!({"cursor": "bogus"}));
    assert_eq!(
        reply["message"],
        "cursor is not one this broker gave; start again without it"
    );
}

#[test]
fn a_page_of_long_matches_stays_under_the_reply_budget() {
    let broker = TestBroker::start();
    let (addr, alice, _bob) = broker.alice_and_bob();
    let long = format!("needle {}", "hay ".repeat(2_000));
    for _ in 0..12 {
        send(&addr, &alice, "bob", &long, None);
    }
    let raw = legacy_raw(
        &addr,
        json!({"action": "search", "session_token": alice, "query": "needle", "limit": 100})
            .to_string()
            .as_bytes(),
    );
    assert!(raw.len() < REPLY_BUDGET, "{} bytes", raw.len());
    let reply: Value = serde_json::from_slice(&raw).unwrap();
    let shown = reply["results"].as_array().unwrap().len();
    assert!((1..12).contains(&shown), "{shown}");
    assert_eq!(reply["more"], true);
    let next = search_raw(
        &addr,
        &alice,
        "needle",
        json!({"limit": 100, "cursor": reply["next_cursor"]}),
    );
    assert_eq!(next["results"][0]["rank"], shown + 1);
}

#[test]
fn deleted_mail_leaves_the_index() {
    // Alice's session must outlive the week this test spans.
    let broker = TestBroker::start_with(|config| {
        config.limits.session_idle_expiry = Duration::from_secs(60 * 86_400)
    });
    let addr = broker.addr();
    let alice = broker.register("alice");
    send(&addr, &alice, "nobody", "walrus migration plan", None);
    assert_eq!(found(&addr, &alice, "walrus").len(), 1);
    let in_index = "SELECT count(*) FROM search_index WHERE search_index MATCH 'walrus'";
    assert_eq!(broker.count(in_index), 1);

    // Nobody registered `nobody`: after a week the sweeper removes the mail.
    broker.clock.advance(Span::days(7) + Span::minutes(1));
    assert_eq!(broker.sweep().future_mail, 1);
    assert!(found(&addr, &alice, "walrus").is_empty());
    assert_eq!(broker.count(in_index), 0);
    assert_eq!(broker.count("SELECT count(*) FROM search_index_docsize"), 0);
}

#[test]
fn a_rename_takes_the_mail_along_and_a_restart_keeps_the_index() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    let id = send(&addr, &alice, "bob", "lighthouse keeper", None);
    let reply = legacy(
        &addr,
        &json!({"action": "rename", "session_token": bob, "new_id": "robert"}),
    );
    assert_eq!(reply["status"], "ok", "{reply}");
    let robert = reply["session_token"]
        .as_str()
        .map_or(bob.clone(), str::to_owned);
    assert_eq!(found(&addr, &robert, "lighthouse"), [id]);
    assert_eq!(
        found_with(&addr, &alice, "lighthouse", json!({"to": "robert"})),
        [id]
    );
    assert!(found_with(&addr, &alice, "lighthouse", json!({"to": "bob"})).is_empty());
    // A newcomer under the old name finds nothing of it.
    let new_bob = broker.register("bob");
    assert!(found(&addr, &new_bob, "lighthouse").is_empty());

    // Sessions are kept across a restart.
    let broker = broker.restart();
    let addr = broker.addr();
    assert_eq!(found(&addr, &alice, "lighthouse"), [id]);
    let fresh = send(&addr, &alice, "robert", "lighthouse lamp", None);
    assert_eq!(sorted(found(&addr, &alice, "lighthouse")), [id, fresh]);
}

#[test]
fn the_typed_client_searches_too() {
    let broker = TestBroker::start();
    let (addr, alice, _bob) = broker.alice_and_bob();
    let id = send(&addr, &alice, "bob", "typed search", Some("hello"));
    let reply: SearchReply = broker
        .client()
        .search(&SearchRequest {
            session_token: alice.clone(),
            query: "typed".into(),
            limit: Some(5),
            ..SearchRequest::default()
        })
        .expect("search");
    assert_eq!(reply.results.len(), 1);
    assert_eq!(reply.results[0].message.id.0, id);
    assert_eq!(reply.results[0].snippet, "[typed] search");
    assert!(!reply.more);
    let refused = broker.client().search(&SearchRequest {
        session_token: alice,
        query: "(".into(),
        ..SearchRequest::default()
    });
    let error = refused.expect_err("a bad query is refused");
    assert!(error.to_string().contains("invalid_query"), "{error}");
}

#[test]
fn the_cli_and_the_mcp_tool_print_one_line_per_match() {
    let broker = TestBroker::start_on_wall_clock();
    let bob = broker.register("bob");
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("alice.session");
    let run = |args: &[&str]| common::cli(&broker.addr(), &session, args);
    assert!(run(&["register", "alice"]).status.success());
    let addr = broker.addr();
    let first = send(
        &addr,
        &bob,
        "alice",
        "the quarterly numbers are in",
        Some("numbers"),
    );
    send(&addr, &bob, "alice", "quarterly review on friday", None);

    let output = run(&["search", "quarterly NOT review"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let line = text.lines().next().unwrap();
    assert!(
        line.starts_with(&format!("1. #{first} bob→alice [numbers] ")),
        "{text}"
    );
    assert!(line.ends_with("the [quarterly] numbers are in"), "{text}");
    assert!(!text.contains("review"), "{text}");
    assert!(
        text.contains("`claude-ipc thread ID` shows a match whole"),
        "{text}"
    );

    let output = run(&["search", "quarterly", "--limit", "1", "--json"]);
    let reply: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(reply["status"], "ok");
    assert_eq!(reply["results"].as_array().unwrap().len(), 1);
    assert_eq!(reply["more"], true);
    let cursor = reply["next_cursor"].as_str().unwrap();
    let output = run(&["search", "quarterly", "--limit", "1", "--cursor", cursor]);
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("2. #"), "{text}");

    let output = run(&["search", "quarterly OR"]);
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("OR at the end has no term after it"),
        "{error}"
    );

    let mut mcp = McpProcess::start(&broker.addr(), &broker.data_dir(), &[], &[]);
    mcp.ok("register", json!({"instance_id": "dave"}));
    mcp.ok(
        "send",
        json!({"to_id": "bob", "content": "pelican briefing"}),
    );
    let said = mcp.ok("search", json!({"query": "pelic*"}));
    assert!(said.contains("dave→bob"), "{said}");
    assert!(said.contains("[pelican] briefing"), "{said}");
    assert!(said.contains("call thread with msg_id="), "{said}");
    let none = mcp.ok("search", json!({"query": "quarterly"}));
    assert!(
        none.contains("No mail you sent or received matches"),
        "{none}"
    );
    let refused = mcp.error("search", json!({"query": "(pelican"}));
    assert!(refused.contains("never closed"), "{refused}");
}
