//! `claude-ipc status`: is a broker answering, which process hosts it, and what its database
//! holds: instances, waiting mail, forwards and recent authentication failures.
//!
//! The broker part comes from `ping`. The database part is read directly with a read-only
//! connection, so it works with the broker down and never takes the broker's lock. With no
//! broker answering it still prints everything it can and exits with 3; a broker that answers
//! but refuses requests (its database removed, replaced or damaged) makes it exit with 1.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Args;
use serde_json::{json, Map, Value};

use super::output::{self, for_terminal, paint, Colour};
use super::{CliError, ClientArgs, EXIT_BROKER_ERROR, EXIT_UNREACHABLE};
use crate::clock;
use crate::relative_time::{relative_time, span};
use crate::store::inspect::{self, Snapshot};

/// An instance seen within this window is shown as online. Clients that are in use make a
/// request at least this often (the MCP server checks mail on each tool call); one idle longer
/// is probably gone, though its mail keeps waiting for it.
pub const ONLINE_WINDOW: Duration = Duration::from_secs(5 * 60);

/// The window for counting authentication failures.
const FAILURE_WINDOW: chrono::Duration = chrono::Duration::hours(24);

/// What accepting the legacy static `auth_token` costs, said while the broker accepts it.
const STATIC_TOKEN_COST: &str = "the broker accepts the legacy static auth_token (sha256 of name and secret), which never changes: anyone who once sees alice's (a fake broker she talked to, a log, a process listing) can register as alice for ever, until the secret changes. This project's clients register by challenge-response and need no static token; once no Python script of the original needs it, restart the broker with --no-static-token (or IPC_NO_STATIC_TOKEN=1)";

/// `status` waits at most this long for a broker to answer.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Args)]
#[command(
    after_help = "An instance is online when it was seen in the last 5 minutes. With no broker answering,
status still reads the database (read-only, without the broker's lock), prints the report and
exits with 3. A broker that answers but refuses requests (its database was removed, replaced or
is damaged) is shown as such and status exits with 1.
--json prints one JSON document in every case; docs/OPERATIONS.md describes it.

Examples:
  claude-ipc status
  claude-ipc status --json | jq '.instances[] | select(.waiting > 0)'
  IPC_DATA_DIR=/srv/ipc IPC_ADDR=127.0.0.1:9900 claude-ipc status"
)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The broker's data directory [default: ~/.claude-ipc-data]
    #[arg(long, env = "IPC_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

pub fn run(args: StatusArgs) -> Result<(), CliError> {
    let data_dir = super::data_dir_or_default(args.data_dir.clone());
    let report = gather(&args.client, &data_dir, Utc::now());
    let now = report["checked_at"]
        .as_str()
        .and_then(clock::parse)
        .unwrap_or_else(Utc::now);
    if args.client.json {
        output::json(&report);
    } else {
        print!("{}", render(&report, now, output::colour_enabled()));
    }
    match report["status"].as_str() {
        Some("ok") => Ok(()),
        Some("unhealthy") => Err(CliError::Reported(EXIT_BROKER_ERROR)),
        _ => Err(CliError::Reported(EXIT_UNREACHABLE)),
    }
}

/// Everything `status` reports, as the JSON document `--json` prints.
fn gather(client: &ClientArgs, data_dir: &Path, now: DateTime<Utc>) -> Value {
    let broker = ask_broker(client);
    // Stored times are on the broker clock; when the wall clock has jumped, "online" and
    // "ago" are measured against the broker's time, which the broker reports.
    let now = broker["clock"]["broker"]
        .as_str()
        .and_then(clock::parse)
        .unwrap_or(now);
    let database_path = data_dir.join("ipc.db");
    // Sizes first: opening the database read-only may create an empty -wal file.
    let (bytes, wal_bytes) = (
        file_size(&database_path),
        file_size(&wal_path(&database_path)),
    );
    let snapshot = inspect::open_read_only(&database_path).and_then(|conn| {
        let since = clock::to_text(now - FAILURE_WINDOW);
        inspect::snapshot(&conn, &clock::to_text(now), &since).map_err(Into::into)
    });
    let mut database = json!({
        "path": database_path,
        "bytes": bytes,
        "wal_bytes": wal_bytes,
        "readable": snapshot.is_ok(),
        "error": snapshot.as_ref().err().map(|e| e.to_string()),
        "schema_version": null,
    });
    let snapshot = snapshot.ok();
    let mut report = json!({
        "status": match (&broker["answering"], &broker["healthy"]) {
            (Value::Bool(true), Value::Bool(true)) => "ok",
            (Value::Bool(true), _) => "unhealthy",
            _ => "unreachable",
        },
        "checked_at": clock::to_text(now),
        "broker": broker,
        "data_dir": data_dir,
        "database": null,
        "last_run": null,
        "online_window_seconds": ONLINE_WINDOW.as_secs(),
        "instances": [],
        "unregistered_mail": [],
        "pending_total": null,
        "forwards": [],
        "auth_failures_24h": {"total": null, "by_reason": {}},
        "warnings": [],
    });
    if let Some(snapshot) = &snapshot {
        database["schema_version"] = snapshot.schema_version.into();
        fill_from_database(&mut report, snapshot, now);
    }
    report["database"] = database;
    report["warnings"] = warnings(&report).into();
    report
}

