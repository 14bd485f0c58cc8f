//! Secret mode cannot be switched off by accident: a data directory protected by a shared
//! secret refuses a broker without it (or with another), `serve --reset-secret` changes it on
//! purpose, sessions of one mode do not outlive it, and clients holding the secret refuse a
//! broker in open mode or one serving another data directory. Real binary, real data dirs.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use claude_ipc::client::Client;
use common::{binary, cli_with_env, free_addr, wait_until, McpProcess, TestBroker, TIMEOUT};
use serde_json::json;

const SECRET: &str = "correct-horse-battery-staple-7f3a9c";
const OTHER: &str = "another-secret-entirely-51d0e2";

/// `claude-ipc serve` on port 0 with exactly the environment given (no secret unless given),
/// every stderr line kept, including those written before it listens.
struct Serve {
    child: Child,
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

/// Spawns `serve` on `data` with `env` and `args`: `Ok` once it listens, `Err` with its
/// output once it exited instead.
fn serve(data: &Path, env: &[(&str, &str)], args: &[&str]) -> Result<Serve, Output> {
    let mut command = Command::new(binary());
    command
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(args)
        .env_remove("IPC_SHARED_SECRET")
        .env_remove("IPC_ADDR")
        .env_remove("IPC_DATA_DIR")
        .env_remove("IPC_SOCKET")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    #[allow(clippy::zombie_processes)] // reaped by Drop, or below when it exits
    let mut child = command.spawn().expect("spawn claude-ipc serve");
    let log = Arc::new(Mutex::new(Vec::new()));
    let lines = log.clone();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    });
    let started = Instant::now();
    loop {
        let addr = log.lock().unwrap().iter().find_map(|line| {
            let addr = line.split("addr=").nth(1)?;
            Some(addr.split_whitespace().next()?.to_owned())
        });
        if let Some(addr) = addr {
            return Ok(Serve { child, addr, log });
        }
        if let Some(status) = child.try_wait().unwrap() {
            reader.join().unwrap();
            let stderr = log.lock().unwrap().join("\n").into_bytes();
            return Err(Output {
                status,
                stdout: Vec::new(),
                stderr,
            });
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "serve neither started nor exited"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn started(data: &Path, env: &[(&str, &str)], args: &[&str]) -> Serve {
    serve(data, env, args).unwrap_or_else(|output| {
        panic!(
            "the broker did not start: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn refused(data: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let Err(output) = serve(data, env, args) else {
        panic!("the broker started where it must refuse");
    };
    assert!(!output.status.success(), "a refusal exits non-zero");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

impl Serve {
    fn client(&self) -> Client {
        Client::connect(&self.addr, TIMEOUT).expect("client connects")
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM and a clean exit.
    fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(self.child.wait().unwrap().success());
        self.log()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sql_count(data: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(data.join("ipc.db")).unwrap();
    conn.query_row(sql, [], |row| row.get(0)).unwrap()
}

fn pending_mail(data: &Path) -> i64 {
    sql_count(data, "SELECT count(*) FROM messages")
}

fn active_sessions(data: &Path) -> i64 {
    sql_count(
        data,
        "SELECT count(*) FROM sessions WHERE revoked_at IS NULL",
    )
}

/// A data directory protected by [`SECRET`], with one message for bob waiting in it.
fn protected_with_mail(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    let broker = started(&data, &[("IPC_SHARED_SECRET", SECRET)], &[]);
    let mut client = broker.client();
    let alice = client
        .register("alice", Some(SECRET))
        .unwrap()
        .session_token;
    client
        .send(&alice, "bob", "kept through the refusal", None, None)
        .unwrap();
    broker.stop();
    data
}

/// The refused start changed nothing: the mail is there and the right secret reads it.
fn mail_survives_a_correct_restart(data: &Path) {
    assert_eq!(pending_mail(data), 1);
    let broker = started(data, &[("IPC_SHARED_SECRET", SECRET)], &[]);
    let mut client = broker.client();
    let bob = client.register("bob", Some(SECRET)).unwrap().session_token;
    let checked = client.check(&bob).unwrap();
    assert_eq!(checked.messages.len(), 1);
    assert_eq!(
        checked.messages[0].message.content,
        "kept through the refusal"
    );
}

#[test]
fn a_protected_directory_refuses_a_broker_without_the_secret_and_keeps_its_mail() {
    let dir = tempfile::tempdir().unwrap();
    let data = protected_with_mail(dir.path());
    let said = refused(&data, &[], &[]);
    let expected = format!(
        "refusing to start: the data directory {} is protected by a shared secret, and \
         IPC_SHARED_SECRET is not set. Set the same secret, or run 'claude-ipc serve \
         --reset-secret' once",
        data.display()
    );
    assert!(said.contains(&expected), "{said}");
    assert!(said.contains("that ends every session"), "{said}");
    assert!(
        !said.contains("listening"),
        "it listened before refusing: {said}"
    );
    mail_survives_a_correct_restart(&data);
}

#[test]
fn a_protected_directory_refuses_a_broker_with_another_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = protected_with_mail(dir.path());
    let said = refused(&data, &[("IPC_SHARED_SECRET", OTHER)], &[]);
    let expected = format!(
        "the data directory {} is protected by a shared secret, and IPC_SHARED_SECRET does \
         not match it",
        data.display()
    );
    assert!(said.contains(&expected), "{said}");
    assert!(!said.contains(OTHER), "the secret is never printed: {said}");
    mail_survives_a_correct_restart(&data);
}

#[test]
fn reset_secret_changes_the_directory_both_ways_and_ends_every_session() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = started(&data, &[("IPC_SHARED_SECRET", SECRET)], &[]);
    let old = broker
        .client()
        .register("alice", Some(SECRET))
        .unwrap()
        .session_token;
    broker.stop();
    // A start with the directory's own secret changes nothing: the session still works.
    let broker = started(&data, &[("IPC_SHARED_SECRET", SECRET)], &[]);
    assert!(broker.client().check(&old).is_ok());
    assert!(!broker.log().contains("sessions_ended"), "{}", broker.log());
    broker.stop();

    // To another secret: the old secret's session ends, the new secret is the one required.
    let broker = started(&data, &[("IPC_SHARED_SECRET", OTHER)], &["--reset-secret"]);
    assert!(
        broker.log().contains("sessions_ended=1"),
        "{}",
        broker.log()
    );
    let mut client = broker.client();
    let error = client.check(&old).unwrap_err().to_string();
    assert!(error.contains("invalid_session"), "{error}");
    let refused_old = client
        .register_static_token("bob", SECRET)
        .unwrap_err()
        .to_string();
    assert!(refused_old.contains("Invalid auth token"), "{refused_old}");
    let newer = client.register("alice", Some(OTHER)).unwrap().session_token;
    let log = broker.stop();
    assert!(!log.contains(OTHER) && !log.contains(SECRET), "{log}");
    assert!(refused(&data, &[("IPC_SHARED_SECRET", SECRET)], &[]).contains("does not match"));

    // To open mode: the directory takes a broker without a secret again, from then on.
    let broker = started(&data, &[], &["--reset-secret"]);
    assert!(
        broker.log().contains("sessions_ended=1"),
        "{}",
        broker.log()
    );
    let mut client = broker.client();
    assert_eq!(common::ping_json(&mut client)["mode"], "open");
    let error = client.check(&newer).unwrap_err().to_string();
    assert!(error.contains("invalid_session"), "{error}");
    broker.stop();
    let broker = started(&data, &[], &[]);
    assert_eq!(common::ping_json(&mut broker.client())["mode"], "open");
    broker.stop();
    assert_eq!(
        sql_count(
            &data,
            "SELECT count(*) FROM data_dir_security WHERE mode = 'open' AND verifier IS NULL"
        ),
        1
    );
}

#[test]
fn a_session_registered_in_open_mode_stops_working_after_a_start_with_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = started(&data, &[], &[]);
    // A stranger took `bob` while the broker ran without a secret.
    let stranger = common::legacy_register(&broker.addr, "bob");
    assert_eq!(
        common::legacy_check(&broker.addr, &stranger)["status"],
        "ok"
    );
    broker.stop();

    let broker = started(&data, &[("IPC_SHARED_SECRET", SECRET)], &[]);
    let log = broker.log();
    assert!(log.contains("now protected by the shared secret"), "{log}");
    assert!(log.contains("sessions_ended=1"), "{log}");
    let reply = common::legacy_check(&broker.addr, &stranger);
    assert_eq!(
        reply["message"], "Invalid or missing session token",
        "{reply}"
    );
    assert_eq!(active_sessions(&data), 0);
    // The real bob registers with the secret; the stranger's token stays dead after restarts.
    let mut client = broker.client();
    client.register("bob", Some(SECRET)).unwrap();
    broker.stop();
    let broker = started(&data, &[("IPC_SHARED_SECRET", SECRET)], &[]);
    let reply = common::legacy_check(&broker.addr, &stranger);
    assert_eq!(
        reply["message"], "Invalid or missing session token",
        "{reply}"
    );
}

#[test]
fn clients_holding_the_secret_refuse_a_broker_in_open_mode_before_registering() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let session_file = dir.path().join("session");
    let secret = [("IPC_SHARED_SECRET", SECRET)];

    let output = cli_with_env(
        &broker.addr(),
        &session_file,
        &["register", "alice"],
        &secret,
    );
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{said}");
    let expected = format!(
        "the broker on {} runs without a shared secret (open mode), although this client has one",
        broker.addr()
    );
    assert!(said.contains(&expected), "{said}");
    assert!(said.contains("[broker_open_mode]"), "{said}");
    assert!(
        said.contains("stop it and start it with the secret"),
        "{said}"
    );
    assert_eq!(broker.count("SELECT count(*) FROM instances"), 0);
    assert_eq!(broker.count("SELECT count(*) FROM sessions"), 0);

    // With a session from open mode in the file, a send with the secret still sends nothing.
    let output = cli_with_env(&broker.addr(), &session_file, &["register", "carol"], &[]);
    assert!(output.status.success());
    let output = cli_with_env(
        &broker.addr(),
        &session_file,
        &["send", "bob", "hi"],
        &secret,
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("[broker_open_mode]"));
    assert_eq!(broker.count("SELECT count(*) FROM messages"), 0);

    let mut mcp = McpProcess::start(&broker.addr(), &broker.data_dir(), &secret, &[]);
    let text = mcp.error("register", json!({"instance_id": "dave"}));
    assert!(text.contains("broker_open_mode"), "{text}");
    assert!(text.contains("runs without a shared secret"), "{text}");
    assert!(mcp.log().contains("refusing the broker"), "{}", mcp.log());
    assert_eq!(
        broker.count("SELECT count(*) FROM instances WHERE name = 'dave'"),
        0
    );
    assert_eq!(
        broker.count("SELECT count(*) FROM sessions"),
        1,
        "carol's only"
    );
}

#[test]
fn the_hook_and_watch_holding_the_secret_send_no_session_token_to_an_open_mode_broker() {
    // The wall clock, so that a use of carol's session would move its last_used_at.
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let session_file = dir.path().join("session");
    let addr = broker.addr();
    assert!(
        cli_with_env(&addr, &session_file, &["register", "carol"], &[])
            .status
            .success()
    );
    let alice = broker.register("alice");
    broker
        .client()
        .send(&alice, "carol", "waiting for carol", None, None)
        .unwrap();
    let hook = |env: &[(&str, &str)]| {
        let output = cli_with_env(&addr, &session_file, &["hook"], env);
        assert!(output.status.success(), "a hook never fails");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert!(
        hook(&[]).contains("1 new message"),
        "without a secret it asks"
    );
    let carol_last_used = || -> String {
        broker
            .sql()
            .query_row(
                "SELECT last_used_at FROM sessions WHERE instance_name = 'carol'",
                [],
                |row| row.get(0),
            )
            .unwrap()
    };
    let used_before = carol_last_used();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(hook(&[("IPC_SHARED_SECRET", SECRET)]), "");
    assert_eq!(
        carol_last_used(),
        used_before,
        "carol's session was not used"
    );

    let output = cli_with_env(
        &addr,
        &session_file,
        &["watch"],
        &[("IPC_SHARED_SECRET", SECRET)],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("[broker_open_mode]"));
    assert_eq!(
        broker.count("SELECT count(*) FROM messages WHERE delivered_at IS NOT NULL"),
        0
    );
}

#[test]
fn cli_autostart_without_the_secret_on_a_protected_directory_prints_the_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let data = protected_with_mail(dir.path());
    let addr = free_addr();
    let session_file = dir.path().join("session");
    let data_text = data.to_str().unwrap();
    let autostart = [("IPC_AUTOSTART", "1"), ("IPC_DATA_DIR", data_text)];

    let output = cli_with_env(&addr, &session_file, &["register", "mallory"], &autostart);
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{said}");
    let expected = format!(
        "refusing to start: the data directory {} is protected by a shared secret, and \
         IPC_SHARED_SECRET is not set",
        data.display()
    );
    assert!(said.contains(&expected), "{said}");
    assert!(
        Client::connect(&addr, Duration::from_millis(500)).is_err(),
        "no broker runs"
    );
    let pid = said
        .split("background (pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .expect("the started broker's pid");
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "{said}");
    assert!(!session_file.exists());

    // With the secret, autostart starts the broker with it.
    let mut with_secret = autostart.to_vec();
    with_secret.push(("IPC_SHARED_SECRET", SECRET));
    let output = cli_with_env(&addr, &session_file, &["register", "bob"], &with_secret);
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    let pid = common::lock_holder(&data).expect("a broker holds the directory");
    let mode = Client::connect(&addr, TIMEOUT)
        .map(|mut client| common::ping_json(&mut client)["mode"].clone());
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(output.status.success(), "{said}");
    assert_eq!(mode.unwrap(), "secret", "{said}");
}

#[test]
fn an_mcp_server_without_the_secret_is_told_why_it_cannot_host_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let data = protected_with_mail(dir.path());
    let addr = free_addr();
    let mut mcp = McpProcess::start(&addr, &data, &[], &[]);
    let text = mcp.error("register", json!({"instance_id": "mallory"}));
    assert!(text.contains("is protected by a shared secret"), "{text}");
    assert!(text.contains("data_dir_protected"), "{text}");
    // The log line is written by the server's own thread; it may land just after the reply.
    wait_until("the MCP server logs why it cannot host", || {
        mcp.log().contains("IPC_SHARED_SECRET is not set")
    });
    assert!(Client::connect(&addr, Duration::from_millis(500)).is_err());
    drop(mcp);
    mail_survives_a_correct_restart(&data);
}

#[test]
fn an_mcp_server_with_another_data_directory_than_the_brokers_refuses_its_tools() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = started(&data, &[], &[]);
    let elsewhere = dir.path().join("elsewhere");
    let mut mcp = McpProcess::start(&broker.addr, &elsewhere, &[], &[]);
    let text = mcp.error("register", json!({"instance_id": "alice"}));
    assert!(text.contains("data_dir_mismatch"), "{text}");
    let canonical = std::fs::canonicalize(&data).unwrap();
    assert!(text.contains(canonical.to_str().unwrap()), "{text}");
    assert!(text.contains(elsewhere.to_str().unwrap()), "{text}");
    assert!(text.contains("point IPC_DATA_DIR at"), "{text}");
    assert_eq!(sql_count(&data, "SELECT count(*) FROM sessions"), 0);

    // The same directory through a link is the same directory.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&data, &link).unwrap();
    let mut same = McpProcess::start(&broker.addr, &link, &[], &[]);
    same.ok("register", json!({"instance_id": "alice"}));

    // Given no data directory at all (an empty IPC_DATA_DIR counts as unset), it uses its own
    // user's broker wherever that keeps its data, as the CLI does.
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let env = [("HOME", home.to_str().unwrap())];
    let mut unconfigured = McpProcess::start(&broker.addr, Path::new(""), &env, &[]);
    unconfigured.ok("register", json!({"instance_id": "carol"}));

    // The CLI compares too when IPC_DATA_DIR is set explicitly.
    let session_file = dir.path().join("session");
    let env = [("IPC_DATA_DIR", elsewhere.to_str().unwrap())];
    let output = cli_with_env(&broker.addr, &session_file, &["register", "bob"], &env);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("[data_dir_mismatch]"));
    // alice's (through the link) and carol's; none for bob.
    assert_eq!(sql_count(&data, "SELECT count(*) FROM sessions"), 2);
}

#[test]
fn the_database_shows_the_mode_but_holds_no_byte_of_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = protected_with_mail(dir.path());
    let conn = rusqlite::Connection::open(data.join("ipc.db")).unwrap();
    let (mode, salt, verifier): (String, String, String) = conn
        .query_row(
            "SELECT mode, salt, verifier FROM data_dir_security",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .unwrap();
    assert_eq!(mode, "secret");
    assert_eq!((salt.len(), verifier.len()), (32, 64));
    drop(conn);
    let hex: String = SECRET.bytes().map(|b| format!("{b:02x}")).collect();
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        for needle in [SECRET.as_bytes(), hex.as_bytes()] {
            assert!(
                !bytes.windows(needle.len()).any(|window| window == needle),
                "{} holds the secret",
                path.display()
            );
        }
    }
}
