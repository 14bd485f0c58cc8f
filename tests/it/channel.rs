//! `claude-ipc mcp --channel` driven as Claude Code drives a channel server: the real binary,
//! raw JSON-RPC lines on its stdin and stdout, an `initialize` that asks for revision
//! 2026-07-28 and declares the client's channel capability. Mail is pushed as
//! `notifications/claude/channel` with string-only meta, once per MCP session, and stays
//! waiting until the `ack` tool; a new session pushes what is still unacknowledged.
use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use claude_ipc::client::Client;
use claude_ipc::clock::Clock;
use common::*;
use serde_json::{json, Value};

const CHANNEL_METHOD: &str = "notifications/claude/channel";
/// What Claude Code asks for; a channel server must answer with 2025-11-25 at most.
const ASKED_REVISION: &str = "2026-07-28";
/// How long a test waits to be sure no further notification comes.
const QUIET: Duration = Duration::from_millis(1500);

/// One line the server wrote, and when it was read.
struct Line {
    value: Value,
    at: Instant,
}

/// A channel-mode MCP server under test, spoken to line by line as Claude Code does.
struct ChannelServer {
    child: Child,
    stdin: Option<ChildStdin>,
    replies: mpsc::Receiver<Line>,
    notifications: mpsc::Receiver<Line>,
    stderr: Arc<Mutex<Vec<String>>>,
    next_id: u64,
    session_file: PathBuf,
}

impl ChannelServer {
    /// Spawns `claude-ipc mcp <args>` on `addr` and `data_dir`; its session goes to
    /// `session_file` so the test can read the mail from outside.
    fn spawn(addr: &str, data_dir: &Path, session_file: &Path, args: &[&str]) -> ChannelServer {
        Self::spawn_with_env(addr, data_dir, session_file, args, &[])
    }

    fn spawn_with_env(
        addr: &str,
        data_dir: &Path,
        session_file: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> ChannelServer {
        let mut command = Command::new(binary());
        command
            .arg("mcp")
            .args(args)
            .env("IPC_ADDR", addr)
            .env("IPC_DATA_DIR", data_dir)
            .env("IPC_SESSION_FILE", session_file)
            .env_remove("IPC_SHARED_SECRET")
            .env_remove("IPC_SOCKET")
            .env_remove("IPC_CHANNEL")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        #[allow(clippy::zombie_processes)] // reaped by Drop
        let mut child = command.spawn().expect("spawn claude-ipc mcp");
        let stdin = child.stdin.take();
        let (reply_sender, replies) = mpsc::channel();
        let (notification_sender, notifications) = mpsc::channel();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let at = Instant::now();
            let value: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("stdout holds a line that is not JSON ({e}): {line}"));
            let sender = if value.get("id").is_some() {
                &reply_sender
            } else {
                &notification_sender
            };
            let _ = sender.send(Line { value, at });
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let log = stderr.clone();
        let errors = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(errors).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
        ChannelServer {
            child,
            stdin,
            replies,
            notifications,
            stderr,
            next_id: 0,
            session_file: session_file.to_owned(),
        }
    }

    /// A channel server that answers, initialized as Claude Code initializes one.
    fn start(addr: &str, data_dir: &Path, session_file: &Path) -> ChannelServer {
        let mut server = Self::spawn(addr, data_dir, session_file, &["--channel"]);
        let reply = server.initialize(ASKED_REVISION, true);
        assert_eq!(reply["result"]["protocolVersion"], "2025-11-25", "{reply}");
        server
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    fn write(&mut self, message: &Value) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{message}").expect("write to the server");
        stdin.flush().unwrap();
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.write(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.replies.recv_timeout(left).unwrap_or_else(|_| {
                panic!("no reply to {method}; the server logged:\n{}", self.log())
            });
            if line.value["id"] == id {
                return line.value;
            }
        }
    }

