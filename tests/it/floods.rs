//! Floods by local users, with or without the secret, against the real `claude-ipc serve`:
//! sockets that send nothing (TCP and the Unix socket), sockets that only ever `ping`,
//! authenticated long-polls from another local user, and half-sent large requests. During each
//! a normal client is served within 2 s, and the half-sent requests cannot take the broker's
//! memory. Each flood is bounded in count and time, on loopback, and ends by itself.

use crate::common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use claude_ipc::client::Client;
use common::LocalUser;
use common::*;
use serde_json::{json, Value};

/// How soon a normal client must be served during a flood.
const SERVED_WITHIN: Duration = Duration::from_secs(2);
/// Sockets in the idle floods: nearly twice the default cap of 1,024.
const IDLE_FLOOD: usize = 2_000;

/// The floods run one at a time: two at once on a small machine would measure each other.
static ONE_FLOOD_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_flood_at_a_time() -> MutexGuard<'static, ()> {
    let guard = ONE_FLOOD_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let limit = claude_ipc::os::raise_open_file_limit().unwrap();
    assert!(
        limit >= IDLE_FLOOD as u64 + 200,
        "these floods need {} open files but the hard limit is {limit}; raise it (ulimit -Hn)",
        IDLE_FLOOD + 200
    );
    guard
}

/// A normal client's whole round trip (register, send, check) over TCP, within 2 s.
fn served_promptly(addr: &str, tag: &str) {
    let started = Instant::now();
    a_normal_client_is_served(addr, tag);
    let took = started.elapsed();
    assert!(
        took < SERVED_WITHIN,
        "{tag}: the normal client took {took:?}"
    );
}

/// The first reply line on a socket (whose read timeout is set), or null if none came.
fn first_reply(stream: &mut impl Read) -> Value {
    let mut line = String::new();
    let _ = BufReader::new(stream).read_line(&mut line);
    serde_json::from_str(&line).unwrap_or(Value::Null)
}

#[test]
fn two_thousand_idle_sockets_do_not_lock_out_a_new_client() {
    let _one = one_flood_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::spawn(&dir.path().join("data"), &[]);
    let started = Instant::now();
    let mut idle: Vec<TcpStream> = (0..IDLE_FLOOD)
        .map(|i| {
            TcpStream::connect(&broker.addr)
                .unwrap_or_else(|e| panic!("idle socket {i} could not connect: {e}"))
        })
        .collect();
    println!(
        "{IDLE_FLOOD} idle sockets connected in {:?}",
        started.elapsed()
    );
    // The newcomer's connection queues behind all of them: it is served only if the accept
    // loop keeps up with the flood, and only if a slot can be had.
    served_promptly(&broker.addr, "idle-flood");
    idle[0].set_read_timeout(Some(TIMEOUT)).unwrap();
    let reply = first_reply(&mut idle[0]);
    assert_eq!(
        reply["code"], "connection_evicted",
        "the socket quiet longest made room: {reply}"
    );
    drop(idle);
    served_promptly(&broker.addr, "after-idle-flood");
}

/// One flooding connection that only ever pings, reconnecting whenever it is sent away.
struct Pinger {
    addr: String,
    stream: BufReader<TcpStream>,
}

impl Pinger {
    fn connect(addr: &str) -> Pinger {
        let stream = TcpStream::connect(addr).expect("pinger connects");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        Pinger {
            addr: addr.to_owned(),
            stream: BufReader::new(stream),
        }
    }

    /// Pings once; returns the error code if it was sent away (and reconnects).
    fn ping(&mut self) -> Option<String> {
        let mut line = String::new();
        let sent = self.stream.get_mut().write_all(b"{\"action\": \"ping\"}\n");
        let read = sent.and_then(|_| self.stream.read_line(&mut line));
        let reply: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if read.is_ok() && reply["status"] == "ok" {
            return None;
        }
        *self = Pinger::connect(&self.addr);
        Some(reply["code"].as_str().unwrap_or("closed").to_owned())
    }
}

