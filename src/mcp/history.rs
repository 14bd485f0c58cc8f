//! The `history` tool's work: one page of this instance's sent and received mail, newest
//! first, as compact text with the cursor to page on. The tool itself is declared with the
//! others in the router (`super`).

use std::sync::Arc;

use rmcp::schemars;
use serde::Deserialize;

use super::{format, IpcServer, ToolError};
use crate::client::HistoryQuery;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct HistoryArgs {
    /// Only the mail between you and this instance (its current name).
    #[serde(default)]
    pub with: Option<String>,
    /// The cursor the previous page's last line gave, to read older mail.
    #[serde(default)]
    pub cursor: Option<String>,
    /// How many messages (1-100, default 20).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Show every message whole instead of one line each.
    #[serde(default)]
    pub full: Option<bool>,
}

impl IpcServer {
    /// One page of history as the tool's text. Reads only: nothing is acknowledged, and mail
    /// still waiting stays waiting for `check`.
    pub(super) async fn history_text(&self, args: HistoryArgs) -> Result<String, ToolError> {
        let HistoryArgs {
            with,
            cursor,
            limit,
            full,
        } = args;
        let full = full.unwrap_or(false);
        let query = HistoryQuery {
            with: with.clone(),
            limit,
            cursor,
            before: None,
        };
        let secrets = Arc::new(self.secrets().await);
        self.as_session(move |client, token| {
            let reply = client.history(token, &query)?;
            let hints = hints(with.as_deref(), limit);
            let secrets = secrets.and_token(token);
            Ok(format::history(
                &reply,
                with.as_deref(),
                chrono::Utc::now(),
                &secrets,
                full,
                &hints,
            ))
        })
        .await
    }
}

/// How the model asks for the rest, in this tool's parameters.
fn hints(with: Option<&str>, limit: Option<u32>) -> format::HistoryHints {
    let mut same = String::new();
    if let Some(with) = with {
        same.push_str(&format!(", with=\"{with}\""));
    }
    if let Some(limit) = limit {
        same.push_str(&format!(", limit={limit}"));
    }
    format::HistoryHints {
        whole: format!(
            "Lines ending in … are cut: call history with full=true (and the same cursor{same}) to read them whole."
        ),
        next_page: format!("Older mail is kept: call history with cursor=\"{{cursor}}\"{same}."),
    }
}
