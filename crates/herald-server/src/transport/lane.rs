//! The direct write lane: lets the fan-out write a connection's live frames
//! to its TCP socket itself, so a delivery costs one `writev` and no task
//! wake-up (SPEC §10: a wake, a poll of the session's loop and a copy into
//! its buffer were a third of the CPU per delivery).
//!
//! The lane is open only while the session is idle: nothing of its own
//! staged or unsent, nothing queued, no command being handled. The session
//! opens it before it waits and closes it as soon as it does anything; the
//! socket closes it before it writes a byte of its own. A write through the
//! lane never waits: what the kernel does not take at once is kept as the
//! lane's *spill*, the lane closes, and the session writes the spill first,
//! with its write deadline, before anything else. So the bytes on the wire
//! are always whole frames in the order they were handed over, and a slow
//! reader is still the session's to judge.
//!
//! Plain TCP only: a TLS stream's state lives in the session's stream, and
//! hyper's upgraded connections hide their socket; those keep the session's
//! own path.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::{Mutex, MutexGuard};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream shared by the session (which reads and writes it as any
/// stream) and its [`Lane`] (which only ever tries a write, never waits):
/// tokio's `try_write` works on a shared reference, and only the session
/// registers for readiness.
#[derive(Debug, Clone)]
pub(crate) struct SharedTcp(Arc<TcpStream>);

impl SharedTcp {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self(Arc::new(stream))
    }

    pub(crate) fn get_ref(&self) -> &TcpStream {
        &self.0
    }

    /// A lane onto this stream.
    pub(crate) fn lane(&self) -> Arc<Lane> {
        Arc::new(Lane {
            inner: Mutex::new(LaneState {
                stream: Some(self.0.clone()),
                open: false,
                spill: Vec::new(),
            }),
        })
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            std::task::ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match self.0.try_read(unfilled) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale; it is cleared, so the next poll waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // tokio's own shutdown needs the stream by `&mut`; socket2 does
        // the same `shutdown(2)` on a shared one.
        let r = socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write);
        Poll::Ready(match r {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            r => r,
        })
    }
}

/// See the module's documentation.
#[derive(Debug)]
pub(crate) struct Lane {
    inner: Mutex<LaneState>,
}

#[derive(Debug)]
struct LaneState {
    /// `None` once the socket is gone: the lane must never write to a
    /// descriptor number the kernel may have handed to someone else.
    stream: Option<Arc<TcpStream>>,
    open: bool,
    /// Bytes handed to the lane that the kernel did not take; the session
    /// writes them before anything else.
    spill: Vec<u8>,
}

/// How a write through the lane went.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Wrote {
    /// The kernel took every byte of this many frames.
    All(usize),
    /// It took less (or failed): the rest is spilled and the lane is
    /// closed; the session must be told to write.
    Stalled,
}

impl Lane {
    /// The lane, locked, when it is open.
    pub(crate) fn lock_open(&self) -> Option<OpenLane<'_>> {
        let state = self.inner.lock();
        (state.open && state.stream.is_some()).then_some(OpenLane(state))
    }

    /// Whether the fan-out may write now.
    pub(crate) fn is_open(&self) -> bool {
        self.inner.lock().open
    }

    /// Opens the lane. The session's to call, when it is idle (nothing of
    /// its own unsent) and nothing is queued for it.
    pub(crate) fn open(&self) {
        let mut state = self.inner.lock();
        state.open = state.stream.is_some() && state.spill.is_empty();
    }

    /// Closes the lane without touching the spill.
    pub(crate) fn shut(&self) {
        self.inner.lock().open = false;
    }

    /// Closes the lane and takes its spill: the socket's, before it writes.
    pub(super) fn claim(&self) -> Vec<u8> {
        let mut state = self.inner.lock();
        state.open = false;
        std::mem::take(&mut state.spill)
    }

    /// Closes the lane for good and lets go of the stream, so the socket's
    /// descriptor closes with the socket whoever still holds the lane.
    pub(super) fn detach(&self) {
        let mut state = self.inner.lock();
        state.open = false;
        state.stream = None;
        state.spill = Vec::new();
    }
}

/// An open lane, locked: the socket cannot write, or close the lane, until
/// it is dropped.
pub(crate) struct OpenLane<'a>(MutexGuard<'a, LaneState>);

