//! The memory engine: history in process memory, nothing kept across restarts
//! (a restart makes a new epoch, so clients learn their cursors are void).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
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

#[derive(Default)]
struct Stream {
    top: u64,
    last_ts: u64,
    kept: VecDeque<Kept>,
}

impl Stream {
    fn drop_expired(&mut self, now: u64) {
        while self.kept.front().is_some_and(|m| m.expire_at <= now) {
            self.kept.pop_front();
        }
    }
}

/// History in memory, sharded by stream so unrelated publishes don't contend.
pub struct MemoryEngine {
    epoch: Arc<str>,
    shards: Vec<Mutex<HashMap<Arc<str>, Stream>>>,
    hasher: RandomState,
    sink: Arc<dyn FanoutSink>,
}

impl std::fmt::Debug for MemoryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryEngine")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl MemoryEngine {
    /// A new, empty engine with a fresh epoch.
    pub fn new(sink: Arc<dyn FanoutSink>) -> Self {
        Self {
            epoch: random_token(8).into(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            sink,
        }
    }

    fn shard(&self, stream: &str) -> &Mutex<HashMap<Arc<str>, Stream>> {
        &self.shards[self.hasher.hash_one(stream) as usize % SHARDS]
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn publish(
        &self,
        requests: Vec<PublishRequest>,
    ) -> Result<Vec<Publication>, EngineError> {
        let mut out = Vec::with_capacity(requests.len());
        for req in requests {
            let mut shard = self.shard(&req.stream).lock();
            let stream = shard.entry(req.stream.clone()).or_default();
            let ts = next_ts(stream.last_ts);
            stream.top += 1;
            stream.last_ts = ts;
            stream.kept.push_back(Kept {
                offset: stream.top,
                ts,
                expire_at: expire_at(ts, req.retention.ttl),
                data: req.data.clone(),
            });
            while stream.kept.len() > req.retention.size {
                stream.kept.pop_front();
            }
            stream.drop_expired(ts);
            let publication = Publication {
                stream: req.stream,
                epoch: self.epoch.clone(),
                offset: stream.top,
                ts,
                data: req.data,
            };
            // Delivered under the shard lock: that is what keeps fan-out in
            // offset order when two publishes to one stream race.
            self.sink.deliver(std::slice::from_ref(&publication));
            drop(shard);
            out.push(publication);
        }
        Ok(out)
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
                epoch: self.epoch.clone(),
                top: 0,
                first_kept: 1,
                first_kept_ts: None,
                messages: Vec::new(),
            });
        };
        s.drop_expired(unix_millis());
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
            epoch: self.epoch.clone(),
            top: s.top,
            first_kept: s.kept.front().map_or(s.top + 1, |m| m.offset),
            first_kept_ts: s.kept.front().map(|m| m.ts),
            messages,
        })
    }

    async fn ready(&self) -> bool {
        true
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
        let engine = MemoryEngine::new(sink.clone());
        offsets_are_gap_free_and_history_is_exact(&engine, &sink).await;
        ttl_expires_messages_but_not_offsets(&engine).await;
    }
}
