//! The subscribe proxy's memory of decisions: per (user, channel), for the
//! answer's `ttl_s`, at most `limits.proxy_cache_entries` of them.
//!
//! Hand-written rather than a cache crate: it is the idempotency keys'
//! pattern (a map plus the order entries were made, told apart by a
//! sequence number), which needs no new dependency, and what it must do is
//! small: bounded size, oldest first out, expiry checked on read.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;

struct Entry {
    seq: u64,
    allow: bool,
    until: Instant,
}

/// Cached allow / deny decisions.
pub(crate) struct Cache {
    map: HashMap<Arc<str>, Entry>,
    /// Keys in the order their entries were made. May hold stale items (an
    /// entry since replaced or expired, told apart by `seq`); its length is
    /// what the budget bounds, so the map is bounded too.
    order: VecDeque<(u64, Arc<str>)>,
    next_seq: u64,
    max: usize,
    gauge: Gauge,
}

impl Cache {
    pub(crate) fn new(max: usize, gauge: Gauge) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            max,
            gauge,
        }
    }

    /// The decision cached for `key` at `now`, if one is still in force.
    pub(crate) fn get(&mut self, key: &str, now: Instant) -> Option<bool> {
        let entry = self.map.get(key)?;
        if entry.until > now {
            return Some(entry.allow);
        }
        self.map.remove(key);
        self.gauge.set(self.map.len() as i64);
        None
    }

    /// Remembers `allow` for `key` during `ttl` (zero: not at all).
    pub(crate) fn insert(&mut self, key: Arc<str>, allow: bool, ttl: Duration, now: Instant) {
        if ttl.is_zero() || self.max == 0 {
            self.map.remove(&key);
            self.gauge.set(self.map.len() as i64);
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let until = now.checked_add(ttl).unwrap_or(now);
        self.map.insert(key.clone(), Entry { seq, allow, until });
        self.order.push_back((seq, key));
        // The oldest go first: past the budget, and (cheaply, from the
        // front only) anything stale or expired.
        while let Some((seq, key)) = self.order.front() {
            let live = self
                .map
                .get(key)
                .filter(|e| e.seq == *seq)
                .map(|e| e.until > now);
            let over = self.order.len() > self.max;
            match live {
                Some(true) if !over => break,
                Some(_) => {
                    self.map.remove(key);
                }
                None => {}
            }
            self.order.pop_front();
        }
        self.gauge.set(self.map.len() as i64);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn remembers_allows_and_denials_until_they_expire() {
        let mut c = Cache::new(10, Gauge::default());
        let now = Instant::now();
        c.insert("u\nvenue:1".into(), true, MIN, now);
        c.insert("u\nvenue:2".into(), false, MIN, now);
        assert_eq!(c.get("u\nvenue:1", now), Some(true));
        assert_eq!(c.get("u\nvenue:2", now), Some(false));
        assert_eq!(c.get("u\nvenue:1", now + MIN), None);
        assert_eq!(c.get("v\nvenue:1", now), None);
        c.insert("u\nvenue:3".into(), true, Duration::ZERO, now);
        assert_eq!(c.get("u\nvenue:3", now), None);
    }

    #[test]
    fn holds_at_most_its_budget_and_drops_the_oldest() {
        let gauge = Gauge::default();
        let mut c = Cache::new(3, gauge.clone());
        let now = Instant::now();
        for i in 0..100 {
            c.insert(format!("u\nc:{i}").into(), true, MIN, now);
            assert!(c.len() <= 3 && c.order.len() <= 3);
        }
        assert_eq!(gauge.get(), 3);
        assert_eq!(c.get("u\nc:99", now), Some(true));
        assert_eq!(c.get("u\nc:96", now), None);
        // Refreshing one key again and again never grows the order past
        // the budget either.
        for _ in 0..100 {
            c.insert("u\nc:1".into(), false, MIN, now);
        }
        assert!(c.order.len() <= 3);
        assert_eq!(c.get("u\nc:1", now), Some(false));
    }
}
