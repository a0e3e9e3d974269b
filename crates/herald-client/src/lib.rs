//! A small Rust client for Herald: open a WebSocket, send commands, await
//! replies by `id`, and read pushes in order. Used by the integration tests,
//! the CLI and the load generator; it speaks the protocol, it does not hide it.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The WebSocket failed.
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    /// Nothing arrived in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// The server closed the connection.
    #[error("closed by server: {code:?} {reason}")]
    Closed {
        /// The close code, if any.
        code: Option<u16>,
        /// The close reason.
        reason: String,
    },
    /// A frame was not JSON.
    #[error("bad frame from server: {0}")]
    BadFrame(String),
}

/// What the server sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A JSON frame.
    Frame(Value),
    /// The close, with its code and reason.
    Closed {
        /// The close code, if any.
        code: Option<u16>,
        /// The close reason.
        reason: String,
    },
}

/// A text frame or the close, before any parsing.
enum RawEvent {
    Text(String),
    Closed { code: Option<u16>, reason: String },
}

/// A connection to a Herald server.
#[derive(Debug)]
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    buffered: VecDeque<Value>,
    next_id: u64,
    /// Answer the server's `ping` automatically (default true).
    pub auto_pong: bool,
    /// How long `request` and `next_push` wait (default 10 s).
    pub timeout: Duration,
}

