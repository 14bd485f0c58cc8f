//! Limits that hold for everyone, tried as an abuser would: fresh names to dodge the rate
//! limit, renames to flood every queue with notices, large messages to fill the disk, and a
//! loop guessing tokens and the secret. Each against a real broker on port 0.

use crate::common;

use std::path::Path;
use std::time::Duration as StdDuration;

use chrono::Duration;
use claude_ipc::client::Client;
use claude_ipc::protocol::auth::expected_auth_token;
use common::{BrokerProcess, TestBroker, TIMEOUT};
use serde_json::{json, Value};

fn send_request(token: &str, to: &str, content: &str) -> Value {
    json!({"action": "send", "session_token": token, "to_id": to,
           "message": {"content": content}})
}

fn register_request(name: &str, auth_token: &str) -> Value {
    json!({"action": "register", "instance_id": name, "auth_token": auth_token})
}

fn code(reply: &Value) -> &str {
    reply["code"].as_str().unwrap_or("ok")
}

/// How many files `large-messages/` holds (none if it was never made).
fn large_files(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("large-messages")).map_or(0, |dir| dir.count())
}

// ---- rename notices and instances nobody uses ----

#[test]
fn rename_notices_never_push_a_queue_past_its_cap() {
    let broker = TestBroker::start_with(|c| c.limits.queue_cap = 5);
    let _watcher = broker.register("watcher");
    let mut client = broker.client();
    for i in 0..200 {
        let token = client
            .register(&format!("fresh-{i:03}"), None)
            .unwrap()
            .session_token;
        let renamed = client.rename(&token, &format!("renamed-{i:03}"));
        assert!(renamed.is_ok(), "rename {i}: {renamed:?}");
    }
    let fullest = broker.count(
        "SELECT coalesce(max(waiting), 0) FROM (SELECT count(*) AS waiting FROM messages
         WHERE delivered_at IS NULL GROUP BY recipient)",
    );
    assert!(fullest <= 5, "a queue holds {fullest} messages with cap 5");
    assert_eq!(
        broker.count("SELECT count(*) FROM messages WHERE recipient = 'watcher'"),
        5,
        "the watcher got notices until its queue was full, then none"
    );
    let total = broker.count("SELECT count(*) FROM messages");
    assert!(total <= 5 * 201, "{total} notices stored");
}