#[test]
fn a_flood_of_unauthenticated_pings_does_not_lock_out_a_new_client() {
    const CAP: usize = 100;
    const PINGERS: usize = 150;
    let _one = one_flood_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::spawn(
        &dir.path().join("data"),
        &["--max-connections", &CAP.to_string()],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let sent_away = Arc::new(Mutex::new(Vec::<String>::new()));
    let flood = {
        let (addr, stop, rounds, sent_away) = (
            broker.addr.clone(),
            stop.clone(),
            rounds.clone(),
            sent_away.clone(),
        );
        std::thread::spawn(move || {
            let mut pingers: Vec<Pinger> = (0..PINGERS).map(|_| Pinger::connect(&addr)).collect();
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                for pinger in &mut pingers {
                    if let Some(code) = pinger.ping() {
                        sent_away.lock().unwrap().push(code);
                    }
                }
                rounds.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    wait_until("the pingers went round twice", || {
        rounds.load(Ordering::Relaxed) >= 2
    });
    served_promptly(&broker.addr, "ping-flood");
    served_promptly(&broker.addr, "ping-flood-again");
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    let sent_away = sent_away.lock().unwrap();
    // A pinger evicted long enough ago may find its connection closed instead of the reply.
    let evicted = sent_away
        .iter()
        .filter(|code| *code == "connection_evicted");
    assert!(
        evicted.count() > 0 && !sent_away.iter().any(|code| code == "too_many_connections"),
        "the pingers filled the cap and were evicted, never refused: {sent_away:?}"
    );
}

#[test]
fn two_thousand_idle_sockets_on_the_unix_socket_do_not_lock_out_a_new_client() {
    let _one = one_flood_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ipc.sock");
    let socket_arg = socket.to_str().unwrap();
    let broker = BrokerProcess::spawn(&dir.path().join("data"), &["--socket", socket_arg]);
    let mut idle: Vec<UnixStream> = (0..IDLE_FLOOD)
        .map(|i| {
            UnixStream::connect(&socket)
                .unwrap_or_else(|e| panic!("idle socket {i} could not connect: {e}"))
        })
        .collect();
    let started = Instant::now();
    let mut client = Client::connect_unix(&socket, TIMEOUT).expect("connects to the socket");
    a_normal_client_is_served_on(&mut client, "socket-flood");
    let took = started.elapsed();
    assert!(took < SERVED_WITHIN, "the socket client took {took:?}");
    idle[0].set_read_timeout(Some(TIMEOUT)).unwrap();
    let reply = first_reply(&mut idle[0]);
    assert_eq!(reply["code"], "connection_evicted", "{reply}");
    // The socket's flood took no TCP slots: the two listeners have separate budgets.
    served_promptly(&broker.addr, "tcp-during-socket-flood");
    drop(idle);
}

/// The broker process's resident memory, from `/proc/<pid>/status`, in MiB.
fn resident_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kib / 1024
}

/// Makes closing `stream` send a reset (SO_LINGER with a zero timeout).
fn reset_on_close(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is a valid struct linger and the length passed is its size.
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "setsockopt SO_LINGER");
}

/// How many files the process has open.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Writes as much of `bytes` (from `sent` on) as the socket takes without blocking.
fn push(stream: &mut TcpStream, bytes: &[u8], sent: &mut usize) {
    while *sent < bytes.len() {
        match stream.write(&bytes[*sent..]) {
            Ok(n) => *sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) => panic!("a half-sent request's connection failed: {e}"),
        }
    }
}

/// Hundreds of unauthenticated connections each hold most of a 1 MiB request and stall.
/// Their buffers may hold only the shared budget between them, so the broker stays small and
/// keeps serving; the memory goes back when they leave. `FLOODS_HALF_REQUESTS` changes the
/// count (the figures for 1,000 in the report were measured with it).
#[test]
fn half_sent_large_requests_cannot_take_the_brokers_memory() {
    const LIMIT_MIB: u64 = 200;
    let connections: usize = std::env::var("FLOODS_HALF_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(400);
    let _one = one_flood_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::spawn(&dir.path().join("data"), &["--read-timeout", "60s"]);
    let pid = broker.child.id();
    let before = resident_mib(pid);
    let descriptors_before = open_descriptors(pid);
    let mut request =
        br#"{"action": "send", "session_token": "none", "to_id": "bob", "message": {"content": ""#
            .to_vec();
    request.resize(1000 * 1024, b'a');
    let mut streams: Vec<(TcpStream, usize)> = (0..connections)
        .map(|_| {
            let stream = TcpStream::connect(&broker.addr).unwrap();
            stream.set_nonblocking(true).unwrap();
            (stream, 0)
        })
        .collect();
    // Round after round until every request is in (the kernel holds what the broker does not
    // read) or the time is up.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut peak = 0;
    while Instant::now() < deadline && streams.iter().any(|(_, sent)| *sent < request.len()) {
        for (stream, sent) in &mut streams {
            push(stream, &request, sent);
        }
        peak = peak.max(resident_mib(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    let pushed: usize = streams.iter().map(|(_, sent)| sent).sum();
    std::thread::sleep(Duration::from_millis(500));
    let during = resident_mib(pid);
    peak = peak.max(during);
    served_promptly(&broker.addr, "during-half-requests");
    large_send_served_promptly(&broker.addr);
    println!(
        "{connections} half-sent requests, {} MiB written: broker RSS {before} MiB before, \
         {during} MiB during (peak {peak} MiB)",
        pushed >> 20
    );
    assert!(
        pushed >= connections * 256 * 1024,
        "the flood got only {pushed} bytes out; it did not test anything"
    );
    assert!(
        peak < LIMIT_MIB,
        "broker RSS reached {peak} MiB with {connections} half-sent requests"
    );
    // Reset rather than close, as a flood would: a half-sent request that ends cleanly is
    // still read to its end and answered, which for hundreds of them takes a while.
    for (stream, _) in &streams {
        reset_on_close(stream);
    }
    drop(streams);
    let closing = Instant::now();
    while open_descriptors(pid) > descriptors_before + 2 {
        assert!(
            closing.elapsed() < TIMEOUT,
            "the broker kept the connections"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("drained in {:?}", closing.elapsed());
    let after = resident_mib(pid);
    println!("after they closed: {after} MiB");
    assert!(
        after <= before + 32,
        "the broker kept {after} MiB after the half-sent requests went (it started at {before})"
    );
    served_promptly(&broker.addr, "after-half-requests");
}

/// A known client's large `send` (well past a connection's first 4 KiB) goes through at once:
/// strangers' half-sent requests cannot take the quarter of the budget kept for it.
fn large_send_served_promptly(addr: &str) {
    let mut client = Client::connect(addr, TIMEOUT).unwrap();
    let sender = client.register("large-from", None).unwrap().session_token;
    let receiver = client.register("large-to", None).unwrap().session_token;
    let content = "L".repeat(200 * 1024);
    let started = Instant::now();
    client
        .send(&sender, "large-to", &content, None, None)
        .expect("large send");
    let took = started.elapsed();
    assert!(took < SERVED_WITHIN, "the large send took {took:?}");
    // Content this large is kept in a file; the check hands out a reference to it.
    assert_eq!(client.check(&receiver).unwrap().messages.len(), 1);
}

/// Run as another user: opens connections, registers on each (open mode) and leaves a 30 s
/// long-poll waiting on it; prints how many it holds and why the rest were refused.
const LONG_POLL_FLOOD: &str = r#"
import json, socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held, refused = [], {}
for i in range(count):
    s = socket.create_connection((host, port), timeout=10)
    f = s.makefile("rb")
    s.sendall(json.dumps({"action": "register", "instance_id": "poll%d" % i}).encode() + b"\n")
    reply = json.loads(f.readline() or b"null") or {}
    if reply.get("status") != "ok":
        code = reply.get("code", "closed")
        refused[code] = refused.get(code, 0) + 1
        s.close()
        continue
    poll = {"action": "check", "session_token": reply["session_token"], "wait_ms": 30000}
    s.sendall(json.dumps(poll).encode() + b"\n")
    held.append((s, f))
print(json.dumps({"held": len(held), "refused": refused}), flush=True)
time.sleep(30)
"#;

#[test]
fn another_users_authenticated_long_polls_cannot_fill_the_brokers_slots() {
    const CAP: usize = 40;
    let _one = one_flood_at_a_time();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!(
            "SKIPPED: this flood must come from a second local user, which only root can \
             create (useradd) and run a process as; run the tests as root to include it"
        );
        return;
    }
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        println!("SKIPPED: /usr/bin/python3 runs the other user's flood; install python3");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::spawn(
        &dir.path().join("data"),
        &["--max-connections", &CAP.to_string()],
    );
    let user = LocalUser::create(&format!("cipcflood{}", std::process::id() % 100_000));
    let (host, port) = broker.addr.rsplit_once(':').unwrap();
    // Declared after the user, so it is dropped first: userdel refuses a user still running.
    let mut flood = KilledOnDrop(
        Command::new(python)
            .args(["-c", LONG_POLL_FLOOD, host, port, &CAP.to_string()])
            .uid(user.uid)
            .gid(user.gid)
            .current_dir("/")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the other user's flood"),
    );
    let mut summary = String::new();
    BufReader::new(flood.0.stdout.take().unwrap())
        .read_line(&mut summary)
        .unwrap();
    let summary: Value = serde_json::from_str(&summary)
        .unwrap_or_else(|e| panic!("the flood said {summary:?}: {e}"));
    assert_eq!(
        summary,
        json!({"held": CAP / 4, "refused": {"connection_quota": CAP - CAP / 4}}),
        "uid {} holds a quarter of the cap and no more",
        user.uid
    );
    served_promptly(&broker.addr, "long-poll-flood");
}

/// A child process that is killed and reaped when dropped, even by a failing test.
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sockets that never authenticate are closed after the short deadline, so an idle flood
/// drains in seconds; a connection that registered keeps the full idle timeout.
#[test]
fn connections_that_never_authenticate_get_only_the_short_idle_deadline() {
    let _one = one_flood_at_a_time();
    let broker = TestBroker::start_with(|c| {
        c.limits.unauthenticated_idle_timeout = Duration::from_millis(300);
    });
    let connect = || {
        let stream = TcpStream::connect(broker.addr()).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream
    };
    let (mut silent, mut pinger, mut member) = (connect(), connect(), connect());
    pinger.write_all(b"{\"action\": \"ping\"}\n").unwrap();
    assert_eq!(read_reply(&mut pinger)["status"], "ok");
    member
        .write_all(b"{\"action\": \"register\", \"instance_id\": \"member\"}\n")
        .unwrap();
    assert_eq!(read_reply(&mut member)["status"], "ok");
    let started = Instant::now();
    for stream in [&mut silent, &mut pinger] {
        let reply = read_reply(stream);
        assert_eq!(reply["code"], "idle_timeout", "{reply}");
        assert!(
            reply["message"].as_str().unwrap().contains("0.3 s"),
            "{reply}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(600));
    member.write_all(b"{\"action\": \"ping\"}\n").unwrap();
    assert_eq!(
        read_reply(&mut member)["status"],
        "ok",
        "a registered connection is not held to the short deadline"
    );
}
