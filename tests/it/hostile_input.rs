//! Hostile and confused input: one test per case the reliability issue lists, then the cases
//! around them (limits at their edges, slow and silent clients, a reply that cannot be
//! written, pipelined and half requests). Each gets a clear error with a stable code (or a
//! clean close), never takes the broker down and loses nothing already stored; the issue's
//! cases end with a normal client registering, sending and checking on the same broker.
use crate::common;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use claude_ipc::client::Client;
use common::*;
use serde_json::{json, Value};

/// Queues one message for bob, to prove later that nothing stored was lost.
fn stored_mail(addr: &str) -> String {
    let mut client = Client::connect(addr, TIMEOUT).unwrap();
    let alice = client.register("alice", None).unwrap().session_token;
    let bob = client.register("bob", None).unwrap().session_token;
    client
        .send(&alice, "bob", "must survive", None, None)
        .unwrap();
    bob
}

/// Bob's stored message is still there, then a normal client is served.
fn mail_intact_and_a_normal_client_served(addr: &str, bob: &str) {
    let checked = Client::connect(addr, TIMEOUT).unwrap().check(bob).unwrap();
    let contents: Vec<_> = checked
        .messages
        .iter()
        .map(|m| &m.message.content)
        .collect();
    assert_eq!(contents, ["must survive"]);
    a_normal_client_is_served(addr, "after");
}

/// Sends each request on one persistent connection and expects the error code beside it.
fn expect_codes(addr: &str, cases: &[(&[u8], &str)]) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    for (request, code) in cases {
        stream.write_all(request).unwrap();
        let reply = read_reply(&mut stream);
        let shown = String::from_utf8_lossy(request);
        assert_eq!(reply["status"], "error", "{shown}");
        assert_eq!(reply["code"], *code, "{shown}: {reply}");
        assert!(reply["message"].as_str().unwrap().len() > 10, "{reply}");
    }
    // The same connection still serves a good request after all of that.
    stream.write_all(b"{\"action\": \"ping\"}\n").unwrap();
    assert_eq!(read_reply(&mut stream)["status"], "ok");
}

#[test]
fn malformed_json_wrong_types_and_a_missing_action() {
    let broker = TestBroker::start();
    let bob = stored_mail(&broker.addr());
    expect_codes(
        &broker.addr(),
        &[
            (b"{\"action\": \"ping\",,}\n", "invalid_json"),
            (b"{\"action\": \"ping\" \"x\"}\n", "invalid_json"),
            (b"[1, 2, 3]\n", "not_an_object"),
            (b"\"just a string\"\n", "not_an_object"),
            (b"hello there\n", "invalid_json"),
            (b"{\"to_id\": \"bob\"}\n", "missing_field"),
            (b"{}\n", "missing_field"),
            (b"{\"action\": null}\n", "invalid_field"),
            (b"{\"action\": 42}\n", "invalid_field"),
            (b"{\"action\": [\"ping\"]}\n", "invalid_field"),
            (b"{\"action\": \"send\", \"session_token\": \"x\", \"to_id\": [1], \"message\": {\"content\": \"x\"}}\n", "invalid_field"),
            (b"{\"action\": \"send\", \"session_token\": \"x\", \"to_id\": \"bob\"}\n", "missing_field"),
            (b"{\"action\": \"send\", \"session_token\": \"x\", \"to_id\": \"bob\", \"message\": \"hi\"}\n", "invalid_field"),
            (b"{\"action\": \"send\", \"session_token\": 7, \"to_id\": \"bob\", \"message\": {\"content\": \"x\"}}\n", "invalid_field"),
            (b"{\"action\": \"check\", \"session_token\": \"x\", \"limit\": -1}\n", "invalid_field"),
            (b"{\"action\": \"teleport\"}\n", "unknown_action"),
        ],
    );
    mail_intact_and_a_normal_client_served(&broker.addr(), &bob);
}

