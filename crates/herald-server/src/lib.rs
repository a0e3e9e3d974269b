//! Herald's server as a library.
//!
//! - [`node`]: the [`Node`] — publish, notify, recover, poll, stats.
//! - [`hub`]: local subscribers and fan-out; [`session`]: one connection.
//! - [`engine`]: history stores (`embedded` SQLite, `memory`).
//! - [`http`]: the axum router; [`transport`]: the WebSocket seam.
//! - [`conns`]: sockets per address, the open-file reserve, client addresses.
//! - [`auth`], [`config`], [`metrics`]; [`idempotency`]: publish keys;
//!   [`server`]: bind, run, drain;
//!   [`tls`]: rustls termination for `https://` and `wss://`.
//!
//! An application can embed Herald: build a [`Config`], [`Server::bind`] it,
//! and call [`Node::broadcast`] / [`Node::notify`] on [`Server::node`].

pub mod auth;
pub mod config;
pub mod config_doc;
pub mod conns;
pub mod engine;
pub mod http;
pub mod hub;
pub mod idempotency;
pub mod ids;
mod json_shape;
pub mod metrics;
pub mod node;
pub mod occupancy;
pub mod outbound;
pub mod presence;
pub mod private_fs;
pub mod proxy;
pub mod quota;
pub mod server;
mod session;
pub mod tls;
pub mod transport;
mod undelivered;
pub mod users;
pub mod webhooks;
mod write_deadline;

/// Internals exposed for the fuzz targets only; not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::transport::frame::{Decoded, Decoder, Event, Violation};
}

pub use config::Config;
pub use node::{Node, NodeError, Stats};
pub use server::{ServeError, Server};
