//! The wall clock jumps, forward and back, while the broker runs and across a restart: no mail
//! is lost, no session dies, and no limit or cooldown holds anyone longer than its window,
//! because the rules run on the broker clock (real elapsed time). Driven by the manual clock,
//! whose `jump_wall` steps the wall clock without time passing; and, where libfaketime is
//! installed, by the real binary under libfaketime.
use crate::common;

use chrono::Duration;
use claude_ipc::clock;
use common::*;
use serde_json::{json, Value};

fn code(reply: &Value) -> &str {
    reply["code"].as_str().unwrap_or("")
}

fn list(broker: &TestBroker, token: &str) -> Value {
    legacy(
        &broker.addr(),
        &json!({"action": "list", "session_token": token}),
    )
}

fn rename(broker: &TestBroker, token: &str, new_name: &str) -> Value {
    legacy(
        &broker.addr(),
        &json!({"action": "rename", "session_token": token, "new_id": new_name}),
    )
}

fn ping(broker: &TestBroker) -> Value {
    legacy(&broker.addr(), &json!({"action": "ping"}))
}

fn waiting_for(broker: &TestBroker, name: &str) -> i64 {
    broker.count(&format!(
        "SELECT count(*) FROM messages WHERE recipient = '{name}' AND delivered_at IS NULL"
    ))
}

/// alice and bob registered; alice has queued 100 messages for `ghost`, who never registered,
/// and one for bob, which bob read. Returns their tokens.
fn mail_waiting_for_a_name_nobody_holds(broker: &TestBroker) -> (String, String) {
    let (addr, alice, bob) = broker.alice_and_bob();
    for i in 0..100 {
        let sent = legacy_send(&addr, &alice, "ghost", &format!("for later {i}"));
        assert_eq!(sent["status"], "ok", "{sent}");
    }
    legacy_send(&addr, &alice, "bob", "read already");
    assert_eq!(contents(&legacy_check(&addr, &bob)), ["read already"]);
    (alice, bob)
}

#[test]
fn eight_days_forward_on_the_wall_clock_expires_nothing_until_the_time_has_really_passed() {
    let broker = TestBroker::start();
    let (alice, bob) = mail_waiting_for_a_name_nobody_holds(&broker);
    let renamed = rename(&broker, &alice, "alicia");
    assert_eq!(renamed["status"], "ok", "{renamed}");

    broker.clock.jump_wall(Duration::days(8));
    let report = broker.sweep();
    assert_eq!(report.future_mail + report.delivered_mail, 0, "{report:?}");
    assert_eq!((report.sessions, report.forwards), (0, 0), "{report:?}");
    assert_eq!(waiting_for(&broker, "ghost"), 100, "no waiting mail lost");
    assert_eq!(
        list(&broker, &alice)["status"],
        "ok",
        "alice's session works"
    );
    assert_eq!(list(&broker, &bob)["status"], "ok", "bob's session works");
    let forwarded = legacy_send(&broker.addr(), &bob, "alice", "still forwarded");
    assert_eq!(
        forwarded["message"], "Message forwarded from alice to alicia",
        "{forwarded}"
    );
    let clock = &ping(&broker)["clock"];
    assert_eq!(clock["wall_ahead_ms"], Duration::days(8).num_milliseconds());
    assert_eq!(clock["broker"], clock::to_text(broker.broker().now()));

    // Real time passing still expires what is due: 7 days of it for mail nobody registered for.
    broker
        .clock
        .advance(Duration::days(7) + Duration::seconds(1));
    broker.sweep();
    assert_eq!(waiting_for(&broker, "ghost"), 0, "retention ran out");
    assert_eq!(code(&list(&broker, &bob)), "invalid_session", "idle a week");
}

