//! History (`history`): a caller's sent and received mail, newest first, over the wire against
//! a real broker. Paging by cursor with mail arriving between pages; `with` across renames of
//! either side; nothing about a message's delivery changes by reading it; a restart and a
//! `kill -9` keep it; the history retention purges delivered mail and keeps waiting mail;
//! three parties see only their own pairs; a removed instance's name, registered again, sees
//! none of it while a takeover keeps it; the CLI verb, the MCP tool, and the operator views
//! with their STORAGE.md recipes in the real `sqlite3` shell.

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::Duration as Span;
use claude_ipc::client::{CheckOptions, Client, HistoryQuery};
use claude_ipc::protocol::schema::{Direction, HistoryReply, ReceiptState};
use common::{legacy, BrokerProcess, McpProcess, TestBroker};
use serde_json::{json, Value};

fn send(client: &mut Client, token: &str, to: &str, content: &str) -> i64 {
    client
        .send(token, to, content, None, None)
        .expect("send")
        .message_id
        .0
}

fn history(client: &mut Client, token: &str, query: &HistoryQuery) -> HistoryReply {
    client.history(token, query).expect("history")
}

fn all(client: &mut Client, token: &str) -> HistoryReply {
    history(client, token, &HistoryQuery::default())
}

fn with(client: &mut Client, token: &str, peer: &str) -> HistoryReply {
    let query = HistoryQuery {
        with: Some(peer.into()),
        ..HistoryQuery::default()
    };
    history(client, token, &query)
}

fn ids(reply: &HistoryReply) -> Vec<i64> {
    reply.messages.iter().map(|m| m.id.0).collect()
}

fn contents(reply: &HistoryReply) -> Vec<&str> {
    reply
        .messages
        .iter()
        .map(|m| m.message.content.as_str())
        .collect()
}

/// Every message of `token`'s history, page by page of `limit`, with `between` run after
/// each page (to send mail meanwhile). Fails on a page that says `more` without a cursor.
fn every_page(
    client: &mut Client,
    token: &str,
    limit: u32,
    mut between: impl FnMut(&mut Client),
) -> Vec<Vec<i64>> {
    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let query = HistoryQuery {
            limit: Some(limit),
            cursor: cursor.clone(),
            ..HistoryQuery::default()
        };
        let page = history(client, token, &query);
        assert_eq!(page.more, page.next_cursor.is_some(), "{page:?}");
        pages.push(ids(&page));
        between(client);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return pages,
        }
    }
}

#[test]
fn history_holds_sent_and_received_mail_newest_first_with_side_and_state() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let carol = broker.register("carol");
    let mut client = broker.client();
    let asked = send(&mut client, &alice, "bob", "did the API change?");
    broker.clock.advance(Span::seconds(5));
    let answered = send(&mut client, &bob, "alice", "yes, see src/api.rs");
    let from_carol = send(&mut client, &carol, "alice", "lunch?");
    assert_eq!(client.check(&alice).unwrap().messages.len(), 2);
    client.ping().expect("the check is settled");

    let page = all(&mut client, &alice);
    assert_eq!(ids(&page), [from_carol, answered, asked]);
    assert!(!page.more && page.next_cursor.is_none(), "{page:?}");
    let [carols, bobs, alices] = &page.messages[..] else {
        panic!("{page:?}")
    };
    assert_eq!(
        (alices.direction, alices.state),
        (Direction::Sent, ReceiptState::Waiting)
    );
    assert_eq!((alices.from.as_str(), alices.to.as_str()), ("alice", "bob"));
    assert_eq!(alices.timestamp, "2026-01-01T12:00:00.000Z");
    assert_eq!(
        alices.thread_id.0, asked,
        "a message that answers nothing starts a thread"
    );
    assert_eq!(
        (bobs.direction, bobs.state),
        (Direction::Received, ReceiptState::Delivered)
    );
    assert_eq!(bobs.message.content, "yes, see src/api.rs");
    assert_eq!(bobs.timestamp, "2026-01-01T12:00:05.000Z");
    assert_eq!(carols.from, "carol");

    // Bob sees his side of it and nothing of carol's mail to alice.
    assert_eq!(ids(&all(&mut client, &bob)), [answered, asked]);
    let bobs_view = &all(&mut client, &bob).messages[1];
    assert_eq!(bobs_view.direction, Direction::Received);
}

