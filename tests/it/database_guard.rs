//! The database cannot silently stop being the database: its files removed or replaced under a
//! running broker, a damaged page (at start and while serving), an empty or foreign file at
//! start, and large-message files left behind by a broker killed mid-send.

use crate::common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use claude_ipc::client::{Client, ClientError};
use common::*;
use serde_json::Value;

/// Sends `count` messages from alice to bob and returns their contents.
fn send_mail(client: &mut Client, alice: &str, count: usize, size: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let content = format!("mail {i:04} {}", "x".repeat(size));
            client
                .send(alice, "bob", &content, None, None)
                .expect("send");
            content
        })
        .collect()
}

/// Every message `bob` can read, oldest first, reading until nothing is left.
fn read_all(client: &mut Client, bob: &str) -> Vec<String> {
    let mut contents = Vec::new();
    loop {
        let checked = client.check(bob).expect("check");
        if checked.messages.is_empty() {
            return contents;
        }
        contents.extend(checked.messages.into_iter().map(|m| m.message.content));
    }
}

fn refusal_code(error: ClientError) -> (String, String) {
    match error {
        ClientError::Broker { code, message, .. } => (code.to_string(), message),
        other => panic!("expected a refusal from the broker, got {other}"),
    }
}

fn side(db: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", db.display()))
}

#[test]
fn removing_any_database_file_under_a_running_broker_refuses_the_next_send_and_loses_nothing() {
    for removed in [
        &["ipc.db", "ipc.db-wal", "ipc.db-shm"][..],
        &["ipc.db"],
        &["ipc.db-wal"],
        &["ipc.db-shm"],
    ] {
        let broker = TestBroker::start();
        let (_, alice, bob) = broker.alice_and_bob();
        let mut client = broker.client();
        let acknowledged = send_mail(&mut client, &alice, 30, 200);
        for file in removed {
            std::fs::remove_file(broker.data_dir().join(file)).unwrap();
        }

        let refused = client
            .send(&alice, "bob", "after the removal", None, None)
            .expect_err("a send after the removal must be refused");
        let (code, message) = refusal_code(refused);
        assert_eq!(code, "database_gone", "{removed:?}: {message}");
        assert!(message.contains("was removed"), "{message}");
        assert!(message.contains("Restart the broker"), "{message}");
        let ping = client
            .request(&serde_json::json!({"action": "ping"}))
            .unwrap();
        assert_eq!(ping["status"], "error", "ping must not say ok: {ping}");
        assert_eq!(ping["code"], "database_gone");
        assert_eq!(ping["database"], "gone");
        let (code, _) = refusal_code(client.check(&bob).expect_err("reads are refused too"));
        assert_eq!(code, "database_gone");

        let broker = broker.restart();
        let mut client = broker.client();
        assert_eq!(
            read_all(&mut client, &bob),
            acknowledged,
            "after removing {removed:?} and a restart, every acknowledged message is there once"
        );
        let ping = client.ping().expect("healthy again after the restart");
        assert_eq!(ping.database, "ok");
    }
}

#[test]
fn a_replaced_database_file_is_noticed_logged_at_error_and_reported_by_ping_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let broker = BrokerProcess::spawn(&data_dir, &[]);
    let mut client = broker.client();
    let alice = client.register("alice", None).unwrap().session_token;
    let bob = client.register("bob", None).unwrap().session_token;
    let acknowledged = send_mail(&mut client, &alice, 20, 100);
    // An operator "restores" an old copy over the live file: a new inode at the path.
    let db = data_dir.join("ipc.db");
    let stale = dir.path().join("stale-copy");
    std::fs::copy(&db, &stale).unwrap();
    std::fs::rename(&stale, &db).unwrap();

    let (code, message) = refusal_code(
        client
            .send(&alice, "bob", "after the swap", None, None)
            .expect_err("refused"),
    );
    assert_eq!(code, "database_gone");
    assert!(message.contains("replaced by another file"), "{message}");
    let error_line = wait_for_line(&broker, |line| {
        line.contains("ERROR") && line.contains("replaced by another file")
    });
    assert!(error_line.contains(db.to_str().unwrap()), "{error_line}");

    let session = dir.path().join("session");
    let ping = cli(&broker.addr, &session, &["ping"]);
    assert_eq!(ping.status.code(), Some(1), "ping exits unhealthy");
    assert!(String::from_utf8_lossy(&ping.stderr).contains("database_gone"));
    let data = data_dir.to_str().unwrap();
    let status = cli(&broker.addr, &session, &["status", "--data-dir", data]);
    let shown = String::from_utf8_lossy(&status.stdout);
    assert_eq!(
        status.status.code(),
        Some(1),
        "status exits unhealthy: {shown}"
    );
    assert!(shown.contains("DATABASE GONE"), "{shown}");
    assert!(shown.contains("refuses requests"), "{shown}");

    assert!(broker.terminate().success());
    let broker = BrokerProcess::spawn(&data_dir, &[]);
    let mut client = broker.client();
    let bob_again = client.register("bob", None);
    // The restored copy holds bob's session; either way his mail is there exactly once.
    let bob = bob_again.map(|r| r.session_token).unwrap_or(bob);
    assert_eq!(read_all(&mut client, &bob), acknowledged);
    let kept_aside = std::fs::read_dir(&data_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("ipc.db.replaced-")
        });
    assert!(
        kept_aside,
        "the file found at the path is kept, not deleted"
    );
}

