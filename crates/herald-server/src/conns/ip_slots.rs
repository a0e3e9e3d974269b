//! Sockets counted per client address: the table behind
//! `limits.max_connections_per_ip`, and behind the small per-address budgets
//! of sockets waiting to be judged over that cap or using the fd reserve.
//!
//! A slot is a drop guard, so a socket that closes, panics or returns early
//! never leaves a count behind.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// Counts per address; an address with no slot has no entry, so the map is
/// bounded by the number of sockets holding slots.
#[derive(Debug, Default)]
pub(crate) struct IpTable {
    counts: Mutex<HashMap<IpAddr, usize>>,
    total: AtomicUsize,
}

/// One socket's place in an [`IpTable`]; frees itself when dropped.
#[derive(Debug)]
pub(crate) struct IpSlot {
    table: Arc<IpTable>,
    key: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock();
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
        drop(counts);
        self.table.total.fetch_sub(1, Ordering::Relaxed);
    }
}

impl IpTable {
    /// A slot for `ip`, unless it already holds `limit`.
    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<IpSlot> {
        let key = key(ip);
        let mut counts = self.counts.lock();
        let n = counts.entry(key).or_insert(0);
        if *n >= limit {
            if *n == 0 {
                counts.remove(&key);
            }
            return None;
        }
        *n += 1;
        drop(counts);
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(IpSlot {
            table: self.clone(),
            key,
        })
    }

    /// Slots held, all addresses together.
    pub(crate) fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Addresses holding at least one slot.
    pub(crate) fn addresses(&self) -> usize {
        self.counts.lock().len()
    }
}

/// The address a socket is counted under. IPv4-mapped IPv6 is the IPv4
/// address (a dual-stack listener sees both forms of one client). A native
/// IPv6 client counts by its /64: one subscriber line or one venue's network
/// gets a /64 and can pick any address in it, so counting single addresses
/// would count nothing.
pub(crate) fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_per_address_up_to_the_limit_and_free_on_drop() {
        let table = Arc::new(IpTable::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = table.acquire(a, 2).unwrap();
        let second = table.acquire(a, 2).unwrap();
        assert!(table.acquire(a, 2).is_none());
        let other = table.acquire(b, 2).unwrap();
        assert_eq!((table.total(), table.addresses()), (3, 2));
        drop(first);
        let again = table.acquire(a, 2).unwrap();
        drop((second, again, other));
        assert_eq!((table.total(), table.addresses()), (0, 0));
        // A refusal at limit 0 leaves no empty entry behind.
        assert!(table.acquire(a, 0).is_none());
        assert_eq!(table.addresses(), 0);
    }

    #[test]
    fn mapped_ipv4_is_ipv4_and_ipv6_counts_by_its_64() {
        let table = Arc::new(IpTable::default());
        let _v4 = table.acquire("192.0.2.1".parse().unwrap(), 1).unwrap();
        assert!(table
            .acquire("::ffff:192.0.2.1".parse().unwrap(), 1)
            .is_none());
        let _v6 = table
            .acquire("2001:db8:1:2::1".parse().unwrap(), 1)
            .unwrap();
        assert!(table
            .acquire("2001:db8:1:2:ffff::9".parse().unwrap(), 1)
            .is_none());
        assert!(table
            .acquire("2001:db8:1:3::1".parse().unwrap(), 1)
            .is_some());
    }
}