#[test]
fn pages_by_cursor_have_no_repeats_and_no_gaps_while_mail_keeps_arriving() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let mut sent: Vec<i64> = (0..25)
        .map(|n| {
            let (from, to) = if n % 2 == 0 {
                (&alice, "bob")
            } else {
                (&bob, "alice")
            };
            send(&mut client, from, to, &format!("message {n}"))
        })
        .collect();
    sent.reverse();

    let mut arrived = Vec::new();
    let pages = every_page(&mut client, &alice, 10, |client| {
        arrived.push(send(client, &bob, "alice", "arrived between pages"));
    });
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [10, 10, 5],
        "{pages:?}"
    );
    assert_eq!(pages.concat(), sent, "every message once, newest first");

    // What arrived meanwhile is at the top of a fresh first page.
    let fresh = history(
        &mut client,
        &alice,
        &HistoryQuery {
            limit: Some(3),
            ..HistoryQuery::default()
        },
    );
    arrived.reverse();
    assert_eq!(ids(&fresh), arrived);
    assert!(fresh.more);
}

#[test]
fn a_page_stops_early_at_the_reply_budget_and_the_cursor_goes_on_from_there() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    // Inline content just under the large-message threshold: three fill a reply.
    let big = "b".repeat(broker.config.limits.large_message_bytes - 100);
    let sent: Vec<i64> = (0..6)
        .map(|_| send(&mut client, &alice, "bob", &big))
        .collect();
    let first = legacy(
        &addr,
        &json!({"action": "history", "session_token": bob, "limit": 100}),
    );
    let shown = first["messages"].as_array().unwrap().len();
    assert!((1..6).contains(&shown), "{shown} of 6 in one reply");
    assert_eq!(first["more"], true);
    let mut seen: Vec<i64> = first["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    let mut cursor = first["next_cursor"].as_str().map(str::to_owned);
    while let Some(next) = cursor {
        let page = history(
            &mut client,
            &bob,
            &HistoryQuery {
                cursor: Some(next),
                limit: Some(100),
                ..HistoryQuery::default()
            },
        );
        assert!(
            !page.messages.is_empty(),
            "a page that says more holds some"
        );
        seen.extend(ids(&page));
        cursor = page.next_cursor;
    }
    let mut newest_first = sent;
    newest_first.reverse();
    assert_eq!(seen, newest_first);
}

#[test]
fn with_keeps_one_conversation_together_across_renames_of_either_side() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let carol = broker.register("carol");
    let mut client = broker.client();
    let one = send(&mut client, &alice, "bob", "one");
    let two = send(&mut client, &bob, "alice", "two");
    send(&mut client, &carol, "alice", "not part of it");
    send(&mut client, &carol, "bob", "nor this");
    // Both read their mail first: delivered mail stays under the name it was delivered to
    // (`recipient`), so only `received_by` can carry it across the rename.
    client.check(&bob).unwrap();
    client.check(&alice).unwrap();
    client.ping().unwrap();

    client.rename(&alice, "alicia").expect("alice renames");
    let three = send(&mut client, &bob, "alicia", "three");
    client.rename(&bob, "robert").expect("bob renames");
    let four = send(&mut client, &alice, "robert", "four");
    // Sent to the old name inside the forward window: it reaches robert, and belongs.
    let five = send(&mut client, &alice, "bob", "five, to the old name");

    let (recipient, received_by): (String, String) = broker
        .sql()
        .query_row(
            "SELECT recipient, received_by FROM messages WHERE id = ?1",
            [two],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (recipient.as_str(), received_by.as_str()),
        ("alice", "alicia")
    );

    let together = with(&mut client, &alice, "robert");
    assert_eq!(ids(&together), [five, four, three, two, one]);
    assert_eq!(
        together.messages[4].from, "alice",
        "a message shows the name it was sent under"
    );
    assert_eq!(
        ids(&with(&mut client, &bob, "alicia")),
        [five, four, three, two, one]
    );
    // By current names: nobody holds `bob` or `alice` now.
    assert!(with(&mut client, &alice, "bob").messages.is_empty());
    assert!(with(&mut client, &bob, "alice").messages.is_empty());
    let carols = with(&mut client, &carol, "alicia");
    assert_eq!(contents(&carols), ["not part of it"]);
}

