//! The last line of defence against leaks: the values that must never leave through a share
//! nor reach the model in a `check`: the shared secret, this server's session token, the token
//! in the session file, and the static auth token `sha256(name:secret)`.
//!
//! The share tools refuse files and commands by path and by environment, but a list of paths is
//! never complete; this looks at the bytes themselves just before they leave.

use crate::protocol::auth::expected_auth_token;

/// Values shorter than this are not looked for: a secret of one or two characters would match
/// nearly every text, and a token is always far longer.
const SHORTEST_GUARDED: usize = 4;

/// What [`Secrets::redact`] puts in place of a guarded value.
pub const REDACTED: &str = "[redacted]";

/// The guarded values, each with what it is (for a refusal that names it without showing it).
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    values: Vec<(&'static str, String)>,
}

impl Secrets {
    /// The values this server must guard: `secret` (the server's shared secret), `tokens` (the
    /// session tokens it holds or finds in the session file) and, for every name in `names`,
    /// the static auth token that name registers with.
    pub fn of(secret: Option<&str>, tokens: &[&str], names: &[&str]) -> Secrets {
        let mut secrets = Secrets::default();
        if let Some(secret) = secret {
            secrets.add("the shared secret", secret);
            for name in names {
                secrets.add(
                    "the static auth token of this name",
                    &expected_auth_token(name, secret),
                );
            }
        }
        for token in tokens {
            secrets.add("a session token", token);
        }
        secrets
    }

    /// These values and `token` too.
    pub fn and_token(&self, token: &str) -> Secrets {
        let mut secrets = self.clone();
        secrets.add("a session token", token);
        secrets
    }

    fn add(&mut self, what: &'static str, value: &str) {
        if value.len() >= SHORTEST_GUARDED && !self.values.iter().any(|(_, v)| v == value) {
            self.values.push((what, value.to_owned()));
        }
    }

    /// What `text` holds of the guarded values, if anything (the first one found).
    pub fn found_in(&self, text: &str) -> Option<&'static str> {
        self.values
            .iter()
            .find(|(_, value)| text.contains(value.as_str()))
            .map(|(what, _)| *what)
    }

    /// `text` with every guarded value replaced by [`REDACTED`], and whether anything was.
    /// Longer values go first, so a secret inside a longer token cannot leave part of it.
    pub fn redact(&self, text: &str) -> (String, bool) {
        let mut values: Vec<&str> = self.values.iter().map(|(_, v)| v.as_str()).collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        let mut redacted = text.to_owned();
        for value in values {
            if redacted.contains(value) {
                redacted = redacted.replace(value, REDACTED);
            }
        }
        let changed = redacted != text;
        (redacted, changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_redacts_the_secret_the_tokens_and_the_static_token() {
        let secrets = Secrets::of(Some("s3cret"), &["tok-abcdef"], &["alice"]);
        let static_token = expected_auth_token("alice", "s3cret");
        assert_eq!(secrets.found_in("all clear"), None);
        assert_eq!(secrets.found_in("x=s3cret"), Some("the shared secret"));
        assert_eq!(secrets.found_in("tok-abcdef"), Some("a session token"));
        assert!(secrets.found_in(&static_token).is_some());
        let (text, changed) = secrets.redact(&format!("a s3cret b tok-abcdef c {static_token}"));
        assert!(changed);
        assert_eq!(text, "a [redacted] b [redacted] c [redacted]");
        assert_eq!(secrets.redact("nothing"), ("nothing".to_owned(), false));
    }

    #[test]
    fn tiny_values_are_not_guarded_so_they_cannot_block_every_share() {
        let secrets = Secrets::of(Some("ab"), &[""], &[]);
        assert_eq!(secrets.found_in("ab ab ab"), None);
    }
}
