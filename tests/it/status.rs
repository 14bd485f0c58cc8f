//! `claude-ipc status` as an operator runs it: the real binary against a real broker that is
//! up, killed, or stopped cleanly, and against a directory with nothing in it. `--json` must
//! always be one JSON document, and the exit code says whether a broker answered.
use crate::common;

use std::path::Path;
use std::process::Output;

use chrono::{Duration, Utc};
use claude_ipc::clock::Clock;
use common::{cli_with_env, legacy, BrokerProcess, TestBroker};
use serde_json::{json, Value};

fn status(addr: &str, data_dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["status"];
    args.extend_from_slice(extra);
    // The data directory comes from IPC_DATA_DIR and the address from IPC_ADDR, as the
    // issue asks of every subcommand.
    cli_with_env(
        addr,
        &data_dir.join("unused.session"),
        &args,
        &[("IPC_DATA_DIR", data_dir.to_str().unwrap())],
    )
}

fn status_json(addr: &str, data_dir: &Path) -> (Option<i32>, Value) {
    let output = status(addr, data_dir, &["--json"]);
    let text = String::from_utf8(output.stdout).unwrap();
    let report = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status --json is not one JSON document ({e}): {text}"));
    (output.status.code(), report)
}

fn instance<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no instance {name} in {report}"))
}

#[test]
fn with_the_broker_up_it_reports_the_process_instances_mail_and_auth_failures() {
    // The broker's clock starts 25 hours back, so one failure falls outside the 24-hour count
    // and one instance was last seen long enough ago to be offline.
    let start = Utc::now() - Duration::hours(25);
    let clock = Clock::manual(start);
    let broker = TestBroker::start_with_clock(|_| {}, clock.clone());
    let addr = broker.addr();
    let bogus = json!({"action": "check", "session_token": "not-a-token"});
    assert_eq!(legacy(&addr, &bogus)["status"], "error");
    clock.advance(Duration::hours(24) + Duration::minutes(50));
    broker.register("stale");
    clock.advance(Duration::minutes(10));
    let alice = broker.register("alice");
    broker.register("bob");
    let mut client = broker.client();
    for text in ["one", "two"] {
        client.send(&alice, "bob", text, None, None).unwrap();
    }
    client
        .send(&alice, "carol", "for later", None, None)
        .unwrap();
    assert_eq!(legacy(&addr, &bogus)["status"], "error");
    assert_eq!(legacy(&addr, &json!({"action": "list"}))["status"], "error");

    let (code, report) = status_json(&addr, &broker.data_dir());
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["status"], "ok");
    let process = &report["broker"];
    assert_eq!(process["answering"], true);
    assert_eq!(process["addr"], addr.as_str());
    assert_eq!(
        process["pid"],
        std::process::id(),
        "the broker runs in this test process"
    );
    assert_eq!(process["version"], claude_ipc::VERSION);
    assert_eq!(process["security"], "open");
    assert_eq!(process["started_at"], claude_ipc::clock::to_text(start));
    assert_eq!(
        process["uptime_seconds"].as_i64().unwrap(),
        (Duration::hours(25)).num_seconds(),
        "uptime is measured on the broker's clock"
    );

    assert_eq!(report["data_dir"], broker.data_dir().to_str().unwrap());
    assert!(report["database"]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(report["database"]["readable"], true);

    assert_eq!(instance(&report, "alice")["online"], true);
    assert_eq!(instance(&report, "alice")["waiting"], 0);
    assert_eq!(instance(&report, "bob")["online"], true);
    assert_eq!(instance(&report, "bob")["waiting"], 2);
    assert_eq!(
        instance(&report, "stale")["online"],
        false,
        "seen 10 min ago"
    );
    assert_eq!(
        report["unregistered_mail"],
        json!([{"name": "carol", "waiting": 1, "oldest": report["unregistered_mail"][0]["oldest"]}])
    );
    assert_eq!(report["pending_total"], 3);
    assert_eq!(
        report["auth_failures_24h"],
        json!({"total": 2, "by_reason": {"unknown session token": 1, "missing session token": 1}}),
        "the failure 25 hours ago is not counted"
    );
    assert_eq!(report["last_run"]["stopped_cleanly"], false);

    let human = status(&addr, &broker.data_dir(), &[]);
    assert_eq!(human.status.code(), Some(0));
    let text = String::from_utf8(human.stdout).unwrap();
    for needle in [
        "answering at",
        "OPEN MODE",
        "bob",
        "2 waiting",
        "carol",
        "offline",
        "auth failures in the last 24 h: 2",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    assert!(
        !text.contains('\x1b'),
        "no colour when NO_COLOR is set and stdout is not a terminal"
    );
}

#[test]
fn with_the_broker_killed_it_reads_the_database_and_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let broker = BrokerProcess::spawn(&data_dir, &[]);
    let pid = broker.child.id();
    let addr = broker.addr.clone();
    let mut client = broker.client();
    let alice = client.register("alice", None).unwrap().session_token;
    client.register("bob", None).unwrap();
    client.send(&alice, "bob", "waiting", None, None).unwrap();
    client
        .send(&alice, "dora", "not registered yet", None, None)
        .unwrap();
    broker.kill_9();

    let (code, report) = status_json(&addr, &data_dir);
    assert_eq!(code, Some(3), "no broker answering: {report}");
    assert_eq!(report["status"], "unreachable");
    assert_eq!(report["broker"]["answering"], false);
    assert!(report["broker"]["error"]
        .as_str()
        .unwrap()
        .contains("claude-ipc serve"));
    assert_eq!(report["broker"]["pid"], Value::Null);
    let run = &report["last_run"];
    assert_eq!(run["pid"], pid);
    assert_eq!(run["addr"], addr.as_str());
    assert_eq!(run["stopped_cleanly"], false, "kill -9 leaves no stop time");
    assert_eq!(run["process_alive"], false);
    assert_eq!(instance(&report, "bob")["waiting"], 1);
    assert_eq!(report["unregistered_mail"][0]["name"], "dora");
    assert_eq!(report["pending_total"], 2);
    let warnings = report["warnings"].to_string();
    assert!(warnings.contains("did not stop cleanly"), "{warnings}");

    let human = status(&addr, &data_dir, &[]);
    assert_eq!(human.status.code(), Some(3));
    let text = String::from_utf8(human.stdout).unwrap();
    assert!(text.contains("NOT ANSWERING"), "{text}");
    assert!(text.contains("start one with `claude-ipc serve`"), "{text}");
    assert!(text.contains("bob"), "{text}");

    // A clean stop records its time.
    let broker = BrokerProcess::spawn(&data_dir, &[]);
    assert!(broker.terminate().success());
    let (code, report) = status_json(&addr, &data_dir);
    assert_eq!(code, Some(3));
    assert_eq!(report["last_run"]["stopped_cleanly"], true, "{report}");
    assert!(report["last_run"]["stopped_at"].is_string());
}