#[test]
fn files_removed_while_nobody_writes_are_noticed_and_the_mail_survives_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let broker = BrokerProcess::spawn(&data_dir, &[]);
    let mut client = broker.client();
    let alice = client.register("alice", None).unwrap().session_token;
    let acknowledged = send_mail(&mut client, &alice, 10, 100);
    for file in ["ipc.db", "ipc.db-wal", "ipc.db-shm"] {
        std::fs::remove_file(data_dir.join(file)).unwrap();
    }
    // No request at all: the idle writer notices on its own and saves its copy.
    wait_for_line(&broker, |line| {
        line.contains("ERROR") && line.contains("was removed")
    });
    broker.kill_9();

    let broker = BrokerProcess::spawn(&data_dir, &[]);
    let mut client = broker.client();
    let bob = client.register("bob", None).unwrap().session_token;
    assert_eq!(read_all(&mut client, &bob), acknowledged);
}

fn wait_for_line(broker: &BrokerProcess, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + TIMEOUT;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = broker.log.recv_timeout(Duration::from_millis(100)) {
            if wanted(&line) {
                return line;
            }
            seen.push(line);
        }
    }
    panic!("no such log line; the broker said: {seen:#?}");
}

/// Runs `claude-ipc serve` on `data_dir` and expects it to refuse; returns what it said.
fn serve_expecting_refusal(data_dir: &Path) -> String {
    let data_dir = data_dir.to_str().unwrap();
    let output =
        common::serve_expecting_refusal(&["--addr", "127.0.0.1:0", "--data-dir", data_dir]);
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A data directory whose stopped broker stored `count` messages of `size` bytes for bob.
fn stopped_directory_with_mail(count: usize, size: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let unlimited = ["--rate-limit", "0", "--queue-cap", "0"];
    let broker = BrokerProcess::spawn(&data_dir, &unlimited);
    let mut client = broker.client();
    let alice = client.register("alice", None).unwrap().session_token;
    send_mail(&mut client, &alice, count, size);
    assert!(broker.terminate().success());
    (dir, data_dir)
}

fn write_garbage(file: &Path, offset: u64, len: usize) {
    let mut file = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.write_all(&vec![0xa5; len]).unwrap();
    file.sync_all().unwrap();
}

const PAGE: u64 = 4096;

#[test]
fn one_page_of_garbage_in_a_stopped_database_makes_serve_refuse_naming_the_file() {
    let (_dir, data_dir) = stopped_directory_with_mail(300, 1000);
    let db = data_dir.join("ipc.db");
    assert!(!side(&db, "-wal").exists(), "a clean stop leaves no WAL");
    let pages = std::fs::metadata(&db).unwrap().len() / PAGE;
    assert!(pages > 40, "several pages of mail: {pages}");
    write_garbage(&db, pages / 2 * PAGE, PAGE as usize);

    let stderr = serve_expecting_refusal(&data_dir);
    assert!(stderr.contains(db.to_str().unwrap()), "{stderr}");
    assert!(stderr.contains("is damaged"), "{stderr}");
    assert!(stderr.contains("restore ipc.db from a backup"), "{stderr}");
    assert!(stderr.contains("aside"), "{stderr}");
}

#[test]
fn a_large_damaged_database_starts_and_its_background_check_turns_ping_unhealthy() {
    let (_dir, data_dir) = stopped_directory_with_mail(50, 100);
    let db = data_dir.join("ipc.db");
    let operator = rusqlite::Connection::open(&db).unwrap();
    // Past the size checked before serving, so the check runs after start.
    operator
        .execute_batch(
            "CREATE TABLE ballast (b BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20)
             INSERT INTO ballast SELECT zeroblob(1024 * 1024) FROM n;",
        )
        .unwrap();
    let root: i64 = operator
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = 'messages'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    drop(operator);
    assert!(std::fs::metadata(&db).unwrap().len() > 16 * 1024 * 1024);
    write_garbage(&db, (root as u64 - 1) * PAGE, PAGE as usize);

    let started = Instant::now();
    let broker = BrokerProcess::spawn(&data_dir, &[]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "start-up does not wait for the check"
    );
    let mut client = broker.client();
    wait_until("ping reports the damage", || {
        let ping = client
            .request(&serde_json::json!({"action": "ping"}))
            .unwrap();
        ping["code"] == "database_damaged"
    });
    let alice = client.register("alice", None);
    let (code, message) = refusal_code(alice.expect_err("requests are refused"));
    assert_eq!(code, "database_damaged");
    assert!(message.contains(db.to_str().unwrap()), "{message}");
}

#[test]
fn an_empty_database_in_a_used_directory_is_refused_and_a_fresh_directory_starts() {
    let (_dir, data_dir) = stopped_directory_with_mail(3, 10);
    let db = data_dir.join("ipc.db");
    std::fs::File::create(&db).unwrap(); // truncated to 0 bytes
    let stderr = serve_expecting_refusal(&data_dir);
    assert!(stderr.contains(db.to_str().unwrap()), "{stderr}");
    assert!(stderr.contains("empty (0 bytes)"), "{stderr}");
    assert!(
        stderr.contains("ipc.db.created"),
        "how to start fresh: {stderr}"
    );
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "left as found");

    std::fs::remove_file(&db).unwrap();
    let stderr = serve_expecting_refusal(&data_dir);
    assert!(stderr.contains("missing"), "{stderr}");

    // Moving the marker aside, as the refusal says, is the deliberate fresh start.
    std::fs::rename(data_dir.join("ipc.db.created"), data_dir.join("old-marker")).unwrap();
    let broker = BrokerProcess::spawn(&data_dir, &[]);
    broker
        .client()
        .ping()
        .expect("a deliberate fresh start serves");
    drop(broker);

    let fresh = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::spawn(&fresh.path().join("data"), &[]);
    let ping = broker.client().ping().expect("a fresh directory starts");
    assert_eq!(ping.database, "ok");
}

