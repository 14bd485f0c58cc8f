//! Clients talk only to the real broker: a fake broker run by a second local user, on the
//! broker's TCP port or on a Unix socket path, gets not one byte from the CLI (ping, register,
//! send, check, watch, list, hook, status) or the MCP server, each of which refuses it naming that user;
//! `IPC_BROKER_USER` lets a deliberate service account through, and a broker run by the
//! client's own user keeps working.

use crate::common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const SECRET: &str = "the-shared-secret";

/// A fake broker: it records, as `got <hex>` lines on stdout, every byte any connection sends
/// it, and answers each request line as a broker in secret mode would. With `late` it accepts
/// only after a second, so a client meets a connection nobody has accepted yet.
const FAKE_BROKER: &str = r#"
import json, os, socket, sys, threading, time
kind, where, late = sys.argv[1], sys.argv[2], sys.argv[3] == "late"
if kind == "tcp":
    host, port = where.rsplit(":", 1)
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, int(port)))
else:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(where)
    os.chmod(where, 0o777)
server.listen(64)
print("listening", flush=True)
lock = threading.Lock()
def answer(line):
    if b'"ping"' in line:
        return {"status": "ok", "mode": "secret", "version": "9.9.9", "protocol": 2}
    if b'"register"' in line:
        return {"status": "ok", "session_token": "stolen", "message": "Registered"}
    return {"status": "ok", "messages": [], "message": "ok", "message_id": 1, "count": 0, "senders": []}
def serve(connection):
    pending = b""
    while True:
        data = connection.recv(65536)
        if not data:
            break
        with lock:
            print("got " + data.hex(), flush=True)
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            connection.sendall((json.dumps(answer(line)) + "\n").encode())
    connection.close()
if late:
    time.sleep(1)
while True:
    connection, _ = server.accept()
    threading.Thread(target=serve, args=(connection,), daemon=True).start()
"#;

/// The fake broker's process, killed on drop, and what it has received so far.
struct FakeBroker {
    child: Child,
    received: Arc<Mutex<Vec<u8>>>,
}

