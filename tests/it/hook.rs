//! `claude-ipc hook` (one line for Claude Code when mail waits) and the `count` action under
//! it: the count never consumes mail, is not rate limited and is not activity.
use crate::common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use serde_json::json;

/// Runs the hook as Claude Code would, with this session file and broker address.
fn hook(addr: &str, session_file: &Path) -> Output {
    hook_with(addr, session_file, &[])
}

fn hook_with(addr: &str, session_file: &Path, args: &[&str]) -> Output {
    hook_command(addr, session_file)
        .args(args)
        .output()
        .expect("run claude-ipc hook")
}

/// The hook with `IPC_SOCKET` set and `IPC_ADDR` at a port nobody listens on.
fn hook_over_socket(socket: &Path, session_file: &Path) -> Output {
    hook_command(NOWHERE, session_file)
        .env("IPC_SOCKET", socket)
        .output()
        .expect("run claude-ipc hook")
}

fn hook_command(addr: &str, session_file: &Path) -> Command {
    let mut command = Command::new(binary());
    command
        .arg("hook")
        .env("IPC_ADDR", addr)
        .env("IPC_SESSION_FILE", session_file)
        .env_remove("IPC_SOCKET")
        .env_remove("RUST_LOG");
    command
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Registers `name` with the CLI, which writes the session file the hook reads.
fn register(broker: &TestBroker, session_file: &Path, name: &str) {
    let output = cli(&broker.addr(), session_file, &["register", name]);
    assert!(output.status.success(), "{output:?}");
}

/// Asserts the hook printed nothing at all and exited 0.
fn assert_silent(output: &Output) {
    assert!(output.status.success(), "{output:?}");
    assert!(output.stdout.is_empty(), "{}", stdout(output));
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_hook_names_the_count_and_the_senders_and_leaves_the_mail_waiting() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let session_file = dir.path().join("session");
    register(&broker, &session_file, "carol");
    let alice = broker.register("alice");
    let bob = broker.register("bob");
    let mut client = broker.client();
    client.send(&alice, "carol", "one", None, None).unwrap();
    client.send(&bob, "carol", "two", None, None).unwrap();
    client.send(&alice, "carol", "three", None, None).unwrap();

    let output = hook(&broker.addr(), &session_file);
    assert!(output.status.success());
    assert_eq!(
        stdout(&output),
        "📬 3 new messages (from alice, bob): use the check tool\n"
    );
    let as_json = hook_with(&broker.addr(), &session_file, &["--event", "post-tool-use"]);
    let as_json: serde_json::Value = serde_json::from_slice(&as_json.stdout).unwrap();
    assert_eq!(
        as_json["hookSpecificOutput"]["hookEventName"],
        "PostToolUse"
    );
    assert_eq!(
        format!(
            "{}\n",
            as_json["hookSpecificOutput"]["additionalContext"]
                .as_str()
                .unwrap()
        ),
        stdout(&output)
    );
    // Run again: still waiting, because the hook only counts.
    assert_eq!(
        stdout(&hook(&broker.addr(), &session_file)),
        stdout(&output)
    );
    let checked = cli(&broker.addr(), &session_file, &["check", "--json"]);
    let reply: serde_json::Value = serde_json::from_slice(&checked.stdout).unwrap();
    assert_eq!(contents(&reply), ["one", "two", "three"]);
    assert_silent(&hook(&broker.addr(), &session_file));
}

#[test]
fn the_hook_is_silent_without_a_session_without_mail_and_without_a_broker() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let session_file = dir.path().join("session");
    assert_silent(&hook(&broker.addr(), &session_file));
    register(&broker, &session_file, "carol");
    assert_silent(&hook(&broker.addr(), &session_file));
    let alice = broker.register("alice");
    broker
        .client()
        .send(&alice, "carol", "hi", None, None)
        .unwrap();
    assert!(!stdout(&hook(&broker.addr(), &session_file)).is_empty());
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    assert_silent(&hook(&closed, &session_file));
    std::fs::write(&session_file, "not json").unwrap();
    assert_silent(&hook(&broker.addr(), &session_file));
}

