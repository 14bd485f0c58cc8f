//! `POST /compose`: the person at the dashboard sends, as the reserved human name, to one
//! agent or (`*`) to everyone. The message goes through the broker's own send and broadcast
//! rules (see `broker::human`), so it is stored, counted and rung like any other. The gate in
//! `auth` has already checked the cookie and the `Origin`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;

use super::html::Html;
use super::WebState;
use crate::broker::human::{HumanMessage, HumanSent};

/// The largest compose body accepted, in bytes: the broker's own request limit.
pub fn body_limit(max_request_bytes: usize) -> usize {
    max_request_bytes.max(64 * 1024)
}

/// Sends the form's message; 303 back to the page it came from, or a page saying why not.
pub async fn compose(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    // The page it came from: the form's own `back`, else the (same-origin) Referer.
    let back = form
        .get("back")
        .cloned()
        .or_else(|| state.auth.own_referer_path(&headers));
    let message = match human_message(&form) {
        Ok(message) => message,
        Err(problem) => return refused(StatusCode::BAD_REQUEST, "invalid_field", &problem),
    };
    match state.broker.send_as_human(message).await {
        Ok(sent) => {
            let id = match &sent {
                HumanSent::One(reply) => reply.message_id.0.to_string(),
                HumanSent::Everyone(reply) => reply.stored().to_string(),
            };
            (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, back_to(back.as_ref())),
                    (header::HeaderName::from_static("x-ipc-sent"), id),
                ],
            )
                .into_response()
        }
        Err(refusal) => refused(
            StatusCode::BAD_REQUEST,
            refusal.code.as_str(),
            &refusal.message,
        ),
    }
}

/// `POST /inbox/done`: the person marks the inbox mail `ids` (comma-separated) as read and
/// done, so it stops filling the human's queue. The only way the dashboard settles mail, and
/// only the human's own.
pub async fn done(
    State(state): State<Arc<WebState>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let ids: Result<Vec<i64>, _> = form
        .get("ids")
        .map(String::as_str)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::parse::<i64>)
        .collect();
    let ids =
        match ids {
            Ok(ids) if !ids.is_empty() => ids,
            _ => return refused(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "`ids` must be message ids separated by commas, as the inbox's own form sends them",
            ),
        };
    match state.broker.human_done(ids).await {
        Ok(settled) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, back_to(form.get("back"))),
                (
                    header::HeaderName::from_static("x-ipc-settled"),
                    settled.to_string(),
                ),
            ],
        )
            .into_response(),
        Err(refusal) => refused(
            StatusCode::BAD_REQUEST,
            refusal.code.as_str(),
            &refusal.message,
        ),
    }
}

/// The form's fields as a message, or what is wrong with them.
fn human_message(form: &HashMap<String, String>) -> Result<HumanMessage, String> {
    let to = form.get("to").map(|t| t.trim()).unwrap_or_default();
    if to.is_empty() {
        return Err("`to` is missing: name an agent, or * for everyone".to_owned());
    }
    let content = form.get("content").cloned().unwrap_or_default();
    if content.trim().is_empty() {
        return Err("the message is empty: write something in `content`".to_owned());
    }
    let reply_to = match form.get("reply_to").map(|r| r.trim()) {
        None | Some("") => None,
        Some(text) => Some(text.parse::<i64>().map_err(|_| {
            format!("`reply_to` must be a message id (a whole number), not {text:?}")
        })?),
    };
    Ok(HumanMessage {
        to: to.to_owned(),
        subject: form.get("subject").cloned(),
        content,
        reply_to,
    })
}

/// Where to go after sending: the form's own page, if it names a path on this dashboard.
fn back_to(back: Option<&String>) -> String {
    match back {
        Some(path) if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') => {
            path.clone()
        }
        _ => "/".to_owned(),
    }
}

fn refused(status: StatusCode, code: &str, message: &str) -> Response {
    let mut body = Html::new();
    body.raw("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Not sent · claude-ipc</title>")
        .raw("<link rel=\"stylesheet\" href=\"/assets/style.css\"></head><body><main>")
        .raw("<h1>Not sent</h1><p class=\"error\" data-code=\"")
        .text(code)
        .raw("\">")
        .text(message)
        .raw("</p><p><a href=\"/\">Back to the dashboard</a></p></main></body></html>");
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body.into_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_local_path_is_gone_back_to() {
        assert_eq!(back_to(Some(&"/thread/4".to_owned())), "/thread/4");
        assert_eq!(back_to(Some(&"//evil.example/".to_owned())), "/");
        assert_eq!(back_to(Some(&"https://evil.example/".to_owned())), "/");
        assert_eq!(back_to(None), "/");
    }
}