impl FakeBroker {
    /// Starts the fake as `user`, on `tcp` `host:port` or a `unix` socket path, and returns
    /// once it listens.
    fn start(user: &LocalUser, kind: &str, at: &str, late: bool) -> FakeBroker {
        let mut child = Command::new("/usr/bin/python3")
            .args([
                "-c",
                FAKE_BROKER,
                kind,
                at,
                if late { "late" } else { "now" },
            ])
            .uid(user.uid)
            .gid(user.gid)
            .current_dir("/")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the fake broker");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok);
        assert_eq!(
            first.as_deref(),
            Some("listening"),
            "the fake broker did not start"
        );
        let received = Arc::new(Mutex::new(Vec::new()));
        let record = received.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(hex) = line.strip_prefix("got ") {
                    record.lock().unwrap().extend(decode_hex(hex));
                }
            }
        });
        FakeBroker { child, received }
    }

    /// Everything received so far, after giving bytes in flight a moment to be recorded.
    fn received(&self) -> String {
        std::thread::sleep(Duration::from_millis(300));
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }

    /// Waits until the fake has received something containing `text`.
    fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let received = String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned();
            if received.contains(text) || Instant::now() > deadline {
                return received;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn decode_hex(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Whether this test can run: it needs root (to create the second user) and python3.
fn can_run(what: &str) -> bool {
    if !running_as_root() {
        println!("SKIPPED: {what} needs root to create a second local user to run a fake broker");
        return false;
    }
    if !Path::new("/usr/bin/python3").exists() {
        println!("SKIPPED: {what} runs its fake broker with /usr/bin/python3; install python3");
        return false;
    }
    true
}

/// A unique user name for this test (`tag` is the test's short tag).
fn user_name(tag: &str) -> String {
    format!("cipcown{tag}{}", std::process::id() % 100_000)
}

/// A session file as `register` would have left it, so commands that need one get as far as
/// connecting.
fn session_file(dir: &Path) -> PathBuf {
    let path = dir.join("session");
    let session = json!({"instance_id": "alice", "session_token": "alice-secret-token"});
    std::fs::write(&path, session.to_string()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The refusal every client must give for a broker run by `user` at `place`.
fn refusal(user: &LocalUser, place: &str) -> String {
    format!(
        "refusing to talk to the broker on {place}: it is run by user \"{}\" (uid {}), not by you (uid 0)",
        user.name, user.uid
    )
}

/// Runs each CLI command against the fake and checks that it is refused, naming `user`.
fn every_cli_command_is_refused(
    user: &LocalUser,
    place: &str,
    addr: &str,
    session: &Path,
    env: &[(&str, &str)],
) {
    let with_secret: Vec<(&str, &str)> = [("IPC_SHARED_SECRET", SECRET)]
        .into_iter()
        .chain(env.iter().copied())
        .collect();
    let expected = refusal(user, place);
    let way_out = format!("set IPC_BROKER_USER={}", user.name);
    for args in [
        &["ping"][..],
        &["register", "alice"],
        &["send", "bob", "the plans"],
        &["check"],
        &["watch"],
        &["list"],
    ] {
        let output = cli_with_env(addr, session, args, &with_secret);
        let said = output_text(&output);
        assert_eq!(output.status.code(), Some(3), "{args:?}: {said}");
        assert!(said.contains(&expected), "{args:?}: {said}");
        assert!(said.contains(&way_out), "{args:?}: {said}");
        assert!(!said.contains("secret mode"), "{args:?}: {said}");
    }
    let json = cli_with_env(addr, session, &["ping", "--json"], &with_secret);
    let reply: Value = serde_json::from_slice(&json.stdout)
        .unwrap_or_else(|e| panic!("ping --json printed no JSON ({e}): {}", output_text(&json)));
    assert_eq!(reply["status"], "error", "{reply}");
    assert_eq!(reply["code"], "broker_wrong_user", "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains(&expected),
        "{reply}"
    );
    let hook = cli_with_env(addr, session, &["hook"], &with_secret);
    assert!(
        hook.status.success(),
        "the hook never fails: {}",
        output_text(&hook)
    );
    assert!(hook.stdout.is_empty(), "{}", output_text(&hook));
    // The person is told on stderr, which Claude Code does not give the model.
    assert!(
        String::from_utf8_lossy(&hook.stderr).contains(&expected),
        "{}",
        output_text(&hook)
    );
}

/// The MCP server's `register` is refused the same way, as a tool error.
fn mcp_register_is_refused(user: &LocalUser, place: &str, addr: &str, env: &[(&str, &str)]) {
    let data = tempfile::tempdir().unwrap();
    let with_secret: Vec<(&str, &str)> = [("IPC_SHARED_SECRET", SECRET)]
        .into_iter()
        .chain(env.iter().copied())
        .collect();
    let mut mcp = McpProcess::start(addr, data.path(), &with_secret, &[]);
    let said = mcp.error("register", json!({"instance_id": "alice"}));
    assert!(said.contains(&refusal(user, place)), "{said}");
    assert!(
        said.contains(&format!("IPC_BROKER_USER={}", user.name)),
        "{said}"
    );
}

/// On the broker's TCP port: nothing any client would send reaches the impostor, while the
/// same fake, trusted deliberately, does receive a ping (so it was listening all along).
#[test]
fn a_fake_broker_of_another_user_on_the_port_gets_nothing_from_any_client() {
    if !can_run("the fake broker on the port") {
        return;
    }
    let user = LocalUser::create(&user_name("tcp"));
    let addr = free_addr();
    let fake = FakeBroker::start(&user, "tcp", &addr, false);
    let dir = tempfile::tempdir().unwrap();
    let session = session_file(dir.path());

    every_cli_command_is_refused(&user, &addr, &addr, &session, &[]);
    mcp_register_is_refused(&user, &addr, &addr, &[]);
    assert_eq!(fake.received(), "", "the impostor received bytes");

    let trusted = cli_with_env(
        &addr,
        &session,
        &["ping"],
        &[("IPC_BROKER_USER", &user.name)],
    );
    assert!(trusted.status.success(), "{}", output_text(&trusted));
    assert!(
        output_text(&trusted).contains("secret mode"),
        "{}",
        output_text(&trusted)
    );
    assert!(fake.wait_for("ping").contains("\"ping\""));

    let by_uid = user.uid.to_string();
    let flag = cli(&addr, &session, &["ping", "--broker-user", &by_uid]);
    assert!(flag.status.success(), "{}", output_text(&flag));
    let any = cli_with_env(&addr, &session, &["ping"], &[("IPC_BROKER_USER", "any")]);
    assert!(any.status.success(), "{}", output_text(&any));
}

/// On a Unix socket path in a directory the impostor can write: the same refusals, checked
/// with SO_PEERCRED, and again no byte sent.
#[test]
fn a_fake_broker_of_another_user_on_a_socket_path_gets_nothing_from_any_client() {
    if !can_run("the fake broker on a socket") {
        return;
    }
    let user = LocalUser::create(&user_name("sock"));
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let socket = shared.path().join("ipc.sock");
    let socket_text = socket.to_str().unwrap();
    let fake = FakeBroker::start(&user, "unix", socket_text, false);
    let dir = tempfile::tempdir().unwrap();
    let session = session_file(dir.path());
    // No broker on the address either, so nothing can pass for the fake's answers.
    let addr = free_addr();
    let place = format!("socket {socket_text}");
    let env = [("IPC_SOCKET", socket_text)];

    every_cli_command_is_refused(&user, &place, &addr, &session, &env);
    mcp_register_is_refused(&user, &place, &addr, &env);
    assert_eq!(fake.received(), "", "the impostor received bytes");

    let trusted = cli_with_env(
        &addr,
        &session,
        &["ping"],
        &[("IPC_SOCKET", socket_text), ("IPC_BROKER_USER", &user.name)],
    );
    assert!(trusted.status.success(), "{}", output_text(&trusted));
    assert!(fake.wait_for("ping").contains("\"ping\""));
}

/// A fake that has not accepted the connection yet is refused as well: the kernel already
/// knows which user's listener the connection waits on.
#[test]
fn a_fake_broker_that_has_not_accepted_yet_is_refused_too() {
    if !can_run("the slow fake broker") {
        return;
    }
    let user = LocalUser::create(&user_name("late"));
    let addr = free_addr();
    let fake = FakeBroker::start(&user, "tcp", &addr, true);
    let dir = tempfile::tempdir().unwrap();
    let session = session_file(dir.path());
    let output = cli_with_env(
        &addr,
        &session,
        &["register", "alice"],
        &[("IPC_SHARED_SECRET", SECRET)],
    );
    assert_eq!(output.status.code(), Some(3), "{}", output_text(&output));
    assert!(
        output_text(&output).contains(&refusal(&user, &addr)),
        "{}",
        output_text(&output)
    );
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(fake.received(), "", "the impostor received bytes");
}

/// The broker run by the client's own user is served as before; naming another user as the
/// broker's refuses it, and a name that is nobody is a usage error.
#[test]
fn the_own_users_broker_works_and_the_broker_user_setting_is_enforced() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("session");
    let addr = broker.addr();
    for args in [
        &["register", "alice"][..],
        &["send", "alice", "hi"],
        &["check"],
    ] {
        let output = cli(&addr, &session, args);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            output_text(&output)
        );
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let someone_else = me.wrapping_add(4_000_000).to_string();
    let refused = cli_with_env(
        &addr,
        &session,
        &["ping"],
        &[("IPC_BROKER_USER", &someone_else)],
    );
    assert_eq!(refused.status.code(), Some(3), "{}", output_text(&refused));
    assert!(
        output_text(&refused).contains("whom IPC_BROKER_USER names"),
        "{}",
        output_text(&refused)
    );
    let nobody = cli_with_env(
        &addr,
        &session,
        &["ping"],
        &[("IPC_BROKER_USER", "no-such-user-anywhere")],
    );
    assert_eq!(nobody.status.code(), Some(2), "{}", output_text(&nobody));
    assert!(
        output_text(&nobody).contains("names no user"),
        "{}",
        output_text(&nobody)
    );
}

/// `watch` that loses its broker and finds another user's in its place stops with the
/// refusal, instead of handing it the session token or waiting on it for ever.
#[test]
fn watch_stops_when_another_users_broker_takes_the_port() {
    if !can_run("the broker takeover under watch") {
        return;
    }
    let user = LocalUser::create(&user_name("watch"));
    let broker = TestBroker::start_on_wall_clock();
    let addr = broker.addr();
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("session");
    let registered = cli(&addr, &session, &["register", "alice"]);
    assert!(registered.status.success(), "{}", output_text(&registered));
    let mut watch = Command::new(binary())
        .arg("watch")
        .env("IPC_ADDR", &addr)
        .env("IPC_SESSION_FILE", &session)
        .env("IPC_AUTOSTART", "0")
        .env_remove("IPC_SOCKET")
        .env_remove("IPC_BROKER_USER")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start watch");
    let mut said = BufReader::new(watch.stderr.take().unwrap()).lines();
    let first = said.next().and_then(Result::ok).unwrap_or_default();
    assert!(first.contains("watching mail for alice"), "{first}");

    drop(broker);
    let fake = FakeBroker::start(&user, "tcp", &addr, false);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = watch.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = watch.kill();
            panic!("watch kept waiting on another user's broker");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let rest: Vec<String> = said.map_while(Result::ok).collect();
    assert_eq!(status.code(), Some(3), "{rest:#?}");
    assert!(
        rest.iter()
            .any(|line| line.contains(&refusal(&user, &addr))),
        "{rest:#?}"
    );
    assert_eq!(fake.received(), "", "the impostor received bytes");
}
