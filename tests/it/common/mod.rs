//! Shared test harness: a real broker in-process on port 0 with a temp data directory, the
//! real binary as a subprocess, and a client that speaks exactly like the legacy scripts.
#![allow(dead_code)]

pub mod browser;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use claude_ipc::client::Client;
use claude_ipc::clock::Clock;
use claude_ipc::config::Config;
use claude_ipc::server::{self, RunningServer};
use serde_json::{json, Value};
use tempfile::TempDir;

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How soon after its cause (a send, a deadline, a lease running out, shutdown) a waiting
/// client must be answered. A local round trip takes milliseconds; this leaves room for a
/// loaded machine while staying far below the waits tests ask for, so an answer at the wrong
/// moment (the deadline instead of the send, a second late) fails.
pub const PROMPTLY: Duration = Duration::from_secs(1);

/// A broker running inside the test process, on its own runtime, with a manual clock.
pub struct TestBroker {
    pub addr: SocketAddr,
    pub config: Config,
    pub clock: Clock,
    runtime: tokio::runtime::Runtime,
    server: Option<RunningServer>,
    dir: TempDir,
}

impl TestBroker {
    /// Default limits, except the per-instance rate limit is off so tests can make many calls.
    pub fn start() -> TestBroker {
        Self::start_with(|_| {})
    }

    /// A broker on the machine's clock, for clients (the CLI, the MCP server) that stamp their
    /// sends with the real time.
    pub fn start_on_wall_clock() -> TestBroker {
        Self::start_with_clock(|_| {}, Clock::system())
    }

    pub fn start_with(configure: impl FnOnce(&mut Config)) -> TestBroker {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::new("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
        config.limits.rate_limit = 0;
        // Tests sweep by hand (`TestBroker::sweep`); a background sweep would race them.
        config.limits.sweep_interval = Duration::ZERO;
        configure(&mut config);
        let clock = Clock::manual(Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap());
        Self::start_in(dir, config, clock)
    }

    fn start_in(dir: TempDir, config: Config, clock: Clock) -> TestBroker {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = runtime
            .block_on(server::start(&config, false, clock.clone()))
            .expect("broker starts");
        TestBroker {
            addr: server.addr,
            config,
            clock,
            runtime,
            server: Some(server),
            dir,
        }
    }

    /// Shuts down cleanly and starts again on the same data directory (a new port), keeping
    /// the clock where it was.
    pub fn restart(mut self) -> TestBroker {
        let server = self.server.take().expect("running");
        self.runtime.block_on(server.shutdown());
        let mut config = self.config.clone();
        config.addr = "127.0.0.1:0".parse().unwrap();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        let clock = self.clock.clone();
        drop(self);
        Self::start_in(dir, config, clock)
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    pub fn db_path(&self) -> PathBuf {
        self.config.database_path()
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.addr(), TIMEOUT).expect("client connects")
    }

    /// The address plus sessions for `alice` and `bob`: the cast of most mail tests.
    pub fn alice_and_bob(&self) -> (String, String, String) {
        (self.addr(), self.register("alice"), self.register("bob"))
    }

    /// Registers `name` (with the configured secret, if any) and returns its session token.
    pub fn register(&self, name: &str) -> String {
        let secret = self.config.shared_secret.clone();
        self.client()
            .register(name, secret.as_deref())
            .expect("register")
            .session_token
    }

    /// The running broker, to drive a connection over an in-memory pipe.
    pub fn broker(&self) -> std::sync::Arc<claude_ipc::broker::Broker> {
        self.server.as_ref().unwrap().broker.clone()
    }

    /// Runs a future on the broker's runtime.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Runs one sweep now. Only on a broker without its background sweeper: one running
    /// meanwhile would take some of the rows and leave this sweep's report short.
    pub fn sweep(&self) -> claude_ipc::store::queries::SweepReport {
        assert!(
            self.config.limits.sweep_interval.is_zero(),
            "a test that sweeps by hand must leave the background sweeper off (sweep_interval 0)"
        );
        let broker = self.server.as_ref().unwrap().broker.clone();
        self.runtime.block_on(broker.sweep()).expect("sweep")
    }

    /// The single number a `SELECT count(*) ...`-style query returns on the live database.
    pub fn count(&self, sql: &str) -> i64 {
        self.sql()
            .query_row(sql, [], |row| row.get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// A read-only look at the live database, as an operator's `sqlite3` would have.
    pub fn sql(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            self.db_path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open db read-only")
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.runtime.block_on(server.shutdown());
        }
    }
}

/// Exactly what the legacy scripts do: connect, send one JSON object with no newline, read
/// the reply with a single `recv(65536)`, close. Returns the raw bytes of that one read.
pub fn legacy_raw(addr: &str, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(request).expect("send");
    let mut buffer = vec![0u8; 65536];
    let n = stream.read(&mut buffer).expect("one recv");
    buffer.truncate(n);
    buffer
}

/// [`legacy_raw`] with JSON in and out; panics if the single read is not one whole JSON reply.
pub fn legacy(addr: &str, request: &Value) -> Value {
    let bytes = legacy_raw(addr, request.to_string().as_bytes());
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "single read is not a whole JSON reply ({e}): {} bytes",
            bytes.len()
        )
    })
}

