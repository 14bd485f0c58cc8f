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

// --- Waking events: `--event stop` / `session-start` with `--wait`, on the broker's `watch`.

/// Claude Code's documented `Stop` input, for the session `session_id`.
fn claude_stop_input(session_id: &str) -> String {
    json!({
        "session_id": session_id,
        "transcript_path": format!("/home/user/.claude/projects/demo/{session_id}.jsonl"),
        "cwd": "/home/user/demo",
        "permission_mode": "default",
        "hook_event_name": "Stop",
        "stop_hook_active": false,
        "last_assistant_message": "The tests pass.",
    })
    .to_string()
}

/// Claude Code's documented `SessionStart` input.
fn claude_session_start_input(session_id: &str) -> String {
    json!({
        "session_id": session_id,
        "transcript_path": format!("/home/user/.claude/projects/demo/{session_id}.jsonl"),
        "cwd": "/home/user/demo",
        "hook_event_name": "SessionStart",
        "source": "startup",
        "model": "claude-sonnet-4-6",
    })
    .to_string()
}

/// A waking hook as Claude Code runs one: the event's JSON on stdin (then closed), the
/// session file, the broker's address and its data directory (where `hook.log` goes).
pub(crate) fn spawn_hook(
    addr: &str,
    session_file: &Path,
    data_dir: &Path,
    args: &[&str],
    stdin: &str,
) -> std::process::Child {
    let mut command = hook_command(addr, session_file);
    command.args(args).env("IPC_DATA_DIR", data_dir);
    spawn_with_stdin(command, stdin)
}

/// Starts the hook with `stdin` written to it and closed, as a hook client does.
fn spawn_with_stdin(mut command: Command, stdin: &str) -> std::process::Child {
    use std::io::Write;
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run claude-ipc hook");
    // A hook that gives up before reading its input (no session file, say) may have exited
    // already: a broken pipe then is its choice, not a failure of the test.
    let written = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    if let Err(error) = written {
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::BrokenPipe,
            "writing the hook's stdin: {error}"
        );
    }
    child
}

/// Runs a waking hook to its end.
pub(crate) fn run_hook(
    addr: &str,
    session_file: &Path,
    data_dir: &Path,
    args: &[&str],
    stdin: &str,
) -> Output {
    spawn_hook(addr, session_file, data_dir, args, stdin)
        .wait_with_output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// Waits for a hook to end by itself within `bound`; `None` if it is still running then.
fn exited_within(child: &mut std::process::Child, bound: std::time::Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < bound {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

fn hook_log(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("hook.log")).unwrap_or_default()
}

/// Reads the session file's mail with `check` (which consumes it), to show what was waiting.
fn waiting_for(broker: &TestBroker, session_file: &Path) -> Vec<String> {
    let checked = cli(&broker.addr(), session_file, &["check", "--json"]);
    assert!(checked.status.success(), "{checked:?}");
    let reply: serde_json::Value = serde_json::from_slice(&checked.stdout).unwrap();
    contents(&reply)
}

#[test]
fn a_stop_hook_wakes_soon_after_a_send_and_the_mail_stays_waiting() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let session_file = dir.path().join("session");
    register(&broker, &session_file, "carol");
    let alice = broker.register("alice");
    let mut waiter = spawn_hook(
        &broker.addr(),
        &session_file,
        &broker.data_dir(),
        &["--event", "stop", "--wait", "60"],
        &claude_stop_input("9ecf22fa-edf8-4332-ae85-b6d5456eda64"),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "nothing to announce yet"
    );
    let sent = std::time::Instant::now();
    broker
        .client()
        .send(&alice, "carol", "are the tests green?", None, None)
        .unwrap();
    assert!(
        exited_within(&mut waiter, std::time::Duration::from_secs(10)),
        "woken well before its 60 s deadline"
    );
    println!("the Stop hook exited {:?} after the send", sent.elapsed());
    let output = waiter.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert_eq!(
        stderr(&output),
        "📬 1 new message from alice: use the check tool of claude-ipc to read it\n"
    );
    assert!(output.stdout.is_empty(), "{}", stdout(&output));
    // Announced, not consumed: the message is still there for the check tool.
    assert_eq!(
        waiting_for(&broker, &session_file),
        ["are the tests green?"]
    );
    assert!(hook_log(&broker.data_dir()).contains("told the model"));
}

#[test]
fn at_the_deadline_the_hook_exits_0_with_nothing() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let session_file = dir.path().join("session");
    register(&broker, &session_file, "carol");
    let started = std::time::Instant::now();
    let output = run_hook(
        &broker.addr(),
        &session_file,
        &broker.data_dir(),
        &["--event", "stop", "--wait", "2"],
        &claude_stop_input("s-deadline"),
    );
    let took = started.elapsed();
    println!("the hook with --wait 2 and no mail took {took:?}");
    assert_silent(&output);
    assert!(took >= std::time::Duration::from_secs(2), "{took:?}");
    assert!(took < std::time::Duration::from_secs(15), "{took:?}");
}

