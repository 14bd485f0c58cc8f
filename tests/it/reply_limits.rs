//! Two promises about what the broker says back.
//!
//! Every reply to every action fits a legacy client's single `recv(65536)`, however much data
//! there is: `list` pages (with a cursor the typed client, the CLI and the MCP server follow),
//! `broadcast` and `ack` count everything and list only the first few ids and names, and an
//! error repeats at most the start of what the client sent. Each reply is read here exactly
//! as the legacy scripts read it: one read, which must hold the whole JSON reply, and no more
//! than the budget `check` keeps (loopback may split larger writes).
//!
//! Replay protection belongs to the sender's identity: a session keeps its nonces through
//! its own renames, a new holder of a name starts with none, the skew is measured to the
//! millisecond, and a replay window a replay could outlast is refused at start.
use crate::common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use claude_ipc::client::Client;
use claude_ipc::clock::{self, Clock};
use claude_ipc::config::Config;
use claude_ipc::domain::{InstanceName, MessageKind, Timestamp};
use claude_ipc::protocol::{ACTION_NAMES, LEGACY_READ_BYTES, REPLY_BUDGET};
use claude_ipc::store::queries::NewMessage;
use claude_ipc::store::{Durability, StoreError};
use common::*;
use serde_json::{json, Value};

/// Sends `request` as a legacy client does and returns the reply of its single read, after
/// checking that the read held one whole JSON reply within the budget.
fn one_read(addr: &str, request: &Value) -> Value {
    let bytes = legacy_raw(addr, request.to_string().as_bytes());
    let what = request["action"].as_str().unwrap_or("?").chars().take(20);
    let what: String = what.collect();
    assert!(
        bytes.len() <= REPLY_BUDGET,
        "the {what} reply is {} bytes, over the {REPLY_BUDGET}-byte budget",
        bytes.len()
    );
    assert_eq!(bytes.last(), Some(&b'\n'), "the {what} reply is cut short");
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "the {what} reply is not one whole JSON object ({e}): {} bytes",
            bytes.len()
        )
    })
}

/// The instance names of one page, and the cursor it gave for the next.
fn page_names(page: &Value) -> (Vec<String>, Option<String>) {
    let next = page["next_after"].as_str().map(str::to_owned);
    (instance_names(page), next)
}

/// Walks `list` page by page with single legacy reads, each within the budget; returns the
/// names in the order they came and the number of pages.
fn walk_list(addr: &str, token: &str, limit: Option<u32>) -> (Vec<String>, usize) {
    let mut names = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut request = json!({"action": "list", "session_token": token});
        if let Some(after) = &after {
            request["after"] = after.clone().into();
        }
        if let Some(limit) = limit {
            request["limit"] = limit.into();
        }
        let page = one_read(addr, &request);
        assert_eq!(page["status"], "ok", "{page}");
        pages += 1;
        let (these, next) = page_names(&page);
        if let Some(limit) = limit {
            assert!(these.len() <= limit as usize, "a page outgrew its limit");
        }
        assert!(!these.is_empty() || page["more"] == false, "an empty page");
        names.extend(these.iter().cloned());
        if page["more"] == false {
            assert!(page.get("next_after").is_none(), "{page}");
            return (names, pages);
        }
        assert_eq!(next.as_deref(), these.last().map(String::as_str));
        after = next;
    }
}

/// Every name in `got` exactly once, in name order, and the same set as `expected`.
fn assert_each_exactly_once(got: &[String], expected: &BTreeSet<String>) {
    let unique: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(unique.len(), got.len(), "a name came back twice");
    let mut sorted = got.to_vec();
    sorted.sort();
    assert_eq!(sorted, got, "pages are not in name order");
    assert_eq!(&unique, expected);
}

/// How big the whole list would be as one reply: what a single read could not hold.
fn unpaged_size(names: &[String]) -> usize {
    let entries: Vec<Value> = names
        .iter()
        .map(|n| json!({"id": n, "last_seen": "2026-01-01T12:00:00.000Z"}))
        .collect();
    json!({"status": "ok", "instances": entries})
        .to_string()
        .len()
}

