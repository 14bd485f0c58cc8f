//! The SQLite file as an operator sees it while the broker runs: tables and views with the
//! right rows, no token in clear, auth failures counted, migrations that run twice, and the
//! copy-paste recipes of docs/STORAGE.md running against a live database.
use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};

use claude_ipc::clock::Clock;
use common::{ping_json, TestBroker, TIMEOUT};
use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::types::Value as SqlValue;
use rusqlite::Connection;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const SECRET: &str = "correct-horse-battery-staple-42";
const BOGUS_TOKEN: &str = "bogus-token-that-nobody-was-ever-given";
const WRONG_AUTH: &str = "0000wrong0auth0token0000";

const TABLES: &[&str] = &[
    "instances",
    "sessions",
    "messages",
    "name_forwards",
    "request_log",
    "auth_failures",
    "send_nonces",
    "broker_runs",
];
const VIEWS: &[&str] = &[
    "pending_mail",
    "pending_by_recipient",
    "instance_overview",
    "live_forwards",
    "recent_auth_failures",
    "leased_mail",
    "threads",
    "conversations",
];

/// A broker with a little of everything in its database, and what the test needs to know
/// about how it got there.
struct Populated {
    broker: TestBroker,
    /// alice's first token, revoked when she registered again.
    alice_old: String,
    alice: String,
    bob: String,
    carol: String,
    dave: String,
    /// Local addresses of the connections that failed to authenticate, as the broker saw them.
    mallory_peer: String,
    bogus_peer: String,
    revoked_peer: String,
    bob_message_id: i64,
}

