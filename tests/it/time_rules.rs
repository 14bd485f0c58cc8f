//! Rules that depend on time, driven by the broker's manual clock instead of sleeping:
//! session idle expiry, rename cooldown, forward expiry, future-mail retention, delivered-mail
//! purge, the request rate limit, clock skew and the replay window.
use crate::common;

use chrono::Duration;
use common::*;
use serde_json::json;

fn code(reply: &serde_json::Value) -> &str {
    reply["code"].as_str().unwrap_or("")
}

#[test]
fn sessions_expire_after_the_idle_window_and_use_refreshes_them() {
    let broker = TestBroker::start();
    let token = broker.register("alice");
    let list = || {
        legacy(
            &broker.addr(),
            &json!({"action": "list", "session_token": token}),
        )
    };
    broker.clock.advance(Duration::hours(23));
    assert_eq!(list()["status"], "ok");
    broker.clock.advance(Duration::hours(23));
    assert_eq!(
        list()["status"],
        "ok",
        "use within the window slides it forward"
    );
    broker
        .clock
        .advance(Duration::hours(24) + Duration::seconds(1));
    let reply = list();
    assert_eq!(code(&reply), "invalid_session", "{reply}");
    assert_eq!(reply["message"], "Invalid or missing session token");
    let failures: i64 = broker.count("SELECT count(*) FROM auth_failures WHERE reason = 'expired session token' AND instance_name = 'alice'");
    assert_eq!(failures, 1);
    // Registering again gives a working session.
    let fresh = broker.register("alice");
    assert!(broker.client().list(&fresh).is_ok());
}