#[test]
fn reading_history_changes_nothing_about_delivery() {
    let broker = TestBroker::start();
    let (addr, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let waiting = send(&mut client, &alice, "bob", "still waiting");
    let state = || -> (i64, Option<String>, Option<String>, Option<String>) {
        broker
            .sql()
            .query_row(
                "SELECT delivery_count, read_at, delivered_at, leased_until FROM messages WHERE id = ?1",
                [waiting],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap()
    };
    let before = state();
    for (token, peer) in [(&alice, "bob"), (&bob, "alice")] {
        for _ in 0..3 {
            let page = all(&mut client, token);
            assert_eq!(page.messages[0].state, ReceiptState::Waiting);
            assert_eq!(ids(&with(&mut client, token, peer)), [waiting]);
        }
    }
    let raw = legacy(&addr, &json!({"action": "history", "session_token": bob}));
    assert_eq!(raw["messages"][0]["state"], "waiting", "{raw}");
    assert_eq!(state(), before, "no lease, no hand-out, no delivery");
    assert_eq!(
        client
            .sent(&alice, None, Some(&[waiting]))
            .unwrap()
            .messages[0]
            .state,
        ReceiptState::Waiting
    );

    // And the next check still hands it out, for the first time.
    let checked = client.check(&bob).unwrap();
    assert_eq!(checked.ids(), [waiting]);
    assert_eq!(checked.messages[0].delivery_count, 1);

    // A leased message stays leased (read) while its history is read.
    let leased = send(&mut client, &alice, "bob", "leased");
    let lease = CheckOptions {
        manual_ack: Some(Duration::from_secs(300)),
        ..CheckOptions::default()
    };
    assert_eq!(client.check_with(&bob, lease).unwrap().ids(), [leased]);
    assert_eq!(all(&mut client, &bob).messages[0].state, ReceiptState::Read);
    assert_eq!(
        client.ack(&bob, &[leased]).unwrap().acked,
        1,
        "still bob's to settle"
    );
}

#[test]
fn history_survives_a_restart_and_a_kill_9() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let before = [
        send(&mut client, &alice, "bob", "before the restart"),
        send(&mut client, &bob, "alice", "answered"),
    ];
    client.check(&alice).unwrap();
    client.ping().unwrap();
    drop(client);
    let broker = broker.restart();
    let mut client = broker.client();
    assert_eq!(ids(&all(&mut client, &alice)), [before[1], before[0]]);
    drop(client);
    drop(broker);

    // The real binary, killed with SIGKILL: what it acknowledged is still there.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let process = BrokerProcess::spawn(&data, &[]);
    let mut client = process.client();
    let alice = client.register("alice", None).unwrap().session_token;
    let bob = client.register("bob", None).unwrap().session_token;
    let sent = send(&mut client, &alice, "bob", "acknowledged before the kill");
    let delivered = send(&mut client, &bob, "alice", "read before the kill");
    assert_eq!(client.check(&alice).unwrap().ids(), [delivered]);
    client.ping().unwrap();
    drop(client);
    process.kill_9();
    let process = BrokerProcess::spawn(&data, &[]);
    let mut client = process.client();
    let page = with(&mut client, &alice, "bob");
    assert_eq!(ids(&page), [delivered, sent]);
    assert_eq!(page.messages[0].state, ReceiptState::Delivered);
    assert_eq!(page.messages[1].state, ReceiptState::Waiting);
}

/// A broker whose sessions outlive the weeks a retention test spans.
fn long_lived_sessions(configure: impl FnOnce(&mut claude_ipc::config::Config)) -> TestBroker {
    TestBroker::start_with(|config| {
        config.limits.session_idle_expiry = Duration::from_secs(90 * 86_400);
        configure(config);
    })
}

#[test]
fn delivered_mail_leaves_history_after_the_thirty_day_retention_and_waiting_mail_stays() {
    let broker = long_lived_sessions(|_| {});
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let delivered = send(&mut client, &alice, "bob", "read at once");
    assert_eq!(client.check(&bob).unwrap().ids(), [delivered]);
    client.ping().unwrap();
    broker.clock.advance(Span::days(20));
    let waiting = send(&mut client, &alice, "bob", "never read");

    broker.clock.advance(Span::days(10) - Span::minutes(1));
    assert_eq!(broker.sweep().delivered_mail, 0);
    assert_eq!(ids(&all(&mut client, &alice)), [waiting, delivered]);
    broker.clock.advance(Span::minutes(2));
    assert_eq!(broker.sweep().delivered_mail, 1);
    assert_eq!(ids(&all(&mut client, &alice)), [waiting]);
    assert_eq!(ids(&all(&mut client, &bob)), [waiting]);

    // Waiting mail is not history's to purge: bob reads it 40 days after it was sent.
    broker.clock.advance(Span::days(40));
    assert_eq!(broker.sweep().delivered_mail, 0);
    assert_eq!(client.check(&bob).unwrap().ids(), [waiting]);
}

#[test]
fn the_history_retention_is_the_serve_flag_and_the_old_flag_still_sets_it() {
    let broker = long_lived_sessions(|config| {
        config.limits.history_retention = Duration::from_secs(3600);
    });
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let large = "L".repeat(20 * 1024);
    let id = send(&mut client, &alice, "bob", &large);
    let checked = client.check(&bob).unwrap();
    client.ping().unwrap();
    let file = checked.messages[0].message.data.as_ref().unwrap()["large_message_file"]
        .as_str()
        .unwrap()
        .to_owned();
    broker.clock.advance(Span::minutes(59));
    broker.sweep();
    assert_eq!(ids(&all(&mut client, &alice)), [id]);
    broker.clock.advance(Span::minutes(2));
    assert_eq!(broker.sweep().delivered_mail, 1);
    assert!(all(&mut client, &alice).messages.is_empty());
    assert!(
        !Path::new(&file).exists(),
        "its large-message file goes with it"
    );

    // Old command lines still start: `--delivered-retention` is a hidden alias.
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::spawn(&dir.path().join("data"), &["--delivered-retention", "2h"]);
    assert!(process.client().ping().is_ok());
    let help = Command::new(common::binary())
        .args(["serve", "--help"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("--history-retention"), "{help}");
    assert!(help.contains("[default: 30d]"), "{help}");
    assert!(!help.contains("--delivered-retention"), "{help}");
}

#[test]
fn three_parties_each_see_only_their_own_pairs() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let carol = broker.register("carol");
    let mut client = broker.client();
    send(&mut client, &alice, "bob", "alice to bob");
    send(&mut client, &bob, "alice", "bob to alice");
    send(&mut client, &bob, "carol", "bob to carol");
    send(&mut client, &carol, "alice", "carol to alice");
    let copies = client.broadcast(&alice, "alice to everyone").unwrap();
    assert_eq!(copies.stored(), 2);

    let seen = |client: &mut Client, token: &str| {
        let mut texts: Vec<String> = all(client, token)
            .messages
            .iter()
            .map(|m| format!("{}>{}:{}", m.from, m.to, m.message.content))
            .collect();
        texts.sort();
        texts
    };
    assert_eq!(
        seen(&mut client, &alice),
        [
            "alice>bob:alice to bob",
            "alice>bob:alice to everyone",
            "alice>carol:alice to everyone",
            "bob>alice:bob to alice",
            "carol>alice:carol to alice",
        ]
    );
    assert_eq!(
        seen(&mut client, &bob),
        [
            "alice>bob:alice to bob",
            "alice>bob:alice to everyone",
            "bob>alice:bob to alice",
            "bob>carol:bob to carol",
        ]
    );
    assert_eq!(
        seen(&mut client, &carol),
        [
            "alice>carol:alice to everyone",
            "bob>carol:bob to carol",
            "carol>alice:carol to alice",
        ]
    );
    // `with` names a pair the caller is in; another pair's mail never shows.
    assert_eq!(
        contents(&with(&mut client, &carol, "alice")),
        ["alice to everyone", "carol to alice"]
    );
    assert_eq!(
        contents(&with(&mut client, &carol, "bob")),
        ["bob to carol"]
    );
    // A cursor is a position, not a key: one below someone else's mail shows none of it.
    let below = history(
        &mut client,
        &carol,
        &HistoryQuery {
            cursor: Some(format!("h{}", i64::MAX)),
            ..HistoryQuery::default()
        },
    );
    assert_eq!(below.messages.len(), 3);
}

#[test]
fn a_removed_instances_name_registered_again_sees_none_of_its_history() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let asked = send(&mut client, &alice, "bob", "from the first alice");
    let answered = send(&mut client, &bob, "alice", "to the first alice");
    client.check(&alice).unwrap();
    client.ping().unwrap();
    // Bob keeps using his session; alice goes quiet past the instance retention and is
    // removed (her session long expired).
    for _ in 0..10 {
        broker.clock.advance(Span::hours(20));
        client.list(&bob).unwrap();
    }
    assert_eq!(broker.sweep().instances, 1);
    let (sent_by, received_by): (i64, i64) = broker
        .sql()
        .query_row(
            "SELECT (SELECT count(*) FROM messages WHERE sent_by = 'alice'),
                    (SELECT count(*) FROM messages WHERE received_by = 'alice')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((sent_by, received_by), (0, 0), "the name owns no mail now");

    let next_alice = broker.register("alice");
    assert!(all(&mut client, &next_alice).messages.is_empty());
    assert!(with(&mut client, &next_alice, "bob").messages.is_empty());
    // Bob's side of the old conversation is still his.
    assert_eq!(ids(&all(&mut client, &bob)), [answered, asked]);
    // New mail between the new alice and bob is theirs, and only that.
    let fresh = send(&mut client, &bob, "alice", "hello, new alice");
    assert_eq!(ids(&all(&mut client, &next_alice)), [fresh]);
    assert_eq!(ids(&with(&mut client, &bob, "alice")), [fresh]);
}

#[test]
fn a_takeover_of_the_same_name_keeps_its_history() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let id = send(&mut client, &alice, "bob", "before the takeover");
    let taken = broker.take_over("alice");
    assert_ne!(taken, alice);
    assert_eq!(ids(&all(&mut client, &taken)), [id]);
    assert_eq!(ids(&with(&mut client, &bob, "alice")), [id]);
    let old = legacy(
        &broker.addr(),
        &json!({"action": "history", "session_token": alice}),
    );
    assert_eq!(old["code"], "session_replaced", "{old}");
}

