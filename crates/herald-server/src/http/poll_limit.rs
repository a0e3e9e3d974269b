//! The polling rate limit (`limits.poll_requests_per_second`,
//! `limits.poll_burst`): a token bucket per user, or per client address for
//! anonymous polls; over it a poll is answered 429 / 1005 with `Retry-After`.
//! One user's polling never spends another's budget.
//!
//! Written by hand rather than with `governor`: its keyed limiter has no
//! bound on the number of keys (and brings dashmap and quanta along), while
//! the keys here are created by outsiders — every address can mint one — so
//! the map needs a hard cap and idle pruning, which is most of the code below.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::error::ApiError;
use crate::auth::Identity;
use crate::server::PeerAddr;

/// Buckets kept at once. A full bucket is the same as none, so idle ones are
/// pruned; this bounds the map when many addresses poll at once (about
/// 100 bytes each, 10 MB at the cap).
pub(crate) const MAX_KEYS: usize = 100_000;
/// How often idle buckets are pruned, and the least time between prunes when
/// the map is at its cap (so a flood of new addresses can't make every
/// request scan the whole map).
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// Whose budget a poll spends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum PollKey {
    /// An authenticated user, over all its connections and addresses.
    User(String),
    /// An anonymous client's address; IPv6 by its /64, which one host
    /// usually holds whole.
    Addr(IpAddr),
}

impl PollKey {
    /// The key for `who` polling from `addr`.
    pub(crate) fn of(who: &Identity, addr: Option<IpAddr>) -> Option<Self> {
        match (&who.user, addr) {
            (Some(user), _) => Some(Self::User(user.clone())),
            (None, Some(IpAddr::V6(v6))) => match v6.to_ipv4_mapped() {
                Some(v4) => Some(Self::Addr(IpAddr::V4(v4))),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Some(Self::Addr(IpAddr::V6(prefix.into())))
                }
            },
            (None, Some(v4)) => Some(Self::Addr(v4)),
            (None, None) => None,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Debug)]
struct Buckets {
    map: HashMap<PollKey, Bucket>,
    last_prune: Instant,
}

/// The per-key token buckets of polling.
#[derive(Debug)]
pub(crate) struct PollLimiter {
    rate: f64,
    burst: f64,
    max_keys: usize,
    buckets: Mutex<Buckets>,
    keys: Gauge,
    refused: Counter,
}

impl PollLimiter {
    /// `rate` polls per second, bursts of `burst`, at most `max_keys` keys;
    /// `keys` and `refused` are the node's gauge and counter.
    pub(crate) fn new(
        rate: u32,
        burst: u32,
        max_keys: usize,
        keys: Gauge,
        refused: Counter,
    ) -> Self {
        Self {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            max_keys,
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                last_prune: Instant::now(),
            }),
            keys,
            refused,
        }
    }

    /// Takes one poll from `key`'s bucket, or says how long until one is
    /// there (whole seconds, at least 1, as `Retry-After` wants).
    pub(crate) fn take(&self, key: PollKey) -> Result<(), u64> {
        let now = Instant::now();
        let mut b = self.buckets.lock();
        if !b.map.contains_key(&key) {
            let due = now.duration_since(b.last_prune) >= PRUNE_EVERY;
            if due {
                self.prune(&mut b, now);
            }
            if b.map.len() >= self.max_keys {
                // Full of active keys: refusing a newcomer for a second beats
                // growing without bound; active keys keep their buckets.
                drop(b);
                self.refused.inc();
                return Err(1);
            }
        }
        let bucket = b.map.entry(key).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        let result = if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate;
            Err((wait.ceil() as u64).max(1))
        };
        self.keys.set(b.map.len() as i64);
        drop(b);
        if result.is_err() {
            self.refused.inc();
        }
        result
    }

    /// Drops the buckets that have refilled: a full bucket and no bucket
    /// admit exactly the same.
    fn prune(&self, b: &mut Buckets, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        b.map.retain(|_, bucket| {
            bucket.tokens + now.duration_since(bucket.last).as_secs_f64() * rate < burst
        });
        b.last_prune = now;
        self.keys.set(b.map.len() as i64);
    }
}