#[test]
fn an_hour_back_on_the_wall_clock_holds_no_limit_or_cooldown_longer_than_its_window() {
    let broker = TestBroker::start_with(|config| {
        config.limits.rate_limit = 5;
    });
    let alice = broker.register("alice");
    let renamed = rename(&broker, &alice, "alicia");
    assert_eq!(renamed["status"], "ok");
    for _ in 0..4 {
        assert_eq!(list(&broker, &alice)["status"], "ok");
    }
    assert_eq!(code(&list(&broker, &alice)), "rate_limited");

    broker.clock.jump_wall(-Duration::hours(1));
    let limited = list(&broker, &alice);
    assert_eq!(code(&limited), "rate_limited", "{limited}");
    let retry = limited["message"].as_str().unwrap();
    assert!(retry.ends_with("retry in 60 s"), "{retry}");
    broker.clock.advance(Duration::seconds(61));
    assert_eq!(list(&broker, &alice)["status"], "ok", "the window passed");

    let again = rename(&broker, &alice, "ally");
    assert_eq!(code(&again), "rename_cooldown", "{again}");
    assert_eq!(
        again["message"], "Rate limit: can rename again in 59 minutes",
        "an hour's cooldown less the minute that really passed"
    );
    broker.clock.advance(Duration::minutes(59));
    let renamed = rename(&broker, &alice, "ally");
    assert_eq!(renamed["status"], "ok", "{renamed}");
}

#[test]
fn a_restart_under_a_jumped_wall_clock_resumes_the_broker_clock_of_the_same_boot() {
    let broker = TestBroker::start();
    let (alice, bob) = mail_waiting_for_a_name_nobody_holds(&broker);
    let before = broker.broker().now();
    broker.clock.advance(Duration::minutes(10));
    broker.clock.jump_wall(Duration::days(8));
    let broker = broker.restart();
    assert_eq!(
        broker.broker().now(),
        before + Duration::minutes(10),
        "the last run's time plus the real time since, not the wall clock"
    );
    broker.sweep();
    assert_eq!(waiting_for(&broker, "ghost"), 100, "no waiting mail lost");
    assert_eq!(list(&broker, &alice)["status"], "ok");
    assert_eq!(list(&broker, &bob)["status"], "ok");

    // And back: the wall clock a day behind where it was before the first jump.
    broker.clock.advance(Duration::minutes(5));
    broker.clock.jump_wall(-Duration::days(9));
    let broker = broker.restart();
    assert_eq!(broker.broker().now(), before + Duration::minutes(15));
    let ghost = broker.register("ghost");
    let mut client = broker.client();
    let first = client.check(&ghost).unwrap();
    assert_eq!(first.messages.len(), 100, "all of it, after two jumps");
}

#[test]
fn after_a_reboot_with_the_wall_clock_behind_the_broker_clock_does_not_go_back() {
    let broker = TestBroker::start_with(|config| {
        config.limits.rate_limit = 3;
    });
    let alice = broker.register("alice");
    let renamed = rename(&broker, &alice, "alicia");
    assert_eq!(renamed["status"], "ok");
    assert_eq!(list(&broker, &alice)["status"], "ok");
    let persisted = broker.broker().now();
    broker.clock.reboot();
    broker.clock.jump_wall(-Duration::hours(3));
    let broker = broker.restart();
    assert_eq!(broker.broker().now(), persisted, "not three hours back");
    let again = rename(&broker, &alice, "ally");
    assert_eq!(
        again["message"], "Rate limit: can rename again in 60 minutes",
        "not four hours"
    );
    let limited = list(&broker, &alice);
    assert_eq!(retry_seconds(limited["message"].as_str().unwrap()), 60);
}

