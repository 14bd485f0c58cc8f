//! What scripts rely on, through the real binary: with `--json` every outcome is one JSON
//! document on stdout and the exit code is the documented one; what the user typed is checked
//! before anything is sent; durations carry a unit; content comes from the command line, a
//! file or standard input, whatever its size; empty messages are refused; and `list` works
//! before one registers.
use crate::common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::{json, Value};
use tempfile::TempDir;

/// The binary as a client of `addr`, with `stdin` written to its standard input.
fn cli_with_stdin(addr: &str, session: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(binary())
        .args(args)
        .env("IPC_ADDR", addr)
        .env("IPC_SESSION_FILE", session)
        .env_remove("IPC_SHARED_SECRET")
        .env_remove("IPC_SOCKET")
        .env_remove("IPC_DATA_DIR")
        .env("IPC_AUTOSTART", "0")
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run claude-ipc");
    // The child may refuse before reading it all; what it says is what the test looks at.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().expect("claude-ipc ends")
}

/// A registered alice with her own session file, saved by the CLI itself.
fn alice(broker: &TestBroker, dir: &TempDir) -> std::path::PathBuf {
    let session = dir.path().join("alice.session");
    let out = cli(&broker.addr(), &session, &["register", "alice"]);
    assert!(out.status.success(), "{out:?}");
    session
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Stdout as exactly one JSON document, also accepted by `python3 -m json.tool`.
fn one_json_document(out: &Output, what: &str) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: stdout is not one JSON document ({e}): {stdout:?}; stderr {}",
            stderr(out)
        )
    });
    let mut tool = Command::new("python3")
        .args(["-m", "json.tool"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    tool.stdin
        .take()
        .unwrap()
        .write_all(stdout.as_bytes())
        .unwrap();
    let parsed = tool.wait_with_output().unwrap();
    assert!(
        parsed.status.success(),
        "{what}: python3 -m json.tool refused {stdout:?}: {}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    value
}

/// Runs `args --json` and insists on `exit` and one error document with `code`.
fn json_failure(addr: &str, session: &Path, args: &[&str], exit: i32, code: &str) -> Value {
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let out = cli(addr, session, &with_json);
    assert_eq!(
        out.status.code(),
        Some(exit),
        "{args:?}: exit code; stderr {}",
        stderr(&out)
    );
    let document = one_json_document(&out, &format!("{args:?}"));
    assert_eq!(document["status"], "error", "{args:?}: {document}");
    assert_eq!(document["code"], code, "{args:?}: {document}");
    assert!(
        document["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{args:?}: {document}"
    );
    document
}

#[test]
fn with_json_every_verb_prints_one_json_document_when_it_fails() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let session = alice(&broker, &dir);
    let addr = broker.addr();
    let nobody = dir.path().join("nobody.session");
    // Usage errors, caught before anything is sent: exit code 2.
    for args in [
        &["register", "bad name"][..],
        &["send", "bad name", "hi"],
        &["send", "bob", "   "],
        &["send", "bob", "hi", "--data", "[1]"],
        &["send", "bob"],
        &["broadcast", ""],
        &["reply", "0", "hi"],
        &["thread", "x"],
        &["sent", "-4"],
        &["history", "--with", "a/b"],
        &["search", "deploy", "--from", "bad name"],
        &["rename", "bad name"],
    ] {
        json_failure(&addr, &session, args, 2, "usage");
    }
    let data_dir = dir.path().join("import-data");
    json_failure(
        &addr,
        &session,
        &[
            "import-legacy",
            "/nonexistent/messages.db",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
        2,
        "usage",
    );
    // Not registered yet: a usage error too.
    for args in [&["check"][..], &["watch"], &["sent"], &["thread", "1"]] {
        json_failure(&addr, &nobody, args, 2, "usage");
    }
    // The broker refused: exit code 1, the broker's own code.
    json_failure(
        &addr,
        &session,
        &["reply", "999", "hi"],
        1,
        "unknown_thread",
    );
    json_failure(&addr, &session, &["thread", "999"], 1, "unknown_thread");
    json_failure(&addr, &session, &["search", "\"open"], 1, "invalid_query");
    json_failure(&addr, &session, &["rename", "alice"], 1, "same_name");
    json_failure(
        &addr,
        &session,
        &["send", "bob", "hi", "--reply-to", "999"],
        1,
        "unknown_reply_to",
    );
    // No broker answers: exit code 3.
    let gone = free_addr();
    for args in [
        &["send", "bob", "hi"][..],
        &["broadcast", "hi"],
        &["reply", "1", "hi"],
        &["check"],
        &["list"],
        &["sent"],
        &["thread", "1"],
        &["history"],
        &["search", "x"],
        &["rename", "carol"],
        &["ping"],
    ] {
        json_failure(&gone, &session, args, 3, "unreachable");
    }
    let gone_without_session = json_failure(&gone, &nobody, &["list"], 3, "unreachable");
    assert!(
        gone_without_session["message"]
            .as_str()
            .unwrap()
            .contains(&gone),
        "{gone_without_session}"
    );
    // `status` with no broker: its report is the one document, and the exit code says so.
    let out = cli(&gone, &session, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    one_json_document(&out, "status with no broker");
}

#[test]
fn with_json_no_answer_in_time_is_one_document_with_exit_code_4() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let session = alice(&broker, &dir);
    let out = cli(
        &broker.addr(),
        &session,
        &["send", "bob", "ship it?", "--wait-reply", "1", "--json"],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let document = one_json_document(&out, "send --wait-reply");
    assert!(document["message_id"].as_i64().is_some(), "{document}");
    assert_eq!(document["answer"]["messages"], json!([]), "{document}");
}

#[test]
fn what_the_user_typed_is_checked_first_and_named_as_typed() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let session = alice(&broker, &dir);
    for (args, named) in [
        (&["send", "bad name", "hi"][..], "<TO>"),
        (&["register", "bad name"], "<NAME>"),
        (&["rename", "bad/name"], "<NEW_NAME>"),
        (&["reply", "0", "hi"], "<ID>"),
        (&["thread", "-1"], "<ID>"),
        (&["send", "bob", "hi", "--reply-to", "0"], "--reply-to"),
        (
            &["send", "bob", "hi", "--subject", "two\nlines"],
            "--subject",
        ),
        (&["history", "--with", "bad name"], "--with"),
    ] {
        let out = cli(&broker.addr(), &session, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let said = stderr(&out);
        assert!(said.contains(named), "{args:?} should name {named}: {said}");
        for wire in ["to_id", "instance_id", "new_id", "reply_to", "thread_id"] {
            assert!(!said.contains(wire), "{args:?} speaks of `{wire}`: {said}");
        }
    }
    assert_eq!(
        broker.count("SELECT COUNT(*) FROM messages"),
        0,
        "nothing was sent"
    );
}

#[test]
fn durations_without_a_unit_are_refused_saying_how_to_write_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    for flag in [
        "--session-idle-expiry",
        "--history-retention",
        "--rename-cooldown",
        "--idle-timeout",
    ] {
        let out = Command::new(binary())
            .args([
                "serve",
                "--data-dir",
                data,
                "--addr",
                &free_addr(),
                flag,
                "5",
            ])
            .env_remove("IPC_SHARED_SECRET")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} 5: {}", stderr(&out));
        let said = stderr(&out);
        assert!(said.contains(flag), "{said}");
        assert!(said.contains("5s, 5m, 5h or 5d"), "{said}");
    }
    assert!(!Path::new(data).join("ipc.db").exists(), "no broker ran");
    // With a unit it runs as before.
    let broker = BrokerProcess::spawn(
        &dir.path().join("data"),
        &["--session-idle-expiry", "5m", "--idle-timeout", "90s"],
    );
    ping_json(&mut broker.client());
}

/// 200 KiB of text: over the shell's limit for one argument, under the broker's request limit,
/// and over the large-message threshold, so it is stored in a file.
fn large_text() -> String {
    (0..4096)
        .map(|i| format!("line {i:05} of the build log, padded to fifty bytes.\n"))
        .collect::<String>()[..200 * 1024]
        .to_owned()
}

/// The content of the one message `token` receives, read whole from its large-message file.
fn received_large(broker: &TestBroker, token: &str) -> String {
    let reply = legacy_check(&broker.addr(), token);
    let messages = reply["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{reply}");
    let path = messages[0]["message"]["data"]["large_message_file"]
        .as_str()
        .unwrap_or_else(|| panic!("large content goes to a file: {reply}"));
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn large_content_goes_through_a_file_or_standard_input() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let session = alice(&broker, &dir);
    let bob = broker.register("bob");
    let text = large_text();
    let file = dir.path().join("log.txt");
    std::fs::write(&file, &text).unwrap();
    let file = file.to_str().unwrap();

    let out = cli(&broker.addr(), &session, &["send", "bob", "--file", file]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(received_large(&broker, &bob).contains(&text));

    let out = cli_with_stdin(
        &broker.addr(),
        &session,
        &["send", "bob", "-"],
        text.as_bytes(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(received_large(&broker, &bob).contains(&text));

    let out = cli_with_stdin(
        &broker.addr(),
        &session,
        &["broadcast", "-"],
        text.as_bytes(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(received_large(&broker, &bob).contains(&text));

    // A reply, from bob's side: its own session file, answering alice's last message.
    let bob_session = dir.path().join("bob.session");
    let out = cli(
        &broker.addr(),
        &bob_session,
        &["register", "bob", "--takeover"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let last = broker.count("SELECT MAX(id) FROM messages");
    let alice_token = std::fs::read_to_string(&session).unwrap();
    let alice_token: Value = serde_json::from_str(&alice_token).unwrap();
    let alice_token = alice_token["session_token"].as_str().unwrap();
    let out = cli(
        &broker.addr(),
        &bob_session,
        &["reply", &last.to_string(), "--file", file],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(received_large(&broker, alice_token).contains(&text));
    let out = cli_with_stdin(
        &broker.addr(),
        &bob_session,
        &["reply", &last.to_string(), "-"],
        b"short, from stdin",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        contents(&legacy_check(&broker.addr(), alice_token)),
        ["short, from stdin"],
        "`-` is standard input, not a literal dash"
    );
}

#[test]
fn content_comes_from_exactly_one_source_and_a_bad_file_says_why() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let session = alice(&broker, &dir);
    let file = dir.path().join("note.txt");
    std::fs::write(&file, "from the file").unwrap();
    let file = file.to_str().unwrap();
    let both = cli(
        &broker.addr(),
        &session,
        &["send", "bob", "words", "--file", file],
    );
    assert_eq!(both.status.code(), Some(2));
    assert!(stderr(&both).contains("--file"), "{}", stderr(&both));
    let neither = cli(&broker.addr(), &session, &["send", "bob"]);
    assert_eq!(neither.status.code(), Some(2));
    assert!(
        stderr(&neither).contains("<MESSAGE>"),
        "{}",
        stderr(&neither)
    );

    let missing = dir.path().join("missing.txt");
    let out = cli(
        &broker.addr(),
        &session,
        &["send", "bob", "--file", missing.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2));
    let said = stderr(&out);
    assert!(said.contains("missing.txt"), "{said}");
    assert!(said.contains("No such file"), "{said}");
    let out = cli(&broker.addr(), &session, &["send", "bob", "--file", "/"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("directory"), "{}", stderr(&out));
    let binary_file = dir.path().join("blob.bin");
    std::fs::write(&binary_file, [0xff, 0xfe, 0x00]).unwrap();
    let out = cli(
        &broker.addr(),
        &session,
        &["send", "bob", "--file", binary_file.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not UTF-8"), "{}", stderr(&out));
    assert_eq!(broker.count("SELECT COUNT(*) FROM messages"), 0);

    let out = cli(&broker.addr(), &session, &["send", "bob", "--file", file]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        broker.count("SELECT COUNT(*) FROM messages WHERE content = 'from the file'"),
        1
    );
}

#[test]
fn over_the_request_limit_the_error_says_the_limit_in_words() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let session = alice(&broker, &dir);
    let file = dir.path().join("huge.txt");
    std::fs::write(&file, "x".repeat(1_400_000)).unwrap();
    let out = cli(
        &broker.addr(),
        &session,
        &["send", "bob", "--file", file.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("the message is 1.3 MiB"), "{said}");
    assert!(said.contains("(1 MiB)"), "{said}");
    assert!(said.contains("send the file's path"), "{said}");
    let out = cli(
        &broker.addr(),
        &session,
        &["send", "bob", "--file", file.to_str().unwrap(), "--json"],
    );
    let document = one_json_document(&out, "too large");
    assert_eq!(document["code"], "request_too_large", "{document}");
    assert_eq!(broker.count("SELECT COUNT(*) FROM messages"), 0);
}

#[test]
fn empty_messages_are_refused_by_the_broker_for_every_client() {
    let broker = TestBroker::start_on_wall_clock();
    let (addr, alice, _bob) = broker.alice_and_bob();
    for content in ["", " ", "\n\t  \r\n"] {
        let reply = legacy_send(&addr, &alice, "bob", content);
        assert_eq!(reply["status"], "error", "{content:?}: {reply}");
        assert_eq!(reply["code"], "empty_message", "{content:?}: {reply}");
        assert!(
            reply["message"]
                .as_str()
                .unwrap()
                .contains("write something"),
            "{reply}"
        );
    }
    let reply = legacy(
        &addr,
        &json!({"action": "broadcast", "session_token": alice, "message": {"content": " "}}),
    );
    assert_eq!(reply["code"], "empty_message", "{reply}");
    // The CLI refuses before sending, as a usage error.
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("carol.session");
    assert!(cli(&addr, &session, &["register", "carol"])
        .status
        .success());
    for args in [
        &["send", "bob", ""][..],
        &["broadcast", "  "],
        &["reply", "1", " "],
    ] {
        let out = cli(&addr, &session, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("empty"), "{}", stderr(&out));
    }
    let out = cli_with_stdin(&addr, &session, &["send", "bob", "-"], b"\n \n");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("standard input"), "{}", stderr(&out));
    // The MCP server's send gets the broker's refusal.
    let mut mcp = McpProcess::start(&addr, &broker.data_dir(), &[], &[]);
    mcp.ok("register", json!({"instance_id": "dave"}));
    let refused = mcp.error("send", json!({"to_id": "bob", "content": "  "}));
    assert!(refused.contains("empty"), "{refused}");
    assert_eq!(broker.count("SELECT COUNT(*) FROM messages"), 0);
}

#[test]
fn list_works_without_a_session_file_and_changes_nothing() {
    let broker = TestBroker::start_on_wall_clock();
    let (addr, _alice, _bob) = broker.alice_and_bob();
    let dir = tempfile::tempdir().unwrap();
    let no_session = dir.path().join("never-written.session");
    let out = cli(&addr, &no_session, &["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("alice") && listed.contains("bob"),
        "{listed}"
    );
    let out = cli(&addr, &no_session, &["list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let document = one_json_document(&out, "list without a session");
    assert_eq!(instance_names(&document), ["alice", "bob"], "{document}");
    assert!(!no_session.exists(), "no session file was made");
    assert_eq!(
        broker.count("SELECT COUNT(*) FROM instances"),
        2,
        "nobody was registered"
    );
    // On the wire: the new optional mode; a legacy list without a session still needs one.
    let reply = legacy(&addr, &json!({"action": "list", "without_session": true}));
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(instance_names(&reply), ["alice", "bob"]);
    let legacy_reply = legacy(&addr, &json!({"action": "list"}));
    assert_eq!(legacy_reply["code"], "invalid_session", "{legacy_reply}");
}

#[test]
fn with_json_a_broker_that_never_answers_is_one_document_too() {
    // Something of this user's accepts connections and never replies.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("alice.session");
    let out = cli(&addr, &session, &["register", "alice", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let document = one_json_document(&out, "a silent broker");
    assert_eq!(document["status"], "error", "{document}");
    assert!(
        document["message"]
            .as_str()
            .unwrap()
            .contains("claude-ipc status"),
        "says what to do: {document}"
    );
}

#[test]
fn another_user_still_needs_a_session_to_list() {
    if claude_ipc::server::unix_socket::effective_uid() != 0 {
        eprintln!("skipped: switching to another uid needs root");
        return;
    }
    use std::os::unix::process::CommandExt;
    let broker = TestBroker::start_on_wall_clock();
    let (addr, _alice, _bob) = broker.alice_and_bob();
    let (host, port) = addr.rsplit_once(':').unwrap();
    // A raw client run as `nobody`, asking over loopback TCP without a session.
    let script = format!(
        "import socket; s = socket.create_connection(('{host}', {port})); \
         s.sendall(b'{{\"action\": \"list\", \"without_session\": true}}'); \
         print(s.recv(65536).decode())"
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["code"], "invalid_session", "{reply}");
    assert!(!reply.to_string().contains("alice"), "{reply}");
    // The broker's own user, the same request: the list.
    let own = legacy(&addr, &json!({"action": "list", "without_session": true}));
    assert_eq!(instance_names(&own), ["alice", "bob"], "{own}");
}

/// `claude-ipc list --json | head -1`: a reader that goes away before the output is written
/// ends the CLI quietly with 141 (as SIGPIPE would), not with a panic, for a success and a
/// failure alike; and mail that `check` could not print stays waiting.
#[test]
fn a_reader_that_goes_away_ends_the_cli_quietly_with_141() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let session = alice(&broker, &dir);
    let bob = broker.register("bob");
    broker
        .client()
        .send(&bob, "alice", "still here after a closed pipe", None, None)
        .unwrap();
    for args in [
        &["list", "--json"][..],
        &["check"][..],
        &["send", "bad name", "x", "--json"][..],
    ] {
        let mut child = Command::new(binary())
            .args(args)
            .env("IPC_ADDR", broker.addr())
            .env("IPC_SESSION_FILE", &session)
            .env_remove("IPC_SHARED_SECRET")
            .env_remove("IPC_SOCKET")
            .env("IPC_AUTOSTART", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before the CLI has even connected.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(141), "{args:?}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("panicked"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(
        broker.count(
            "SELECT count(*) FROM messages WHERE recipient = 'alice' AND delivered_at IS NULL"
        ),
        1,
        "the mail check could not print is not delivered"
    );
}
