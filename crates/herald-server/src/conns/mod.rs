//! Who may hold a socket, and for how long.
//!
//! - Sockets without a credential (HTTP without a valid token or API key,
//!   WebSockets before `connect`, anonymous sessions) count against
//!   `limits.max_connections_per_ip` for their client address (SPEC §4);
//!   a valid credential moves the socket off that count (sessions then count
//!   per user). Thousands of users behind one NAT are therefore never
//!   refused for sharing an address, while one address without credentials
//!   can't hold every descriptor.
//! - The client address is the peer's, or the forwarded one when the peer is
//!   a trusted proxy ([`forwarded`]).
//! - Near the open-file limit only `/health`, `/ready` and `/metrics` are
//!   served ([`fds`]), so operators can see a server under this attack.
//!
//! A socket is admitted at accept (`Conns::admit`) and judged once its
//! first request head is read (`judge`): over its address's budget it is
//! not dropped blindly, since a request with a credential, or for an ops
//! path, can still be served; anything else gets 429 and the close.

pub mod fds;
pub mod forwarded;
mod ip_slots;
mod refusal;

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use herald_protocol::{CommandError, ErrorCode};

use crate::http::error::ApiError;
use crate::http::ClientIp;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::server::PeerAddr;
use fds::{FdBands, FdCounter, OpenSocket, OpenSockets, RESERVE_PER_IP};
use forwarded::TrustedProxies;
pub(crate) use ip_slots::IpSlot;
use ip_slots::IpTable;
use refusal::RefusalLog;
pub(crate) use refusal::{answer as answer_refusal, Reason};

/// Sockets of one address waiting, over its cap, for the request head that
/// decides whether they are served: bounded so silent sockets over the cap
/// can't pile up for the length of the header-read timeout. Past it they are
/// closed at once.
const PROBATION_PER_IP: usize = 32;
/// Paths served over the per-address cap and in the fd reserve.
const OPS_PATHS: [&str; 3] = ["/health", "/ready", "/metrics"];
/// Headers parsed when judging a head; one with more is refused.
const MAX_HEADERS: usize = 64;
/// Time a socket over its address's cap or in the fd reserve has to send its
/// request head (when shorter than `limits.header_read_timeout`): a monitor
/// or a client with a credential sends it at once, and a silent socket
/// holds a scarce place while it waits.
const JUDGED_HEAD_TIMEOUT: Duration = Duration::from_secs(3);

/// The node's socket accounting.
#[derive(Debug)]
pub struct Conns {
    per_ip: Arc<IpTable>,
    probation: Arc<IpTable>,
    reserve: Arc<IpTable>,
    sockets: OpenSockets,
    /// The open-file limit; `u64::MAX` until the server sets it.
    fd_limit: AtomicU64,
    fds: FdCounter,
    proxies: TrustedProxies,
    max_per_ip: usize,
    log: RefusalLog,
    metrics: Arc<Metrics>,
}

/// How a socket was let in at accept.
#[derive(Debug)]
pub(crate) struct Admission {
    peer: SocketAddr,
    mode: Mode,
    /// Its per-address slot, until a credential releases it.
    slot: Option<IpSlot>,
    /// A probation or reserve slot, held for the socket's life.
    _hold: Option<IpSlot>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Counted against its address (which had room).
    Counted,
    /// From a trusted proxy: counted once its head names the client.
    Proxied,
    /// Over its address's cap: served only with a credential or for an ops path.
    Probation,
    /// In the fd reserve: ops paths only.
    Reserve,
}

impl Admission {
    /// Time this socket has to send its first request head.
    pub(crate) fn head_timeout(&self, header_read_timeout: Duration) -> Duration {
        match self.mode {
            Mode::Counted | Mode::Proxied => header_read_timeout,
            Mode::Probation | Mode::Reserve => header_read_timeout.min(JUDGED_HEAD_TIMEOUT),
        }
    }
}

/// What to do with a socket whose first head was read.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Serve it: with this per-address slot (none once credentialed, or for
    /// a one-request ops answer), keeping it alive or closing after one
    /// request.
    Serve {
        slot: Option<IpSlot>,
        keep_alive: bool,
    },
    /// Answer the refusal and close.
    Refuse(Reason),
}