#[test]
fn a_list_of_1500_instances_registered_over_the_wire_pages_within_one_legacy_read() {
    const THREADS: usize = 4;
    const EACH: usize = 375;
    let broker = TestBroker::start();
    let addr = broker.addr();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let addr = &addr;
            scope.spawn(move || {
                let mut client = Client::connect(addr, TIMEOUT).unwrap();
                for i in 0..EACH {
                    client
                        .register(&long_name(&format!("wire{t}-"), i), None)
                        .expect("register over the wire");
                }
            });
        }
    });
    let lister = legacy_register(&addr, "lister");
    eprintln!(
        "registered {} over the wire in {:?}",
        THREADS * EACH,
        started.elapsed()
    );

    let first = one_read(&addr, &json!({"action": "list", "session_token": lister}));
    assert_eq!(first["more"], true, "1,501 instances do not fit one page");
    assert!(!instance_names(&first).is_empty());
    let entry = first["instances"][0].as_object().unwrap();
    let keys: Vec<&str> = entry.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["id", "last_seen", "online", "push"],
        "legacy entries keep {{id, last_seen}}, with presence beside them"
    );

    let (names, pages) = walk_list(&addr, &lister, None);
    let mut expected: BTreeSet<String> = (0..THREADS)
        .flat_map(|t| (0..EACH).map(move |i| long_name(&format!("wire{t}-"), i)))
        .collect();
    expected.insert("lister".into());
    assert_each_exactly_once(&names, &expected);
    assert!(pages >= 2, "{pages} pages");
    assert!(
        unpaged_size(&names) > LEGACY_READ_BYTES,
        "without paging the list would not fit one read"
    );
}

#[test]
fn paging_ten_thousand_instances_returns_each_exactly_once_even_while_names_come_and_go() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let stored = broker.store_instances("m", 10_000);
    let lister = broker.register("lister");
    let mut expected: BTreeSet<String> = stored.iter().cloned().collect();
    expected.insert("lister".into());

    // The typed client follows the cursor to the end.
    let all: Vec<String> = broker
        .client()
        .list(&lister)
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_each_exactly_once(&all, &expected);
    assert!(unpaged_size(&all) > 10 * LEGACY_READ_BYTES);

    // A client-chosen limit pages the same list in smaller steps.
    // 250 entries of 32-character names fit the reply budget (about 290 do, with presence).
    let (limited, pages) = walk_list(&addr, &lister, Some(250));
    assert_each_exactly_once(&limited, &expected);
    assert_eq!(pages, 10_001usize.div_ceil(250));

    // Names registered behind the cursor are not seen again; ahead of it, they are seen once.
    let mut client = broker.client();
    let first = client.list_page(&lister, None, None).unwrap();
    assert!(first.more);
    let behind = long_name("a", 1);
    let ahead = long_name("z", 1);
    client.register(&behind, None).unwrap();
    client.register(&ahead, None).unwrap();
    let mut names: Vec<String> = first.instances.into_iter().map(|i| i.id).collect();
    let mut after = first.next_after;
    while let Some(cursor) = after {
        let page = client.list_page(&lister, Some(&cursor), None).unwrap();
        names.extend(page.instances.into_iter().map(|i| i.id));
        after = page.next_after.filter(|_| page.more);
    }
    expected.insert(ahead);
    assert_each_exactly_once(&names, &expected);
}

#[test]
fn the_cli_and_the_mcp_list_show_every_one_of_ten_thousand_instances() {
    let broker = TestBroker::start();
    let stored = broker.store_instances("c", 10_000);
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("session.json");
    let registered = cli(&broker.addr(), &session, &["register", "cli-user"]);
    assert!(registered.status.success(), "{registered:?}");
    let listed = cli(&broker.addr(), &session, &["list", "--json"]);
    assert!(listed.status.success(), "{listed:?}");
    let reply: Value = serde_json::from_slice(&listed.stdout).expect("list --json is JSON");
    let mut expected: BTreeSet<String> = stored.iter().cloned().collect();
    expected.insert("cli-user".into());
    assert_each_exactly_once(&instance_names(&reply), &expected);

    let mut mcp = McpProcess::start(&broker.addr(), &broker.data_dir(), &[], &[]);
    mcp.ok("register", json!({"instance_id": "mcp-user"}));
    let text = mcp.ok("list_instances", json!({}));
    assert!(
        text.starts_with("10002 instances registered"),
        "{text:.200}"
    );
    let last = stored.last().unwrap();
    assert!(
        text.contains(&format!("- {last}:")),
        "the last page is shown too"
    );
}