#[test]
fn invalid_utf8() {
    let broker = TestBroker::start();
    let bob = stored_mail(&broker.addr());
    expect_codes(
        &broker.addr(),
        &[
            (b"{\"action\": \"ping\xff\xfe\"}\n", "invalid_json"),
            (b"{\"act\xc3ion\": \"ping\"}\n", "invalid_json"),
            (b"{\"action\": \"send\", \"session_token\": \"x\", \"to_id\": \"bob\", \"message\": {\"content\": \"\xed\xa0\x80\"}}\n", "invalid_json"),
            (b"\xff\xfe\xfd\n", "invalid_json"),
        ],
    );
    // The legacy framing (no newline, one object per connection) too.
    let reply: Value =
        serde_json::from_slice(&legacy_raw(&broker.addr(), b"{\"action\": \"\x80\"}")).unwrap();
    assert_eq!(reply["code"], "invalid_json", "{reply}");
    mail_intact_and_a_normal_client_served(&broker.addr(), &bob);
}

#[test]
fn json_nested_ten_thousand_deep() {
    let broker = TestBroker::start();
    let bob = stored_mail(&broker.addr());
    let objects = format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    let arrays = format!(
        "{{\"action\": \"ping\", \"x\": {}{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    for deep in [objects, arrays] {
        let reply: Value =
            serde_json::from_slice(&legacy_raw(&broker.addr(), deep.as_bytes())).unwrap();
        assert_eq!(reply["code"], "invalid_json", "{reply}");
        assert!(reply["message"].as_str().unwrap().contains("recursion"));
    }
    mail_intact_and_a_normal_client_served(&broker.addr(), &bob);
}

#[test]
fn a_request_over_the_size_limit() {
    let broker = TestBroker::start_with(|c| c.limits.max_request_bytes = 64 * 1024);
    let bob = stored_mail(&broker.addr());
    let alice = Client::connect(&broker.addr(), TIMEOUT)
        .unwrap()
        .register("alice2", None)
        .unwrap()
        .session_token;
    let mut stream = TcpStream::connect(broker.addr()).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let huge = json!({"action": "send", "session_token": alice, "to_id": "bob",
                      "message": {"content": "x".repeat(100 * 1024)}});
    // The broker may close while we are still writing; that is fine.
    let _ = stream.write_all(huge.to_string().as_bytes());
    let reply = read_reply(&mut stream);
    assert_eq!(reply["code"], "request_too_large", "{reply}");
    assert!(reply["message"].as_str().unwrap().contains("65536"));
    assert!(closed_by_broker(&mut stream));
    // The oversized send stored nothing: bob still has exactly his one message.
    mail_intact_and_a_normal_client_served(&broker.addr(), &bob);
}

#[test]
fn a_client_that_sends_half_a_request_and_stalls() {
    let broker = TestBroker::start_with(|c| c.limits.read_timeout = Duration::from_millis(300));
    let bob = stored_mail(&broker.addr());
    let mut stream = TcpStream::connect(broker.addr()).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(b"{\"action\": \"pi").unwrap();
    // While it stalls, others are served.
    a_normal_client_is_served(&broker.addr(), "during");
    let reply = read_reply(&mut stream);
    assert_eq!(reply["code"], "read_timeout", "{reply}");
    assert!(reply["message"]
        .as_str()
        .unwrap()
        .contains("bytes received"));
    assert!(closed_by_broker(&mut stream));
    mail_intact_and_a_normal_client_served(&broker.addr(), &bob);
}