/// Times a previous boot wrote ahead of the broker's time now (its clock ran ahead and the
/// anchor was lost with a crash): none of them may stretch a wait.
#[test]
fn stored_times_in_the_future_never_make_a_wait_longer_than_its_window() {
    let broker = TestBroker::start_with(|config| {
        config.limits.rate_limit = 5;
    });
    let alice = broker.register("alice");
    let in_an_hour = clock::to_text(broker.broker().now() + Duration::hours(1));
    let writer = rusqlite::Connection::open(broker.db_path()).unwrap();
    writer
        .busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    writer
        .execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)
             INSERT INTO request_log (instance_name, at) SELECT 'alice', '{in_an_hour}' FROM n;
             UPDATE instances SET last_renamed_at = '{in_an_hour}' WHERE name = 'alice';
             UPDATE sessions SET last_used_at = '{in_an_hour}' WHERE instance_name = 'alice';"
        ))
        .unwrap();
    for _ in 0..5 {
        let reply = list(&broker, &alice);
        assert_eq!(
            reply["status"], "ok",
            "future requests do not count: {reply}"
        );
    }
    let limited = list(&broker, &alice);
    assert!(
        limited["message"]
            .as_str()
            .unwrap()
            .ends_with("retry in 60 s"),
        "{limited}"
    );
    broker.clock.advance(Duration::seconds(61));
    let renamed = rename(&broker, &alice, "alicia");
    assert_eq!(
        renamed["message"], "Rate limit: can rename again in 60 minutes",
        "the future rename counts as just now, not as an hour from now"
    );
    let last_used: String = broker
        .sql()
        .query_row(
            "SELECT last_used_at FROM sessions WHERE instance_name = 'alice'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert!(
        last_used < in_an_hour,
        "the future last use was rewritten: {last_used}"
    );
}

#[test]
fn a_sender_stamping_with_the_jumped_wall_clock_is_not_refused() {
    let broker = TestBroker::start();
    let (addr, alice, _bob) = broker.alice_and_bob();
    broker.clock.jump_wall(Duration::days(8));
    let send = |at: chrono::DateTime<chrono::Utc>| {
        legacy(
            &addr,
            &json!({"action": "send", "session_token": alice, "to_id": "bob",
                    "message": {"content": "stamped"}, "timestamp": clock::to_text(at)}),
        )
    };
    let wall = broker.clock.now();
    let sent = send(wall);
    assert_eq!(
        sent["status"], "ok",
        "the machine's clock is what senders stamp with: {sent}"
    );
    let (received_at, sender_timestamp): (String, String) = broker
        .sql()
        .query_row(
            "SELECT received_at, sender_timestamp FROM messages WHERE id = ?1",
            [sent["message_id"].as_i64().unwrap()],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!(sender_timestamp, clock::to_text(wall));
    assert_eq!(
        received_at,
        clock::to_text(broker.broker().now()),
        "stored by the broker clock, eight days behind the wall clock"
    );
    assert_eq!(
        code(&send(wall - Duration::minutes(6))),
        "stale_timestamp",
        "the skew limit still holds"
    );
    assert_eq!(
        code(&send(broker.broker().now())),
        "stale_timestamp",
        "no sender on this machine stamps with the broker clock"
    );
}

/// The seconds in a rate-limit refusal's "retry in N s".
fn retry_seconds(message: &str) -> i64 {
    let after = message
        .split("retry in ")
        .nth(1)
        .unwrap_or_else(|| panic!("no retry in: {message}"));
    after
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in: {message}"))
}

#[test]
fn status_says_when_the_wall_clock_disagrees_with_the_broker_clock() {
    let broker = TestBroker::start();
    let status = |extra: &[&str]| {
        let mut args = vec!["status"];
        args.extend_from_slice(extra);
        let data_dir = broker.data_dir();
        cli_with_env(
            &broker.addr(),
            &data_dir.join("unused.session"),
            &args,
            &[("IPC_DATA_DIR", data_dir.to_str().unwrap())],
        )
    };
    let report =
        |output: std::process::Output| -> Value { serde_json::from_slice(&output.stdout).unwrap() };
    let warnings = |output: std::process::Output| -> Vec<String> {
        serde_json::from_value(report(output)["warnings"].clone()).unwrap()
    };
    let about_the_clock = |w: &String| w.contains("wall clock");
    assert!(!warnings(status(&["--json"])).iter().any(about_the_clock));
    broker.clock.jump_wall(-Duration::hours(1));
    let said = warnings(status(&["--json"]));
    let warning = said.iter().find(|w| about_the_clock(w));
    let warning = warning.unwrap_or_else(|| panic!("no clock warning in {said:?}"));
    assert!(warning.contains("1 h behind its broker clock"), "{warning}");
    let text = String::from_utf8(status(&[]).stdout).unwrap();
    assert!(text.contains("behind its broker clock"), "{text}");

    // "Online" is measured on the broker clock the times were stored by, not on this
    // process's wall clock (which is not even the manual clock's year).
    broker.register("alice");
    let seen = report(status(&["--json"]));
    let alice = &seen["instances"][0];
    assert_eq!(
        (&alice["name"], &alice["online"]),
        (&json!("alice"), &json!(true)),
        "{seen}"
    );
}

// ---- the real binary under libfaketime ----

/// Where Debian's `libfaketime` package puts the library, on this machine's architecture.
fn libfaketime() -> Option<String> {
    let library = format!(
        "/usr/lib/{}-linux-gnu/faketime/libfaketime.so.1",
        std::env::consts::ARCH
    );
    if std::path::Path::new(&library).exists() {
        return Some(library);
    }
    eprintln!(
        "SKIPPED: {library} is missing, so the broker cannot be run under libfaketime; \
         install it with `apt-get install -y libfaketime`"
    );
    None
}

/// Waits until the broker's log has a line containing `text`, and returns it.
fn log_line(broker: &BrokerProcess, text: &str) -> String {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match broker.log.recv_timeout(left) {
            Ok(line) if line.contains(text) => return line,
            Ok(_) => {}
            Err(_) => panic!("the broker never logged `{text}`"),
        }
    }
}

