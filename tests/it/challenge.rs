//! Challenge-response registration: nothing a client sends can be replayed, a proof is good
//! for one name, one challenge, one user and 30 seconds, the broker proves it knows the secret
//! before the client sends anything else, and the static token can be switched off.
//!
//! Real brokers on port 0, real sockets, the real binary as the client; the attacker's relay
//! runs as a second local user when the test runs as root.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use claude_ipc::broker::challenge::{MAX_OUTSTANDING, MAX_PER_PEER};
use claude_ipc::broker::Peer;
use claude_ipc::client::Client;
use claude_ipc::protocol::auth::{self, ProofUid};
use claude_ipc::protocol::Request;
use common::{
    cli_with_env, legacy, legacy_raw, python3_missing, running_as_root, BrokerProcess, LocalUser,
    TestBroker, TIMEOUT,
};
use serde_json::{json, Value};

const SECRET: &str = "a long shared secret for the challenge tests";

fn secret_broker() -> TestBroker {
    TestBroker::start_with(|config| config.shared_secret = Some(SECRET.into()))
}

fn own_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// `claude-ipc register NAME` with the secret, through `addr`.
fn cli_register(addr: &str, session_file: &Path, name: &str) -> std::process::Output {
    cli_with_env(
        addr,
        session_file,
        &["register", name],
        &[("IPC_SHARED_SECRET", SECRET)],
    )
}

fn session_token(session_file: &Path) -> String {
    let saved: Value = serde_json::from_slice(&std::fs::read(session_file).unwrap()).unwrap();
    saved["session_token"].as_str().unwrap().to_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A challenge asked for on `client`'s connection, with a fresh client nonce.
fn ask_challenge(client: &mut Client, name: &str) -> (Value, String) {
    let client_nonce = auth::fresh_nonce().unwrap();
    let reply = client
        .request(&json!({"action": "challenge", "instance_id": name, "client_nonce": client_nonce}))
        .unwrap();
    assert_eq!(reply["status"], "ok", "{reply}");
    (reply, client_nonce)
}

/// The register a client sends for `challenge`, with its proof made for `proof_name` and `uid`.
fn answer(name: &str, proof_name: &str, challenge: &(Value, String), uid: ProofUid) -> Value {
    let (reply, client_nonce) = challenge;
    let proof = auth::client_proof(
        SECRET,
        proof_name,
        reply["server_nonce"].as_str().unwrap(),
        client_nonce,
        uid,
    );
    json!({"action": "register", "instance_id": name, "takeover": false,
           "challenge_id": reply["challenge_id"], "auth_proof": proof})
}

fn me() -> ProofUid {
    ProofUid(Some(own_uid()))
}

/// A TCP relay to `upstream` that records every byte its clients send, as an impostor on the
/// wire would.
struct RecordingRelay {
    addr: String,
    sent: Arc<Mutex<Vec<u8>>>,
}

impl RecordingRelay {
    fn start(upstream: String) -> RecordingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let record = sent.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let server = TcpStream::connect(&upstream).unwrap();
                let (mut from_client, mut to_server) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let record = record.clone();
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 4096];
                    while let Ok(n @ 1..) = from_client.read(&mut buffer) {
                        record.lock().unwrap().extend_from_slice(&buffer[..n]);
                        if to_server.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to_server.shutdown(std::net::Shutdown::Write);
                });
                let (mut from_server, mut to_client) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_server, &mut to_client);
                    let _ = to_client.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        RecordingRelay { addr, sent }
    }

    /// What clients sent, one request per line.
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.sent.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[test]
fn a_recorded_challenge_register_replayed_later_is_refused_and_alices_session_keeps_working() {
    let broker = secret_broker();
    let relay = RecordingRelay::start(broker.addr());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alice.session");
    let registered = cli_register(&relay.addr, &file, "alice");
    assert!(registered.status.success(), "{}", stderr(&registered));
    let alice = session_token(&file);

    // The client's first ping (it checks the broker's mode) carries nothing worth replaying.
    let recorded: Vec<String> = relay
        .lines()
        .into_iter()
        .filter(|line| serde_json::from_str::<Value>(line).unwrap()["action"] != "ping")
        .collect();
    assert_eq!(
        recorded.len(),
        2,
        "a challenge and a register: {recorded:#?}"
    );
    let register: Value = serde_json::from_str(&recorded[1]).unwrap();
    assert_eq!(register["action"], "register");
    assert!(
        register.get("auth_token").is_none(),
        "no static token crosses the wire: {register}"
    );
    assert_eq!(register["takeover"], false);

    // Everything the client sent, replayed verbatim on one connection, as it came.
    let mut replay = TcpStream::connect(broker.addr()).unwrap();
    replay.set_read_timeout(Some(TIMEOUT)).unwrap();
    replay.write_all(&relay.sent.lock().unwrap()).unwrap();
    let mut replies = BufReader::new(replay);
    let mut read = || {
        let mut line = String::new();
        replies.read_line(&mut line).unwrap();
        serde_json::from_str::<Value>(&line).unwrap()
    };
    let pinged = read();
    assert_eq!(pinged["mode"], "secret", "{pinged}");
    let fresh = read();
    assert_eq!(fresh["status"], "ok", "{fresh}");
    assert!(
        fresh.get("challenge_id").is_some(),
        "a new challenge: {fresh}"
    );
    let refused = read();
    assert_eq!(refused["code"], "challenge_failed", "{refused}");
    assert!(refused.get("session_token").is_none());
    // And the register line alone, the way a legacy client sends one request.
    let alone = legacy(&broker.addr(), &register);
    assert_eq!(alone["code"], "challenge_failed", "{alone}");

    let mut client = broker.client();
    assert!(
        client.check(&alice).is_ok(),
        "alice's own session still works"
    );
    assert_eq!(
        broker.count("SELECT count(*) FROM sessions WHERE instance_name = 'alice'"),
        1,
        "no session was issued to the replays"
    );
}

