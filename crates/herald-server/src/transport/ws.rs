//! The WebSocket handshake and the socket seam the session writes through.
//!
//! An upgrade normally never reaches hyper: the accept loop reads the request
//! head ([`super::head`]) and, when it is a valid `GET /ws` upgrade this
//! server accepts, answers 101 on the raw stream ([`accept_raw`]), so the
//! socket carries nothing of HTTP for its life. Everything else, refusals
//! included, goes through the router, where [`upgrade`] answers the JSON
//! errors and upgrades what the fast path could not take (an upgrade on a
//! kept-alive connection, say) through hyper.
//!
//! The frames themselves are Herald's own codec ([`super::socket`],
//! [`super::frame`]), not tungstenite's stream: we need buffers that shrink,
//! every frame seen (to charge control frames) and coalesced pongs, which its
//! API doesn't expose. Tungstenite is kept for the accept key and the text
//! type.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use crate::http::error::ApiError;
use crate::node::Node;
use crate::proxy::connect::UpgradeHeaders;
use herald_protocol::ErrorCode;

use super::lane::SharedTcp;
use super::socket::Settings;
pub(crate) use super::socket::{Inbound, Io, Socket};

/// Headers parsed in a fast-path upgrade head; a head with more goes the
/// hyper way.
const MAX_HEADERS: usize = 48;

fn settings(node: &Node) -> Settings {
    let limits = &node.config().limits;
    Settings {
        max_message: limits.max_frame_bytes,
        fragment_timeout: limits.fragment_timeout,
        read_buffer_gauge: node.metrics.ws_read_buffer_bytes.clone(),
    }
}

/// Checks an upgrade request; the `Sec-WebSocket-Accept` value when it is
/// accepted, else the error to answer.
fn check(
    node: &Node,
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Result<String, ApiError> {
    let bad =
        |message: &str| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message);
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if method != Method::GET || version != Version::HTTP_11 {
        return Err(bad("a WebSocket upgrade is a GET over HTTP/1.1"));
    }
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err(bad(
            "not a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(bad("Sec-WebSocket-Version must be 13"));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(bad("Sec-WebSocket-Key header missing"));
    };
    if !crate::http::origin::allowed(node.config(), headers) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::PermissionDenied,
            "origin not allowed",
        ));
    }
    if node.shutdown_token().is_cancelled() {
        return Err(ApiError::unavailable("server shutting down"));
    }
    Ok(tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// Parses `buf` as the head of a `GET /ws` upgrade and checks it: the accept
/// key and the head's length when this server takes it, else `None` (not an
/// upgrade, a refusal, a head too large or malformed: hyper serves those).
fn fast_check(node: &Node, buf: &[u8]) -> Option<(String, usize, Option<Box<UpgradeHeaders>>)> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let httparse::Status::Complete(len) = req.parse(buf).ok()? else {
        return None;
    };
    let path = req.path?;
    if path.split('?').next() != Some("/ws") || req.method != Some("GET") {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = header::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        headers.append(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    let version = if req.version? == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let key = check(node, &Method::GET, version, &headers).ok()?;
    Some((key, len, UpgradeHeaders::capture(node.config(), &headers)))
}

fn switching_protocols(accept: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: {accept}\r\n\r\n"
    )
}

/// The fast path: when `head` (the bytes read so far from `stream`) is an
/// upgrade this server accepts, answers 101 on the stream and returns the
/// socket; otherwise gives both back for hyper. The caller bounds the time.
///
/// `tcp` is the plain TCP stream under `stream`, when there is one: the
/// session then gets a [`super::lane`] for the fan-out to write through.
pub(crate) async fn accept_raw<S: Io + 'static>(
    node: &Node,
    head: Vec<u8>,
    mut stream: S,
    tcp: Option<SharedTcp>,
) -> Result<Option<Socket>, (Vec<u8>, S)> {
    let Some((accept, len, upgrade)) = fast_check(node, &head) else {
        return Err((head, stream));
    };
    let written = async {
        stream
            .write_all(switching_protocols(&accept).as_bytes())
            .await?;
        stream.flush().await
    };
    if written.await.is_err() {
        return Ok(None);
    }
    // Anything after the head is the client's first frames.
    let early = head[len..].to_vec();
    let socket = Socket::new(Box::new(stream), early, settings(node)).with_upgrade_headers(upgrade);
    Ok(Some(match tcp {
        Some(tcp) => socket.with_lane(tcp.lane()),
        None => socket,
    }))
}

/// `GET /ws` through the router: the JSON refusals, and the upgrades the
/// accept loop left to hyper.
#[utoipa::path(
    get,
    path = "/ws",
    tag = "websocket",
    summary = "Open a WebSocket (SPEC §3)",
    description = "A WebSocket upgrade (HTTP/1.1, `Connection: Upgrade`, `Upgrade: websocket`, \
        `Sec-WebSocket-Version: 13`, `Sec-WebSocket-Key`). The client authenticates inside \
        the socket with a `connect` frame carrying its JWT; the frames are described in SPEC §3.",
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade (1000)", body = crate::http::error::ErrorBody),
        (status = 403, description = "Origin not allowed (1002)", body = crate::http::error::ErrorBody),
        (status = 408, description = "Not answered within limits.request_timeout", body = crate::http::error::ErrorBody),
        (status = 429, description = "Too many connections from this address without a credential (1004)", body = crate::http::error::ErrorBody),
        (status = 503, description = "Shutting down (1011)", body = crate::http::error::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn upgrade(State(node): State<Arc<Node>>, mut request: Request) -> Response {
    let accept = match check(
        &node,
        request.method(),
        request.version(),
        request.headers(),
    ) {
        Ok(accept) => accept,
        Err(e) => return e.into_response(),
    };
    let slot = match crate::conns::slot_for_upgrade(&node, request.extensions()) {
        Ok(slot) => slot,
        Err(e) => return e.into_response(),
    };
    let upgrade = UpgradeHeaders::capture(node.config(), request.headers());
    let on_upgrade = hyper::upgrade::on(&mut request);
    let settings = settings(&node);
    let tracker = node.tracker().clone();
    // Tracked so shutdown can wait for every session's goodbye.
    tracker.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let socket = Socket::new(Box::new(TokioIo::new(upgraded)), Vec::new(), settings)
            .with_upgrade_headers(upgrade);
        crate::session::run(node, socket, slot).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
