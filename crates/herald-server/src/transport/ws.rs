//! The WebSocket upgrade and the socket seam the session writes through.
//!
//! Buffers are sized for many idle connections: a small read buffer instead of
//! tungstenite's 128 KiB default, and writes that go out when the session
//! flushes, so frames queued together leave in one `write()`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};

use crate::http::error::ApiError;
use crate::node::Node;
use herald_protocol::{CloseCode, ErrorCode};

/// Bytes read from the socket at a time; frames larger than this still work.
const READ_BUFFER: usize = 1024;
/// Bytes of queued frames at which a flush happens even mid-batch.
const WRITE_BUFFER: usize = 32 * 1024;
/// Time the goodbye (`disconnect` + close frame) may take before the socket
/// is dropped: long enough for a slow reader to drain what is in flight and
/// learn why it was closed, short enough that a stalled one can't hold a task.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// `GET /ws`: checks the origin, then hands the upgraded socket to a session.
pub(crate) async fn upgrade(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return ApiError::new(
                rejection.status(),
                ErrorCode::BadRequest,
                rejection.body_text(),
            )
            .into_response()
        }
    };
    if !origin_allowed(&node.config().allowed_origins, &headers) {
        return ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            ErrorCode::PermissionDenied,
            "origin not allowed",
        )
        .into_response();
    }
    if node.shutdown_token().is_cancelled() {
        return ApiError::unavailable("server shutting down").into_response();
    }
    let max_frame = node.config().limits.max_frame_bytes;
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + 4 * max_frame + 64 * 1024)
        .max_frame_size(max_frame)
        .max_message_size(max_frame)
        .on_upgrade(move |socket| {
            let tracker = node.tracker().clone();
            // Tracked so shutdown can wait for every session's goodbye.
            tracker.track_future(crate::session::run(node, Socket(socket)))
        })
}

fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        Some(origin) => allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(origin)),
        // Not a browser: Origin is a browser protection, other clients have tokens.
        None => true,
    }
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
#[derive(Debug)]
pub(crate) struct Socket(WebSocket);

impl Socket {
    /// The next thing from the client. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Inbound {
        match self.0.next().await {
            Some(Ok(Message::Text(t))) => Inbound::Text(t),
            Some(Ok(Message::Binary(_))) => Inbound::Binary,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Inbound::Control,
            Some(Ok(Message::Close(_))) | None => Inbound::Closed,
            Some(Err(e)) => {
                let too_large = e
                    .into_inner()
                    .downcast::<tungstenite::Error>()
                    .is_ok_and(|e| matches!(*e, tungstenite::Error::Capacity(_)));
                if too_large {
                    Inbound::TooLarge
                } else {
                    Inbound::Closed
                }
            }
        }
    }

    /// Queues `frames` and flushes them: one write for the lot where the
    /// kernel takes it.
    pub(crate) async fn send(&mut self, frames: Vec<Utf8Bytes>) -> Result<(), axum::Error> {
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
            code: code.as_u16(),
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
            Ok::<(), axum::Error>(())
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await;
    }
}
