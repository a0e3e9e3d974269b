//! Binding, serving and draining: the server's life from listen to exit.
//!
//! Shutdown order matters: stop accepting, tell every session (`disconnect`
//! 4000, reconnect: true), wait for sessions to finish within
//! `limits.shutdown_timeout`, then close the engine so every answered publish
//! is on disk before the process exits.
//!
//! The accept loop is ours rather than `axum::serve`'s because the open
//! internet needs two things it does not offer: a header-read timeout (a
//! socket that connects and never finishes its request must not hold a task
//! and a file descriptor forever) and TLS on the same code path as plain
//! HTTP. Both schemes run the one router through hyper's HTTP/1 server,
//! except WebSocket upgrades, which the loop takes itself before hyper sees
//! them (see [`crate::transport::ws`]): that keeps hyper's connection state
//! off every idle socket. Hyper has no write timeout either, so its IO is
//! wrapped in `write_deadline::WriteDeadline`: a response nobody reads is dropped
//! after `limits.write_timeout`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::conns::{Admission, ConnSlot, Tracked, Verdict};
use crate::http::ClientIp;
use crate::node::{Node, StartError};
use crate::transport::lane::SharedTcp;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The node could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Listen backlog: a reconnect storm arrives all at once.
const BACKLOG: u32 = 8192;
/// Pause after an accept error such as EMFILE, so the loop does not spin
/// while descriptors are short.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A bound server, ready to run.
pub struct Server {
    node: Arc<Node>,
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Validates the configuration, raises the open-file limit, opens the
    /// engine and binds the listener.
    pub async fn bind(config: Config) -> Result<Self, ServeError> {
        config.validate()?;
        let addr = config.listen_addr()?;
        let tls = config.tls.as_ref().map(crate::tls::acceptor).transpose()?;
        let fd_limit = crate::conns::fds::raise_fd_limit();
        let ceiling = fd_limit.saturating_sub(crate::conns::fds::FD_RESERVE);
        let node = Node::new(config)?;
        node.set_connection_ceiling(ceiling);
        node.conns.set_fd_limit(fd_limit);
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|source| ServeError::Bind { addr, source })?;
        socket
            .set_reuseaddr(true)
            .map_err(|source| ServeError::Bind { addr, source })?;
        socket
            .bind(addr)
            .map_err(|source| ServeError::Bind { addr, source })?;
        let listener = socket
            .listen(BACKLOG)
            .map_err(|source| ServeError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        tracing::info!(%addr, tls = tls.is_some(), connection_ceiling = ceiling, engine = node.stats().engine, "herald bound");
        Ok(Self {
            node,
            listener,
            addr,
            tls,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `"https"` when serving TLS, else `"http"`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The node, for embedding applications and tests.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Serves until [`Node::begin_shutdown`], then drains and closes the engine.
    pub async fn run(self) -> std::io::Result<()> {
        let Self {
            node,
            listener,
            tls,
            ..
        } = self;
        let sweeper = spawn_sweeper(&node);
        let announcer = spawn_announcer(&node);
        // Plain-TCP sessions' live frames are written by these (hub.rs).
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        node.hub.start_flushers(workers);
        let refresher = spawn_presence_refresher(&node);
        let occupancy_stop = tokio_util::sync::CancellationToken::new();
        let occupancy = node.spawn_occupancy(occupancy_stop.clone());
        let undelivered = crate::undelivered::spawn(&node);
        let app = crate::http::router(node.clone());
        let token = node.shutdown_token().clone();
        let connections = TaskTracker::new();
        loop {
            let tcp = tokio::select! {
                _ = token.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => (tcp, peer),
                    // The peer gave up before we got to it: nothing to do.
                    Err(e) if is_connection_error(&e) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed; backing off");
                        tokio::select! {
                            _ = token.cancelled() => break,
                            _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                        }
                    }
                },
            };
            let (tcp, peer) = tcp;
            // Counted from accept; a socket refused here is closed at once.
            let Some((open, admission)) = node.conns.admit(peer) else {
                continue;
            };
            connections.spawn(serve_connection(
                Tracked::new(SharedTcp::new(tcp), open),
                admission,
                PeerAddr(peer),
                tls.clone(),
                app.clone(),
                node.clone(),
            ));
        }
        drop(listener);
        // In-flight requests finish (long polls see the shutdown and answer);
        // WebSocket sessions run in tasks of their own and are waited for
        // below through the node's tracker.
        connections.close();
        // One deadline for HTTP connections and sessions together.
        let drain_until = tokio::time::Instant::now() + node.config().limits.shutdown_timeout;
        if tokio::time::timeout_at(drain_until, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = connections.len(),
                "shutdown timeout: dropping HTTP connections that did not finish"
            );
        }
        let tracker = node.tracker().clone();
        tracker.close();
        if tokio::time::timeout_at(drain_until, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = tracker.len(),
                "shutdown timeout: dropping sessions that did not finish"
            );
        }
        // Sessions are gone: the node releases what it held (vacated and
        // offline where it was the last), then the events go out.
        occupancy_stop.cancel();
        if let Some(task) = occupancy {
            if tokio::time::timeout_at(drain_until, task).await.is_err() {
                tracing::warn!("shutdown timeout: occupancy not released; other nodes release it within presence.ttl");
            }
        }
        node.drain_webhooks(drain_until).await;
        sweeper.abort();
        announcer.abort();
        refresher.abort();
        if let Some(task) = undelivered {
            task.abort();
        }
        node.close_engine().await;
        tracing::info!("herald stopped");
        Ok(())
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// One accepted socket: the TLS handshake (when configured, bounded by the
/// header-read timeout so a silent peer can't hold it open), then the first
/// request head, then a WebSocket session or HTTP/1.
async fn serve_connection(
    tcp: Tracked<SharedTcp>,
    admission: Admission,
    peer: PeerAddr,
    tls: Option<TlsAcceptor>,
    app: Router,
    node: Arc<Node>,
) {
    let _ = tcp.get_ref().get_ref().set_nodelay(true);
    let token = node.shutdown_token().clone();
    let header_timeout = node.config().limits.header_read_timeout;
    match tls {
        None => {
            let lane_source = tcp.get_ref().clone();
            serve_stream(tcp, Some(lane_source), admission, peer, app, node).await
        }
        Some(acceptor) => {
            let handshake = tokio::select! {
                r = tokio::time::timeout(header_timeout, acceptor.accept(tcp)) => r,
                _ = token.cancelled() => return,
            };
            match handshake {
                Ok(Ok(stream)) => serve_stream(stream, None, admission, peer, app, node).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
    }
}

/// Reads the first request head (within the header-read timeout, like
/// hyper's own), judges the socket by it (`conns::judge`: a socket
/// over its address's budget is refused here), takes a WebSocket upgrade to
/// a session task of its own and leaves anything else to hyper with the
/// head replayed.
async fn serve_stream<S>(
    mut stream: S,
    tcp: Option<SharedTcp>,
    mut admission: Admission,
    peer: PeerAddr,
    app: Router,
    node: Arc<Node>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let token = node.shutdown_token().clone();
    let header_timeout = admission.head_timeout(node.config().limits.header_read_timeout);
    let deadline = tokio::time::Instant::now() + header_timeout;
    let head = tokio::select! {
        r = tokio::time::timeout_at(deadline, crate::transport::head::read(&mut stream)) => r,
        _ = token.cancelled() => return,
    };
    let head = match head {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => return tracing::debug!(error = %e, "reading the request head failed"),
        Err(_) => return tracing::debug!("request head timed out"),
    };
    let (slot, keep_alive) = match crate::conns::judge(&node, &mut admission, &head) {
        Verdict::Serve { slot, keep_alive } => (slot, keep_alive),
        Verdict::Refuse(reason) => return crate::conns::answer_refusal(&mut stream, reason).await,
    };
    let accepted = tokio::time::timeout_at(
        deadline,
        crate::transport::ws::accept_raw(&node, head, stream, tcp),
    )
    .await;
    match accepted {
        Ok(Ok(Some(socket))) => {
            // Its own task, so this connection's task (and its state) ends
            // here; tracked so shutdown can wait for the session's goodbye.
            let tracker = node.tracker().clone();
            tracker.spawn(crate::session::run(node, socket, slot));
        }
        Ok(Ok(None)) => tracing::debug!("writing the WebSocket handshake failed"),
        Ok(Err((head, stream))) => {
            let stream = crate::transport::head::Replay::new(head, stream);
            let stream = crate::write_deadline::WriteDeadline::new(
                stream,
                node.config().limits.write_timeout,
            );
            let conn = HttpConn {
                peer,
                slot: ConnSlot::new(slot),
                keep_alive,
            };
            serve_http(stream, conn, app, node).await
        }
        Err(_) => tracing::debug!("WebSocket handshake timed out"),
    }
}

/// What an HTTP connection carries besides its stream.
struct HttpConn {
    peer: PeerAddr,
    /// Its per-address slot, until a request with a credential releases it.
    slot: Arc<ConnSlot>,
    /// False for a socket served one request only (an ops path over the
    /// per-address cap or in the fd reserve).
    keep_alive: bool,
}

async fn serve_http<S>(stream: S, conn: HttpConn, app: Router, node: Arc<Node>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let token = node.shutdown_token().clone();
    let header_timeout = node.config().limits.header_read_timeout;
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The timer is what makes header_read_timeout take effect; hyper runs it
    // for the first request and whenever a kept-alive connection waits for
    // its next one, so it also bounds idle keep-alive sockets.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(conn.keep_alive);
    let service = WithPeer {
        peer: conn.peer,
        slot: conn.slot,
        node,
        app,
    };
    let conn = builder
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        }
        _ = token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// The address of the peer that opened a connection, attached to every
/// request it carries (`request.extensions().get::<PeerAddr>()`): per-address
/// limits and logs need it, and axum's `ConnectInfo` exists only under
/// `axum::serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The router with the connection's [`PeerAddr`], the request's
/// [`ClientIp`] and the connection's [`ConnSlot`] put into each request; a
/// request with a credential releases the slot. A wrapper rather than
/// `Router::layer`, which would rebuild the router's routes for every
/// connection.
#[derive(Clone)]
struct WithPeer {
    peer: PeerAddr,
    slot: Arc<ConnSlot>,
    node: Arc<Node>,
    app: Router,
}

impl<B> tower::Service<axum::http::Request<B>> for WithPeer
where
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = <Router as tower::Service<axum::http::Request<B>>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower::Service::<axum::http::Request<B>>::poll_ready(&mut self.app, cx)
    }

    fn call(&mut self, mut request: axum::http::Request<B>) -> Self::Future {
        let client = self
            .node
            .conns
            .client_ip(self.peer.0.ip(), request.headers());
        self.slot.on_request(&self.node, request.headers());
        let extensions = request.extensions_mut();
        extensions.insert(self.peer);
        extensions.insert(ClientIp(client));
        extensions.insert(self.slot.clone());
        self.app.call(request)
    }
}

/// Announces this node to the others on the engine, at once and then every
/// [`crate::engine::ANNOUNCE_EVERY`] (a no-op on single-node engines).
fn spawn_announcer(node: &Arc<Node>) -> tokio::task::JoinHandle<()> {
    let node = node.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(crate::engine::ANNOUNCE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            node.announce().await;
        }
    })
}

/// Renews this node's presence entries and sessions in the cluster every
/// third of `presence.ttl` (a no-op on single-node engines).
fn spawn_presence_refresher(node: &Arc<Node>) -> tokio::task::JoinHandle<()> {
    let node = node.clone();
    tokio::spawn(async move {
        let period = node.config().presence.ttl / 3;
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            node.refresh_presence().await;
        }
    })
}

fn spawn_sweeper(node: &Arc<Node>) -> tokio::task::JoinHandle<()> {
    let node = node.clone();
    tokio::spawn(async move {
        let period = node.config().engine.sweep_interval;
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        // A sweep that outlasts the period is not followed by a burst.
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            node.sweep().await;
        }
    })
}
