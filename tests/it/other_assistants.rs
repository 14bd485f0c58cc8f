//! `claude-ipc hook` for Codex and Gemini CLI: each run with the event input their
//! documentation (and published schemas) give, checking the output shape each one reads —
//! Codex: plain stdout as context, exit 2 with a non-empty stderr as a Stop's continuation
//! prompt; Gemini CLI: stdout that is one JSON object, nothing at all otherwise (it would read
//! a lone stderr as a message).
use crate::common;
use crate::hook::run_hook;

use std::path::Path;
use std::process::Output;

use common::*;
use serde_json::{json, Value};

/// Codex's `Stop` input: every field its `stop.command.input` schema requires.
fn codex_stop_input(session_id: &str) -> String {
    json!({
        "session_id": session_id,
        "turn_id": "turn-7",
        "transcript_path": null,
        "cwd": "/home/user/demo",
        "hook_event_name": "Stop",
        "model": "gpt-5-codex",
        "permission_mode": "default",
        "stop_hook_active": false,
        "last_assistant_message": "Done.",
    })
    .to_string()
}

/// Codex's `UserPromptSubmit` input (its `user-prompt-submit.command.input` schema).
fn codex_user_prompt_submit_input(session_id: &str) -> String {
    json!({
        "session_id": session_id,
        "turn_id": "turn-8",
        "transcript_path": "/home/user/.codex/sessions/rollout.jsonl",
        "cwd": "/home/user/demo",
        "hook_event_name": "UserPromptSubmit",
        "model": "gpt-5-codex",
        "permission_mode": "default",
        "prompt": "any mail?",
    })
    .to_string()
}

/// Gemini CLI's base input (docs/hooks/reference.md) plus the event's own fields.
fn gemini_input(event: &str, extra: Value) -> String {
    let mut input = json!({
        "session_id": "1b6c5e1e-6d8f-4a55-9d0b-2f1f7c9e0a11",
        "transcript_path": "/home/user/.gemini/tmp/demo/chats/session.json",
        "cwd": "/home/user/demo",
        "hook_event_name": event,
        "timestamp": "2026-12-02T03:00:00.000Z",
    });
    input
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    input.to_string()
}

struct Setup {
    broker: TestBroker,
    _dir: tempfile::TempDir,
    session_file: std::path::PathBuf,
    alice: String,
}

/// A broker, carol registered through the session file the hooks read, and alice to write.
fn setup() -> Setup {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let session_file = dir.path().join("session");
    let registered = cli(&broker.addr(), &session_file, &["register", "carol"]);
    assert!(registered.status.success(), "{registered:?}");
    let alice = broker.register("alice");
    Setup {
        broker,
        _dir: dir,
        session_file,
        alice,
    }
}

impl Setup {
    fn send(&self, content: &str) {
        self.broker
            .client()
            .send(&self.alice, "carol", content, None, None)
            .unwrap();
    }

    fn hook(&self, args: &[&str], stdin: &str) -> Output {
        run_hook(
            &self.broker.addr(),
            &self.session_file,
            &self.broker.data_dir(),
            args,
            stdin,
        )
    }

    fn session_file(&self) -> &Path {
        &self.session_file
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn assert_nothing(output: &Output) {
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(output.stdout.is_empty(), "{}", text(&output.stdout));
    assert!(output.stderr.is_empty(), "{}", text(&output.stderr));
}

/// The whole of stdout as one JSON object, as Gemini CLI requires.
fn json_stdout(output: &Output) -> Value {
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(output.stderr.is_empty(), "{}", text(&output.stderr));
    let value: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON value ({e}): {}",
            text(&output.stdout)
        )
    });
    assert!(value.is_object(), "{value}");
    value
}

#[test]
fn codex_stop_continues_the_turn_with_new_mail_once() {
    let setup = setup();
    let stop = ["--event", "stop"];
    assert_nothing(&setup.hook(&stop, &codex_stop_input("thread-1")));
    setup.send("review my branch");
    let told = setup.hook(&stop, &codex_stop_input("thread-1"));
    // Codex reads exit 2 as "continue", with stderr (which must not be empty) as the prompt.
    assert_eq!(told.status.code(), Some(2), "{told:?}");
    assert!(told.stdout.is_empty(), "{}", text(&told.stdout));
    assert_eq!(
        text(&told.stderr),
        "📬 1 new message from alice: use the check tool of claude-ipc to read it\n"
    );
    // At the next Stop of the continued turn the same mail is not announced again, so the
    // turn can end.
    let again = codex_stop_input("thread-1")
        .replace("\"stop_hook_active\":false", "\"stop_hook_active\":true");
    assert_nothing(&setup.hook(&stop, &again));
    let checked = cli(
        &setup.broker.addr(),
        setup.session_file(),
        &["check", "--json"],
    );
    let reply: Value = serde_json::from_slice(&checked.stdout).unwrap();
    assert_eq!(contents(&reply), ["review my branch"]);
}