#[test]
fn a_proof_made_for_one_name_does_not_register_another() {
    let broker = secret_broker();
    let mut client = broker.client();
    // A challenge for alice, answered for alice but presented as bob.
    let for_alice = ask_challenge(&mut client, "alice");
    let as_bob = client
        .request(&answer("bob", "alice", &for_alice, me()))
        .unwrap();
    assert_eq!(as_bob["code"], "challenge_failed", "{as_bob}");
    assert!(
        as_bob["message"]
            .as_str()
            .unwrap()
            .contains("issued for `alice`"),
        "{as_bob}"
    );
    // A challenge for alice whose proof was made for bob.
    let for_alice = ask_challenge(&mut client, "alice");
    let bobs_proof = client
        .request(&answer("alice", "bob", &for_alice, me()))
        .unwrap();
    assert_eq!(bobs_proof["code"], "challenge_failed", "{bobs_proof}");
    // The same steps done right register alice.
    let for_alice = ask_challenge(&mut client, "alice");
    let right = client
        .request(&answer("alice", "alice", &for_alice, me()))
        .unwrap();
    assert_eq!(right["status"], "ok", "{right}");
    assert_eq!(
        broker.count("SELECT count(*) FROM instances WHERE name = 'bob'"),
        0
    );
}

#[test]
fn an_expired_challenge_is_refused() {
    let broker = secret_broker();
    let mut client = broker.client();
    let late = ask_challenge(&mut client, "alice");
    let in_time = ask_challenge(&mut client, "alice");
    broker.clock.advance(chrono::Duration::seconds(29));
    let answered = client
        .request(&answer("alice", "alice", &in_time, me()))
        .unwrap();
    assert_eq!(answered["status"], "ok", "29 s is in time: {answered}");
    broker.clock.advance(chrono::Duration::seconds(2));
    let expired = client
        .request(&answer("alice", "alice", &late, me()))
        .unwrap();
    assert_eq!(expired["code"], "challenge_failed", "{expired}");
    assert!(
        expired["message"].as_str().unwrap().contains("expired"),
        "{expired}"
    );
}