impl Conns {
    pub(crate) fn new(config: &crate::config::LimitsConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            per_ip: Arc::default(),
            probation: Arc::default(),
            reserve: Arc::default(),
            sockets: OpenSockets::default(),
            fd_limit: AtomicU64::new(u64::MAX),
            fds: FdCounter::default(),
            // Checked by `Config::validate`.
            proxies: TrustedProxies::parse(&config.trusted_proxies).unwrap_or_default(),
            max_per_ip: config.max_connections_per_ip,
            log: RefusalLog::default(),
            metrics,
        }
    }

    pub(crate) fn set_fd_limit(&self, limit: u64) {
        self.fd_limit.store(limit, Ordering::Relaxed);
    }

    fn bands(&self) -> FdBands {
        FdBands::new(self.fd_limit.load(Ordering::Relaxed))
    }

    /// The client address of a request `peer` sent with `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        self.proxies.client_ip(peer, headers)
    }

    /// Counts a socket just accepted and decides how it is let in; `None`
    /// means close it now (counted and logged).
    pub(crate) fn admit(&self, peer: SocketAddr) -> Option<(OpenSocket, Admission)> {
        let open = self.sockets.open();
        let bands = self.bands();
        let ip = peer.ip().to_canonical();
        let (mode, slot, hold) = if open.rank > bands.socket_ceiling {
            return self.refuse_now(Reason::FdCeiling, peer);
        } else if open.rank > bands.ops_threshold {
            let Some(hold) = self.reserve.acquire(ip, RESERVE_PER_IP) else {
                return self.refuse_now(Reason::FdReserve, peer);
            };
            (Mode::Reserve, None, Some(hold))
        } else if self.proxies.contains(ip) {
            (Mode::Proxied, None, None)
        } else if let Some(slot) = self.per_ip.acquire(ip, self.max_per_ip) {
            (Mode::Counted, Some(slot), None)
        } else if let Some(hold) = self.probation.acquire(ip, PROBATION_PER_IP) {
            (Mode::Probation, None, Some(hold))
        } else {
            return self.refuse_now(Reason::PerIp, peer);
        };
        let admission = Admission {
            peer,
            mode,
            slot,
            _hold: hold,
        };
        Some((open, admission))
    }

    fn refuse_now<T>(&self, reason: Reason, peer: SocketAddr) -> Option<T> {
        self.refused(reason, peer, peer.ip());
        None
    }

    /// Counts and (rate-limited) logs a refusal.
    pub(crate) fn refused(&self, reason: Reason, peer: SocketAddr, client: IpAddr) {
        self.metrics
            .connections_refused
            .get_or_create(&[("reason", reason.label())])
            .inc();
        self.log.record(reason, peer, client);
    }

    /// A per-address slot for a socket that has none (a WebSocket upgraded
    /// through hyper on a connection a credential had released).
    pub(crate) fn acquire(&self, ip: IpAddr) -> Option<IpSlot> {
        self.per_ip.acquire(ip, self.max_per_ip)
    }

    /// Sets the gauges this module owns; called when `/metrics` renders.
    pub(crate) fn update_metrics(&self) {
        let m = &self.metrics;
        let sockets = self.sockets.get();
        let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        m.open_sockets.set(as_i64(sockets));
        m.open_fds.set(as_i64(self.fds.get(sockets)));
        m.fd_ceiling.set(as_i64(self.bands().limit));
        m.ip_counted_sockets.set(as_i64(self.per_ip.total() as u64));
        m.ip_counted_addresses
            .set(as_i64(self.per_ip.addresses() as u64));
    }
}

/// Decides, from its first request head, what happens to an admitted socket.
pub(crate) fn judge(node: &Node, admission: &mut Admission, head: &[u8]) -> Verdict {
    let conns = &node.conns;
    let peer = admission.peer;
    match admission.mode {
        Mode::Counted => Verdict::Serve {
            slot: admission.slot.take(),
            keep_alive: true,
        },
        Mode::Reserve => match Head::parse(head) {
            Some(h) if h.ops => Verdict::Serve {
                slot: None,
                keep_alive: false,
            },
            _ => {
                conns.refused(Reason::FdReserve, peer, peer.ip());
                Verdict::Refuse(Reason::FdReserve)
            }
        },
        Mode::Proxied => {
            let Some(h) = Head::parse(head) else {
                // A trusted proxy's malformed request: hyper answers it.
                return Verdict::Serve {
                    slot: None,
                    keep_alive: false,
                };
            };
            let client = conns.client_ip(peer.ip(), &h.headers);
            match conns.acquire(client) {
                Some(slot) => Verdict::Serve {
                    slot: Some(slot),
                    keep_alive: true,
                },
                None => over_cap(node, peer, client, Some(h)),
            }
        }
        Mode::Probation => over_cap(node, peer, peer.ip(), Head::parse(head)),
    }
}