#[test]
fn a_file_that_is_not_a_database_is_refused_with_what_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let db = data_dir.join("ipc.db");
    std::fs::write(&db, "these are my notes, not a database\n".repeat(300)).unwrap();
    let stderr = serve_expecting_refusal(&data_dir);
    assert!(stderr.contains(db.to_str().unwrap()), "{stderr}");
    assert!(stderr.contains("not a SQLite database"), "{stderr}");
}

#[test]
fn a_page_damaged_while_the_broker_runs_turns_ping_and_status_unhealthy() {
    let broker = TestBroker::start_with(|config| config.limits.queue_cap = 0);
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    send_mail(&mut client, &alice, 200, 2000);
    let db = broker.db_path();
    let operator = rusqlite::Connection::open(&db).unwrap();
    let root: i64 = operator
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = 'messages'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    operator
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    // Garbage in the messages table's root page: every read of a message goes through it.
    write_garbage(&db, (root as u64 - 1) * PAGE, PAGE as usize);
    // A change by another connection makes the broker's connection drop its page cache, so
    // its next read comes from the file, as it would after a cache eviction.
    operator.execute_batch("PRAGMA user_version = 7").unwrap();
    drop(operator);

    let (code, message) = refusal_code(client.check(&bob).expect_err("the read hits the page"));
    assert_eq!(code, "database_damaged", "{message}");
    assert!(message.contains(db.to_str().unwrap()), "{message}");
    assert!(
        message.contains("restore ipc.db from a backup"),
        "{message}"
    );
    let ping = client
        .request(&serde_json::json!({"action": "ping"}))
        .unwrap();
    assert_eq!(ping["status"], "error", "{ping}");
    assert_eq!(ping["code"], "database_damaged");
    let (code, _) = refusal_code(
        client
            .send(&alice, "bob", "more", None, None)
            .expect_err("writes are refused on a damaged database"),
    );
    assert_eq!(code, "database_damaged");

    let session = broker.data_dir().join("session");
    let ping = cli(&broker.addr(), &session, &["ping"]);
    assert_eq!(ping.status.code(), Some(1), "ping exits unhealthy");
    let data = broker.data_dir();
    let status = cli(
        &broker.addr(),
        &session,
        &["status", "--json", "--data-dir", data.to_str().unwrap()],
    );
    assert_eq!(status.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(report["status"], "unhealthy", "{report}");
    assert_eq!(report["broker"]["healthy"], false);
    assert_eq!(report["broker"]["database"], "damaged");
}

/// A file named the way the broker names large messages, written at `at` by its clock.
fn plant_large_file(dir: &Path, at: chrono::DateTime<chrono::Utc>, tag: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(format!("{}-{tag:0>16}.md", at.format("%Y%m%dT%H%M%S%.3fZ")));
    std::fs::write(
        &path,
        "# IPC Message\nleft behind by a broker killed mid-send\n",
    )
    .unwrap();
    path
}

#[test]
fn the_sweeper_removes_orphaned_large_message_files_and_never_a_stored_one() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    let big = "y".repeat(30 * 1024);
    client.send(&alice, "bob", &big, None, None).unwrap();
    let large_dir = broker.data_dir().join("large-messages");
    let stored: Vec<PathBuf> = std::fs::read_dir(&large_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(stored.len(), 1, "the large message has its file");
    let orphan = plant_large_file(&large_dir, broker.clock.now(), "dead0000beef0001");
    let foreign = large_dir.join("notes.md");
    std::fs::write(&foreign, "an operator's file").unwrap();

    broker.clock.advance(chrono::Duration::minutes(30));
    broker.sweep();
    assert!(
        orphan.exists(),
        "within the grace period a send may still be writing it"
    );

    broker.clock.advance(chrono::Duration::hours(2));
    broker.sweep();
    assert!(
        !orphan.exists(),
        "an old file no message refers to is removed"
    );
    assert!(stored[0].exists(), "the stored message's file is kept");
    assert!(
        foreign.exists(),
        "a file the broker did not name is never touched"
    );
    let received = read_all(&mut client, &bob);
    assert_eq!(received.len(), 1);
    assert!(received[0].contains(&stored[0].display().to_string()));
    assert!(std::fs::read_to_string(&stored[0]).unwrap().contains(&big));
}

#[test]
fn the_orphan_pass_works_in_bounded_batches_over_many_files() {
    let broker = TestBroker::start();
    let large_dir = broker.data_dir().join("large-messages");
    let at = broker.clock.now();
    let planted: Vec<PathBuf> = (0..450)
        .map(|i| plant_large_file(&large_dir, at, &format!("{i:x}")))
        .collect();
    broker.clock.advance(chrono::Duration::hours(2));
    let jobs_before = broker.broker().store().stats().jobs;
    broker.sweep();
    assert!(
        planted.iter().all(|p| !p.exists()),
        "every orphan is removed"
    );
    let jobs = broker.broker().store().stats().jobs - jobs_before;
    assert_eq!(
        jobs, 4,
        "one table job and 450 files looked up 200 at a time, not all at once nor one by one"
    );
}

/// An operator's `sqlite3` shell holding the write lock, as `BEGIN IMMEDIATE` does.
struct OperatorLock {
    shell: std::process::Child,
}

impl OperatorLock {
    /// Returns once the shell holds the lock, or `None` (saying so) without `sqlite3`.
    fn take(db: &Path) -> Option<OperatorLock> {
        use std::io::BufRead;
        let Ok(mut shell) = Command::new("sqlite3")
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        else {
            eprintln!("sqlite3 is not installed (apt-get install -y sqlite3); skipping");
            return None;
        };
        let stdin = shell.stdin.as_mut().unwrap();
        stdin
            .write_all(b"BEGIN IMMEDIATE;\nSELECT 'locked';\n")
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(shell.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        Some(OperatorLock { shell })
    }

    fn release(mut self) {
        let stdin = self.shell.stdin.as_mut().unwrap();
        stdin.write_all(b"COMMIT;\n.quit\n").unwrap();
        self.shell.wait().unwrap();
    }
}

impl Drop for OperatorLock {
    fn drop(&mut self) {
        let _ = self.shell.kill();
        let _ = self.shell.wait();
    }
}

#[test]
fn an_operators_lock_is_not_damage_writes_wait_then_fail_and_ping_stays_healthy() {
    let broker = TestBroker::start();
    let (_, alice, bob) = broker.alice_and_bob();
    let mut client = broker.client();
    client
        .send(&alice, "bob", "before the lock", None, None)
        .unwrap();
    let Some(lock) = OperatorLock::take(&broker.db_path()) else {
        return;
    };

    let asked = Instant::now();
    let (code, message) = refusal_code(
        client
            .send(&alice, "bob", "during the lock", None, None)
            .expect_err("the writer gives up after its busy timeout"),
    );
    let waited = asked.elapsed();
    assert_eq!(code, "storage_failed", "{message}");
    assert!(message.contains("locked"), "{message}");
    assert!(message.contains("nothing was stored"), "{message}");
    assert!(waited >= Duration::from_secs(4), "waited {waited:?}");
    let ping = client.ping().expect("a lock is not damage: ping stays ok");
    assert_eq!(ping.database, "ok");

    lock.release();
    client
        .send(&alice, "bob", "after the lock", None, None)
        .unwrap();
    assert_eq!(
        read_all(&mut client, &bob),
        ["before the lock", "after the lock"]
    );
}

/// Large sends from several clients at once until the broker is killed; returns the
/// contents it acknowledged.
fn large_sends_until_killed(broker: BrokerProcess, alice: &str) -> Vec<String> {
    let senders: Vec<_> = (0..4)
        .map(|thread| {
            let (addr, token) = (broker.addr.clone(), alice.to_owned());
            std::thread::spawn(move || {
                let mut client = Client::connect(&addr, TIMEOUT).unwrap();
                let mut acknowledged = Vec::new();
                for i in 0.. {
                    let content = format!("t{thread} n{i} {}", "o".repeat(20 * 1024));
                    if client.send(&token, "bob", &content, None, None).is_err() {
                        return acknowledged;
                    }
                    acknowledged.push(content);
                }
                unreachable!()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    broker.kill_9();
    senders
        .into_iter()
        .flat_map(|sender| sender.join().unwrap())
        .collect()
}

/// Files under `large-messages/` that no stored message refers to, and those one does.
fn orphans_and_stored(data_dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let db = rusqlite::Connection::open(data_dir.join("ipc.db")).unwrap();
    let mut referenced = db
        .prepare("SELECT DISTINCT large_file FROM messages WHERE large_file IS NOT NULL")
        .unwrap();
    let referenced: Vec<PathBuf> = referenced
        .query_map([], |row| row.get::<_, String>(0))
        .unwrap()
        .map(|path| PathBuf::from(path.unwrap()))
        .collect();
    std::fs::read_dir(data_dir.join("large-messages"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .partition(|file| !referenced.contains(file))
}

#[test]
fn large_message_files_orphaned_by_a_real_kill_9_are_swept_and_stored_ones_kept() {
    // A kill -9 lands between a file's write and its message's commit often, not always:
    // a few attempts, each a fresh directory, until one leaves an orphan.
    for attempt in 1..=8 {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let broker = BrokerProcess::spawn(&data_dir, &["--rate-limit", "0", "--queue-cap", "0"]);
        let alice = broker
            .client()
            .register("alice", None)
            .unwrap()
            .session_token;
        let acknowledged = large_sends_until_killed(broker, &alice);
        assert!(
            !acknowledged.is_empty(),
            "some large sends were acknowledged"
        );
        let (orphans, stored) = orphans_and_stored(&data_dir);
        if orphans.is_empty() {
            eprintln!("attempt {attempt}: the kill left no orphan; again");
            continue;
        }

        let clock = claude_ipc::clock::Clock::manual(chrono::Utc::now());
        let broker =
            TestBroker::start_with_clock(|config| config.data_dir = data_dir.clone(), clock);
        broker.clock.advance(chrono::Duration::hours(2));
        broker.sweep();
        assert!(
            orphans.iter().all(|f| !f.exists()),
            "every orphan is removed"
        );
        assert!(
            stored.iter().all(|f| f.exists()),
            "every stored message's file is kept"
        );
        let bob = broker.register("bob");
        let received = read_all(&mut broker.client(), &bob);
        for content in &acknowledged {
            let start: String = content.chars().take(200).collect();
            assert!(
                received.iter().any(|r| r.starts_with(&start)),
                "acknowledged message {start:.12} is still readable"
            );
        }
        return;
    }
    panic!("no kill -9 in 8 attempts left an orphaned file");
}