#[test]
fn instances_nobody_uses_are_reaped_but_never_one_with_a_session_mail_or_forward() {
    let broker = TestBroker::start_with(|c| {
        c.limits.instance_retention = std::time::Duration::from_secs(7 * 86_400);
        c.limits.forward_duration = std::time::Duration::from_secs(30 * 86_400);
    });
    let mut client = broker.client();
    let idle = broker.register("idle");
    let _noticed = broker.register("noticed");
    let _keeper = broker.register("keeper");
    let active = broker.register("active");
    let mover = broker.register("mover");
    client.rename(&mover, "moved").unwrap(); // "moved" has a live forward for 30 days
    client
        .send(&idle, "keeper", "real mail", None, None)
        .unwrap();
    assert!(
        broker.count("SELECT count(*) FROM messages WHERE recipient = 'noticed'") > 0,
        "the rename left a notice"
    );
    // `active` uses its session every day; the others are never seen again.
    for day in 1..=8 {
        broker.clock.advance(Duration::days(1));
        client.list(&active).unwrap();
        if day == 6 {
            assert_eq!(broker.sweep().instances, 0, "nothing is old enough yet");
        }
    }
    let report = broker.sweep();
    let names: Vec<String> = {
        let db = broker.sql();
        let mut statement = db
            .prepare("SELECT name FROM instances ORDER BY name")
            .unwrap();
        let rows = statement.query_map([], |row| row.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    };
    assert_eq!(names, ["active", "keeper", "moved"], "{report:?}");
    assert_eq!(report.instances, 2, "idle and noticed were reaped");
    assert_eq!(
        broker.count("SELECT count(*) FROM messages WHERE recipient = 'noticed'"),
        0,
        "its rename notices went with it"
    );
    assert_eq!(
        broker.count("SELECT count(*) FROM sessions WHERE instance_name IN ('idle', 'noticed')"),
        0,
        "no old session of a reaped name can come back"
    );
    // The name is free again: mail to it waits as future mail, and it registers afresh.
    let other = broker.register("other");
    let sent = client
        .send(&other, "idle", "hello again", None, None)
        .unwrap();
    assert!(
        sent.message.contains("not yet registered"),
        "{}",
        sent.message
    );
    let fresh = client.register("idle", None).unwrap();
    assert_eq!(fresh.message, "Registered idle with 1 queued messages");
}

// ---- fresh names and the rate limits ----

#[test]
fn fresh_names_do_not_escape_the_per_peer_rate_limit() {
    let broker = TestBroker::start_with(|c| c.limits.rate_limit = 5);
    let limit = broker.config.limits.effective_peer_rate_limit();
    assert_eq!(limit, 50, "ten times the per-instance limit");
    let mut client = broker.client();
    let (mut stored, mut refused) = (0, Vec::new());
    for i in 0..30 {
        let token = client
            .register(&format!("sock-{i:02}"), None)
            .unwrap()
            .session_token;
        for j in 0..5 {
            let reply = client
                .request(&send_request(&token, "sink", &format!("{i}/{j}")))
                .unwrap();
            match code(&reply) {
                "ok" => stored += 1,
                _ => refused.push(reply),
            }
        }
    }
    let rows = broker.count("SELECT count(*) FROM messages");
    assert_eq!(rows, stored);
    assert_eq!(
        stored, limit as i64,
        "30 names x 5 sends stored only the peer's 50"
    );
    let refusal = &refused[0];
    assert_eq!(code(refusal), "peer_rate_limited", "{refusal}");
    let text = refusal["message"].as_str().unwrap();
    assert!(
        text.contains("50 requests per 60 s") && text.contains("--peer-rate-limit"),
        "{text}"
    );
    assert!(text.contains("retry in"), "{text}");
    // After the minute, the peer's names may send again.
    broker.clock.advance(Duration::seconds(61));
    let token = client
        .register_with("sock-00", None, true)
        .unwrap()
        .session_token;
    let reply = client
        .request(&send_request(&token, "sink", "later"))
        .unwrap();
    assert_eq!(code(&reply), "ok", "{reply}");
}

#[test]
fn the_per_instance_limit_keeps_its_legacy_text() {
    let broker = TestBroker::start_with(|c| c.limits.rate_limit = 3);
    let token = broker.register("alice");
    let mut client = broker.client();
    for i in 0..3 {
        let reply = client
            .request(&send_request(&token, "bob", &i.to_string()))
            .unwrap();
        assert_eq!(code(&reply), "ok", "{reply}");
    }
    let reply = client
        .request(&send_request(&token, "bob", "one more"))
        .unwrap();
    assert_eq!(code(&reply), "rate_limited", "{reply}");
    assert!(reply["message"]
        .as_str()
        .unwrap()
        .starts_with("Rate limit: "));
}

#[test]
fn new_names_are_limited_per_peer_and_for_everyone() {
    let per_peer = TestBroker::start_with(|c| c.limits.peer_register_limit = Some(10));
    let mut client = per_peer.client();
    for i in 0..10 {
        client.register(&format!("n{i}"), None).unwrap();
    }
    let refused = client.request(&register_request("n10", "")).unwrap();
    assert_eq!(code(&refused), "peer_register_limited", "{refused}");
    let text = refused["message"].as_str().unwrap();
    assert!(text.contains("--peer-register-limit"), "{text}");
    assert!(
        client.register_with("n3", None, true).is_ok(),
        "registering a name again makes no new name and is not counted"
    );
    per_peer.clock.advance(Duration::seconds(61));
    assert!(
        client.register("n10", None).is_ok(),
        "the minute has passed"
    );

    let everyone = TestBroker::start_with(|c| {
        c.limits.peer_register_limit = Some(0);
        c.limits.register_limit = Some(15);
    });
    let mut client = everyone.client();
    for i in 0..15 {
        client.register(&format!("g{i}"), None).unwrap();
    }
    let refused = client.request(&register_request("g15", "")).unwrap();
    assert_eq!(code(&refused), "register_limited", "{refused}");
    assert!(refused["message"]
        .as_str()
        .unwrap()
        .contains("--register-limit"));
    assert_eq!(everyone.count("SELECT count(*) FROM instances"), 15);
}

#[test]
fn registration_limits_are_on_by_default_and_follow_rate_limit_zero() {
    let limits = claude_ipc::config::Limits::default();
    assert!(limits.effective_peer_register_limit() > 0);
    assert!(limits.effective_register_limit() > limits.effective_peer_register_limit());
    assert_eq!(limits.effective_peer_rate_limit(), 10 * limits.rate_limit);
    let unlimited = claude_ipc::config::Limits {
        rate_limit: 0,
        ..limits
    };
    assert_eq!(unlimited.effective_peer_rate_limit(), 0);
    assert_eq!(unlimited.effective_peer_register_limit(), 0);
}

// ---- large messages ----

/// `wchar` from `/proc/<pid>/io`: bytes the process has passed to write calls.
fn bytes_written(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("read /proc/<pid>/io");
    io.lines()
        .find_map(|line| line.strip_prefix("wchar: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("wchar in /proc/<pid>/io")
}

#[test]
fn a_rate_limited_sender_makes_the_broker_write_no_large_file() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::spawn(&data.path().join("d"), &["--rate-limit", "2"]);
    let mut client = broker.client();
    let token = client.register("alice", None).unwrap().session_token;
    for i in 0..2 {
        let reply = client
            .request(&send_request(&token, "bob", &i.to_string()))
            .unwrap();
        assert_eq!(code(&reply), "ok", "{reply}");
    }
    let large = "L".repeat(1_000_000);
    let before = bytes_written(broker.child.id());
    for _ in 0..20 {
        let reply = client
            .request(&send_request(&token, "nobody", &large))
            .unwrap();
        assert_eq!(code(&reply), "rate_limited", "{reply}");
    }
    let written = bytes_written(broker.child.id()) - before;
    assert!(
        written < 1_000_000,
        "the broker wrote {written} bytes for 20 refused 1 MB sends"
    );
    assert!(
        !broker.data_dir.join("large-messages").exists(),
        "no large-message file was ever created"
    );
}

#[test]
fn large_message_caps_refuse_the_next_file_and_small_mail_still_flows() {
    let broker = TestBroker::start_with(|c| {
        c.limits.large_message_sender_bytes = 250_000;
        c.limits.large_message_total_bytes = 400_000;
        c.limits.history_retention = std::time::Duration::from_secs(3600);
    });
    let (addr, alice, bob) = broker.alice_and_bob();
    let reader = broker.register("reader");
    let mut client = Client::connect(&addr, TIMEOUT).unwrap();
    let large = "x".repeat(100_000);
    let mut send = |token: &str, content: &str, nonce: Option<&str>| {
        let mut request = send_request(token, "reader", content);
        if let Some(nonce) = nonce {
            request["nonce"] = nonce.into();
        }
        client.request(&request).unwrap()
    };
    assert_eq!(code(&send(&alice, &large, Some("first"))), "ok");
    let again = send(&alice, &large, Some("first"));
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(
        large_files(&broker.data_dir()),
        1,
        "a duplicate writes no file"
    );
    assert_eq!(code(&send(&alice, &large, None)), "ok");
    let refused = send(&alice, &large, None);
    assert_eq!(code(&refused), "large_message_sender_full", "{refused}");
    let text = refused["message"].as_str().unwrap();
    assert!(
        text.contains("250000-byte cap per sender")
            && text.contains("--large-message-sender-bytes"),
        "{text}"
    );
    assert_eq!(code(&send(&bob, &large, None)), "ok");
    let refused = send(&bob, &large, None);
    assert_eq!(code(&refused), "large_message_total_full", "{refused}");
    assert!(refused["message"]
        .as_str()
        .unwrap()
        .contains("--large-message-total-bytes"));
    assert_eq!(
        large_files(&broker.data_dir()),
        3,
        "refused sends left no file"
    );
    assert_eq!(code(&send(&alice, "small mail still flows", None)), "ok");
    let stored: i64 = broker.count(
        "SELECT coalesce(sum(large_file_bytes), 0) FROM messages WHERE large_file IS NOT NULL",
    );
    let on_disk: u64 = std::fs::read_dir(broker.data_dir().join("large-messages"))
        .unwrap()
        .map(|f| f.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(stored as u64, on_disk, "each row records its file's size");
    // Once the reader has its mail and it is purged, the budget is free again.
    let mut reading = broker.client();
    while reading.check(&reader).unwrap().more {}
    common::wait_until("the reader's mail is marked delivered", || {
        broker.count("SELECT count(*) FROM messages WHERE delivered_at IS NULL") == 0
    });
    broker.clock.advance(Duration::hours(2));
    broker.sweep();
    assert_eq!(large_files(&broker.data_dir()), 0);
    assert_eq!(code(&send(&alice, &large, None)), "ok");
}

// ---- failed authentication ----

/// Sends `count` requests down one persistent connection at once and reads every reply.
fn pipelined(addr: &str, request: &Value, count: usize) -> Vec<Value> {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut line = request.to_string();
    line.push('\n');
    let writer_stream = stream.try_clone().unwrap();
    let all = line.repeat(count);
    let writer = std::thread::spawn(move || {
        let mut writer_stream = writer_stream;
        writer_stream.write_all(all.as_bytes()).unwrap();
    });
    let mut reader = BufReader::new(stream);
    let replies = (0..count)
        .map(|_| {
            let mut reply = String::new();
            reader.read_line(&mut reply).unwrap();
            serde_json::from_str(&reply).unwrap()
        })
        .collect();
    writer.join().unwrap();
    replies
}

/// Every log line the broker has written so far.
fn log_lines(broker: &BrokerProcess) -> Vec<String> {
    let mut lines = Vec::new();
    while let Ok(line) = broker.log.recv_timeout(StdDuration::from_millis(300)) {
        lines.push(line);
    }
    lines
}

#[test]
fn a_flood_of_bad_tokens_costs_bounded_rows_and_log_lines() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("d");
    let broker = BrokerProcess::spawn(&data_dir, &["--auth-failure-limit", "5"]);
    log_lines(&broker);
    // A real client of the same user, registered before the flood.
    let alice = broker
        .client()
        .register("alice", None)
        .unwrap()
        .session_token;
    let flood = json!({"action": "check", "session_token": "guessed-token"});
    let replies = pipelined(&broker.addr, &flood, 2_000);
    assert!(
        replies
            .iter()
            .all(|r| code(r) == "invalid_session"
                && r["message"] == "Invalid or missing session token"),
        "every bad token is refused with the legacy text"
    );
    // The flood came from the same user, and its valid session still works.
    assert!(broker.client().check(&alice).is_ok());
    let db = rusqlite::Connection::open(data_dir.join("ipc.db")).unwrap();
    let (rows, failures): (i64, i64) = db
        .query_row(
            "SELECT count(*), coalesce(sum(failures), 0) FROM auth_failures",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (rows, failures),
        (1, 5),
        "one counted row for the peer's minute"
    );
    let lines = log_lines(&broker);
    let about_auth = lines
        .iter()
        .filter(|l| l.contains("authentication fail"))
        .count();
    assert_eq!(about_auth, 1, "one log line, not 2,000: {lines:#?}");
    // The ping needs no authentication and still answers; status reads the counted rows.
    assert!(broker.client().ping().is_ok());
    let session = data.path().join("session");
    let output = common::cli_with_env(
        &broker.addr,
        &session,
        &["status", "--json"],
        &[("IPC_DATA_DIR", data_dir.to_str().unwrap())],
    );
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["auth_failures_24h"]["total"], 5, "{status}");
}

#[test]
fn the_secret_cannot_be_guessed_faster_than_the_limit() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::spawn_with_env(
        &data.path().join("d"),
        &["--auth-failure-limit", "5"],
        &[("IPC_SHARED_SECRET", "s3cret")],
    );
    let mut client = broker.client();
    let mut codes = Vec::new();
    for guess in 0..200 {
        let wrong = expected_auth_token("mallory", &format!("guess-{guess}"));
        codes.push(
            code(
                &client
                    .request(&register_request("mallory", &wrong))
                    .unwrap(),
            )
            .to_owned(),
        );
    }
    assert!(codes[..5].iter().all(|c| c == "invalid_auth"), "{codes:?}");
    assert!(
        codes[5..].iter().all(|c| c == "auth_throttled"),
        "{codes:?}"
    );
    let right = expected_auth_token("mallory", "s3cret");
    let reply = client
        .request(&register_request("mallory", &right))
        .unwrap();
    assert_eq!(
        code(&reply),
        "auth_throttled",
        "even the right guess is not checked once the peer is throttled: {reply}"
    );
}

