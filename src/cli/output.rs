//! Printing replies: JSON for scripts with `--json`, short lines for people otherwise.

use serde_json::Value;

pub fn json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON always serializes")
    );
}