impl Client {
    /// Opens a WebSocket to `url` (e.g. `ws://127.0.0.1:8080/ws`).
    pub async fn open(url: &str) -> Result<Self, Error> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Self {
            ws,
            buffered: VecDeque::new(),
            next_id: 1,
            auto_pong: true,
            timeout: Duration::from_secs(10),
        })
    }

    /// As [`Client::open`], with extra headers on the upgrade request (a
    /// cookie, an origin: what a browser would send).
    pub async fn open_with_headers(url: &str, headers: &[(&str, &str)]) -> Result<Self, Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| Error::BadFrame(e.to_string()))?;
            let value = HeaderValue::from_str(value).map_err(|e| Error::BadFrame(e.to_string()))?;
            request.headers_mut().append(name, value);
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Self {
            ws,
            buffered: VecDeque::new(),
            next_id: 1,
            auto_pong: true,
            timeout: Duration::from_secs(10),
        })
    }

    /// The plain TCP stream under the WebSocket, for load generators that
    /// read frames themselves; `None` over TLS, or when bytes the socket
    /// already read are still buffered (they would be lost).
    pub fn into_tcp(self) -> Option<TcpStream> {
        if !self.buffered.is_empty() {
            return None;
        }
        match self.ws.into_inner() {
            MaybeTlsStream::Plain(tcp) => Some(tcp),
            _ => None,
        }
    }

    /// Sends raw text (for tests of malformed input).
    pub async fn send_text(&mut self, text: &str) -> Result<(), Error> {
        Ok(self.ws.send(Message::text(text)).await?)
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<(), Error> {
        Ok(self.ws.send(Message::binary(bytes)).await?)
    }

    /// Sends a JSON command as is.
    pub async fn send(&mut self, command: &Value) -> Result<(), Error> {
        self.send_text(&command.to_string()).await
    }

    /// The next text frame or close before `deadline`, skipping control frames.
    async fn next_text(&mut self, deadline: tokio::time::Instant) -> Result<RawEvent, Error> {
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(Error::Timeout("a frame".into())),
                Ok(None)
                | Ok(Some(Err(
                    tokio_tungstenite::tungstenite::Error::ConnectionClosed
                    | tokio_tungstenite::tungstenite::Error::AlreadyClosed,
                ))) => {
                    return Ok(RawEvent::Closed {
                        code: None,
                        reason: String::new(),
                    });
                }
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => return Ok(RawEvent::Text(t.to_string())),
                Message::Close(frame) => {
                    let (code, reason) = frame
                        .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                        .unwrap_or((None, String::new()));
                    return Ok(RawEvent::Closed { code, reason });
                }
                _ => continue,
            }
        }
    }

    /// The next event from the socket, bypassing the push buffer.
    pub async fn next_event(&mut self) -> Result<Event, Error> {
        // One deadline for the call: answered pings must not extend it.
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let text = match self.next_text(deadline).await? {
                RawEvent::Text(text) => text,
                RawEvent::Closed { code, reason } => return Ok(Event::Closed { code, reason }),
            };
            let v: Value = serde_json::from_str(&text).map_err(|_| Error::BadFrame(text))?;
            if self.auto_pong && v["type"] == "ping" {
                self.send(&json!({"type": "pong"})).await?;
                continue;
            }
            return Ok(Event::Frame(v));
        }
    }

    /// The next text frame as it arrived, unparsed (for load generators,
    /// which must not spend their CPU parsing). Pings are answered when
    /// `auto_pong` is on (recognised by their exact text); a close is an error.
    pub async fn next_raw(&mut self) -> Result<String, Error> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match self.next_text(deadline).await? {
                RawEvent::Text(text) => {
                    if self.auto_pong && text == r#"{"type":"ping"}"# {
                        self.send(&json!({"type": "pong"})).await?;
                        continue;
                    }
                    return Ok(text);
                }
                RawEvent::Closed { code, reason } => return Err(Error::Closed { code, reason }),
            }
        }
    }

    /// The next frame (buffered pushes first); a close is an error.
    pub async fn next_frame(&mut self) -> Result<Value, Error> {
        if let Some(v) = self.buffered.pop_front() {
            return Ok(v);
        }
        match self.next_event().await? {
            Event::Frame(v) => Ok(v),
            Event::Closed { code, reason } => Err(Error::Closed { code, reason }),
        }
    }

    /// Sends `command` with a fresh `id` and returns the reply carrying it;
    /// frames that arrive first are kept for [`Client::next_frame`].
    pub async fn request(&mut self, mut command: Value) -> Result<Value, Error> {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        self.send(&command).await?;
        loop {
            match self.next_event().await? {
                Event::Frame(v) if v["id"] == json!(id) => return Ok(v),
                Event::Frame(v) => self.buffered.push_back(v),
                Event::Closed { code, reason } => return Err(Error::Closed { code, reason }),
            }
        }
    }

    /// `connect` with an optional token; returns the reply.
    pub async fn connect(&mut self, token: Option<&str>) -> Result<Value, Error> {
        let mut cmd = json!({"type": "connect"});
        if let Some(t) = token {
            cmd["token"] = json!(t);
        }
        self.request(cmd).await
    }

    /// `subscribe`, optionally resuming from `since`; returns the reply.
    pub async fn subscribe(&mut self, channel: &str, since: Option<&str>) -> Result<Value, Error> {
        let mut cmd = json!({"type": "subscribe", "channel": channel});
        if let Some(s) = since {
            cmd["since"] = json!(s);
        }
        self.request(cmd).await
    }

    /// The next `message` or `notification` push, skipping other frames.
    pub async fn next_push(&mut self) -> Result<Value, Error> {
        loop {
            let v = self.next_frame().await?;
            if v["type"] == "message" || v["type"] == "notification" {
                return Ok(v);
            }
        }
    }

    /// Reads until the server closes; returns the `disconnect` frame (if one
    /// came) and the close code.
    pub async fn until_closed(&mut self) -> Result<(Option<Value>, Option<u16>), Error> {
        let mut disconnect = self
            .buffered
            .iter()
            .find(|v| v["type"] == "disconnect")
            .cloned();
        self.buffered.clear();
        loop {
            match self.next_event().await? {
                Event::Frame(v) if v["type"] == "disconnect" => disconnect = Some(v),
                Event::Frame(_) => {}
                Event::Closed { code, .. } => return Ok((disconnect, code)),
            }
        }
    }

    /// Closes politely.
    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: WsCloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
    }
}