#[test]
fn under_libfaketime_eight_days_forward_a_restarted_broker_keeps_mail_sessions_and_senders() {
    let Some(library) = libfaketime() else { return };
    let data = tempfile::tempdir().unwrap();
    let sweep_often = ["--sweep-interval", "100ms"];
    let broker = BrokerProcess::spawn(data.path(), &sweep_often);
    let mut client = broker.client();
    let alice = client.register("alice", None).unwrap().session_token;
    for i in 0..20 {
        client
            .send(&alice, "ghost", &format!("for later {i}"), None, None)
            .unwrap();
    }
    assert!(broker.terminate().success());

    let faked = [("LD_PRELOAD", library.as_str()), ("FAKETIME", "+8d")];
    let broker = BrokerProcess::spawn_with_env(data.path(), &sweep_often, &faked);
    let mut client = broker.client();
    wait_for_a_few_sweeps(&mut client);
    let ping = ping_json(&mut client);
    let ahead = ping["clock"]["wall_ahead_ms"].as_i64().unwrap();
    assert!((ahead - 8 * 86_400_000).abs() < 60_000, "{ping}");
    assert!(client.list(&alice).is_ok(), "alice's session survived");
    // A client on the real clock stamps its send; the broker's faked wall clock must not refuse it.
    let stamp = claude_ipc::client::Stamp::fresh().unwrap();
    let sent = client.send_stamped(&alice, "ghost", "stamped", None, &stamp);
    assert!(sent.is_ok(), "{sent:?}");
    let ghost = client.register("ghost", None).unwrap();
    assert_eq!(ghost.queued, 21, "no waiting mail was swept");
    assert!(broker.terminate().success());
}

/// Returns once the broker has swept a few times. With no client asking anything else, only
/// its background sweeps (every 100 ms in these tests) run store jobs, a handful each, and
/// `ping` runs none, so ten more jobs than at the first look are at least two sweeps.
fn wait_for_a_few_sweeps(client: &mut claude_ipc::client::Client) {
    let mut jobs = || ping_json(client)["store"]["jobs"].as_u64().unwrap();
    let first = jobs();
    wait_until("the broker swept a few times", || jobs() >= first + 10);
}

