//! Integration tests: a real server on an ephemeral port, real sockets.

#![allow(unreachable_pub)]

mod util;

mod api;
mod auth;
mod fanout;
mod hostile_conns;
mod hostile_http;
mod hostile_store;
mod idempotency;
mod lifecycle;
mod polling;
mod protocol;
mod recovery;
mod security;
