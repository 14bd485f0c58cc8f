//! Who may use the dashboard, checked on every request before any handler runs.
//!
//! A page on localhost is reachable by every website the user's browser visits and by every
//! local user, so:
//! - `Host` must be the dashboard's own address (`127.0.0.1:PORT` or `localhost:PORT`), or the
//!   request gets 421: a DNS-rebinding page, whose `Host` is its own name, reads nothing.
//! - Every page but the login, the log-in help and the static assets needs the session cookie,
//!   which only `/login?token=…` with the token from `web.json` (mode 0600) sets. The cookie is
//!   an HMAC of the token, not the token, and is `HttpOnly; SameSite=Strict`.
//! - A `POST` must carry an `Origin` of the dashboard itself (403 otherwise): a cross-site form
//!   cannot send as the human, even where a browser would attach the cookie.
//! - Every response carries the security headers below, and never an `Access-Control-*` one.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::pages;
use super::WebState;

/// The cookie's name.
pub const COOKIE: &str = "ipc_web";

/// The login secret and what the browser must show to pass.
pub struct Auth {
    /// 32 random bytes as hex; new at every start, kept in `web.json`.
    token: String,
    /// What the cookie holds: HMAC-SHA256(token, "cookie"), as hex.
    cookie_value: String,
    /// `127.0.0.1:PORT` and `localhost:PORT` (and `[::1]:PORT` when bound there).
    hosts: Vec<String>,
    /// The same, as `http://` origins.
    origins: Vec<String>,
}

impl Auth {
    /// A fresh token for a dashboard listening on `port` of `ip`.
    pub fn new(ip: std::net::IpAddr, port: u16) -> std::io::Result<Auth> {
        let token = crate::broker::session::random_hex(32)?;
        let cookie_value = cookie_for(&token);
        let mut hosts = vec![format!("127.0.0.1:{port}"), format!("localhost:{port}")];
        if ip.is_ipv6() {
            hosts.push(format!("[::1]:{port}"));
        }
        let origins = hosts.iter().map(|h| format!("http://{h}")).collect();
        Ok(Auth {
            token,
            cookie_value,
            hosts,
            origins,
        })
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Whether `given` is the login token, compared in constant time (as SHA-256 digests).
    pub fn is_token(&self, given: &str) -> bool {
        same_digest(given, &self.token)
    }

    /// The `Set-Cookie` value a successful login sends.
    pub fn set_cookie(&self) -> String {
        format!(
            "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
            self.cookie_value
        )
    }

    /// Whether the request's cookies include the session cookie.
    pub fn has_cookie(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(name, value)| name == COOKIE && same_digest(value, &self.cookie_value))
    }

    fn host_is_ours(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .is_some_and(|host| {
                self.hosts
                    .iter()
                    .any(|ours| ours.eq_ignore_ascii_case(host))
            })
    }

    /// The path of a `Referer` on this dashboard (`/thread/4`), if the request has one.
    pub fn own_referer_path(&self, headers: &HeaderMap) -> Option<String> {
        let referer = headers.get(header::REFERER)?.to_str().ok()?;
        self.origins.iter().find_map(|origin| {
            let rest = referer.strip_prefix(origin.as_str())?;
            rest.starts_with('/').then(|| rest.to_owned())
        })
    }

    fn origin_is_ours(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::ORIGIN)
            .and_then(|origin| origin.to_str().ok())
            .is_some_and(|origin| {
                self.origins
                    .iter()
                    .any(|ours| ours.eq_ignore_ascii_case(origin))
            })
    }
}

/// The cookie for `token`: HMAC-SHA256 keyed by the token, so the cookie (which a browser
/// keeps) never is the token (which `web.json` keeps), and cannot be turned back into it.
fn cookie_for(token: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes any key");
    mac.update(b"claude-ipc dashboard cookie");
    hex(&mac.finalize().into_bytes())
}

/// Whether two strings are equal, compared as SHA-256 digests byte by byte without stopping
/// early, so the time taken says nothing about how much of a guess was right.
fn same_digest(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |diff, (x, y)| diff | (x ^ y))
        == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Paths anyone who reached the right `Host` may load: the login, and the stylesheet, script
/// and icon, which hold no data.
fn is_public(path: &str) -> bool {
    path == "/login" || path == "/favicon.ico" || path.starts_with("/assets/")
}

/// The gate every request passes, in order: `Host`, then the cookie, then `Origin` for a
/// `POST`; then the security headers on whatever the answer is.
pub async fn guard(
    State(state): State<Arc<WebState>>,
    request: Request<Body>,
    next: Next,
) -> Response {
    let auth = &state.auth;
    let headers = request.headers();
    let mut response = if !auth.host_is_ours(headers) {
        (
            StatusCode::MISDIRECTED_REQUEST,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "421 Misdirected Request: this dashboard answers only to its own address (127.0.0.1 or localhost with its port)\n",
        )
            .into_response()
    } else if !is_public(request.uri().path()) && !auth.has_cookie(headers) {
        pages::login_help(StatusCode::UNAUTHORIZED)
    } else if request.method() == Method::POST && !auth.origin_is_ours(headers) {
        (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "403 Forbidden: a POST must come from the dashboard's own page (its Origin header is missing or another site's); nothing was done\n",
        )
            .into_response()
    } else {
        next.run(request).await
    };
    add_security_headers(response.headers_mut());
    response
}

/// What every response says to the browser: run no script but ours, never inside a frame,
/// send a referrer only to the dashboard itself (the login URL carries the token, and no
/// other site may see it), cache nothing, trust the content type.
///
/// Not `no-referrer`: under it a browser sends `Origin: null` with the dashboard's own form
/// posts, which the Origin check must refuse (a sandboxed frame of any site sends `null`
/// too), so the compose box could not send.
fn add_security_headers(headers: &mut HeaderMap) {
    let fixed = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_not_the_token_and_only_the_right_one_passes() {
        let auth = Auth::new("127.0.0.1".parse().unwrap(), 8080).unwrap();
        assert_eq!(auth.token().len(), 64);
        assert!(!auth.set_cookie().contains(auth.token()));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {COOKIE}={}", auth.cookie_value)).unwrap(),
        );
        assert!(auth.has_cookie(&headers));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{COOKIE}={}", auth.token())).unwrap(),
        );
        assert!(!auth.has_cookie(&headers));
        assert!(auth.is_token(auth.token()));
        assert!(!auth.is_token("00"));
    }
}