#[test]
fn codex_user_prompt_submit_gets_a_plain_line_it_adds_as_context() {
    let setup = setup();
    setup.send("hello");
    let output = setup.hook(&[], &codex_user_prompt_submit_input("thread-2"));
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let line = text(&output.stdout);
    // Codex takes plain stdout as context, but fails a hook whose stdout looks like JSON.
    assert!(!line.starts_with('{') && !line.starts_with('['), "{line}");
    assert_eq!(line, "📬 1 new message (from alice): use the check tool\n");
}

#[test]
fn codex_post_tool_use_gets_its_documented_json_shape() {
    let setup = setup();
    let input = json!({
        "session_id": "thread-3", "turn_id": "turn-9", "transcript_path": null,
        "cwd": "/home/user/demo", "hook_event_name": "PostToolUse", "model": "gpt-5-codex",
        "permission_mode": "default", "tool_name": "Bash", "tool_use_id": "call-1",
        "tool_input": {"command": "cargo test"}, "tool_response": "ok",
    })
    .to_string();
    let args = ["--event", "post-tool-use"];
    assert_nothing(&setup.hook(&args, &input));
    setup.send("hello");
    // Codex's post-tool-use.command.output schema: no other top-level property, and
    // hookSpecificOutput with hookEventName and a string additionalContext only.
    assert_eq!(
        json_stdout(&setup.hook(&args, &input)),
        json!({"hookSpecificOutput": {
            "hookEventName": "PostToolUse",
            "additionalContext": "📬 1 new message since the last notice (from alice): use the check tool",
        }})
    );
    // The same session's next tool call: told already, nothing said.
    assert_nothing(&setup.hook(&args, &input));
}

#[test]
fn gemini_before_agent_after_tool_and_session_start_get_additional_context() {
    let setup = setup();
    let events = [
        (
            "gemini-before-agent",
            "BeforeAgent",
            json!({"prompt": "any mail?"}),
        ),
        (
            "gemini-after-tool",
            "AfterTool",
            json!({"tool_name": "read_file", "tool_input": {"path": "a"},
                   "tool_response": {"llmContent": "x", "returnDisplay": "x"}}),
        ),
        (
            "gemini-session-start",
            "SessionStart",
            json!({"source": "startup"}),
        ),
    ];
    for (flag, name, extra) in &events {
        assert_nothing(&setup.hook(&["--event", flag], &gemini_input(name, extra.clone())));
    }
    setup.send("ping");
    for (flag, name, extra) in &events {
        let output =
            json_stdout(&setup.hook(&["--event", flag], &gemini_input(name, extra.clone())));
        assert_eq!(
            output,
            json!({"hookSpecificOutput": {
                "hookEventName": name,
                "additionalContext": "📬 1 new message (from alice): use the check tool",
            }}),
            "{flag}"
        );
    }
}

#[test]
fn gemini_after_agent_denies_the_stop_once_for_new_mail() {
    let setup = setup();
    let after_agent = |active: bool| {
        gemini_input(
            "AfterAgent",
            json!({"prompt": "fix the test", "prompt_response": "Fixed.",
                   "stop_hook_active": active}),
        )
    };
    let args = ["--event", "gemini-after-agent"];
    assert_nothing(&setup.hook(&args, &after_agent(false)));
    setup.send("one");
    setup.send("two");
    let output = json_stdout(&setup.hook(&args, &after_agent(false)));
    assert_eq!(
        output,
        json!({"decision": "deny",
               "reason": "📬 2 new messages from alice: use the check tool of claude-ipc to read them"})
    );
    // The retry turn's AfterAgent (stop_hook_active) is not denied again for the same mail.
    assert_nothing(&setup.hook(&args, &after_agent(true)));
}