/// The broker's side: `ping`, or why it did not answer. A broker that answers `ping` with an
/// error (its database is gone or damaged) is answering but not healthy.
fn ask_broker(client: &ClientArgs) -> Value {
    let reply = client
        .connect_within(PING_TIMEOUT)
        .and_then(|mut client| client.request(&json!({"action": "ping"})));
    let mut broker = json!({
        "answering": reply.is_ok(), "healthy": false, "addr": client.addr, "error": null,
        "pid": null, "process": null, "version": null, "protocol": null, "mode": null,
        "security": null, "socket": null, "started_at": null, "uptime_seconds": null,
        "clock": null, "database": null, "static_token": null,
    });
    match reply {
        Err(error) => broker["error"] = error.to_string().into(),
        Ok(ping) => {
            broker["healthy"] = (ping["status"] == "ok").into();
            if ping["status"] != "ok" {
                broker["error"] = ping["message"].clone();
            }
            for key in [
                "database",
                "pid",
                "version",
                "protocol",
                "mode",
                "socket",
                "started_at",
                "uptime_seconds",
                "clock",
                "static_token",
            ] {
                broker[key] = ping.get(key).cloned().unwrap_or(Value::Null);
            }
            broker["security"] = security(&ping).into();
            broker["process"] = ping["pid"].as_u64().and_then(process_command_line).into();
        }
    }
    broker
}

/// The security mode in one word: a Unix socket (whose file mode and peer check keep other
/// users out) wins over the TCP modes.
fn security(ping: &Value) -> Option<&'static str> {
    if ping["socket"].is_string() {
        return Some("unix socket");
    }
    match ping["mode"].as_str() {
        Some("secret") => Some("secret"),
        Some("open") => Some("open"),
        _ => None,
    }
}

fn fill_from_database(report: &mut Value, snapshot: &Snapshot, now: DateTime<Utc>) {
    let online_since = clock::to_text(now - chrono::Duration::from_std(ONLINE_WINDOW).unwrap());
    report["instances"] = snapshot
        .instances
        .iter()
        .map(|i| {
            json!({
                "name": i.name, "online": i.last_seen_at >= online_since,
                "last_seen": i.last_seen_at, "registered_at": i.registered_at,
                "waiting": i.waiting,
            })
        })
        .collect::<Vec<_>>()
        .into();
    report["unregistered_mail"] = snapshot
        .unregistered_mail
        .iter()
        .map(|m| json!({"name": m.name, "waiting": m.waiting, "oldest": m.oldest}))
        .collect::<Vec<_>>()
        .into();
    report["pending_total"] = snapshot.pending_total.into();
    report["forwards"] = snapshot
        .forwards
        .iter()
        .map(
            |f| json!({"old_name": f.old_name, "new_name": f.new_name, "expires_at": f.expires_at}),
        )
        .collect::<Vec<_>>()
        .into();
    let by_reason: Map<String, Value> = snapshot
        .auth_failures
        .iter()
        .map(|(reason, count)| (reason.clone(), (*count).into()))
        .collect();
    let total: i64 = snapshot.auth_failures.iter().map(|(_, count)| count).sum();
    report["auth_failures_24h"] = json!({"total": total, "by_reason": by_reason});
    if let Some(run) = &snapshot.last_run {
        report["last_run"] = json!({
            "pid": run.pid, "version": run.version, "addr": run.addr,
            "started_at": run.started_at, "stopped_at": run.stopped_at,
            "stopped_cleanly": run.stopped_at.is_some(),
            "process_alive": u64::try_from(run.pid).ok().is_some_and(process_alive),
        });
    }
}

/// Things an operator should look at, in words.
/// The broker's wall clock is off its broker clock by more than a few seconds: say so, and
/// that the rules are not affected, so an operator who sees odd times knows why.
fn wall_clock_offset_worth_saying(clock: &Value) -> Option<String> {
    let ahead_ms = clock["wall_ahead_ms"].as_i64()?;
    if ahead_ms.abs() <= 2_000 {
        return None;
    }
    let direction = if ahead_ms > 0 { "ahead of" } else { "behind" };
    Some(format!(
        "the broker's wall clock is {} {direction} its broker clock (the wall clock jumped); times are stored and windows measured by the broker clock ({}), so nothing expires early or waits longer",
        span(ahead_ms.unsigned_abs() / 1000),
        clock["broker"].as_str().unwrap_or("?"),
    ))
}

