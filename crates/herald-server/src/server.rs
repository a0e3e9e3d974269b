//! Binding, serving and draining: the server's life from listen to exit.
//!
//! Shutdown order matters: stop accepting, tell every session (`disconnect`
//! 4000, reconnect: true), wait for sessions to finish within
//! `limits.shutdown_timeout`, then close the engine so every answered publish
//! is on disk before the process exits.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::{TcpListener, TcpSocket};

use crate::config::Config;
use crate::node::{Node, StartError};

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
/// File descriptors kept back from the connection ceiling for the store, logs
/// and HTTP requests.
const FD_RESERVE: u64 = 64;

/// A bound server, ready to run.
#[derive(Debug)]
pub struct Server {
    node: Arc<Node>,
    listener: TcpListener,
    addr: SocketAddr,
}

impl Server {
    /// Validates the configuration, raises the open-file limit, opens the
    /// engine and binds the listener.
    pub async fn bind(config: Config) -> Result<Self, ServeError> {
        config.validate()?;
        let addr = config.listen_addr()?;
        let ceiling = raise_fd_limit();
        let node = Node::new(config)?;
        node.set_connection_ceiling(ceiling);
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
        tracing::info!(%addr, connection_ceiling = ceiling, engine = node.stats().engine, "herald bound");
        Ok(Self {
            node,
            listener,
            addr,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node, for embedding applications and tests.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Serves until [`Node::begin_shutdown`], then drains and closes the engine.
    pub async fn run(self) -> std::io::Result<()> {
        let Self { node, listener, .. } = self;
        let sweeper = spawn_sweeper(&node);
        let app = crate::http::router(node.clone());
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let token = node.shutdown_token().clone();
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(token.cancelled_owned())
            .await;
        let tracker = node.tracker().clone();
        tracker.close();
        if tokio::time::timeout(node.config().limits.shutdown_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = tracker.len(),
                "shutdown timeout: dropping sessions that did not finish"
            );
        }
        sweeper.abort();
        node.close_engine().await;
        tracing::info!("herald stopped");
        served
    }
}

fn spawn_sweeper(node: &Arc<Node>) -> tokio::task::JoinHandle<()> {
    let node = node.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(crate::engine::EmbeddedEngine::sweep_interval());
        loop {
            every.tick().await;
            node.sweep().await;
        }
    })
}

/// Raises the soft open-file limit to the hard limit; returns the resulting
/// connection ceiling.
fn raise_fd_limit() -> u64 {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    };
    limit.saturating_sub(FD_RESERVE)
}