#[test]
fn a_broadcast_to_6000_recipients_is_summarised_within_one_read() {
    let broker = TestBroker::start_with(|c| c.limits.queue_cap = 1);
    let addr = broker.addr();
    let recipients = broker.store_instances("r", 6_000);
    let sender = legacy_register(&addr, "sender");
    let broadcast = || {
        one_read(
            &addr,
            &json!({"action": "broadcast", "session_token": sender,
                    "message": {"content": "deploying"}, "nonce": "b-6000"}),
        )
    };

    let sent = broadcast();
    assert_eq!(sent["message"], "Broadcast to 6000 instances", "{sent}");
    assert_eq!(sent["count"], 6000);
    assert_eq!(sent["truncated"], true);
    let ids = sent["message_ids"].as_array().unwrap();
    assert!(
        !ids.is_empty() && ids.len() < 6000,
        "{} ids listed",
        ids.len()
    );
    let (first, last) = (
        sent["first_id"].as_i64().unwrap(),
        sent["last_id"].as_i64().unwrap(),
    );
    assert_eq!(ids[0], first);
    assert_eq!(last - first + 1, 6000, "one id per copy, first to last");
    assert_eq!(
        broker.count(&format!(
            "SELECT count(*) FROM messages WHERE kind = 'broadcast' AND id BETWEEN {first} AND {last}"
        )),
        6000
    );

    // The retry is a duplicate, answered with the first copy's id.
    let again = broadcast();
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["message_id"], first);

    // Every queue now holds its cap: a new broadcast skips all 6,000.
    let skipped = one_read(
        &addr,
        &json!({"action": "broadcast", "session_token": sender,
                "message": {"content": "again"}}),
    );
    assert_eq!(skipped["message"], "Broadcast to 0 instances", "{skipped}");
    assert_eq!(skipped["skipped_count"], 6000);
    assert_eq!(skipped["truncated"], true);
    let named: Vec<&str> = skipped["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(!named.is_empty() && named.len() < 6000);
    assert_eq!(
        named,
        recipients[..named.len()],
        "the first skipped, by name"
    );
}

/// Stores `count` messages for `recipient` in one job; returns their ids.
fn mail_through_the_store(broker: &TestBroker, recipient: &str, count: usize) -> Vec<i64> {
    let recipient = InstanceName::parse(recipient).expect("a valid name");
    let now = Timestamp::new(broker.clock.now());
    broker
        .block_on(
            broker
                .broker()
                .store()
                .write(Durability::Flushed, move |tx| {
                    let mut ids = Vec::new();
                    for i in 0..count {
                        let content = format!("note {i}");
                        let message = NewMessage {
                            sender: "alice",
                            sent_by: None,
                            addressed_to: &recipient,
                            recipient: &recipient,
                            kind: MessageKind::Direct,
                            content: &content,
                            data: None,
                            large_file: None,
                            large_file_bytes: None,
                            nonce: None,
                            sender_timestamp: None,
                            received_at: now,
                            thread_id: None,
                            reply_to: None,
                            subject: None,
                        };
                        ids.push(tx.insert_message(&message)?.0);
                    }
                    Ok::<_, StoreError>(ids)
                }),
        )
        .expect("mail stored")
}

