//! The command-line client as a user runs it: the real binary as a subprocess against a real
//! broker, its session file, its human and `--json` output, and its exit codes.
use crate::common;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use claude_ipc::client::Received;
use claude_ipc::clock::Clock;
use common::{binary, cli, TestBroker};
use serde_json::Value;
use tempfile::TempDir;

/// One identity: its own session file, used through `IPC_SESSION_FILE`.
struct Identity {
    file: PathBuf,
}

impl Identity {
    fn new(dir: &TempDir, name: &str) -> Identity {
        Identity {
            file: dir.path().join(format!("{name}.session")),
        }
    }

    fn run(&self, broker: &TestBroker, args: &[&str]) -> Output {
        cli(&broker.addr(), &self.file, args)
    }

    /// Runs and insists on exit code 0; returns stdout.
    fn ok(&self, broker: &TestBroker, args: &[&str]) -> String {
        succeeded(self.run(broker, args), args)
    }

    fn json(&self, broker: &TestBroker, args: &[&str]) -> Value {
        let mut with_json = args.to_vec();
        with_json.push("--json");
        let stdout = self.ok(broker, &with_json);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{args:?} --json printed invalid JSON ({e}): {stdout}"))
    }

    fn session(&self) -> Value {
        let text = std::fs::read_to_string(&self.file).expect("session file written");
        serde_json::from_str(&text).expect("session file is JSON")
    }

    fn token(&self) -> String {
        self.session()["session_token"].as_str().unwrap().to_owned()
    }

    /// This identity's mail, read with the typed client (so the CLI under test is not also
    /// the judge).
    fn mail(&self, broker: &TestBroker) -> Vec<Received> {
        let mut client = broker.client();
        let messages = client.check(&self.token()).expect("check").messages;
        client.ping().expect("delivery confirmed");
        messages
    }
}