#[test]
fn a_challenge_serves_one_register_right_or_wrong() {
    let broker = secret_broker();
    let mut client = broker.client();
    let challenge = ask_challenge(&mut client, "alice");
    let register = answer("alice", "alice", &challenge, me());
    assert_eq!(client.request(&register).unwrap()["status"], "ok");
    let again = client.request(&register).unwrap();
    assert_eq!(again["code"], "challenge_failed", "{again}");

    // A wrong answer uses the challenge up too: the right one after it is refused.
    let challenge = ask_challenge(&mut client, "alice");
    let mut wrong = answer("alice", "alice", &challenge, me());
    wrong["auth_proof"] = "0".repeat(64).into();
    let refused = client.request(&wrong).unwrap();
    assert_eq!(refused["code"], "challenge_failed", "{refused}");
    let right_too_late = client
        .request(&answer("alice", "alice", &challenge, me()))
        .unwrap();
    assert_eq!(
        right_too_late["code"], "challenge_failed",
        "{right_too_late}"
    );
    assert_eq!(
        broker.count("SELECT coalesce(sum(failures), 0) FROM auth_failures WHERE reason = 'wrong challenge proof'"),
        1,
        "a wrong proof is an authentication failure"
    );
}

#[test]
fn a_proof_bound_to_another_uid_is_refused() {
    let broker = secret_broker();
    let mut client = broker.client();
    let challenge = ask_challenge(&mut client, "alice");
    // The broker sees this connection as this process's user, and its proof covers that uid.
    assert_eq!(challenge.0["client_uid"], own_uid().to_string());
    let server_proof = auth::server_proof(
        SECRET,
        "alice",
        &challenge.1,
        challenge.0["server_nonce"].as_str().unwrap(),
        me(),
    );
    assert_eq!(challenge.0["server_proof"], server_proof);
    let other_uid = ProofUid(Some(own_uid() + 1));
    let relayed = client
        .request(&answer("alice", "alice", &challenge, other_uid))
        .unwrap();
    assert_eq!(relayed["code"], "challenge_failed", "{relayed}");
    let unknown_uid = ask_challenge(&mut client, "alice");
    let refused = client
        .request(&answer("alice", "alice", &unknown_uid, ProofUid(None)))
        .unwrap();
    assert_eq!(
        refused["code"], "challenge_failed",
        "the `-` marker is not a way around it"
    );
    let challenge = ask_challenge(&mut client, "alice");
    let own = client
        .request(&answer("alice", "alice", &challenge, me()))
        .unwrap();
    assert_eq!(own["status"], "ok", "{own}");
}

#[test]
fn wrong_proofs_are_throttled_like_wrong_static_tokens() {
    let broker = TestBroker::start_with(|config| {
        config.shared_secret = Some(SECRET.into());
        config.limits.auth_failure_limit = 3;
    });
    let mut client = broker.client();
    for _ in 0..3 {
        let challenge = ask_challenge(&mut client, "alice");
        let mut wrong = answer("alice", "alice", &challenge, me());
        wrong["auth_proof"] = auth::client_proof("a guess", "alice", "x", "y", me()).into();
        assert_eq!(client.request(&wrong).unwrap()["code"], "challenge_failed");
    }
    let challenge = ask_challenge(&mut client, "alice");
    let right = client
        .request(&answer("alice", "alice", &challenge, me()))
        .unwrap();
    assert_eq!(right["code"], "auth_throttled", "{right}");
}

#[test]
fn with_no_static_token_a_legacy_register_is_refused_and_the_cli_still_registers() {
    let broker = TestBroker::start_with(|config| {
        config.shared_secret = Some(SECRET.into());
        config.limits.static_token_accepted = false;
    });
    let legacy_register = json!({"action": "register", "instance_id": "alice",
                                 "auth_token": auth::expected_auth_token("alice", SECRET)});
    let refused = legacy(&broker.addr(), &legacy_register);
    assert_eq!(refused["code"], "static_token_refused", "{refused}");
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("challenge-response"), "{message}");
    assert!(
        message.contains("--no-static-token"),
        "says how to turn it back on: {message}"
    );
    let without = legacy(
        &broker.addr(),
        &json!({"action": "register", "instance_id": "alice"}),
    );
    assert_eq!(without["code"], "static_token_refused", "{without}");
    assert_eq!(
        common::ping_json(&mut broker.client())["static_token"],
        "refused"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alice.session");
    let registered = cli_register(&broker.addr(), &file, "alice");
    assert!(registered.status.success(), "{}", stderr(&registered));
    assert!(broker.client().check(&session_token(&file)).is_ok());
}