#[test]
fn failure_rows_are_aggregated_and_capped_oldest_first() {
    let broker = TestBroker::start_with(|c| {
        c.shared_secret = Some("s3cret".into());
        c.limits.auth_failure_limit = 0;
        c.limits.auth_failure_rows = 3;
    });
    let mut client = broker.client();
    for i in 0..50 {
        let reply = client
            .request(&register_request(&format!("name{i}"), "bad"))
            .unwrap();
        assert_eq!(reply["message"], "Invalid auth token");
    }
    assert_eq!(broker.count("SELECT count(*) FROM auth_failures"), 3);
    assert_eq!(
        broker.count("SELECT count(*) FROM auth_failures WHERE instance_name IN ('name47', 'name48', 'name49')"),
        3,
        "the newest rows are kept"
    );
    for _ in 0..20 {
        client.request(&register_request("name49", "bad")).unwrap();
    }
    assert_eq!(
        broker.count("SELECT failures FROM auth_failures WHERE instance_name = 'name49'"),
        21,
        "repeats within the minute are counted in one row"
    );
}

#[test]
fn a_name_whose_rename_cooldown_still_runs_is_not_reaped() {
    let broker = TestBroker::start_with(|c| {
        c.limits.rename_cooldown = std::time::Duration::from_secs(30 * 86_400);
    });
    let token = broker.register("before");
    broker.client().rename(&token, "after").unwrap();
    broker.clock.advance(Duration::days(8));
    assert_eq!(broker.sweep().instances, 0);
    assert_eq!(
        broker.count("SELECT count(*) FROM instances WHERE name = 'after'"),
        1,
        "reaping it would forget the cooldown a new session of the name must still serve"
    );
    broker.clock.advance(Duration::days(23));
    assert_eq!(
        broker.sweep().instances,
        1,
        "once the cooldown is over it goes"
    );
}

#[test]
fn a_large_broadcast_that_no_queue_has_room_for_writes_no_file() {
    let broker = TestBroker::start_with(|c| c.limits.queue_cap = 1);
    let (_, alice, _bob) = broker.alice_and_bob();
    let mut client = broker.client();
    client.broadcast(&alice, "fills bob's queue").unwrap();
    let reply = client
        .request(&json!({"action": "broadcast", "session_token": alice,
                         "message": {"content": "b".repeat(50_000)}}))
        .unwrap();
    assert_eq!(reply["message"], "Broadcast to 0 instances", "{reply}");
    assert_eq!(reply["skipped"], json!(["bob"]));
    assert!(
        !broker.data_dir().join("large-messages").exists(),
        "no file was written for a message nobody could receive"
    );
}
