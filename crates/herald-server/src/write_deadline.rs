//! A write deadline for a connection's IO (`limits.write_timeout`): hyper's
//! HTTP/1 server has none, so a client that asks for a large page and never
//! reads would hold the socket, the response and its task for ever.
//!
//! The deadline is armed when a write (or flush, or shutdown) first returns
//! `Pending` — the peer's window is full — and cleared when a flush
//! completes, which hyper does once a whole response has gone to the socket.
//! So a response has `write_timeout` from its first stall to be finished;
//! after that every write fails with `TimedOut`, hyper ends the connection
//! and its memory and file descriptor come back.
//!
//! Waiting is not writing: a long poll that holds a request until a message
//! arrives writes nothing meanwhile, so its `wait` needs nothing added here
//! (the request timeout bounds it), and an idle keep-alive connection is
//! bounded by `limits.header_read_timeout`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `S` with writes that fail once they have been stuck for `limit`.
#[derive(Debug)]
pub(crate) struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    /// The timer, kept once created and reset on each stall.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl<S> WriteDeadline<S> {
    pub(crate) fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            timer: None,
            armed: false,
        }
    }

    /// The inner IO is not ready: arm the deadline (first stall only) and
    /// say whether it has passed. Polling the timer registers the task's
    /// waker, so a peer that never reads still gets its connection ended.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if !self.armed {
            let at = Instant::now() + self.limit;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            self.armed = true;
        }
        let timer = self.timer.as_mut().expect("armed above");
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer did not read the response within limits.write_timeout",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn after<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.stalled(cx).map(Err),
            ready => ready,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.after(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = r {
            // Everything written so far reached the socket: the response is
            // out, and the next one starts with a fresh allowance.
            self.armed = false;
        }
        self.after(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.after(cx, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_write_stuck_past_the_limit_fails_and_a_flush_clears_it() {
        // A duplex pipe with a 16-byte buffer nobody reads: the second write stalls.
        let (client, server_end) = tokio::io::duplex(16);
        let mut io = WriteDeadline::new(client, Duration::from_millis(300));
        io.write_all(&[0; 16]).await.unwrap();
        io.flush().await.unwrap();
        let started = Instant::now();
        let err = io.write_all(&[0; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(300));

        // Progress before the limit is fine; a completed flush re-arms afresh.
        let (client, mut reader) = tokio::io::duplex(16);
        let mut io = WriteDeadline::new(client, Duration::from_millis(300));
        let drain = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut total = 0;
            while total < 64 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                total += reader.read(&mut buf).await.unwrap();
            }
            reader
        });
        for _ in 0..4 {
            // Each write stalls ~150 ms, under the limit; four of them take
            // longer than it, which only works because each flush re-arms.
            io.write_all(&[1; 16]).await.unwrap();
            io.flush().await.unwrap();
        }
        drop(drain.await.unwrap());
        drop(server_end);
    }
}
