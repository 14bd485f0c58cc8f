//! The contract of [`Broker::job`], the one way a rule reaches the store: a refusal commits
//! what the job did before it, a store failure rolls it back; and a request's session token
//! is hashed once, however many checks the request makes.

use std::path::Path;

use super::*;
use crate::clock::Clock;
use crate::domain::InstanceName;

fn broker_in(dir: &Path) -> Broker {
    let store = Store::open(&dir.join("ipc.db")).unwrap();
    let clock = BrokerClock::resume(Clock::system(), None, None).0;
    Broker::new(
        store,
        Limits::default(),
        None,
        dir.join("large-messages"),
        clock,
    )
}

fn name(text: &str) -> InstanceName {
    InstanceName::parse(text).unwrap()
}

/// Whether `name` is registered, read in a job of its own.
async fn registered(broker: &Broker, name: InstanceName) -> bool {
    broker
        .job(Durability::Flushed, move |tx, _now| {
            done(tx.instance_exists(&name)?)
        })
        .await
        .unwrap()
}

async fn request(broker: &Broker, json: serde_json::Value) -> Reply {
    let request = Request::parse(json.to_string().as_bytes()).unwrap();
    broker.handle(request, &Peer::unknown("test")).await.reply
}

#[tokio::test]
async fn a_refused_job_keeps_what_it_wrote_before_refusing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_in(dir.path());
    let refused = broker
        .job(Durability::Flushed, |tx, now| {
            tx.upsert_instance(&name("alice"), now)?;
            refuse::<()>(BrokerError::SameName("alice".into()))
        })
        .await;
    assert!(
        matches!(refused, Err(BrokerError::SameName(_))),
        "{refused:?}"
    );
    assert!(
        registered(&broker, name("alice")).await,
        "the refusal committed the job's write"
    );
}

#[tokio::test]
async fn a_failed_job_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_in(dir.path());
    let failed = broker
        .job(Durability::Flushed, |tx, now| {
            tx.upsert_instance(&name("bob"), now)?;
            Err::<JobEnd<()>, _>(StoreError::Closed)
        })
        .await;
    assert!(
        matches!(failed, Err(BrokerError::Store(StoreError::Closed))),
        "{failed:?}"
    );
    assert!(
        !registered(&broker, name("bob")).await,
        "the failure rolled the job's write back"
    );
}

#[tokio::test]
async fn a_check_hashes_its_session_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_in(dir.path());
    let registered = request(
        &broker,
        serde_json::json!({"action": "register", "instance_id": "carol"}),
    )
    .await;
    let token = registered.to_json()["session_token"].clone();
    // Hashing happens on this thread: the runtime of a `tokio::test` is this thread alone,
    // and the store's writer thread never hashes a token.
    let before = TokenHash::hashed_on_this_thread();
    let checked = request(
        &broker,
        serde_json::json!({"action": "check", "session_token": token}),
    )
    .await;
    assert!(checked.is_ok(), "{checked:?}");
    assert_eq!(TokenHash::hashed_on_this_thread() - before, 1);
}
