//! Which web pages may talk to this server (SPEC §4): the `allowed_origins`
//! list for WebSocket upgrades, and in dev mode local pages only, for the
//! upgrade and the HTTP API alike. A dev server holds a random API key and
//! lets `connect` name any user without a token, so any page the developer
//! visits could otherwise read anyone's notifications.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use herald_protocol::ErrorCode;
use std::sync::Arc;

use super::error::ApiError;
use crate::config::Config;
use crate::node::Node;

/// Whether a request with `headers` may open a WebSocket. No `Origin` is not
/// a browser (Origin is a browser protection; other clients have tokens). An
/// `Origin` that is not visible ASCII can't equal any listed origin and is
/// refused wherever origins are checked at all.
pub(crate) fn allowed(config: &Config, headers: &HeaderMap) -> bool {
    let list = &config.allowed_origins;
    if !config.dev && list.is_empty() {
        return true;
    }
    // Every Origin line must pass: a second one must not smuggle a page in.
    headers.get_all(header::ORIGIN).iter().all(|value| {
        let Ok(origin) = value.to_str() else {
            return false;
        };
        list.iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
            || (config.dev && is_local(origin))
    })
}

/// `http(s)://localhost`, `127.0.0.1` or `[::1]`, with any port; nothing
/// else (not `localhost.evil.example`, not `null`).
pub(crate) fn is_local(origin: &str) -> bool {
    let origin = origin.to_ascii_lowercase();
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    ["localhost", "127.0.0.1", "[::1]"].iter().any(|host| {
        rest.strip_prefix(host).is_some_and(|after| {
            after.is_empty()
                || after.strip_prefix(':').is_some_and(|port| {
                    (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit())
                })
        })
    })
}

/// Middleware: in dev mode, 403 for any request from a page that is not
/// local, CORS preflights included (it runs before the CORS layer).
pub(crate) async fn dev_guard(
    State(node): State<Arc<Node>>,
    request: Request,
    next: Next,
) -> Response {
    if node.config().dev && !allowed(node.config(), request.headers()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::PermissionDenied,
            "origin not allowed: in dev mode only local pages may call this server",
        )
        .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_origin(origin: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_bytes(origin).unwrap());
        h
    }

    #[test]
    fn local_origins_are_exactly_the_loopback_names() {
        for ok in [
            "http://localhost",
            "http://localhost:5173",
            "https://127.0.0.1:8443",
            "http://[::1]:3000",
            "HTTP://LOCALHOST:80",
        ] {
            assert!(is_local(ok), "{ok}");
        }
        for bad in [
            "http://evil.example",
            "http://localhost.evil.example",
            "http://127.0.0.1.evil.example",
            "http://localhost@evil.example",
            "http://localhost:",
            "http://localhost:123456",
            "http://localhost:80/path",
            "ws://localhost",
            "null",
            "localhost",
            "http://[::2]",
        ] {
            assert!(!is_local(bad), "{bad}");
        }
    }

    #[test]
    fn dev_mode_allows_local_pages_and_no_origin() {
        let dev = Config {
            dev: true,
            ..Config::default()
        };
        assert!(allowed(&dev, &HeaderMap::new()));
        assert!(allowed(&dev, &with_origin(b"http://localhost:5173")));
        assert!(!allowed(&dev, &with_origin(b"http://evil.example")));
        let mut listed = dev.clone();
        listed.allowed_origins = vec!["https://app.example".into()];
        assert!(allowed(&listed, &with_origin(b"https://app.example")));
        assert!(allowed(&listed, &with_origin(b"http://127.0.0.1:3000")));
    }

    #[test]
    fn unreadable_origins_fail_a_list() {
        let mut c = Config {
            allowed_origins: vec!["https://app.example".into()],
            ..Config::default()
        };
        assert!(!allowed(&c, &with_origin(b"\xff\xfe")));
        assert!(!allowed(&c, &with_origin(b"https://app.example\xff")));
        assert!(allowed(&c, &with_origin(b"https://APP.example")));
        // Two Origin lines: both must pass.
        let mut two = with_origin(b"https://app.example");
        two.append(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!allowed(&c, &two));
        // No list outside dev mode: everything, as before.
        c.allowed_origins.clear();
        assert!(allowed(&c, &with_origin(b"\xff")));
    }
}