#[test]
fn the_hook_uses_ipc_socket_and_is_silent_when_nothing_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ipc.sock");
    let broker = BrokerProcess::spawn(
        &dir.path().join("data"),
        &["--socket", socket.to_str().unwrap()],
    );
    let session_file = dir.path().join("session");
    let over_socket = [("IPC_SOCKET", socket.to_str().unwrap())];
    let registered = cli_with_env(NOWHERE, &session_file, &["register", "carol"], &over_socket);
    assert!(registered.status.success(), "{registered:?}");
    let mut client = broker.client();
    let alice = client.register("alice", None).unwrap().session_token;
    client.send(&alice, "carol", "hi", None, None).unwrap();

    assert_eq!(
        stdout(&hook_over_socket(&socket, &session_file)),
        "📬 1 new message (from alice): use the check tool\n"
    );
    assert_silent(&hook_over_socket(
        &dir.path().join("missing.sock"),
        &session_file,
    ));
    // The socket wins over the address: a live TCP broker is not asked when IPC_SOCKET is set.
    let tcp = hook_command(&broker.addr, &session_file)
        .env("IPC_SOCKET", dir.path().join("missing.sock"))
        .output()
        .unwrap();
    assert_silent(&tcp);
    // An empty IPC_SOCKET counts as unset.
    let empty = hook_command(&broker.addr, &session_file)
        .env("IPC_SOCKET", "")
        .output()
        .unwrap();
    assert!(!stdout(&empty).is_empty(), "{empty:?}");
    broker.kill_9();
    assert!(socket.exists(), "kill -9 leaves the socket file behind");
    assert_silent(&hook_over_socket(&socket, &session_file));
}

#[test]
fn the_hook_is_silent_when_the_session_is_no_longer_valid() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let session_file = dir.path().join("session");
    register(&broker, &session_file, "carol");
    let alice = broker.register("alice");
    broker
        .client()
        .send(&alice, "carol", "hi", None, None)
        .unwrap();
    broker.take_over("carol"); // revokes the file's session
    assert_silent(&hook(&broker.addr(), &session_file));
}

#[test]
fn the_hook_reads_the_session_an_mcp_server_wrote() {
    let broker = TestBroker::start_with_clock(|_| {}, claude_ipc::clock::Clock::system());
    let dir = tempfile::tempdir().unwrap();
    let session_file = dir.path().join("session");
    let mut mcp = McpProcess::start(
        &broker.addr(),
        &broker.data_dir(),
        &[("IPC_SESSION_FILE", session_file.to_str().unwrap())],
        &[],
    );
    mcp.ok("register", json!({"instance_id": "carol"}));
    let bob = broker.register("bob");
    broker
        .client()
        .send(&bob, "carol", "ping", None, None)
        .unwrap();
    assert_eq!(
        stdout(&hook(&broker.addr(), &session_file)),
        "📬 1 new message (from bob): use the check tool\n"
    );
    assert!(mcp.ok("check", json!({})).contains("ping"));
}

#[test]
fn count_is_not_rate_limited_and_is_not_activity() {
    let broker = TestBroker::start_with(|config| config.limits.rate_limit = 2);
    let carol = broker.register("carol");
    let alice = broker.register("alice");
    let mut client = broker.client();
    client.send(&alice, "carol", "hi", None, None).unwrap();
    let seen_before = last_seen(&broker, "carol");
    broker.clock.advance(chrono::Duration::minutes(2));
    for _ in 0..10 {
        let waiting = client.count(&carol).unwrap();
        assert_eq!(waiting.count, 1);
        assert_eq!(waiting.senders, ["alice"]);
    }
    assert_eq!(last_seen(&broker, "carol"), seen_before);
    // The rate limit still has room for carol's real requests.
    assert_eq!(client.check(&carol).unwrap().messages.len(), 1);
    assert_eq!(client.count(&carol).unwrap().count, 0);
    let refused = client.count("not-a-token").unwrap_err().to_string();
    assert!(refused.contains("invalid_session"), "{refused}");
}

#[test]
fn count_names_at_most_ten_senders_in_order_of_their_oldest_mail() {
    let broker = TestBroker::start();
    let carol = broker.register("carol");
    let mut client = broker.client();
    let senders: Vec<String> = (0..12).rev().map(|i| format!("s{i:02}")).collect();
    for sender in &senders {
        let token = broker.register(sender);
        client.send(&token, "carol", "x", None, None).unwrap();
    }
    let first = broker.take_over("s11");
    client.send(&first, "carol", "again", None, None).unwrap();
    let waiting = client.count(&carol).unwrap();
    assert_eq!(waiting.count, 13);
    assert_eq!(waiting.senders, senders[..10]);
}

fn last_seen(broker: &TestBroker, name: &str) -> String {
    broker
        .sql()
        .query_row(
            "SELECT last_seen_at FROM instances WHERE name = ?1",
            [name],
            |row| row.get(0),
        )
        .unwrap()
}
