//! `claude-ipc serve` as an operator runs it: what it logs at start, how it reports
//! authentication failures, that SIGINT stops it as cleanly as SIGTERM, and that it raises its
//! open-file limit to fit its connection cap.
use crate::common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

/// Collects log lines up to and including the first that contains `wanted`; fails the test
/// if none does within [`TIMEOUT`].
fn lines_until(log: &std::sync::mpsc::Receiver<String>, wanted: &str) -> Vec<String> {
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = log
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no log line with `{wanted}` came; it said: {lines:#?}"));
        let found = line.contains(wanted);
        lines.push(line);
        if found {
            return lines;
        }
    }
}

#[test]
fn open_mode_start_log_names_everything_and_warns_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::spawn(&data, &[]);
    // The warning's last line names the variable that turns it off.
    let log = lines_until(&broker.log, "IPC_SHARED_SECRET").join("\n");
    // The listening line itself was consumed by spawn; the address it gave works.
    assert_eq!(ping_json(&mut broker.client())["mode"], "open");
    assert!(log.contains("OPEN MODE"), "{log}");
    assert!(log.contains("IPC_SHARED_SECRET"), "{log}");
    assert!(
        log.contains("WARN"),
        "open mode is logged as a warning: {log}"
    );
}

#[test]
fn the_listening_line_has_address_directory_database_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let output = {
        let mut child = Command::new(binary())
            .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .env("IPC_SHARED_SECRET", "s3cret")
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (lines, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
                let _ = lines.send(line.unwrap());
            }
        });
        // SIGINT once it is up: the signal is handled from the moment it listens.
        let mut said = lines_until(&log, "broker listening");
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "SIGINT stops the broker cleanly: {status}"
        );
        // The reader ends at the end of the log, once the broker has exited.
        said.extend(log.iter());
        said.join("\n")
    };
    let listening = output
        .lines()
        .find(|l| l.contains("listening"))
        .unwrap_or_else(|| panic!("no listening line: {output}"));
    assert!(listening.contains("addr=127.0.0.1:"), "{listening}");
    assert!(
        listening.contains(&format!("data_dir={}", data.display())),
        "{listening}"
    );
    assert!(
        listening.contains(&format!("database={}", data.join("ipc.db").display())),
        "{listening}"
    );
    assert!(listening.contains(claude_ipc::VERSION), "{listening}");
    assert!(output.contains("shared-secret mode"), "{output}");
    assert!(!output.contains("OPEN MODE"), "{output}");
    assert!(!output.contains("s3cret"), "the secret is never logged");
    assert!(output.contains("shutting down"), "{output}");
    assert!(output.contains("database closed"), "{output}");
}

#[test]
fn authentication_failures_are_logged_at_warn_with_name_and_peer() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::spawn_with_env(
        &dir.path().join("data"),
        &[],
        &[("IPC_SHARED_SECRET", "s3cret")],
    );
    let reply = legacy(
        &broker.addr,
        &json!({"action": "register", "instance_id": "mallory", "auth_token": "0".repeat(64)}),
    );
    assert_eq!(reply["message"], "Invalid auth token");
    let log = lines_until(&broker.log, "authentication failed").join("\n");
    let line = log.lines().last().unwrap();
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("mallory"), "{line}");
    assert!(line.contains("peer=\"127.0.0.1:"), "{line}");
    assert!(
        !log.contains(&"0".repeat(64)),
        "the offered token is not logged"
    );
}

/// Starts `serve` under the given open-file limits (soft:hard), waits for its start line, reads
/// the soft limit it runs with from /proc, stops it, and returns that limit and its log.
fn serve_under_open_file_limit(soft_hard: &str, extra_args: &[&str]) -> (u64, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("prlimit")
        .arg(format!("--nofile={soft_hard}"))
        .arg(binary())
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(extra_args)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let mut log = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains("broker listening") {
            break;
        }
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap()
        .parse()
        .unwrap();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    (soft, log)
}

#[test]
fn serve_raises_its_open_file_limit_and_warns_when_the_cap_needs_more() {
    let (soft, log) = serve_under_open_file_limit("256:4096", &["--max-connections", "1000"]);
    assert_eq!(soft, 4096, "the soft limit is raised to the hard limit");
    assert!(!log.contains("open-file limit is below"), "{log}");

    let (soft, log) = serve_under_open_file_limit("256:512", &["--max-connections", "1024"]);
    assert_eq!(soft, 512);
    let warning = log
        .lines()
        .find(|l| l.contains("open-file limit is below"))
        .unwrap_or_else(|| panic!("no warning: {log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains("limit=512") && warning.contains("needed=1088"),
        "{warning}"
    );
}

/// Runs `serve` and returns how it ended and what it said. One that is still running after
/// a few seconds (it started, wrongly) is killed, so the test fails instead of hanging.
fn serve_and_wait(addr: &str, data: &std::path::Path) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(binary())
        .args(["serve", "--addr", addr, "--data-dir"])
        .arg(data)
        .env_remove("IPC_SHARED_SECRET")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run serve");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let output = child.wait_with_output().expect("serve output");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_second_broker_on_the_same_data_directory_is_refused_with_the_first_ones_pid() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = BrokerProcess::spawn(&data, &[]);
    let (status, said) = serve_and_wait("127.0.0.1:0", &data);
    assert!(!status.success(), "a second broker must not start: {said}");
    let expected = format!(
        "another broker (pid {}) already serves {}; stop it, or use another --data-dir",
        first.child.id(),
        data.display()
    );
    assert!(said.contains(&expected), "{said}");
    assert_eq!(ping_json(&mut first.client())["status"], "ok");
}

#[test]
fn a_broker_on_a_used_port_says_so_and_how_to_tell() {
    let dir = tempfile::tempdir().unwrap();
    let first = BrokerProcess::spawn(&dir.path().join("one"), &[]);
    let second_data = dir.path().join("two");
    let (status, said) = serve_and_wait(&first.addr, &second_data);
    assert!(!status.success(), "{said}");
    assert!(
        !second_data.join("ipc.db").exists(),
        "a broker that cannot listen leaves no new database behind"
    );
    let expected = format!(
        "{} is already in use; is another broker running? `claude-ipc ping` tells; or choose another --addr",
        first.addr
    );
    assert!(said.contains(&expected), "{said}");
}

#[test]
fn the_data_directory_is_free_again_once_its_broker_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    BrokerProcess::spawn(&data, &[]).kill_9();
    let second = BrokerProcess::spawn(&data, &[]);
    assert_eq!(ping_json(&mut second.client())["status"], "ok");
}

/// Runs `serve` on `data` until it answers, stops it with SIGTERM, and returns its whole log.
fn one_start_log(data: &std::path::Path) -> String {
    let addr = free_addr();
    let log = data.with_extension("log");
    let mut child = Command::new(binary())
        .args(["serve", "--addr", &addr, "--data-dir"])
        .arg(data)
        .env("RUST_LOG", "info")
        .env_remove("IPC_SHARED_SECRET")
        .env_remove("IPC_SOCKET")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start serve");
    wait_until("the broker answers", || {
        claude_ipc::client::Client::connect(&addr, Duration::from_millis(200)).is_ok()
    });
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn migrations_are_logged_only_on_the_start_that_applies_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = one_start_log(&data);
    assert!(
        first.contains("applied schema migrations: V1__init"),
        "{first}"
    );
    let second = one_start_log(&data);
    assert!(second.contains("claude-ipc broker listening"), "{second}");
    assert!(
        !second.to_lowercase().contains("migration"),
        "a start with nothing to migrate logged a migration line: {second}"
    );
}
