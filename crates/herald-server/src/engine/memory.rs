//! The memory engine: history in process memory, nothing kept across restarts
//! (a restart makes a new epoch, so clients learn their cursors are void).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::*;
use crate::ids::{random_token, unix_millis};

const SHARDS: usize = 64;

struct Kept {
    offset: u64,
    ts: u64,
    expire_at: u64,
    data: Arc<str>,
}

struct Stream {
    epoch: Arc<str>,
    /// The sweep generation it was created in (see [`stream_epoch`]).
    generation: u64,
    top: u64,
    last_ts: u64,
    kept: VecDeque<Kept>,
}

impl Stream {
    /// Drops expired messages; returns the bytes freed.
    fn drop_expired(&mut self, now: u64) -> (u64, u64) {
        let (mut n, mut bytes) = (0, 0);
        while self.kept.front().is_some_and(|m| m.expire_at <= now) {
            if let Some(m) = self.kept.pop_front() {
                n += 1;
                bytes += m.data.len() as u64;
            }
        }
        (n, bytes)
    }
}

/// History in memory, sharded by stream so unrelated publishes don't contend.
pub struct MemoryEngine {
    base_epoch: Arc<str>,
    /// The current sweep generation; new streams take its epoch.
    generation: AtomicU64,
    shards: Vec<Mutex<HashMap<Arc<str>, Stream>>>,
    hasher: RandomState,
    sink: Arc<dyn FanoutSink>,
    budget: Budget,
    channels: AtomicU64,
    streams: AtomicU64,
    history_bytes: AtomicU64,
    /// Read cursors by inbox (SPEC §11).
    reads: Mutex<HashMap<Arc<str>, ReadCursor>>,
    /// Notifications pending delivery (SPEC §11 `notification_undelivered`).
    pending: Mutex<Pending>,
}

/// Pending notifications by due time (for claims) and by inbox (for
/// delivered marks, which delete what they cover: nothing else to keep).
#[derive(Default)]
struct Pending {
    by_due: BTreeSet<(u64, Arc<str>, u64)>,
    /// Inbox → offset → (epoch, due).
    by_stream: HashMap<Arc<str>, BTreeMap<u64, EpochDue>>,
}

/// A pending notification's epoch and due time.
type EpochDue = (Arc<str>, u64);

impl Pending {
    fn len(&self) -> usize {
        self.by_due.len()
    }

    fn insert(&mut self, stream: &Arc<str>, epoch: &Arc<str>, offset: u64, due: u64) {
        self.by_due.insert((due, stream.clone(), offset));
        self.by_stream
            .entry(stream.clone())
            .or_default()
            .insert(offset, (epoch.clone(), due));
    }

    fn remove(&mut self, stream: &str, offset: u64) {
        let Some(offsets) = self.by_stream.get_mut(stream) else {
            return;
        };
        if let Some((_, due)) = offsets.remove(&offset) {
            self.by_due.remove(&(due, Arc::from(stream), offset));
        }
        if offsets.is_empty() {
            self.by_stream.remove(stream);
        }
    }
}

impl std::fmt::Debug for MemoryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryEngine")
            .field("epoch", &self.base_epoch)
            .finish_non_exhaustive()
    }
}

impl MemoryEngine {
    /// A new, empty engine with a fresh epoch.
    pub fn new(sink: Arc<dyn FanoutSink>, budget: Budget) -> Self {
        Self {
            base_epoch: random_token(8).into(),
            generation: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            sink,
            budget,
            channels: AtomicU64::new(0),
            streams: AtomicU64::new(0),
            history_bytes: AtomicU64::new(0),
            reads: Mutex::new(HashMap::new()),
            pending: Mutex::new(Pending::default()),
        }
    }

    fn shard(&self, stream: &str) -> &Mutex<HashMap<Arc<str>, Stream>> {
        &self.shards[self.hasher.hash_one(stream) as usize % SHARDS]
    }

