//! The CLI's part in broker takeover: a mail command that finds no broker starts one in the
//! background on the same address and data directory, so a killed broker's sessions and queued
//! mail carry on. `IPC_AUTOSTART=0`, and `ping`, never start one.

use crate::common;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{binary, cli_with_env, free_addr, lock_holder, wait_until};

/// Runs a CLI command with autostart on, against `addr` and the data directory `data`.
fn cli_autostarting(addr: &str, data: &Path, session: &Path, args: &[&str]) -> Output {
    let data = data.to_str().unwrap();
    cli_with_env(
        addr,
        session,
        args,
        &[("IPC_DATA_DIR", data), ("IPC_AUTOSTART", "1")],
    )
}

/// Kills the broker holding `data`'s lock with SIGKILL, and waits until `addr` is free.
fn kill_9_holder(data: &Path, addr: &str) {
    let pid = lock_holder(data).expect("a broker holds the data directory");
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    wait_until("the killed broker stops answering", || {
        TcpStream::connect(addr).is_err()
    });
}

/// Kills whatever broker the test started in the background, even if the test fails.
struct Cleanup<'a>(&'a Path);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Some(pid) = lock_holder(self.0) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn ok(output: Output) -> String {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn a_mail_command_that_finds_no_broker_starts_one_and_takes_over_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let (data, addr) = (dir.path().join("data"), free_addr());
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let _cleanup = Cleanup(&data);

    // Nobody serves yet: register starts a broker in the background and goes on.
    let registered = cli_autostarting(&addr, &data, &alice, &["register", "alice"]);
    let stderr = String::from_utf8_lossy(&registered.stderr).into_owned();
    assert!(ok(registered).starts_with("Registered alice"));
    assert!(stderr.contains("started in the background"), "{stderr}");
    let first_host = lock_holder(&data).expect("the started broker holds the directory");
    assert!(data.join("broker.log").exists());

    ok(cli_autostarting(&addr, &data, &bob, &["register", "bob"]));
    ok(cli_autostarting(
        &addr,
        &data,
        &alice,
        &["send", "bob", "before the kill"],
    ));
    kill_9_holder(&data, &addr);

    // The next mail command finds no broker and starts another on the same directory: the
    // sessions still work and the queued mail is there.
    ok(cli_autostarting(
        &addr,
        &data,
        &alice,
        &["send", "bob", "after the kill"],
    ));
    let second_host = lock_holder(&data).expect("a new broker holds the directory");
    assert_ne!(first_host, second_host);
    let mail = ok(cli_autostarting(&addr, &data, &bob, &["check"]));
    assert!(
        mail.contains("before the kill") && mail.contains("after the kill"),
        "{mail}"
    );
    kill_9_holder(&data, &addr);
}

#[test]
fn ping_and_ipc_autostart_0_never_start_a_broker() {
    let dir = tempfile::tempdir().unwrap();
    let (data, addr) = (dir.path().join("data"), free_addr());
    let session = dir.path().join("alice");
    let off = cli_with_env(
        &addr,
        &session,
        &["register", "alice"],
        &[
            ("IPC_DATA_DIR", data.to_str().unwrap()),
            ("IPC_AUTOSTART", "0"),
        ],
    );
    assert_eq!(off.status.code(), Some(3), "{off:?}");
    let ping = Command::new(binary())
        .arg("ping")
        .env("IPC_ADDR", &addr)
        .env("IPC_DATA_DIR", &data)
        .env_remove("IPC_AUTOSTART")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(ping.code(), Some(3));
    assert!(
        !data.exists(),
        "nothing was started, so no data directory was made"
    );
}
