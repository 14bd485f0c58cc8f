//! Checks of what the user typed, run by clap before anything is sent: a bad name, id or
//! subject is a usage error (exit code 2) that names the argument as `--help` shows it (TO,
//! NAME, ID, --subject), not the wire field the broker would have named.

use crate::domain::{InstanceName, Subject};

/// An instance name: 1-32 letters, digits, hyphens or underscores.
pub fn name(text: &str) -> Result<String, String> {
    match InstanceName::parse(text) {
        Some(_) => Ok(text.to_owned()),
        None => Err(
            "a name is 1-32 letters, digits, hyphens or underscores (no spaces), like bob or build-bot"
                .to_owned(),
        ),
    }
}

/// A message id: a positive whole number, as `send`, `check` or `thread` printed it.
pub fn message_id(text: &str) -> Result<i64, String> {
    match text.trim().parse::<i64>() {
        Ok(id) if id >= 1 => Ok(id),
        _ => Err(
            "a message id is a positive whole number, as send, check or thread printed it (like 41)"
                .to_owned(),
        ),
    }
}

/// A subject: 1 to 200 characters on one line, without control characters.
pub fn subject(text: &str) -> Result<String, String> {
    match Subject::parse(text) {
        Some(_) => Ok(text.to_owned()),
        None => Err(format!(
            "a subject is 1 to {} characters on one line, without control characters; shorten it or leave it out",
            Subject::MAX_CHARS
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ids_and_subjects_are_checked_as_typed() {
        assert_eq!(name("build-bot_2"), Ok("build-bot_2".to_owned()));
        assert!(name("bad name").unwrap_err().contains("1-32 letters"));
        assert!(name("").is_err());
        assert_eq!(message_id("41"), Ok(41));
        assert!(message_id("0").is_err());
        assert!(message_id("-3").is_err());
        assert!(message_id("x")
            .unwrap_err()
            .contains("positive whole number"));
        assert!(subject("release").is_ok());
        assert!(subject("two\nlines").is_err());
        assert!(subject(&"x".repeat(201)).is_err());
    }
}