/// What a poll handler needs to spend its caller's budget: the node's
/// limiter and the client's address.
#[derive(Debug)]
pub(crate) struct PollGate {
    limiter: Option<Arc<PollLimiter>>,
    addr: Option<IpAddr>,
}

impl PollGate {
    /// Admits one poll by `who`, or answers 429 / 1005 with `Retry-After`.
    pub(crate) fn admit(&self, who: &Identity) -> Result<(), ApiError> {
        let (Some(limiter), Some(key)) = (&self.limiter, PollKey::of(who, self.addr)) else {
            return Ok(());
        };
        limiter.take(key).map_err(|secs| {
            ApiError::rate_limited(
                "too many poll requests (limits.poll_requests_per_second); retry later",
                secs,
            )
        })
    }
}

/// The address a request comes from, for per-address limits: the client
/// address the connection layer resolved (the forwarded one behind a trusted
/// proxy, see `conns::forwarded`), else the TCP peer.
pub(crate) fn client_addr(parts: &Parts) -> Option<IpAddr> {
    if let Some(super::ClientIp(ip)) = parts.extensions.get::<super::ClientIp>() {
        return Some(*ip);
    }
    parts.extensions.get::<PeerAddr>().map(|p| p.0.ip())
}

impl<S: Send + Sync> FromRequestParts<S> for PollGate {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self {
            limiter: parts.extensions.get::<Arc<PollLimiter>>().cloned(),
            addr: client_addr(parts),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: u32, burst: u32, max_keys: usize) -> PollLimiter {
        PollLimiter::new(rate, burst, max_keys, Gauge::default(), Counter::default())
    }

    fn user(u: &str) -> PollKey {
        PollKey::User(u.into())
    }

    #[test]
    fn a_burst_then_retry_after_per_key() {
        let l = limiter(1, 3, 10);
        for _ in 0..3 {
            assert_eq!(l.take(user("a")), Ok(()));
        }
        assert_eq!(l.take(user("a")), Err(1));
        // Another user has a budget of its own.
        assert_eq!(l.take(user("b")), Ok(()));
        assert_eq!(l.refused.get(), 1);
        // A slow rate gives a longer Retry-After.
        let slow = limiter(1, 1, 10);
        slow.take(user("a")).unwrap();
        let mut b = slow.buckets.lock();
        b.map.get_mut(&user("a")).unwrap().tokens = -4.0;
        drop(b);
        assert!(matches!(slow.take(user("a")), Err(5)));
    }

    #[test]
    fn the_map_is_capped_and_full_buckets_are_pruned() {
        let l = limiter(1000, 1, 2);
        l.take(user("a")).unwrap();
        l.take(user("b")).unwrap();
        // At the cap and pruned less than PRUNE_EVERY ago: a newcomer waits.
        l.buckets.lock().last_prune = Instant::now();
        assert_eq!(l.take(user("c")), Err(1));
        assert_eq!(l.keys.get(), 2);
        // Once due, refilled buckets go and the newcomer gets one.
        std::thread::sleep(Duration::from_millis(5));
        l.buckets.lock().last_prune = Instant::now() - PRUNE_EVERY;
        assert_eq!(l.take(user("c")), Ok(()));
        assert_eq!(l.keys.get(), 1);
    }

    #[test]
    fn anonymous_keys_are_addresses_and_ipv6_its_64() {
        let anon = Identity::unverified(None);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(PollKey::of(&anon, Some(a)), PollKey::of(&anon, Some(b)));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(
            PollKey::of(&anon, Some(mapped)),
            Some(PollKey::Addr("127.0.0.1".parse().unwrap()))
        );
        let named = Identity::unverified(Some("u".into()));
        assert_eq!(PollKey::of(&named, Some(a)), Some(user("u")));
        assert_eq!(PollKey::of(&anon, None), None);
    }
}