#[test]
fn with_nothing_there_it_is_still_one_json_document() {
    let dir = tempfile::tempdir().unwrap();
    let (code, report) = status_json("127.0.0.1:1", &dir.path().join("none"));
    assert_eq!(code, Some(3));
    assert_eq!(report["database"]["readable"], false);
    assert!(
        report["database"]["error"]
            .as_str()
            .unwrap()
            .contains("claude-ipc serve"),
        "{report}"
    );
    assert_eq!(report["instances"], json!([]));
    assert_eq!(report["last_run"], Value::Null);
}

/// Colour appears on a terminal and never with NO_COLOR set. `script` (util-linux) gives the
/// command a terminal; where it is missing the check is skipped.
#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    let script = Path::new("/usr/bin/script");
    if !script.exists() {
        println!("note: /usr/bin/script is not installed; the terminal check is skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let on_terminal = |no_color: bool| -> String {
        let mut command = std::process::Command::new(script);
        command
            .args(["-qec"])
            .arg(format!(
                "{} status --addr 127.0.0.1:1 --data-dir {}",
                common::binary(),
                dir.path().display()
            ))
            .arg("/dev/null")
            .env_remove("NO_COLOR");
        if no_color {
            command.env("NO_COLOR", "1");
        }
        let output = command.output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let coloured = on_terminal(false);
    assert!(coloured.contains("NOT ANSWERING"), "{coloured}");
    assert!(
        coloured.contains("\x1b[31m"),
        "red on a terminal: {coloured:?}"
    );
    let plain = on_terminal(true);
    assert!(plain.contains("NOT ANSWERING"), "{plain}");
    assert!(!plain.contains("\x1b["), "NO_COLOR wins: {plain:?}");
}
