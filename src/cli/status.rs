//! `claude-ipc status`: is a broker answering, which process hosts it, and what its database
//! holds: instances, waiting mail, forwards and recent authentication failures.
//!
//! The broker part comes from `ping`. The database part is read directly with a read-only
//! connection, so it works with the broker down and never takes the broker's lock. With no
//! broker answering it still prints everything it can and exits with 3; a broker that answers
//! but refuses requests (its database removed, replaced or damaged) makes it exit with 1.

use crate::cli::output::out;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;
use serde_json::json;

use super::output::{self, for_terminal, paint, Colour};
use super::{CliError, ClientArgs, EXIT_BROKER_ERROR, EXIT_UNREACHABLE};
use crate::clock;
use crate::protocol::schema::{ClockReport, PingReply, SecurityMode};
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
    after_help = "An instance is online as the broker's `list` says now (a long-poll waiting, or a request
in the last minute; `push`: a channel-mode MCP server holds its session) when the broker answers
and you have a session, else when it was seen in the last 5 minutes. With no broker answering,
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
    let now = clock::parse(&report.checked_at).unwrap_or_else(Utc::now);
    if args.client.json {
        output::json(&serde_json::to_value(&report).expect("a status report serializes"));
    } else {
        out!("{}", render(&report, now, output::colour_enabled()));
    }
    match report.status {
        Health::Ok => Ok(()),
        Health::Unhealthy => Err(CliError::Reported(EXIT_BROKER_ERROR)),
        Health::Unreachable => Err(CliError::Reported(EXIT_UNREACHABLE)),
    }
}

// ---- the report, as `--json` prints it (docs/OPERATIONS.md) ----

/// Everything `status` reports.
#[derive(Debug, Serialize)]
struct StatusReport {
    status: Health,
    /// The broker clock's time when the broker answers (stored times are on it), else this
    /// machine's.
    checked_at: String,
    broker: BrokerReport,
    data_dir: PathBuf,
    database: DatabaseReport,
    last_run: Option<LastRun>,
    online_window_seconds: u64,
    /// Who said who is online: `broker` (its `list`, which knows who waits in a long-poll and
    /// whose session a pushing server holds) or `database` (seen within the window).
    presence: &'static str,
    instances: Vec<InstanceReport>,
    unregistered_mail: Vec<UnregisteredReport>,
    /// `None` when the database cannot be read.
    pending_total: Option<i64>,
    forwards: Vec<ForwardReport>,
    auth_failures_24h: AuthFailures,
    warnings: Vec<String>,
}

/// The exit code's reason: a healthy broker answered, one answered but refuses requests, or
/// none answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Health {
    Ok,
    Unhealthy,
    Unreachable,
}

/// The broker as `ping` describes it, or why it did not answer.
#[derive(Debug, Default, Serialize)]
struct BrokerReport {
    answering: bool,
    healthy: bool,
    addr: String,
    error: Option<String>,
    pid: Option<u64>,
    /// The broker's command line, from /proc.
    process: Option<String>,
    version: Option<String>,
    protocol: Option<u64>,
    mode: Option<String>,
    security: Option<Security>,
    socket: Option<String>,
    started_at: Option<String>,
    uptime_seconds: Option<i64>,
    clock: Option<ClockReport>,
    database: Option<String>,
    static_token: Option<String>,
    /// The dashboard's address (`serve --web`), without its login token.
    #[serde(skip_serializing_if = "Option::is_none")]
    web: Option<String>,
}

/// The security mode in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
enum Security {
    #[serde(rename = "secret")]
    Secret,
    #[serde(rename = "open")]
    Open,
    #[serde(rename = "unix socket")]
    UnixSocket,
}

#[derive(Debug, Serialize)]
struct DatabaseReport {
    path: PathBuf,
    bytes: Option<u64>,
    wal_bytes: Option<u64>,
    readable: bool,
    error: Option<String>,
    schema_version: Option<i64>,
}