    fn free_bytes(&self, bytes: u64) {
        self.history_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Counts a new stream, or says which budget refuses it.
    fn admit_stream(&self, stream: &str) -> Result<(), Refusal> {
        if is_channel(stream) {
            let max = self.budget.max_channels as u64;
            self.channels
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .map_err(|_| Refusal::Channels(self.budget.max_channels))?;
        }
        self.streams.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn forget_stream(&self, stream: &str) {
        if is_channel(stream) {
            self.channels.fetch_sub(1, Ordering::AcqRel);
        }
        self.streams.fetch_sub(1, Ordering::AcqRel);
    }

    /// Appends one message under its shard's lock.
    fn publish_one(&self, req: PublishRequest) -> Outcome {
        let mut shard = self.shard(&req.stream).lock();
        let created = !shard.contains_key(&req.stream);
        if created {
            self.admit_stream(&req.stream)?;
        }
        let stream = shard.entry(req.stream.clone()).or_insert_with(|| {
            let generation = self.generation.load(Ordering::Acquire);
            Stream {
                epoch: stream_epoch(&self.base_epoch, generation),
                generation,
                top: 0,
                last_ts: 0,
                kept: VecDeque::new(),
            }
        });
        let ts = next_ts(stream.last_ts);
        let (_, expired) = stream.drop_expired(ts);
        self.free_bytes(expired);
        // Bytes the size limit will trim once this message is in.
        let trimmed = (stream.kept.len() + 1).saturating_sub(req.retention.size);
        let freed: u64 = stream
            .kept
            .iter()
            .take(trimmed)
            .map(|m| m.data.len() as u64)
            .sum();
        let len = req.data.len() as u64;
        let max = self.budget.max_history_bytes;
        let fits = self
            .history_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                let after = b.saturating_sub(freed).saturating_add(len);
                (after <= max).then_some(after)
            });
        if fits.is_err() {
            if created {
                shard.remove(&req.stream);
                self.forget_stream(&req.stream);
            }
            return Err(Refusal::HistoryBytes(max));
        }
        stream.top += 1;
        stream.last_ts = ts;
        stream.kept.push_back(Kept {
            offset: stream.top,
            ts,
            expire_at: expire_at(ts, req.retention.ttl),
            data: req.data.clone(),
        });
        // Already taken off the total above.
        stream.kept.drain(..trimmed);
        let publication = Publication {
            stream: req.stream.clone(),
            epoch: stream.epoch.clone(),
            offset: stream.top,
            ts,
            data: req.data.clone(),
        };
        if let Some(after) = req.undelivered_after {
            // Before the fan-out, whose delivered mark must find it.
            self.pending.lock().insert(
                &publication.stream,
                &publication.epoch,
                publication.offset,
                expire_at(ts, after),
            );
        }
        // Delivered under the shard lock: that is what keeps fan-out in
        // offset order when two publishes to one stream race.
        self.sink.deliver(std::slice::from_ref(&publication));
        Ok(publication)
    }