/// Frames per `writev` (two slices each, far under `IOV_MAX`).
pub(crate) const LANE_BATCH: usize = 64;

impl OpenLane<'_> {
    /// Writes `frames` (whole WebSocket frames, at most [`LANE_BATCH`]) in
    /// one `send` or `sendmsg`, without waiting.
    pub(crate) fn write(&mut self, frames: &[&[u8]]) -> Wrote {
        debug_assert!(frames.len() <= LANE_BATCH);
        let total: usize = frames.iter().map(|f| f.len()).sum();
        // socket2's `send` rather than tokio's `try_write`: a socket call
        // skips the VFS layer a `write` goes through (measured: a tenth of
        // the kernel's time per delivery). tokio's readiness is left as
        // it was; a session that writes after a stall meets the full
        // buffer itself and waits for it properly.
        let sent = match (&self.0.stream, frames) {
            (None, _) => Ok(0),
            (Some(stream), [one]) => socket2::SockRef::from(&**stream).send(one),
            (Some(stream), many) => {
                let slices: Vec<IoSlice<'_>> = many.iter().map(|f| IoSlice::new(f)).collect();
                socket2::SockRef::from(&**stream).send_vectored(&slices)
            }
        };
        let taken = match sent {
            Ok(n) if n == total => return Wrote::All(frames.len()),
            Ok(n) => n,
            // WouldBlock or a failure: the session's own write meets the
            // same socket, with its deadline, and learns which.
            Err(_) => 0,
        };
        let mut skip = taken;
        let spill = &mut self.0.spill;
        spill.reserve(total - taken);
        for frame in frames {
            if skip >= frame.len() {
                skip -= frame.len();
                continue;
            }
            spill.extend_from_slice(&frame[skip..]);
            skip = 0;
        }
        self.0.open = false;
        Wrote::Stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    fn wire(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        crate::transport::frame::encode_text(&mut out, text);
        out
    }

    async fn pair() -> (SharedTcp, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (SharedTcp::new(server), client)
    }

    #[tokio::test]
    async fn a_closed_lane_is_not_lent_and_an_open_one_writes_whole_frames() {
        let (tcp, mut client) = pair().await;
        let lane = tcp.lane();
        assert!(lane.lock_open().is_none(), "lanes start closed");
        lane.open();
        let (a, bc) = (wire("a"), wire("bc"));
        let wrote = lane.lock_open().unwrap().write(&[&a, &bc]);
        assert_eq!(wrote, Wrote::All(2));
        let mut got = [0u8; 7];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, &[0x81, 1, b'a', 0x81, 2, b'b', b'c']);
        assert!(lane.claim().is_empty());
        assert!(lane.lock_open().is_none(), "claimed: closed");
    }

    #[tokio::test]
    async fn what_the_kernel_refuses_is_spilled_in_order_and_closes_the_lane() {
        let (tcp, mut client) = pair().await;
        let lane = tcp.lane();
        lane.open();
        // Batches until the socket buffers are full (the client reads nothing).
        let big = wire(&"x".repeat(60_000));
        let batch: Vec<&[u8]> = (0..LANE_BATCH).map(|_| big.as_slice()).collect();
        let mut frames = Vec::new();
        for _ in 0..100 {
            frames.extend_from_slice(&batch);
            if lane.lock_open().unwrap().write(&batch) == Wrote::Stalled {
                break;
            }
        }
        assert!(lane.lock_open().is_none(), "stalled within 384 MB");
        lane.open();
        assert!(!lane.is_open(), "a lane with a spill stays closed");
        let spill = lane.claim();
        assert!(!spill.is_empty());
        // What was written and what was spilled make exactly the frames.
        let expected = frames.concat();
        let written = expected.len() - spill.len();
        let mut got = vec![0u8; written];
        client.read_exact(&mut got).await.unwrap();
        got.extend_from_slice(&spill);
        assert!(
            got == expected,
            "written bytes then the spill are the frames, in order"
        );
    }

    #[tokio::test]
    async fn a_detached_lane_never_writes() {
        let (tcp, _client) = pair().await;
        let lane = tcp.lane();
        lane.detach();
        lane.open();
        assert!(lane.lock_open().is_none());
    }
}