/// The client pipelines requests whose replies are as large as replies get (a full page of
/// `list`), each padded to 32 KiB so the way in fills too, and never reads. The replies fill
/// both socket buffers, the broker's write blocks, and after its write timeout the broker
/// drops the connection. Meanwhile it serves everyone else.
#[test]
fn a_client_that_never_reads_its_replies() {
    const WRITE_TIMEOUT: Duration = Duration::from_secs(4);
    let broker = TestBroker::start_with(|c| c.limits.write_timeout = WRITE_TIMEOUT);
    let bob = stored_mail(&broker.addr());
    broker.store_instances("page", 1000);
    let lister = broker.register("lister");
    let stream = TcpStream::connect(broker.addr()).unwrap();
    let request = format!(
        "{{\"action\": \"list\", \"session_token\": \"{lister}\", \"pad\": \"{}\"}}\n",
        " ".repeat(32 * 1024)
    );
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (mut stream, written) = (stream.try_clone().unwrap(), written.clone());
        std::thread::spawn(move || -> std::io::Error {
            // 60 MB of replies (and of requests): far more than any socket buffers hold.
            for _ in 0..2000 {
                if let Err(e) = stream.write_all(request.as_bytes()) {
                    return e;
                }
                written.fetch_add(request.len(), Ordering::SeqCst);
            }
            panic!("2,000 requests written without reading a reply: the broker never stalled");
        })
    };
    // Wait until the writer stops making progress: the broker is stuck writing to us.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let before = written.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        if written.load(Ordering::SeqCst) == before && before > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the writer never stalled");
    }
    a_normal_client_is_served(&broker.addr(), "during");
    assert!(
        !writer.is_finished(),
        "the stalled connection is kept for its write timeout, while others are served"
    );
    let error = writer.join().unwrap();
    assert!(
        matches!(
            error.kind(),
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
        ),
        "the broker closed the connection: {error}"
    );
    drop(stream);
    mail_intact_and_a_normal_client_served(&broker.addr(), &bob);
}

/// 2,000 connections at once against the real binary (so the broker's descriptors are its
/// own) with a cap of 1,990: exactly 1,990 are served and the 10 that waited longest without
/// a request are evicted to make room, each told so. A normal client gets in while 1,989 of
/// them are still open, and after they close.
#[test]
fn two_thousand_simultaneous_connections() {
    const CONNECTIONS: usize = 2_000;
    const CAP: usize = 1_990;
    let limit = claude_ipc::os::raise_open_file_limit().unwrap();
    assert!(
        limit >= CONNECTIONS as u64 + 100,
        "this test needs {} open files but the hard limit is {limit}; raise it (ulimit -Hn)",
        CONNECTIONS + 100
    );
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::spawn(
        &dir.path().join("data"),
        // The short idle deadline of unauthenticated connections is not what this is about.
        &[
            "--max-connections",
            &CAP.to_string(),
            "--unauthenticated-idle-timeout",
            "5m",
        ],
    );
    let bob = stored_mail(&broker.addr);
    let mut streams: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|i| {
            let stream = TcpStream::connect(&broker.addr)
                .unwrap_or_else(|e| panic!("connection {i} could not connect: {e}"));
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            stream
        })
        .collect();
    // A connection the broker has not accepted yet is only in the kernel's queue; asking the
    // first ones while it still accepts the last would let a late arrival evict one already
    // counted as served. Ten evictions mean all 2,000 were accepted: each waits with its
    // reply, readable without writing (the broker may have closed it already).
    let answered = |stream: &TcpStream| {
        stream.set_nonblocking(true).unwrap();
        let answered = stream.peek(&mut [0u8; 1]).is_ok();
        stream.set_nonblocking(false).unwrap();
        answered
    };
    wait_until("the broker has accepted every connection", || {
        streams.iter().filter(|s| answered(s)).count() == CONNECTIONS - CAP
    });
    let (mut served, mut refused) = (Vec::new(), 0);
    for (i, mut stream) in streams.drain(..).enumerate() {
        let answered = answered(&stream);
        if !answered {
            let _ = stream.write_all(b"{\"action\": \"ping\"}\n");
        }
        let reply = read_reply(&mut stream);
        match reply["code"].as_str() {
            None if reply["status"] == "ok" => served.push(stream),
            Some("connection_evicted") => {
                assert!(reply["message"].as_str().unwrap().contains("reconnect"));
                refused += 1;
            }
            _ => panic!("connection {i}: unexpected reply {reply}"),
        }
    }
    assert_eq!((served.len(), refused), (CAP, CONNECTIONS - CAP));
    // Free one slot; a normal client takes it while the other 1,989 stay open.
    drop(served.pop());
    let mut newcomer = None;
    wait_until("a freed slot takes a new client", || {
        let mut client = Client::connect(&broker.addr, TIMEOUT).unwrap();
        let pinged = client.ping().is_ok();
        newcomer = pinged.then_some(client);
        pinged
    });
    a_normal_client_is_served_on(newcomer.as_mut().unwrap(), "while-open");
    // If the newcomer came before the broker saw the freed slot close, it evicted one of them.
    let mut evicted = 0;
    for stream in served.iter_mut().step_by(97) {
        stream.set_nonblocking(true).unwrap();
        let answered = stream.peek(&mut [0u8; 1]).is_ok();
        stream.set_nonblocking(false).unwrap();
        if !answered {
            stream.write_all(b"{\"action\": \"ping\"}\n").unwrap();
        }
        let reply = read_reply(stream);
        match reply["code"].as_str() {
            Some("connection_evicted") => evicted += 1,
            _ => assert_eq!(reply["status"], "ok", "{reply}"),
        }
    }
    assert!(evicted <= 1, "only the newcomer could have evicted one");
    assert!(
        broker.child.try_wait().unwrap().is_none(),
        "the broker is up"
    );
    drop(served);
    wait_until("slots free up after the clients leave", || {
        Client::connect(&broker.addr, TIMEOUT)
            .and_then(|mut c| c.ping())
            .is_ok()
    });
    mail_intact_and_a_normal_client_served(&broker.addr, &bob);
}