/// One request on a fresh connection; returns the reply and the client's own address.
fn raw_request(addr: &str, request: &Value) -> (Value, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let local = stream.local_addr().unwrap().to_string();
    stream.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    (serde_json::from_str(&line).unwrap(), local)
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn populated() -> Populated {
    // The real clock, because the views compare with SQLite's 'now'; a rate limit so the
    // request log is kept.
    let broker = TestBroker::start_with_clock(
        |config| {
            config.shared_secret = Some(SECRET.into());
            config.limits.rate_limit = 1000;
        },
        Clock::system(),
    );
    let addr = broker.addr();
    let alice_old = broker.register("alice");
    let bob = broker.register("bob");
    let carol = broker.register("carol");
    let dave = broker.register("dave");

    let (reply, mallory_peer) = raw_request(
        &addr,
        &json!({"action": "register", "instance_id": "mallory", "auth_token": WRONG_AUTH}),
    );
    assert_eq!(reply["message"], "Invalid auth token", "{reply}");
    let (reply, bogus_peer) = raw_request(
        &addr,
        &json!({"action": "list", "session_token": BOGUS_TOKEN}),
    );
    assert_eq!(
        reply["message"], "Invalid or missing session token",
        "{reply}"
    );
    let alice = broker.take_over("alice");
    let (reply, revoked_peer) = raw_request(
        &addr,
        &json!({"action": "list", "session_token": alice_old}),
    );
    assert_eq!(reply["code"], "session_replaced", "{reply}");

    let mut client = broker.client();
    let bob_message_id = client
        .send(&alice, "bob", "waiting for bob", None, Some("nonce-1"))
        .unwrap()
        .message_id
        .0;
    client
        .send(
            &alice,
            "carol",
            "read by carol",
            Some(json!({"k": 1})),
            None,
        )
        .unwrap();
    assert_eq!(client.check(&carol).unwrap().messages.len(), 1);
    // The connection confirms delivery before it reads the next request.
    ping_json(&mut client);
    client
        .send(&alice, "ghost", "future mail for ghost", None, None)
        .unwrap();
    client.rename(&dave, "dave2").unwrap();
    let forwarded = client
        .send(&bob, "dave", "to the old name", None, None)
        .unwrap();
    assert_eq!(forwarded.message, "Message forwarded from dave to dave2");

    Populated {
        broker,
        alice_old,
        alice,
        bob,
        carol,
        dave,
        mallory_peer,
        bogus_peer,
        revoked_peer,
        bob_message_id,
    }
}

/// Every row of `sql` as text columns (NULL as "NULL"), for compact comparisons.
fn rows(conn: &Connection, sql: &str) -> Vec<Vec<String>> {
    let mut statement = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let columns = statement.column_count();
    statement
        .query_map([], |row| {
            (0..columns)
                .map(|i| {
                    Ok(match row.get::<_, SqlValue>(i)? {
                        SqlValue::Null => "NULL".to_owned(),
                        SqlValue::Integer(n) => n.to_string(),
                        SqlValue::Real(x) => x.to_string(),
                        SqlValue::Text(t) => t,
                        SqlValue::Blob(b) => format!("<{} bytes>", b.len()),
                    })
                })
                .collect()
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// `2026-11-24T20:53:45.123Z`: the one form every stored time takes.
fn is_utc_text(text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| range.into_iter().all(|i| b[i].is_ascii_digit());
    b.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z'
}

fn strings(rows: Vec<Vec<String>>) -> Vec<String> {
    rows.into_iter().map(|r| r.join("|")).collect()
}

#[test]
fn tables_and_views_show_the_live_state() {
    let state = populated();
    let db = state.broker.sql();

    let mut names = strings(rows(
        &db,
        "SELECT type || ':' || name FROM sqlite_master WHERE type IN ('table', 'view')",
    ));
    names.sort();
    for table in TABLES {
        assert!(
            names.contains(&format!("table:{table}")),
            "{table} missing: {names:?}"
        );
    }
    for view in VIEWS {
        assert!(
            names.contains(&format!("view:{view}")),
            "{view} missing: {names:?}"
        );
    }

    assert_eq!(
        strings(rows(
            &db,
            "SELECT name, last_renamed_at IS NOT NULL FROM instances ORDER BY name"
        )),
        ["alice|0", "bob|0", "carol|0", "dave2|1"]
    );

    // One active session per instance; alice's first one is kept, revoked.
    assert_eq!(
        strings(rows(
            &db,
            "SELECT instance_name, count(*), sum(revoked_at IS NULL) FROM sessions
             GROUP BY instance_name ORDER BY instance_name"
        )),
        ["alice|2|1", "bob|1|1", "carol|1|1", "dave2|1|1"]
    );
    for (name, token, revoked) in [
        ("alice", &state.alice_old, true),
        ("alice", &state.alice, false),
        ("bob", &state.bob, false),
        ("carol", &state.carol, false),
        ("dave2", &state.dave, false),
    ] {
        let found: (String, bool) = db
            .query_row(
                "SELECT instance_name, revoked_at IS NOT NULL FROM sessions WHERE token_sha256 = ?1",
                [sha256_hex(token)],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap_or_else(|e| panic!("no session row for {name}'s token hash: {e}"));
        assert_eq!(found, (name.to_owned(), revoked));
    }

    assert_eq!(
        strings(rows(
            &db,
            "SELECT sender, addressed_to, recipient, kind, content, delivered_at IS NOT NULL,
                    delivery_count, coalesce(data, '-'), coalesce(nonce, '-')
             FROM messages ORDER BY id"
        )),
        [
            "alice|bob|bob|direct|waiting for bob|0|0|-|nonce-1",
            r#"alice|carol|carol|direct|read by carol|1|1|{"k":1}|-"#,
            "alice|ghost|ghost|direct|future mail for ghost|0|0|-|-",
            "system|alice|alice|system|dave renamed to dave2|0|0|-|-",
            "system|bob|bob|system|dave renamed to dave2|0|0|-|-",
            "system|carol|carol|system|dave renamed to dave2|0|0|-|-",
            "bob|dave|dave2|direct|to the old name|0|0|-|-",
        ]
    );
    assert_eq!(
        strings(rows(
            &db,
            "SELECT sender, nonce, message_id FROM send_nonces"
        )),
        [format!("alice|nonce-1|{}", state.bob_message_id)]
    );
    assert_eq!(
        strings(rows(
            &db,
            "SELECT old_name, new_name,
                    round((julianday(expires_at) - julianday(created_at)) * 24, 3)
             FROM name_forwards"
        )),
        ["dave|dave2|2"]
    );
    // The rate-limit window moved with the rename.
    assert_eq!(
        strings(rows(
            &db,
            "SELECT instance_name, count(*) > 0 FROM request_log
             GROUP BY instance_name ORDER BY instance_name"
        )),
        ["alice|1", "bob|1", "carol|1", "dave2|1"]
    );

    let runs = rows(
        &db,
        "SELECT pid, version, addr, stopped_at FROM broker_runs",
    );
    assert_eq!(
        runs,
        [vec![
            std::process::id().to_string(),
            claude_ipc::VERSION.to_owned(),
            state.broker.addr(),
            "NULL".to_owned()
        ]]
    );

    // The views an operator would reach for.
    assert_eq!(
        strings(rows(
            &db,
            "SELECT recipient, addressed_to, sender, content_start, recipient_registered
             FROM pending_mail"
        )),
        [
            "bob|bob|alice|waiting for bob|1",
            "ghost|ghost|alice|future mail for ghost|0",
            "alice|alice|system|dave renamed to dave2|1",
            "bob|bob|system|dave renamed to dave2|1",
            "carol|carol|system|dave renamed to dave2|1",
            "dave2|dave|bob|to the old name|1",
        ]
    );
    assert_eq!(
        strings(rows(
            &db,
            "SELECT recipient, waiting, registered, oldest <= newest
             FROM pending_by_recipient ORDER BY recipient"
        )),
        [
            "alice|1|1|1",
            "bob|2|1|1",
            "carol|1|1|1",
            "dave2|1|1|1",
            "ghost|1|0|1"
        ]
    );
    assert_eq!(
        strings(rows(
            &db,
            "SELECT name, waiting, last_renamed_at IS NOT NULL, session_created_at IS NOT NULL
             FROM instance_overview"
        )),
        ["alice|1|0|1", "bob|2|0|1", "carol|1|0|1", "dave2|1|1|1"]
    );
    let overview_columns: Vec<String> = db
        .prepare("SELECT * FROM instance_overview")
        .unwrap()
        .column_names()
        .map(str::to_owned)
        .collect();
    assert!(
        !overview_columns.iter().any(|c| c.contains("token")),
        "instance_overview must not show token hashes: {overview_columns:?}"
    );
    assert_eq!(
        strings(rows(&db, "SELECT old_name, new_name FROM live_forwards")),
        ["dave|dave2"]
    );
    assert_eq!(
        rows(&db, "SELECT count(*) FROM recent_auth_failures"),
        [["3"]]
    );

    // Every stored time is ISO-8601 UTC text with milliseconds.
    for (table, column) in [
        ("instances", "registered_at"),
        ("instances", "last_seen_at"),
        ("instances", "last_renamed_at"),
        ("sessions", "created_at"),
        ("sessions", "last_used_at"),
        ("sessions", "revoked_at"),
        ("messages", "received_at"),
        ("messages", "delivered_at"),
        ("name_forwards", "created_at"),
        ("name_forwards", "expires_at"),
        ("request_log", "at"),
        ("auth_failures", "at"),
        ("send_nonces", "seen_at"),
        ("broker_runs", "started_at"),
    ] {
        let values = rows(
            &db,
            &format!("SELECT {column} FROM {table} WHERE {column} IS NOT NULL"),
        );
        assert!(!values.is_empty(), "{table}.{column} has no times to check");
        for value in values {
            assert!(is_utc_text(&value[0]), "{table}.{column} = {}", value[0]);
        }
    }
}

#[test]
fn auth_failures_are_recorded_with_name_and_peer() {
    let state = populated();
    let db = state.broker.sql();
    let failures = strings(rows(
        &db,
        "SELECT coalesce(instance_name, 'NULL'), peer, reason FROM auth_failures ORDER BY id",
    ));
    assert_eq!(failures.len(), 3, "{failures:?}");
    let expect = [
        ("mallory", &state.mallory_peer, "secret"),
        ("NULL", &state.bogus_peer, "unknown session token"),
        ("alice", &state.revoked_peer, "revoked session token"),
    ];
    for (row, (name, peer, reason)) in failures.iter().zip(expect) {
        let fields: Vec<&str> = row.splitn(3, '|').collect();
        assert_eq!(fields[0], name, "{row}");
        assert_eq!(
            fields[1],
            peer.as_str(),
            "the peer is the client's own address: {row}"
        );
        assert!(fields[2].contains(reason), "{row}");
    }
    // The view shows the same three, newest first.
    let recent = strings(rows(
        &db,
        "SELECT coalesce(instance_name, 'NULL'), peer FROM recent_auth_failures",
    ));
    assert_eq!(recent.len(), 3, "{recent:?}");
    let mut names: Vec<&str> = recent
        .iter()
        .map(|r| r.split('|').next().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["NULL", "alice", "mallory"]);
    let times = rows(&db, "SELECT at FROM recent_auth_failures");
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
}

/// The database file and its WAL, as bytes: what a stolen copy would hold.
fn database_bytes(data_dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for file in ["ipc.db", "ipc.db-wal"] {
        if let Ok(content) = std::fs::read(data_dir.join(file)) {
            bytes.extend(content);
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[test]
fn tokens_and_secrets_are_never_stored_in_clear() {
    let state = populated();
    let data_dir = state.broker.data_dir();
    let bytes = database_bytes(&data_dir);
    assert!(bytes.len() > 4096, "nothing to search");
    for token in [
        &state.alice_old,
        &state.alice,
        &state.bob,
        &state.carol,
        &state.dave,
    ] {
        assert!(
            !contains(&bytes, token),
            "a session token is stored in clear"
        );
        // The search does find what is there: the token's hash.
        assert!(
            contains(&bytes, &sha256_hex(token)),
            "the token's sha256 is not in the file"
        );
    }
    for secret in [SECRET, BOGUS_TOKEN, WRONG_AUTH] {
        assert!(
            !contains(&bytes, secret),
            "{secret} is stored in the database"
        );
    }
    let hashes = rows(&state.broker.sql(), "SELECT token_sha256 FROM sessions");
    for hash in hashes {
        assert_eq!(hash[0].len(), 64);
        assert!(hash[0]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }
}

#[test]
fn migrations_run_again_on_restart_without_error() {
    let state = populated();
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("sql".as_ref()))
        .count();
    let before = rows(&state.broker.sql(), "SELECT count(*) FROM pending_mail");

    let broker = state.broker.restart().restart();
    let db = broker.sql();
    assert_eq!(
        rows(&db, "SELECT count(*) FROM refinery_schema_history"),
        [[migrations.to_string()]],
        "each migration is applied exactly once"
    );
    assert_eq!(rows(&db, "SELECT count(*) FROM pending_mail"), before);
    // Three runs, the first two stopped cleanly.
    assert_eq!(
        strings(rows(
            &db,
            "SELECT stopped_at IS NOT NULL FROM broker_runs ORDER BY id"
        )),
        ["1", "1", "0"]
    );
    // And the sessions from before still speak.
    let mail = broker.client().check(&state.bob).unwrap().messages;
    assert_eq!(mail[0].message.content, "waiting for bob");
}

/// One fenced ```sql block of the storage guide.
struct Recipe {
    line: usize,
    text: String,
}

/// Every ```sql block of `markdown`, with the line its fence opens on. Other fenced blocks are
/// skipped whole, so an example inside them is never mistaken for a recipe.
fn sql_blocks(markdown: &str) -> Vec<Recipe> {
    let mut recipes = Vec::new();
    let mut current: Option<Recipe> = None;
    let mut in_other_block = false;
    for (number, line) in markdown.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        // Only a bare fence closes a block; one with an info string opens one.
        let closes = fence.is_some_and(|info| info.trim().is_empty());
        if let Some(recipe) = &mut current {
            if closes {
                recipes.push(current.take().unwrap());
            } else {
                recipe.text.push_str(line);
                recipe.text.push('\n');
            }
        } else if let Some(info) = fence {
            if in_other_block {
                in_other_block = !closes;
            } else if info.split_whitespace().next() == Some("sql") {
                current = Some(Recipe {
                    line: number + 1,
                    text: String::new(),
                });
            } else {
                in_other_block = true;
            }
        }
    }
    assert!(current.is_none(), "an ```sql block is never closed");
    recipes
}

/// Runs every statement of `sql` to completion, reading every row; returns how many ran.
/// Lines starting with `.` are `sqlite3` shell commands, not SQL, and are left out here.
fn run_statements(conn: &Connection, sql: &str) -> Result<usize, String> {
    let sql: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with('.'))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut batch = rusqlite::Batch::new(conn, &sql);
    let mut count = 0;
    while let Some(mut statement) = batch.next().map_err(|e| e.to_string())? {
        let text = statement.expanded_sql().unwrap_or_default();
        let mut rows = statement.query([]).map_err(|e| format!("{e} in: {text}"))?;
        while rows
            .next()
            .map_err(|e| format!("{e} in: {text}"))?
            .is_some()
        {}
        count += 1;
    }
    Ok(count)
}

#[test]
fn sql_block_parser_finds_only_sql_fences() {
    let doc = "# Guide\n```sql\nSELECT 1;\nSELECT 2;\n```\ntext\n```bash\nls\n```\n  ```sql title\n.tables\nSELECT 3\n  ```\n```sqlite\nSELECT 4;\n```\n";
    let blocks = sql_blocks(doc);
    assert_eq!(blocks.len(), 2);
    assert_eq!(
        (blocks[0].line, blocks[0].text.as_str()),
        (2, "SELECT 1;\nSELECT 2;\n")
    );
    assert_eq!(
        (blocks[1].line, blocks[1].text.as_str()),
        (10, ".tables\nSELECT 3\n")
    );
    let conn = Connection::open_in_memory().unwrap();
    assert_eq!(run_statements(&conn, &blocks[0].text), Ok(2));
    assert_eq!(run_statements(&conn, &blocks[1].text), Ok(1));
    assert!(run_statements(&conn, "SELECT * FROM no_such_table;").is_err());
    assert!(run_statements(&conn, "SELECT 1; SELEC 2;").is_err());
}

#[test]
fn every_operations_md_recipe_runs_against_a_live_database() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/OPERATIONS.md");
    let markdown = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path} cannot be read ({e}); the operations guide is missing"));
    let state = populated();
    let db = state.broker.sql();
    let recipes = sql_blocks(&markdown);
    assert!(
        recipes.len() >= 4,
        "only {} ```sql recipes in {path}",
        recipes.len()
    );
    for recipe in recipes {
        let ran = run_statements(&db, &recipe.text)
            .unwrap_or_else(|e| panic!("OPERATIONS.md line {}: {e}", recipe.line));
        assert!(
            ran > 0,
            "OPERATIONS.md line {} holds no statement",
            recipe.line
        );
    }
}

#[test]
fn every_storage_md_recipe_runs_against_a_live_database() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/STORAGE.md");
    let markdown = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path} cannot be read ({e}); the storage guide is missing"));
    let state = populated();
    let db = state.broker.sql();
    let mut recipes = 0;
    let mut failures = Vec::new();
    for recipe in sql_blocks(&markdown) {
        match run_statements(&db, &recipe.text) {
            Ok(0) => {}
            Ok(_) => recipes += 1,
            Err(e) => failures.push(format!("STORAGE.md line {}: {e}", recipe.line)),
        }
    }
    assert!(
        failures.is_empty(),
        "recipes in ```sql blocks must run as written on a read-only connection:\n{}",
        failures.join("\n")
    );
    assert!(
        recipes >= 5,
        "only {recipes} ```sql recipes in {path}; expected at least 5"
    );

    // The same blocks, shell commands included, through the stock shell when it is there.
    let Some(sqlite3) = system_sqlite3() else {
        println!(
            "note: /usr/bin/sqlite3 is not installed; the shell run of the recipes is skipped"
        );
        return;
    };
    for recipe in sql_blocks(&markdown) {
        let (ok, _, stderr) = run_sqlite3(sqlite3, &state.broker.db_path(), &recipe.text);
        assert!(
            ok && stderr.is_empty(),
            "sqlite3 failed on STORAGE.md line {}: {stderr}",
            recipe.line
        );
    }
}

fn system_sqlite3() -> Option<&'static Path> {
    let path = Path::new("/usr/bin/sqlite3");
    path.exists().then_some(path)
}

/// Runs `input` through `sqlite3 -readonly -bail` on `db`; returns (success, stdout, stderr).
fn run_sqlite3(sqlite3: &Path, db: &Path, input: &str) -> (bool, String, String) {
    let mut child = Command::new(sqlite3)
        .arg("-readonly")
        .arg("-bail")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sqlite3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_sqlite3_shell_reads_the_live_database() {
    let Some(sqlite3) = system_sqlite3() else {
        println!("note: /usr/bin/sqlite3 is not installed; this check is skipped");
        return;
    };
    let state = populated();
    let db = state.broker.db_path();
    let (ok, stdout, stderr) = run_sqlite3(sqlite3, &db, ".tables\n");
    assert!(ok && stderr.is_empty(), "{stderr}");
    let listed: Vec<&str> = stdout.split_whitespace().collect();
    for name in TABLES.iter().chain(VIEWS) {
        assert!(
            listed.contains(name),
            "`.tables` does not show {name}: {stdout}"
        );
    }
    // And it reads rows the broker just committed, while the broker holds the database.
    let (ok, stdout, stderr) = run_sqlite3(
        sqlite3,
        &db,
        "SELECT recipient || '=' || waiting FROM pending_by_recipient ORDER BY recipient;\n",
    );
    assert!(ok && stderr.is_empty(), "{stderr}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["alice=1", "bob=2", "carol=1", "dave2=1", "ghost=1"]
    );
}

/// The online backup of docs/OPERATIONS.md, section 4: `sqlite3 ipc.db ".backup FILE"` while
/// the broker runs and writes, then a broker started on the copy delivers the mail.
#[test]
fn the_operations_md_online_backup_serves_a_broker_after_restore() {
    let Some(sqlite3) = system_sqlite3() else {
        println!("note: /usr/bin/sqlite3 is not installed; the backup recipe is not run");
        return;
    };
    // The real clock: the restored broker runs on it, and sessions must still be fresh.
    let broker = TestBroker::start_with_clock(|_| {}, Clock::system());
    let alice = broker.register("alice");
    let bob = broker.register("bob");
    let mut client = broker.client();
    for n in 0..50 {
        client
            .send(&alice, "bob", &format!("before the backup {n}"), None, None)
            .unwrap();
    }
    let restored = tempfile::tempdir().unwrap();
    let backup = restored.path().join("ipc.db");
    // Writes keep arriving while the backup runs.
    let writer = {
        let addr = broker.addr();
        let alice = alice.clone();
        std::thread::spawn(move || {
            let mut client = claude_ipc::client::Client::connect(&addr, TIMEOUT).unwrap();
            for n in 0..50 {
                client
                    .send(&alice, "carol", &format!("during {n}"), None, None)
                    .unwrap();
            }
        })
    };
    let status = Command::new(sqlite3)
        .arg(broker.db_path())
        .arg(format!(".backup '{}'", backup.display()))
        .status()
        .unwrap();
    writer.join().unwrap();
    assert!(status.success());
    let copy = Connection::open(&backup).unwrap();
    let check: String = copy
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(copy);

    let mut config =
        claude_ipc::config::Config::new("127.0.0.1:0".parse().unwrap(), restored.path().to_owned());
    config.limits.rate_limit = 0;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime
        .block_on(claude_ipc::server::start(&config, false, Clock::system()))
        .expect("a broker starts on the restored backup");
    let mut restored_client =
        claude_ipc::client::Client::connect(&server.addr.to_string(), TIMEOUT).unwrap();
    let mail = restored_client
        .check(&bob)
        .expect("bob's session was restored too");
    assert_eq!(mail.messages.len(), 50);
    assert_eq!(mail.messages[0].message.content, "before the backup 0");
    runtime.block_on(server.shutdown());
}