/// Reads one reply line from a raw stream, byte by byte (so nothing after it is consumed).
pub fn read_reply(stream: &mut impl Read) -> Value {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).expect("read reply") == 1 {
        if byte[0] == b'\n' {
            break;
        }
        bytes.push(byte[0]);
    }
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not a JSON reply ({e}): {bytes:?}"))
}

/// True once the broker has closed the connection (reading to the end succeeds).
pub fn closed_by_broker(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).is_ok()
}

/// A well-behaved client's whole round trip on a fresh connection: two new names register,
/// one sends the other a message, the other checks and gets exactly that message.
pub fn a_normal_client_is_served(addr: &str, tag: &str) {
    let mut client = Client::connect(addr, TIMEOUT).expect("a normal client connects");
    a_normal_client_is_served_on(&mut client, tag);
}

/// [`a_normal_client_is_served`] on a connection the caller already holds.
pub fn a_normal_client_is_served_on(client: &mut Client, tag: &str) {
    let (from, to) = (format!("{tag}-from"), format!("{tag}-to"));
    let sender = client
        .register(&from, None)
        .expect("register")
        .session_token;
    let receiver = client.register(&to, None).expect("register").session_token;
    let text = format!("{tag}: business as usual");
    client.send(&sender, &to, &text, None, None).expect("send");
    let mail = client.check(&receiver).expect("check").messages;
    assert_eq!(mail.len(), 1, "{mail:?}");
    assert_eq!(mail[0].message.content, text);
}

/// Polls `done` until it holds, failing the test after [`TIMEOUT`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The contents of a check reply's messages, in order.
pub fn contents(check_reply: &Value) -> Vec<String> {
    check_reply["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages array: {check_reply}"))
        .iter()
        .map(|m| m["message"]["content"].as_str().unwrap().to_owned())
        .collect()
}

/// The instance names in a list reply, in order.
pub fn instance_names(list_reply: &Value) -> Vec<String> {
    list_reply["instances"]
        .as_array()
        .unwrap_or_else(|| panic!("no instances array: {list_reply}"))
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The whole `ping` reply as JSON (`status` included) on `client`'s connection; panics on an
/// error reply.
pub fn ping_json(client: &mut Client) -> Value {
    client.call(&json!({"action": "ping"})).expect("ping")
}

/// A legacy-style register; returns the session token.
pub fn legacy_register(addr: &str, name: &str) -> String {
    let reply = legacy(
        addr,
        &json!({"action": "register", "instance_id": name, "auth_token": ""}),
    );
    assert_eq!(reply["status"], "ok", "{reply}");
    reply["session_token"].as_str().unwrap().to_owned()
}

pub fn legacy_send(addr: &str, token: &str, to: &str, content: &str) -> Value {
    legacy(
        addr,
        &json!({"action": "send", "from_id": "ignored", "to_id": to,
                "message": {"content": content}, "session_token": token}),
    )
}

pub fn legacy_check(addr: &str, token: &str) -> Value {
    legacy(
        addr,
        &json!({"action": "check", "instance_id": "ignored", "session_token": token}),
    )
}

/// A port nobody listens on, so a client that reaches the broker can only have used the socket.
pub const NOWHERE: &str = "127.0.0.1:1";

/// The real `claude-ipc` binary.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_claude-ipc")
}