#[test]
fn the_static_token_is_accepted_by_default_and_ping_says_so() {
    let broker = secret_broker();
    let registered = legacy(
        &broker.addr(),
        &json!({"action": "register", "instance_id": "alice",
                "auth_token": auth::expected_auth_token("alice", SECRET)}),
    );
    assert_eq!(registered["status"], "ok", "{registered}");
    assert_eq!(
        common::ping_json(&mut broker.client())["static_token"],
        "accepted"
    );
    let open = TestBroker::start();
    assert!(common::ping_json(&mut open.client())
        .get("static_token")
        .is_none());
}

#[test]
fn in_open_mode_a_challenge_is_refused_and_the_client_with_a_secret_does_not_register() {
    let broker = TestBroker::start();
    let mut client = broker.client();
    let reply = client
        .request(&json!({"action": "challenge", "instance_id": "alice",
                         "client_nonce": auth::fresh_nonce().unwrap()}))
        .unwrap();
    assert_eq!(reply["code"], "challenge_failed", "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("open mode"),
        "{reply}"
    );
    let error = broker
        .client()
        .register("alice", Some(SECRET))
        .unwrap_err()
        .to_string();
    assert!(error.contains("open mode"), "{error}");
    assert_eq!(
        broker.count("SELECT count(*) FROM instances"),
        0,
        "no fallback to an open register"
    );
}

/// A fake broker: answers `ping` as a secret-mode broker and `challenge` with a proof it
/// cannot make, and anything else with a made-up session; records every line it gets.
fn fake_broker() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let record = heard.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let record = record.clone();
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let request: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                    record.lock().unwrap().push(request.clone());
                    let reply = match request["action"].as_str() {
                        Some("ping") => json!({"status": "ok", "mode": "secret", "version": "9",
                                               "protocol": 1, "static_token": "accepted"}),
                        Some("challenge") => json!({"status": "ok", "challenge_id": "c1",
                            "server_nonce": "ab".repeat(32), "server_proof": "cd".repeat(32),
                            "client_uid": own_uid().to_string(), "expires_in_ms": 30000}),
                        _ => json!({"status": "ok", "session_token": "x".repeat(43),
                                    "message": "Registered alice"}),
                    };
                    let mut bytes = serde_json::to_vec(&reply).unwrap();
                    bytes.push(b'\n');
                    if writer.write_all(&bytes).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, heard)
}

#[test]
fn a_fake_broker_with_a_wrong_server_proof_gets_nothing_after_the_challenge() {
    let (addr, heard) = fake_broker();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alice.session");
    let output = cli_register(&addr, &file, "alice");
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(
        text.contains("did not prove that it knows the shared secret"),
        "{text}"
    );
    assert!(!file.exists(), "no session was saved");
    let actions: Vec<Value> = heard
        .lock()
        .unwrap()
        .iter()
        .map(|r| r["action"].clone())
        .collect();
    // A ping (the client checks the broker's mode first) and the challenge; no register.
    assert_eq!(
        actions,
        vec![json!("ping"), json!("challenge")],
        "nothing but a ping and the challenge: {actions:?}"
    );

    // ping with the secret refuses it too, and says so.
    let ping = cli_with_env(&addr, &file, &["ping"], &[("IPC_SHARED_SECRET", SECRET)]);
    assert_eq!(ping.status.code(), Some(1), "{}", stderr(&ping));
    assert!(stderr(&ping).contains("did not prove"), "{}", stderr(&ping));
}

#[test]
fn ping_with_the_secret_says_the_broker_proved_it() {
    let broker = secret_broker();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("session");
    let ping = cli_with_env(
        &broker.addr(),
        &file,
        &["ping"],
        &[("IPC_SHARED_SECRET", SECRET)],
    );
    let stdout = String::from_utf8_lossy(&ping.stdout).into_owned();
    assert!(ping.status.success(), "{}", stderr(&ping));
    assert!(
        stdout.contains("secret mode, verified: the broker proved it knows your secret"),
        "{stdout}"
    );
    let wrong = cli_with_env(
        &broker.addr(),
        &file,
        &["ping"],
        &[("IPC_SHARED_SECRET", "not it")],
    );
    assert_eq!(wrong.status.code(), Some(1), "{}", stderr(&wrong));
    let unverified = cli_with_env(&broker.addr(), &file, &["ping"], &[]);
    let stdout = String::from_utf8_lossy(&unverified.stdout).into_owned();
    assert!(stdout.contains("secret mode (not verified"), "{stdout}");
}

