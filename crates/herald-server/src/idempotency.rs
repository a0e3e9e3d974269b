//! Idempotency keys for publishes and notifies (SPEC §5): within
//! `limits.idempotency_window`, a publish that repeats a key answers the
//! original offset and cursor and stores nothing new.
//!
//! A key is scoped to its stream (channel or user inbox): the same key sent
//! to two channels publishes to each once. Each key is either *in flight*
//! (its publish was handed to the engine and has not answered) or *done*
//! (its receipt is kept until the window passes). A repeat that arrives while
//! the original is in flight waits for it and answers the same receipt: that
//! is what makes "a 503 whose outcome is unknown, retried with the same key"
//! publish exactly once while the process lives. A failed publish releases
//! its key, so a retry publishes afresh.
//!
//! Bounded: at most `limits.max_idempotency_keys` keys are remembered (the
//! oldest is forgotten first), each at most [`MAX_KEY_BYTES`] plus a stream
//! name and a receipt (the payload itself is never kept).
//!
//! Durable engines store each key in its message's transaction; a node
//! restarted on the same store [`IdempotencyKeys::restore`]s the keys still
//! in their window.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_protocol::CommandError;
use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use crate::engine::Publication;

/// The longest key accepted.
pub const MAX_KEY_BYTES: usize = 200;

/// Checks a key: 1 to [`MAX_KEY_BYTES`] bytes of printable ASCII without
/// spaces (it travels in a header and in logs).
pub fn validate_key(key: &str) -> Result<(), CommandError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CommandError::bad_request(format!(
            "an idempotency key must be 1 to {MAX_KEY_BYTES} printable ASCII characters without spaces"
        )));
    }
    Ok(())
}

/// What a publish answers: where its message landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The stream key (a channel, or `#` + user id).
    pub stream: Arc<str>,
    /// The stream's epoch.
    pub epoch: Arc<str>,
    /// The message's offset.
    pub offset: u64,
    /// Its publish time, Unix ms.
    pub ts: u64,
}

impl From<&Publication> for Receipt {
    fn from(p: &Publication) -> Self {
        Self {
            stream: p.stream.clone(),
            epoch: p.epoch.clone(),
            offset: p.offset,
            ts: p.ts,
        }
    }
}

type Slot = (Arc<str>, Box<str>);

enum State {
    InFlight(watch::Receiver<Option<Receipt>>),
    Done { receipt: Receipt, at: Instant },
}

struct Entry {
    /// Tells this entry from a later one under the same slot.
    seq: u64,
    state: State,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Slot, Entry>,
    /// Slots in the order their entries were made. May hold stale items (an
    /// entry since removed or replaced, told apart by `seq`); its length is
    /// what the key budget bounds, so the map is bounded too.
    order: VecDeque<(u64, Slot)>,
    next_seq: u64,
}

/// The outcome of presenting a key.
#[derive(Debug)]
pub enum Claim {
    /// The key was used within the window: answer this.
    Done(Receipt),
    /// The original publish is in flight: wait with [`wait`], then answer
    /// its receipt (or, if it failed, present the key again).
    Wait(watch::Receiver<Option<Receipt>>),
    /// The key is new: publish, then [`Owner::complete`]. Dropping the owner
    /// without completing (the publish failed) releases the key.
    Owner(Owner),
}

/// Remembered idempotency keys.
pub struct IdempotencyKeys {
    inner: Mutex<Inner>,
    window: Duration,
    max_keys: usize,
    gauge: Gauge,
}