fn succeeded(output: Output, args: &[&str]) -> String {
    assert_eq!(
        output.status.code(),
        Some(0),
        "{args:?} failed: stdout {} stderr {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("stdout is UTF-8")
}

/// Fails with the whole of stderr unless it mentions `needle`.
fn assert_stderr_contains(output: &Output, needle: &str) {
    let text = stderr(output);
    assert!(text.contains(needle), "stderr lacks {needle:?}: {text}");
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// An address where nothing listens: a port the OS just handed out and took back.
fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    addr
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn register_saves_a_0600_session_file_and_prints_a_human_line() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let alice = Identity::new(&dir, "alice");
    // A file left with a wide mode by some earlier tool gets tightened.
    std::fs::write(&alice.file, "{}").unwrap();
    std::fs::set_permissions(&alice.file, std::fs::Permissions::from_mode(0o644)).unwrap();

    let stdout = alice.ok(&broker, &["register", "alice"]);
    assert!(stdout.starts_with("Registered alice"), "{stdout}");
    assert!(stdout.contains(alice.file.to_str().unwrap()), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");

    assert_eq!(mode(&alice.file), 0o600);
    let session = alice.session();
    let fields: Vec<&String> = session.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["instance_id", "session_token"]);
    assert_eq!(session["instance_id"], "alice");
    let token = alice.token();
    assert_eq!(token.len(), 43);
    assert!(token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert!(!stdout.contains(&token), "the token must not be printed");
    // The saved token is a live session.
    let names: Vec<String> = broker
        .client()
        .list(&token)
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(names, ["alice"]);
}

#[test]
fn register_uses_the_shared_secret_from_the_environment() {
    let broker = TestBroker::start_with_clock(
        |config| config.shared_secret = Some("s3cret".into()),
        Clock::system(),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("session");
    let register = |secret: &str| {
        Command::new(binary())
            .args(["register", "alice"])
            .env("IPC_ADDR", broker.addr())
            .env("IPC_SESSION_FILE", &file)
            .env("IPC_SHARED_SECRET", secret)
            .env("IPC_AUTOSTART", "0")
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let wrong = register("not-it");
    assert_eq!(wrong.status.code(), Some(1), "{}", stderr(&wrong));
    // The broker's proof does not match the wrong secret, so no register is sent at all.
    assert_stderr_contains(&wrong, "did not prove that it knows the shared secret");
    assert!(
        !file.exists(),
        "a refused register must not write a session"
    );
    succeeded(register("s3cret"), &["register"]);
    assert!(file.exists());
}

#[test]
fn send_joins_words_and_attaches_data() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (Identity::new(&dir, "alice"), Identity::new(&dir, "bob"));
    alice.ok(&broker, &["register", "alice"]);
    bob.ok(&broker, &["register", "bob"]);

    let stdout = alice.ok(
        &broker,
        &["send", "bob", "the", "API", "changed,", "see src/api.rs"],
    );
    assert!(stdout.starts_with("Message sent"), "{stdout}");
    alice.ok(
        &broker,
        &["send", "bob", "build done", "--data", r#"{"exit": 0}"#],
    );
    let stdout = alice.ok(&broker, &["send", "carol", "for later"]);
    assert!(
        stdout.starts_with("Message queued for carol (not yet registered)"),
        "{stdout}"
    );

    let mail = bob.mail(&broker);
    let got: Vec<(&str, &str, Option<String>)> = mail
        .iter()
        .map(|m| {
            (
                m.from.as_str(),
                m.message.content.as_str(),
                m.message.data.clone().map(|d| Value::Object(d).to_string()),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("alice", "the API changed, see src/api.rs", None),
            ("alice", "build done", Some(r#"{"exit":0}"#.to_owned())),
        ]
    );
    // Each CLI send carries its own nonce, so a retried request would be stored once.
    assert!(mail.iter().all(|m| m.nonce.is_some()));
    assert_ne!(mail[0].nonce, mail[1].nonce);

    let bad = alice.run(&broker, &["send", "bob", "x", "--data", "[1, 2]"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("--data must be a JSON object"));
    assert!(
        bob.mail(&broker).is_empty(),
        "a refused send stored nothing"
    );
}

#[test]
fn broadcast_reaches_every_other_instance() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c] = ["a", "b", "c"].map(|n| Identity::new(&dir, n));
    for (identity, name) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        identity.ok(&broker, &["register", name]);
    }
    let stdout = a.ok(&broker, &["broadcast", "deploying", "in", "5", "minutes"]);
    assert_eq!(stdout.trim(), "Broadcast to 2 instances");
    for other in [&b, &c] {
        let mail = other.mail(&broker);
        assert_eq!(mail.len(), 1);
        assert_eq!(mail[0].from, "a");
        assert_eq!(mail[0].message.content, "deploying in 5 minutes");
    }
    assert!(a.mail(&broker).is_empty(), "the sender gets no copy");
}

#[test]
fn check_prints_sender_and_content_and_consumes_the_mail() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (Identity::new(&dir, "alice"), Identity::new(&dir, "bob"));
    alice.ok(&broker, &["register", "alice"]);
    bob.ok(&broker, &["register", "bob"]);

    assert_eq!(alice.ok(&broker, &["check"]).trim(), "No new messages");
    bob.ok(&broker, &["send", "alice", "first line"]);
    bob.ok(
        &broker,
        &["send", "alice", "with data", "--data", r#"{"pr": 42}"#],
    );
    let stdout = alice.ok(&broker, &["check"]);
    let first = stdout.find("first line").expect(&stdout);
    let second = stdout.find("with data").expect(&stdout);
    assert!(first < second, "oldest first: {stdout}");
    assert_eq!(stdout.matches("from bob").count(), 2, "{stdout}");
    assert!(stdout.contains(r#""pr":42"#), "data shown: {stdout}");
    assert_eq!(alice.ok(&broker, &["check"]).trim(), "No new messages");

    bob.ok(
        &broker,
        &[
            "send",
            "alice",
            "json please",
            "--data",
            r#"{"k": [1, "two"]}"#,
        ],
    );
    let reply = alice.json(&broker, &["check"]);
    assert_eq!(reply["status"], "ok");
    assert_eq!(reply["more"], false);
    let messages = reply["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{reply}");
    assert_eq!(messages[0]["from"], "bob");
    assert_eq!(messages[0]["to"], "alice");
    assert_eq!(messages[0]["message"]["content"], "json please");
    assert_eq!(messages[0]["message"]["data"]["k"][1], "two");
    assert!(messages[0]["timestamp"].is_string());
    assert_eq!(
        alice.json(&broker, &["check"])["messages"],
        Value::Array(vec![])
    );
}

#[test]
fn list_shows_every_registered_instance() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (Identity::new(&dir, "alice"), Identity::new(&dir, "bob"));
    alice.ok(&broker, &["register", "alice"]);
    bob.ok(&broker, &["register", "bob"]);
    let stdout = alice.ok(&broker, &["list"]);
    let names: Vec<&str> = stdout
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    assert!(stdout.contains("last seen"), "{stdout}");

    let reply = bob.json(&broker, &["list"]);
    let ids: Vec<&str> = reply["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alice", "bob"]);
    assert!(reply["instances"][0]["last_seen"].is_string());
}

#[test]
fn rename_updates_the_session_file() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (Identity::new(&dir, "alice"), Identity::new(&dir, "bob"));
    alice.ok(&broker, &["register", "alice"]);
    bob.ok(&broker, &["register", "bob"]);
    let token = alice.token();

    let stdout = alice.ok(&broker, &["rename", "alice-review"]);
    assert_eq!(stdout.trim(), "Renamed alice to alice-review");
    assert_eq!(alice.session()["instance_id"], "alice-review");
    assert_eq!(alice.token(), token, "the session itself carries over");
    assert_eq!(mode(&alice.file), 0o600);
    let listed = alice.ok(&broker, &["list"]);
    assert!(
        listed.contains("alice-review") && !listed.contains("alice "),
        "{listed}"
    );

    // The new name is who speaks now.
    alice.ok(&broker, &["send", "bob", "hi from the new name"]);
    let mail = bob.mail(&broker);
    assert_eq!(mail.last().unwrap().from, "alice-review");
}

#[test]
fn ping_reports_the_broker() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let nobody = Identity::new(&dir, "nobody");
    let stdout = nobody.ok(&broker, &["ping"]);
    assert!(stdout.contains(&broker.addr()), "{stdout}");
    assert!(stdout.contains("is up"), "{stdout}");
    assert!(stdout.contains(claude_ipc::VERSION), "{stdout}");
    assert!(stdout.contains("open mode"), "{stdout}");
    let reply = nobody.json(&broker, &["ping"]);
    assert_eq!(reply["status"], "ok");
    assert_eq!(reply["version"], claude_ipc::VERSION);
    assert!(!nobody.file.exists(), "ping needs no session");
}

#[test]
fn every_subcommand_prints_valid_json_with_json() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (Identity::new(&dir, "alice"), Identity::new(&dir, "bob"));

    let registered = alice.json(&broker, &["register", "alice"]);
    assert_eq!(registered["status"], "ok");
    assert_eq!(registered["instance_id"], "alice");
    assert_eq!(registered["message"], "Registered alice");
    assert!(
        !registered.to_string().contains(&alice.token()),
        "the token must not be printed: {registered}"
    );
    bob.json(&broker, &["register", "bob"]);

    let sent = alice.json(&broker, &["send", "bob", "hello"]);
    assert_eq!(sent["status"], "ok");
    assert_eq!(sent["message"], "Message sent");
    assert!(sent["message_id"].as_i64().unwrap() > 0);
    assert_eq!(sent["duplicate"], false);

    let broadcast = alice.json(&broker, &["broadcast", "to all"]);
    assert_eq!(broadcast["status"], "ok");
    assert_eq!(broadcast["message"], "Broadcast to 1 instances");

    let checked = bob.json(&broker, &["check"]);
    let contents: Vec<&str> = checked["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["hello", "to all"]);
    assert_eq!(checked["messages"][0]["id"], sent["message_id"]);

    let listed = bob.json(&broker, &["list"]);
    assert_eq!(listed["instances"].as_array().unwrap().len(), 2);

    let renamed = bob.json(&broker, &["rename", "robert"]);
    assert_eq!(renamed["status"], "ok");
    assert_eq!(renamed["message"], "Renamed bob to robert");

    assert_eq!(alice.json(&broker, &["ping"])["status"], "ok");
}

#[test]
fn addr_flag_overrides_ipc_addr() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("session");
    let closed = closed_port();
    // IPC_ADDR points nowhere; --addr points at the broker and wins.
    let output = cli(
        &closed,
        &file,
        &["register", "alice", "--addr", &broker.addr()],
    );
    succeeded(output, &["register", "--addr"]);
    let output = cli(&closed, &file, &["ping", "--addr", &broker.addr()]);
    assert!(succeeded(output, &["ping", "--addr"]).contains(&broker.addr()));
    // Without --addr, IPC_ADDR is used (and here it leads nowhere).
    let output = cli(&closed, &file, &["ping"]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(stderr(&output).contains(&closed));
}

#[test]
fn without_ipc_session_file_the_legacy_home_path_is_used() {
    let broker = TestBroker::start_on_wall_clock();
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(binary())
            .args(args)
            .env("HOME", home.path())
            .env("IPC_ADDR", broker.addr())
            .env_remove("IPC_SESSION_FILE")
            .env_remove("IPC_SHARED_SECRET")
            .env("IPC_AUTOSTART", "0")
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let legacy_path = home.path().join(".ipc-session");
    let stdout = succeeded(run(&["register", "alice"]), &["register"]);
    assert!(stdout.contains(legacy_path.to_str().unwrap()), "{stdout}");
    let session: Value =
        serde_json::from_str(&std::fs::read_to_string(&legacy_path).unwrap()).unwrap();
    assert_eq!(session["instance_id"], "alice");
    assert_eq!(mode(&legacy_path), 0o600);

    // A session file the Python scripts wrote (their spacing, their token) is read as is.
    let token = broker.register("bob");
    std::fs::write(
        &legacy_path,
        format!("{{\"instance_id\": \"bob\", \"session_token\": \"{token}\"}}"),
    )
    .unwrap();
    succeeded(run(&["send", "alice", "from", "the", "script"]), &["send"]);
    // alice's own session file was overwritten; take her name back to read her mail.
    let alice_token = broker.take_over("alice");
    let mail = broker.client().check(&alice_token).unwrap().messages;
    assert_eq!(mail.len(), 1);
    assert_eq!(
        (mail[0].from.as_str(), mail[0].message.content.as_str()),
        ("bob", "from the script")
    );
}

#[test]
fn two_session_files_are_two_identities() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (Identity::new(&dir, "alice"), Identity::new(&dir, "bob"));
    alice.ok(&broker, &["register", "alice"]);
    bob.ok(&broker, &["register", "bob"]);
    assert_ne!(alice.token(), bob.token());

    alice.ok(&broker, &["send", "bob", "ping from alice"]);
    bob.ok(&broker, &["send", "alice", "pong from bob"]);
    let bob_sees = bob.json(&broker, &["check"]);
    assert_eq!(bob_sees["messages"][0]["from"], "alice");
    assert_eq!(
        bob_sees["messages"][0]["message"]["content"],
        "ping from alice"
    );
    let alice_sees = alice.json(&broker, &["check"]);
    assert_eq!(alice_sees["messages"][0]["from"], "bob");
    assert_eq!(
        alice_sees["messages"][0]["message"]["content"],
        "pong from bob"
    );
    assert_eq!(alice_sees["messages"].as_array().unwrap().len(), 1);
}

#[test]
fn a_broker_refusal_exits_1() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (Identity::new(&dir, "alice"), Identity::new(&dir, "bob"));
    alice.ok(&broker, &["register", "alice"]);
    bob.ok(&broker, &["register", "bob"]);
    let before = std::fs::read(&alice.file).unwrap();

    let output = alice.run(&broker, &["rename", "bob"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_stderr_contains(&output, "already exists");
    assert_stderr_contains(&output, "name_taken");
    assert_stderr_contains(&output, "choose another name");
    assert!(output.stdout.is_empty());
    assert_eq!(
        std::fs::read(&alice.file).unwrap(),
        before,
        "a refused rename must leave the session file alone"
    );

    // Taking alice over elsewhere revokes the first file's session, and says so.
    let usurper = Identity::new(&dir, "alice-again");
    usurper.ok(&broker, &["register", "alice", "--takeover"]);
    let output = alice.run(&broker, &["check"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_stderr_contains(&output, "Invalid or missing session token");
    assert_stderr_contains(&output, "this session was replaced");
    assert_stderr_contains(&output, "claude-ipc register alice --takeover");
}

#[test]
fn usage_errors_exit_2() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let alice = Identity::new(&dir, "alice");

    for args in [
        &["send", "bob"][..],
        &["send"],
        &["register"],
        &["rename"],
        &["frobnicate"],
    ] {
        let output = alice.run(&broker, args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(!stderr(&output).is_empty(), "{args:?} says nothing");
    }

    // Not registered yet: every command that needs a session says how to get one (`list`
    // needs none: see cli_scripts).
    for args in [
        &["check"][..],
        &["send", "bob", "hi"],
        &["broadcast", "hi"],
        &["rename", "x"],
    ] {
        let output = alice.run(&broker, args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        let text = stderr(&output);
        assert!(text.contains("claude-ipc register"), "{args:?}: {text}");
        assert!(
            text.contains(alice.file.to_str().unwrap()),
            "{args:?}: {text}"
        );
    }

    // A file that is not a session is a usage error too, not a crash.
    std::fs::write(&alice.file, "garbage").unwrap();
    std::fs::set_permissions(&alice.file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = alice.run(&broker, &["check"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("claude-ipc register"));
}

#[test]
fn no_broker_exits_3_and_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("session");
    let closed = closed_port();
    for args in [&["ping"][..], &["register", "alice"]] {
        let output = cli(&closed, &file, args);
        assert_eq!(
            output.status.code(),
            Some(3),
            "{args:?}: {}",
            stderr(&output)
        );
        let text = stderr(&output);
        assert!(text.contains(&format!("no broker at {closed}")), "{text}");
        assert!(text.contains("start one with `claude-ipc serve`"), "{text}");
    }
    assert!(!file.exists(), "nothing is saved when no broker answered");

    // With a session file in place, the flag points elsewhere and still fails with 3.
    std::fs::write(
        &file,
        r#"{"instance_id": "alice", "session_token": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
    )
    .unwrap();
    // Mode 0600, as the Python scripts write it: a session file others can read is refused.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = cli("127.0.0.1:9", &file, &["check", "--addr", &closed]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(stderr(&output).contains(&format!("no broker at {closed}")));
}

#[test]
fn serve_help_lists_every_limit_flag() {
    let output = Command::new(binary())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = succeeded(output, &["serve", "--help"]);
    for flag in [
        "--rate-limit",
        "--queue-cap",
        "--session-idle-expiry",
        "--future-mail-retention",
        "--forward-duration",
        "--rename-cooldown",
        "--max-request-bytes",
        "--large-message-bytes",
        "--max-connections",
        "--idle-timeout",
        "--read-timeout",
        "--unauthenticated-idle-timeout",
        "--request-memory-budget",
        "--addr",
        "--data-dir",
        "--allow-remote",
        "--instance-retention",
        "--peer-rate-limit",
        "--peer-register-limit",
        "--register-limit",
        "--large-message-total-bytes",
        "--large-message-sender-bytes",
        "--auth-failure-limit",
        "--auth-failure-rows",
        "--reset-secret",
        "--name-live-window",
        "--no-static-token",
    ] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(flag)),
            "serve --help does not list {flag}:\n{help}"
        );
    }
}

#[test]
fn every_subcommand_help_has_examples() {
    let top = Command::new(binary()).arg("--help").output().unwrap();
    let text = String::from_utf8(top.stdout).unwrap();
    assert!(text.contains("Examples:"), "{text}");
    let subcommands: Vec<String> = text
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    for expected in ["serve", "register", "check", "status", "import-legacy"] {
        assert!(subcommands.iter().any(|s| s == expected), "{subcommands:?}");
    }
    // The load generator is its own crate (bench/), not part of the binary users install.
    assert!(!subcommands.iter().any(|s| s == "bench"), "{subcommands:?}");
    for subcommand in &subcommands {
        let output = Command::new(binary())
            .args([subcommand.as_str(), "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8(output.stdout).unwrap();
        // An example is a line that runs the subcommand; add one to its `after_help`.
        assert!(
            help.lines()
                .skip_while(|line| !line.starts_with("Usage:"))
                .skip(1)
                .any(|line| line.contains(&format!("claude-ipc {subcommand}"))),
            "`claude-ipc {subcommand} --help` shows no example of running it:\n{help}"
        );
    }
}

#[test]
fn check_shows_how_long_ago_each_message_arrived() {
    let broker = TestBroker::start_with_clock(|_| {}, claude_ipc::clock::Clock::system());
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (Identity::new(&dir, "alice"), Identity::new(&dir, "bob"));
    alice.ok(&broker, &["register", "alice"]);
    bob.ok(&broker, &["register", "bob"]);
    alice.ok(&broker, &["send", "bob", "fresh"]);
    let stdout = bob.ok(&broker, &["check"]);
    assert!(stdout.contains("(just now)"), "{stdout}");
    let listed = bob.ok(&broker, &["list"]);
    assert!(listed.contains("(just now)"), "{listed}");
}