#[test]
fn ack_replies_count_every_id_and_list_only_the_first_few() {
    let broker = TestBroker::start_with(|c| c.limits.queue_cap = 0);
    let addr = broker.addr();
    let bob = legacy_register(&addr, "bob");
    let ids = mail_through_the_store(&broker, "bob", 1000);
    let ack = |ids: &[i64]| {
        one_read(
            &addr,
            &json!({"action": "ack", "session_token": bob, "ids": ids}),
        )
    };
    let pending = || broker.count("SELECT count(*) FROM messages WHERE delivered_at IS NULL");

    // 5,000 ids are more than one ack takes: a short refusal, and nothing is settled.
    let mut five_thousand = ids.clone();
    five_thousand.extend(1_000_000..1_004_000);
    let refused = ack(&five_thousand);
    assert_eq!(refused["code"], "invalid_field", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("1 to 1000"));
    assert_eq!(pending(), 1000);

    let acked = ack(&ids);
    assert_eq!(acked["acked"], 1000, "{acked}");
    assert_eq!(acked["truncated"], false);
    assert_eq!(pending(), 0);

    let again = ack(&ids);
    assert_eq!(again["acked"], 0);
    assert_eq!(again["already_acked_count"], 1000);
    assert_eq!(again["truncated"], true);
    let listed = again["already_acked"].as_array().unwrap();
    assert!(!listed.is_empty() && listed.len() < 1000);
    assert_eq!(listed[0], ids[0]);

    // Unknown ids: each refusal carries a sentence, so 1,000 of them would be ~100 KiB.
    let strangers: Vec<i64> = (2_000_000..2_001_000).collect();
    let unknown = ack(&strangers);
    assert_eq!(unknown["refused_count"], 1000, "{unknown}");
    assert_eq!(unknown["truncated"], true);
    let shown = unknown["refused"].as_array().unwrap();
    assert!(!shown.is_empty() && shown.len() < 1000);
    assert_eq!(shown[0]["id"], 2_000_000);
    assert_eq!(shown[0]["code"], "unknown_message");
    let uncapped = json!({"refused": vec![shown[0].clone(); 1000]})
        .to_string()
        .len();
    assert!(
        uncapped > LEGACY_READ_BYTES,
        "the test needs a list too big to send whole"
    );

    // A release (`ack` with `release: true`) of the same unknown ids is summarised alike.
    let released = one_read(
        &addr,
        &json!({"action": "ack", "session_token": bob, "ids": strangers, "release": true}),
    );
    assert_eq!(released["released"], 0, "{released}");
    assert_eq!(released["refused_count"], 1000);
    assert_eq!(released["truncated"], true);
}

/// A string of `len` characters that JSON escapes to six bytes each.
fn escaped(len: usize) -> String {
    "\u{1}".repeat(len)
}

