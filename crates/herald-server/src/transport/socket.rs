//! The session's view of a WebSocket: Herald's own server-side codec over
//! the connection's byte stream.
//!
//! Why not tungstenite's stream: its API doesn't expose what a server under
//! hostile load needs. Its read buffer grows to the largest frame and never
//! shrinks; it answers every ping with a write of its own (10,000 pings in
//! one TCP write cost 10,001 `sendto`); it hides pings, pongs and
//! continuation frames from the caller, so they escape the rate limit; an
//! unfinished message may stay open forever; and protocol violations end in
//! an error with no close frame. Here: buffers grow to what a frame needs
//! and shrink after it ([`super::buffer`]), every frame is seen and charged
//! by the session, pongs are coalesced (one pending, the latest payload,
//! sent with the next write), a fragmented message must finish within
//! `limits.fragment_timeout`, and every close carries its RFC 6455 code.
//!
//! Cancel safety: `recv` and `send` keep everything they have read or not
//! yet written in the [`Socket`], not in their futures, so the session can
//! drop either at any await (it selects over them) and lose nothing.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use herald_protocol::CloseCode;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;
use tungstenite::Utf8Bytes;

use super::buffer::{HeldBytes, ReadBuffer};
use super::frame::{encode_close, encode_pong, encode_text, Decoded, Decoder, Event, Violation};
use super::lane::Lane;

/// Bytes a connection's read buffer keeps between frames: every idle
/// connection holds one, so it is sized for the commands of a live
/// connection (subscribe, ping, publish of a small message). A larger
/// frame — a `connect` with a long token — grows the buffer for as long as
/// it takes to read it, once per connection.
const READ_IDLE: usize = 256;
/// Write buffer capacity kept after a flush; a larger one (a replay page,
/// a big message) is freed, not kept for the connection's life.
const WRITE_IDLE: usize = 1024;
/// Bytes of queued frames at which a flush happens even mid-batch.
const WRITE_BUFFER: usize = 32 * 1024;
/// Time the goodbye (`disconnect` + close frame) may take before the socket
/// is dropped: long enough for a slow reader to drain what is in flight and
/// learn why it was closed, short enough that a stalled one can't hold a task.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Time the input is drained after a close for a violation, before the
/// socket is dropped anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Any byte stream a WebSocket can run over: TCP, TLS, or hyper's upgraded
/// connection. Boxed so the session is one type whatever the transport.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What a socket needs from the node's configuration and metrics.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `limits.max_frame_bytes`, for frames and assembled messages.
    pub(crate) max_message: usize,
    /// `limits.fragment_timeout`.
    pub(crate) fragment_timeout: Duration,
    /// `herald_ws_read_buffer_bytes`.
    pub(crate) read_buffer_gauge: Gauge,
}

/// What arrived from the client.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A text message.
    Text(Utf8Bytes),
    /// A binary message (not part of the protocol).
    Binary,
    /// A ping, a pong, or a fragment that does not finish its message: it
    /// proves liveness and costs a command token.
    Control,
    /// The client closed (its close is answered by [`Socket::finish`]), or
    /// the connection is gone.
    Closed,
    /// The client broke RFC 6455, sent too big a message or held a fragment
    /// open too long: close with the violation's code.
    Protocol(Violation),
}

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// The client sent a close; the answer is queued.
    PeerClosed,
    /// The server sent its close (waiting for the client's).
    Closing,
    /// The input broke a rule; nothing more is decoded.
    Failed(Violation),
    /// End of stream or an IO error.
    Gone,
}

