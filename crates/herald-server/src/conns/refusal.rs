//! Refusing a socket: the answer on the wire (written raw, before any HTTP
//! server exists for the socket, with a deadline) and a log line that an
//! attacker's flood can't turn into a flood of lines.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Time the refusal may take to write; a peer that doesn't read loses it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Time and bytes of the peer's remaining input read after a refusal:
/// closing a socket with unread input makes the kernel answer with a reset,
/// which can destroy the refusal before the client reads it.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);
const DRAIN_BYTES: usize = 64 * 1024;
/// At most one refusal line per this long; the rest are counted into it.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Why a socket was refused; the `reason` label of the refusal counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Its address holds `limits.max_connections_per_ip` sockets.
    PerIp,
    /// Only the ops paths are served this close to the open-file limit.
    FdReserve,
    /// At the socket ceiling: closed at once.
    FdCeiling,
}

impl Reason {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::PerIp => "per_ip",
            Self::FdReserve => "fd_reserve",
            Self::FdCeiling => "fd_ceiling",
        }
    }

    /// The status line and JSON body answered (SPEC §5: code 1004).
    fn answer(self) -> (&'static str, &'static str) {
        match self {
            Self::PerIp => (
                "429 Too Many Requests",
                r#"{"error":{"code":1004,"message":"too many connections from this address without a credential (limits.max_connections_per_ip)"}}"#,
            ),
            Self::FdReserve | Self::FdCeiling => (
                "503 Service Unavailable",
                r#"{"error":{"code":1004,"message":"server at its connection limit; only /health, /ready and /metrics are served"}}"#,
            ),
        }
    }
}

/// Writes the refusal for `reason` with `Connection: close`, then lets the
/// peer's input drain briefly; the caller drops the socket after.
pub(crate) async fn answer<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, reason: Reason) {
    let (status, body) = reason.answer();
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let written = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let mut buf = [0u8; 4096];
        let mut drained = 0;
        while drained < DRAIN_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// Logs refusals at most once per [`LOG_EVERY`], with how many were not
/// logged since the last line.
#[derive(Debug)]
pub(crate) struct RefusalLog {
    state: Mutex<LogState>,
}

#[derive(Debug)]
struct LogState {
    last: Option<Instant>,
    unlogged: u64,
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self {
            state: Mutex::new(LogState {
                last: None,
                unlogged: 0,
            }),
        }
    }
}

impl RefusalLog {
    /// Records one refusal; true when it was logged.
    pub(crate) fn record(
        &self,
        reason: Reason,
        peer: SocketAddr,
        client: std::net::IpAddr,
    ) -> bool {
        let mut state = self.state.lock();
        if state.last.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            state.unlogged += 1;
            return false;
        }
        let unlogged = std::mem::take(&mut state.unlogged);
        state.last = Some(Instant::now());
        drop(state);
        tracing::warn!(
            %peer,
            %client,
            reason = reason.label(),
            refused_since_last_line = unlogged,
            "connection refused"
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_at_most_once_a_second() {
        let log = RefusalLog::default();
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(log.record(Reason::PerIp, peer, peer.ip()));
        for _ in 0..100 {
            assert!(!log.record(Reason::PerIp, peer, peer.ip()));
        }
        assert_eq!(log.state.lock().unlogged, 100);
    }

    #[tokio::test]
    async fn answers_json_and_closes() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let writing = tokio::spawn(async move { answer(&mut server, Reason::PerIp).await });
        let mut text = String::new();
        client.read_to_string(&mut text).await.unwrap();
        drop(client);
        writing.await.unwrap();
        assert!(text.starts_with("HTTP/1.1 429 "), "{text}");
        assert!(text.contains("connection: close") && text.contains("\"code\":1004"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], 1004);
    }
}
