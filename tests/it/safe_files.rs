//! Files are written safely against a second local user: the session file is never written
//! through a link they planted, a session file that is a link, theirs, or readable by them is
//! refused; `serve --data-dir` never chmods a directory it did not create and refuses one they
//! can write; and the shared secret can come from a 0600 file (`IPC_SHARED_SECRET_FILE`) for
//! the broker, the CLI, the MCP server and a broker the CLI starts, without ever being printed.
use crate::common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::SystemTime;

use common::*;
use serde_json::json;
use sha2::{Digest, Sha256};

const SECRET: &str = "file-secret-Zq81vNw3";

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A unique, short user name for one test.
fn user_name(tag: &str) -> String {
    format!("sf{tag}{}", std::process::id() % 100000)
}

/// A file of root's that the attacker wants destroyed: its content and mtime are checked.
struct Victim {
    _dir: tempfile::TempDir,
    path: PathBuf,
    mtime: SystemTime,
}

const VICTIM_TEXT: &str = "the victim's precious file\n";

impl Victim {
    fn new() -> Victim {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("precious");
        std::fs::write(&path, VICTIM_TEXT).unwrap();
        // Old enough that any write would show as a new mtime.
        let old = SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        Victim {
            _dir: dir,
            path,
            mtime,
        }
    }

    fn assert_untouched(&self) {
        assert_eq!(std::fs::read_to_string(&self.path).unwrap(), VICTIM_TEXT);
        assert_eq!(
            std::fs::metadata(&self.path).unwrap().modified().unwrap(),
            self.mtime,
            "the victim file was written"
        );
    }
}

/// A directory like /tmp: mode 1777, owned by root.
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o1777);
    dir
}

/// Runs a small Python program as `user` and requires it to succeed.
fn as_user(user: &LocalUser, program: &str, args: &[&str]) {
    let output = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(program)
        .args(args)
        .uid(user.uid)
        .gid(user.gid)
        .output()
        .unwrap();
    assert!(output.status.success(), "attacker failed: {output:?}");
}

/// The pid the kernel handed out last: the CLI started next gets one just above it.
fn last_pid() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn skipped_without_root(why: &str) -> bool {
    if !running_as_root() {
        println!("SKIPPED: {why} needs root (a second local user)");
        return true;
    }
    python3_missing(why)
}

// ---- the session file ----

#[test]
fn register_in_a_shared_directory_never_writes_through_a_planted_link() {
    if skipped_without_root("planting links as another user") {
        return;
    }
    let broker = TestBroker::start_on_wall_clock();
    let shared = shared_dir();
    let victim = Victim::new();
    let user = LocalUser::create(&user_name("pl"));
    let session = shared.path().join("session");
    // Every temporary name the attacker can predict: `<file>.<pid>.tmp` for the pids that
    // come next, each a link to the victim's file.
    let first = last_pid() + 1;
    as_user(
        &user,
        "import os, sys\n\
         base, victim, first = sys.argv[1], sys.argv[2], int(sys.argv[3])\n\
         for pid in range(first, first + 6000):\n    os.symlink(victim, f'{base}.{pid}.tmp')\n",
        &[
            session.to_str().unwrap(),
            victim.path.to_str().unwrap(),
            &first.to_string(),
        ],
    );

    let output = cli(&broker.addr(), &session, &["register", "alice"]);
    assert!(output.status.success(), "register: {}", stderr(&output));

    victim.assert_untouched();
    let metadata = std::fs::symlink_metadata(&session).unwrap();
    assert!(
        metadata.file_type().is_file(),
        "the session is a regular file"
    );
    assert_eq!(metadata.uid(), 0, "the session file is the user's own");
    assert_eq!(mode(&session), 0o600);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&session).unwrap()).unwrap();
    assert_eq!(saved["instance_id"], "alice");
    // And the session in it works.
    let output = cli(&broker.addr(), &session, &["check"]);
    assert!(output.status.success(), "check: {}", stderr(&output));
}

