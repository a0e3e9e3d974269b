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
//! Buffers are sized for many idle connections: a small read buffer instead of
//! tungstenite's 128 KiB default, and writes that go out when the session
//! flushes, so frames queued together leave in one `write()`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Message, Utf8Bytes};

use crate::http::error::ApiError;
use crate::node::Node;
use herald_protocol::{CloseCode, ErrorCode};

/// Bytes read from the socket at a time; frames larger than this still work
/// (in several reads). Clients send small commands, so a small buffer costs
/// little, and every idle connection keeps one.
const READ_BUFFER: usize = 256;
/// Bytes of queued frames at which a flush happens even mid-batch.
const WRITE_BUFFER: usize = 32 * 1024;
/// Time the goodbye (`disconnect` + close frame) may take before the socket
/// is dropped: long enough for a slow reader to drain what is in flight and
/// learn why it was closed, short enough that a stalled one can't hold a task.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Headers parsed in a fast-path upgrade head; a head with more goes the
/// hyper way.
const MAX_HEADERS: usize = 48;

/// Any byte stream a WebSocket can run over: TCP, TLS, or hyper's upgraded
/// connection. Boxed so the session is one type whatever the transport.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn config(node: &Node) -> WebSocketConfig {
    let max_frame = node.config().limits.max_frame_bytes;
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + 4 * max_frame + 64 * 1024)
        .max_frame_size(Some(max_frame))
        .max_message_size(Some(max_frame))
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
fn fast_check(node: &Node, buf: &[u8]) -> Option<(String, usize)> {
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
    Some((key, len))
}

fn switching_protocols(accept: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: {accept}\r\n\r\n"
    )
}

/// The fast path: when `head` (the bytes read so far from `stream`) is an
/// upgrade this server accepts, answers 101 on the stream and returns the
/// socket; otherwise gives both back for hyper. The caller bounds the time.
pub(crate) async fn accept_raw<S: Io + 'static>(
    node: &Node,
    head: Vec<u8>,
    mut stream: S,
) -> Result<Option<Socket>, (Vec<u8>, S)> {
    let Some((accept, len)) = fast_check(node, &head) else {
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
    let stream: Box<dyn Io> = Box::new(stream);
    let ws =
        WebSocketStream::from_partially_read(stream, early, Role::Server, Some(config(node))).await;
    Ok(Some(Socket(ws)))
}

/// `GET /ws` through the router: the JSON refusals, and the upgrades the
/// accept loop left to hyper.
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
    let on_upgrade = hyper::upgrade::on(&mut request);
    let config = config(&node);
    let tracker = node.tracker().clone();
    // Tracked so shutdown can wait for every session's goodbye.
    tracker.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let stream: Box<dyn Io> = Box::new(TokioIo::new(upgraded));
        let ws = WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await;
        crate::session::run(node, Socket(ws), slot).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// What arrived from the client.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A text frame.
    Text(Utf8Bytes),
    /// A binary frame (not part of the protocol).
    Binary,
    /// A control frame (ping/pong), which still proves liveness.
    Control,
    /// The client closed, or the connection is gone.
    Closed,
    /// A frame over `max_frame_bytes`.
    TooLarge,
}

/// The session's view of a WebSocket.
pub(crate) struct Socket(WebSocketStream<Box<dyn Io>>);

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket").finish_non_exhaustive()
    }
}

impl Socket {
    /// The next thing from the client. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Inbound {
        match self.0.next().await {
            Some(Ok(Message::Text(t))) => Inbound::Text(t),
            Some(Ok(Message::Binary(_))) => Inbound::Binary,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Inbound::Control,
            Some(Ok(Message::Close(_))) | None => Inbound::Closed,
            Some(Err(tungstenite::Error::Capacity(_))) => Inbound::TooLarge,
            Some(Err(_)) => Inbound::Closed,
        }
    }

    /// Queues `frames` and flushes them: one write for the lot where the
    /// kernel takes it.
    pub(crate) async fn send(&mut self, frames: Vec<Utf8Bytes>) -> Result<(), tungstenite::Error> {
        for frame in frames {
            self.0.feed(Message::Text(frame)).await?;
        }
        self.0.flush().await
    }

    /// Sends `last` (the `disconnect` frame) and a close frame with `code`,
    /// then waits for the client's close (the RFC 6455 closing handshake),
    /// giving up after [`CLOSE_TIMEOUT`] in all.
    pub(crate) async fn close(mut self, last: Option<Utf8Bytes>, code: CloseCode) {
        let frame = CloseFrame {
            code: WsCloseCode::from(code.as_u16()),
            reason: Utf8Bytes::from_static(code.reason()),
        };
        let goodbye = async {
            if let Some(last) = last {
                self.0.feed(Message::Text(last)).await?;
            }
            self.0.send(Message::Close(Some(frame))).await?;
            // Wait for the client's close, discarding what it still sends:
            // closing a socket with unread input makes the kernel send a
            // reset, which can destroy the `disconnect` frame in flight (a
            // flooding client would never learn it was closed for abuse).
            while let Some(Ok(message)) = self.0.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
            Ok::<(), tungstenite::Error>(())
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await;
    }
}