impl std::fmt::Debug for IdempotencyKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyKeys")
            .field("window", &self.window)
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl IdempotencyKeys {
    /// Remembers up to `max_keys` keys for `window` each; `gauge` follows
    /// how many are held.
    pub fn new(window: Duration, max_keys: usize, gauge: Gauge) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            window,
            max_keys: max_keys.max(1),
            gauge,
        }
    }

    /// Presents `key` for a publish to `stream` (the key must be valid).
    pub fn claim(self: &Arc<Self>, stream: &Arc<str>, key: &str) -> Claim {
        let now = Instant::now();
        let slot: Slot = (stream.clone(), key.into());
        let mut inner = self.inner.lock();
        if let Some(entry) = inner.map.get(&slot) {
            match &entry.state {
                State::InFlight(rx) => return Claim::Wait(rx.clone()),
                State::Done { receipt, at } if now.duration_since(*at) < self.window => {
                    return Claim::Done(receipt.clone())
                }
                State::Done { .. } => {}
            }
        }
        self.purge(&mut inner, now);
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let (tx, rx) = watch::channel(None);
        inner.map.insert(
            slot.clone(),
            Entry {
                seq,
                state: State::InFlight(rx),
            },
        );
        inner.order.push_back((seq, slot.clone()));
        self.gauge.set(inner.map.len() as i64);
        Claim::Owner(Owner {
            keys: self.clone(),
            slot,
            seq,
            tx,
            completed: false,
        })
    }

    /// Remembers a key a durable store kept across a restart, as done with
    /// `remaining` of its window left.
    pub fn restore(&self, stream: Arc<str>, key: &str, receipt: Receipt, remaining: Duration) {
        let now = Instant::now();
        let age = self.window.saturating_sub(remaining);
        // A monotonic clock younger than `age` (a freshly booted host) can't
        // go back that far: keeping the key a little longer is the safe side.
        let at = now.checked_sub(age).unwrap_or(now);
        let mut inner = self.inner.lock();
        self.purge(&mut inner, now);
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let slot: Slot = (stream, key.into());
        inner.map.insert(
            slot.clone(),
            Entry {
                seq,
                state: State::Done { receipt, at },
            },
        );
        inner.order.push_back((seq, slot));
        self.gauge.set(inner.map.len() as i64);
    }

    /// The window keys are remembered for.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops stale and expired items from the front, and the oldest while
    /// the budget is full (even one in flight: its waiters still get their
    /// answer, only a later repeat would not), so one more fits.
    fn purge(&self, inner: &mut Inner, now: Instant) {
        while let Some((seq, slot)) = inner.order.front() {
            let live = inner.map.get(slot).filter(|e| e.seq == *seq);
            let drop_it = match live {
                None => true,
                Some(e) => {
                    inner.order.len() >= self.max_keys
                        || matches!(e.state, State::Done { at, .. } if now.duration_since(at) >= self.window)
                }
            };
            if !drop_it {
                break;
            }
            let (seq, slot) = inner.order.pop_front().expect("front exists");
            if let MapEntry::Occupied(e) = inner.map.entry(slot) {
                if e.get().seq == seq {
                    e.remove();
                }
            }
        }
    }
}

/// Waits for an in-flight publish: its receipt, or `None` if it failed.
pub async fn wait(mut rx: watch::Receiver<Option<Receipt>>) -> Option<Receipt> {
    rx.wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|r| r.clone())
}

/// The right (and duty) to publish under a new key.
pub struct Owner {
    keys: Arc<IdempotencyKeys>,
    slot: Slot,
    seq: u64,
    tx: watch::Sender<Option<Receipt>>,
    completed: bool,
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owner")
            .field("stream", &self.slot.0)
            .field("key", &self.slot.1)
            .finish_non_exhaustive()
    }
}

impl Owner {
    /// Records the publish's receipt and hands it to every waiter.
    pub fn complete(mut self, receipt: Receipt) {
        self.completed = true;
        {
            let mut inner = self.keys.inner.lock();
            if let Some(entry) = inner.map.get_mut(&self.slot) {
                if entry.seq == self.seq {
                    entry.state = State::Done {
                        receipt: receipt.clone(),
                        at: Instant::now(),
                    };
                }
            }
        }
        self.tx.send_replace(Some(receipt));
    }
}

