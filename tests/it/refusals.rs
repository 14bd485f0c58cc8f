//! A refused request keeps what it recorded before the refusal, and a request that fails in
//! the store keeps nothing: a refused send still counts against its sender's rate limit, and
//! a refused session check still leaves its authentication failure behind.

use crate::common;

use common::TestBroker;
use serde_json::{json, Value};

fn code(reply: &Value) -> &str {
    reply["code"].as_str().unwrap_or("ok")
}

#[test]
fn a_refused_send_still_counts_against_the_senders_rate_limit() {
    let broker = TestBroker::start_with(|c| {
        c.limits.rate_limit = 3;
        c.limits.queue_cap = 1;
    });
    let (_addr, alice, _bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let mut send = |content: &str| {
        let request = json!({"action": "send", "session_token": alice, "to_id": "bob",
                             "message": {"content": content}});
        client.request(&request).unwrap()
    };
    assert_eq!(code(&send("first")), "ok");
    // Bob's queue holds one message: these two are refused, and each is still a request.
    assert_eq!(code(&send("second")), "queue_full");
    assert_eq!(code(&send("third")), "queue_full");
    let fourth = send("fourth");
    assert_eq!(code(&fourth), "rate_limited", "{fourth}");
    assert_eq!(
        broker.count("SELECT count(*) FROM request_log WHERE instance_name = 'alice'"),
        3,
        "each refused send committed its rate-limit entry"
    );
}

#[test]
fn a_refused_session_check_commits_its_authentication_failure() {
    let broker = TestBroker::start();
    let mut client = broker.client();
    let request = json!({"action": "check", "session_token": "not-a-session"});
    let reply = client.request(&request).unwrap();
    assert_eq!(code(&reply), "invalid_session", "{reply}");
    assert_eq!(
        broker.count(
            "SELECT coalesce(sum(failures), 0) FROM auth_failures
             WHERE reason = 'unknown session token'"
        ),
        1
    );
}