    /// `initialize` asking for `revision`, declaring the channel capability or not, then
    /// `notifications/initialized`; returns the reply.
    fn initialize(&mut self, revision: &str, channel_client: bool) -> Value {
        let capabilities = if channel_client {
            json!({"experimental": {"claude/channel": {}}})
        } else {
            json!({})
        };
        let reply = self.request(
            "initialize",
            json!({"protocolVersion": revision, "capabilities": capabilities,
                   "clientInfo": {"name": "claude-code", "version": "2.1.232"}}),
        );
        self.write(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        reply
    }

    /// A tool call's text; panics if it failed.
    fn ok(&mut self, tool: &str, arguments: Value) -> String {
        let reply = self.request("tools/call", json!({"name": tool, "arguments": arguments}));
        let result = &reply["result"];
        assert_eq!(result["isError"], false, "{tool} failed: {reply}");
        result["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("no text: {reply}"))
            .to_owned()
    }

    /// The next channel notification within `wait`, and when it was read.
    fn next_push(&mut self, wait: Duration) -> Option<(Value, Instant)> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.notifications.recv_timeout(left).ok()?;
            if line.value["method"] == CHANNEL_METHOD {
                return Some((line.value["params"].clone(), line.at));
            }
        }
    }

    /// Exactly `count` pushes, then nothing more for a while.
    fn pushes(&mut self, count: usize) -> Vec<Value> {
        let mut pushed = Vec::new();
        while pushed.len() < count {
            match self.next_push(TIMEOUT) {
                Some((params, _)) => pushed.push(params),
                None => panic!(
                    "{} of {count} pushes arrived; the server logged:\n{}",
                    pushed.len(),
                    self.log()
                ),
            }
        }
        if let Some((extra, _)) = self.next_push(QUIET) {
            panic!("a push more than the {count} expected: {extra}");
        }
        pushed
    }

    /// The session token this server wrote to its session file.
    fn token(&self) -> String {
        let file: Value = serde_json::from_slice(&std::fs::read(&self.session_file).unwrap())
            .expect("session file");
        file["session_token"].as_str().unwrap().to_owned()
    }

    /// Closes stdin, as Claude Code does when it ends the session, and waits for the exit.
    fn close(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "the server did not exit after stdin closed:\n{}",
            self.log()
        );
    }
}

impl Drop for ChannelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn real_clock_broker() -> TestBroker {
    TestBroker::start_with_clock(|_| {}, Clock::system())
}

/// The meta of a push, checked as Claude Code checks it: every key letters, digits and
/// underscores, every value a string.
fn meta(push: &Value) -> serde_json::Map<String, Value> {
    let meta = push["meta"].as_object().expect("meta is an object").clone();
    for (key, value) in &meta {
        assert!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "meta key {key:?}"
        );
        assert!(value.is_string(), "meta {key} is not a string: {value}");
    }
    push["content"].as_str().expect("content is a string");
    meta
}

fn msg_id(push: &Value) -> i64 {
    meta(push)["msg_id"].as_str().unwrap().parse().unwrap()
}

fn send(client: &mut Client, token: &str, to: &str, content: &str) -> i64 {
    client
        .send(token, to, content, None, None)
        .expect("send")
        .message_id
        .0
}

#[test]
fn channel_mode_caps_the_revision_and_declares_the_capability_and_the_instructions() {
    let broker = real_clock_broker();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("session");
    for (args, env) in [
        (&["--channel"][..], &[][..]),
        (&[][..], &[("IPC_CHANNEL", "1")][..]),
    ] {
        let mut server =
            ChannelServer::spawn_with_env(&broker.addr(), &broker.data_dir(), &file, args, env);
        let reply = server.initialize(ASKED_REVISION, true);
        let result = &reply["result"];
        assert_eq!(result["protocolVersion"], "2025-11-25", "{reply}");
        assert_eq!(
            result["capabilities"]["experimental"]["claude/channel"],
            json!({})
        );
        assert!(result["capabilities"]["tools"].is_object());
        let instructions = result["instructions"].as_str().unwrap();
        for needed in [
            "<channel source=\"claude-ipc\"",
            "not from the user",
            "send tool",
            "SendMessage",
            "ack",
            "wait_for_messages",
            "share_file",
            "share_command",
            "at most once an hour",
        ] {
            assert!(instructions.contains(needed), "{needed}: {instructions}");
        }
        // An older revision is kept as asked.
        let mut older =
            ChannelServer::spawn_with_env(&broker.addr(), &broker.data_dir(), &file, args, env);
        let reply = older.initialize("2025-06-18", true);
        assert_eq!(reply["result"]["protocolVersion"], "2025-06-18", "{reply}");
    }
    // Without channel mode: no channel capability, no push instructions, and an older
    // revision is kept as asked too.
    let mut plain = ChannelServer::spawn(&broker.addr(), &broker.data_dir(), &file, &[]);
    let reply = plain.initialize("2025-06-18", false);
    let result = &reply["result"];
    assert_eq!(result["protocolVersion"], "2025-06-18");
    assert!(
        result["capabilities"].get("experimental").is_none(),
        "{reply}"
    );
    let plain_instructions = result["instructions"].as_str().unwrap();
    assert!(!plain_instructions.contains("<channel"));
    for needed in [
        "wait_for_messages",
        "share_file",
        "share_command",
        "at most once an hour",
    ] {
        assert!(
            plain_instructions.contains(needed),
            "{needed}: {plain_instructions}"
        );
    }
    // "once an hour" is the broker's real default cooldown.
    assert_eq!(
        claude_ipc::config::Limits::default().rename_cooldown,
        std::time::Duration::from_secs(3600)
    );
}