/// The latest broker start the data directory records.
#[derive(Debug, Serialize)]
struct LastRun {
    pid: i64,
    version: String,
    addr: String,
    started_at: String,
    stopped_at: Option<String>,
    stopped_cleanly: bool,
    process_alive: bool,
}

#[derive(Debug, Serialize)]
struct InstanceReport {
    name: String,
    online: bool,
    /// A channel-mode MCP server holds its session (known only from the broker).
    push: bool,
    last_seen: String,
    registered_at: String,
    waiting: i64,
}

#[derive(Debug, Serialize)]
struct UnregisteredReport {
    name: String,
    waiting: i64,
    oldest: String,
}

#[derive(Debug, Serialize)]
struct ForwardReport {
    old_name: String,
    new_name: String,
    expires_at: String,
}

/// Authentication failures in the last 24 hours; `total` is `None` when the database cannot
/// be read.
#[derive(Debug, Default, Serialize)]
struct AuthFailures {
    total: Option<i64>,
    by_reason: BTreeMap<String, i64>,
}

// ---- gathering it ----

/// Everything `status` reports: the broker's `ping`, the database read directly, and the
/// process checks.
fn gather(client: &ClientArgs, data_dir: &Path, now: DateTime<Utc>) -> StatusReport {
    let broker = ask_broker(client);
    // Stored times are on the broker clock; when the wall clock has jumped, "online" and
    // "ago" are measured against the broker's time, which the broker reports.
    let now = broker
        .clock
        .as_ref()
        .and_then(|clock| clock::parse(&clock.broker))
        .unwrap_or(now);
    let (database, snapshot) = read_database(&data_dir.join("ipc.db"), now);
    let mut report = StatusReport {
        status: match (broker.answering, broker.healthy) {
            (true, true) => Health::Ok,
            (true, false) => Health::Unhealthy,
            (false, _) => Health::Unreachable,
        },
        checked_at: clock::to_text(now),
        broker,
        data_dir: data_dir.to_owned(),
        database,
        last_run: None,
        online_window_seconds: ONLINE_WINDOW.as_secs(),
        presence: "database",
        instances: Vec::new(),
        unregistered_mail: Vec::new(),
        pending_total: None,
        forwards: Vec::new(),
        auth_failures_24h: AuthFailures::default(),
        warnings: Vec::new(),
    };
    if let Some(snapshot) = &snapshot {
        fill_from_database(&mut report, snapshot, now);
    }
    if report.status == Health::Ok {
        fill_from_broker(&mut report, client);
    }
    report.warnings = warnings(&report);
    report
}

/// The database's files and, if it can be read, what it holds.
fn read_database(database_path: &Path, now: DateTime<Utc>) -> (DatabaseReport, Option<Snapshot>) {
    // Sizes first: opening the database read-only may create an empty -wal file.
    let (bytes, wal_bytes) = (
        file_size(database_path),
        file_size(&wal_path(database_path)),
    );
    let snapshot = inspect::open_read_only(database_path).and_then(|conn| {
        let since = clock::to_text(now - FAILURE_WINDOW);
        inspect::snapshot(&conn, &clock::to_text(now), &since).map_err(Into::into)
    });
    let report = DatabaseReport {
        path: database_path.to_owned(),
        bytes,
        wal_bytes,
        readable: snapshot.is_ok(),
        error: snapshot.as_ref().err().map(|e| e.to_string()),
        schema_version: snapshot.as_ref().ok().and_then(|s| s.schema_version),
    };
    (report, snapshot.ok())
}

/// The broker's side: `ping`, or why it did not answer. A broker that answers `ping` with an
/// error (its database is gone or damaged) is answering but not healthy.
fn ask_broker(client: &ClientArgs) -> BrokerReport {
    let reply = client
        .connect_within(PING_TIMEOUT)
        .and_then(|mut client| client.request(&json!({"action": "ping"})));
    let unanswered = BrokerReport {
        addr: client.addr.clone(),
        ..BrokerReport::default()
    };
    let reply = match reply {
        Ok(reply) => reply,
        Err(error) => {
            return BrokerReport {
                error: Some(error.to_string()),
                ..unanswered
            }
        }
    };
    // The one place the reply is read as JSON: from here on it is typed.
    match serde_json::from_value::<PingReply>(reply) {
        Ok(ping) => answered(ping, unanswered),
        Err(e) => BrokerReport {
            answering: true,
            error: Some(format!("its ping reply is not understood: {e}")),
            ..unanswered
        },
    }
}

