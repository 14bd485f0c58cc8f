//! `claude-ipc bench`, run for real but briefly: every workload against brokers it starts, and
//! its delivery check against a target that acknowledges mail and then loses it.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

use serde_json::Value;

const WORKLOADS: [&str; 9] = [
    "legacy sends, 1 client",
    "legacy sends, 4 clients",
    "persistent sends, 1 client",
    "persistent sends, 8 clients",
    "persistent sends, 32 clients",
    "mixed send+check, 8 clients",
    "check of 100 queued messages",
    "broadcast to 50 instances",
    "long-poll wake-up",
];

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(common::binary())
        .arg("bench")
        .args(args)
        .env_remove("IPC_SHARED_SECRET")
        .env_remove("IPC_ADDR")
        .output()
        .expect("run claude-ipc bench")
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
        if name.as_str().unwrap().contains("sends") {
            let per_commit = workload["jobs_per_commit"].as_f64();
            assert!(
                per_commit.is_some_and(|j| j >= 1.0),
                "{name}: {per_commit:?}"
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
    for step in 1..=10 {
        assert!(
            stderr.contains(&format!("[{step:>2}/11]")),
            "progress: {stderr}"
        );
    }
    let leftovers = std::fs::read_dir(data.path()).unwrap().count();
    assert_eq!(
        leftovers, 0,
        "each started broker's data directory is removed"
    );
}

/// A target that speaks the protocol, acknowledges every send, and delivers nothing.
fn start_lossy_target() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buffer = [0u8; 65536];
                while let Ok(read) = stream.read(&mut buffer) {
                    if read == 0 {
                        return;
                    }
                    let request: Value = match serde_json::from_slice(&buffer[..read]) {
                        Ok(request) => request,
                        Err(_) => return,
                    };
                    let reply = match request["action"].as_str() {
                        Some("register") => r#"{"status":"ok","session_token":"t"}"#,
                        Some("check") => r#"{"status":"ok","messages":[]}"#,
                        _ => r#"{"status":"ok"}"#,
                    };
                    if stream.write_all(format!("{reply}\n").as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
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