#[test]
fn every_action_replies_within_one_legacy_read_however_large_the_data() {
    let broker = TestBroker::start_with(|c| c.limits.queue_cap = 0);
    let addr = broker.addr();
    broker.store_instances("x", 10_000);
    let walker = legacy_register(&addr, "walker");
    let sender = legacy_register(&addr, "sender");
    let limits = broker.config.limits.clone();
    // The largest message that is still queued inline, with the most data and an escaped
    // 128-character nonce: one of these alone must fit a check reply.
    let content = "c".repeat(limits.large_message_bytes - 2);
    let data = json!({"k": "d".repeat(limits.max_data_bytes - 10)});
    // One thread: the first starts it, the others answer it.
    let mut first_id = Value::Null;
    for i in 0..3 {
        let sent = one_read(
            &addr,
            &json!({"action": "send", "session_token": sender, "to_id": "walker",
                    "message": {"content": content, "data": data},
                    "nonce": format!("{}{i}", escaped(127)), "reply_to": first_id}),
        );
        assert_eq!(sent["status"], "ok", "{sent}");
        if first_id.is_null() {
            first_id = sent["message_id"].clone();
        }
    }
    let huge = "h".repeat(900_000);
    let mut covered = BTreeSet::new();
    let mut ask = |action: &str, request: Value| -> Value {
        covered.insert(action.to_owned());
        one_read(&addr, &request)
    };

    let pong = ask("ping", json!({"action": "ping"}));
    assert_eq!(pong["status"], "ok");
    let registered = ask(
        "register",
        json!({"action": "register", "instance_id": long_name("reg", 1)}),
    );
    assert_eq!(registered["status"], "ok", "{registered}");
    let bad_nonce = ask(
        "challenge",
        json!({"action": "challenge", "instance_id": long_name("reg", 1), "client_nonce": huge}),
    );
    assert_eq!(bad_nonce["code"], "invalid_field");
    let open_mode = ask(
        "challenge",
        json!({"action": "challenge", "instance_id": long_name("reg", 1),
               "client_nonce": "n".repeat(128)}),
    );
    assert_eq!(open_mode["code"], "challenge_failed");
    let bad_name = ask(
        "register",
        json!({"action": "register", "instance_id": huge}),
    );
    assert_eq!(bad_name["code"], "invalid_name");
    let bad_stamp = ask(
        "send",
        json!({"action": "send", "session_token": sender, "to_id": "walker",
               "message": {"content": "x"}, "timestamp": huge}),
    );
    assert_eq!(bad_stamp["code"], "invalid_field");
    let forwarded = ask(
        "send",
        json!({"action": "send", "session_token": sender, "to_id": long_name("future", 1),
               "message": {"content": "x"}, "nonce": escaped(128)}),
    );
    assert_eq!(forwarded["status"], "ok", "{forwarded}");
    let everyone = ask(
        "broadcast",
        json!({"action": "broadcast", "session_token": sender, "message": {"content": "all"}}),
    );
    assert_eq!(everyone["count"], 10_002, "{everyone}");
    let mail = ask("check", json!({"action": "check", "session_token": walker}));
    assert_eq!(mail["more"], true, "three large messages take three checks");
    assert_eq!(mail["messages"].as_array().unwrap().len(), 1);
    let manual = ask(
        "check",
        json!({"action": "check", "session_token": walker, "ack": "manual", "limit": 500}),
    );
    assert_eq!(manual["status"], "ok", "{manual}");
    let strangers: Vec<i64> = (5_000_000..5_001_000).collect();
    let acked = ask(
        "ack",
        json!({"action": "ack", "session_token": walker, "ids": strangers}),
    );
    assert_eq!(acked["refused_count"], 1000);
    let listed = ask("list", json!({"action": "list", "session_token": walker}));
    assert_eq!(listed["more"], true);
    let watched = ask(
        "watch",
        json!({"action": "watch", "session_token": walker, "watcher": "w", "limit": 500}),
    );
    assert_eq!(watched["more"], true, "two large messages take two watches");
    assert_eq!(watched["messages"].as_array().unwrap().len(), 1);
    let bad_watcher = ask(
        "watch",
        json!({"action": "watch", "session_token": walker, "watcher": huge}),
    );
    assert_eq!(bad_watcher["code"], "invalid_field");
    let renamed = ask(
        "rename",
        json!({"action": "rename", "session_token": walker, "new_id": long_name("walker", 2)}),
    );
    assert_eq!(renamed["status"], "ok", "{renamed}");
    let counted = ask("count", json!({"action": "count", "session_token": walker}));
    assert_eq!(counted["status"], "ok");
    let told = ask(
        "watch",
        json!({"action": "watch", "session_token": walker, "watcher": "w", "limit": 500}),
    );
    assert_eq!(told["status"], "ok", "{told}");
    let receipts = ask(
        "sent",
        json!({"action": "sent", "session_token": sender, "limit": 500}),
    );
    assert_eq!(receipts["more"], true, "{receipts}");
    let unknown_receipts = ask(
        "sent",
        json!({"action": "sent", "session_token": sender, "ids": strangers}),
    );
    assert_eq!(unknown_receipts["refused_count"], 1000);
    let threaded = ask(
        "thread",
        json!({"action": "thread", "session_token": sender, "thread_id": first_id,
               "limit": 100}),
    );
    assert_eq!(
        threaded["more"], true,
        "three large messages take three pages"
    );
    let bad_cursor = ask(
        "thread",
        json!({"action": "thread", "session_token": sender, "thread_id": first_id,
               "cursor": huge}),
    );
    assert_eq!(bad_cursor["code"], "invalid_field");
    // The walker's conversation with the sender: three of the largest messages and a broadcast
    // copy do not fit one page, whatever the limit.
    let past = ask(
        "history",
        json!({"action": "history", "session_token": walker, "with": "sender", "limit": 100}),
    );
    assert_eq!(past["more"], true, "{past}");
    assert!(past["messages"].as_array().unwrap().len() < 4, "{past}");
    let bad_cursor = ask(
        "history",
        json!({"action": "history", "session_token": walker, "cursor": huge}),
    );
    assert_eq!(bad_cursor["code"], "invalid_field");
    let found = ask(
        "search",
        json!({"action": "search", "session_token": sender, "query": "all OR x", "limit": 100}),
    );
    assert_eq!(found["status"], "ok", "{found}");
    let bad_query = ask(
        "search",
        json!({"action": "search", "session_token": sender, "query": huge}),
    );
    assert_eq!(bad_query["code"], "invalid_query");
    let logged_out = ask(
        "logout",
        json!({"action": "logout", "session_token": walker}),
    );
    assert_eq!(logged_out["status"], "ok", "{logged_out}");
    // And a name that is none of them, repeated back only in part.
    let unknown = one_read(&addr, &json!({"action": huge}));
    assert_eq!(unknown["code"], "unknown_action");
    assert!(unknown["message"]
        .as_str()
        .unwrap()
        .starts_with("Unknown action: hhh"));

    let every: BTreeSet<String> = ACTION_NAMES.iter().map(|a| a.to_string()).collect();
    assert_eq!(
        covered, every,
        "each action the broker answers is walked here"
    );
}