    /// Sweeps one shard: drops expired messages and removes streams that are
    /// empty and unwatched. The lock is held for one pass over the shard's
    /// streams (a 64th of them); publishes to other shards go on meanwhile.
    fn sweep_shard(&self, shard: &Mutex<HashMap<Arc<str>, Stream>>, report: &mut SweepReport) {
        let now = unix_millis();
        let mut shard = shard.lock();
        let mut freed = 0;
        shard.retain(|key, stream| {
            let (n, bytes) = stream.drop_expired(now);
            report.expired += n;
            freed += bytes;
            if !stream.kept.is_empty() || self.sink.is_watched(key) {
                return true;
            }
            // Streams of the current generation may be recreated under this
            // very epoch, so move on to the next generation first. Publishes
            // to this shard wait for the lock; others create their streams in
            // the new generation from now on.
            if stream.generation >= self.generation.load(Ordering::Acquire) {
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            self.forget_stream(key);
            report.streams_removed += 1;
            false
        });
        self.free_bytes(freed);
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn publish(&self, requests: Vec<PublishRequest>) -> Result<Vec<Outcome>, EngineError> {
        Ok(requests
            .into_iter()
            .map(|req| self.publish_one(req))
            .collect())
    }

    async fn history(
        &self,
        stream: &str,
        from: HistoryFrom,
        limit: usize,
        max_bytes: usize,
    ) -> Result<HistoryPage, EngineError> {
        let mut shard = self.shard(stream).lock();
        let Some(s) = shard.get_mut(stream) else {
            return Ok(HistoryPage {
                epoch: stream_epoch(&self.base_epoch, self.generation.load(Ordering::Acquire)),
                top: 0,
                first_kept: 1,
                first_kept_ts: None,
                messages: Vec::new(),
            });
        };
        let (_, freed) = s.drop_expired(unix_millis());
        self.free_bytes(freed);
        let messages = within_bytes(
            s.kept
                .iter()
                .filter(|m| match from {
                    HistoryFrom::Oldest => true,
                    HistoryFrom::AfterOffset(o) => m.offset > o,
                    HistoryFrom::AfterTime(t) => m.ts > t,
                })
                .take(limit)
                .map(|m| StoredMessage {
                    offset: m.offset,
                    ts: m.ts,
                    data: m.data.clone(),
                }),
            max_bytes,
        );
        Ok(HistoryPage {
            epoch: s.epoch.clone(),
            top: s.top,
            first_kept: s.kept.front().map_or(s.top + 1, |m| m.offset),
            first_kept_ts: s.kept.front().map(|m| m.ts),
            messages,
        })
    }

    async fn read_cursor(&self, stream: &str) -> Result<Option<(Arc<str>, u64)>, EngineError> {
        Ok(self.reads.lock().get(stream).cloned())
    }

    async fn mark_read(
        &self,
        stream: &str,
        epoch: &str,
        offset: u64,
    ) -> Result<(Arc<str>, u64), EngineError> {
        let mut reads = self.reads.lock();
        let kept = super::later_read(reads.get(stream).cloned(), epoch, offset);
        reads.insert(stream.into(), kept.clone());
        Ok(kept)
    }

    async fn mark_delivered(
        &self,
        marks: &[(Arc<str>, Arc<str>, u64)],
        _keep: Duration,
    ) -> Result<(), EngineError> {
        let mut pending = self.pending.lock();
        for (stream, epoch, upto) in marks {
            let Some(offsets) = pending.by_stream.get(stream) else {
                continue;
            };
            let covered: Vec<u64> = offsets
                .range(..=*upto)
                .filter(|(_, (e, _))| e == epoch)
                .map(|(o, _)| *o)
                .collect();
            for offset in covered {
                pending.remove(stream, offset);
            }
        }
        Ok(())
    }

    async fn claim_undelivered(
        &self,
        now: u64,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<PendingNotification>, EngineError> {
        let mut pending = self.pending.lock();
        let due: Vec<(u64, Arc<str>, u64)> = pending
            .by_due
            .iter()
            .take_while(|(due, _, _)| *due <= now)
            .take(max)
            .cloned()
            .collect();
        let until = expire_at(now, lease);
        let mut claimed = Vec::with_capacity(due.len());
        for (_, stream, offset) in due {
            let Some((epoch, _)) = pending
                .by_stream
                .get(&stream)
                .and_then(|o| o.get(&offset))
                .cloned()
            else {
                continue;
            };
            pending.remove(&stream, offset);
            pending.insert(&stream, &epoch, offset, until);
            claimed.push(PendingNotification {
                stream,
                epoch,
                offset,
            });
        }
        Ok(claimed)
    }

    async fn finish_undelivered(&self, done: &[PendingNotification]) -> Result<(), EngineError> {
        let mut pending = self.pending.lock();
        for p in done {
            pending.remove(&p.stream, p.offset);
        }
        Ok(())
    }

    async fn ready(&self) -> bool {
        true
    }

    async fn sweep(&self) -> SweepReport {
        let mut report = SweepReport::default();
        for shard in &self.shards {
            self.sweep_shard(shard, &mut report);
            // One shard at a time, letting other tasks run in between.
            tokio::task::yield_now().await;
        }
        report
    }

    fn usage(&self) -> Usage {
        Usage {
            channels: self.channels.load(Ordering::Relaxed),
            streams: self.streams.load(Ordering::Relaxed),
            history_bytes: self.history_bytes.load(Ordering::Relaxed),
            store_bytes: 0,
            remote_subscriptions: 0,
            undelivered: self.pending.lock().len() as u64,
        }
    }

    async fn close(&self) {}
}

#[cfg(test)]
mod tests {
    use super::super::contract::*;
    use super::*;

    #[tokio::test]
    async fn memory_engine_contract() {
        let sink = Arc::new(Recorder::default());
        let engine = MemoryEngine::new(sink.clone(), Budget::UNLIMITED);
        offsets_are_gap_free_and_history_is_exact(&engine, &sink).await;
        ttl_expires_messages_but_not_offsets(&engine).await;
        sweeping_removes_expired_and_empty_unwatched_streams(&engine, &sink).await;
        read_cursors_move_forward_only(&engine).await;
        undelivered_are_claimed_once_unless_delivered(&engine).await;
    }

    #[tokio::test]
    async fn memory_engine_budgets() {
        let sink = Arc::new(Recorder::default());
        let engine = MemoryEngine::new(
            sink,
            Budget {
                max_channels: 2,
                max_history_bytes: 10,
            },
        );
        budgets_refuse_new_channels_and_history_bytes(&engine).await;
    }
}
