//! Channel push: the time from a sender's acknowledged `send` to the
//! `notifications/claude/channel` line a channel-mode MCP server (`claude-ipc mcp --channel`)
//! writes on its stdout, which is where Claude Code reads it. The server is driven over raw
//! JSON-RPC lines, initialized as Claude Code initializes a channel server.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::latency::Samples;
use crate::wire::WireError;
use crate::workloads::{register, send_request, Delivery, Link, Target};

/// How long one push or one JSON-RPC reply may take before the workload gives up on it.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
const CHANNEL_METHOD: &str = "notifications/claude/channel";

/// What the push workload measured.
pub struct Pushes {
    /// From the sender's acknowledgement to the notification line being read.
    pub ack_to_push: Samples,
    /// Each message's content pushed, in the order read, to check "once each".
    pub delivery: Delivery,
}

/// One line the MCP server wrote, and when it was read.
struct Line {
    value: Value,
    at: Instant,
}

/// A channel-mode MCP server talking JSON-RPC over its stdin and stdout.
struct ChannelServer {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<Line>,
    next_id: u64,
}

/// Sends one message at a time to an instance whose MCP server pushes it, for `duration`.
/// `data_dir` is the broker's data directory when this run started it (the MCP server is
/// told, so it does not look for a broker elsewhere).
pub fn push_latency(
    target: &Target,
    binary: &Path,
    data_dir: Option<&Path>,
    duration: Duration,
) -> Result<Pushes, WireError> {
    let sender = register(target, &format!("{}-push-sender", target.prefix))?;
    let reader = format!("{}-push-reader", target.prefix);
    let mut server = ChannelServer::start(binary, target, data_dir)?;
    server.call_tool("register", json!({ "instance_id": reader }))?;
    let mut sending = Link::open(target)?;
    let mut ack_to_push = Samples::default();
    let (mut expected, mut pushed) = (Vec::new(), Vec::new());
    let started = Instant::now();
    let mut seq = 0u64;
    while started.elapsed() < duration || ack_to_push.is_empty() {
        let content = format!("push {seq}");
        sending.request(&send_request(&sender, &reader, &content))?;
        let acked = Instant::now();
        expected.push(content.clone());
        let (text, at) = server.next_push(&content)?;
        ack_to_push.record(at.saturating_duration_since(acked));
        pushed.push(text);
        seq += 1;
    }
    // Anything pushed after the last awaited one (a second copy) counts against "once".
    pushed.extend(server.late_pushes(Duration::from_millis(200)));
    Ok(Pushes {
        ack_to_push,
        delivery: Delivery::compare(expected, &pushed),
    })
}

impl ChannelServer {
    fn start(
        binary: &Path,
        target: &Target,
        data_dir: Option<&Path>,
    ) -> Result<ChannelServer, WireError> {
        let mut command = Command::new(binary);
        command
            .args(["mcp", "--channel"])
            .env("IPC_ADDR", target.addr.to_string())
            .env_remove("IPC_SESSION_FILE")
            .env_remove("IPC_SOCKET")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        match &target.secret {
            Some(secret) => command.env("IPC_SHARED_SECRET", secret),
            None => command.env_remove("IPC_SHARED_SECRET"),
        };
        if let Some(dir) = data_dir {
            command.env("IPC_DATA_DIR", dir);
        }
        let mut child = command.spawn().map_err(WireError::Io)?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let at = Instant::now();
                let Ok(value) = serde_json::from_str(&line) else {
                    continue;
                };
                if sender.send(Line { value, at }).is_err() {
                    return;
                }
            }
        });
        let mut server = ChannelServer {
            child,
            stdin,
            lines,
            next_id: 0,
        };
        server.initialize()?;
        Ok(server)
    }

    /// Initializes as Claude Code does: the newest revision, the channel capability.
    fn initialize(&mut self) -> Result<(), WireError> {
        self.request(
            "initialize",
            json!({"protocolVersion": "2026-07-28",
                   "capabilities": {"experimental": {"claude/channel": {}}},
                   "clientInfo": {"name": "claude-ipc-bench", "version": "1"}}),
        )?;
        self.write(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
    }

    fn call_tool(&mut self, tool: &str, arguments: Value) -> Result<Value, WireError> {
        let reply = self.request("tools/call", json!({"name": tool, "arguments": arguments}))?;
        if reply["result"]["isError"] != false {
            return Err(WireError::Channel(format!(
                "its {tool} tool failed: {reply}"
            )));
        }
        Ok(reply)
    }

    fn request(&mut self, method: &str, params: Value) -> Result<Value, WireError> {
        self.next_id += 1;
        let id = self.next_id;
        self.write(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))?;
        let deadline = Instant::now() + PUSH_TIMEOUT;
        loop {
            let line = self.next_line(deadline, method)?;
            if line.value["id"] == id {
                return Ok(line.value);
            }
        }
    }

    fn write(&mut self, message: &Value) -> Result<(), WireError> {
        writeln!(self.stdin, "{message}").map_err(WireError::Io)?;
        self.stdin.flush().map_err(WireError::Io)
    }

    /// Waits for the push whose content is `content`; returns it and when it was read.
    fn next_push(&mut self, content: &str) -> Result<(String, Instant), WireError> {
        let deadline = Instant::now() + PUSH_TIMEOUT;
        loop {
            let line = self.next_line(deadline, "a channel push")?;
            if line.value["method"] != CHANNEL_METHOD {
                continue;
            }
            let text = pushed_content(&line.value);
            if text == content {
                return Ok((text, line.at));
            }
        }
    }

    /// Pushes that arrive within `wait` after the last expected one.
    fn late_pushes(&mut self, wait: Duration) -> Vec<String> {
        let deadline = Instant::now() + wait;
        let mut late = Vec::new();
        while let Ok(line) = self.next_line(deadline, "late pushes") {
            if line.value["method"] == CHANNEL_METHOD {
                late.push(pushed_content(&line.value));
            }
        }
        late
    }

    fn next_line(&mut self, deadline: Instant, waiting_for: &str) -> Result<Line, WireError> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.lines.recv_timeout(left).map_err(|_| {
            WireError::Channel(format!(
                "it wrote nothing for {waiting_for} within {} s",
                PUSH_TIMEOUT.as_secs()
            ))
        })
    }
}

/// A push's text, up to the optional `data:` line the server appends.
fn pushed_content(notification: &Value) -> String {
    let content = notification["params"]["content"]
        .as_str()
        .unwrap_or_default();
    content.lines().next().unwrap_or_default().to_owned()
}

impl Drop for ChannelServer {
    fn drop(&mut self) {
        // The run is over; its session needs no clean logout on a throwaway broker.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
