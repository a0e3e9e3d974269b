//! Reading a connection's first request head before anyone serves it, and
//! handing the bytes on.
//!
//! The accept loop reads the head itself so a WebSocket upgrade can skip
//! hyper: an upgraded hyper connection keeps its task and both HTTP buffers
//! alive for the socket's whole life, which is most of an idle connection's
//! memory. Everything that is not taken for a WebSocket goes to hyper through
//! [`Replay`], which serves the bytes already read before the socket's own.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Head bytes read before giving up on finding its end and leaving the
/// request to hyper (which has its own, larger, limits and errors).
const MAX_HEAD: usize = 16 * 1024;
/// Bytes asked of the socket at a time: a typical upgrade head fits in one.
const CHUNK: usize = 1024;

/// Reads until the end of the first request head (`\r\n\r\n`), [`MAX_HEAD`]
/// bytes, or end of stream. What was read may hold more than the head (a
/// pipelined request, early frames); `None` when the peer sent nothing.
pub(crate) async fn read<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(CHUNK);
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(CHUNK);
        }
        let searched = buf.len().saturating_sub(3);
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok((!buf.is_empty()).then_some(buf));
        }
        if buf[searched..].windows(4).any(|w| w == b"\r\n\r\n") || buf.len() >= MAX_HEAD {
            return Ok(Some(buf));
        }
    }
}

/// A stream that reads `head` first, then the stream itself; writes go
/// straight through.
#[derive(Debug)]
pub(crate) struct Replay<S> {
    head: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Replay<S> {
    pub(crate) fn new(head: Vec<u8>, inner: S) -> Self {
        Self { head, at: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.head.len() {
            let n = buf.remaining().min(self.head.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.head[at..at + n]);
            self.at += n;
            if self.at == self.head.len() {
                // Replayed: free it rather than carry it for the socket's life.
                self.head = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn reads_the_head_and_replays_it_before_the_rest() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let reading = tokio::spawn(async move {
            let head = read(&mut server).await.unwrap().unwrap();
            (head, server)
        });
        client.write_all(b"Host: x\r\n\r\nrest").await.unwrap();
        let (head, server) = reading.await.unwrap();
        assert!(head.starts_with(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        client.write_all(b"!").await.unwrap();
        drop(client);
        let mut all = Vec::new();
        Replay::new(head, server)
            .read_to_end(&mut all)
            .await
            .unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest!");
    }

    #[tokio::test]
    async fn nothing_sent_is_none() {
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        assert!(read(&mut server).await.unwrap().is_none());
    }
}