/// Changes the fake time of every process reading `file` (`FAKETIME_TIMESTAMP_FILE`). The
/// new file is moved into place, so a reader never sees it half written.
fn set_fake_offset(file: &std::path::Path, offset: &str) {
    let next = file.with_extension("next");
    std::fs::write(&next, format!("{offset}\n")).unwrap();
    std::fs::rename(&next, file).unwrap();
}

#[test]
fn under_libfaketime_a_running_broker_whose_time_jumps_both_ways_loses_nothing() {
    let Some(library) = libfaketime() else { return };
    let data = tempfile::tempdir().unwrap();
    let offset_file = data.path().join("faketime-offset");
    set_fake_offset(&offset_file, "+0");
    let offset = offset_file.to_str().unwrap();
    let faked = [
        ("LD_PRELOAD", library.as_str()),
        ("FAKETIME_TIMESTAMP_FILE", offset),
        ("FAKETIME_NO_CACHE", "1"),
    ];
    let broker = BrokerProcess::spawn_with_env(
        &data.path().join("data"),
        &["--sweep-interval", "100ms", "--rate-limit", "5"],
        &faked,
    );
    let mut client = broker.client();
    let alice = client.register("alice", None).unwrap().session_token;
    for i in 0..3 {
        client
            .send(&alice, "ghost", &format!("for later {i}"), None, None)
            .unwrap();
    }
    set_fake_offset(&offset_file, "+8d");
    let warning = log_line(&broker, "the wall clock disagrees with the broker clock");
    assert!(warning.contains("WARN"), "{warning}");
    // libfaketime re-reads the offset file on every call, from every thread: right after the
    // swap a thread can read a moment of another offset (once, under a loaded CI, the first
    // warning and a second 1 s off the final one). Let that settle before counting.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let settling: Vec<String> = broker
        .log
        .try_iter()
        .filter(|line| line.contains("disagrees"))
        .collect();
    for _ in 0..5 {
        ping_json(&mut client);
    }
    wait_for_a_few_sweeps(&mut client);
    let again: Vec<String> = broker
        .log
        .try_iter()
        .filter(|line| line.contains("disagrees"))
        .collect();
    assert!(
        again.is_empty(),
        "logged once per change, not per request: {again:?} (first {warning}, then {settling:?})"
    );

    // One connection kept through both changes: the broker's timeouts keep real time (it runs
    // itself with libfaketime's monotonic clock left alone), so no idle timeout fires early.
    let mut list = || client.list(&alice).map(|_| ());
    assert!(list().is_ok(), "alice's session survived +8 days");
    set_fake_offset(&offset_file, "-1h");
    // Four requests so far and a limit of five: the fifth passes, the sixth waits a minute at
    // most, not an hour.
    let fifth = list();
    assert!(fifth.is_ok(), "{fifth:?}");
    let limited = list().unwrap_err().to_string();
    assert!(limited.contains("requests per 60 s"), "{limited}");
    assert!(retry_seconds(&limited) <= 60, "{limited}");
    let mut ghost_client = broker.client();
    let ghost = ghost_client.register("ghost", None).unwrap();
    assert_eq!(ghost.queued, 3, "no waiting mail was swept");
    let token = ghost.session_token;
    assert_eq!(ghost_client.check(&token).unwrap().messages.len(), 3);
    // A long-poll waits its second, neither returning at once nor waiting an hour.
    let began = std::time::Instant::now();
    let wait = claude_ipc::client::CheckOptions {
        wait: Some(std::time::Duration::from_secs(1)),
        ..Default::default()
    };
    assert!(ghost_client
        .check_with(&token, wait)
        .unwrap()
        .messages
        .is_empty());
    let waited = began.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(900) && waited < TIMEOUT,
        "{waited:?}"
    );
    drop(broker);
}