#[test]
fn a_flood_of_challenges_stays_bounded() {
    let broker = secret_broker();
    let mut flooder = broker.client();
    for i in 0..MAX_PER_PEER * 20 {
        ask_challenge(&mut flooder, &format!("n{i}"));
    }
    assert_eq!(
        broker.broker().outstanding_challenges(),
        MAX_PER_PEER,
        "one peer's share"
    );
    // Many peers (addresses with no uid, as remote ones would be) fill at most the total.
    let engine = broker.broker();
    broker.block_on(async {
        for i in 0..MAX_OUTSTANDING + 500 {
            let request = Request::parse(
                json!({"action": "challenge", "instance_id": "x",
                       "client_nonce": auth::fresh_nonce().unwrap()})
                .to_string()
                .as_bytes(),
            )
            .unwrap();
            let peer = Peer::unknown(format!(
                "10.{}.{}.{}:5000",
                i / 65536,
                (i / 256) % 256,
                i % 256
            ));
            assert!(engine.handle(request, &peer).await.reply.is_ok());
        }
    });
    assert_eq!(engine.outstanding_challenges(), MAX_OUTSTANDING);
    // The newest challenge survives a flood: a client asking now still registers.
    let mut alice = broker.client();
    let challenge = ask_challenge(&mut alice, "alice");
    let registered = alice
        .request(&answer("alice", "alice", &challenge, me()))
        .unwrap();
    assert_eq!(registered["status"], "ok", "{registered}");
    // Asking for challenges does not make a connection count as a known client.
    assert!(!broker.block_on(engine.handle(
        Request::parse(br#"{"action":"challenge","instance_id":"x","client_nonce":"0123456789abcdef0123456789abcdef"}"#).unwrap(),
        &Peer::unknown("10.9.9.9:1"),
    )).authenticated);
}

#[test]
fn serve_no_static_token_refuses_the_static_token_and_says_so_at_start_and_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::spawn_with_env(
        &data,
        &["--no-static-token"],
        &[("IPC_SHARED_SECRET", SECRET)],
    );
    let static_register = json!({"action": "register", "instance_id": "alice",
                                 "auth_token": auth::expected_auth_token("alice", SECRET)});
    let reply: Value = serde_json::from_slice(&legacy_raw(
        &broker.addr,
        static_register.to_string().as_bytes(),
    ))
    .unwrap();
    assert_eq!(reply["code"], "static_token_refused", "{reply}");
    let session = dir.path().join("session");
    let status = cli_with_env(
        &broker.addr,
        &session,
        &["status", "--data-dir", data.to_str().unwrap()],
        &[],
    );
    let text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(text.contains("static auth_token refused"), "{text}");
    assert!(!text.contains("can register as alice for ever"), "{text}");
    drop(broker);

    // The default, through the env var off and on: accepted, and status says what it costs.
    let broker = BrokerProcess::spawn_with_env(&data, &[], &[("IPC_SHARED_SECRET", SECRET)]);
    let mut started = Vec::new();
    while let Ok(line) = broker.log.recv_timeout(Duration::from_millis(500)) {
        started.push(line);
    }
    let log = started.join("\n");
    assert!(
        log.contains("static_token=\"accepted\"") || log.contains("static_token=accepted"),
        "{log}"
    );
    let status = cli_with_env(
        &broker.addr,
        &session,
        &["status", "--data-dir", data.to_str().unwrap()],
        &[],
    );
    let text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(text.contains("static auth_token accepted"), "{text}");
    assert!(text.contains("can register as alice for ever"), "{text}");
    assert!(text.contains("--no-static-token"), "{text}");
    drop(broker);
    let broker = BrokerProcess::spawn_with_env(
        &data,
        &[],
        &[("IPC_SHARED_SECRET", SECRET), ("IPC_NO_STATIC_TOKEN", "1")],
    );
    assert_eq!(
        common::ping_json(&mut broker.client())["static_token"],
        "refused"
    );
}