#[test]
fn bad_fields_are_refused_saying_what_to_send_and_a_session_is_required() {
    let broker = TestBroker::start_with(|config| config.limits.rate_limit = 8);
    let (addr, alice, _) = broker.alice_and_bob();
    let ask = |fields: Value| {
        let mut request = json!({"action": "history", "session_token": alice});
        request
            .as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        legacy(&addr, &request)
    };
    let bad_name = ask(json!({"with": "no/such name"}));
    assert_eq!(bad_name["code"], "invalid_name", "{bad_name}");
    assert!(bad_name["message"]
        .as_str()
        .unwrap()
        .contains("`with` must be 1-32 letters"));
    let bad_limit = ask(json!({"limit": 101}));
    assert_eq!(bad_limit["code"], "invalid_field");
    assert!(
        bad_limit["message"]
            .as_str()
            .unwrap()
            .contains("from 1 to 100"),
        "{bad_limit}"
    );
    let bad_cursor = ask(json!({"cursor": "'; DROP TABLE messages; --"}));
    assert_eq!(bad_cursor["code"], "invalid_field");
    assert!(
        bad_cursor["message"]
            .as_str()
            .unwrap()
            .contains("start again without it"),
        "{bad_cursor}"
    );
    let bad_time = ask(json!({"before": "yesterday"}));
    assert_eq!(bad_time["code"], "invalid_field", "{bad_time}");
    let no_session = legacy(&addr, &json!({"action": "history"}));
    assert_eq!(no_session["message"], "Invalid or missing session token");
    // Each history counts against the rate limit like any read.
    let mut limited = None;
    for _ in 0..20 {
        let reply = ask(json!({}));
        if reply["status"] != "ok" {
            limited = Some(reply);
            break;
        }
    }
    assert_eq!(limited.unwrap()["code"], "rate_limited");
}

