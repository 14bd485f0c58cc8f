//! The systemd unit in docs/examples passes `systemd-analyze verify` as a user unit without
//! the binary installed anywhere, and `systemd-analyze security` rates it as OPERATIONS.md
//! says. Skipped, saying so, where systemd-analyze is missing.

use std::path::Path;
use std::process::{Command, Output};

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/docs/examples/claude-ipc.service"
);
/// The exposure OPERATIONS.md records; the unit must not get worse.
const MAX_EXPOSURE: f64 = 1.5;

fn systemd_analyze() -> Option<&'static str> {
    let path = "/usr/bin/systemd-analyze";
    if Path::new(path).exists() {
        return Some(path);
    }
    println!("SKIPPED: systemd-analyze is missing; install systemd (apt-get install systemd)");
    None
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_unit_verifies_as_a_user_unit_without_the_binary_installed() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    // A home where nothing is installed: the unit must not depend on ~/.cargo/bin existing.
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let unit = dir.path().join("claude-ipc.service");
    std::fs::copy(UNIT, &unit).unwrap();
    let verified = Command::new(analyze)
        .args(["verify", "--user"])
        .arg(&unit)
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("HOME", &home)
        .output()
        .unwrap();
    assert!(verified.status.success(), "{}", text(&verified));
    assert_eq!(text(&verified).trim(), "", "verify warned");
}

#[test]
fn the_unit_is_rated_at_most_the_recorded_exposure() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let rated = Command::new(analyze)
        .args(["security", "--offline=true", UNIT])
        .output()
        .unwrap();
    let report = text(&rated);
    let score: f64 = report
        .split("Overall exposure level for claude-ipc.service:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {report}"));
    assert!(score <= MAX_EXPOSURE, "exposure {score}: {report}");
}