#[test]
fn a_session_is_told_of_a_message_once_and_another_session_is_told_too() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let session_file = dir.path().join("session");
    register(&broker, &session_file, "carol");
    let alice = broker.register("alice");
    let bob = broker.register("bob");
    let mut client = broker.client();
    client.send(&alice, "carol", "one", None, None).unwrap();
    client.send(&alice, "carol", "two", None, None).unwrap();
    let run = |session: &str, wait: &str| {
        run_hook(
            &broker.addr(),
            &session_file,
            &broker.data_dir(),
            &["--event", "stop", "--wait", wait],
            &claude_stop_input(session),
        )
    };

    let first = run("session-a", "0");
    assert_eq!(first.status.code(), Some(2), "{first:?}");
    assert_eq!(
        stderr(&first),
        "📬 2 new messages from alice: use the check tool of claude-ipc to read them\n"
    );
    // The same mail does not wake the same session again, however long it waits.
    assert_silent(&run("session-a", "1"));
    // Another session has not been told yet.
    let other = run("session-b", "0");
    assert_eq!(other.status.code(), Some(2), "{other:?}");
    assert!(stderr(&other).starts_with("📬 2 new messages from alice"));
    // New mail wakes the first session again, and it is told of the new message only.
    client.send(&bob, "carol", "three", None, None).unwrap();
    let again = run("session-a", "5");
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    assert_eq!(
        stderr(&again),
        "📬 1 new message from bob: use the check tool of claude-ipc to read it\n"
    );
    assert_eq!(waiting_for(&broker, &session_file), ["one", "two", "three"]);
}