/// `claude-ipc serve` started as a person would, on a fixed address, its output discarded;
/// returns once it answers. Nothing of the test's environment points it elsewhere.
pub fn serve_on(addr: &str, data_dir: &Path) -> Child {
    #[allow(clippy::zombie_processes)] // reaped by the test
    let child = Command::new(binary())
        .args(["serve", "--addr", addr, "--data-dir"])
        .arg(data_dir)
        .env_remove("IPC_SHARED_SECRET")
        .env_remove("IPC_SOCKET")
        .env_remove("IPC_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start serve");
    wait_until("the broker answers", || {
        Client::connect(addr, Duration::from_millis(200)).is_ok()
    });
    child
}

/// A command's stdout and stderr, as one text.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `claude-ipc serve` as a child process on port 0; learns its address from the start log.
pub struct BrokerProcess {
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    /// Every stderr line, as the broker wrote them.
    pub log: mpsc::Receiver<String>,
}

impl BrokerProcess {
    pub fn spawn(data_dir: &Path, extra_args: &[&str]) -> BrokerProcess {
        Self::spawn_with_env(data_dir, extra_args, &[])
    }

    pub fn spawn_with_env(
        data_dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> BrokerProcess {
        let mut command = Command::new(binary());
        command
            .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra_args)
            .env_remove("IPC_SHARED_SECRET")
            .env_remove("IPC_ADDR")
            .env_remove("IPC_DATA_DIR")
            .env_remove("IPC_SOCKET")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        #[allow(clippy::zombie_processes)] // reaped by Drop, kill_9 or terminate
        let mut child = command.spawn().expect("spawn claude-ipc serve");
        let stderr = child.stderr.take().unwrap();
        let (lines, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let mut seen = Vec::new();
        loop {
            let line = log
                .recv_timeout(TIMEOUT)
                .unwrap_or_else(|_| panic!("broker did not start; it said: {seen:#?}"));
            if let Some(addr) = line.split("addr=").nth(1) {
                let addr = addr.split_whitespace().next().unwrap().to_owned();
                return BrokerProcess {
                    child,
                    addr,
                    data_dir: data_dir.to_owned(),
                    log,
                };
            }
            seen.push(line);
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill_9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        self.child.wait().expect("wait")
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.addr, TIMEOUT).expect("client connects")
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary as a client with `IPC_ADDR` and `IPC_SESSION_FILE` set.
pub fn cli(addr: &str, session_file: &Path, args: &[&str]) -> std::process::Output {
    cli_with_env(addr, session_file, args, &[])
}

/// [`cli`] with extra environment variables (`TZ`, `IPC_DATA_DIR`, `IPC_SOCKET`, ...).
/// `IPC_DATA_DIR` and `IPC_SOCKET` are cleared unless given, so a test never touches the home
/// directory's data or a socket from the environment, and `IPC_AUTOSTART=0` unless given, so
/// a command that finds no broker reports it instead of starting one in the background.
pub fn cli_with_env(
    addr: &str,
    session_file: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut command = Command::new(binary());
    command
        .args(args)
        .env("IPC_ADDR", addr)
        .env("IPC_SESSION_FILE", session_file)
        .env_remove("IPC_SHARED_SECRET")
        .env_remove("IPC_SOCKET")
        .env_remove("IPC_DATA_DIR")
        .env("IPC_AUTOSTART", "0")
        .env("NO_COLOR", "1");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run claude-ipc")
}

impl TestBroker {
    /// [`TestBroker::start_with`] on the given clock: the real one for checks that compare
    /// stored times with SQLite's own `'now'`, as the operator views do.
    pub fn start_with_clock(configure: impl FnOnce(&mut Config), clock: Clock) -> TestBroker {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::new("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
        config.limits.rate_limit = 0;
        // Tests sweep by hand (`TestBroker::sweep`); a background sweep would race them.
        config.limits.sweep_interval = Duration::ZERO;
        configure(&mut config);
        Self::start_in(dir, config, clock)
    }
}

/// A loopback address with a port that was free a moment ago, for processes that must meet at
/// one fixed address (MCP servers electing a broker). It is drawn at random from below the
/// kernel's ephemeral range, so neither port 0 binds nor outgoing connections of tests running
/// alongside will be handed the same port before the test binds it.
pub fn free_addr() -> String {
    use rand::Rng;
    loop {
        let port: u16 = rand::rng().random_range(20_000..32_000);
        let addr = format!("127.0.0.1:{port}");
        if std::net::TcpListener::bind(&addr).is_ok() {
            return addr;
        }
    }
}

/// `claude-ipc mcp` as a child process, driven as an MCP client would: newline-delimited
/// JSON-RPC on its stdin and stdout.
pub struct McpProcess {
    pub child: Child,
    stdin: std::process::ChildStdin,
    replies: mpsc::Receiver<Value>,
    /// Every byte the server wrote to stdout, to check nothing but JSON-RPC appears there.
    stdout: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    /// Every line the server logged to stderr.
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    next_id: u64,
}

impl McpProcess {
    /// Starts the server with `IPC_ADDR` and `IPC_DATA_DIR` set and completes the handshake.
    pub fn start(addr: &str, data_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> McpProcess {
        let mut mcp = Self::spawn(addr, data_dir, env, args);
        mcp.initialize();
        mcp
    }

    /// Starts the server without the handshake.
    pub fn spawn(addr: &str, data_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> McpProcess {
        let mut command = Command::new(binary());
        command
            .arg("mcp")
            .args(args)
            .env("IPC_ADDR", addr)
            .env("IPC_DATA_DIR", data_dir)
            .env_remove("IPC_SHARED_SECRET")
            .env_remove("IPC_SESSION_FILE")
            .env_remove("IPC_SOCKET")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        #[allow(clippy::zombie_processes)] // reaped by Drop or kill_9
        let mut child = command.spawn().expect("spawn claude-ipc mcp");
        let stdin = child.stdin.take().unwrap();
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (sender, replies) = mpsc::channel();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let raw = stdout.clone();
        std::thread::spawn(move || loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            raw.lock().unwrap().extend_from_slice(&line);
            if let Ok(value) = serde_json::from_slice::<Value>(&line) {
                let _ = sender.send(value);
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = stderr.clone();
        let errors = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(errors).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
        McpProcess {
            child,
            stdin,
            replies,
            stdout,
            stderr,
            next_id: 0,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn write(&mut self, message: &Value) {
        let mut line = message.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).expect("write to mcp");
        self.stdin.flush().unwrap();
    }

    /// Sends a request without waiting; returns its id for [`McpProcess::reply_to`].
    pub fn send_request(&mut self, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.write(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    /// The reply to request `id` (replies to others that arrive first are dropped).
    pub fn reply_to(&mut self, id: u64) -> Value {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let message = self.replies.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "no reply to request {id}; the server logged: {:#?}",
                    self.log()
                )
            });
            if message["id"] == id {
                return message;
            }
        }
    }

    pub fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.send_request(method, params);
        self.reply_to(id)
    }

    fn initialize(&mut self) {
        let reply = self.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "claude-ipc-tests", "version": "1"}}),
        );
        assert!(
            reply["result"]["capabilities"]["tools"].is_object(),
            "{reply}"
        );
        self.write(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    }

    /// Starts a tool call without waiting for it.
    pub fn start_call(&mut self, tool: &str, arguments: Value) -> u64 {
        self.send_request("tools/call", json!({"name": tool, "arguments": arguments}))
    }

    /// The text and the `isError` flag of a finished tool call.
    pub fn finish_call(&mut self, id: u64) -> ToolOutcome {
        let reply = self.reply_to(id);
        let result = &reply["result"];
        assert!(result.is_object(), "not a tool result: {reply}");
        let text = result["content"]
            .as_array()
            .unwrap_or_else(|| panic!("no content: {reply}"))
            .iter()
            .filter_map(|c| c["text"].as_str())
            .collect::<Vec<_>>()
            .join("");
        ToolOutcome {
            is_error: result["isError"] == true,
            text,
        }
    }

    pub fn call(&mut self, tool: &str, arguments: Value) -> ToolOutcome {
        let id = self.start_call(tool, arguments);
        self.finish_call(id)
    }

    /// A tool call that must succeed; returns its text.
    pub fn ok(&mut self, tool: &str, arguments: Value) -> String {
        let outcome = self.call(tool, arguments.clone());
        assert!(
            !outcome.is_error,
            "{tool}({arguments}) failed: {}",
            outcome.text
        );
        outcome.text
    }

    /// A tool call that must fail as a tool error; returns its text.
    pub fn error(&mut self, tool: &str, arguments: Value) -> String {
        let outcome = self.call(tool, arguments.clone());
        assert!(
            outcome.is_error,
            "{tool}({arguments}) should fail: {}",
            outcome.text
        );
        outcome.text
    }

    /// Everything written to stdout so far.
    pub fn raw_stdout(&self) -> Vec<u8> {
        self.stdout.lock().unwrap().clone()
    }

    /// Everything logged to stderr so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill_9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }
}

impl Drop for McpProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tool call's result as the model sees it.
#[derive(Debug, Clone)]
pub struct ToolOutcome {
    pub is_error: bool,
    pub text: String,
}

/// The pid written into a data directory's broker lock, if any.
pub fn lock_holder(data_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(data_dir.join("broker.lock"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A name of `prefix` and the number `i`, padded to the 32-character limit, so lists and
/// summaries of such names are as large as they get.
pub fn long_name(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:0>width$}", width = 32 - prefix.len())
}

impl TestBroker {
    /// Registers `count` instances named [`long_name`]`(prefix, i)` straight through the
    /// broker's store, in one job: over the wire ten thousand would take minutes. They have no
    /// session; they receive broadcasts and appear in `list` like any other.
    pub fn store_instances(&self, prefix: &str, count: usize) -> Vec<String> {
        use claude_ipc::domain::{InstanceName, Timestamp};
        use claude_ipc::store::{Durability, StoreError};
        let names: Vec<String> = (0..count).map(|i| long_name(prefix, i)).collect();
        let now = Timestamp::new(self.clock.now());
        let to_store = names.clone();
        self.block_on(self.broker().store().write(Durability::Flushed, move |tx| {
            for name in &to_store {
                tx.upsert_instance(&InstanceName::parse(name).expect("a valid name"), now)?;
            }
            Ok::<_, StoreError>(())
        }))
        .expect("instances stored");
        names
    }
}

impl McpProcess {
    /// Sends a JSON-RPC notification (no reply comes), such as `notifications/cancelled`.
    pub fn notify(&mut self, method: &str, params: Value) {
        self.write(&json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }
}

/// A real `sqlite3` shell holding `BEGIN IMMEDIATE` on a database, as an operator might.
pub struct SqliteLock {
    child: Child,
    stdin: std::process::ChildStdin,
}

impl SqliteLock {
    /// Takes the write lock and returns once `sqlite3` holds it, or `None` (saying why) when
    /// the `sqlite3` shell is not installed (`apt-get install -y sqlite3`).
    pub fn hold(db: &Path) -> Option<SqliteLock> {
        let Ok(mut child) = Command::new("sqlite3")
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
        else {
            eprintln!("note: the sqlite3 shell is not installed (apt-get install -y sqlite3); this test is skipped");
            return None;
        };
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"BEGIN IMMEDIATE;\nSELECT 'locked';\n")
            .unwrap();
        stdin.flush().unwrap();
        let mut said = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut said)
            .unwrap();
        assert_eq!(said.trim(), "locked", "sqlite3 did not take the lock");
        Some(SqliteLock { child, stdin })
    }

    /// Commits and waits for `sqlite3` to exit.
    pub fn release(mut self) {
        self.stdin.write_all(b"COMMIT;\n.quit\n").unwrap();
        self.stdin.flush().unwrap();
        self.child.wait().unwrap();
    }
}

/// Runs `claude-ipc serve` to completion; fails if it is still running after `TIMEOUT`,
/// which would mean it started instead of refusing.
pub fn serve_expecting_refusal(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(binary())
        .arg("serve")
        .args(args)
        .env_remove("IPC_SHARED_SECRET")
        .env_remove("IPC_ADDR")
        .env_remove("IPC_DATA_DIR")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn claude-ipc serve");
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "the broker started instead of refusing: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success(), "a refusal must exit non-zero");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("listening"),
        "it listened before refusing: {stderr}"
    );
    output
}

/// A local user created for one test and removed afterwards, even if the test fails.
pub struct LocalUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl LocalUser {
    /// Creates `name` (removing a leftover of that name first). `useradd` fails while another
    /// test holds the password file's lock, so it is retried for a few seconds.
    pub fn create(name: &str) -> LocalUser {
        let _ = Command::new("userdel").arg(name).output();
        let mut made = None;
        for _ in 0..50 {
            let attempt = Command::new("useradd")
                .args(["--no-create-home", "--shell", "/usr/sbin/nologin", name])
                .output()
                .expect("run useradd");
            if attempt.status.success() {
                made = Some(attempt);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            made = Some(attempt);
        }
        let made = made.unwrap();
        assert!(made.status.success(), "useradd {name}: {made:?}");
        let id = |flag: &str| -> u32 {
            let output = Command::new("id").args([flag, name]).output().unwrap();
            String::from_utf8(output.stdout)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        LocalUser {
            name: name.to_owned(),
            uid: id("-u"),
            gid: id("-g"),
        }
    }
}

impl Drop for LocalUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// Whether this process runs as root, the only user that can create a second local user.
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl TestBroker {
    /// Registers `name` asking to take it over (`takeover: true`), as a test that means to
    /// replace a session still using the name does; returns the new session token.
    pub fn take_over(&self, name: &str) -> String {
        let secret = self.config.shared_secret.clone();
        self.client()
            .register_with(name, secret.as_deref(), true)
            .expect("register with takeover")
            .session_token
    }
}

/// The Python the tests run their small fake brokers and attackers with.
pub const PYTHON3: &str = "/usr/bin/python3";

/// Whether `PYTHON3` is missing; if so, says which test cannot run without it.
pub fn python3_missing(what: &str) -> bool {
    if Path::new(PYTHON3).exists() {
        return false;
    }
    println!("SKIPPED: {what} runs a small program with {PYTHON3}; install python3");
    true
}

impl McpProcess {
    /// SIGTERM, as Claude Code stops a server it no longer needs, and waits for the exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill has no memory effects; the pid is our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("reap")
    }
}

impl TestBroker {
    /// The id of `name`'s live session, as the broker keys its open waits.
    pub fn session_id(&self, name: &str) -> claude_ipc::store::queries::SessionId {
        let id = self
            .sql()
            .query_row(
                "SELECT id FROM sessions WHERE instance_name = ?1 AND revoked_at IS NULL",
                [name],
                |row| row.get(0),
            )
            .unwrap_or_else(|e| panic!("no live session for {name}: {e}"));
        claude_ipc::store::queries::SessionId(id)
    }

    /// Whether `name`'s live session has a long-poll listening for its doorbell now, as the
    /// broker's own registry of open waits says.
    pub fn is_waiting_for_mail(&self, name: &str) -> bool {
        self.broker().is_waiting_for_mail(self.session_id(name))
    }

    /// Returns once `name`'s session has a long-poll listening for its doorbell, so mail
    /// committed from now on must answer it; fails the test after [`TIMEOUT`].
    pub fn wait_until_waiting_for_mail(&self, name: &str) {
        let session_id = self.session_id(name);
        let broker = self.broker();
        wait_until(&format!("{name} waits for mail"), || {
            broker.is_waiting_for_mail(session_id)
        });
    }
}