/// The broker report of a broker that answered `ping`.
fn answered(ping: PingReply, unanswered: BrokerReport) -> BrokerReport {
    let pid = u64::from(ping.pid);
    BrokerReport {
        answering: true,
        healthy: ping.refusal.is_none(),
        error: ping.refusal.map(|refusal| refusal.message),
        security: security(ping.socket.is_some(), ping.mode),
        process: process_command_line(pid),
        pid: Some(pid),
        version: Some(ping.version),
        protocol: Some(u64::from(ping.protocol)),
        mode: ping.mode.map(|mode| mode.as_str().to_owned()),
        socket: ping.socket,
        started_at: ping.started_at,
        uptime_seconds: Some(ping.uptime_seconds),
        clock: ping.clock,
        database: Some(ping.database),
        static_token: ping.static_token.map(|token| token.as_str().to_owned()),
        web: ping.web,
        ..unanswered
    }
}

/// Presence as the broker knows it, from its `list`, when this user has a session to ask
/// with and the broker proves it is the one this client trusts (the token is sent only to
/// it). Without that, the database's estimate stands.
fn fill_from_broker(report: &mut StatusReport, client: &ClientArgs) {
    let Ok(session) = crate::session_file::SessionFile::load() else {
        return;
    };
    let listed = client.connect_within(PING_TIMEOUT).and_then(|mut broker| {
        broker.verify_broker(&super::broker_check())?;
        broker.list(&session.session_token)
    });
    let Ok(listed) = listed else {
        return;
    };
    for instance in &mut report.instances {
        if let Some(entry) = listed.iter().find(|entry| entry.id == instance.name) {
            instance.online = entry.online;
            instance.push = entry.push;
        }
    }
    report.presence = "broker";
}

/// The security mode in one word: a Unix socket (whose file mode and peer check keep other
/// users out) wins over the TCP modes.
fn security(has_socket: bool, mode: Option<SecurityMode>) -> Option<Security> {
    if has_socket {
        return Some(Security::UnixSocket);
    }
    mode.map(|mode| match mode {
        SecurityMode::Secret => Security::Secret,
        SecurityMode::Open => Security::Open,
    })
}

fn fill_from_database(report: &mut StatusReport, snapshot: &Snapshot, now: DateTime<Utc>) {
    let online_since = clock::to_text(now - chrono::Duration::from_std(ONLINE_WINDOW).unwrap());
    report.instances = snapshot
        .instances
        .iter()
        .map(|i| InstanceReport {
            name: i.name.clone(),
            online: i.last_seen_at >= online_since,
            push: false,
            last_seen: i.last_seen_at.clone(),
            registered_at: i.registered_at.clone(),
            waiting: i.waiting,
        })
        .collect();
    report.unregistered_mail = snapshot
        .unregistered_mail
        .iter()
        .map(|m| UnregisteredReport {
            name: m.name.clone(),
            waiting: m.waiting,
            oldest: m.oldest.clone(),
        })
        .collect();
    report.pending_total = Some(snapshot.pending_total);
    report.forwards = snapshot
        .forwards
        .iter()
        .map(|f| ForwardReport {
            old_name: f.old_name.clone(),
            new_name: f.new_name.clone(),
            expires_at: f.expires_at.clone(),
        })
        .collect();
    report.auth_failures_24h = AuthFailures {
        total: Some(snapshot.auth_failures.iter().map(|(_, count)| count).sum()),
        by_reason: snapshot.auth_failures.iter().cloned().collect(),
    };
    report.last_run = snapshot.last_run.as_ref().map(|run| LastRun {
        pid: run.pid,
        version: run.version.clone(),
        addr: run.addr.clone(),
        started_at: run.started_at.clone(),
        stopped_at: run.stopped_at.clone(),
        stopped_cleanly: run.stopped_at.is_some(),
        process_alive: u64::try_from(run.pid).ok().is_some_and(process_alive),
    });
}