#[test]
fn a_session_is_refreshed_at_most_once_a_minute_so_busy_requests_do_not_rewrite_it() {
    let broker = TestBroker::start();
    let alice = broker.register("alice");
    let registered = broker.clock.now();
    let send = || legacy_send(&broker.addr(), &alice, "bob", "hello");
    let last_used = || -> String {
        broker
            .sql()
            .query_row(
                "SELECT last_used_at FROM sessions WHERE instance_name = 'alice'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    broker.clock.advance(Duration::seconds(59));
    send();
    assert_eq!(
        last_used(),
        claude_ipc::clock::to_text(registered),
        "used again within a minute: not rewritten"
    );
    broker.clock.advance(Duration::seconds(1));
    send();
    assert_eq!(last_used(), claude_ipc::clock::to_text(broker.clock.now()));
}

#[test]
fn registering_again_revokes_the_old_token() {
    let broker = TestBroker::start();
    let old = broker.register("alice");
    let new = broker.take_over("alice");
    assert_ne!(old, new);
    let reply = legacy(
        &broker.addr(),
        &json!({"action": "list", "session_token": old}),
    );
    assert_eq!(code(&reply), "session_replaced");
    assert_eq!(reply["message"], "Invalid or missing session token");
    assert!(broker.client().list(&new).is_ok());
}

#[test]
fn rename_cooldown_counts_down_with_the_clock() {
    let broker = TestBroker::start();
    let token = broker.register("alice");
    let rename = |to: &str| {
        legacy(
            &broker.addr(),
            &json!({"action": "rename", "session_token": token, "new_id": to}),
        )
    };
    assert_eq!(rename("alice2")["message"], "Renamed alice to alice2");
    broker.clock.advance(Duration::minutes(30));
    let reply = rename("alice3");
    assert_eq!(
        reply["message"],
        "Rate limit: can rename again in 30 minutes"
    );
    assert_eq!(code(&reply), "rename_cooldown");
    broker
        .clock
        .advance(Duration::minutes(29) + Duration::seconds(30));
    assert_eq!(
        rename("alice3")["message"],
        "Rate limit: can rename again in 1 minutes"
    );
    broker.clock.advance(Duration::seconds(31));
    assert_eq!(rename("alice3")["message"], "Renamed alice2 to alice3");
}

#[test]
fn forwards_stop_after_their_duration_and_are_swept() {
    let broker = TestBroker::start();
    let sender = broker.register("sender");
    let alice = broker.register("alice");
    broker.client().rename(&alice, "alice2").unwrap();
    let send = || {
        broker
            .client()
            .send(&sender, "alice", "hi", None, None)
            .unwrap()
            .message
    };
    broker.clock.advance(Duration::minutes(119));
    assert_eq!(send(), "Message forwarded from alice to alice2");
    broker.clock.advance(Duration::minutes(2));
    assert_eq!(send(), "Message queued for alice (not yet registered)");
    assert_eq!(broker.sweep().forwards, 1);
    let forwards: i64 = broker.count("SELECT count(*) FROM name_forwards");
    assert_eq!(forwards, 0);
}

#[test]
fn future_mail_is_held_for_seven_days_then_expired() {
    let broker = TestBroker::start();
    let sender = broker.register("sender");
    broker.register("bob");
    let client = || broker.client();
    client()
        .send(&sender, "ghost", "early", None, None)
        .unwrap();
    broker.clock.advance(Duration::days(6));
    // Six idle days outlast the sender's session; it registers again.
    let sender = broker.register("sender");
    client()
        .send(&sender, "ghost", "later", None, None)
        .unwrap();
    client()
        .send(&sender, "bob", "for a registered name", None, None)
        .unwrap();
    broker
        .clock
        .advance(Duration::days(1) + Duration::minutes(1));
    let report = broker.sweep();
    assert_eq!(
        report.future_mail, 1,
        "only the 7-day-old future mail expires: {report:?}"
    );
    let ghost = broker.register("ghost");
    let messages = broker.client().check(&ghost).unwrap().messages;
    let contents: Vec<_> = messages
        .iter()
        .map(|m| m.message.content.as_str())
        .collect();
    assert_eq!(contents, ["later"]);
    // Mail for a registered instance is never expired as future mail, however old.
    broker.clock.advance(Duration::days(30));
    broker.sweep();
    let bob = broker.register("bob");
    assert_eq!(broker.client().check(&bob).unwrap().messages.len(), 1);
}

#[test]
fn delivered_mail_and_its_large_file_are_purged_after_retention() {
    let broker = TestBroker::start();
    let alice = broker.register("alice");
    let bob = broker.register("bob");
    broker
        .client()
        .send(&alice, "bob", &"L".repeat(20 * 1024), None, None)
        .unwrap();
    let checked = broker.client().check(&bob).unwrap();
    let file = checked.messages[0].message.data.as_ref().unwrap()["large_message_file"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(std::path::Path::new(&file).exists());
    // Delivery is marked just after the reply is written; let that land before time moves.
    wait_until("the check's mail is marked delivered", || {
        broker.count("SELECT count(*) FROM messages WHERE delivered_at IS NOT NULL") == 1
    });
    // Kept for the 30-day history retention, then purged.
    broker.clock.advance(Duration::days(29));
    assert_eq!(broker.sweep().delivered_mail, 0);
    assert!(std::path::Path::new(&file).exists());
    broker
        .clock
        .advance(Duration::days(1) + Duration::minutes(1));
    assert_eq!(broker.sweep().delivered_mail, 1);
    assert!(
        !std::path::Path::new(&file).exists(),
        "purged mail takes its file with it"
    );
}

#[test]
fn the_request_rate_limit_is_per_instance_over_a_sliding_minute() {
    let broker = TestBroker::start_with(|c| c.limits.rate_limit = 3);
    let alice = broker.register("alice");
    let bob = broker.register("bob");
    let list = |token: &str| {
        legacy(
            &broker.addr(),
            &json!({"action": "list", "session_token": token}),
        )
    };
    for _ in 0..3 {
        assert_eq!(list(&alice)["status"], "ok");
    }
    let refused = list(&alice);
    assert_eq!(code(&refused), "rate_limited", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("retry in 60 s"),
        "{refused}"
    );
    assert_eq!(
        list(&bob)["status"],
        "ok",
        "another instance has its own budget"
    );
    broker.clock.advance(Duration::seconds(61));
    assert_eq!(list(&alice)["status"], "ok");
}

#[test]
fn timestamps_outside_the_allowed_skew_are_refused() {
    let broker = TestBroker::start();
    let alice = broker.register("alice");
    let now = broker.clock.now();
    let send = |at: chrono::DateTime<chrono::Utc>| {
        legacy(
            &broker.addr(),
            &json!({"action": "send", "session_token": alice, "to_id": "bob",
                    "message": {"content": "x"}, "timestamp": at.to_rfc3339()}),
        )
    };
    assert_eq!(send(now - Duration::minutes(4))["status"], "ok");
    assert_eq!(send(now + Duration::minutes(4))["status"], "ok");
    let stale = send(now - Duration::minutes(6));
    assert_eq!(code(&stale), "stale_timestamp", "{stale}");
    assert_eq!(code(&send(now + Duration::minutes(6))), "stale_timestamp");
}

#[test]
fn a_nonce_is_a_duplicate_only_inside_the_replay_window() {
    let broker = TestBroker::start();
    let alice = broker.register("alice");
    let bob = broker.register("bob");
    let send = || {
        broker
            .client()
            .send(&alice, "bob", "once", None, Some("n-1"))
            .unwrap()
    };
    let first = send();
    broker.clock.advance(Duration::minutes(9));
    let again = send();
    assert!(again.duplicate);
    assert_eq!(again.message_id, first.message_id);
    // The default window is 11 minutes: longer than twice the 5-minute skew, so a copy
    // accepted at the far edge of the skew is still caught.
    broker.clock.advance(Duration::minutes(2));
    let at_eleven = send();
    assert!(at_eleven.duplicate, "11 minutes is still inside the window");
    assert_eq!(at_eleven.message_id, first.message_id);
    broker.clock.advance(Duration::milliseconds(1));
    let later = send();
    assert!(
        !later.duplicate,
        "outside the window the nonce is new again"
    );
    assert_ne!(later.message_id, first.message_id);
    assert_eq!(broker.client().check(&bob).unwrap().messages.len(), 2);
}

#[test]
fn a_retried_broadcast_with_the_same_nonce_is_stored_once() {
    let broker = TestBroker::start();
    let alice = broker.register("alice");
    let bob = broker.register("bob");
    broker.register("carol");
    let broadcast = || {
        legacy(
            &broker.addr(),
            &json!({"action": "broadcast", "session_token": alice,
                    "message": {"content": "deploying"}, "nonce": "b-1"}),
        )
    };
    let first = broadcast();
    assert_eq!(first["message"], "Broadcast to 2 instances");
    let again = broadcast();
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["message_id"], first["message_ids"][0]);
    assert_eq!(broker.client().check(&bob).unwrap().messages.len(), 1);
}

#[test]
fn authentication_failures_are_kept_thirty_days() {
    let broker = TestBroker::start();
    let reply = legacy(
        &broker.addr(),
        &json!({"action": "list", "session_token": "bogus"}),
    );
    assert_eq!(code(&reply), "invalid_session");
    broker.clock.advance(Duration::days(29));
    assert_eq!(broker.sweep().auth_failures, 0);
    broker.clock.advance(Duration::days(2));
    assert_eq!(broker.sweep().auth_failures, 1);
}

#[test]
fn a_sweep_runs_batch_after_batch_until_every_table_is_done() {
    let broker = TestBroker::start();
    broker.register("bob");
    // More old delivered mail and more old future mail than three batches of 500 hold, written
    // straight into the database the broker has open.
    let writer = rusqlite::Connection::open(broker.db_path()).unwrap();
    writer
        .busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    writer
        .execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1234)
             INSERT INTO messages (sender, addressed_to, recipient, content, received_at, delivered_at)
             SELECT 'alice', 'bob', 'bob', 'old ' || i, '2025-01-01T00:00:00.000Z',
                    '2025-01-01T00:00:01.000Z' FROM n;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 700)
             INSERT INTO messages (sender, addressed_to, recipient, content, received_at)
             SELECT 'alice', 'ghost', 'ghost', 'never read ' || i, '2025-01-01T00:00:00.000Z'
             FROM n;",
        )
        .unwrap();
    let report = broker.sweep();
    assert_eq!(report.delivered_mail, 1234, "{report:?}");
    assert_eq!(report.future_mail, 700, "{report:?}");
    assert_eq!(broker.count("SELECT count(*) FROM messages"), 0);
    assert_eq!(broker.sweep().delivered_mail, 0);
}