/// A relay run by another local user, in python3: forwards a client to the real broker and
/// prints each request line it forwards.
const PYTHON_RELAY: &str = r#"
import socket, sys, threading
upstream = sys.argv[1].rsplit(":", 1)
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(8)
print(listener.getsockname()[1], flush=True)
def pump(src, dst, show):
    buffered = b""
    while True:
        data = src.recv(65536)
        if not data:
            break
        if show:
            buffered += data
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                print(line.decode(), flush=True)
        dst.sendall(data)
    dst.shutdown(socket.SHUT_WR)
while True:
    client, _ = listener.accept()
    server = socket.create_connection((upstream[0], int(upstream[1])))
    threading.Thread(target=pump, args=(client, server, True), daemon=True).start()
    threading.Thread(target=pump, args=(server, client, False), daemon=True).start()
"#;

#[test]
fn a_relay_run_by_another_user_gets_a_challenge_the_client_refuses_and_no_register() {
    if !running_as_root() {
        println!("SKIPPED: a relay run by a second local user needs root to create that user");
        return;
    }
    if python3_missing("the relay") {
        return;
    }
    let broker = secret_broker();
    let user = LocalUser::create(&format!("chrelay{}", std::process::id() % 100000));
    let mut relay = Command::new("/usr/bin/python3")
        .args(["-c", PYTHON_RELAY, &broker.addr()])
        .uid(user.uid)
        .gid(user.gid)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut heard = BufReader::new(relay.stdout.take().unwrap());
    let mut port = String::new();
    heard.read_line(&mut port).unwrap();
    let relay_addr = format!("127.0.0.1:{}", port.trim());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alice.session");
    // The client is told to trust the relaying user as a service account, so the broker's
    // owner check lets the connection through and the proofs' uid binding must catch it.
    let output = cli_with_env(
        &relay_addr,
        &file,
        &["register", "alice"],
        &[
            ("IPC_SHARED_SECRET", SECRET),
            ("IPC_BROKER_USER", &user.name),
        ],
    );
    let _ = relay.kill();
    let _ = relay.wait();
    let forwarded: Vec<Value> = heard
        .lines()
        .map_while(Result::ok)
        .map(|line| serde_json::from_str(&line).unwrap())
        .collect();

    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(
        text.contains(&format!("uid {}", user.uid)) || text.contains(&user.name),
        "names the relaying user: {text}"
    );
    let actions: Vec<&Value> = forwarded.iter().map(|r| &r["action"]).collect();
    assert!(
        !actions.iter().any(|a| *a == "register"),
        "no register crossed the relay: {forwarded:#?}"
    );
    assert_eq!(broker.count("SELECT count(*) FROM instances"), 0);
}

#[test]
fn over_the_unix_socket_the_proof_is_bound_to_the_socket_peers_uid() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ipc.sock");
    let path = socket.clone();
    let broker = TestBroker::start_with(move |config| {
        config.shared_secret = Some(SECRET.into());
        config.socket = Some(path);
    });
    let mut client = Client::connect_unix(&socket, TIMEOUT).unwrap();
    let challenge = ask_challenge(&mut client, "alice");
    assert_eq!(challenge.0["client_uid"], own_uid().to_string());
    let other = client
        .request(&answer(
            "alice",
            "alice",
            &challenge,
            ProofUid(Some(own_uid() + 1)),
        ))
        .unwrap();
    assert_eq!(other["code"], "challenge_failed", "{other}");
    let registered = client.register("alice", Some(SECRET)).unwrap();
    assert!(broker.client().check(&registered.session_token).is_ok());
}

#[test]
fn a_broker_that_does_not_know_the_challenge_gets_no_static_token() {
    // The Python original's broker answers an unknown action like this.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let heard = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut lines = Vec::new();
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            lines.push(line);
            let reply = json!({"status": "error", "code": "unknown_action",
                               "message": "Unknown action: challenge"});
            writer.write_all(format!("{reply}\n").as_bytes()).unwrap();
        }
        lines
    });
    let mut client = Client::connect(&addr, TIMEOUT).unwrap();
    let error = client
        .register("alice", Some(SECRET))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("does not know the `challenge` action"),
        "{error}"
    );
    drop(client);
    let lines = heard.join().unwrap();
    assert_eq!(lines.len(), 1, "only the challenge: {lines:#?}");
    assert!(!lines[0].contains("auth_token"));
}