// ---- what an operator should look at ----

/// Things an operator should look at, in words.
fn warnings(report: &StatusReport) -> Vec<String> {
    let broker = &report.broker;
    let mut warnings = Vec::new();
    if broker.answering && !broker.healthy {
        warnings.push(format!(
            "the broker answers but refuses requests: {}",
            broker.error.as_deref().unwrap_or("unknown error")
        ));
    }
    if !report.database.readable {
        warnings.push(format!(
            "cannot read the database: {}",
            report.database.error.as_deref().unwrap_or("unknown error")
        ));
    }
    if broker.answering {
        warnings.extend(answering_broker_warnings(broker, report.last_run.as_ref()));
    } else if let Some(run) = report.last_run.as_ref().filter(|run| !run.stopped_cleanly) {
        warnings.push(unclean_stop_warning(broker, run));
    }
    warnings
}

/// What is worth saying about the broker that answers: its mode, its static token, its wall
/// clock, and whether it is the one this data directory records.
fn answering_broker_warnings(broker: &BrokerReport, run: Option<&LastRun>) -> Vec<String> {
    let mut warnings = Vec::new();
    if broker.security == Some(Security::Open) {
        warnings.push("open mode: any local process can register any name; set IPC_SHARED_SECRET_FILE (a 0600 file holding the secret) or IPC_SHARED_SECRET for the broker and its clients".into());
    }
    if broker.static_token.as_deref() == Some("accepted") {
        warnings.push(STATIC_TOKEN_COST.into());
    }
    if let Some(ahead) = broker
        .clock
        .as_ref()
        .and_then(wall_clock_offset_worth_saying)
    {
        warnings.push(ahead);
    }
    if let Some(run) = run {
        let recorded = !run.stopped_cleanly && u64::try_from(run.pid).ok() == broker.pid;
        if !recorded {
            warnings.push(format!(
                "the broker answering at {} (pid {}) is not the one recorded in this data directory (last run: pid {}); pass the broker's --data-dir (or IPC_DATA_DIR)",
                broker.addr,
                number(broker.pid),
                run.pid
            ));
        }
    }
    warnings
}

/// The broker's wall clock is off its broker clock by more than a few seconds: say so, and
/// that the rules are not affected, so an operator who sees odd times knows why.
fn wall_clock_offset_worth_saying(clock: &ClockReport) -> Option<String> {
    let ahead_ms = clock.wall_ahead_ms;
    if ahead_ms.abs() <= 2_000 {
        return None;
    }
    let direction = if ahead_ms > 0 { "ahead of" } else { "behind" };
    Some(format!(
        "the broker's wall clock is {} {direction} its broker clock (the wall clock jumped); times are stored and windows measured by the broker clock ({}), so nothing expires early or waits longer",
        span(ahead_ms.unsigned_abs() / 1000),
        clock.broker,
    ))
}

/// No broker answers, and the last one did not stop cleanly: still running elsewhere, hung,
/// or crashed.
fn unclean_stop_warning(broker: &BrokerReport, run: &LastRun) -> String {
    let (addr, run_addr) = (broker.addr.as_str(), run.addr.as_str());
    if run.process_alive && addr != run_addr {
        format!(
            "the last broker (pid {}) is still running and listens at {run_addr}, not {addr}; pass --addr {run_addr} (or set IPC_ADDR)",
            run.pid
        )
    } else if run.process_alive {
        format!(
            "the last broker (pid {}) is still running but does not answer at {addr}: it may be starting, stopping or hung; look at its log (docs/OPERATIONS.md, after a crash)",
            run.pid
        )
    } else {
        format!(
            "the last broker (pid {}, started {}) did not stop cleanly: it was killed or crashed. Acknowledged mail is safe; start it again with `claude-ipc serve` (docs/OPERATIONS.md, after a crash)",
            run.pid, run.started_at
        )
    }
}

