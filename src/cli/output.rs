//! Printing replies: JSON for scripts with `--json`, short lines for people otherwise.

use serde_json::Value;

pub fn json(value: &Value) {
    println!("{}", json_text(value).trim_end());
}

/// Pretty JSON with a trailing newline, for callers that write it themselves.
pub fn json_text(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("JSON always serializes");
    text.push('\n');
    text
}
