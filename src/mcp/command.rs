//! Running a command for `share_command`: split into argv with POSIX quoting rules and run
//! with no shell, a timeout and a cap on the output kept.
//!
//! No shell means `$HOME` stays the five characters `$HOME`, and `;`, `|`, `&&` or a backtick
//! are ordinary arguments: a message cannot smuggle a second command in.
//!
//! The command gets a minimal environment, not this server's: the server's holds the shared
//! secret and the session file's path, and whatever its parent passed on (API keys, cloud
//! tokens), and `printenv` would send all of it. It runs in its own process group, which is
//! killed when the command ends or times out, so nothing it starts in the background outlives
//! it (a process that leaves the group with `setsid` can; see docs/SECURITY.md).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// How long the output pipes may stay open after the command ended (a child it started may
/// still hold them); after that the output read so far is kept.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// The only variables the command inherits: what programs need to find each other, the
/// user's home and the locale. Everything else, and above all every `IPC_*` variable, is left
/// out; an allowlist, because a list of what to remove can never name every secret a parent
/// process put in the environment.
const INHERITED_VARIABLES: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "LC_NUMERIC",
    "LC_TIME",
    "LC_COLLATE",
    "TERM",
    "TZ",
    "TMPDIR",
];

/// What a command did.
#[derive(Debug, Clone)]
pub struct CommandRun {
    pub argv: Vec<String>,
    /// `None` when it was killed (by the timeout or a signal).
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    /// Some output was cut at the cap.
    pub truncated: bool,
}

/// Why a command could not be run at all; nothing was sent.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("the command is empty; give a program and its arguments, like `cargo test`")]
    Empty,
    #[error("the command has an unclosed quote or a trailing backslash; fix the quoting")]
    BadQuoting,
    #[error("cannot run `{program}`: {reason}. It runs without a shell, so use a program on PATH (write `sh -c '...'` if you really need a shell)")]
    Spawn { program: String, reason: String },
    #[error("the call was cancelled, so the command and everything it started were killed")]
    Cancelled,
}

/// Splits `command` and runs it, keeping at most `cap` bytes of each of stdout and stderr.
/// If `cancel` fires first, the command's whole process group is killed.
pub async fn run(
    command: &str,
    timeout: Duration,
    cap: usize,
    cancel: &CancellationToken,
) -> Result<CommandRun, CommandError> {
    let argv = shlex::split(command).ok_or(CommandError::BadQuoting)?;
    let (program, args) = argv.split_first().ok_or(CommandError::Empty)?;
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .envs(inherited_environment())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| CommandError::Spawn {
            program: program.clone(),
            reason: e.to_string(),
        })?;
    let stdout = tokio::spawn(read_capped(child.stdout.take(), cap));
    let stderr = tokio::spawn(read_capped(child.stderr.take(), cap));
    let mut group = ProcessGroup::of(&child);
    let ended = tokio::select! {
        ended = tokio::time::timeout(timeout, child.wait()) => ended,
        _ = cancel.cancelled() => {
            group.kill();
            let _ = child.kill().await;
            return Err(CommandError::Cancelled);
        }
    };
    let (exit_code, timed_out) = match ended {
        Ok(status) => (status.ok().and_then(|s| s.code()), false),
        Err(_) => {
            group.kill();
            let _ = child.kill().await;
            (None, true)
        }
    };
    // Whatever the command left running in the background dies with it; what it wrote is
    // still in the pipes and is read below.
    group.kill();
    let (stdout, stdout_cut) = collect(stdout).await;
    let (stderr, stderr_cut) = collect(stderr).await;
    Ok(CommandRun {
        argv,
        exit_code,
        stdout,
        stderr,
        timed_out,
        truncated: stdout_cut || stderr_cut,
    })
}

fn inherited_environment() -> Vec<(String, String)> {
    INHERITED_VARIABLES
        .iter()
        .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
        .collect()
}

/// The command's process group (its id is the command's pid), killed once: when the command
/// ends, at its timeout, or when a cancelled call drops it before either.
///
/// Linux does not hand a number out again while a process group still uses it, and pids are
/// allocated in sequence, so the kill cannot reach a stranger's group.
struct ProcessGroup(Option<libc::pid_t>);

impl ProcessGroup {
    fn of(child: &tokio::process::Child) -> ProcessGroup {
        ProcessGroup(child.id().and_then(|id| libc::pid_t::try_from(id).ok()))
    }

    /// SIGKILL to every process in the group: the command and whatever it started.
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a pipe to its end, keeping the first `cap` bytes. It keeps reading past the cap so
/// the command never blocks on a full pipe.
async fn read_capped<R: AsyncRead + Unpin>(pipe: Option<R>, cap: usize) -> (Vec<u8>, bool) {
    let Some(mut pipe) = pipe else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut chunk = vec![0u8; 8192];
    while let Ok(n) = pipe.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        let room = cap.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..n.min(room)]);
        truncated |= n > room;
    }
    (kept, truncated)
}

async fn collect(reader: tokio::task::JoinHandle<(Vec<u8>, bool)>) -> (String, bool) {
    match tokio::time::timeout(DRAIN_GRACE, reader).await {
        Ok(Ok((bytes, truncated))) => (String::from_utf8_lossy(&bytes).into_owned(), truncated),
        // A process the command started still holds the pipe open: report it as cut.
        _ => (String::new(), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> CancellationToken {
        CancellationToken::new()
    }

    #[tokio::test]
    async fn quoting_groups_words_and_nothing_is_expanded() {
        let run = run(
            "echo 'a b' $HOME ; ls",
            Duration::from_secs(10),
            1024,
            &never(),
        )
        .await
        .unwrap();
        assert_eq!(run.argv, ["echo", "a b", "$HOME", ";", "ls"]);
        assert_eq!(run.stdout, "a b $HOME ; ls\n");
        assert_eq!(run.exit_code, Some(0));
    }

    #[tokio::test]
    async fn bad_commands_are_refused_before_running() {
        let timeout = Duration::from_secs(10);
        assert!(matches!(
            run("  ", timeout, 10, &never()).await,
            Err(CommandError::Empty)
        ));
        assert!(matches!(
            run("echo 'open", timeout, 10, &never()).await,
            Err(CommandError::BadQuoting)
        ));
        assert!(matches!(
            run("no-such-program-here", timeout, 10, &never()).await,
            Err(CommandError::Spawn { .. })
        ));
    }
}