#[test]
fn an_instance_name_or_recipient_that_tries_path_tricks_on_large_message_files() {
    let broker = TestBroker::start();
    let bob = stored_mail(&broker.addr());
    let alice = broker.take_over("alice");
    let large = "z".repeat(20 * 1024);
    for name in [
        "../../etc/passwd",
        "a/b",
        "..",
        ".",
        "/tmp/x",
        "bob\u{0}",
        "bob/../../x",
        "x".repeat(33).as_str(),
        "",
    ] {
        for request in [
            json!({"action": "send", "session_token": alice, "to_id": name,
                   "message": {"content": large}}),
            json!({"action": "register", "instance_id": name}),
            json!({"action": "rename", "session_token": alice, "new_id": name}),
        ] {
            let reply = legacy(&broker.addr(), &request);
            assert_eq!(reply["code"], "invalid_name", "{name:?}: {reply}");
        }
    }
    // Nor may a sender point a recipient at a file of its choosing.
    let forged = legacy(
        &broker.addr(),
        &json!({"action": "send", "session_token": alice, "to_id": "bob",
                "message": {"content": "see file", "data": {"large_message_file": "/etc/shadow"}}}),
    );
    assert_eq!(forged["code"], "invalid_field", "{forged}");
    let large_dir = broker.data_dir().join("large-messages");
    let files = std::fs::read_dir(&large_dir)
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(files, 0, "no large-message file for a refused request");
    mail_intact_and_a_normal_client_served(&broker.addr(), &bob);
}

/// A small tmpfs, mounted for one test and unmounted when dropped.
struct SmallFilesystem {
    mount_point: PathBuf,
}

impl SmallFilesystem {
    fn mount(mount_point: &Path, size: &str) -> std::io::Result<SmallFilesystem> {
        std::fs::create_dir_all(mount_point)?;
        let output = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(mount_point)
            .output()?;
        if !output.status.success() {
            return Err(std::io::Error::other(
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ));
        }
        Ok(SmallFilesystem {
            mount_point: mount_point.to_owned(),
        })
    }

    /// Writes a file until the filesystem has no space left.
    fn fill(&self) -> PathBuf {
        let filler = self.mount_point.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 16 * 1024];
        loop {
            match file.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the disk failed oddly: {e}"),
            }
        }
        // The last partial chunk may have taken the final bytes; a 1-byte write proves full.
        assert!(file.write_all(&[0]).is_err(), "the filesystem is full");
        filler
    }
}