fn warnings(report: &Value) -> Vec<String> {
    let broker = &report["broker"];
    let run = &report["last_run"];
    let mut warnings = Vec::new();
    if broker["answering"] == true && broker["healthy"] != true {
        warnings.push(format!(
            "the broker answers but refuses requests: {}",
            broker["error"].as_str().unwrap_or("unknown error")
        ));
    }
    if !report["database"]["readable"].as_bool().unwrap_or(false) {
        warnings.push(format!(
            "cannot read the database: {}",
            report["database"]["error"]
                .as_str()
                .unwrap_or("unknown error")
        ));
    }
    if broker["answering"] == true {
        if broker["security"] == "open" {
            warnings.push("open mode: any local process can register any name; set IPC_SHARED_SECRET_FILE (a 0600 file holding the secret) or IPC_SHARED_SECRET for the broker and its clients".into());
        }
        if broker["static_token"] == "accepted" {
            warnings.push(STATIC_TOKEN_COST.into());
        }
        if let Some(ahead) = wall_clock_offset_worth_saying(&broker["clock"]) {
            warnings.push(ahead);
        }
        let recorded = run["stopped_cleanly"] == false && run["pid"] == broker["pid"];
        if run.is_object() && !recorded {
            warnings.push(format!(
                "the broker answering at {} (pid {}) is not the one recorded in this data directory (last run: pid {}); pass the broker's --data-dir (or IPC_DATA_DIR)",
                broker["addr"].as_str().unwrap_or("?"),
                broker["pid"],
                run["pid"]
            ));
        }
    } else if run["stopped_cleanly"] == false {
        let (addr, run_addr) = (
            broker["addr"].as_str().unwrap_or("?"),
            run["addr"].as_str().unwrap_or("?"),
        );
        warnings.push(if run["process_alive"] == true && addr != run_addr {
            format!(
                "the last broker (pid {}) is still running and listens at {run_addr}, not {addr}; pass --addr {run_addr} (or set IPC_ADDR)",
                run["pid"]
            )
        } else if run["process_alive"] == true {
            format!(
                "the last broker (pid {}) is still running but does not answer at {addr}: it may be starting, stopping or hung; look at its log (docs/OPERATIONS.md, after a crash)",
                run["pid"]
            )
        } else {
            format!(
                "the last broker (pid {}, started {}) did not stop cleanly: it was killed or crashed. Acknowledged mail is safe; start it again with `claude-ipc serve` (docs/OPERATIONS.md, after a crash)",
                run["pid"],
                run["started_at"].as_str().unwrap_or("?")
            )
        });
    }
    warnings
}

fn file_size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

fn wal_path(database: &Path) -> PathBuf {
    let mut path = database.as_os_str().to_owned();
    path.push("-wal");
    PathBuf::from(path)
}

/// The command line of a running process, from /proc (Linux); `None` elsewhere.
fn process_command_line(pid: u64) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let words: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|word| !word.is_empty())
        .map(|word| String::from_utf8_lossy(word).into_owned())
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// Whether a claude-ipc process with this id is running (Linux /proc; elsewhere, false). A
/// zombie is not running, and a process whose command line does not mention claude-ipc got the
/// id after the broker was gone.
fn process_alive(pid: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state is the first field after the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    let zombie = matches!(state, Some("Z") | Some("X"));
    let ours = process_command_line(pid).is_some_and(|line| line.contains("claude-ipc"));
    pid > 0 && !zombie && ours
}

// ---- the report for people ----