#[test]
fn the_mcp_server_writes_its_session_file_past_a_link_planted_for_its_pid() {
    if skipped_without_root("planting links as another user") {
        return;
    }
    let broker = TestBroker::start_on_wall_clock();
    let shared = shared_dir();
    let victim = Victim::new();
    let user = LocalUser::create(&user_name("mp"));
    let session = shared.path().join("session");
    let env = [("IPC_SESSION_FILE", session.to_str().unwrap())];
    let mut mcp = McpProcess::start(&broker.addr(), &broker.data_dir(), &env, &[]);
    // The server's pid is in plain view in /proc before it registers.
    let predicted = format!("{}.{}.tmp", session.display(), mcp.pid());
    as_user(
        &user,
        "import os, sys\nos.symlink(sys.argv[1], sys.argv[2])\n",
        &[victim.path.to_str().unwrap(), &predicted],
    );

    mcp.ok("register", json!({"instance_id": "alice"}));
    victim.assert_untouched();
    let metadata = std::fs::symlink_metadata(&session).unwrap();
    assert!(metadata.file_type().is_file(), "{}", mcp.log());
    assert_eq!(mode(&session), 0o600);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&session).unwrap()).unwrap();
    assert_eq!(saved["instance_id"], "alice");
}

#[test]
fn a_link_planted_at_the_session_file_path_is_refused_not_followed() {
    if skipped_without_root("planting links as another user") {
        return;
    }
    let broker = TestBroker::start_on_wall_clock();
    let shared = shared_dir();
    let victim = Victim::new();
    let user = LocalUser::create(&user_name("at"));
    let session = shared.path().join("session");
    as_user(
        &user,
        "import os, sys\nos.symlink(sys.argv[1], sys.argv[2])\n",
        &[victim.path.to_str().unwrap(), session.to_str().unwrap()],
    );

    let output = cli(&broker.addr(), &session, &["register", "alice"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(text.contains("symbolic link"), "{text}");
    assert!(text.contains(session.to_str().unwrap()), "{text}");
    assert_eq!(broker.count("SELECT COUNT(*) FROM sessions"), 0);
    victim.assert_untouched();
    assert!(
        std::fs::symlink_metadata(&session)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the attacker's link is left alone, not replaced by our token"
    );
}

#[test]
fn a_directory_link_planted_on_the_session_path_is_refused() {
    if skipped_without_root("planting links as another user") {
        return;
    }
    let broker = TestBroker::start_on_wall_clock();
    let shared = shared_dir();
    let victim = Victim::new();
    let user = LocalUser::create(&user_name("dl"));
    // The attacker makes shared/cfg point into the victim's own directory, so the "session
    // file" shared/cfg/precious is the victim's file, which a rename would replace.
    let link = shared.path().join("cfg");
    as_user(
        &user,
        "import os, sys\nos.symlink(sys.argv[1], sys.argv[2])\n",
        &[
            victim.path.parent().unwrap().to_str().unwrap(),
            link.to_str().unwrap(),
        ],
    );
    let session = link.join("precious");

    let output = cli(&broker.addr(), &session, &["register", "alice"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(
        text.contains("symbolic link made by another user"),
        "{text}"
    );
    victim.assert_untouched();
    let output = cli(&broker.addr(), &session, &["check"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("symbolic link made by another user"));
}

#[test]
fn serve_refuses_a_data_dir_reached_through_another_users_link() {
    if skipped_without_root("planting links as another user") {
        return;
    }
    let shared = shared_dir();
    let private = tempfile::tempdir().unwrap();
    let user = LocalUser::create(&user_name("lk"));
    let link = shared.path().join("data");
    as_user(
        &user,
        "import os, sys\nos.symlink(sys.argv[1], sys.argv[2])\n",
        &[private.path().to_str().unwrap(), link.to_str().unwrap()],
    );
    let output = serve_expecting_refusal(&[
        "--addr",
        "127.0.0.1:0",
        "--data-dir",
        link.to_str().unwrap(),
    ]);
    let text = stderr(&output);
    assert!(
        text.contains("symbolic link made by another user"),
        "{text}"
    );
    assert_eq!(std::fs::read_dir(private.path()).unwrap().count(), 0);
}

#[test]
fn a_session_file_that_is_a_link_is_refused_on_read() {
    if skipped_without_root("planting links as another user") {
        return;
    }
    let broker = TestBroker::start_on_wall_clock();
    let private = tempfile::tempdir().unwrap();
    let real = private.path().join("session");
    let registered = cli(&broker.addr(), &real, &["register", "alice"]);
    assert!(registered.status.success(), "{}", stderr(&registered));
    // The attacker links the shared path to a session file that works: following the link
    // would act as whoever that session belongs to.
    let shared = shared_dir();
    let link = shared.path().join("session");
    let user = LocalUser::create(&user_name("rl"));
    as_user(
        &user,
        "import os, sys\nos.symlink(sys.argv[1], sys.argv[2])\n",
        &[real.to_str().unwrap(), link.to_str().unwrap()],
    );
    broker
        .client()
        .send(&broker.register("bob"), "alice", "hello", None, None)
        .unwrap();

    let output = cli(&broker.addr(), &link, &["check"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("symbolic link"),
        "{}",
        stderr(&output)
    );
    assert!(!stdout(&output).contains("hello"), "{}", stdout(&output));
}

#[test]
fn a_session_file_of_another_user_is_refused_on_read_and_write() {
    if skipped_without_root("a file owned by another user") {
        return;
    }
    let broker = TestBroker::start_on_wall_clock();
    let token = broker.register("mallory");
    let shared = shared_dir();
    let session = shared.path().join("session");
    let user = LocalUser::create(&user_name("ow"));
    // The attacker leaves a working session of their own (0600, theirs) where ours belongs:
    // a CLI that used it would send as mallory and read mallory's mail.
    let planted = json!({"instance_id": "mallory", "session_token": token}).to_string();
    as_user(
        &user,
        "import os, sys\n\
         fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o600)\n\
         os.write(fd, sys.argv[2].encode())\n",
        &[session.to_str().unwrap(), &planted],
    );

    let output = cli(&broker.addr(), &session, &["send", "bob", "as", "whom?"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(text.contains("belongs to another user"), "{text}");
    assert!(!text.contains(&token), "{text}");
    let sent = broker.count("SELECT COUNT(*) FROM messages");
    assert_eq!(sent, 0, "nothing was sent with the planted session");

    let output = cli(&broker.addr(), &session, &["register", "alice"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("belongs to another user"));
    assert_eq!(std::fs::read_to_string(&session).unwrap(), planted);
}

#[test]
fn a_session_file_others_can_read_is_refused_with_the_fix() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("session");
    let registered = cli(&broker.addr(), &session, &["register", "alice"]);
    assert!(registered.status.success(), "{}", stderr(&registered));
    let token: String =
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&session).unwrap())
            .unwrap()["session_token"]
            .as_str()
            .unwrap()
            .to_owned();
    chmod(&session, 0o644);

    let output = cli(&broker.addr(), &session, &["check"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(
        text.contains(&format!("chmod 600 {}", session.display())),
        "{text}"
    );
    assert!(!text.contains(&token), "{text}");

    chmod(&session, 0o600);
    let output = cli(&broker.addr(), &session, &["check"]);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn a_session_directory_others_can_write_without_the_sticky_bit_is_refused() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o777);
    let session = dir.path().join("session");
    let output = cli(&broker.addr(), &session, &["register", "alice"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(text.contains("no sticky bit"), "{text}");
    assert!(!session.exists(), "nothing was written there");
    assert_eq!(
        broker.count("SELECT COUNT(*) FROM sessions"),
        0,
        "refused before registering: an earlier session of the name is not replaced"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

// ---- the data directory ----

#[test]
fn serve_refuses_a_shared_data_dir_and_leaves_its_mode_alone() {
    let shared = shared_dir();
    let output = serve_expecting_refusal(&[
        "--addr",
        "127.0.0.1:0",
        "--data-dir",
        shared.path().to_str().unwrap(),
    ]);
    let text = stderr(&output);
    assert!(
        text.contains(&format!(
            "refusing to use {} as the data directory: other users can write to it (mode 1777)",
            shared.path().display()
        )),
        "{text}"
    );
    assert!(text.contains("~/.claude-ipc-data"), "{text}");
    assert_eq!(mode(shared.path()), 0o1777, "still shared, sticky bit kept");
    assert_eq!(
        std::fs::read_dir(shared.path()).unwrap().count(),
        0,
        "nothing was created in it"
    );

    // Group-writable is just as shared.
    chmod(shared.path(), 0o770);
    let output = serve_expecting_refusal(&[
        "--addr",
        "127.0.0.1:0",
        "--data-dir",
        shared.path().to_str().unwrap(),
    ]);
    assert!(
        stderr(&output).contains("(mode 770)"),
        "{}",
        stderr(&output)
    );
    assert_eq!(mode(shared.path()), 0o770);
}

#[test]
fn serve_refuses_a_data_dir_of_another_user() {
    if skipped_without_root("a directory owned by another user") {
        return;
    }
    let user = LocalUser::create(&user_name("dd"));
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
    chmod(dir.path(), 0o755);
    let output = serve_expecting_refusal(&[
        "--addr",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    let text = stderr(&output);
    assert!(
        text.contains(&format!("belongs to another user (uid {})", user.uid)),
        "{text}"
    );
    assert_eq!(mode(dir.path()), 0o755);
    assert_eq!(std::fs::metadata(dir.path()).unwrap().uid(), user.uid);
}

#[test]
fn serve_keeps_the_mode_of_an_existing_private_dir_and_creates_a_new_one_0700() {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let broker = BrokerProcess::spawn(dir.path(), &[]);
    ping_json(&mut broker.client());
    assert_eq!(
        mode(dir.path()),
        0o755,
        "an existing directory keeps its mode"
    );
    assert_eq!(
        mode(&dir.path().join("ipc.db")),
        0o600,
        "the database stays private"
    );
    drop(broker);

    let parent = tempfile::tempdir().unwrap();
    let fresh = parent.path().join("new").join("data");
    let broker = BrokerProcess::spawn(&fresh, &[]);
    ping_json(&mut broker.client());
    assert_eq!(
        mode(&fresh),
        0o700,
        "a directory the broker creates is 0700"
    );
}

// ---- the shared-secret file ----

fn secret_file(dir: &Path, text: &str, mode_bits: u32) -> PathBuf {
    let path = dir.join("secret");
    std::fs::write(&path, text).unwrap();
    chmod(&path, mode_bits);
    path
}

fn auth_token(name: &str, secret: &str) -> String {
    Sha256::digest(format!("{name}:{secret}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether the broker at `addr` runs with exactly `SECRET`: a legacy register without a
/// token is refused, one with the token of `SECRET` succeeds.
fn assert_broker_has_the_secret(addr: &str, name: &str) {
    let open = legacy(addr, &json!({"action": "register", "instance_id": name}));
    assert_eq!(
        open["status"], "error",
        "registered without the secret: {open}"
    );
    let with = legacy(
        addr,
        &json!({"action": "register", "instance_id": name,
                "auth_token": auth_token(name, SECRET)}),
    );
    assert_eq!(
        with["status"], "ok",
        "the file's secret was refused: {with}"
    );
}

#[test]
fn the_secret_file_serves_the_broker_register_and_mcp() {
    let dir = tempfile::tempdir().unwrap();
    let path = secret_file(dir.path(), &format!("{SECRET}\n"), 0o600);
    let path_text = path.to_str().unwrap();
    let data = dir.path().join("data");
    let broker =
        BrokerProcess::spawn_with_env(&data, &[], &[("IPC_SHARED_SECRET_FILE", path_text)]);
    assert_broker_has_the_secret(&broker.addr, "legacy");

    // The CLI with only the file registers; without it, it is refused.
    let session = dir.path().join("session");
    let env = [("IPC_SHARED_SECRET_FILE", path_text)];
    let output = cli_with_env(&broker.addr, &session, &["register", "alice"], &env);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!stdout(&output).contains(SECRET) && !stderr(&output).contains(SECRET));
    let output = cli(
        &broker.addr,
        &dir.path().join("other"),
        &["register", "carol"],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));

    // The MCP server with only the file registers too.
    let mut mcp = McpProcess::start(&broker.addr, &data, &env, &[]);
    let text = mcp.ok("register", json!({"instance_id": "bob"}));
    assert!(text.contains("bob"), "{text}");
    assert!(!mcp.log().contains(SECRET));
    drop(mcp);
    let mut without = McpProcess::start(&broker.addr, &data, &[], &[]);
    let refused = without.error("register", json!({"instance_id": "dave"}));
    assert!(!refused.is_empty());
}

#[test]
fn a_broker_the_mcp_server_hosts_reads_the_same_secret_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = secret_file(dir.path(), &format!("{SECRET}\n"), 0o600);
    let addr = free_addr();
    let env = [("IPC_SHARED_SECRET_FILE", path.to_str().unwrap())];
    let mut mcp = McpProcess::start(&addr, &dir.path().join("data"), &env, &[]);
    mcp.ok("register", json!({"instance_id": "alice"}));
    assert_broker_has_the_secret(&addr, "legacy");
    assert!(!mcp.log().contains(SECRET));
}

#[test]
fn serve_secret_file_flag_reads_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = secret_file(dir.path(), &format!("{SECRET}\r\n"), 0o400);
    let broker = BrokerProcess::spawn(
        &dir.path().join("data"),
        &["--secret-file", path.to_str().unwrap()],
    );
    assert_broker_has_the_secret(&broker.addr, "flagged");
}

#[test]
fn a_secret_file_others_can_read_is_refused_everywhere_without_printing_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = secret_file(dir.path(), &format!("{SECRET}\n"), 0o644);
    let path_text = path.to_str().unwrap();
    let fix = format!("chmod 600 {path_text}");

    let output = serve_expecting_refusal(&[
        "--addr",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
        "--secret-file",
        path_text,
    ]);
    let text = format!("{}{}", stderr(&output), stdout(&output));
    assert!(text.contains(&fix), "{text}");
    assert!(!text.contains(SECRET), "{text}");

    let broker = TestBroker::start_on_wall_clock();
    let env = [("IPC_SHARED_SECRET_FILE", path_text)];
    let output = cli_with_env(
        &broker.addr(),
        &dir.path().join("s"),
        &["register", "a"],
        &env,
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains(&fix), "{}", stderr(&output));
    assert!(!stderr(&output).contains(SECRET) && !stdout(&output).contains(SECRET));
    assert!(!dir.path().join("s").exists(), "nothing registered");

    let output = Command::new(binary())
        .arg("mcp")
        .env("IPC_ADDR", broker.addr())
        .env("IPC_DATA_DIR", dir.path().join("data"))
        .env("IPC_SHARED_SECRET_FILE", path_text)
        .env_remove("IPC_SHARED_SECRET")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success(), "the MCP server started anyway");
    assert!(stderr(&output).contains(&fix), "{}", stderr(&output));
    assert!(!stderr(&output).contains(SECRET) && !stdout(&output).contains(SECRET));
}

#[test]
fn a_secret_file_and_variable_that_disagree_are_refused() {
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let path = secret_file(dir.path(), &format!("{SECRET}\n"), 0o600);
    let env = [
        ("IPC_SHARED_SECRET_FILE", path.to_str().unwrap()),
        ("IPC_SHARED_SECRET", "another-secret"),
    ];
    let output = cli_with_env(
        &broker.addr(),
        &dir.path().join("s"),
        &["register", "a"],
        &env,
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(text.contains("hold different secrets"), "{text}");
    assert!(
        !text.contains(SECRET) && !text.contains("another-secret"),
        "{text}"
    );
}

#[test]
fn a_secret_file_of_another_user_or_a_link_is_refused() {
    if skipped_without_root("a file owned by another user") {
        return;
    }
    let broker = TestBroker::start_on_wall_clock();
    let dir = tempfile::tempdir().unwrap();
    let path = secret_file(dir.path(), &format!("{SECRET}\n"), 0o600);
    let user = LocalUser::create(&user_name("so"));
    std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid)).unwrap();
    let env = [("IPC_SHARED_SECRET_FILE", path.to_str().unwrap())];
    let output = cli_with_env(
        &broker.addr(),
        &dir.path().join("s"),
        &["register", "a"],
        &env,
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("belongs to another user"));

    std::os::unix::fs::chown(&path, Some(0), Some(0)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let env = [("IPC_SHARED_SECRET_FILE", link.to_str().unwrap())];
    let output = cli_with_env(
        &broker.addr(),
        &dir.path().join("s"),
        &["register", "a"],
        &env,
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("symbolic link"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_broker_the_cli_starts_reads_the_same_secret_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = secret_file(dir.path(), &format!("{SECRET}\n"), 0o600);
    let data = dir.path().join("data");
    let addr = free_addr();
    let env = [
        ("IPC_SHARED_SECRET_FILE", path.to_str().unwrap()),
        ("IPC_DATA_DIR", data.to_str().unwrap()),
        ("IPC_AUTOSTART", "1"),
    ];
    let output = cli_with_env(&addr, &dir.path().join("s"), &["register", "alice"], &env);
    let started = lock_holder(&data);
    // Stop the broker this test started, whatever the outcome.
    let _stop = StopOnDrop(started);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("started in the background"));
    assert_broker_has_the_secret(&addr, "legacy");
}

/// Kills the background broker (by its pid, read from the data directory's lock) on drop.
struct StopOnDrop(Option<u32>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

#[test]
fn every_help_that_lists_the_secret_names_the_secret_file() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["mcp", "--help"],
        &["register", "--help"],
    ] {
        let output = Command::new(binary()).args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}");
        let help = stdout(&output);
        assert!(help.contains("IPC_SHARED_SECRET_FILE"), "{args:?}: {help}");
    }
    let serve = Command::new(binary())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(stdout(&serve).contains("--secret-file"));
}
