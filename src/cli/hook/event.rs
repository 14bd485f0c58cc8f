//! The event a hook is run for, as Claude Code, Codex and Gemini CLI give it: one JSON object
//! on stdin with at least `session_id`. It is read with a bound on its size and on the time it
//! takes (a hook run by hand from a terminal, or by a client that never closes stdin, must
//! not hang), and its session id names the watcher the broker records announcements for.

use std::io::{IsTerminal, Read};
use std::sync::mpsc;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The most the event may hold. Claude Code's `Stop` input carries the model's last message,
/// which can be long; nothing sends megabytes.
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// How long stdin may take to close. Every client writes the event at once and closes it.
const STDIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest watcher name the broker takes (see the `watch` action).
const MAX_WATCHER_CHARS: usize = 128;

/// The fields of the event the hook uses; the rest (`transcript_path`, `cwd`,
/// `stop_hook_active`, `source`, …) are accepted and ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HookInput {
    /// The assistant's id for this session: a UUID for Claude Code and Gemini CLI, the thread
    /// id for Codex.
    pub session_id: String,
    /// The event's name as the client spells it (`Stop`, `SessionStart`, `AfterAgent`), for
    /// the log.
    #[serde(default)]
    pub hook_event_name: Option<String>,
}

/// Why no usable event was on stdin; each text says what was wrong, for the hook log.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("stdin is a terminal, not a hook event; the client pipes the event's JSON in (try: echo '{{\"session_id\":\"test\"}}' | claude-ipc hook --event stop)")]
    Terminal,
    #[error("stdin did not close within {} s; a hook client writes the event's JSON and closes it", STDIN_TIMEOUT.as_secs())]
    Slow,
    #[error("cannot read stdin: {0}")]
    Io(std::io::Error),
    #[error("the event on stdin is larger than {MAX_EVENT_BYTES} bytes")]
    TooLarge,
    #[error("stdin is not a hook event's JSON with a session_id ({0})")]
    NotAnEvent(String),
    #[error("the event's session_id is empty")]
    EmptySession,
}

/// Reads and parses the event on stdin.
pub fn read_stdin() -> Result<HookInput, EventError> {
    if std::io::stdin().is_terminal() {
        return Err(EventError::Terminal);
    }
    parse(&read_bounded()?)
}

/// Reads stdin on a thread of its own, so that a client that never closes it costs this
/// process [`STDIN_TIMEOUT`] and not its whole run; the thread is left blocked on exit.
fn read_bounded() -> Result<Vec<u8>, EventError> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let read = std::io::stdin()
            .lock()
            .take(MAX_EVENT_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map(|_| bytes);
        let _ = sender.send(read);
    });
    match receiver.recv_timeout(STDIN_TIMEOUT) {
        Ok(Ok(bytes)) if bytes.len() > MAX_EVENT_BYTES => Err(EventError::TooLarge),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) => Err(EventError::Io(error)),
        Err(_) => Err(EventError::Slow),
    }
}

/// Parses one event; only `session_id` is required, and it must not be empty.
pub fn parse(bytes: &[u8]) -> Result<HookInput, EventError> {
    let input: HookInput =
        serde_json::from_slice(bytes).map_err(|e| EventError::NotAnEvent(e.to_string()))?;
    if input.session_id.is_empty() {
        return Err(EventError::EmptySession);
    }
    Ok(input)
}

/// The watcher name for a session: its id itself when the broker takes it as a watcher name
/// (1–128 letters, digits and `-_.:`, which every documented id is), else `sha256:` and the
/// hex digest of the id, so that any id still names one watcher, the same on every run.
pub fn watcher_for(session_id: &str) -> String {
    let usable = session_id.chars().count() <= MAX_WATCHER_CHARS
        && !session_id.is_empty()
        && session_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if usable {
        return session_id.to_owned();
    }
    let digest = Sha256::digest(session_id.as_bytes());
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claude_codes_stop_input_gives_its_session_id() {
        let stop = br#"{"session_id":"abc123","transcript_path":"/home/u/.claude/projects/p/abc123.jsonl","cwd":"/home/u/p","permission_mode":"default","hook_event_name":"Stop","stop_hook_active":false,"last_assistant_message":"Done."}"#;
        let input = parse(stop).unwrap();
        assert_eq!(input.session_id, "abc123");
        assert_eq!(input.hook_event_name.as_deref(), Some("Stop"));
    }

    #[test]
    fn an_event_without_a_usable_session_id_is_refused_with_the_reason() {
        let missing = parse(br#"{"hook_event_name":"Stop"}"#).unwrap_err();
        assert!(missing.to_string().contains("session_id"), "{missing}");
        let empty = parse(br#"{"session_id":""}"#).unwrap_err();
        assert!(matches!(empty, EventError::EmptySession));
        let not_json = parse(b"Stop").unwrap_err();
        assert!(matches!(not_json, EventError::NotAnEvent(_)));
        let not_a_string = parse(br#"{"session_id":7}"#).unwrap_err();
        assert!(matches!(not_a_string, EventError::NotAnEvent(_)));
    }

    #[test]
    fn a_session_id_is_its_own_watcher_name_when_the_broker_takes_it() {
        let uuid = "9ecf22fa-edf8-4332-ae85-b6d5456eda64";
        assert_eq!(watcher_for(uuid), uuid);
        assert_eq!(watcher_for("thread:1.a_b"), "thread:1.a_b");
        let long = "a".repeat(128);
        assert_eq!(watcher_for(&long), long);
    }

    #[test]
    fn any_other_session_id_names_one_stable_hashed_watcher() {
        let odd = watcher_for("a b/c");
        assert!(odd.starts_with("sha256:"), "{odd}");
        assert_eq!(odd.len(), "sha256:".len() + 64);
        assert_eq!(odd, watcher_for("a b/c"));
        assert_ne!(odd, watcher_for("a b/d"));
        assert!(watcher_for(&"a".repeat(129)).starts_with("sha256:"));
        assert!(watcher_for("é").starts_with("sha256:"));
    }
}