// ---- replay protection scoped to the sender's identity ----

fn send_with_nonce(addr: &str, token: &str, content: &str, nonce: &str) -> Value {
    legacy(
        addr,
        &json!({"action": "send", "session_token": token, "to_id": "bob",
                "message": {"content": content}, "nonce": nonce}),
    )
}

#[test]
fn a_new_holder_of_a_name_does_not_inherit_the_previous_holders_nonces() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let bob = legacy_register(&addr, "bob");
    let first_holder = legacy_register(&addr, "alice");
    let theirs = send_with_nonce(&addr, &first_holder, "from the first alice", "n-1");
    let their_id = theirs["message_id"].as_i64().unwrap();

    // Someone else registers alice: the first holder's session is revoked.
    let new_holder = legacy_register(&addr, "alice");
    let revoked = send_with_nonce(&addr, &first_holder, "still me?", "n-2");
    assert_eq!(revoked["code"], "session_replaced");
    assert_eq!(revoked["message"], "Invalid or missing session token");
    let mine = send_with_nonce(&addr, &new_holder, "from the second alice", "n-1");
    assert_eq!(mine["status"], "ok", "{mine}");
    assert_eq!(mine["duplicate"], false, "{mine}");
    assert_ne!(mine["message_id"], their_id);
    assert!(
        mine.as_object()
            .unwrap()
            .values()
            .all(|value| value.as_i64() != Some(their_id)),
        "the first holder's message id leaked: {mine}"
    );
    assert_eq!(
        contents(&legacy_check(&addr, &bob)),
        ["from the first alice", "from the second alice"]
    );
    // Its own retry is still a duplicate.
    let retry = send_with_nonce(&addr, &new_holder, "from the second alice", "n-1");
    assert_eq!(retry["duplicate"], true);
    assert_eq!(retry["message_id"], mine["message_id"]);
}

#[test]
fn a_retry_across_the_senders_own_rename_is_answered_as_a_duplicate() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    let bob = legacy_register(&addr, "bob");
    let alice = legacy_register(&addr, "alice");
    let sent = send_with_nonce(&addr, &alice, "pay 10", "r-1");
    let told = legacy(
        &addr,
        &json!({"action": "broadcast", "session_token": alice,
                "message": {"content": "hello all"}, "nonce": "rb-1"}),
    );
    let renamed = legacy(
        &addr,
        &json!({"action": "rename", "session_token": alice, "new_id": "alice2"}),
    );
    assert_eq!(renamed["message"], "Renamed alice to alice2");

    let retried = send_with_nonce(&addr, &alice, "pay 10", "r-1");
    assert_eq!(retried["duplicate"], true, "{retried}");
    assert_eq!(retried["message_id"], sent["message_id"]);
    let told_again = legacy(
        &addr,
        &json!({"action": "broadcast", "session_token": alice,
                "message": {"content": "hello all"}, "nonce": "rb-1"}),
    );
    assert_eq!(told_again["duplicate"], true, "{told_again}");
    assert_eq!(told_again["message_id"], told["first_id"]);
    assert_eq!(
        broker.count("SELECT count(*) FROM messages WHERE nonce IN ('r-1', 'rb-1')"),
        2
    );
    assert_eq!(
        contents(&legacy_check(&addr, &bob)),
        ["pay 10", "hello all", "alice renamed to alice2"]
    );
}

