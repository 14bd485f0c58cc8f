//! The Claude Code plugin shipped in the repository: `.claude-plugin/marketplace.json`, the
//! plugin's `.claude-plugin/plugin.json`, `.mcp.json` and `hooks/hooks.json`, checked against
//! the fields Claude Code documents for each (required keys, types, hook events and their
//! shapes), and every command they run parsed by this binary's own command line and run
//! with `--help`, so a renamed subcommand or flag breaks this test.
use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use claude_ipc::cli::{Cli, Command as Subcommand};
use common::*;
use serde_json::{Map, Value};

/// The repository's root, where the marketplace lives.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_json(path: &Path) -> Map<String, Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    match serde_json::from_str(&text) {
        Ok(Value::Object(object)) => object,
        other => panic!("{} is not a JSON object: {other:?}", path.display()),
    }
}

/// A plugin or marketplace name as Claude Code wants it: kebab-case, no spaces.
fn is_kebab(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn string<'a>(object: &'a Map<String, Value>, key: &str, file: &str) -> &'a str {
    object
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{file}: `{key}` must be a string"))
}

fn only_known_keys(object: &Map<String, Value>, known: &[&str], file: &str) {
    for key in object.keys() {
        assert!(
            known.contains(&key.as_str()),
            "{file}: `{key}` is not a documented field ({known:?})"
        );
    }
}

fn is_semver(version: &str) -> bool {
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.parse::<u64>().is_ok())
}

/// The plugin directory the marketplace's only entry points at, and that entry.
fn plugin_entry() -> (PathBuf, Map<String, Value>) {
    let file = ".claude-plugin/marketplace.json";
    let marketplace = read_json(&root().join(file));
    only_known_keys(
        &marketplace,
        &[
            "$schema",
            "name",
            "owner",
            "metadata",
            "plugins",
            "description",
            "version",
        ],
        file,
    );
    assert!(is_kebab(string(&marketplace, "name", file)));
    let owner = marketplace["owner"]
        .as_object()
        .expect("owner is an object");
    string(owner, "name", "marketplace owner");
    let plugins = marketplace["plugins"]
        .as_array()
        .expect("plugins is an array");
    assert_eq!(plugins.len(), 1, "one plugin: claude-ipc");
    let entry = plugins[0]
        .as_object()
        .expect("a plugin entry is an object")
        .clone();
    only_known_keys(
        &entry,
        &[
            "name",
            "source",
            "description",
            "version",
            "author",
            "homepage",
            "repository",
            "license",
            "keywords",
            "category",
            "tags",
            "strict",
            "commands",
            "agents",
            "hooks",
            "mcpServers",
            "lspServers",
        ],
        "marketplace plugin entry",
    );
    assert_eq!(string(&entry, "name", "plugin entry"), "claude-ipc");
    let source = string(&entry, "source", "plugin entry");
    assert!(
        source.starts_with("./"),
        "a relative source starts with ./: {source}"
    );
    let dir = root().join(source.trim_start_matches("./"));
    assert!(dir.is_dir(), "{} is not a directory", dir.display());
    (dir, entry)
}

#[test]
fn the_marketplace_and_plugin_manifests_follow_the_documented_schema() {
    let (dir, entry) = plugin_entry();
    let file = "plugins/claude-ipc/.claude-plugin/plugin.json";
    let manifest = read_json(&dir.join(".claude-plugin/plugin.json"));
    only_known_keys(
        &manifest,
        &[
            "$schema",
            "name",
            "version",
            "description",
            "author",
            "homepage",
            "repository",
            "license",
            "keywords",
            "commands",
            "agents",
            "skills",
            "hooks",
            "mcpServers",
            "outputStyles",
            "lspServers",
        ],
        file,
    );
    let name = string(&manifest, "name", file);
    assert!(is_kebab(name));
    assert_eq!(
        name, entry["name"],
        "the entry names the plugin it points at"
    );
    let version = string(&manifest, "version", file);
    assert!(is_semver(version), "{version}");
    assert_eq!(
        version,
        claude_ipc::VERSION,
        "the plugin's version is the binary's"
    );
    string(&manifest, "description", file);
    let author = manifest["author"].as_object().expect("author is an object");
    string(author, "name", "author");
    for keyword in manifest["keywords"].as_array().expect("keywords") {
        assert!(keyword.is_string());
    }
    // Claude Code finds .mcp.json and hooks/hooks.json at the plugin root by default.
    assert!(dir.join(".mcp.json").is_file());
    assert!(dir.join("hooks/hooks.json").is_file());
}

