//! Where a message's content comes from: the words on the command line, standard input (`-`)
//! or a file (`--file PATH`). Exactly one source; content over the shell's argument limit
//! (about 128 KiB for one argument) goes through the file or standard input.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use clap::Args;

use super::CliError;
use crate::client::ClientError;
use crate::config::size_text;
use crate::protocol::ErrorCode;

/// The content options of `send`, `broadcast` and `reply`.
#[derive(Debug, Clone, Args)]
pub struct ContentArgs {
    /// The message; several words are joined with spaces. `-` alone reads it from standard
    /// input.
    #[arg(num_args = 1.., required_unless_present = "file", conflicts_with = "file")]
    pub message: Vec<String>,
    /// Read the message from this file (UTF-8 text) instead of the command line.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
}

impl ContentArgs {
    /// The content, read from wherever it was given. Clap already made sure there is exactly
    /// one source; empty content is refused here, before anything is sent.
    pub fn read(&self) -> Result<String, CliError> {
        let content = match (&self.file, self.message.as_slice()) {
            (Some(path), _) => read_file(path)?,
            (None, [dash]) if dash == "-" => read_stdin()?,
            (None, words) => words.join(" "),
        };
        if content.trim().is_empty() {
            return Err(CliError::Usage(format!(
                "the message is empty{}; write something to send",
                self.source_words()
            )));
        }
        Ok(content)
    }

    /// Where an empty message came from, for the error.
    fn source_words(&self) -> String {
        match (&self.file, self.message.as_slice()) {
            (Some(path), _) => format!(" (the file {} holds only whitespace)", path.display()),
            (None, [dash]) if dash == "-" => " (standard input held only whitespace)".to_owned(),
            _ => " or only whitespace".to_owned(),
        }
    }
}

fn read_file(path: &Path) -> Result<String, CliError> {
    let bytes = std::fs::read(path)
        .map_err(|e| CliError::Usage(format!("cannot read --file {}: {e}", path.display())))?;
    String::from_utf8(bytes).map_err(|_| {
        CliError::Usage(format!(
            "--file {} is not UTF-8 text; messages are text (send its path instead)",
            path.display()
        ))
    })
}

fn read_stdin() -> Result<String, CliError> {
    if std::io::stdin().is_terminal() {
        eprintln!("reading the message from standard input; end it with Ctrl-D");
    }
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes).map_err(|e| {
        CliError::Usage(format!("cannot read the message from standard input: {e}"))
    })?;
    String::from_utf8(bytes).map_err(|_| {
        CliError::Usage(
            "standard input is not UTF-8 text; messages are text (send a file's path instead)"
                .to_owned(),
        )
    })
}

/// A send refused as too large, said in terms of the message: how large it was (as the JSON
/// text the broker counts) beside the broker's own words on its limit and what to do instead.
/// Other errors pass through unchanged.
pub fn explain_too_large(error: ClientError, content: &str) -> ClientError {
    match error {
        ClientError::Broker {
            code: ErrorCode::RequestTooLarge,
            message,
            hint,
        } => {
            let json_bytes = serde_json::to_string(content).map_or(content.len(), |t| t.len());
            ClientError::Broker {
                code: ErrorCode::RequestTooLarge,
                message: format!(
                    "the message is {} as JSON text ({} of content), too large to send: {message}",
                    size_text(json_bytes),
                    size_text(content.len())
                ),
                hint,
            }
        }
        other => other,
    }
}
