//! File descriptors: the open-file limit, the count of open sockets, and
//! the thresholds that keep `/health`, `/ready` and `/metrics` answering
//! when sockets fill the limit.
//!
//! Three bands of the open-file limit, from the top:
//! - [`FD_RESERVE`] descriptors are never used for client sockets: the store,
//!   logs and the process itself need them.
//! - the next `OPS_RESERVE` (32) sockets (the ops reserve) serve only the ops
//!   paths, one request each, and at most `RESERVE_PER_IP` (2) of them per
//!   address, so one address can't fill the reserve it is kept from.
//! - below that, sockets are served as usual.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Descriptors kept back from client sockets for the store, logs and the
/// process itself.
pub const FD_RESERVE: u64 = 64;
/// Sockets, below the socket ceiling, kept for the ops paths.
const OPS_RESERVE: u64 = 32;
/// Ops-reserve sockets one address may hold at once.
pub(crate) const RESERVE_PER_IP: usize = 2;
/// How long a count of `/proc/self/fd` is reused: it walks a directory as
/// long as the descriptor table, and `/metrics` is unauthenticated.
const FD_COUNT_TTL: Duration = Duration::from_secs(1);

/// Raises the soft open-file limit to the hard limit; returns the soft limit
/// in force.
pub fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    }
}

/// The socket thresholds for an open-file limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FdBands {
    /// The open-file limit.
    pub(crate) limit: u64,
    /// Open sockets past which new ones are closed at once.
    pub(crate) socket_ceiling: u64,
    /// Open sockets past which only the ops paths are served.
    pub(crate) ops_threshold: u64,
}

impl FdBands {
    pub(crate) fn new(limit: u64) -> Self {
        let socket_ceiling = limit.saturating_sub(FD_RESERVE).max(1);
        // A tiny limit still leaves most of it to ordinary sockets.
        let ops = OPS_RESERVE.min(socket_ceiling / 4);
        Self {
            limit,
            socket_ceiling,
            ops_threshold: socket_ceiling - ops,
        }
    }
}

/// Counts open client sockets; each is a drop guard.
#[derive(Debug, Default)]
pub(crate) struct OpenSockets {
    count: Arc<AtomicU64>,
}

/// One open client socket, counted until dropped.
#[derive(Debug)]
pub(crate) struct OpenSocket {
    count: Arc<AtomicU64>,
    /// How many were open, this one included, when it was counted.
    pub(crate) rank: u64,
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl OpenSockets {
    pub(crate) fn open(&self) -> OpenSocket {
        let rank = self.count.fetch_add(1, Ordering::AcqRel) + 1;
        OpenSocket {
            count: self.count.clone(),
            rank,
        }
    }

    pub(crate) fn get(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }
}

/// The process's open descriptors, counted in `/proc/self/fd` (Linux) at
/// most once per [`FD_COUNT_TTL`]; `fallback` elsewhere.
#[derive(Debug, Default)]
pub(crate) struct FdCounter {
    last: Mutex<Option<(Instant, u64)>>,
}

impl FdCounter {
    pub(crate) fn get(&self, fallback: u64) -> u64 {
        let mut last = self.last.lock();
        if let Some((at, n)) = *last {
            if at.elapsed() < FD_COUNT_TTL {
                return n;
            }
        }
        let n = std::fs::read_dir("/proc/self/fd")
            // One entry is the directory handle doing the reading.
            .map(|dir| (dir.count() as u64).saturating_sub(1))
            .unwrap_or(fallback);
        *last = Some((Instant::now(), n));
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_leave_a_reserve_at_any_limit() {
        let b = FdBands::new(256);
        assert_eq!((b.socket_ceiling, b.ops_threshold), (192, 160));
        let b = FdBands::new(1_048_576);
        assert_eq!(b.socket_ceiling - b.ops_threshold, OPS_RESERVE);
        let b = FdBands::new(80);
        assert_eq!((b.socket_ceiling, b.ops_threshold), (16, 12));
        let b = FdBands::new(10);
        assert!(b.socket_ceiling >= 1 && b.ops_threshold <= b.socket_ceiling);
    }

    #[test]
    fn open_sockets_count_until_dropped() {
        let s = OpenSockets::default();
        let a = s.open();
        let b = s.open();
        assert_eq!((a.rank, b.rank, s.get()), (1, 2, 2));
        drop(a);
        assert_eq!(s.get(), 1);
        drop(b);
        assert_eq!(s.get(), 0);
    }

    #[test]
    fn counts_this_process_descriptors() {
        let before = FdCounter::default().get(0);
        let files: Vec<_> = (0..5).map(|_| tempfile::tempfile().unwrap()).collect();
        let after = FdCounter::default().get(0);
        if std::path::Path::new("/proc/self/fd").exists() {
            // Other tests run in parallel threads; at least ours are there.
            assert!(after >= 5 && before > 0, "{before} -> {after}");
        }
        drop(files);
    }
}
