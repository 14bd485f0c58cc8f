//! The backup, restore and reset recipes of docs/OPERATIONS.md run as written (`bash -e`, the
//! stock `sqlite3`, `claude-ipc` on PATH, a temporary HOME) against a real broker, with a
//! `watch` and an MCP server running that may start brokers: the backup is private, the
//! restore brings the backed-up mail back and nobody restarts the broker in between.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::json;

/// The ```sh block of OPERATIONS.md whose first line is `# recipe: NAME`.
fn recipe(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/OPERATIONS.md");
    let markdown = std::fs::read_to_string(path).unwrap();
    let start = format!("```sh\n# recipe: {name}\n");
    let block = markdown
        .split(&start)
        .nth(1)
        .unwrap_or_else(|| panic!("no `# recipe: {name}` block in OPERATIONS.md"));
    block.split("\n```").next().unwrap().to_owned()
}

/// Runs a recipe with `bash -e`, HOME at `home` and the built binary first on PATH.
fn run_recipe(name: &str, home: &Path) -> Output {
    let bin = Path::new(binary()).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("bash")
        .args(["-euo", "pipefail", "-c", &recipe(name)])
        .env("HOME", home)
        .env("PATH", path)
        .env_remove("IPC_DATA_DIR")
        .env_remove("IPC_ADDR")
        .current_dir(home)
        .output()
        .unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Kills whatever broker still holds `data` when a test fails half-way.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(pid) = claude_ipc::server::lock::holder(&self.0) {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    }
}

#[test]
fn backup_restore_and_reset_run_as_written_with_clients_running() {
    if !Path::new("/usr/bin/sqlite3").exists() {
        println!(
            "SKIPPED: the OPERATIONS.md recipes need the stock sqlite3 shell; install sqlite3"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let data = home.join(".claude-ipc-data");
    let addr = free_addr();
    let _cleanup = Cleanup(data.clone());
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let mut broker = serve_on(&addr, &data);
    assert!(cli(&addr, &alice, &["register", "alice"]).status.success());
    assert!(cli(&addr, &bob, &["register", "bob"]).status.success());
    assert!(cli(&addr, &alice, &["send", "bob", "kept"])
        .status
        .success());
    let data_text = data.to_str().unwrap();
    let mut watch = Command::new(binary())
        .arg("watch")
        .env("IPC_ADDR", &addr)
        .env("IPC_SESSION_FILE", &alice)
        .env("IPC_DATA_DIR", &data)
        .env("IPC_AUTOSTART", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut mcp = McpProcess::start(&addr, &data, &[("IPC_AUTOSTART", "1")], &[]);
    mcp.ok("register", json!({"instance_id": "carol"}));

    let backup = run_recipe("backup", &home);
    assert!(backup.status.success(), "{}", output_text(&backup));
    assert_eq!(String::from_utf8_lossy(&backup.stdout).trim(), "ok");
    let backups = home.join("ipc-backups");
    assert_eq!(mode(&backups), 0o700);
    let copy = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "db"))
        .expect("the backup file");
    assert_eq!(mode(&copy), 0o600);

    assert!(cli(&addr, &alice, &["send", "bob", "after the backup"])
        .status
        .success());
    let restore = run_recipe("restore", &home);
    assert!(restore.status.success(), "{}", output_text(&restore));
    assert!(
        broker.wait().unwrap().success(),
        "the broker stopped cleanly"
    );
    assert!(data.join("replaced/ipc.db").exists());
    let tool = mcp.error("check", json!({}));
    assert!(tool.contains("claude-ipc stop"), "{tool}");
    let held = cli_with_env(
        &addr,
        &bob,
        &["check"],
        &[("IPC_AUTOSTART", "1"), ("IPC_DATA_DIR", data_text)],
    );
    assert_eq!(held.status.code(), Some(3), "{}", output_text(&held));
    assert!(
        claude_ipc::server::lock::holder(&data).is_none(),
        "a client restarted the broker"
    );

    // Started by hand, the restored broker has the backed-up mail and not the later one.
    let mut broker = serve_on(&addr, &data);
    let mail = cli(&addr, &bob, &["check"]);
    let mail = String::from_utf8_lossy(&mail.stdout).into_owned();
    assert!(
        mail.contains("kept") && !mail.contains("after the backup"),
        "{mail}"
    );

    let reset_sql = run_recipe("reset-sql", &home);
    assert!(reset_sql.status.success(), "{}", output_text(&reset_sql));
    assert!(broker.wait().unwrap().success());
    let reset = run_recipe("reset", &home);
    assert!(reset.status.success(), "{}", output_text(&reset));
    let moved: Vec<_> = std::fs::read_dir(&home)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".claude-ipc-data.old-"))
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(mode(&data), 0o700);
    assert!(
        data.join("stopped").exists(),
        "the new directory holds clients off"
    );
    assert!(!data.join("ipc.db").exists());
    let _ = watch.kill();
    let _ = watch.wait();
}