/// The report as text for people. `colour` paints states when stdout is a terminal.
fn render(report: &Value, now: DateTime<Utc>, colour: bool) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    let ago = |at: &Value| -> String {
        at.as_str()
            .and_then(clock::parse)
            .map(|then| relative_time(then, now))
            .unwrap_or_else(|| "never".into())
    };
    let broker = &report["broker"];
    let addr = shown(&broker["addr"]);
    if broker["answering"] == true {
        let process = broker["process"]
            .as_str()
            .map(|p| format!(" ({})", for_terminal(p)))
            .unwrap_or_default();
        let uptime = broker["uptime_seconds"]
            .as_u64()
            .map(|s| format!(", up {}", span(s)))
            .unwrap_or_default();
        let state = if broker["healthy"] == true {
            paint("answering", Colour::Green, colour)
        } else {
            let database = for_terminal(broker["database"].as_str().unwrap_or("unhealthy"));
            paint(
                &format!("answering, DATABASE {}", database.to_uppercase()),
                Colour::Red,
                colour,
            )
        };
        line(format!(
            "broker       {state} at {addr}: pid {}{process}, version {}{uptime}",
            broker["pid"],
            shown(&broker["version"]),
        ));
        let security = match broker["security"].as_str() {
            Some("secret") => format!(
                "shared secret (register needs IPC_SHARED_SECRET){}",
                static_token_text(&broker["static_token"])
            ),
            Some("open") => paint("OPEN MODE (no shared secret)", Colour::Yellow, colour),
            Some("unix socket") => format!(
                "unix socket {} ({} mode)",
                shown(&broker["socket"]),
                shown(&broker["mode"])
            ),
            _ => "unknown".to_owned(),
        };
        line(format!("security     {security}"));
    } else {
        line(format!(
            "broker       {} at {addr}; start one with `claude-ipc serve`",
            paint("NOT ANSWERING", Colour::Red, colour)
        ));
        line("security     unknown (no broker answering)".into());
    }
    let run = &report["last_run"];
    if run.is_object() {
        let stopped = match run["stopped_at"].as_str() {
            Some(at) => format!("stopped {at}"),
            None if broker["answering"] == true => "running".into(),
            None => paint("did not stop cleanly", Colour::Yellow, colour),
        };
        line(format!(
            "last run     pid {}, version {} at {}, started {} ({}), {stopped}",
            run["pid"],
            shown(&run["version"]),
            shown(&run["addr"]),
            shown(&run["started_at"]),
            ago(&run["started_at"]),
        ));
    }
    let database = &report["database"];
    let size = |bytes: &Value| bytes.as_u64().map(human_bytes);
    line(format!(
        "data         {}  (ipc.db {}{}{})",
        shown(&report["data_dir"]),
        size(&database["bytes"]).unwrap_or_else(|| "missing".into()),
        size(&database["wal_bytes"])
            .map(|wal| format!(" + {wal} WAL"))
            .unwrap_or_default(),
        database["schema_version"]
            .as_i64()
            .map(|v| format!(", schema v{v}"))
            .unwrap_or_default(),
    ));
    if database["readable"] == true {
        render_contents(report, &mut line, &ago, colour);
    }
    for warning in report["warnings"].as_array().into_iter().flatten() {
        line(format!(
            "{} {}",
            paint("warning:", Colour::Yellow, colour),
            for_terminal(warning.as_str().unwrap_or(""))
        ));
    }
    out
}

/// How the broker treats the static token, after the security mode.
fn static_token_text(static_token: &Value) -> &'static str {
    match static_token.as_str() {
        Some("accepted") => "; static auth_token accepted (see the warning below)",
        Some("refused") => "; static auth_token refused: challenge-response only",
        _ => "",
    }
}

fn render_contents(
    report: &Value,
    line: &mut impl FnMut(String),
    ago: &impl Fn(&Value) -> String,
    colour: bool,
) {
    let instances = report["instances"].as_array().cloned().unwrap_or_default();
    let online = instances.iter().filter(|i| i["online"] == true).count();
    line(format!(
        "instances    {} registered, {online} online (seen in the last {})",
        instances.len(),
        span(ONLINE_WINDOW.as_secs())
    ));
    for instance in &instances {
        let state = if instance["online"] == true {
            paint("online ", Colour::Green, colour)
        } else {
            paint("offline", Colour::Dim, colour)
        };
        line(format!(
            "  {:<32} {state}  last seen {:<12}  {} waiting",
            shown(&instance["name"]),
            ago(&instance["last_seen"]),
            instance["waiting"]
        ));
    }
    let unregistered = report["unregistered_mail"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !unregistered.is_empty() {
        line("waiting for names not registered yet".into());
        for mail in &unregistered {
            line(format!(
                "  {:<32} {} waiting, oldest {}",
                shown(&mail["name"]),
                mail["waiting"],
                ago(&mail["oldest"])
            ));
        }
    }
    line(format!("mail waiting {} in all", report["pending_total"]));
    for forward in report["forwards"].as_array().into_iter().flatten() {
        line(format!(
            "forward      {} -> {} until {} ({})",
            shown(&forward["old_name"]),
            shown(&forward["new_name"]),
            shown(&forward["expires_at"]),
            ago(&forward["expires_at"])
        ));
    }
    let failures = &report["auth_failures_24h"];
    let reasons: Vec<String> = failures["by_reason"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(reason, count)| format!("{count} {}", for_terminal(reason)))
        .collect();
    let total = failures["total"].as_i64().unwrap_or(0);
    let text = if total == 0 {
        "none".to_owned()
    } else {
        paint(
            &format!("{total}: {}", reasons.join(", ")),
            Colour::Yellow,
            colour,
        )
    };
    line(format!("auth failures in the last 24 h: {text}"));
}

/// A string of the report for a person: "?" if missing, escaped because names, versions and
/// addresses come from the database and the broker, which other users' requests fill.
fn shown(value: &Value) -> Cow<'_, str> {
    for_terminal(value.as_str().unwrap_or("?"))
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
    }
}
