//! The client side of trustworthy delivery: `check` and `watch` acknowledge mail only once it
//! is on stdout, and a stamped send that loses its connection is retried with the same nonce.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use claude_ipc::client::{Client, Stamp};
use common::{binary, cli, TestBroker};

/// Registers `name` through the CLI into its own session file.
fn register(broker: &TestBroker, dir: &tempfile::TempDir, name: &str) -> std::path::PathBuf {
    let file = dir.path().join(format!("{name}.session"));
    let out = cli(&broker.addr(), &file, &["register", name]);
    assert!(out.status.success(), "{out:?}");
    file
}

fn pending(broker: &TestBroker) -> i64 {
    broker.count("SELECT count(*) FROM messages WHERE delivered_at IS NULL")
}

#[test]
fn check_acknowledges_what_it_printed() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (
        register(&broker, &dir, "alice"),
        register(&broker, &dir, "bob"),
    );
    assert!(cli(&broker.addr(), &bob, &["send", "alice", "printed"])
        .status
        .success());
    let out = cli(&broker.addr(), &alice, &["check"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("printed"));
    common::wait_until("the printed mail is acknowledged", || pending(&broker) == 0);
    assert_eq!(
        broker.count("SELECT count(*) FROM messages WHERE delivered_at IS NOT NULL AND leased_until IS NOT NULL"),
        1,
        "it was read with a lease and settled by an ack"
    );
}

#[test]
fn check_into_a_closed_pipe_leaves_the_mail_queued() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (
        register(&broker, &dir, "alice"),
        register(&broker, &dir, "bob"),
    );
    assert!(cli(&broker.addr(), &bob, &["send", "alice", "unseen"])
        .status
        .success());
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(binary())
        .arg("check")
        .env("IPC_ADDR", broker.addr())
        .env("IPC_SESSION_FILE", &alice)
        .env("IPC_AUTOSTART", "0")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("was not acknowledged"), "{stderr}");
    assert_eq!(pending(&broker), 1, "the mail nobody saw is still queued");
}

#[test]
fn watch_prints_mail_as_it_arrives_and_acknowledges_it() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (
        register(&broker, &dir, "alice"),
        register(&broker, &dir, "bob"),
    );
    let mut watch = Command::new(binary())
        .arg("watch")
        .env("IPC_ADDR", broker.addr())
        .env("IPC_SESSION_FILE", &alice)
        .env("IPC_AUTOSTART", "0")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    for text in ["first", "second"] {
        assert!(cli(&broker.addr(), &bob, &["send", "alice", text])
            .status
            .success());
        let header = lines.next().unwrap().unwrap();
        assert!(header.contains("from bob"), "{header}");
        assert_eq!(lines.next().unwrap().unwrap().trim(), text);
    }
    common::wait_until("watched mail is acknowledged", || pending(&broker) == 0);
    watch.kill().unwrap();
    watch.wait().unwrap();
}

/// A proxy that forwards each connection to `target`, but cuts the first one right after
/// passing the request on, before the reply comes back: the broker stored the send, yet the
/// client sees its connection fail.
fn lossy_proxy(target: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    thread::spawn(move || {
        for client in listener.incoming() {
            let client = client.unwrap();
            let first = seen.fetch_add(1, Ordering::SeqCst) == 0;
            let target = target.clone();
            thread::spawn(move || forward(client, &target, first));
        }
    });
    (addr, connections)
}

fn forward(client: TcpStream, target: &str, cut_after_request: bool) {
    let broker = TcpStream::connect(target).unwrap();
    let mut request = String::new();
    let mut from_client = BufReader::new(client.try_clone().unwrap());
    from_client.read_line(&mut request).unwrap();
    (&broker).write_all(request.as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(&broker).read_line(&mut reply).unwrap();
    if cut_after_request {
        return; // both sockets drop: the client never gets the reply
    }
    (&client).write_all(reply.as_bytes()).unwrap();
    let mut rest = Vec::new();
    let _ = from_client.read_to_end(&mut rest);
}

#[test]
fn a_send_whose_reply_is_lost_is_retried_once_and_stored_once() {
    let broker = TestBroker::start_on_wall_clock();
    let (alice, _bob) = (broker.register("alice"), broker.register("bob"));
    let (proxy, connections) = lossy_proxy(broker.addr());
    let mut client = Client::connect(&proxy, Duration::from_secs(5)).unwrap();
    let stamp = Stamp::fresh().unwrap();

    let sent = client
        .send_stamped(&alice, "bob", "exactly once", None, &stamp)
        .expect("the retry succeeds");

    assert_eq!(connections.load(Ordering::SeqCst), 2, "one retry");
    assert!(sent.duplicate, "the retry found the first copy");
    assert_eq!(
        broker.count("SELECT count(*) FROM messages WHERE content = 'exactly once'"),
        1
    );
    assert_eq!(
        broker.count("SELECT id FROM messages WHERE content = 'exactly once'"),
        sent.message_id
    );
}