#[test]
fn the_tools_say_send_replies_and_ack_acknowledges() {
    let broker = real_clock_broker();
    let dir = tempfile::tempdir().unwrap();
    let mut server =
        ChannelServer::start(&broker.addr(), &broker.data_dir(), &dir.path().join("s"));
    let reply = server.request("tools/list", json!({}));
    let tools = reply["result"]["tools"].as_array().unwrap();
    let description = |name: &str| {
        tools
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"))["description"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(description("send").contains("never reply with Claude Code's own SendMessage"));
    assert!(description("ack").contains("msg_id"));
}

#[test]
fn each_message_is_pushed_once_with_string_meta_and_waits_until_the_ack_tool() {
    let broker = real_clock_broker();
    let dir = tempfile::tempdir().unwrap();
    let mut bob = ChannelServer::start(&broker.addr(), &broker.data_dir(), &dir.path().join("b"));
    bob.ok("register", json!({"instance_id": "bob"}));
    let alice = broker.register("alice");
    let mut client = broker.client();
    let first = send(&mut client, &alice, "bob", "hello bob");
    let second = send(&mut client, &alice, "bob", "line one\nline two");
    let third = send(&mut client, &alice, "bob", "third");

    let pushed = bob.pushes(3);
    assert_eq!(
        pushed.iter().map(msg_id).collect::<Vec<_>>(),
        [first, second, third]
    );
    let meta = meta(&pushed[0]);
    assert_eq!(meta["from"], "alice");
    assert_eq!(meta["kind"], "direct");
    assert!(meta["sent_at"].as_str().unwrap().starts_with("20"));
    assert_eq!(pushed[0]["content"], "hello bob");
    assert_eq!(pushed[1]["content"], "line one\nline two");

    // A push settles nothing: all three still wait for bob.
    let token = bob.token();
    assert_eq!(broker.client().count(&token).unwrap().count, 3);

    // ack takes the msg_id strings as the channel tags show them, and numbers too.
    let text = bob.ok(
        "ack",
        json!({"ids": [meta["msg_id"].clone(), json!(second)]}),
    );
    assert!(text.contains("Acknowledged 2 messages"), "{text}");
    assert_eq!(broker.client().count(&token).unwrap().count, 1);
    let again = bob.ok("ack", json!({"ids": [first]}));
    assert!(again.contains("Already acknowledged"), "{again}");
    // The unacknowledged one is what check reads.
    let checked = bob.ok("check", json!({}));
    assert!(
        checked.contains("third") && !checked.contains("hello bob"),
        "{checked}"
    );
    assert_eq!(broker.client().count(&token).unwrap().count, 0);
    // Nothing of this was pushed a second time.
    assert!(bob.next_push(QUIET).is_none());
}

#[test]
fn mail_waiting_before_register_is_pushed_and_broadcasts_too() {
    let broker = real_clock_broker();
    let dir = tempfile::tempdir().unwrap();
    let alice = broker.register("alice");
    let mut client = broker.client();
    let early = send(&mut client, &alice, "carol", "sent before carol registered");
    let mut carol = ChannelServer::start(&broker.addr(), &broker.data_dir(), &dir.path().join("c"));
    // Nothing is pushed before there is a session.
    assert!(carol.next_push(QUIET).is_none());
    carol.ok("register", json!({"instance_id": "carol"}));
    let pushed = carol.pushes(1);
    assert_eq!(msg_id(&pushed[0]), early);
    client.broadcast(&alice, "to everyone").unwrap();
    let pushed = carol.pushes(1);
    assert_eq!(meta(&pushed[0])["kind"], "broadcast");
    assert_eq!(pushed[0]["content"], "to everyone");
}

#[test]
fn a_new_session_pushes_what_is_unacknowledged_and_ignored_pushes_lose_nothing() {
    let broker = real_clock_broker();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bob");
    let alice = broker.register("alice");
    let mut client = broker.client();

    let mut first = ChannelServer::start(&broker.addr(), &broker.data_dir(), &file);
    first.ok("register", json!({"instance_id": "bob"}));
    let ids: Vec<i64> = (0..5)
        .map(|n| send(&mut client, &alice, "bob", &format!("message {n}")))
        .collect();
    let pushed = first.pushes(5);
    assert_eq!(pushed.iter().map(msg_id).collect::<Vec<_>>(), ids);
    first.ok("ack", json!({"ids": [ids[0], ids[1]]}));
    // The rest are ignored: never acknowledged, never checked.
    first.close();

    let mut second = ChannelServer::start(&broker.addr(), &broker.data_dir(), &file);
    second.ok("register", json!({"instance_id": "bob"}));
    let pushed = second.pushes(3);
    assert_eq!(pushed.iter().map(msg_id).collect::<Vec<_>>(), ids[2..]);
    // And the queue still holds exactly those three, unread.
    let token = second.token();
    let waiting = broker.client().check(&token).unwrap().messages;
    assert_eq!(waiting.iter().map(|m| m.id.0).collect::<Vec<_>>(), ids[2..]);
}

#[test]
fn pushes_resume_after_the_broker_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = free_addr();
    // alice's server hosts the broker (it registers first); bob's pushes ride on it.
    let mut host = McpProcess::start(&addr, &data, &[], &[]);
    host.ok("register", json!({"instance_id": "alice"}));
    let mut bob = ChannelServer::start(&addr, &data, &dir.path().join("bob"));
    bob.ok("register", json!({"instance_id": "bob"}));
    host.ok("send", json!({"to_id": "bob", "content": "before"}));
    assert_eq!(bob.pushes(1)[0]["content"], "before");

    host.kill_9();
    // bob's push loop finds no broker and hosts one itself; mail sent to it is pushed.
    let sender = ChannelServer::spawn(&addr, &data, &dir.path().join("dave"), &[]);
    let mut sender = sender;
    sender.initialize("2025-06-18", false);
    sender.ok("register", json!({"instance_id": "dave"}));
    sender.ok(
        "send",
        json!({"to_id": "bob", "content": "after the takeover"}),
    );
    let (push, _) = bob
        .next_push(TIMEOUT)
        .unwrap_or_else(|| panic!("no push after the takeover:\n{}", bob.log()));
    assert_eq!(push["content"], "after the takeover");
    assert_eq!(meta(&push)["from"], "dave");
}