/// A read-only bind mount of a directory over itself: paths through it cannot be written,
/// while files opened before it (the broker's database) keep working, as on a real system.
struct ReadOnlyView {
    path: PathBuf,
}

impl ReadOnlyView {
    fn mount(path: &Path) -> ReadOnlyView {
        let run = |args: &[&str]| {
            let status = Command::new("mount").args(args).arg(path).status().unwrap();
            assert!(status.success(), "mount {args:?} failed");
        };
        run(&["--bind", path.to_str().unwrap()]);
        let view = ReadOnlyView {
            path: path.to_owned(),
        };
        run(&["-o", "remount,bind,ro"]);
        view
    }
}

impl Drop for ReadOnlyView {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
    }
}

/// The data directory on a real filesystem that fills up (a 4 MiB tmpfs), then made
/// read-only (a read-only bind mount over it). Mounting needs root (CI and the development
/// machines run as root); elsewhere the test says so and stops.
///
/// A full disk fails the database's next write with SQLITE_FULL and a large-message file's
/// write with ENOSPC, which covers both ways a send stores data. Read-only is the weaker
/// case for a running broker: its database file is already open, so only new files (large
/// messages) fail; a `chmod` would not even do that much for root, hence the bind mount.
#[test]
fn a_read_only_or_full_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let disk = match SmallFilesystem::mount(&dir.path().join("disk"), "4m") {
        Ok(disk) => disk,
        Err(e) => {
            eprintln!("skipped: cannot mount a small tmpfs here ({e}); this test needs root");
            return;
        }
    };
    let data_dir = disk.mount_point.join("data");
    let args = ["--large-message-bytes", "262144", "--rate-limit", "0"];
    let broker = BrokerProcess::spawn(&data_dir, &args);
    let bob = stored_mail(&broker.addr);
    let mut client = broker.client();
    let alice = client.register("carol", None).unwrap().session_token;
    let large_before = "L".repeat(300 * 1024);
    client
        .send(&alice, "bob", &large_before, None, None)
        .unwrap();
    for i in 0..5 {
        client
            .send(&alice, "bob", &format!("before {i}"), None, None)
            .unwrap();
    }

    let filler = disk.fill();
    // Inline content big enough to need new database pages; content big enough for a file.
    for content in ["i".repeat(200 * 1024), "f".repeat(400 * 1024)] {
        let reply = client
            .request(
                &json!({"action": "send", "session_token": alice, "to_id": "bob",
                             "message": {"content": content}}),
            )
            .unwrap();
        assert_eq!(
            reply["status"], "error",
            "a send on a full disk is never ok"
        );
        assert_eq!(reply["code"], "storage_failed", "{reply}");
        let message = reply["message"].as_str().unwrap();
        assert!(message.contains("is full: free space there"), "{message}");
        assert!(
            message.contains(&data_dir.display().to_string()),
            "{message}"
        );
        assert!(message.contains("nothing was stored"), "{message}");
    }
    assert_eq!(ping_json(&mut broker.client())["status"], "ok", "still up");
    let files = std::fs::read_dir(data_dir.join("large-messages"))
        .unwrap()
        .count();
    assert_eq!(
        files, 1,
        "no half-written large-message file is left behind"
    );

    // Space comes back: sending works again, and everything stored before is delivered.
    std::fs::remove_file(filler).unwrap();
    client.send(&alice, "bob", "after", None, None).unwrap();

    // Read-only: a large message needs a new file, which a read-only directory refuses.
    let read_only = ReadOnlyView::mount(&data_dir);
    let reply = client
        .request(
            &json!({"action": "send", "session_token": alice, "to_id": "bob",
                         "message": {"content": "r".repeat(300 * 1024)}}),
        )
        .unwrap();
    assert_eq!(reply["code"], "storage_failed", "{reply}");
    let message = reply["message"].as_str().unwrap();
    assert!(
        message.contains("is not writable (Read-only file system"),
        "{message}"
    );
    assert!(message.contains("make it writable"), "{message}");
    drop(read_only);
    let broker = {
        // A restart proves it is on disk, not only in the broker's memory.
        assert!(broker.terminate().success());
        BrokerProcess::spawn(&data_dir, &args)
    };
    let mail = broker.client().check(&bob).unwrap().messages;
    let contents: Vec<&str> = mail.iter().map(|m| m.message.content.as_str()).collect();
    assert_eq!(contents.len(), 8, "{:?}", &contents);
    assert_eq!(contents[0], "must survive");
    assert!(
        contents[1].contains("Full content saved to"),
        "{}",
        contents[1]
    );
    let file = mail[1].message.data.as_ref().unwrap()["large_message_file"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(std::fs::read_to_string(file)
        .unwrap()
        .contains(&large_before));
    assert_eq!(
        &contents[2..],
        ["before 0", "before 1", "before 2", "before 3", "before 4", "after"]
    );
    a_normal_client_is_served(&broker.addr, "after");
    drop(broker);
    drop(disk);
}

