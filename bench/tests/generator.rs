//! The load generator, run for real but briefly: every workload against brokers it starts
//! (the `claude-ipc` binary built beside it), and its delivery check against a target that
//! acknowledges mail and then loses it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

const WORKLOADS: [&str; 12] = [
    "legacy sends, 1 client",
    "legacy sends, 4 clients",
    "persistent sends, 1 client",
    "persistent sends, 8 clients",
    "persistent sends, 32 clients",
    "mixed send+check, 8 clients",
    "check of 100 queued messages",
    "broadcast to 50 instances",
    "long-poll wake-up",
    "channel push",
    "web: 50 busy agents, no stream",
    "web: 50 busy agents, 5 streams",
];

/// The broker binary `cargo test` builds beside the load generator. Named explicitly, so the
/// generator does not try to build it while this test holds cargo's lock.
fn broker_binary() -> std::path::PathBuf {
    let generator = std::path::Path::new(env!("CARGO_BIN_EXE_claude-ipc-bench"));
    let broker = generator.with_file_name("claude-ipc");
    assert!(
        broker.is_file(),
        "{} is missing: run `cargo test` from the workspace root, which builds it",
        broker.display()
    );
    broker
}

fn bench(args: &[&str]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_claude-ipc-bench"));
    if !args.contains(&"--addr") && !args.contains(&"--broker-bin") {
        command.arg("--broker-bin").arg(broker_binary());
    }
    command
        .args(args)
        .env_remove("IPC_SHARED_SECRET")
        .env_remove("IPC_ADDR")
        .output()
        .expect("run claude-ipc-bench")
}

#[test]
fn the_search_workload_stores_the_messages_and_times_every_kind_of_query() {
    let data = tempfile::tempdir().unwrap();
    let output = bench(&[
        "--only",
        "search",
        "--search",
        "3000",
        "--json",
        "--data-dir",
        data.path().to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
    assert_eq!(report["search"]["stored"], 3000, "{report}");
    let kinds: Vec<&str> = report["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["workload"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "search: one word, common",
            "search: one word, medium",
            "search: one word, rare",
            "search: phrase of two common words",
            "search: prefix"
        ]
    );
    for workload in report["workloads"].as_array().unwrap() {
        assert_eq!(workload["latency_ms"]["count"], 200, "{workload}");
    }
    // The common word is in most of the searcher's mail; the target is only judged on a million.
    assert!(stderr.contains("one word, common: 20 results"), "{stderr}");
    let judged = report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["target"].as_str().unwrap().starts_with("search"));
    assert!(!judged, "{report}");
}