#[test]
fn push_latency_from_the_senders_ack_to_the_notification() {
    const MESSAGES: usize = 50;
    let broker = real_clock_broker();
    let dir = tempfile::tempdir().unwrap();
    let mut bob = ChannelServer::start(&broker.addr(), &broker.data_dir(), &dir.path().join("b"));
    bob.ok("register", json!({"instance_id": "bob"}));
    let alice = broker.register("alice");
    let mut client = broker.client();
    let mut latencies = Vec::with_capacity(MESSAGES);
    for n in 0..MESSAGES {
        let id = send(&mut client, &alice, "bob", &format!("ping {n}"));
        let acked = Instant::now();
        let (push, at) = bob
            .next_push(TIMEOUT)
            .unwrap_or_else(|| panic!("message {n} was not pushed:\n{}", bob.log()));
        assert_eq!(msg_id(&push), id);
        latencies.push(at.saturating_duration_since(acked));
    }
    latencies.sort();
    let p50 = latencies[MESSAGES / 2];
    let p99 = latencies[(MESSAGES * 99) / 100];
    println!(
        "push latency over {MESSAGES} messages: p50 {p50:?}, p99 {p99:?}, max {:?}",
        latencies[MESSAGES - 1]
    );
    // A generous bound: the target (p99 under 100 ms) is measured, not asserted, on a
    // shared machine.
    assert!(p99 < Duration::from_secs(2), "p99 {p99:?}");
}

