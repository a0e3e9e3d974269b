//! Tests of the `herald` binary itself: dev mode, the CLI, signals, and
//! durability across `kill -9`.

#![allow(unreachable_pub)]

mod util;

mod cli;
mod durability;
mod fd_reserve;
mod files;
mod hostile;
mod logs;
mod metrics;
mod openapi;
mod presence;
mod proxy;
mod publish;
mod read_state;
mod redis;
mod undelivered;
mod webhook_events;
mod work;
mod ws_protocol;