/// The per-address slot of a WebSocket upgraded through hyper (an upgrade
/// on a kept-alive connection): the connection's own, or a new one when a
/// credential had released it, since the session may still connect without
/// one. A 429 when the address is at its cap.
pub(crate) fn slot_for_upgrade(
    node: &Node,
    extensions: &axum::http::Extensions,
) -> Result<Option<IpSlot>, ApiError> {
    if let Some(slot) = extensions.get::<Arc<ConnSlot>>().and_then(|c| c.take()) {
        return Ok(Some(slot));
    }
    let (Some(ClientIp(client)), Some(PeerAddr(peer))) =
        (extensions.get::<ClientIp>(), extensions.get::<PeerAddr>())
    else {
        // Not carried by the server's accept loop: nothing to count.
        return Ok(None);
    };
    match node.conns.acquire(*client) {
        Some(slot) => Ok(Some(slot)),
        None => {
            node.conns.refused(Reason::PerIp, *peer, *client);
            Err(CommandError::new(
                ErrorCode::LimitExceeded,
                "too many connections from this address without a credential (limits.max_connections_per_ip)",
            )
            .into())
        }
    }
}

/// A socket over its address's cap: served for an ops path (one request) or
/// with a credential (which it then doesn't count against the address).
fn over_cap(node: &Node, peer: SocketAddr, client: IpAddr, head: Option<Head>) -> Verdict {
    match head {
        Some(h) if h.ops => Verdict::Serve {
            slot: None,
            keep_alive: false,
        },
        // An upgrade's credential comes in `connect`, after the upgrade.
        Some(h) if !h.upgrade && has_credential(node, &h.headers) => Verdict::Serve {
            slot: None,
            keep_alive: true,
        },
        _ => {
            node.conns.refused(Reason::PerIp, peer, client);
            Verdict::Refuse(Reason::PerIp)
        }
    }
}

/// Whether `headers` carry a valid API key or client token. Tokens longer
/// than `auth.max_token_bytes` are not even parsed.
pub(crate) fn has_credential(node: &Node, headers: &HeaderMap) -> bool {
    let Ok(Some(bearer)) = crate::http::bearer(headers) else {
        return false;
    };
    node.auth.is_api_key(bearer)
        || (bearer.len() <= node.config().auth.max_token_bytes && node.auth.verify(bearer).is_ok())
}

/// What judging needs of a request head.
#[derive(Debug)]
struct Head {
    /// A GET or HEAD of an ops path.
    ops: bool,
    /// Asks for a protocol upgrade.
    upgrade: bool,
    headers: HeaderMap,
}

impl Head {
    /// `None` if the head is incomplete or malformed.
    fn parse(buf: &[u8]) -> Option<Self> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut slots);
        let httparse::Status::Complete(_) = req.parse(buf).ok()? else {
            return None;
        };
        let path = req.path?.split('?').next().unwrap_or_default();
        let ops = matches!(req.method, Some("GET" | "HEAD")) && OPS_PATHS.contains(&path);
        let mut headers = HeaderMap::with_capacity(req.headers.len());
        for h in req.headers.iter() {
            headers.append(
                HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                HeaderValue::from_bytes(h.value).ok()?,
            );
        }
        Some(Self {
            ops,
            upgrade: headers.contains_key(header::UPGRADE),
            headers,
        })
    }
}

/// The per-address slot of one HTTP connection, shared by its requests: a
/// request with a credential releases it; a WebSocket upgrade through hyper
/// takes it into the session.
#[derive(Debug, Default)]
pub(crate) struct ConnSlot(Mutex<Option<IpSlot>>);

impl ConnSlot {
    pub(crate) fn new(slot: Option<IpSlot>) -> Arc<Self> {
        Arc::new(Self(Mutex::new(slot)))
    }

    /// Releases the slot if `headers` carry a credential. Verifies only
    /// while a slot is held, so a credentialed connection pays once.
    pub(crate) fn on_request(&self, node: &Node, headers: &HeaderMap) {
        if self.0.lock().is_some() && has_credential(node, headers) {
            self.0.lock().take();
        }
    }

    pub(crate) fn take(&self) -> Option<IpSlot> {
        self.0.lock().take()
    }
}

/// A stream that counts as one open socket for as long as it lives,
/// whichever task ends up owning it (an HTTP connection or a session).
#[derive(Debug)]
pub(crate) struct Tracked<S> {
    inner: S,
    _open: OpenSocket,
}

impl<S> Tracked<S> {
    pub(crate) fn new(inner: S, open: OpenSocket) -> Self {
        Self { inner, _open: open }
    }

    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_read_for_ops_paths_upgrades_and_headers() {
        let h = Head::parse(b"GET /health?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert!(h.ops && !h.upgrade);
        let h = Head::parse(b"POST /metrics HTTP/1.1\r\n\r\n").unwrap();
        assert!(!h.ops);
        let h = Head::parse(
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nAuthorization: Bearer k\r\n\r\n",
        )
        .unwrap();
        assert!(h.upgrade && !h.ops);
        assert_eq!(h.headers[header::AUTHORIZATION], "Bearer k");
        assert!(Head::parse(b"GET /health HTTP/1.1\r\n").is_none());
        assert!(Head::parse(b"\x00\x01garbage\r\n\r\n").is_none());
    }
}