/// A server-side WebSocket over a boxed byte stream.
pub(crate) struct Socket {
    io: Box<dyn Io>,
    input: ReadBuffer,
    decoder: Decoder,
    /// Encoded frames not yet written, from `sent` on.
    out: Vec<u8>,
    sent: usize,
    /// The latest ping's payload, answered with the next write: a burst of
    /// pings gets one pong, not one write each.
    pong: Option<Vec<u8>>,
    state: State,
    fragment_timeout: Duration,
    /// Running while a fragmented message is open. Boxed: most sockets
    /// never see a fragment, and every idle one would carry the timer.
    fragment_deadline: Option<Pin<Box<Sleep>>>,
    held: HeldBytes,
    /// The fan-out's direct way to this socket ([`super::lane`]), on plain
    /// TCP. Closed (and its spill taken) before the socket writes a byte.
    lane: Option<Arc<Lane>>,
    /// The upgrade's headers for the connect proxy, until `connect`.
    upgrade: Option<Box<crate::proxy::connect::UpgradeHeaders>>,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Socket {
    /// A socket over `io` after the handshake; `early` are bytes the client
    /// sent along with its upgrade request.
    pub(crate) fn new(io: Box<dyn Io>, early: Vec<u8>, settings: Settings) -> Self {
        let mut socket = Self {
            io,
            input: ReadBuffer::new(READ_IDLE, early),
            decoder: Decoder::new(settings.max_message),
            out: Vec::new(),
            sent: 0,
            pong: None,
            state: State::Open,
            fragment_timeout: settings.fragment_timeout,
            fragment_deadline: None,
            held: HeldBytes::new(settings.read_buffer_gauge),
            lane: None,
            upgrade: None,
        };
        socket.account();
        socket
    }

    /// Lets the fan-out write through `lane` while the session is idle.
    pub(crate) fn with_lane(mut self, lane: Arc<Lane>) -> Self {
        self.lane = Some(lane);
        self
    }

    /// Keeps the upgrade's headers for the connect proxy.
    pub(crate) fn with_upgrade_headers(
        mut self,
        upgrade: Option<Box<crate::proxy::connect::UpgradeHeaders>>,
    ) -> Self {
        self.upgrade = upgrade;
        self
    }

    /// The upgrade's headers, once.
    pub(crate) fn take_upgrade_headers(
        &mut self,
    ) -> Option<Box<crate::proxy::connect::UpgradeHeaders>> {
        self.upgrade.take()
    }

    /// The socket's lane, if it has one.
    pub(crate) fn lane(&self) -> Option<&Arc<Lane>> {
        self.lane.as_ref()
    }

    /// Whether the socket has nothing of its own to write: only then may
    /// the lane open.
    pub(crate) fn is_idle(&self) -> bool {
        self.state == State::Open && self.sent == self.out.len() && self.pong.is_none()
    }

    /// Closes the lane and puts what it could not write ahead of anything
    /// the socket has yet to send: called before the socket stages or
    /// writes a byte, so the wire only ever carries whole frames in order.
    pub(crate) fn hold_lane(&mut self) {
        let Some(lane) = &self.lane else {
            return;
        };
        let spill = lane.claim();
        if !spill.is_empty() {
            self.out.splice(self.sent..self.sent, spill);
        }
    }

    /// The next thing from the client. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Inbound {
        poll_fn(|cx| {
            let inbound = self.poll_recv(cx);
            self.account();
            inbound
        })
        .await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        loop {
            match self.state {
                State::Open | State::Closing => {}
                State::Failed(v) => return Poll::Ready(Inbound::Protocol(v)),
                State::PeerClosed | State::Gone => return Poll::Ready(Inbound::Closed),
            }
            if let Some(deadline) = &mut self.fragment_deadline {
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(self.fail_with(Violation::FragmentTimeout));
                }
            }
            let needed = match self.decoder.decode(self.input.held()) {
                Err(v) => return Poll::Ready(self.fail_with(v)),
                Ok(Decoded::Frame {
                    consumed,
                    event,
                    charged,
                }) => {
                    self.input.consume(consumed);
                    self.watch_fragment();
                    match self.on_event(event, charged) {
                        Some(inbound) => return Poll::Ready(inbound),
                        None => continue,
                    }
                }
                Ok(Decoded::Incomplete { needed }) => needed,
            };
            // All that was read is decoded: a good moment for the pong.
            if self.pong.is_some() {
                self.hold_lane();
            }
            if self.state == State::Open && self.sent == self.out.len() {
                self.stage_pong();
            }
            if self.sent < self.out.len() {
                // Whatever the kernel takes now; the rest waits for the next
                // call or write (a client that does not read must not stop
                // us reading, or its pings would pile up unanswered anyway).
                if let Poll::Ready(Err(_)) = self.poll_write_out(cx) {
                    self.state = State::Gone;
                    continue;
                }
            }
            let room = self.input.room(needed);
            let mut buf = ReadBuf::new(room);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    let n = buf.filled().len();
                    self.input.filled(n);
                }
                Poll::Ready(_) => self.state = State::Gone,
            }
        }
    }

    /// What a decoded frame means to the session; `None` for a first
    /// fragment, which needs nothing from it.
    fn on_event(&mut self, event: Option<Event>, charged: bool) -> Option<Inbound> {
        let closing = self.state == State::Closing;
        match event {
            None if charged => Some(Inbound::Control),
            None => None,
            Some(Event::Text(text)) => Some(Inbound::Text(text.into())),
            Some(Event::Binary) => Some(Inbound::Binary),
            Some(Event::Ping(payload)) => {
                // After our close, RFC 6455 allows no more frames from us.
                if !closing {
                    self.pong = Some(payload);
                }
                Some(Inbound::Control)
            }
            Some(Event::Pong) => Some(Inbound::Control),
            Some(Event::Close(code)) => {
                self.hold_lane();
                if !closing {
                    // Answered with its own code (1000 if it gave none);
                    // a pong still pending is moot.
                    self.pong = None;
                    encode_close(&mut self.out, code.unwrap_or(1000), "");
                    self.state = State::PeerClosed;
                } else {
                    self.state = State::Gone;
                }
                Some(Inbound::Closed)
            }
        }
    }

    fn fail_with(&mut self, v: Violation) -> Inbound {
        self.state = State::Failed(v);
        self.fragment_deadline = None;
        self.pong = None;
        Inbound::Protocol(v)
    }

    /// Starts the fragment timer when a message opens, stops it when it ends.
    fn watch_fragment(&mut self) {
        match (
            self.decoder.message_open(),
            self.fragment_deadline.is_some(),
        ) {
            (true, false) => {
                self.fragment_deadline = Some(Box::pin(tokio::time::sleep(self.fragment_timeout)));
            }
            (false, true) => self.fragment_deadline = None,
            _ => {}
        }
    }

    /// Updates this connection's share of `herald_ws_read_buffer_bytes`.
    fn account(&mut self) {
        self.held
            .set(self.input.capacity() + self.decoder.buffered_capacity());
    }

    fn stage_pong(&mut self) {
        if let Some(payload) = self.pong.take() {
            encode_pong(&mut self.out, &payload);
        }
    }

    /// Writes queued bytes until done or the kernel takes no more; frees a
    /// large buffer once it is empty.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.hold_lane();
        while self.sent < self.out.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.out[self.sent..]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
        self.out.clear();
        self.sent = 0;
        if self.out.capacity() > WRITE_IDLE {
            self.out = Vec::new();
        }
        // TLS buffers inside the stream: flushing pushes its records out.
        Pin::new(&mut self.io).poll_flush(cx)
    }

    async fn flush(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_write_out(cx)).await
    }

    /// Sends `frames` with any pending pong: one write for the lot where the
    /// kernel takes it (a very large batch is written every
    /// [`WRITE_BUFFER`] bytes).
    pub(crate) async fn send(&mut self, frames: Vec<Utf8Bytes>) -> io::Result<()> {
        if self.state != State::Open {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.hold_lane();
        self.stage_pong();
        for frame in frames {
            encode_text(&mut self.out, &frame);
            if self.out.len() - self.sent >= WRITE_BUFFER {
                self.flush().await?;
            }
        }
        self.flush().await
    }

    /// Sends `last` (the `disconnect` frame) and a close frame with `code`,
    /// then waits for the client's close (the RFC 6455 closing handshake),
    /// giving up after [`CLOSE_TIMEOUT`] in all.
    pub(crate) async fn close(mut self, last: Option<Utf8Bytes>, code: CloseCode) {
        self.hold_lane();
        let goodbye = async {
            if matches!(self.state, State::Open | State::Failed(_)) {
                self.pong = None;
                if let Some(last) = last {
                    encode_text(&mut self.out, &last);
                }
                encode_close(&mut self.out, code.as_u16(), code.reason());
            }
            self.flush().await?;
            if self.state == State::Open {
                self.state = State::Closing;
                // Wait for the client's close, discarding what it still
                // sends: closing a socket with unread input makes the kernel
                // send a reset, which can destroy the `disconnect` frame in
                // flight (a flooding client would never learn it was closed
                // for abuse).
                loop {
                    match self.recv().await {
                        Inbound::Closed => return Ok(()),
                        Inbound::Protocol(_) => break,
                        _ => {}
                    }
                }
            }
            // The input is out of step with the frames: drain it raw.
            self.drain().await;
            Ok::<(), io::Error>(())
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await;
    }

    /// Closes for a violation: a close frame with its code (no `disconnect`:
    /// the client broke the WebSocket protocol, not Herald's), then the
    /// input is drained so the close frame is not destroyed by a reset.
    pub(crate) async fn fail(mut self, violation: Violation) {
        self.hold_lane();
        let goodbye = async {
            if matches!(self.state, State::Open | State::Failed(_)) {
                self.pong = None;
                self.state = State::Failed(violation);
                encode_close(&mut self.out, violation.code(), violation.reason());
            }
            self.flush().await?;
            self.drain().await;
            Ok::<(), io::Error>(())
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await;
    }

    /// Ends a connection the client closed or lost: answers its close (queued
    /// when it arrived) before the TCP close.
    pub(crate) async fn finish(mut self) {
        self.hold_lane();
        if self.state != State::PeerClosed {
            return;
        }
        let answer = async {
            self.flush().await?;
            self.io.shutdown().await
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, answer).await;
    }

    /// Half-closes (our close frame is out), then reads and discards until
    /// the client closes too, for at most [`DRAIN_TIMEOUT`].
    async fn drain(&mut self) {
        let drain = async {
            let _ = self.io.shutdown().await;
            loop {
                self.input.clear();
                let room = self.input.room(READ_IDLE);
                match self.io.read(room).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
        self.account();
    }
}

impl Drop for Socket {
    /// The lane lets go of the stream with the socket, whatever the path
    /// out: the fan-out must never write to a closed descriptor's number.
    fn drop(&mut self) {
        if let Some(lane) = &self.lane {
            lane.detach();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;

    fn socket(max_message: usize) -> (Socket, DuplexStream, Gauge) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let gauge = Gauge::default();
        let settings = Settings {
            max_message,
            fragment_timeout: Duration::from_millis(200),
            read_buffer_gauge: gauge.clone(),
        };
        (
            Socket::new(Box::new(server), Vec::new(), settings),
            client,
            gauge,
        )
    }

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() < 126);
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![first, 0x80 | payload.len() as u8];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        out
    }

    /// Everything the server wrote so far, as (opcode, payload) frames.
    async fn written(client: &mut DuplexStream) -> Vec<(u8, Vec<u8>)> {
        let mut bytes = vec![0u8; 1 << 16];
        let n = tokio::time::timeout(Duration::from_secs(2), client.read(&mut bytes))
            .await
            .unwrap()
            .unwrap();
        let mut frames = Vec::new();
        let mut at = 0;
        while at < n {
            let len = usize::from(bytes[at + 1]);
            assert!(len < 126);
            frames.push((bytes[at] & 0x0F, bytes[at + 2..at + 2 + len].to_vec()));
            at += 2 + len;
        }
        frames
    }

    #[tokio::test]
    async fn recv_dropped_mid_frame_loses_nothing() {
        let (mut s, mut client, _) = socket(1024);
        let f = masked(0x81, br#"{"type":"ping"}"#);
        client.write_all(&f[..5]).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(50), s.recv()).await;
        assert!(waited.is_err(), "half a frame is not a frame");
        client.write_all(&f[5..]).await.unwrap();
        match s.recv().await {
            Inbound::Text(t) => assert_eq!(t.as_str(), r#"{"type":"ping"}"#),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_burst_of_pings_gets_one_pong_with_the_latest_payload() {
        let (mut s, mut client, _) = socket(1024);
        // A burst that arrives in one read (the idle buffer's size).
        let n = (READ_IDLE / masked(0x89, &[0]).len()) as u8;
        let burst: Vec<u8> = (0..n).flat_map(|i| masked(0x89, &[i])).collect();
        client.write_all(&burst).await.unwrap();
        for _ in 0..n {
            assert!(matches!(s.recv().await, Inbound::Control));
        }
        // The next recv finds nothing buffered: the pong goes out then.
        let idle = tokio::time::timeout(Duration::from_millis(50), s.recv()).await;
        assert!(idle.is_err());
        assert_eq!(written(&mut client).await, vec![(0xA, vec![n - 1])]);
    }

    #[tokio::test]
    async fn a_pending_pong_leaves_with_the_next_send() {
        let (mut s, mut client, _) = socket(1024);
        client.write_all(&masked(0x89, b"x")).await.unwrap();
        assert!(matches!(s.recv().await, Inbound::Control));
        s.send(vec![Utf8Bytes::from_static("hi")]).await.unwrap();
        assert_eq!(
            written(&mut client).await,
            vec![(0xA, b"x".to_vec()), (0x1, b"hi".to_vec())]
        );
    }

    #[tokio::test]
    async fn a_client_close_is_answered_on_finish() {
        let (mut s, mut client, _) = socket(1024);
        client
            .write_all(&masked(0x88, &4000u16.to_be_bytes()))
            .await
            .unwrap();
        assert!(matches!(s.recv().await, Inbound::Closed));
        assert!(s.send(vec![Utf8Bytes::from_static("late")]).await.is_err());
        s.finish().await;
        assert_eq!(
            written(&mut client).await,
            vec![(0x8, 4000u16.to_be_bytes().to_vec())]
        );
    }

    #[tokio::test]
    async fn an_open_fragment_times_out_with_1008() {
        let (mut s, mut client, _) = socket(1024);
        client.write_all(&masked(0x01, b"part")).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), s.recv())
            .await
            .unwrap();
        assert!(matches!(got, Inbound::Protocol(Violation::FragmentTimeout)));
        s.fail(Violation::FragmentTimeout).await;
        let frames = written(&mut client).await;
        assert_eq!(frames[0].0, 0x8);
        assert_eq!(&frames[0].1[..2], &1008u16.to_be_bytes());
    }

    #[tokio::test]
    async fn the_gauge_follows_the_buffers_and_is_given_back_on_drop() {
        let (mut s, mut client, gauge) = socket(100_000);
        assert_eq!(gauge.get(), READ_IDLE as i64);
        let text = "y".repeat(60_000);
        let mut f = vec![0x81, 0x80 | 127];
        f.extend_from_slice(&(text.len() as u64).to_be_bytes());
        f.extend_from_slice(&[0; 4]);
        f.extend_from_slice(text.as_bytes());
        client.write_all(&f).await.unwrap();
        assert!(matches!(s.recv().await, Inbound::Text(_)));
        assert_eq!(
            gauge.get(),
            READ_IDLE as i64,
            "back to idle after the frame"
        );
        drop(s);
        assert_eq!(gauge.get(), 0);
    }
}