// ---- around them: limits at their edges, silent clients, replies that cannot be written ----

#[test]
fn a_request_just_under_the_size_limit_is_accepted() {
    let broker = TestBroker::start_with(|c| c.limits.max_request_bytes = 64 * 1024);
    let alice = broker.register("alice");
    let content = "y".repeat(60 * 1024);
    let reply = legacy(
        &broker.addr(),
        &json!({"action": "send", "session_token": alice, "to_id": "bob", "message": {"content": content}}),
    );
    assert_eq!(reply["status"], "ok", "{reply}");
}

#[test]
fn a_client_that_sends_nothing_is_closed_after_the_idle_timeout() {
    let broker = TestBroker::start_with(|c| c.limits.idle_timeout = Duration::from_millis(300));
    let bob = stored_mail(&broker.addr());
    let mut stream = TcpStream::connect(broker.addr()).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let started = Instant::now();
    let reply = read_reply(&mut stream);
    assert_eq!(reply["code"], "idle_timeout", "{reply}");
    // The broker's timer starts at its accept, a moment before or after `started`.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(300) + PROMPTLY,
        "closed after {took:?}, not at the 300 ms idle timeout"
    );
    assert!(closed_by_broker(&mut stream));
    mail_intact_and_a_normal_client_served(&broker.addr(), &bob);
}

