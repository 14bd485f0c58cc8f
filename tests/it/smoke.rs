//! The harness itself works: an in-process broker and a subprocess broker both answer.
use crate::common;

use common::*;
use serde_json::json;

#[test]
fn in_process_broker_answers_a_legacy_ping() {
    let broker = TestBroker::start();
    let reply = legacy(&broker.addr(), &json!({"action": "ping"}));
    assert_eq!(reply["status"], "ok");
    assert_eq!(reply["version"], claude_ipc::VERSION);
}

#[test]
fn subprocess_broker_answers_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::spawn(&dir.path().join("data"), &[]);
    assert_eq!(ping_json(&mut broker.client())["status"], "ok");
    assert!(broker.terminate().success());
}