// ---- the processes behind the report ----

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

/// The report as text for people, a section at a time. `colour` paints states when stdout
/// is a terminal.
fn render(report: &StatusReport, now: DateTime<Utc>, colour: bool) -> String {
    let mut lines = broker_lines(&report.broker, colour);
    if let Some(run) = &report.last_run {
        lines.push(last_run_line(run, report.broker.answering, now, colour));
    }
    lines.push(data_line(report));
    if report.database.readable {
        lines.extend(instance_lines(report, now, colour));
        lines.extend(unregistered_lines(&report.unregistered_mail, now));
        lines.push(format!(
            "mail waiting {} in all",
            report.pending_total.unwrap_or_default()
        ));
        lines.extend(forward_lines(&report.forwards, now));
        lines.push(auth_failures_line(&report.auth_failures_24h, colour));
    }
    for warning in &report.warnings {
        lines.push(format!(
            "{} {}",
            paint("warning:", Colour::Yellow, colour),
            for_terminal(warning)
        ));
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// "broker ..." and "security ...".
fn broker_lines(broker: &BrokerReport, colour: bool) -> Vec<String> {
    let addr = for_terminal(&broker.addr);
    if !broker.answering {
        return vec![
            format!(
                "broker       {} at {addr}; start one with `claude-ipc serve`",
                paint("NOT ANSWERING", Colour::Red, colour)
            ),
            "security     unknown (no broker answering)".into(),
        ];
    }
    let process = broker
        .process
        .as_deref()
        .map(|p| format!(" ({})", for_terminal(p)))
        .unwrap_or_default();
    let uptime = broker
        .uptime_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map(|s| format!(", up {}", span(s)))
        .unwrap_or_default();
    let state = if broker.healthy {
        paint("answering", Colour::Green, colour)
    } else {
        let database = for_terminal(broker.database.as_deref().unwrap_or("unhealthy"));
        paint(
            &format!("answering, DATABASE {}", database.to_uppercase()),
            Colour::Red,
            colour,
        )
    };
    vec![
        format!(
            "broker       {state} at {addr}: pid {}{process}, version {}{uptime}",
            number(broker.pid),
            shown(&broker.version),
        ),
        format!("security     {}", security_text(broker, colour)),
        match &broker.web {
            Some(url) => format!(
                "dashboard    {}; `claude-ipc web` prints the login link",
                for_terminal(url)
            ),
            None => "dashboard    off (`claude-ipc serve --web 127.0.0.1:0` turns it on)".into(),
        },
    ]
}

fn security_text(broker: &BrokerReport, colour: bool) -> String {
    match broker.security {
        Some(Security::Secret) => format!(
            "shared secret (register needs IPC_SHARED_SECRET){}",
            static_token_text(broker.static_token.as_deref())
        ),
        Some(Security::Open) => paint("OPEN MODE (no shared secret)", Colour::Yellow, colour),
        Some(Security::UnixSocket) => format!(
            "unix socket {} ({} mode)",
            shown(&broker.socket),
            shown(&broker.mode)
        ),
        None => "unknown".to_owned(),
    }
}

/// How the broker treats the static token, after the security mode.
fn static_token_text(static_token: Option<&str>) -> &'static str {
    match static_token {
        Some("accepted") => "; static auth_token accepted (see the warning below)",
        Some("refused") => "; static auth_token refused: challenge-response only",
        _ => "",
    }
}

fn last_run_line(run: &LastRun, answering: bool, now: DateTime<Utc>, colour: bool) -> String {
    let stopped = match &run.stopped_at {
        Some(at) => format!("stopped {}", for_terminal(at)),
        None if answering => "running".into(),
        None => paint("did not stop cleanly", Colour::Yellow, colour),
    };
    format!(
        "last run     pid {}, version {} at {}, started {} ({}), {stopped}",
        run.pid,
        for_terminal(&run.version),
        for_terminal(&run.addr),
        for_terminal(&run.started_at),
        ago(&run.started_at, now),
    )
}

/// "data ..." : the directory, the database's size and its schema.
fn data_line(report: &StatusReport) -> String {
    let database = &report.database;
    format!(
        "data         {}  (ipc.db {}{}{})",
        for_terminal(&report.data_dir.display().to_string()),
        database
            .bytes
            .map(human_bytes)
            .unwrap_or_else(|| "missing".into()),
        database
            .wal_bytes
            .map(|wal| format!(" + {} WAL", human_bytes(wal)))
            .unwrap_or_default(),
        database
            .schema_version
            .map(|v| format!(", schema v{v}"))
            .unwrap_or_default(),
    )
}

fn instance_lines(report: &StatusReport, now: DateTime<Utc>, colour: bool) -> Vec<String> {
    let instances = &report.instances;
    let online = instances.iter().filter(|i| i.online).count();
    let source = match report.presence {
        "broker" => "as the broker sees them now".to_owned(),
        _ => format!("seen in the last {}", span(ONLINE_WINDOW.as_secs())),
    };
    let mut lines = vec![format!(
        "instances    {} registered, {online} online ({source})",
        instances.len(),
    )];
    for instance in instances {
        let state = match (instance.online, instance.push) {
            (_, true) => paint("push   ", Colour::Green, colour),
            (true, false) => paint("online ", Colour::Green, colour),
            (false, false) => paint("offline", Colour::Dim, colour),
        };
        lines.push(format!(
            "  {:<32} {state}  last seen {:<12}  {} waiting",
            for_terminal(&instance.name),
            ago(&instance.last_seen, now),
            instance.waiting
        ));
    }
    lines
}

fn unregistered_lines(unregistered: &[UnregisteredReport], now: DateTime<Utc>) -> Vec<String> {
    if unregistered.is_empty() {
        return Vec::new();
    }
    let mut lines = vec!["waiting for names not registered yet".to_owned()];
    for mail in unregistered {
        lines.push(format!(
            "  {:<32} {} waiting, oldest {}",
            for_terminal(&mail.name),
            mail.waiting,
            ago(&mail.oldest, now)
        ));
    }
    lines
}

fn forward_lines(forwards: &[ForwardReport], now: DateTime<Utc>) -> Vec<String> {
    forwards
        .iter()
        .map(|forward| {
            format!(
                "forward      {} -> {} until {} ({})",
                for_terminal(&forward.old_name),
                for_terminal(&forward.new_name),
                for_terminal(&forward.expires_at),
                ago(&forward.expires_at, now)
            )
        })
        .collect()
}

fn auth_failures_line(failures: &AuthFailures, colour: bool) -> String {
    let total = failures.total.unwrap_or(0);
    let text = if total == 0 {
        "none".to_owned()
    } else {
        let reasons: Vec<String> = failures
            .by_reason
            .iter()
            .map(|(reason, count)| format!("{count} {}", for_terminal(reason)))
            .collect();
        paint(
            &format!("{total}: {}", reasons.join(", ")),
            Colour::Yellow,
            colour,
        )
    };
    format!("auth failures in the last 24 h: {text}")
}

/// How long ago a stored time was, or "never" if it is not one.
fn ago(at: &str, now: DateTime<Utc>) -> String {
    clock::parse(at)
        .map(|then| relative_time(then, now))
        .unwrap_or_else(|| "never".into())
}

/// A string of the report for a person: "?" if missing, escaped because names, versions and
/// addresses come from the database and the broker, which other users' requests fill.
fn shown(value: &Option<String>) -> Cow<'_, str> {
    for_terminal(value.as_deref().unwrap_or("?"))
}

/// A number of the report for a person, "?" if missing.
fn number(value: Option<u64>) -> String {
    value.map_or_else(|| "?".to_owned(), |n| n.to_string())
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
    }
}