#[test]
fn a_session_start_hook_announces_mail_already_waiting() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let session_file = dir.path().join("session");
    register(&broker, &session_file, "carol");
    let alice = broker.register("alice");
    broker
        .client()
        .send(&alice, "carol", "welcome back", None, None)
        .unwrap();
    let started = std::time::Instant::now();
    let output = run_hook(
        &broker.addr(),
        &session_file,
        &broker.data_dir(),
        &["--event", "session-start", "--wait", "60"],
        &claude_session_start_input("s-start"),
    );
    println!(
        "SessionStart with mail waiting took {:?}",
        started.elapsed()
    );
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert_eq!(
        stderr(&output),
        "📬 1 new message from alice: use the check tool of claude-ipc to read it\n"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn a_newer_waiter_for_a_session_replaces_the_older_one() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let session_file = dir.path().join("session");
    register(&broker, &session_file, "carol");
    let alice = broker.register("alice");
    let waiter = || {
        spawn_hook(
            &broker.addr(),
            &session_file,
            &broker.data_dir(),
            &["--event", "stop", "--wait", "60"],
            &claude_stop_input("one-session"),
        )
    };
    let mut older = waiter();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let mut newer = waiter();
    // Whichever reached the broker first is replaced by the other and ends, long before the
    // 60 s deadline; the other keeps waiting.
    let start = std::time::Instant::now();
    let (mut replaced, mut survivor) = loop {
        if older.try_wait().unwrap().is_some() {
            break (older, newer);
        }
        if newer.try_wait().unwrap().is_some() {
            break (newer, older);
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(15),
            "neither waiter was replaced"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    println!(
        "a waiter was replaced {:?} after the second started",
        start.elapsed()
    );
    let replaced_output = std::mem::replace(&mut replaced, waiter())
        .wait_with_output()
        .unwrap();
    assert_silent(&replaced_output);
    assert!(hook_log(&broker.data_dir()).contains("a newer hook for this session took over"));
    // The third waiter just started replaces the survivor in turn; then mail wakes the third.
    assert!(exited_within(
        &mut survivor,
        std::time::Duration::from_secs(15)
    ));
    assert_silent(&survivor.wait_with_output().unwrap());
    broker
        .client()
        .send(&alice, "carol", "hi", None, None)
        .unwrap();
    assert!(exited_within(
        &mut replaced,
        std::time::Duration::from_secs(15)
    ));
    let woken = replaced.wait_with_output().unwrap();
    assert_eq!(woken.status.code(), Some(2), "{woken:?}");
}

#[test]
fn every_failure_exits_0_silently_and_says_why_in_the_hook_log() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let session_file = dir.path().join("session");
    let data_dir = broker.data_dir();
    let stop = ["--event", "stop", "--wait", "1"];
    let run = |addr: &str, args: &[&str], stdin: &str| {
        run_hook(addr, &session_file, &data_dir, args, stdin)
    };
    let mut cases = vec![
        (
            "not registered",
            run(&broker.addr(), &stop, &claude_stop_input("s1")),
        ),
        (
            "not a hook event's JSON",
            run(&broker.addr(), &stop, "Stop\n"),
        ),
        (
            "session_id is empty",
            run(&broker.addr(), &stop, r#"{"session_id":""}"#),
        ),
        (
            "unknown --event",
            run(&broker.addr(), &["--event", "stopp"], "{}"),
        ),
        (
            "is not a whole number of seconds",
            run(
                &broker.addr(),
                &["--event", "stop", "--wait", "soon"],
                &claude_stop_input("s1"),
            ),
        ),
    ];
    register(&broker, &session_file, "carol");
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    cases.push((
        "no broker at",
        run(&closed, &stop, &claude_stop_input("s2")),
    ));
    broker.take_over("carol"); // revokes the file's session
    cases.push((
        "Invalid or missing session token",
        run(&broker.addr(), &stop, &claude_stop_input("s3")),
    ));
    let log = hook_log(&data_dir);
    for (why, output) in &cases {
        assert_silent(output);
        assert!(
            log.contains(why),
            "no line saying {why:?} in the log:\n{log}"
        );
    }
    assert!(log.contains("session s3:"), "{log}");
    assert!(
        log.lines().all(|line| line.ends_with(": nothing done")),
        "{log}"
    );
}

#[test]
fn a_hook_whose_stdin_never_closes_gives_up_silently() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let session_file = dir.path().join("session");
    register(&broker, &session_file, "carol");
    let mut child = hook_command(&broker.addr(), &session_file)
        .args(["--event", "stop", "--wait", "60"])
        .env("IPC_DATA_DIR", broker.data_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _open_stdin = child.stdin.take();
    assert!(exited_within(
        &mut child,
        std::time::Duration::from_secs(20)
    ));
    assert_silent(&child.wait_with_output().unwrap());
    assert!(hook_log(&broker.data_dir()).contains("stdin did not close"));
}

#[test]
fn a_waiting_hook_connects_again_when_the_broker_restarts() {
    // Over the Unix socket, whose path the restarted broker binds again.
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let socket = dir.path().join("ipc.sock");
    let serve_args = ["--socket", socket.to_str().unwrap()];
    let broker = BrokerProcess::spawn(&data_dir, &serve_args);
    let session_file = dir.path().join("session");
    let over_socket = [("IPC_SOCKET", socket.to_str().unwrap())];
    let registered = cli_with_env(NOWHERE, &session_file, &["register", "carol"], &over_socket);
    assert!(registered.status.success(), "{registered:?}");
    let mut command = hook_command(NOWHERE, &session_file);
    command
        .args(["--event", "stop", "--wait", "60"])
        .env("IPC_SOCKET", &socket)
        .env("IPC_DATA_DIR", &data_dir);
    let mut waiter = spawn_with_stdin(command, &claude_stop_input("restarted"));
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(broker.terminate().success());
    let broker = BrokerProcess::spawn(&data_dir, &serve_args);
    let mut client = broker.client();
    let alice = client.register("alice", None).unwrap().session_token;
    client
        .send(&alice, "carol", "back again", None, None)
        .unwrap();
    assert!(
        exited_within(&mut waiter, std::time::Duration::from_secs(30)),
        "the hook found the restarted broker"
    );
    let output = waiter.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(stderr(&output).starts_with("📬 1 new message from alice"));
}

#[test]
fn a_waiting_hook_started_just_before_its_broker_finds_it() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let socket = dir.path().join("ipc.sock");
    let session_file = dir.path().join("session");
    let serve_args = ["--socket", socket.to_str().unwrap()];
    // A session from an earlier run of the broker, as a project's session file holds.
    let earlier = BrokerProcess::spawn(&data_dir, &serve_args);
    let over_socket = [("IPC_SOCKET", socket.to_str().unwrap())];
    let registered = cli_with_env(NOWHERE, &session_file, &["register", "carol"], &over_socket);
    assert!(registered.status.success(), "{registered:?}");
    assert!(earlier.terminate().success());
    let mut command = hook_command(NOWHERE, &session_file);
    command
        .args(["--event", "session-start", "--wait", "60"])
        .env("IPC_SOCKET", &socket)
        .env("IPC_DATA_DIR", &data_dir);
    let mut waiter = spawn_with_stdin(command, &claude_session_start_input("starting"));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let broker = BrokerProcess::spawn(&data_dir, &serve_args);
    let mut client = broker.client();
    let alice = client.register("alice", None).unwrap().session_token;
    client.send(&alice, "carol", "hello", None, None).unwrap();
    assert!(exited_within(
        &mut waiter,
        std::time::Duration::from_secs(20)
    ));
    let output = waiter.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}

/// The `additionalContext` a `PostToolUse` run printed, or `None` when it printed nothing.
fn post_tool_use_context(output: &Output) -> Option<String> {
    assert!(output.status.success(), "{output:?}");
    if output.stdout.is_empty() {
        return None;
    }
    let reply: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(reply["hookSpecificOutput"]["hookEventName"], "PostToolUse");
    Some(
        reply["hookSpecificOutput"]["additionalContext"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

#[test]
fn post_tool_use_announces_each_message_once_per_session_and_counts_the_new() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let session_file = dir.path().join("session");
    register(&broker, &session_file, "carol");
    let (alice, bob) = (broker.register("alice"), broker.register("bob"));
    let mut client = broker.client();
    client.send(&alice, "carol", "one", None, None).unwrap();
    client.send(&bob, "carol", "two", None, None).unwrap();
    let args = ["--event", "post-tool-use"];
    let event = |session: &str| {
        json!({"session_id": session, "hook_event_name": "PostToolUse"}).to_string()
    };
    let run = |session: &str| {
        post_tool_use_context(&run_hook(
            &broker.addr(),
            &session_file,
            &broker.data_dir(),
            &args,
            &event(session),
        ))
    };
    assert_eq!(
        run("session-1").as_deref(),
        Some("📬 2 new messages since the last notice (from alice, bob): use the check tool")
    );
    // The same session's next tool calls: nothing new, nothing said.
    for _ in 0..3 {
        assert_eq!(run("session-1"), None);
    }
    client.send(&alice, "carol", "three", None, None).unwrap();
    assert_eq!(
        run("session-1").as_deref(),
        Some("📬 1 new message since the last notice (from alice; 3 waiting): use the check tool")
    );
    assert_eq!(run("session-1"), None);
    // Another session has been told nothing yet; nothing was consumed.
    assert_eq!(
        run("session-2").as_deref(),
        Some("📬 3 new messages since the last notice (from alice, bob): use the check tool")
    );
    assert_eq!(waiting_for(&broker, &session_file).len(), 3);
}

#[test]
fn a_misconfigured_post_tool_use_hook_is_silent_and_logs_why() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-session-file");
    let output = run_hook(
        &broker.addr(),
        &missing,
        &broker.data_dir(),
        &["--event", "post-tool-use"],
        &json!({"session_id": "session-1"}).to_string(),
    );
    assert_silent(&output);
    let log = hook_log(&broker.data_dir());
    assert!(log.contains("post-tool-use"), "{log}");
    assert!(log.contains("session-1"), "{log}");
    assert!(log.contains("nothing said"), "{log}");
    assert!(log.contains("no-session-file"), "{log}");
}