#[test]
fn before_starts_a_page_at_a_time() {
    let broker = TestBroker::start();
    let (_, alice, _bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let early = send(&mut client, &alice, "bob", "at noon");
    broker.clock.advance(Span::hours(1));
    send(&mut client, &alice, "bob", "at one");
    let page = history(
        &mut client,
        &alice,
        &HistoryQuery {
            before: claude_ipc::domain::Timestamp::parse("2026-01-01T12:30:00.000Z"),
            ..HistoryQuery::default()
        },
    );
    assert_eq!(ids(&page), [early]);
}

#[test]
fn the_cli_prints_one_line_per_message_and_the_raw_reply_with_json() {
    let broker = TestBroker::start_on_wall_clock();
    let bob = broker.register("bob");
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("alice.session");
    let run = |args: &[&str]| {
        let output = common::cli(&broker.addr(), &session, args);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    run(&["register", "alice"]);
    run(&["send", "bob", "first line\nsecond line"]);
    let mut client = broker.client();
    let answer = send(&mut client, &bob, "alice", "\u{1b}[2Jcleared?");
    send(&mut client, &bob, "carol", "not alice's");

    let text = run(&["history", "--with", "bob"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0], "Your history with bob: 2 messages, newest first.",
        "{text}"
    );
    assert!(
        lines[1].starts_with(&format!("#{answer} bob→alice just now: ")),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "escapes are shown, not run: {text}"
    );
    assert!(lines[2].ends_with("bob just now: first line…"), "{text}");
    assert!(text.contains("add --full"), "{text}");
    assert!(!text.contains("not alice's"), "{text}");

    let paged = run(&["history", "--limit", "1"]);
    assert!(
        paged.contains("Older mail is kept: claude-ipc history --cursor h"),
        "{paged}"
    );
    let cursor = paged
        .split("--cursor ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let next = run(&["history", "--limit", "1", "--cursor", cursor, "--full"]);
    assert!(next.contains("│ first line\n│ second line\n"), "{next}");

    let json: Value = serde_json::from_str(&run(&["history", "--json"])).unwrap();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["messages"][0]["id"], answer);
    assert_eq!(json["messages"][0]["direction"], "received");
    assert_eq!(json["messages"][1]["direction"], "sent");

    let none = run(&["history", "--before", "2000-01-01T00:00:00Z"]);
    assert_eq!(
        none,
        "No mail in your history (sent or received, still kept).\n"
    );
    let bad_time = common::cli(&broker.addr(), &session, &["history", "--before", "today"]);
    assert_eq!(bad_time.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&bad_time.stderr).contains("RFC 3339"));

    let refused = common::cli(&broker.addr(), &session, &["history", "--with", "a b"]);
    assert_eq!(refused.status.code(), Some(2), "checked before sending");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--with"), "{stderr}");
    assert!(stderr.contains("1-32 letters"), "{stderr}");
}

#[test]
fn the_mcp_tool_shows_compact_lines_and_the_cursor_to_page_on() {
    let broker = TestBroker::start_on_wall_clock();
    let bob = broker.register("bob");
    let mut mcp = McpProcess::start(&broker.addr(), &broker.data_dir(), &[], &[]);
    mcp.ok("register", json!({"instance_id": "dave"}));
    mcp.ok("send", json!({"to_id": "bob", "content": "question one"}));
    let mut client = broker.client();
    let long = format!("{}\nand more", "word ".repeat(100));
    let answer = send(&mut client, &bob, "dave", &long);

    let text = mcp.ok("history", json!({"limit": 1}));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "Your history: 1 message, newest first.", "{text}");
    assert!(
        lines[1].starts_with(&format!("#{answer} bob→dave just now: word word")),
        "{text}"
    );
    assert!(lines[1].ends_with('…'), "{text}");
    assert!(text.contains("call history with full=true"), "{text}");
    let cursor = text
        .split("cursor=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no cursor in {text}"));
    let older = mcp.ok("history", json!({"limit": 1, "cursor": cursor}));
    assert!(older.contains("dave→bob just now: question one"), "{older}");
    assert!(!older.contains("Older mail is kept"), "{older}");

    // Reading history left bob's mail waiting for his check.
    assert_eq!(client.check(&bob).unwrap().messages.len(), 1);
    let refused = mcp.error("history", json!({"with": "not a name"}));
    assert!(refused.contains("1-32 letters"), "{refused}");
}

