//! `claude-ipc import-legacy` against a database built with the Python original's exact schema:
//! read and unread mail, data, a large-message file, a live and an expired forward, naive
//! local times. The import runs as a subprocess in a time zone three hours east of UTC, and the
//! real broker (also a subprocess) must then deliver exactly the unread mail, once.
use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;

use chrono::{DateTime, Duration, Utc};
use common::{cli, cli_with_env, BrokerProcess};
use rusqlite::{params, Connection};
use serde_json::{json, Value};
use tempfile::TempDir;

/// A POSIX zone three hours east of UTC, with no daylight saving: a naive legacy time T is
/// T - 3 h in UTC.
const ZONE: &str = "XYZ-3";
const ZONE_HOURS: i64 = 3;

const LEGACY_SCHEMA: &str = "
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    from_id TEXT NOT NULL,
    to_id TEXT NOT NULL,
    content TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    data TEXT,
    summary TEXT,
    large_file_path TEXT,
    read_flag INTEGER DEFAULT 0
);
CREATE TABLE instances (instance_id TEXT PRIMARY KEY, last_seen TEXT NOT NULL);
CREATE TABLE sessions (
    session_token_hash TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE TABLE name_history (old_name TEXT PRIMARY KEY, new_name TEXT NOT NULL, changed_at TEXT NOT NULL);
";

/// The zone's naive local form of a UTC time, as the original's `datetime.now().isoformat()`
/// wrote it (microseconds).
fn naive_local(at: DateTime<Utc>) -> String {
    (at + Duration::hours(ZONE_HOURS))
        .format("%Y-%m-%dT%H:%M:%S%.6f")
        .to_string()
}

fn stored(at: DateTime<Utc>) -> String {
    claude_ipc::clock::to_text(at)
}

/// One unread message the test expects to see delivered.
struct Expected {
    from: &'static str,
    content: String,
    timestamp: String,
    data: Option<Value>,
}

/// A legacy database in a temp directory, and what an import of it must deliver to bob.
struct Legacy {
    dir: TempDir,
    path: PathBuf,
    large_file: PathBuf,
    expected_for_bob: Vec<Expected>,
    live_forward_created: DateTime<Utc>,
}

impl Legacy {
    fn build() -> Legacy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("messages.db");
        let large_dir = dir.path().join("large-messages");
        std::fs::create_dir(&large_dir).unwrap();
        let large_file = large_dir.join("20261120-100000_alice_bob_message.md");
        std::fs::write(
            &large_file,
            "# IPC Message\n\n## Content\n".to_owned() + &"z".repeat(12_000),
        )
        .unwrap();
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(LEGACY_SCHEMA).unwrap();
        let now = Utc::now();
        let insert = |from: &str,
                      to: &str,
                      content: &str,
                      at: &str,
                      data: Option<&str>,
                      file: Option<&str>,
                      read: i64| {
            conn.execute(
                "INSERT INTO messages (from_id, to_id, content, timestamp, data, summary, large_file_path, read_flag)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![from, to, content, at, data, file.map(|_| "summary"), file, read],
            )
            .unwrap();
        };
        let mut expected = Vec::new();

        // Unread, with data and a naive time with microseconds.
        let first = now - Duration::hours(30);
        insert(
            "alice",
            "bob",
            "the API changed",
            &naive_local(first),
            Some(r#"{"ticket": 42, "files": ["src/api.rs"]}"#),
            None,
            0,
        );
        expected.push(Expected {
            from: "alice",
            content: "the API changed".into(),
            timestamp: stored(first),
            data: Some(json!({"ticket": 42, "files": ["src/api.rs"]})),
        });
        // Read: the original delivered it; never imported.
        insert(
            "carol",
            "bob",
            "already read",
            &naive_local(first),
            None,
            None,
            1,
        );
        // A large message with its file.
        let second = now - Duration::hours(29);
        let file = large_file.display().to_string();
        let content = format!("zzz Full content saved to: {file}");
        let data = json!({"large_message_file": file, "original_size_kb": 11.7});
        insert(
            "alice",
            "bob",
            &content,
            &naive_local(second),
            Some(&data.to_string()),
            Some(&file),
            0,
        );
        expected.push(Expected {
            from: "alice",
            content,
            timestamp: stored(second),
            data: Some(data),
        });
        // A time the original wrote without a fraction (microsecond zero).
        let third = (now - Duration::hours(28)).with_timezone(&Utc);
        let third_text = (third + Duration::hours(ZONE_HOURS))
            .format("%Y-%m-%dT%H:%M:%S")
            .to_string();
        let third_whole = chrono::NaiveDateTime::parse_from_str(&third_text, "%Y-%m-%dT%H:%M:%S")
            .unwrap()
            .and_utc()
            - Duration::hours(ZONE_HOURS);
        insert("dave", "bob", "no data here", &third_text, None, None, 0);
        expected.push(Expected {
            from: "dave",
            content: "no data here".into(),
            timestamp: stored(third_whole),
            data: None,
        });
        // Sent to bob's old name before he renamed: the original left the row addressed to
        // "bobby"; it belongs to bob.
        let renamed_at = now - Duration::minutes(30);
        let before_rename = renamed_at - Duration::minutes(5);
        insert(
            "erin",
            "bobby",
            "for your old name",
            &naive_local(before_rename),
            None,
            None,
            0,
        );
        expected.push(Expected {
            from: "erin",
            content: "for your old name".into(),
            timestamp: stored(before_rename),
            data: None,
        });
        // Mail for a name nobody registered, and read mail for alice.
        insert(
            "alice",
            "frank",
            "waiting for frank",
            &naive_local(now - Duration::hours(1)),
            None,
            None,
            0,
        );
        insert(
            "bob",
            "alice",
            "read long ago",
            &naive_local(first),
            None,
            None,
            1,
        );

        conn.execute(
            "INSERT INTO instances VALUES ('alice', ?1)",
            [naive_local(now - Duration::minutes(2))],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO instances VALUES ('bob', ?1)",
            [naive_local(now - Duration::hours(1))],
        )
        .unwrap();
        // The original kept the old name's row after a rename; while the forward lives it is
        // bob, not a separate instance that would end the forward.
        conn.execute(
            "INSERT INTO instances VALUES ('bobby', ?1)",
            [naive_local(now - Duration::minutes(1))],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO sessions VALUES ('hash', 'alice', ?1, ?1)",
            [naive_local(now)],
        )
        .unwrap();
        // Live: bobby → bob half an hour ago. Expired: ghost → casper five hours ago.
        conn.execute(
            "INSERT INTO name_history VALUES ('bobby', 'bob', ?1)",
            [naive_local(renamed_at)],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO name_history VALUES ('ghost', 'casper', ?1)",
            [naive_local(now - Duration::hours(5))],
        )
        .unwrap();
        drop(conn);
        Legacy {
            dir,
            path,
            large_file,
            expected_for_bob: expected,
            live_forward_created: renamed_at,
        }
    }
}

/// Runs `import-legacy` in [`ZONE`] into `data_dir`, insisting on success; returns stdout.
fn import(source: &Path, data_dir: &Path, extra: &[&str]) -> String {
    let output = run_import(source, data_dir, extra);
    assert_eq!(
        output.status.code(),
        Some(0),
        "import failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn run_import(source: &Path, data_dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "import-legacy",
        source.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    cli_with_env(
        "127.0.0.1:1",
        &data_dir.join("unused.session"),
        &args,
        &[("TZ", ZONE)],
    )
}

/// Registers `name` through the CLI and returns its mail as `check --json` prints it.
fn register_and_check(addr: &str, session: &Path, name: &str) -> (String, Vec<Value>) {
    let registered = cli(addr, session, &["register", name]);
    assert!(registered.status.success(), "{registered:?}");
    let checked = cli(addr, session, &["check", "--json"]);
    assert!(checked.status.success(), "{checked:?}");
    let reply: Value = serde_json::from_slice(&checked.stdout).unwrap();
    (
        String::from_utf8(registered.stdout).unwrap(),
        reply["messages"].as_array().unwrap().clone(),
    )
}

fn assert_delivered_exactly(messages: &[Value], expected: &[Expected]) {
    let got: Vec<_> = messages
        .iter()
        .map(|m| {
            (
                m["from"].as_str().unwrap(),
                m["message"]["content"].as_str().unwrap(),
            )
        })
        .collect();
    let want: Vec<_> = expected
        .iter()
        .map(|e| (e.from, e.content.as_str()))
        .collect();
    assert_eq!(
        got, want,
        "exactly the unread mail, in the original's order"
    );
    for (message, expected) in messages.iter().zip(expected) {
        assert_eq!(
            message["timestamp"],
            expected.timestamp.as_str(),
            "{message}"
        );
        let data = message["message"]["data"].clone();
        assert_eq!(
            data,
            expected.data.clone().unwrap_or(Value::Null),
            "{message}"
        );
        assert_eq!(message["to"], "bob");
    }
}

#[test]
fn a_running_broker_delivers_exactly_the_unread_mail_with_senders_times_and_data() {
    let legacy = Legacy::build();
    let data_dir = legacy.dir.path().join("data");
    let broker = BrokerProcess::spawn(&data_dir, &[]);

    let summary = import(&legacy.path, &data_dir, &[]);
    assert!(
        summary.starts_with("imported 5 messages, 2 instances, 1 forward; skipped 2 read messages"),
        "{summary}"
    );

    let session = legacy.dir.path().join("bob.session");
    let (registered, messages) = register_and_check(&broker.addr, &session, "bob");
    assert!(
        registered.contains("Registered bob with 4 queued messages"),
        "{registered}"
    );
    assert_delivered_exactly(&messages, &legacy.expected_for_bob);

    let db = Connection::open(data_dir.join("ipc.db")).unwrap();
    let addressed_to: String = db
        .query_row(
            "SELECT addressed_to FROM messages WHERE content = 'for your old name'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(addressed_to, "bobby", "the name the sender used is kept");
    let large: String = db
        .query_row(
            "SELECT large_file FROM messages WHERE large_file IS NOT NULL",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(large, legacy.large_file.display().to_string());
    let frank: i64 = db
        .query_row("SELECT count(*) FROM pending_mail WHERE recipient = 'frank' AND NOT recipient_registered", [], |row| row.get(0))
        .unwrap();
    assert_eq!(frank, 1, "mail for a name not registered yet waits for it");
}

#[test]
fn the_live_forward_is_imported_with_its_expiry_and_the_expired_one_is_not() {
    let legacy = Legacy::build();
    let data_dir = legacy.dir.path().join("data");
    import(&legacy.path, &data_dir, &[]);
    let broker = BrokerProcess::spawn(&data_dir, &[]);

    let db = Connection::open(data_dir.join("ipc.db")).unwrap();
    let forwards: Vec<(String, String, String, String)> = db
        .prepare("SELECT old_name, new_name, created_at, expires_at FROM name_forwards")
        .unwrap()
        .query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let created = legacy.live_forward_created;
    assert_eq!(
        forwards,
        vec![(
            "bobby".to_owned(),
            "bob".to_owned(),
            stored(created),
            stored(created + Duration::hours(2))
        )]
    );

    let instances: Vec<String> = db
        .prepare("SELECT name FROM instances ORDER BY name")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        instances,
        ["alice", "bob"],
        "the old name is not registered on its own"
    );

    let session = legacy.dir.path().join("alice.session");
    assert!(cli(&broker.addr, &session, &["register", "alice"])
        .status
        .success());
    let sent = cli(
        &broker.addr,
        &session,
        &["send", "bobby", "still reaches bob"],
    );
    let stdout = String::from_utf8_lossy(&sent.stdout);
    assert!(
        stdout.contains("Message forwarded from bobby to bob"),
        "{stdout}"
    );
}

#[test]
fn a_second_import_even_from_a_copy_imports_nothing_new() {
    let legacy = Legacy::build();
    let data_dir = legacy.dir.path().join("data");
    import(&legacy.path, &data_dir, &[]);
    let broker = BrokerProcess::spawn(&data_dir, &[]);
    let session = legacy.dir.path().join("bob.session");
    let (_, first) = register_and_check(&broker.addr, &session, "bob");
    assert_eq!(first.len(), 4);

    // Again while the broker runs, after bob read his mail; then from a copy elsewhere.
    let again: Value = serde_json::from_str(&import(&legacy.path, &data_dir, &["--json"])).unwrap();
    assert_eq!(again["report"]["messages"], 0, "{again}");
    assert_eq!(again["report"]["instances"], 0, "{again}");
    assert_eq!(again["report"]["forwards"], 0, "{again}");
    assert_eq!(again["report"]["already_imported"], 5 + 3 + 1, "{again}");
    let copy = legacy.dir.path().join("copy-of-messages.db");
    std::fs::copy(&legacy.path, &copy).unwrap();
    let from_copy = import(&copy, &data_dir, &[]);
    assert!(
        from_copy.starts_with("imported 0 messages, 0 instances, 0 forwards"),
        "{from_copy}"
    );

    let checked = cli(&broker.addr, &session, &["check", "--json"]);
    let reply: Value = serde_json::from_slice(&checked.stdout).unwrap();
    assert_eq!(reply["messages"], json!([]), "nothing delivered twice");
    let db = Connection::open(data_dir.join("ipc.db")).unwrap();
    let total: i64 = db
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(total, 5, "nothing stored twice");
}

#[test]
fn an_import_into_a_stopped_broker_is_delivered_when_it_starts() {
    let legacy = Legacy::build();
    let data_dir = legacy.dir.path().join("fresh");
    assert!(!data_dir.exists());
    import(&legacy.path, &data_dir, &[]);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&data_dir).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "the data directory is created private");

    let broker = BrokerProcess::spawn(&data_dir, &[]);
    let session = legacy.dir.path().join("bob.session");
    let (_, messages) = register_and_check(&broker.addr, &session, "bob");
    assert_delivered_exactly(&messages, &legacy.expected_for_bob);
}

#[test]
fn a_file_that_is_not_the_originals_database_is_refused_with_what_to_pass() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "not a database at all, just some text that is long enough",
    )
    .unwrap();
    let other = dir.path().join("other.db");
    Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE messages (id INTEGER, body TEXT)")
        .unwrap();

    for (source, cause) in [
        (dir.path().join("missing.db"), "no such file"),
        (text, "not the Python original's messages.db"),
        (other, "lacks from_id"),
    ] {
        let output = run_import(&source, &data_dir, &[]);
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(cause), "{stderr}");
        assert!(
            stderr.contains("messages.db"),
            "says what to pass: {stderr}"
        );
    }

    // The broker's own database is refused too.
    let legacy = Legacy::build();
    import(&legacy.path, &data_dir, &[]);
    let own = run_import(&data_dir.join("ipc.db"), &data_dir, &[]);
    assert_eq!(own.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&own.stderr).contains("own database"));
}