#[test]
fn the_web_workloads_time_every_dashboard_page_and_the_streams_cost() {
    let data = tempfile::tempdir().unwrap();
    let output = bench(&[
        "--only",
        "web",
        "--web",
        "3000",
        // Longer than a stream's 250 ms between two reads, so each round's streams read.
        "--duration",
        "600ms",
        "--json",
        "--data-dir",
        data.path().to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
    // 3,000 spread messages, the long thread's 2,001 and 1,000 to the human.
    assert_eq!(report["web"]["stored"], 6001, "{report}");
    let workloads = report["workloads"].as_array().unwrap();
    let pages: Vec<&Value> = workloads
        .iter()
        .filter(|w| w["latency_ms"]["count"] == 100)
        .collect();
    assert_eq!(pages.len(), 16, "every page timed 100 times: {report}");
    let deep = workloads
        .iter()
        .find(|w| w["workload"] == "web: thread of 2,001, last page")
        .expect("the thread's last page");
    assert!(
        deep["note"].as_str().unwrap().contains("before="),
        "reached by next links: {deep}"
    );
    let streams = &report["stream_cost"];
    assert!(streams["ratio"].as_f64().unwrap() > 0.0, "{streams}");
    let events = streams["events_per_stream"].as_array().unwrap();
    assert_eq!(events.len(), 5);
    assert!(
        events.iter().all(|e| e.as_u64().unwrap() > 0),
        "every stream saw the agents' mail: {streams}"
    );
    assert_eq!(report["all_delivered"], true);
    let judged = report["targets"].as_array().unwrap().iter().any(|t| {
        t["target"]
            .as_str()
            .unwrap()
            .starts_with("every dashboard page")
    });
    assert!(
        !judged,
        "the page target is only judged on a million: {report}"
    );
}

#[test]
fn a_short_run_measures_every_workload_beside_the_echo_and_delivers_everything() {
    let data = tempfile::tempdir().unwrap();
    let output = bench(&[
        "--duration",
        "150ms",
        "--idle",
        "50",
        "--json",
        "--data-dir",
        data.path().to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
    let workloads = report["workloads"].as_array().unwrap();
    let names: Vec<&str> = workloads
        .iter()
        .map(|w| w["workload"].as_str().unwrap())
        .collect();
    assert_eq!(names, WORKLOADS);
    for workload in workloads {
        let name = &workload["workload"];
        assert!(
            workload["latency_ms"]["count"].as_u64().unwrap() > 0,
            "{name}"
        );
        assert!(
            workload["latency_ms"]["p99"].as_f64().unwrap() > 0.0,
            "{name}"
        );
        assert!(
            workload["echo_latency_ms"]["count"].as_u64().unwrap() > 0,
            "{name}"
        );
        if let Some(ratio) = workload["ratio_to_echo"].as_f64() {
            assert!(ratio > 0.0 && workload["per_second"].as_f64().unwrap() > 0.0);
        }
        if name.as_str().unwrap().contains("send") {
            let durable = workload["durable_echo_per_second"].as_f64();
            assert!(durable.is_some_and(|d| d > 0.0), "{name}: {workload}");
            let ratio = workload["ratio_to_durable_echo"].as_f64().unwrap();
            let expected = workload["per_second"].as_f64().unwrap() / durable.unwrap();
            assert!((ratio - expected).abs() < 1e-9, "{name}: {workload}");
        }
        if name.as_str().unwrap().contains("sends") {
            let per_commit = workload["jobs_per_commit"].as_f64();
            assert!(
                per_commit.is_some_and(|j| j >= 1.0),
                "{name}: {per_commit:?}"
            );
        }
        if name == "channel push" {
            assert!(
                !workload["delivery"].is_null(),
                "pushes are counted: {workload}"
            );
        }
        if !workload["delivery"].is_null() {
            let delivery = &workload["delivery"];
            assert_eq!(delivery["missing"], 0, "{name}: {delivery}");
            assert_eq!(delivery["duplicated"], 0, "{name}: {delivery}");
            assert!(delivery["expected"].as_u64().unwrap() > 0, "{name}");
        }
    }
    assert_eq!(report["all_delivered"], true);
    let idle = &report["idle"];
    assert_eq!(idle["connections"], 50);
    let (before, during) = (&idle["rss_kib_before"], &idle["rss_kib_during"]);
    assert!(before.as_u64().unwrap() > 0 && during.as_u64().unwrap() > 0);
    for step in 1..=15 {
        assert!(
            stderr.contains(&format!("[{step:>2}/15]")),
            "progress: {stderr}"
        );
    }
    assert!(stderr.contains("search over stored messages ... skipped (pass --search)"));
    assert!(
        stderr.contains("web pages over stored messages ... skipped (pass --web or --only web)")
    );
    let targets: Vec<&str> = report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["target"].as_str().unwrap())
        .collect();
    for clients in ["1 client", "8 clients", "32 clients"] {
        let target = format!("persistent sends, {clients} >= 0.85x durable echo");
        assert!(targets.contains(&target.as_str()), "{targets:?}");
    }
    assert!(
        targets.contains(&"channel push: p99 < 100 ms"),
        "{targets:?}"
    );
    assert!(
        targets.contains(&"50 busy agents with 5 dashboard streams >= 0.95x without"),
        "{targets:?}"
    );
    let leftovers = std::fs::read_dir(data.path()).unwrap().count();
    assert_eq!(
        leftovers, 0,
        "each started broker's data directory, and the durable echo's file, are removed"
    );
}

#[test]
fn a_missing_broker_binary_is_named_with_how_to_build_it() {
    let output = bench(&[
        "--broker-bin",
        "/nonexistent/claude-ipc",
        "--duration",
        "10ms",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no broker binary at /nonexistent/claude-ipc")
            && stderr.contains("cargo build --release"),
        "{stderr}"
    );
}

/// A stand-in for another implementation on a free port: answers each JSON request with
/// `answer`'s reply. With `keep_open` false it closes after every reply and ends its replies
/// without a newline, as the Python original does.
fn start_target(
    keep_open: bool,
    answer: impl Fn(&Value) -> Value + Send + Sync + 'static,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 65536];
                while let Ok(read) = stream.read(&mut chunk) {
                    if read == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..read]);
                    // Requests arrive whole or in pieces; answer each once it parses.
                    let mut requests = serde_json::Deserializer::from_slice(&buffer).into_iter();
                    let mut replies = Vec::new();
                    let mut used = 0;
                    while let Some(Ok(request)) = requests.next() {
                        used = requests.byte_offset();
                        replies.push(answer(&request));
                    }
                    buffer.drain(..used);
                    for reply in replies {
                        let end = if keep_open { "\n" } else { "" };
                        if stream
                            .write_all(format!("{reply}{end}").as_bytes())
                            .is_err()
                        {
                            return;
                        }
                        if !keep_open {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A target that acknowledges every send and delivers nothing.
fn start_lossy_target() -> String {
    start_target(true, |request| match request["action"].as_str() {
        Some("register") => json!({"status": "ok", "session_token": "t"}),
        Some("check") => json!({"status": "ok", "messages": []}),
        _ => json!({"status": "ok"}),
    })
}

/// A small in-memory broker that speaks only the legacy protocol (one request per
/// connection) and, like a naive original, takes the sender from `from_id` and the mailbox
/// from `instance_id`, so the load generator must send both as the Python clients do.
fn start_legacy_only_broker() -> String {
    let queues: Mutex<HashMap<String, Vec<Value>>> = Mutex::default();
    start_target(false, move |request| {
        let mut queues = queues.lock().unwrap();
        let field = |name: &str| request[name].as_str().map(str::to_owned);
        match (request["action"].as_str(), field("from_id")) {
            (Some("register"), _) => {
                let name = field("instance_id").unwrap();
                queues.entry(name.clone()).or_default();
                json!({"status": "ok", "session_token": format!("token-{name}")})
            }
            (Some("send"), Some(sender)) => {
                let mail = json!({"from": sender, "message": request["message"]});
                queues
                    .entry(field("to_id").unwrap())
                    .or_default()
                    .push(mail);
                json!({"status": "ok", "message": "Message sent"})
            }
            (Some("broadcast"), Some(sender)) => {
                for (name, queue) in queues.iter_mut().filter(|(name, _)| **name != sender) {
                    let mail = json!({"from": sender, "to": name, "message": request["message"]});
                    queue.push(mail);
                }
                json!({"status": "ok", "count": queues.len() - 1})
            }
            (Some("check"), _) => match field("instance_id") {
                Some(me) => {
                    let mail = std::mem::take(queues.entry(me).or_default());
                    json!({"status": "ok", "messages": mail})
                }
                None => json!({"status": "error", "message": "instance_id required"}),
            },
            _ => json!({"status": "error", "message": "Unknown action or missing from_id"}),
        }
    })
}

#[test]
fn a_target_that_speaks_only_the_legacy_protocol_is_measured_where_it_can_be() {
    let addr = start_legacy_only_broker();
    let output = bench(&[
        "--addr",
        &addr,
        "--duration",
        "100ms",
        "--idle",
        "20",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    for workload in report["workloads"].as_array().unwrap() {
        let name = workload["workload"].as_str().unwrap();
        let persistent_only = name.starts_with("persistent") || name.starts_with("mixed");
        let needs_binary = name == "channel push";
        let needs_dashboard = name.starts_with("web");
        assert_eq!(
            workload["skipped"],
            persistent_only || needs_binary || needs_dashboard,
            "{name}: {workload}"
        );
        if needs_dashboard {
            let note = workload["note"].as_str().unwrap();
            assert!(note.contains("needs a broker this run starts"), "{note}");
        } else if needs_binary {
            let note = workload["note"].as_str().unwrap();
            assert!(note.contains("needs the claude-ipc binary"), "{note}");
        } else if persistent_only {
            let note = workload["note"].as_str().unwrap();
            assert!(
                note.contains("closes connections after one request"),
                "{note}"
            );
        } else {
            assert!(
                workload["latency_ms"]["count"].as_u64().unwrap() > 0,
                "{name}"
            );
        }
    }
    assert_eq!(report["all_delivered"], true);
    assert!(
        report["idle"]["rss_kib_before"].is_null(),
        "no pid, no memory figures"
    );
}

#[test]
fn mail_that_was_acknowledged_but_never_delivered_is_reported_and_fails_the_run() {
    let addr = start_lossy_target();
    let output = bench(&[
        "--addr",
        &addr,
        "--only",
        "legacy sends, 1 client",
        "--duration",
        "100ms",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("LOST"), "{stdout}");
    assert!(
        stdout.contains("MISSED every acknowledged message delivered exactly once"),
        "{stdout}"
    );
}