#[test]
fn dribbled_bytes_cannot_stretch_a_request_past_the_read_timeout() {
    let broker = TestBroker::start_with(|c| c.limits.read_timeout = Duration::from_millis(400));
    let mut stream = TcpStream::connect(broker.addr()).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    // One byte every 50 ms: each read arrives in time, but the request as a whole does not.
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            for byte in b"{\"action\": \"ping\", \"padding\": \"aaaaaaaaaaaaaaaaaaaaaaa\"}" {
                if stream.write_all(&[*byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let reply = read_reply(&mut stream);
    assert_eq!(reply["code"], "read_timeout", "{reply}");
    writer.join().unwrap();
}

#[test]
fn connections_over_the_cap_are_told_so_and_the_broker_recovers() {
    let broker = TestBroker::start_with(|c| c.limits.max_connections = 5);
    let bob = stored_mail(&broker.addr());
    let held: Vec<TcpStream> = (0..5)
        .map(|i| {
            let mut stream = TcpStream::connect(broker.addr()).unwrap();
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            // A registration proves the broker counted this connection, and makes it one of a
            // known client, which a newcomer may not evict.
            let register = format!("{{\"action\": \"register\", \"instance_id\": \"held{i}\"}}\n");
            stream.write_all(register.as_bytes()).unwrap();
            assert_eq!(read_reply(&mut stream)["status"], "ok");
            stream
        })
        .collect();
    let mut extra = TcpStream::connect(broker.addr()).unwrap();
    extra.set_read_timeout(Some(TIMEOUT)).unwrap();
    let reply = read_reply(&mut extra);
    assert_eq!(reply["code"], "too_many_connections", "{reply}");
    drop(held);
    // Slots free up as the held connections close.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let reply = legacy(&broker.addr(), &json!({"action": "ping"}));
        if reply["status"] == "ok" {
            break;
        }
        assert!(Instant::now() < deadline, "broker never recovered: {reply}");
        std::thread::sleep(Duration::from_millis(20));
    }
    mail_intact_and_a_normal_client_served(&broker.addr(), &bob);
}

/// Drives the real connection code over an in-memory pipe. The client writes a check; if
/// `hang_up` it then disappears, so writing the reply fails. Returns what the client read.
fn check_over_pipe(broker: &TestBroker, bob: &str, hang_up: bool) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let engine = broker.broker();
    broker.block_on(async move {
        let (mut client, server_end) = tokio::io::duplex(1024);
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let connection = tokio::spawn(claude_ipc::server::Connection::new(server_end).serve(
            engine,
            claude_ipc::broker::Peer::unknown("pipe"),
            stopped,
        ));
        let request = json!({"action": "check", "session_token": bob}).to_string();
        client.write_all(request.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        if hang_up {
            drop(client);
        } else {
            client.shutdown().await.unwrap();
            client.read_to_end(&mut reply).await.unwrap();
        }
        connection.await.unwrap();
        reply
    })
}

#[test]
fn mail_whose_reply_cannot_be_written_stays_queued() {
    let broker = TestBroker::start();
    let bob = stored_mail(&broker.addr());
    let pending = |broker: &TestBroker| -> i64 {
        broker
            .count("SELECT count(*) FROM messages WHERE recipient = 'bob' AND delivered_at IS NULL")
    };
    broker.clock.advance(chrono::Duration::minutes(1));
    assert!(check_over_pipe(&broker, &bob, true).is_empty());
    // The check was served (it refreshed bob's session), yet its mail stayed queued.
    let last_used: String = broker
        .sql()
        .query_row(
            "SELECT last_used_at FROM sessions WHERE instance_name = 'bob' AND revoked_at IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(last_used, claude_ipc::clock::to_text(broker.clock.now()));
    assert_eq!(
        pending(&broker),
        1,
        "a reply that was never written must not mark mail delivered"
    );
    let reply = check_over_pipe(&broker, &bob, false);
    assert!(String::from_utf8_lossy(&reply).contains("must survive"));
    assert_eq!(
        pending(&broker),
        0,
        "a written reply marks the mail delivered"
    );
}

#[test]
fn strangers_cannot_make_the_broker_write_large_message_files() {
    let broker = TestBroker::start();
    let reply = legacy(
        &broker.addr(),
        &json!({"action": "send", "session_token": "not-a-session", "to_id": "bob",
                "message": {"content": "q".repeat(50 * 1024)}}),
    );
    assert_eq!(reply["code"], "invalid_session", "{reply}");
    let large_dir = broker.data_dir().join("large-messages");
    let files = std::fs::read_dir(&large_dir)
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(files, 0);
    let recorded: i64 = broker.count("SELECT count(*) FROM auth_failures");
    assert_eq!(recorded, 1, "the refused stranger is counted");
}

#[test]
fn pipelined_requests_in_one_write_and_a_trailing_half_request_are_each_answered_in_order() {
    let broker = TestBroker::start();
    let mut stream = std::net::TcpStream::connect(broker.addr()).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut requests = "{\"action\": \"ping\"}\n".repeat(2_000);
    requests.push_str("{\"action\": \"teleport\"}{\"action\": \"ping\"}hello");
    stream.write_all(requests.as_bytes()).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut replies = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut replies).unwrap();
    let codes: Vec<String> = String::from_utf8(replies)
        .unwrap()
        .lines()
        .map(|line| {
            let reply: serde_json::Value = serde_json::from_str(line).unwrap();
            reply["code"].as_str().unwrap_or("ok").to_owned()
        })
        .collect();
    assert_eq!(codes.len(), 2_003);
    assert!(codes[..2_000].iter().all(|c| c == "ok"));
    assert_eq!(codes[2_000..], ["unknown_action", "ok", "invalid_json"]);
}