/// `command` split as a shell would, with leading `VAR=value` assignments removed.
fn argv(command: &str) -> Vec<String> {
    let words = shlex::split(command).unwrap_or_else(|| panic!("bad quoting: {command}"));
    words
        .into_iter()
        .skip_while(|word| {
            word.split_once('=').is_some_and(|(name, _)| {
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
        })
        .collect()
}

/// Parses `argv` with the binary's own command line and runs it with `--help`.
fn assert_runs(argv: &[String]) -> Subcommand {
    assert_eq!(argv[0], "claude-ipc", "{argv:?}");
    let parsed = Cli::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("`{}` does not parse: {e}", argv.join(" ")));
    let output = Command::new(binary())
        .args(&argv[1..])
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "`{} --help` failed: {}",
        argv.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    parsed.command
}

#[test]
fn the_mcp_server_runs_claude_ipc_mcp_in_channel_mode() {
    let (dir, _) = plugin_entry();
    let config = read_json(&dir.join(".mcp.json"));
    only_known_keys(&config, &["mcpServers"], ".mcp.json");
    let servers = config["mcpServers"].as_object().expect("mcpServers");
    assert_eq!(servers.len(), 1);
    // `server:claude-ipc` in the development flag names this key.
    let server = servers["claude-ipc"]
        .as_object()
        .expect("the claude-ipc server");
    only_known_keys(
        server,
        &["type", "command", "args", "env", "cwd"],
        ".mcp.json server",
    );
    if let Some(kind) = server.get("type") {
        assert_eq!(kind, "stdio");
    }
    let mut argv = vec![string(server, "command", ".mcp.json").to_owned()];
    for arg in server["args"].as_array().expect("args is an array") {
        argv.push(arg.as_str().expect("every arg is a string").to_owned());
    }
    for (name, value) in server["env"].as_object().expect("env is an object") {
        assert!(value.is_string(), "env {name} must be a string");
    }
    match assert_runs(&argv) {
        Subcommand::Mcp(args) => assert!(args.channel, "the plugin runs the channel mode"),
        other => panic!("not the MCP server: {other:?}"),
    }
}

/// The hook events Claude Code documents.
const HOOK_EVENTS: &[&str] = &[
    "PreToolUse",
    "PostToolUse",
    "PostToolUseFailure",
    "Notification",
    "UserPromptSubmit",
    "Stop",
    "StopFailure",
    "SubagentStart",
    "SubagentStop",
    "PreCompact",
    "PostCompact",
    "SessionStart",
    "SessionEnd",
    "PermissionRequest",
    "TeammateIdle",
    "TaskCompleted",
    "TaskCreated",
    "ConfigChange",
    "WorktreeCreate",
    "WorktreeRemove",
    "InstructionsLoaded",
    "Elicitation",
    "ElicitationResult",
    "CwdChanged",
    "FileChanged",
];

/// Every command hook of `event`, as its JSON object.
fn hooks_of(hooks: &Map<String, Value>, event: &str) -> Vec<Map<String, Value>> {
    let groups = hooks
        .get(event)
        .unwrap_or_else(|| panic!("no {event} hook"))
        .as_array()
        .unwrap_or_else(|| panic!("{event} is not an array of matcher groups"));
    let mut found = Vec::new();
    for group in groups {
        let group = group.as_object().expect("a matcher group is an object");
        only_known_keys(group, &["matcher", "hooks"], event);
        if let Some(matcher) = group.get("matcher") {
            assert!(matcher.is_string(), "{event}: matcher must be a string");
        }
        for hook in group["hooks"].as_array().expect("hooks is an array") {
            let hook = hook.as_object().expect("a hook is an object").clone();
            only_known_keys(
                &hook,
                &[
                    "type",
                    "command",
                    "timeout",
                    "async",
                    "asyncRewake",
                    "statusMessage",
                    "once",
                ],
                event,
            );
            assert_eq!(hook["type"], "command", "{event}");
            string(&hook, "command", event);
            if let Some(timeout) = hook.get("timeout") {
                assert!(timeout.as_u64().is_some_and(|t| t > 0), "{event}: timeout");
            }
            for flag in ["async", "asyncRewake"] {
                if let Some(value) = hook.get(flag) {
                    assert!(value.is_boolean(), "{event}: {flag} must be a boolean");
                }
            }
            found.push(hook);
        }
    }
    found
}

#[test]
fn the_hooks_follow_the_documented_schema_and_run_existing_commands() {
    let (dir, _) = plugin_entry();
    let file = read_json(&dir.join("hooks/hooks.json"));
    only_known_keys(&file, &["description", "hooks"], "hooks.json");
    let hooks = file["hooks"].as_object().expect("hooks is an object");
    for event in hooks.keys() {
        assert!(
            HOOK_EVENTS.contains(&event.as_str()),
            "unknown hook event {event}"
        );
    }
    let command_of = |event: &str| {
        let found = hooks_of(hooks, event);
        assert_eq!(found.len(), 1, "one {event} hook");
        found.into_iter().next().unwrap()
    };
    // The notices: quick, in the foreground.
    for (event, wanted) in [
        ("UserPromptSubmit", "claude-ipc hook"),
        ("PostToolUse", "claude-ipc hook --event post-tool-use"),
    ] {
        let hook = command_of(event);
        assert!(hook.get("async").is_none() && hook.get("asyncRewake").is_none());
        let argv = argv(string(&hook, "command", event));
        assert_eq!(argv.join(" "), wanted);
        assert!(matches!(assert_runs(&argv), Subcommand::Hook(_)));
    }
    // The waking hooks: in the background, waking the session when they exit with 2, and
    // given longer than their own wait.
    for (event, wanted) in [
        ("Stop", "claude-ipc hook --event stop --wait 600"),
        (
            "SessionStart",
            "claude-ipc hook --event session-start --wait 600",
        ),
    ] {
        let hook = command_of(event);
        assert_eq!(hook["async"], true, "{event}");
        assert_eq!(hook["asyncRewake"], true, "{event}");
        assert!(
            hook["timeout"].as_u64().unwrap() > 600,
            "{event}: timeout over the wait"
        );
        let argv = argv(string(&hook, "command", event));
        assert_eq!(argv.join(" "), wanted);
        assert!(matches!(assert_runs(&argv), Subcommand::Hook(_)));
    }
}

/// The session file the hooks read is the one the plugin's MCP server writes.
#[test]
fn the_hooks_read_the_session_file_the_mcp_server_writes() {
    let (dir, _) = plugin_entry();
    let mcp = read_json(&dir.join(".mcp.json"));
    let written = mcp["mcpServers"]["claude-ipc"]["env"]["IPC_SESSION_FILE"]
        .as_str()
        .expect("the MCP server writes a session file")
        .to_owned();
    let hooks = read_json(&dir.join("hooks/hooks.json"));
    for (event, groups) in hooks["hooks"].as_object().unwrap() {
        for group in groups.as_array().unwrap() {
            for hook in group["hooks"].as_array().unwrap() {
                let words = shlex::split(hook["command"].as_str().unwrap()).unwrap();
                assert_eq!(
                    words[0],
                    format!("IPC_SESSION_FILE={written}"),
                    "{event} reads another session file"
                );
            }
        }
    }
}

/// The notice hook, run through a shell exactly as written, with the project directory set
/// as Claude Code sets it: silent and successful with nobody registered.
#[test]
fn the_notice_hook_runs_through_a_shell_as_written() {
    let broker = TestBroker::start();
    let project = tempfile::tempdir().unwrap();
    let (dir, _) = plugin_entry();
    let hooks = read_json(&dir.join("hooks/hooks.json"));
    let command = hooks["hooks"]["UserPromptSubmit"][0]["hooks"][0]["command"]
        .as_str()
        .unwrap()
        .to_owned();
    let bin_dir = Path::new(binary()).parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = || {
        Command::new("sh")
            .arg("-c")
            .arg(&command)
            .env("PATH", &path)
            .env("CLAUDE_PROJECT_DIR", project.path())
            .env("IPC_ADDR", broker.addr())
            .env_remove("IPC_SOCKET")
            .output()
            .unwrap()
    };
    let silent = run();
    assert!(silent.status.success());
    assert!(silent.stdout.is_empty());
    // With the session file where the MCP server would write it, the hook sees the mail.
    let token = broker.register("bob");
    let alice = broker.register("alice");
    broker
        .client()
        .send(&alice, "bob", "hi", None, None)
        .unwrap();
    std::fs::create_dir_all(project.path().join(".claude")).unwrap();
    let session = project.path().join(".claude/ipc-session");
    let text = serde_json::json!({"instance_id": "bob", "session_token": token});
    std::fs::write(&session, text.to_string()).unwrap();
    std::fs::set_permissions(
        &session,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let told = run();
    assert!(told.status.success());
    let line = String::from_utf8_lossy(&told.stdout);
    assert!(line.contains("1 new message"), "{line}");
}