/// A send answering `reply_to` and/or with a subject, as a script sends it.
fn thread_send(
    client: &mut Client,
    token: &str,
    to: &str,
    content: &str,
    reply_to: Option<i64>,
    subject: Option<&str>,
) -> i64 {
    let mut request = json!({"action": "send", "session_token": token, "to_id": to,
                             "message": {"content": content}});
    if let Some(parent) = reply_to {
        request["reply_to"] = parent.into();
    }
    if let Some(subject) = subject {
        request["subject"] = subject.into();
    }
    let reply = client.request(&request).expect("send");
    assert_eq!(reply["status"], "ok", "{reply}");
    reply["message_id"].as_i64().unwrap()
}

/// The ```sql block under `heading` in docs/STORAGE.md.
fn storage_recipe(heading: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/STORAGE.md");
    let markdown = std::fs::read_to_string(path).unwrap();
    let section = markdown
        .split(&format!("### {heading}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("no section `{heading}` in STORAGE.md"));
    let block = section
        .split("```sql\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no sql block under `{heading}`"));
    block.split("```").next().unwrap().to_owned()
}

/// `sql` through the stock shell, read-only, one row a line with `|` between columns.
fn sqlite3(db: &Path, sql: &str) -> Option<Vec<String>> {
    let shell = Path::new("/usr/bin/sqlite3");
    if !shell.exists() {
        println!("note: /usr/bin/sqlite3 is not installed; the shell run is skipped");
        return None;
    }
    let mut child = Command::new(shell)
        .args(["-readonly", "-bail", "-list"])
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.is_empty(),
        "{stderr}\n{sql}"
    );
    Some(
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect(),
    )
}

