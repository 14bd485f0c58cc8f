//! A stopped broker stays stopped: `claude-ipc stop` with a `watch` and an MCP server running
//! (both allowed to start brokers) leaves nobody serving until `serve` is run by hand, which
//! clears the hold; `IPC_AUTOSTART=0` holds off each client on its own; another local user
//! cannot stop the broker.

use crate::common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use claude_ipc::server::lock;
use common::*;
use serde_json::json;

/// Longer than a few of watch's reconnect attempts (one a second): time for a client that
/// would start a broker to have done it.
const A_FEW_RETRIES: Duration = Duration::from_secs(3);

/// A `watch` allowed to start brokers (`IPC_AUTOSTART=1`), its output lines collected.
struct Watch {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Watch {
    fn start(addr: &str, data: &Path, session: &Path) -> Watch {
        let mut child = Command::new(binary())
            .arg("watch")
            .env("IPC_ADDR", addr)
            .env("IPC_SESSION_FILE", session)
            .env("IPC_DATA_DIR", data)
            .env("IPC_AUTOSTART", "1")
            .env("NO_COLOR", "1")
            .env_remove("IPC_SOCKET")
            .env_remove("IPC_SHARED_SECRET")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start watch");
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Watch {
            child,
            stdout,
            stderr,
        }
    }

