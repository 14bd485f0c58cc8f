//! What the load generator drives: a broker it starts itself (a fresh data directory for each
//! workload, limits lifted, memory readable from /proc), or any address that speaks the
//! protocol, such as a broker it did not start or another implementation.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::wire::{self, WireError};
use claude_ipc::{background_serve, secret};

/// The broker binary's name, as `cargo build` leaves it in `target/<profile>/`.
const BROKER_BINARY: &str = "claude-ipc";

/// How long a started broker may take to answer its first ping.
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot start the broker to measure ({0}); is the data directory's disk full?")]
    Spawn(std::io::Error),
    #[error("the broker started for the run did not answer a ping within {0:?}; its log is {1}")]
    NoAnswer(Duration, PathBuf),
}

/// The broker binary is not where it was looked for, or could not be built there.
#[derive(Debug, thiserror::Error)]
#[error("no broker binary at {0}: build it first (`cargo build --release` builds it beside this program), or name it with --broker-bin")]
pub struct MissingBroker(PathBuf);

/// The `claude-ipc` binary to start brokers from: `given`, else the one beside this program
/// (`cargo build` puts both in `target/<profile>/`). Run by `cargo run`, this program first
/// has cargo bring that binary up to date, so the broker measured is the source's.
pub fn broker_binary(given: Option<PathBuf>) -> Result<PathBuf, MissingBroker> {
    let path = match given {
        Some(path) => path,
        None => {
            let beside = std::env::current_exe()
                .ok()
                .and_then(|exe| Some(exe.parent()?.join(BROKER_BINARY)))
                .unwrap_or_else(|| PathBuf::from(BROKER_BINARY));
            build_with_cargo(&beside);
            beside
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(MissingBroker(path))
    }
}

/// Under `cargo run` (which sets `CARGO`), builds the broker binary with this program's own
/// profile, which names the directory both live in. Failures are cargo's to report; a binary
/// still missing afterwards is reported by the caller.
fn build_with_cargo(beside: &Path) {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return;
    };
    let profile = match beside.parent().and_then(Path::file_name) {
        Some(dir) if dir == "debug" => "dev".into(),
        Some(dir) => dir.to_string_lossy().into_owned(),
        None => return,
    };
    eprintln!(
        "building the broker: cargo build --profile {profile} -p claude-ipc --bin {BROKER_BINARY}"
    );
    let _ = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--profile",
            &profile,
            "-p",
            "claude-ipc",
        ])
        .args(["--bin", BROKER_BINARY])
        .status();
}

/// A broker this run started: `claude-ipc serve` on a free port, with a throwaway data
/// directory that is removed when the run ends.
pub struct SpawnedBroker {
    child: Child,
    binary: PathBuf,
    /// Arguments beyond the load test's own, such as `--web 127.0.0.1:0`; kept for restarts.
    extra_args: Vec<String>,
    pub addr: SocketAddr,
    data_dir: PathBuf,
    /// How long the last start took, from spawning the process to its first answered ping.
    pub start_time: Duration,
}

impl SpawnedBroker {
    /// Starts a broker on a new, empty data directory under `parent`, with `extra_args` for
    /// `serve` beyond the load test's own.
    pub fn start(
        binary: &Path,
        parent: &Path,
        label: &str,
        extra_args: &[&str],
    ) -> Result<SpawnedBroker, TargetError> {
        let extra_args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        let data_dir = parent.join(format!(
            "claude-ipc-bench-{}-{label}-{}",
            std::process::id(),
            unique_micros()
        ));
        let addr = free_port().map_err(TargetError::Spawn)?;
        let (child, start_time) = spawn_serve(binary, &data_dir, addr, &extra_args)?;
        Ok(SpawnedBroker {
            child,
            binary: binary.to_owned(),
            extra_args,
            addr,
            data_dir,
            start_time,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Stops the broker (SIGTERM, or SIGKILL when `crash`) and starts it again on the same
    /// data directory and port; returns the time from spawn to the first answered ping.
    pub fn restart(&mut self, crash: bool) -> Result<Duration, TargetError> {
        self.stop(if crash { libc::SIGKILL } else { libc::SIGTERM });
        let (child, start_time) =
            spawn_serve(&self.binary, &self.data_dir, self.addr, &self.extra_args)?;
        self.child = child;
        self.start_time = start_time;
        Ok(start_time)
    }

    fn stop(&mut self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid, which we have not yet waited for.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let _ = self.child.wait();
    }
}

impl Drop for SpawnedBroker {
    fn drop(&mut self) {
        self.stop(libc::SIGTERM);
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Starts `serve` with the limits that would otherwise throttle a load test lifted, and waits
/// for its first answered ping.
fn spawn_serve(
    binary: &Path,
    data_dir: &Path,
    addr: SocketAddr,
    extra_args: &[String],
) -> Result<(Child, Duration), TargetError> {
    let started = Instant::now();
    let serve = background_serve::spawn(
        binary,
        &addr.to_string(),
        data_dir,
        "bench-broker.log",
        |command| {
            command
                .args(["--rate-limit", "0", "--queue-cap", "0"])
                .args(extra_args)
                .env_remove(secret::SECRET_VAR)
                .env_remove(secret::SECRET_FILE_VAR)
                .env_remove("IPC_SOCKET")
                .env("RUST_LOG", "warn");
        },
    )
    .map_err(TargetError::Spawn)?;
    let (mut child, log_path) = (serve.child, serve.log);
    while started.elapsed() < START_TIMEOUT {
        if wire::legacy_request(addr, br#"{"action":"ping"}"#).is_ok() {
            return Ok((child, started.elapsed()));
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(TargetError::NoAnswer(START_TIMEOUT, log_path))
}

/// Microseconds since the epoch: makes a data directory's name unique across runs.
pub fn unique_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_micros())
}

fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Resident memory of a process, from /proc: (now, peak), in KiB.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Whether the target keeps a connection open for a second request (this broker does; the
/// Python original answers one request per connection).
pub fn supports_persistent(addr: SocketAddr) -> Result<bool, WireError> {
    let mut connection = wire::Connection::open(addr)?;
    connection.request(br#"{"action":"ping"}"#)?;
    Ok(connection.request(br#"{"action":"ping"}"#).is_ok())
}

/// The broker's writer work so far, from `ping`: (jobs, commits). None for a target that does
/// not report it.
pub fn store_work(addr: SocketAddr) -> Option<(u64, u64)> {
    let reply = wire::legacy_request(addr, br#"{"action":"ping"}"#).ok()?;
    Some((
        reply["store"]["jobs"].as_u64()?,
        reply["store"]["commits"].as_u64()?,
    ))
}

/// Jobs per commit between two [`store_work`] readings: how many requests shared each flush.
pub fn jobs_per_commit(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((jobs_before, commits_before), (jobs_after, commits_after)) = (before?, after?);
    let commits = commits_after
        .checked_sub(commits_before)
        .filter(|c| *c > 0)?;
    Some(jobs_after.saturating_sub(jobs_before) as f64 / commits as f64)
}