#[test]
fn the_ack_tool_settles_unread_mail_in_either_mode_and_refuses_what_is_not_yours() {
    let broker = real_clock_broker();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bob");
    let mut bob = ChannelServer::spawn(&broker.addr(), &broker.data_dir(), &file, &[]);
    bob.initialize("2025-06-18", false);
    bob.ok("register", json!({"instance_id": "bob"}));
    let alice = broker.register("alice");
    let carol = broker.register("carol");
    let mut client = broker.client();
    let to_bob = send(&mut client, &alice, "bob", "for bob");
    let to_carol = send(&mut client, &alice, "carol", "for carol");
    let text = bob.ok("ack", json!({"ids": [to_bob.to_string(), to_carol]}));
    assert!(text.contains("Acknowledged 1 message"), "{text}");
    assert!(text.contains("Not your mail"), "{text}");
    assert_eq!(broker.client().count(&bob.token()).unwrap().count, 0);
    assert_eq!(broker.client().count(&carol).unwrap().count, 1);
    // A word that is not an id is refused before anything is settled.
    let reply = bob.request(
        "tools/call",
        json!({"name": "ack", "arguments": {"ids": ["forty-two"]}}),
    );
    assert_eq!(reply["result"]["isError"], true, "{reply}");
    assert!(reply["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("not a message id"));
}

/// An SDK that first probes the 2026-07-28 lifecycle (`server/discover`, as the official
/// Python SDK's default client does) is refused with the revisions a channel server speaks,
/// and then falls back to `initialize`, which negotiates 2025-11-25; pushes work on it.
#[test]
fn a_modern_probe_is_refused_so_the_client_falls_back_to_initialize() {
    let broker = real_clock_broker();
    let dir = tempfile::tempdir().unwrap();
    let mut bob = ChannelServer::spawn(
        &broker.addr(),
        &broker.data_dir(),
        &dir.path().join("bob"),
        &["--channel"],
    );
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": ASKED_REVISION,
        "io.modelcontextprotocol/clientCapabilities": {"experimental": {"claude/channel": {}}},
        "io.modelcontextprotocol/clientInfo": {"name": "claude-code", "version": "2.1.232"},
    });
    let probe = bob.request("server/discover", json!({"_meta": meta}));
    let supported = probe["error"]["data"]["supported"]
        .as_array()
        .unwrap_or_else(|| panic!("the probe is refused with the supported revisions: {probe}"));
    assert!(supported.contains(&json!("2025-11-25")));
    assert!(!supported.contains(&json!(ASKED_REVISION)), "{probe}");
    let reply = bob.initialize(ASKED_REVISION, true);
    assert_eq!(reply["result"]["protocolVersion"], "2025-11-25");
    bob.ok("register", json!({"instance_id": "bob"}));
    let alice = broker.register("alice");
    send(&mut broker.client(), &alice, "bob", "after the probe");
    assert_eq!(bob.pushes(1)[0]["content"], "after the probe");
}

/// The instructions of both modes name every tool the server lists (so a model that reads only
/// them knows wait_for_messages and the share tools), and say rename's one-hour cooldown.
#[test]
fn the_instructions_of_both_modes_name_every_tool_and_the_rename_cooldown() {
    let broker = real_clock_broker();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("session");
    for (args, channel) in [(&["--channel"][..], true), (&[][..], false)] {
        let mut server = ChannelServer::spawn(&broker.addr(), &broker.data_dir(), &file, args);
        let reply = server.initialize(ASKED_REVISION, channel);
        let instructions = reply["result"]["instructions"].as_str().unwrap().to_owned();
        let listed = server.request("tools/list", json!({}));
        let tools = listed["result"]["tools"].as_array().unwrap();
        assert!(tools.len() >= 15, "{listed}");
        for tool in tools {
            let name = tool["name"].as_str().unwrap();
            assert!(
                instructions.contains(name),
                "channel={channel}: `{name}` is not in the instructions: {instructions}"
            );
        }
        assert!(
            instructions.contains("once an hour"),
            "channel={channel}: {instructions}"
        );
    }
}
