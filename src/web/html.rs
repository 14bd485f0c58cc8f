//! The one way the dashboard writes HTML: a builder whose only way to add markup is a
//! `&'static str` written in this crate's source, and whose every other piece of text goes
//! through [`escape`]. Agent-supplied strings (names, subjects, content) are untrusted; they
//! can reach a page only as escaped text, never as markup.

use std::fmt::Display;

/// A page or a fragment of one, built piece by piece.
#[derive(Debug, Default)]
pub struct Html(String);

impl Html {
    pub fn new() -> Self {
        Html(String::with_capacity(4096))
    }

    /// Markup from this crate's own source: a `&'static str`, so no request or row can
    /// ever reach here.
    pub fn raw(&mut self, markup: &'static str) -> &mut Self {
        self.0.push_str(markup);
        self
    }

    /// Any text, escaped: safe both between tags and inside a double-quoted attribute.
    pub fn text(&mut self, text: &str) -> &mut Self {
        escape_into(&mut self.0, text);
        self
    }

    /// A number or other value whose `Display` is text, escaped like any text.
    pub fn value(&mut self, value: impl Display) -> &mut Self {
        self.text(&value.to_string())
    }

    /// A query-string value: percent-encoded, then escaped for the attribute it sits in.
    pub fn query_value(&mut self, value: &str) -> &mut Self {
        self.text(&percent_encode(value))
    }

    /// Another fragment, already built by these rules.
    pub fn fragment(&mut self, other: &Html) -> &mut Self {
        self.0.push_str(&other.0);
        self
    }

    pub fn into_string(self) -> String {
        self.0
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `text` with `& < > " '` replaced by their entities.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(&mut out, text);
    out
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// `value` percent-encoded for a URL's query or path: everything but unreserved characters.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_text_is_escaped() {
        let mut html = Html::new();
        html.raw("<p title=\"")
            .text("\"><script>alert('x')</script>")
            .raw("\">");
        assert_eq!(
            html.as_str(),
            "<p title=\"&quot;&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;\">"
        );
    }

    #[test]
    fn query_values_are_encoded_then_escaped() {
        let mut html = Html::new();
        html.query_value("a b&\"c");
        assert_eq!(html.as_str(), "a%20b%26%22c");
    }
}