impl Drop for Owner {
    /// A publish that never completed releases its key; the waiters see the
    /// sender go and present the key again.
    fn drop(&mut self) {
        if self.completed {
            return;
        }
        let mut inner = self.keys.inner.lock();
        if let MapEntry::Occupied(e) = inner.map.entry(self.slot.clone()) {
            if e.get().seq == self.seq {
                e.remove();
            }
        }
        self.keys.gauge.set(inner.map.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(window: Duration, max: usize) -> Arc<IdempotencyKeys> {
        Arc::new(IdempotencyKeys::new(window, max, Gauge::default()))
    }

    fn receipt(offset: u64) -> Receipt {
        Receipt {
            stream: "chat:1".into(),
            epoch: "e".into(),
            offset,
            ts: 1,
        }
    }

    fn owner(c: Claim) -> Owner {
        match c {
            Claim::Owner(o) => o,
            _ => panic!("expected to own the key"),
        }
    }

    #[test]
    fn keys_are_validated() {
        assert!(validate_key("abc-123_XYZ:=/+").is_ok());
        assert!(validate_key(&"k".repeat(200)).is_ok());
        for bad in ["", "a b", "tab\t", "é", &"k".repeat(201)] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_repeat_waits_for_the_original_and_gets_its_receipt() {
        let k = keys(Duration::from_secs(60), 10);
        let stream: Arc<str> = "chat:1".into();
        let o = owner(k.claim(&stream, "k1"));
        let Claim::Wait(rx) = k.claim(&stream, "k1") else {
            panic!("a repeat in flight waits")
        };
        let waiter = tokio::spawn(wait(rx));
        o.complete(receipt(7));
        assert_eq!(waiter.await.unwrap(), Some(receipt(7)));
        assert!(matches!(k.claim(&stream, "k1"), Claim::Done(r) if r.offset == 7));
        // Another stream, or another key, is another publish.
        let other: Arc<str> = "chat:2".into();
        assert!(matches!(k.claim(&other, "k1"), Claim::Owner(_)));
        assert!(matches!(k.claim(&stream, "k2"), Claim::Owner(_)));
    }

    #[tokio::test]
    async fn a_failed_publish_releases_its_key() {
        let k = keys(Duration::from_secs(60), 10);
        let stream: Arc<str> = "chat:1".into();
        let o = owner(k.claim(&stream, "k1"));
        let Claim::Wait(rx) = k.claim(&stream, "k1") else {
            panic!("a repeat in flight waits")
        };
        drop(o);
        assert_eq!(wait(rx).await, None);
        assert!(k.is_empty());
        assert!(matches!(k.claim(&stream, "k1"), Claim::Owner(_)));
    }

    #[test]
    fn restored_keys_answer_for_what_is_left_of_their_window() {
        let k = keys(Duration::from_secs(60), 10);
        let stream: Arc<str> = "chat:1".into();
        k.restore(stream.clone(), "kept", receipt(3), Duration::from_secs(30));
        k.restore(stream.clone(), "gone", receipt(4), Duration::ZERO);
        assert!(matches!(k.claim(&stream, "kept"), Claim::Done(r) if r.offset == 3));
        assert!(matches!(k.claim(&stream, "gone"), Claim::Owner(_)));
    }

    #[test]
    fn keys_expire_after_the_window_and_the_oldest_go_first() {
        let k = keys(Duration::from_millis(300), 3);
        let stream: Arc<str> = "chat:1".into();
        for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
            owner(k.claim(&stream, key)).complete(receipt(i as u64 + 1));
        }
        assert_eq!(k.len(), 3);
        // A fourth key pushes out the oldest.
        owner(k.claim(&stream, "d")).complete(receipt(4));
        assert_eq!(k.len(), 3);
        assert!(
            matches!(k.claim(&stream, "a"), Claim::Owner(_)),
            "a was forgotten"
        );
        assert!(matches!(k.claim(&stream, "d"), Claim::Done(_)));
        std::thread::sleep(Duration::from_millis(350));
        assert!(
            matches!(k.claim(&stream, "d"), Claim::Owner(_)),
            "d expired"
        );
        assert!(k.len() <= 3);
    }
}
