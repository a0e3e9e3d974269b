//! The client-publish quota: one token bucket per user over all its
//! connections (`limits.client_publishes_per_second` / `client_publish_burst`),
//! so opening more sockets buys no more publishes. Anonymous connections have
//! no user to share a bucket; each gets its own, keyed by connection.
//!
//! Written by hand rather than with `governor`: the map must be bounded and
//! pruned on our terms (a full bucket is the same as no bucket, so it is
//! dropped), and a bucket is a few lines; the session's command limit is the
//! same arithmetic.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;

/// Buckets tracked at most. Only users that published within the last
/// `burst / rate` seconds hold one (older ones are full and pruned), so this
/// is reached only when that many users publish at once; past it, publishes
/// are refused (1005) rather than let the map grow.
const MAX_TRACKED: usize = 1_000_000;
/// The map is pruned when it reaches this size, then twice the size that
/// survived: amortised O(1) per publish.
const FIRST_PRUNE: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    User(Box<str>),
    Conn(u64),
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Debug)]
struct State {
    buckets: HashMap<Key, Bucket>,
    prune_at: usize,
}

/// Per-user token buckets for client publishes.
#[derive(Debug)]
pub struct PublishQuota {
    rate: f64,
    burst: f64,
    state: Mutex<State>,
}

impl PublishQuota {
    /// `rate` publishes per second, bursts of up to `burst`.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            state: Mutex::new(State {
                buckets: HashMap::new(),
                prune_at: FIRST_PRUNE,
            }),
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
    }

    /// Takes one publish for `user` (or, anonymous, connection `conn`);
    /// false when the quota is spent.
    pub fn take(&self, user: Option<&str>, conn: u64) -> bool {
        let key = match user {
            Some(u) => Key::User(u.into()),
            None => Key::Conn(conn),
        };
        let now = Instant::now();
        let mut state = self.state.lock();
        if !state.buckets.contains_key(&key) && state.buckets.len() >= state.prune_at {
            self.prune_locked(&mut state, now);
            if state.buckets.len() >= MAX_TRACKED {
                return false;
            }
        }
        let bucket = state.buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        self.refill(bucket, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets full buckets (users idle long enough to have refilled).
    pub fn prune(&self) {
        let now = Instant::now();
        self.prune_locked(&mut self.state.lock(), now);
    }

    fn prune_locked(&self, state: &mut State, now: Instant) {
        state.buckets.retain(|_, b| {
            self.refill(b, now);
            b.tokens < self.burst
        });
        state.prune_at = (state.buckets.len() * 2).clamp(FIRST_PRUNE, MAX_TRACKED);
    }

    /// Buckets tracked now.
    pub fn tracked(&self) -> usize {
        self.state.lock().buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bucket_per_user_whatever_the_connection() {
        let q = PublishQuota::new(1, 3);
        assert!(q.take(Some("u"), 1));
        assert!(q.take(Some("u"), 2));
        assert!(q.take(Some("u"), 3));
        assert!(!q.take(Some("u"), 4), "a new connection buys no more");
        assert!(q.take(Some("v"), 4), "other users are not affected");
        assert!(
            q.take(None, 5) && q.take(None, 6),
            "anonymous: per connection"
        );
    }

    #[test]
    fn full_buckets_are_pruned() {
        let q = PublishQuota::new(1_000_000, 1);
        for i in 0..5000u64 {
            assert!(q.take(Some(&format!("user{i}")), i));
        }
        assert!(q.tracked() < 5000, "pruned while growing: {}", q.tracked());
        std::thread::sleep(std::time::Duration::from_millis(2));
        q.prune();
        assert_eq!(q.tracked(), 0);
    }
}