    fn said(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    fn printed(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// A mail command allowed to start a broker on `data`.
fn send_autostarting(addr: &str, data: &Path, session: &Path, to: &str) -> Output {
    cli_with_env(
        addr,
        session,
        &["send", to, "hello"],
        &[
            ("IPC_AUTOSTART", "1"),
            ("IPC_DATA_DIR", data.to_str().unwrap()),
        ],
    )
}

fn stop(data: &Path) -> Output {
    cli_with_env(
        NOWHERE,
        Path::new("/nonexistent"),
        &["stop"],
        &[("IPC_DATA_DIR", data.to_str().unwrap())],
    )
}

fn nobody_serves(addr: &str, data: &Path) -> bool {
    lock::holder(data).is_none()
        && claude_ipc::client::Client::connect(addr, Duration::from_millis(200)).is_err()
}

/// Kills whatever broker still holds `data` when a test fails half-way.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(pid) = lock::holder(&self.0) {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    }
}

#[test]
fn stop_with_a_watch_and_an_mcp_server_running_keeps_the_broker_stopped_until_serve() {
    let dir = tempfile::tempdir().unwrap();
    let (data, addr) = (dir.path().join("data"), free_addr());
    let (alice, carol) = (dir.path().join("alice"), dir.path().join("carol"));
    let _cleanup = Cleanup(data.clone());
    let mut serve = serve_on(&addr, &data);
    let serve_pid = serve.id();
    assert!(cli(&addr, &alice, &["register", "alice"]).status.success());
    assert!(cli(&addr, &carol, &["register", "carol"]).status.success());
    let watch = Watch::start(&addr, &data, &alice);
    let mut mcp = McpProcess::start(&addr, &data, &[("IPC_AUTOSTART", "1")], &[]);
    mcp.ok("register", json!({"instance_id": "bob"}));

    let stopped = stop(&data);
    assert!(stopped.status.success(), "{}", output_text(&stopped));
    assert!(
        output_text(&stopped).contains(&format!("stopped the broker (pid {serve_pid})")),
        "{}",
        output_text(&stopped)
    );
    // A clean stop: serve exits 0 and the WAL was checkpointed into the database.
    assert!(serve.wait().unwrap().success());
    assert!(
        !data.join("ipc.db-wal").exists() || data.join("ipc.db-wal").metadata().unwrap().len() == 0
    );
    assert!(data.join("stopped").exists());

    // Every client that could start a broker is held off and says why.
    let refused = send_autostarting(&addr, &data, &carol, "alice");
    assert_eq!(refused.status.code(), Some(3), "{}", output_text(&refused));
    assert!(
        output_text(&refused).contains("claude-ipc stop"),
        "{}",
        output_text(&refused)
    );
    assert!(output_text(&refused).contains("`claude-ipc serve` is run by hand"));
    let tool = mcp.error(
        "send",
        json!({"to_id": "alice", "content": "while stopped"}),
    );
    assert!(tool.contains("claude-ipc stop"), "{tool}");
    std::thread::sleep(A_FEW_RETRIES);
    assert!(nobody_serves(&addr, &data), "a client restarted the broker");
    let waiting: Vec<String> = watch
        .said()
        .into_iter()
        .filter(|line| line.contains("waiting for it"))
        .collect();
    assert_eq!(waiting.len(), 1, "{:#?}", watch.said());

    // `serve` by hand clears the hold: the watch reconnects and the MCP server sends again.
    let mut serve = serve_on(&addr, &data);
    // `serve` lifts the hold once it has started, a moment after it first answers.
    wait_until("serve by hand removes the marker", || {
        !data.join("stopped").exists()
    });
    wait_until("the watch reconnects", || {
        watch
            .said()
            .iter()
            .any(|l| l.contains("connected to the broker"))
    });
    mcp.ok("send", json!({"to_id": "alice", "content": "after serve"}));
    wait_until("the watch prints the mail", || {
        watch.printed().contains("after serve")
    });
    drop(watch);
    drop(mcp);
    let _ = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status();
    assert!(serve.wait().unwrap().success());
}

#[test]
fn a_broker_hosted_by_an_mcp_server_is_stopped_too_and_not_hosted_again() {
    let dir = tempfile::tempdir().unwrap();
    let (data, addr) = (dir.path().join("data"), free_addr());
    let _cleanup = Cleanup(data.clone());
    let mut mcp = McpProcess::start(&addr, &data, &[], &[]);
    mcp.ok("register", json!({"instance_id": "bob"}));
    let host = lock_holder(&data).expect("the MCP server hosts the broker");
    assert_eq!(host, mcp.pid());

    let stopped = stop(&data);
    assert!(stopped.status.success(), "{}", output_text(&stopped));
    assert!(nobody_serves(&addr, &data));
    let tool = mcp.error("check", json!({}));
    assert!(tool.contains("claude-ipc stop"), "{tool}");
    assert!(
        nobody_serves(&addr, &data),
        "the MCP server hosted a broker again"
    );
}

#[test]
fn ipc_autostart_0_holds_off_every_client_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (data, addr) = (dir.path().join("data"), free_addr());
    let session = dir.path().join("alice");
    let _cleanup = Cleanup(data.clone());
    let off = [
        ("IPC_AUTOSTART", "0"),
        ("IPC_DATA_DIR", data.to_str().unwrap()),
    ];
    let register = cli_with_env(&addr, &session, &["register", "alice"], &off);
    assert_eq!(
        register.status.code(),
        Some(3),
        "{}",
        output_text(&register)
    );
    assert!(
        output_text(&register).contains("IPC_AUTOSTART is off"),
        "{}",
        output_text(&register)
    );
    let hook = cli_with_env(&addr, &session, &["hook"], &off);
    assert_eq!(hook.status.code(), Some(0), "{}", output_text(&hook));
    let mut mcp = McpProcess::start(&addr, &data, &off, &[]);
    let tool = mcp.error("register", json!({"instance_id": "bob"}));
    assert!(tool.contains("IPC_AUTOSTART is off"), "{tool}");
    assert!(nobody_serves(&addr, &data), "a client started a broker");
    // Without the setting the same MCP server hosts one: the refusal above was the setting's.
    let mut allowed = McpProcess::start(&addr, &data, &[("IPC_AUTOSTART", "1")], &[]);
    allowed.ok("register", json!({"instance_id": "bob"}));
    assert_eq!(lock_holder(&data), Some(allowed.pid()));
}

#[test]
fn a_watch_that_finds_no_broker_waits_and_starts_none() {
    let dir = tempfile::tempdir().unwrap();
    let (data, addr) = (dir.path().join("data"), free_addr());
    let session = dir.path().join("alice");
    let _cleanup = Cleanup(data.clone());
    let mut serve = serve_on(&addr, &data);
    assert!(cli(&addr, &session, &["register", "alice"])
        .status
        .success());
    let _ = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status();
    assert!(serve.wait().unwrap().success());
    let watch = Watch::start(&addr, &data, &session);
    std::thread::sleep(A_FEW_RETRIES);
    assert!(nobody_serves(&addr, &data), "watch started a broker");
    let said = watch.said();
    assert_eq!(said.len(), 1, "{said:#?}");
    assert!(said[0].contains("no broker answers at"), "{said:#?}");
}

#[test]
fn another_local_user_cannot_stop_the_broker() {
    if !running_as_root() || !Path::new("/usr/sbin/useradd").exists() {
        println!("SKIPPED: stopping as another user needs root to create a second local user");
        return;
    }
    let user = LocalUser::create(&format!("cipcstop{}", std::process::id() % 100_000));
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (data, addr) = (dir.path().join("data"), free_addr());
    let _cleanup = Cleanup(data.clone());
    let mut serve = serve_on(&addr, &data);
    let refused = Command::new(binary())
        .arg("stop")
        .env("IPC_DATA_DIR", &data)
        .uid(user.uid)
        .gid(user.gid)
        .current_dir("/")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{}", output_text(&refused));
    assert!(
        output_text(&refused).contains("only the broker's own user can stop it"),
        "{}",
        output_text(&refused)
    );
    assert!(!data.join("stopped").exists());
    assert!(lock::holder(&data).is_some(), "the broker stopped");
    let _ = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status();
    assert!(serve.wait().unwrap().success());
}