#[test]
fn the_skew_is_measured_in_milliseconds_and_no_accepted_replay_outlasts_the_window() {
    let broker = TestBroker::start_with(|c| {
        c.limits.max_clock_skew = Duration::from_secs(10);
        c.limits.replay_window = Duration::from_secs(51);
    });
    let addr = broker.addr();
    let alice = legacy_register(&addr, "alice");
    legacy_register(&addr, "bob");
    let start = broker.clock.now();
    let stamped = |nonce: &str, offset_ms: i64| {
        let at = start + chrono::Duration::milliseconds(offset_ms);
        legacy(
            &addr,
            &json!({"action": "send", "session_token": alice, "to_id": "bob",
                    "message": {"content": nonce}, "nonce": nonce,
                    "timestamp": clock::to_text(at)}),
        )
    };
    let advance_ms = |ms| broker.clock.advance(chrono::Duration::milliseconds(ms));

    // 10.9 s ahead is outside a 10 s skew, though its whole seconds are not.
    let late = stamped("late", 10_900);
    assert_eq!(late["code"], "stale_timestamp", "{late}");
    assert!(
        late["message"].as_str().unwrap().contains("10.9 s"),
        "{late}"
    );
    let edge = stamped("edge", 10_000);
    assert_eq!(
        edge["duplicate"], false,
        "exactly the skew is allowed: {edge}"
    );

    // 20 s later the edge request is still within the skew of its stamp: a duplicate.
    advance_ms(20_000);
    let edge_again = stamped("edge", 10_000);
    assert_eq!(edge_again["duplicate"], true, "{edge_again}");
    assert_eq!(edge_again["message_id"], edge["message_id"]);
    // At +20.2 s it is outside the skew, so refused rather than stored again.
    advance_ms(200);
    assert_eq!(stamped("edge", 10_000)["code"], "stale_timestamp");
    // The +10.9 s request replayed at +20.2 s is within the skew now: stored, once.
    let late_now = stamped("late", 10_900);
    assert_eq!(late_now["duplicate"], false, "{late_now}");
    advance_ms(700);
    let late_again = stamped("late", 10_900);
    assert_eq!(late_again["duplicate"], true, "{late_again}");
    assert_eq!(
        broker.count("SELECT count(*) FROM messages WHERE nonce IN ('late', 'edge')"),
        2
    );
}

#[test]
fn a_replay_window_a_replay_could_outlast_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
    config.limits.max_clock_skew = Duration::from_secs(10);
    config.limits.replay_window = Duration::from_secs(20);
    let text = config.validate().unwrap_err().to_string();
    assert!(text.contains("--replay-window 20s"), "{text}");
    assert!(text.contains("--replay-window 1m or more"), "{text}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let clock = Clock::manual(Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap());
    let started = runtime.block_on(claude_ipc::server::start(&config, false, clock));
    let refused = started.err().expect("the broker refuses to start");
    assert_eq!(refused.to_string(), text);
    assert!(
        !config.database_path().exists(),
        "nothing is created for a refused configuration"
    );

    // `serve` with the spec's old pair, a 10-minute window and the 5-minute skew.
    let mut serve = Command::new(binary())
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("served"))
        .args(["--replay-window", "10m"])
        .env_remove("IPC_SHARED_SECRET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            serve.kill().unwrap();
            serve.wait().unwrap();
            panic!("serve started with a replay window twice the skew");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut serve.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("--replay-window 11m or more"),
        "serve says how to fix it: {stderr}"
    );
}