#[test]
fn the_operator_views_and_their_recipes_read_threads_and_pairs_in_the_sqlite3_shell() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let carol = broker.register("carol");
    let mut client = broker.client();
    let root = thread_send(
        &mut client,
        &alice,
        "bob",
        "did the API change?",
        None,
        Some("the API"),
    );
    broker.clock.advance(Span::minutes(1));
    let answer = thread_send(&mut client, &bob, "alice", "yes", Some(root), None);
    client.rename(&alice, "alicia").unwrap();
    broker.clock.advance(Span::minutes(1));
    let last = thread_send(
        &mut client,
        &alice,
        "carol",
        "FYI: the API changed",
        Some(answer),
        None,
    );
    let other = thread_send(&mut client, &carol, "bob", "lunch?", None, Some("lunch"));
    let db = broker.db_path();

    let recipe = storage_recipe("A thread's messages").replace("42", &root.to_string());
    let Some(rows) = sqlite3(&db, &recipe) else {
        return;
    };
    let thread_ids: Vec<&str> = rows.iter().map(|r| r.split('|').next().unwrap()).collect();
    assert_eq!(thread_ids, [root, answer, last].map(|id| id.to_string()));
    assert!(rows[1].contains("|bob|"), "{rows:?}");
    assert!(
        rows[1].ends_with(&format!("|{root}|the API|yes")),
        "a reply inherits its thread's subject: {rows:?}"
    );

    let said = sqlite3(
        &db,
        &storage_recipe("What alice and bob said").replace("'alice'", "'alicia'"),
    )
    .unwrap();
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(said[0].starts_with(&format!("{root}|")), "{said:?}");

    let busiest = sqlite3(&db, &storage_recipe("The busiest threads")).unwrap();
    assert_eq!(
        busiest,
        [
            format!("{root}|the API|3|alicia, bob, carol|2026-01-01T12:00:00.000Z|2026-01-01T12:02:00.000Z"),
            format!("{other}|lunch|1|bob, carol|2026-01-01T12:02:00.000Z|2026-01-01T12:02:00.000Z"),
        ]
    );

    let pairs = sqlite3(
        &db,
        "SELECT instance_a, instance_b, message_count FROM conversations ORDER BY 1, 2;",
    )
    .unwrap();
    assert_eq!(pairs, ["alicia|bob|2", "alicia|carol|1", "bob|carol|1"]);
}

#[test]
fn a_name_freed_by_a_rename_comes_to_its_next_holder_without_the_old_mail() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let asked = send(&mut client, &alice, "bob", "sent as alice");
    let answered = send(&mut client, &bob, "alice", "read as alice");
    client.check(&alice).unwrap();
    client.ping().unwrap();
    client.rename(&alice, "alicia").unwrap();
    // Past the two-hour forward, the old name is anyone's.
    broker.clock.advance(Span::hours(3));
    let stranger = broker.register("alice");
    assert!(all(&mut client, &stranger).messages.is_empty());
    assert!(with(&mut client, &stranger, "bob").messages.is_empty());
    assert_eq!(ids(&all(&mut client, &alice)), [answered, asked]);
    assert_eq!(ids(&with(&mut client, &bob, "alicia")), [answered, asked]);
    assert!(with(&mut client, &bob, "alice").messages.is_empty());
}
