//! `claude-ipc mcp` driven as an MCP client drives it: the real binary, JSON-RPC over its stdin
//! and stdout. Tool names and argument names, messaging between servers, broker election and
//! takeover after SIGKILL, session renewal, and that the session token never reaches stdout.
use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use claude_ipc::client::Client;
use claude_ipc::clock::Clock;
use common::*;
use serde_json::{json, Value};

/// A broker in this process on the real clock (the MCP server stamps sends with real time).
fn real_clock_broker() -> TestBroker {
    TestBroker::start_with_clock(|_| {}, Clock::system())
}

/// An MCP server pointed at `broker`, which answers, so it never hosts one itself.
fn mcp_for(broker: &TestBroker, env: &[(&str, &str)], args: &[&str]) -> McpProcess {
    McpProcess::start(&broker.addr(), &broker.data_dir(), env, args)
}

/// Every message waiting for `token`, read with the typed client.
fn mail(broker: &TestBroker, token: &str) -> Vec<claude_ipc::client::Received> {
    broker.client().check(token).expect("check").messages
}

#[test]
fn tools_list_has_exactly_the_named_tools_and_arguments() {
    let broker = real_clock_broker();
    let mut mcp = mcp_for(&broker, &[], &[]);
    let reply = mcp.request("tools/list", json!({}));
    let tools = reply["result"]["tools"].as_array().expect("tools");
    let mut found = BTreeMap::new();
    for tool in tools {
        let schema = &tool["inputSchema"];
        let mut arguments: Vec<String> = schema["properties"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        arguments.sort();
        let mut required: Vec<String> = schema["required"]
            .as_array()
            .map(|r| r.iter().map(|n| n.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        required.sort();
        let description = tool["description"].as_str().unwrap_or_default();
        assert!(
            description.starts_with("Use "),
            "a one-sentence when-to-use: {description}"
        );
        found.insert(
            tool["name"].as_str().unwrap().to_owned(),
            (arguments, required),
        );
    }
    let expect = |args: &[&str], required: &[&str]| {
        (
            args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            required.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    };
    let wanted = BTreeMap::from([
        (
            "register".to_owned(),
            expect(&["instance_id", "takeover"], &["instance_id"]),
        ),
        (
            "send".to_owned(),
            expect(
                &[
                    "content",
                    "data",
                    "reply_to",
                    "subject",
                    "to_id",
                    "wait_for_reply_seconds",
                ],
                &["content", "to_id"],
            ),
        ),
        (
            "reply".to_owned(),
            expect(&["content", "msg_id", "subject"], &["content", "msg_id"]),
        ),
        (
            "thread".to_owned(),
            expect(&["cursor", "full", "msg_id", "thread_id"], &[]),
        ),
        (
            "broadcast".to_owned(),
            expect(&["content", "data"], &["content"]),
        ),
        ("check".to_owned(), expect(&[], &[])),
        ("ack".to_owned(), expect(&["ids"], &["ids"])),
        ("list_instances".to_owned(), expect(&[], &[])),
        ("rename".to_owned(), expect(&["new_id"], &["new_id"])),
        (
            "share_file".to_owned(),
            expect(
                &["description", "filepath", "to_id"],
                &["filepath", "to_id"],
            ),
        ),
        (
            "share_command".to_owned(),
            expect(&["command", "description", "to_id"], &["command", "to_id"]),
        ),
        (
            "wait_for_messages".to_owned(),
            expect(&["timeout_seconds"], &[]),
        ),
        ("sent".to_owned(), expect(&["ids", "limit"], &[])),
        (
            "history".to_owned(),
            expect(&["cursor", "full", "limit", "with"], &[]),
        ),
        (
            "search".to_owned(),
            expect(
                &[
                    "cursor",
                    "from",
                    "limit",
                    "query",
                    "since",
                    "thread_id",
                    "to",
                ],
                &["query"],
            ),
        ),
    ]);
    assert_eq!(found, wanted);
}

#[test]
fn two_servers_message_each_other_and_the_survivor_takes_over_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = free_addr();
    let mut alice = McpProcess::start(&addr, &data, &[], &[]);
    let mut bob = McpProcess::start(&addr, &data, &[], &[]);
    assert!(alice
        .ok("register", json!({"instance_id": "alice"}))
        .contains("Registered as alice"));
    assert_eq!(lock_holder(&data), Some(alice.pid()), "alice hosts");
    assert!(alice.log().contains(&format!(
        "this process (pid {}) now hosts the broker",
        alice.pid()
    )));
    bob.ok("register", json!({"instance_id": "bob"}));

    let said = alice.ok(
        "send",
        json!({"to_id": "bob", "content": "the API changed", "data": {"file": "src/api.rs"}}),
    );
    assert!(said.ends_with("; bob is online."), "{said}");
    let read = bob.ok("check", json!({}));
    assert!(read.contains("From alice"), "{read}");
    assert!(read.contains("the API changed"), "{read}");
    assert!(read.contains(r#"data: {"file":"src/api.rs"}"#), "{read}");
    assert!(read.contains("just now"), "relative time: {read}");
    assert!(
        read.contains(&format!("({}", chrono::Utc::now().format("%Y-%m-%dT"))),
        "absolute time: {read}"
    );
    assert_eq!(bob.ok("check", json!({})), "No new messages.");

    bob.ok("send", json!({"to_id": "alice", "content": "thanks"}));
    assert!(alice.ok("check", json!({})).contains("thanks"));

    alice.kill_9();
    let sent = bob.ok(
        "send",
        json!({"to_id": "alice", "content": "while you were gone"}),
    );
    assert!(sent.contains("Message sent"), "{sent}");
    assert_eq!(lock_holder(&data), Some(bob.pid()), "bob took over");
    assert!(bob.ok("list_instances", json!({})).contains("bob (you)"));

    let mut carol = McpProcess::start(&addr, &data, &[], &[]);
    // alice's session was in use a moment ago: her name is taken over on purpose.
    let registered = carol.ok(
        "register",
        json!({"instance_id": "alice", "takeover": true}),
    );
    assert!(registered.contains("1 message waiting"), "{registered}");
    let read = carol.ok("check", json!({}));
    assert!(read.contains("From bob"), "{read}");
    assert!(read.contains("while you were gone"), "{read}");
}

#[test]
fn servers_started_at_the_same_instant_elect_exactly_one_broker() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = free_addr();
    let mut servers: Vec<McpProcess> = (0..3)
        .map(|_| McpProcess::start(&addr, &data, &[], &[]))
        .collect();
    // Every one needs the broker at once; none answers yet.
    let calls: Vec<u64> = servers
        .iter_mut()
        .enumerate()
        .map(|(i, mcp)| mcp.start_call("register", json!({"instance_id": format!("peer{i}")})))
        .collect();
    for (mcp, id) in servers.iter_mut().zip(calls) {
        let outcome = mcp.finish_call(id);
        assert!(!outcome.is_error, "{}", outcome.text);
    }
    let hosts: Vec<u32> = servers
        .iter()
        .filter(|mcp| mcp.log().contains("now hosts the broker"))
        .map(McpProcess::pid)
        .collect();
    assert_eq!(hosts.len(), 1, "exactly one host: {hosts:?}");
    assert_eq!(lock_holder(&data), Some(hosts[0]));
    let db = rusqlite::Connection::open_with_flags(
        data.join("ipc.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let running: i64 = db
        .query_row(
            "SELECT count(*) FROM broker_runs WHERE stopped_at IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(running, 1);
    let listed = servers[0].ok("list_instances", json!({}));
    for i in 0..3 {
        assert!(listed.contains(&format!("peer{i}")), "{listed}");
    }
}

#[test]
fn a_revoked_session_is_renewed_once_and_the_call_goes_through() {
    let broker = real_clock_broker();
    let mut mcp = mcp_for(&broker, &[], &[]);
    mcp.ok("register", json!({"instance_id": "alice"}));
    let bob = broker.register("bob");
    // An operator revokes every session (docs/OPERATIONS.md); the MCP server's is gone. (A
    // session replaced by another registration is not renewed: tests/it/name_claims.rs.)
    rusqlite::Connection::open(broker.db_path())
        .unwrap()
        .execute(
            "UPDATE sessions SET revoked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
             WHERE revoked_at IS NULL AND instance_name = 'alice'",
            [],
        )
        .unwrap();
    mcp.ok("send", json!({"to_id": "bob", "content": "still me"}));
    let got = mail(&broker, &bob);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].from, "alice");
    assert!(
        mcp.log().contains("registering the same name again"),
        "{}",
        mcp.log()
    );
}

/// `claude-ipc serve` on a fixed address as a child process, killed when dropped.
struct Served(std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve_at(addr: &str, data: &Path) -> Served {
    let child = Command::new(binary())
        .args(["serve", "--addr", addr, "--data-dir"])
        .arg(data)
        .env_remove("IPC_SHARED_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let mut served = Served(child);
    wait_until("the broker answers", || {
        Client::connect(addr, TIMEOUT).is_ok()
    });
    let exited = served.0.try_wait().unwrap();
    assert!(
        exited.is_none(),
        "serve exited ({exited:?}): {addr} was taken"
    );
    served
}

/// SIGTERM, and wait for the clean exit.
fn stop(mut served: Served) {
    Command::new("kill")
        .args(["-TERM", &served.0.id().to_string()])
        .status()
        .unwrap();
    served.0.wait().unwrap();
}

#[test]
fn a_reset_data_directory_is_survived_by_registering_the_same_name_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = free_addr();
    let broker = serve_at(&addr, &data);
    let mut mcp = McpProcess::start(&addr, &data, &[], &[]);
    mcp.ok("register", json!({"instance_id": "alice"}));
    stop(broker);
    std::fs::remove_dir_all(&data).unwrap();
    let _broker = serve_at(&addr, &data);
    assert_eq!(mcp.ok("check", json!({})), "No new messages.");
    let listed = mcp.ok("list_instances", json!({}));
    assert!(listed.contains("alice (you)"), "{listed}");
}

#[test]
fn a_broker_failure_is_a_tool_error_never_no_new_messages() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let served = dir.path().join("served");
    let broker = serve_at(&addr, &served);
    let mut mcp = McpProcess::start(&addr, &served, &[], &[]);
    let text = mcp.error("check", json!({}));
    assert!(text.contains("register"), "says what to do: {text}");
    mcp.ok("register", json!({"instance_id": "alice"}));
    stop(broker);
    // Now the broker is gone and this server cannot host one: its data directory is a file.
    std::fs::rename(&served, dir.path().join("moved")).unwrap();
    std::fs::write(&served, b"").unwrap();
    let text = mcp.error("check", json!({}));
    assert!(!text.contains("No new messages"), "{text}");
    assert!(
        text.contains(&format!("No broker answers at {addr}")),
        "{text}"
    );
    assert!(text.contains("claude-ipc serve"), "{text}");
}

#[test]
fn broker_refusals_are_tool_errors_with_the_cause_and_what_to_do() {
    let broker = real_clock_broker();
    let mut mcp = mcp_for(&broker, &[], &[]);
    let text = mcp.error("register", json!({"instance_id": "not a name"}));
    assert!(text.contains("invalid_name"), "{text}");
    assert!(text.contains("1-32 letters"), "{text}");
    mcp.ok("register", json!({"instance_id": "alice"}));
    let text = mcp.error(
        "send",
        json!({"to_id": "bob", "content": "x", "data": [1, 2]}),
    );
    assert!(text.contains("`data` must be a JSON object"), "{text}");
}

#[test]
fn the_session_token_never_appears_on_stdout_and_stdout_is_only_json_rpc() {
    let broker = real_clock_broker();
    let dir = tempfile::tempdir().unwrap();
    let session_file = dir.path().join("session.json");
    let session_env = session_file.to_str().unwrap();
    let mut mcp = mcp_for(
        &broker,
        &[("IPC_SESSION_FILE", session_env)],
        &["--allow-share-command"],
    );
    let bob = broker.register("bob");
    mcp.ok("register", json!({"instance_id": "alice"}));
    let file: Value = serde_json::from_slice(&std::fs::read(&session_file).unwrap()).unwrap();
    assert_eq!(file["instance_id"], "alice");
    let token = file["session_token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 43);
    // The CLI, with that file, is the same identity.
    let output = cli(
        &broker.addr(),
        &session_file,
        &["send", "bob", "from", "the", "CLI"],
    );
    assert!(output.status.success());
    assert_eq!(mail(&broker, &bob)[0].from, "alice");

    let shared = dir.path().join("notes.txt");
    std::fs::write(&shared, "notes").unwrap();
    for (tool, arguments) in [
        ("send", json!({"to_id": "bob", "content": "hi"})),
        ("broadcast", json!({"content": "all"})),
        ("check", json!({})),
        ("list_instances", json!({})),
        ("share_file", json!({"to_id": "bob", "filepath": shared})),
        ("share_command", json!({"to_id": "bob", "command": "env"})),
        ("wait_for_messages", json!({"timeout_seconds": 0})),
        ("sent", json!({})),
        ("history", json!({"with": "bob"})),
        ("search", json!({"query": "CLI"})),
        ("rename", json!({"new_id": "alicia"})),
    ] {
        mcp.ok(tool, arguments);
    }
    mcp.error("rename", json!({"new_id": "x y"}));
    let stdout = mcp.raw_stdout();
    let text = String::from_utf8(stdout).expect("stdout is UTF-8");
    assert!(!text.contains(&token), "the token leaked to stdout");
    for line in text.lines() {
        let message: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON-RPC ({e}): {line}"));
        assert_eq!(message["jsonrpc"], "2.0", "{line}");
    }
    // The rename reached the session file too.
    let file: Value = serde_json::from_slice(&std::fs::read(&session_file).unwrap()).unwrap();
    assert_eq!(file["instance_id"], "alicia");
}

#[test]
fn broadcast_rename_list_and_wait_for_messages_work_as_the_session() {
    let broker = real_clock_broker();
    let mut mcp = mcp_for(&broker, &[], &[]);
    let bob = broker.register("bob");
    let carol = broker.register("carol");
    mcp.ok("register", json!({"instance_id": "alice"}));
    let said = mcp.ok(
        "broadcast",
        json!({"content": "standup", "data": {"room": 4}}),
    );
    assert!(said.contains("Broadcast to 2 instances"), "{said}");
    for token in [&bob, &carol] {
        let got = mail(&broker, token);
        assert_eq!(got[0].from, "alice");
        assert!(got[0].nonce.is_some(), "every send carries a nonce");
        assert!(got[0].sender_timestamp.is_some(), "and a timestamp");
        assert_eq!(got[0].message.content, "standup");
        assert_eq!(got[0].message.data.as_ref().unwrap()["room"], 4);
    }
    let said = mcp.ok("rename", json!({"new_id": "alicia"}));
    assert!(said.contains("Renamed alice to alicia"), "{said}");
    let listed = mcp.ok("list_instances", json!({}));
    assert!(listed.contains("alicia (you)"), "{listed}");
    assert!(listed.contains("bob: last seen"), "{listed}");
    assert!(listed.contains(", online\n"), "presence: {listed}");

    let waited = mcp.ok("wait_for_messages", json!({"timeout_seconds": 0.3}));
    assert!(
        waited.starts_with("No new messages after waiting"),
        "{waited}"
    );
    let waiting = mcp.start_call("wait_for_messages", json!({"timeout_seconds": 20}));
    broker
        .client()
        .send(&bob, "alicia", "wake up", None, None)
        .unwrap();
    let outcome = mcp.finish_call(waiting);
    assert!(!outcome.is_error, "{}", outcome.text);
    assert_eq!(
        outcome.text,
        "1 new message from bob — call check to read it."
    );
    // Waiting consumes nothing: the mail is left for check, which shows and acknowledges it.
    let unread =
        "SELECT count(*) FROM messages WHERE recipient = 'alicia' AND delivered_at IS NULL";
    assert_eq!(broker.count(unread), 1);
    assert!(mcp.ok("check", json!({})).contains("wake up"));
    assert_eq!(broker.count(unread), 0);
    assert_eq!(mcp.ok("check", json!({})), "No new messages.");
}

#[test]
fn share_command_runs_without_a_shell_under_a_timeout_and_an_output_cap() {
    let broker = real_clock_broker();
    let args = [
        "--command-timeout",
        "1s",
        "--command-output-cap",
        "100",
        "--allow-share-command",
    ];
    let mut mcp = mcp_for(&broker, &[], &args);
    let bob = broker.register("bob");
    mcp.ok("register", json!({"instance_id": "alice"}));

    let said = mcp.ok(
        "share_command",
        json!({"to_id": "bob", "command": "echo $HOME ; 'two words'", "description": "literal"}),
    );
    assert!(said.contains("exited with 0"), "{said}");
    let got = &mail(&broker, &bob)[0];
    assert!(
        got.message.content.starts_with("literal\n"),
        "{}",
        got.message.content
    );
    assert!(
        got.message.content.contains("$HOME ; two words\n"),
        "{}",
        got.message.content
    );
    let data = got.message.data.as_ref().unwrap();
    assert_eq!(data["exit_code"], 0);
    assert_eq!(data["argv"], json!(["echo", "$HOME", ";", "two words"]));

    let said = mcp.ok(
        "share_command",
        json!({"to_id": "bob", "command": "sleep 20"}),
    );
    assert!(said.contains("killed after 1 s"), "{said}");
    let got = &mail(&broker, &bob)[0];
    assert_eq!(got.message.data.as_ref().unwrap()["timed_out"], true);

    mcp.ok(
        "share_command",
        json!({"to_id": "bob", "command": "seq 1 1000"}),
    );
    let got = &mail(&broker, &bob)[0];
    let data = got.message.data.as_ref().unwrap();
    assert_eq!(data["truncated"], true);
    assert!(
        !got.message.content.contains("\n999\n"),
        "{}",
        got.message.content
    );

    mcp.ok(
        "share_command",
        json!({"to_id": "bob", "command": "ls /no/such/path"}),
    );
    let got = &mail(&broker, &bob)[0];
    assert_ne!(got.message.data.as_ref().unwrap()["exit_code"], 0);
    assert!(
        got.message.content.contains("--- stderr ---"),
        "{}",
        got.message.content
    );

    let text = mcp.error(
        "share_command",
        json!({"to_id": "bob", "command": "no-such-program-x"}),
    );
    assert!(text.contains("nothing was sent"), "{text}");
    assert!(mail(&broker, &bob).is_empty());
}

#[test]
fn share_file_sends_the_text_and_large_files_arrive_as_a_saved_file() {
    let broker = real_clock_broker();
    let mut mcp = mcp_for(&broker, &[], &[]);
    let bob = broker.register("bob");
    mcp.ok("register", json!({"instance_id": "alice"}));
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.txt");
    std::fs::write(&small, "line one\nline two\n").unwrap();
    mcp.ok(
        "share_file",
        json!({"to_id": "bob", "filepath": small, "description": "the notes"}),
    );
    let got = &mail(&broker, &bob)[0];
    assert!(
        got.message.content.contains("the notes\n"),
        "{}",
        got.message.content
    );
    assert!(got.message.content.ends_with("line one\nline two\n"));

    let large = dir.path().join("large.txt");
    let text = "0123456789abcdef\n".repeat(2000);
    std::fs::write(&large, &text).unwrap();
    mcp.ok("share_file", json!({"to_id": "bob", "filepath": large}));
    let got = &mail(&broker, &bob)[0];
    let saved = got.message.data.as_ref().unwrap()["large_message_file"]
        .as_str()
        .expect("large content is saved to a file");
    assert!(std::fs::read_to_string(saved).unwrap().contains(&text));

    let text = mcp.error(
        "share_file",
        json!({"to_id": "bob", "filepath": dir.path().join("missing.txt")}),
    );
    assert!(text.contains("Cannot read"), "{text}");
}

#[test]
fn a_long_poll_outlives_the_host_being_killed_and_still_gets_the_mail() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = free_addr();
    let mut host = McpProcess::start(&addr, &data, &[], &[]);
    let mut bob = McpProcess::start(&addr, &data, &[], &[]);
    host.ok("register", json!({"instance_id": "alice"}));
    bob.ok("register", json!({"instance_id": "bob"}));
    assert_eq!(lock_holder(&data), Some(host.pid()));
    let waiting = bob.start_call("wait_for_messages", json!({"timeout_seconds": 20}));
    // Lets the long poll reach the host's broker, so the kill cuts it off mid-wait. (Were it
    // slower, the wait would start on the next broker: the outcome must be the same.)
    std::thread::sleep(std::time::Duration::from_millis(300));
    host.kill_9();
    let mut carol = McpProcess::start(&addr, &data, &[], &[]);
    carol.ok("register", json!({"instance_id": "carol"}));
    carol.ok(
        "send",
        json!({"to_id": "bob", "content": "after the crash"}),
    );
    let outcome = bob.finish_call(waiting);
    assert!(!outcome.is_error, "{}\n{}", outcome.text, bob.log());
    assert!(
        outcome.text.contains("1 new message from carol"),
        "{}",
        outcome.text
    );
    let checked = bob.ok("check", json!({}));
    assert!(checked.contains("after the crash"), "{checked}");
}

#[test]
fn with_a_shared_secret_the_hosted_broker_requires_it_and_the_servers_use_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = free_addr();
    let secret = [("IPC_SHARED_SECRET", "s3cret")];
    let mut alice = McpProcess::start(&addr, &data, &secret, &[]);
    alice.ok("register", json!({"instance_id": "alice"}));
    let mut client = Client::connect(&addr, TIMEOUT).unwrap();
    assert_eq!(ping_json(&mut client)["mode"], "secret");
    let refused = client.register("mallory", None).unwrap_err().to_string();
    assert!(refused.contains("Invalid auth token"), "{refused}");

    let mut wrong = McpProcess::start(&addr, &data, &[("IPC_SHARED_SECRET", "guess")], &[]);
    // The broker's proof does not match this server's secret, so it sends no register at all.
    let text = wrong.error("register", json!({"instance_id": "bob"}));
    assert!(
        text.contains("did not prove that it knows the shared secret"),
        "{text}"
    );
    assert!(
        text.contains("IPC_SHARED_SECRET"),
        "says what to fix: {text}"
    );
}

#[test]
fn a_data_directory_held_by_a_broker_elsewhere_is_a_clear_error_after_a_bounded_wait() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let elsewhere = BrokerProcess::spawn(&data, &[]);
    let mut mcp = McpProcess::start(&free_addr(), &data, &[], &[]);
    // The harness gives up on a reply after 10 s, so an answer at all shows the wait is bounded.
    let text = mcp.error("register", json!({"instance_id": "alice"}));
    let held = format!(
        "another broker (pid {}) already serves",
        elsewhere.child.id()
    );
    assert!(text.contains(&held), "{text}");
}

/// The socket file's permission bits.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The pid of the broker answering on the socket.
fn pid_on_socket(socket: &Path) -> Value {
    Client::connect_unix(socket, TIMEOUT)
        .expect("the broker answers on the socket")
        .ping()
        .unwrap()
        .pid
        .into()
}

#[test]
fn with_ipc_socket_the_hosted_broker_listens_on_it_and_a_survivor_takes_it_over() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let socket = dir.path().join("ipc.sock");
    let env = [("IPC_SOCKET", socket.to_str().unwrap())];
    // Port 0: each hosted broker listens on a port of its own, so the servers can only find
    // each other's broker through the socket.
    let tcp = "127.0.0.1:0";
    let mut alice = McpProcess::start(tcp, &data, &env, &[]);
    let mut bob = McpProcess::start(tcp, &data, &env, &[]);
    alice.ok("register", json!({"instance_id": "alice"}));
    assert_eq!(lock_holder(&data), Some(alice.pid()), "alice hosts");
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(pid_on_socket(&socket), alice.pid());
    bob.ok("register", json!({"instance_id": "bob"}));
    assert_eq!(
        lock_holder(&data),
        Some(alice.pid()),
        "bob found alice's broker"
    );

    // The CLI, with IPC_SOCKET and an address nobody listens on, reaches the same broker.
    let session = dir.path().join("dave.session");
    let output = cli_with_env(NOWHERE, &session, &["register", "dave"], &env);
    assert!(output.status.success(), "{output:?}");
    let output = cli_with_env(NOWHERE, &session, &["send", "bob", "from the CLI"], &env);
    assert!(output.status.success(), "{output:?}");
    alice.ok(
        "send",
        json!({"to_id": "bob", "content": "over the socket"}),
    );
    let read = bob.ok("check", json!({}));
    assert!(read.contains("from the CLI"), "{read}");
    assert!(read.contains("over the socket"), "{read}");
    bob.ok("send", json!({"to_id": "alice", "content": "thanks"}));
    assert!(alice.ok("check", json!({})).contains("thanks"));

    alice.kill_9();
    assert!(socket.exists(), "kill -9 leaves the socket file behind");
    let sent = bob.ok(
        "send",
        json!({"to_id": "alice", "content": "while you were gone"}),
    );
    assert!(sent.contains("Message sent"), "{sent}");
    assert_eq!(lock_holder(&data), Some(bob.pid()), "bob took over");
    assert!(
        bob.log().contains("removing a stale socket"),
        "{}",
        bob.log()
    );
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(pid_on_socket(&socket), bob.pid());

    let mut carol = McpProcess::start(tcp, &data, &env, &[]);
    // alice's session was in use a moment ago: her name is taken over on purpose.
    let registered = carol.ok(
        "register",
        json!({"instance_id": "alice", "takeover": true}),
    );
    assert!(registered.contains("1 message waiting"), "{registered}");
    let read = carol.ok("check", json!({}));
    assert!(read.contains("From bob"), "{read}");
    assert!(read.contains("while you were gone"), "{read}");
    assert_eq!(
        lock_holder(&data),
        Some(bob.pid()),
        "carol found bob's broker"
    );
}

#[test]
fn an_unusable_ipc_socket_is_a_tool_error_that_names_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("no-such-dir").join("ipc.sock");
    let env = [("IPC_SOCKET", socket.to_str().unwrap())];
    let mut mcp = McpProcess::start("127.0.0.1:0", &dir.path().join("data"), &env, &[]);
    let text = mcp.error("register", json!({"instance_id": "alice"}));
    assert!(
        text.contains(&format!("No broker answers at socket {}", socket.display())),
        "{text}"
    );
    assert!(text.contains("IPC_SOCKET"), "says what to check: {text}");
}
