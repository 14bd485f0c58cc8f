//! Printing replies: JSON for scripts with `--json`, short lines for people otherwise. Also
//! colour, which appears only on a terminal and never when `NO_COLOR` is set. Relative times
//! ("3 min ago") are [`crate::relative_time`]'s, shared with the MCP server.
//!
//! Everything printed that came from another party (a sender's content and data, instance
//! names, a broker's messages) goes through [`for_terminal`] or [`block_for_terminal`] first:
//! otherwise a message could clear the screen, rewrite the clipboard (OSC 52), overwrite a line
//! with a carriage return, or reorder what is shown with bidi overrides. JSON output escapes
//! the same characters as `\u` sequences, which leaves the values unchanged for a parser.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};

use serde_json::Value;

/// `print!` for the CLI's results. A reader that went away (`claude-ipc list --json | head
/// -1`) ends the program quietly with 141, the status a shell gives a writer killed by SIGPIPE,
/// rather than a panic; any other failure to write says what happened and exits 1.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::output::write_stdout(format_args!($($arg)*)) };
}

/// `println!` for the CLI's results; see [`out!`].
macro_rules! outln {
    () => { $crate::cli::output::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::output::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

pub(crate) use {out, outln};

/// Writes to stdout and flushes; see [`out!`].
pub fn write_stdout(text: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_fmt(text).and_then(|()| stdout.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(141),
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }
}

pub fn json(value: &Value) {
    outln!("{}", json_text(value).trim_end());
}

/// Pretty JSON with a trailing newline, for callers that write it themselves.
pub fn json_text(value: &Value) -> String {
    let mut text = json_safe(serde_json::to_string_pretty(value).expect("JSON always serializes"));
    text.push('\n');
    text
}

/// Compact JSON on one line (no newline), for one object per line.
pub fn json_line(value: &Value) -> String {
    json_safe(value.to_string())
}

/// serde_json escapes only the controls below U+0020; DEL, the C1 controls and the bidi
/// overrides are written raw, and a terminal acts on some of them. Outside strings JSON has
/// none of these characters, so writing them as `\uXXXX` changes no value.
fn json_safe(text: String) -> String {
    if !text.chars().any(|c| c >= '\u{7f}' && needs_escape(c)) {
        return text;
    }
    let mut safe = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c >= '\u{7f}' && needs_escape(c) {
            safe.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            safe.push(c);
        }
    }
    safe
}

/// One line of text from another party, safe to print on a terminal: every control
/// character (newlines included) and every bidi control is shown escaped, as `\e`, `\r`,
/// `\n` or `\u{9b}`; tabs and everything printable are left alone.
pub fn for_terminal(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut safe = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\u{1b}' => safe.push_str("\\e"),
            '\r' => safe.push_str("\\r"),
            '\n' => safe.push_str("\\n"),
            c if needs_escape(c) => safe.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => safe.push(c),
        }
    }
    Cow::Owned(safe)
}

/// Text of several lines from another party, shown under a header: each line escaped as by
/// [`for_terminal`] and begun with `indent`, so no line of it can pass for a header (which
/// starts at the margin). A CR just before a newline is part of the line break.
pub fn block_for_terminal(text: &str, indent: &str) -> String {
    text.split('\n')
        .map(|line| {
            format!(
                "{indent}{}",
                for_terminal(line.strip_suffix('\r').unwrap_or(line))
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The characters a terminal may act on instead of showing: C0 and C1 controls and DEL
/// (except tab), the bidi embeddings, overrides, isolates and marks, and the Unicode line and
/// paragraph separators.
fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{2028}' | '\u{2029}'
        )
}

/// A colour for people's output.
#[derive(Debug, Clone, Copy)]
pub enum Colour {
    Green,
    Yellow,
    Red,
    Dim,
    Bold,
}

/// Whether stdout gets colour: only on a terminal, and never with `NO_COLOR` set (to anything,
/// as <https://no-color.org> asks).
pub fn colour_enabled() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Paints `text` when `enabled`, else returns it unchanged.
pub fn paint(text: &str, colour: Colour, enabled: bool) -> String {
    if !enabled {
        return text.to_owned();
    }
    let code = match colour {
        Colour::Green => "32",
        Colour::Yellow => "33",
        Colour::Red => "31",
        Colour::Dim => "2",
        Colour::Bold => "1",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_text_shows_controls_escaped() {
        let hostile =
            "a\u{1b}[2Jb\u{1b}]52;c;aGk=\u{7}c\rd\u{8}e\u{9b}f\u{202e}g\u{2066}h\u{7f}i\tj";
        assert_eq!(
            for_terminal(hostile),
            "a\\e[2Jb\\e]52;c;aGk=\\u{7}c\\rd\\u{8}e\\u{9b}f\\u{202e}g\\u{2066}h\\u{7f}i\tj"
        );
        assert!(matches!(for_terminal("plain, émoji 📬"), Cow::Borrowed(_)));
        assert_eq!(for_terminal("two\nlines"), "two\\nlines");
    }

    #[test]
    fn every_line_of_a_block_is_indented() {
        let forged = "hello\n[7] from alice at 2026\r\nbye";
        assert_eq!(
            block_for_terminal(forged, "  "),
            "  hello\n  [7] from alice at 2026\n  bye"
        );
    }

    #[test]
    fn json_output_escapes_what_serde_json_leaves_raw() {
        let value = serde_json::json!({"content": "\u{1b}x\u{9b}y\u{202e}z\u{7f}"});
        let text = json_text(&value);
        assert!(
            !text.chars().any(|c| c != '\n' && needs_escape(c)),
            "{text}"
        );
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, value, "the escaped JSON holds the same value");
        assert!(!json_line(&value).chars().any(needs_escape));
    }

    #[test]
    fn paint_adds_nothing_when_colour_is_off() {
        assert_eq!(paint("online", Colour::Green, false), "online");
        assert_eq!(
            paint("online", Colour::Green, true),
            "\x1b[32monline\x1b[0m"
        );
    }
}
