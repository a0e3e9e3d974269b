//! Engines store each stream's history and hand every committed publication to
//! the fan-out sink (the hub) in offset order.
//!
//! A *stream* is a channel (keyed by its name) or a user's notification inbox
//! (keyed by `#` + user id; `#` never appears in a channel name). Offsets are
//! assigned by the engine, gap-free per stream. An engine must make a
//! publication visible to [`Engine::history`] *before* handing it to the sink:
//! recovery relies on "subscribe, then read history" never missing a message.

mod embedded;
mod memory;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use embedded::EmbeddedEngine;
pub use memory::MemoryEngine;

/// How much of a stream is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Messages kept (exact).
    pub size: usize,
    /// How long each message is kept.
    pub ttl: Duration,
}

/// One message to append.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// The stream key.
    pub stream: Arc<str>,
    /// Valid JSON, as it will be delivered.
    pub data: Arc<str>,
    /// The stream's retention.
    pub retention: Retention,
    /// The publish's idempotency key; durable engines store it in the same
    /// transaction as the message, so a repeat after a restart still
    /// answers the original.
    pub key: Option<StoredKey>,
}

/// An idempotency key to store with its message.
#[derive(Debug, Clone)]
pub struct StoredKey {
    /// The key (validated by the node).
    pub key: Arc<str>,
    /// When it stops answering, Unix ms.
    pub expire_at: u64,
}

/// An idempotency key read back from a durable store.
#[derive(Debug, Clone)]
pub struct KeptKey {
    /// The stream it was published to.
    pub stream: Arc<str>,
    /// The store's epoch.
    pub epoch: Arc<str>,
    /// The key.
    pub key: Arc<str>,
    /// The offset its message got.
    pub offset: u64,
    /// Its message's publish time, Unix ms.
    pub ts: u64,
    /// When it stops answering, Unix ms.
    pub expire_at: u64,
}

/// A committed message, as handed to the fan-out sink and to the publisher.
#[derive(Debug, Clone)]
pub struct Publication {
    /// The stream key.
    pub stream: Arc<str>,
    /// The stream's epoch.
    pub epoch: Arc<str>,
    /// The message's offset.
    pub offset: u64,
    /// Publish time, Unix ms (never decreasing within a stream).
    pub ts: u64,
    /// The JSON payload.
    pub data: Arc<str>,
}

/// A message read back from history.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Its offset.
    pub offset: u64,
    /// Its publish time, Unix ms.
    pub ts: u64,
    /// The JSON payload.
    pub data: Arc<str>,
}

/// Where a history read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryFrom {
    /// From the oldest kept message.
    Oldest,
    /// Messages with an offset greater than this.
    AfterOffset(u64),
    /// Messages published after this time (Unix ms).
    AfterTime(u64),
}

/// The result of a history read: the stream's position and a page of messages.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The stream's epoch.
    pub epoch: Arc<str>,
    /// The newest offset (0 when nothing was ever published).
    pub top: u64,
    /// The offset of the oldest message still kept (`top + 1` when none is).
    pub first_kept: u64,
    /// The publish time of that message, if any is kept.
    pub first_kept_ts: Option<u64>,
    /// Messages in offset order, at most the requested limit.
    pub messages: Vec<StoredMessage>,
}

/// An engine failure; publishes are refused (HTTP 503) while it lasts.
#[derive(Debug, Clone, thiserror::Error)]
#[error("engine unavailable: {0}")]
pub struct EngineError(pub String);

/// Receives committed publications, in offset order per stream.
pub trait FanoutSink: Send + Sync {
    /// Called once per committed group; must not block.
    fn deliver(&self, publications: &[Publication]);
}

/// A history store with fan-out.
#[async_trait]
pub trait Engine: Send + Sync + std::fmt::Debug {
    /// `embedded` or `memory`.
    fn name(&self) -> &'static str;

    /// Appends the messages (in order) and returns their publications, after
    /// they are durable (for durable engines) and handed to the sink.
    async fn publish(&self, requests: Vec<PublishRequest>)
        -> Result<Vec<Publication>, EngineError>;

    /// Reads a stream's position and up to `limit` messages from `from`,
    /// stopping before the message that would take the page's data past
    /// `max_bytes` (the first message is always included, so a page is never
    /// empty while messages remain).
    async fn history(
        &self,
        stream: &str,
        from: HistoryFrom,
        limit: usize,
        max_bytes: usize,
    ) -> Result<HistoryPage, EngineError>;

    /// Whether the engine can take publishes now.
    async fn ready(&self) -> bool;

    /// Finishes pending writes and releases the store.
    async fn close(&self);
}

/// Keeps the messages of `messages` (in order) that fit in `max_bytes` of
/// data, always at least the first: the byte cap of [`Engine::history`].
pub(crate) fn within_bytes<I: Iterator<Item = StoredMessage>>(
    messages: I,
    max_bytes: usize,
) -> Vec<StoredMessage> {
    let mut total = 0usize;
    let mut out = Vec::new();
    for m in messages {
        total = total.saturating_add(m.data.len());
        if total > max_bytes && !out.is_empty() {
            break;
        }
        out.push(m);
    }
    out
}

/// The ts for the next message: now, but never before the stream's last one,
/// so that `since=<time>` polling stays consistent with offsets.
pub(crate) fn next_ts(last_ts: u64) -> u64 {
    crate::ids::unix_millis().max(last_ts)
}

/// Expiry time (Unix ms) of a message published at `ts`.
pub(crate) fn expire_at(ts: u64, ttl: Duration) -> u64 {
    ts.saturating_add(ttl.as_millis().min(u64::MAX as u128) as u64)
}

#[cfg(test)]
pub(crate) mod contract {
    //! Behaviour every engine must have; each engine's tests run these.
    use super::*;
    use parking_lot::Mutex;

    #[derive(Default)]
    pub(crate) struct Recorder(pub(crate) Mutex<Vec<(String, u64)>>);

    impl FanoutSink for Recorder {
        fn deliver(&self, publications: &[Publication]) {
            let mut seen = self.0.lock();
            seen.extend(
                publications
                    .iter()
                    .map(|p| (p.stream.to_string(), p.offset)),
            );
        }
    }

    fn req(stream: &str, data: &str, size: usize) -> PublishRequest {
        PublishRequest {
            stream: stream.into(),
            data: data.into(),
            retention: Retention {
                size,
                ttl: Duration::from_secs(3600),
            },
            key: None,
        }
    }

    pub(crate) async fn offsets_are_gap_free_and_history_is_exact(
        engine: &dyn Engine,
        sink: &Recorder,
    ) {
        let empty = engine
            .history("fresh", HistoryFrom::Oldest, 10, usize::MAX)
            .await
            .unwrap();
        assert_eq!(
            (empty.top, empty.first_kept, empty.messages.len()),
            (0, 1, 0)
        );
        let pubs = engine
            .publish(
                (1..=7)
                    .map(|i| req("a", &i.to_string(), 5))
                    .chain([req("b", "\"x\"", 5)])
                    .collect(),
            )
            .await
            .unwrap();
        let offsets: Vec<u64> = pubs.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![1, 2, 3, 4, 5, 6, 7, 1]);
        assert_eq!(
            pubs[0].epoch, empty.epoch,
            "an unpublished stream's epoch stays valid after its first publish"
        );
        let page = engine
            .history("a", HistoryFrom::Oldest, 100, usize::MAX)
            .await
            .unwrap();
        assert_eq!(page.top, 7);
        assert_eq!(
            page.first_kept, 3,
            "history_size is exact: with 5, exactly the last 5 are kept"
        );
        let kept: Vec<u64> = page.messages.iter().map(|m| m.offset).collect();
        assert_eq!(kept, vec![3, 4, 5, 6, 7]);
        assert_eq!(&*page.messages[0].data, "3");
        let after = engine
            .history("a", HistoryFrom::AfterOffset(5), 1, usize::MAX)
            .await
            .unwrap();
        assert_eq!(
            after.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            vec![6]
        );
        let by_time = engine
            .history(
                "a",
                HistoryFrom::AfterTime(page.messages[4].ts),
                10,
                usize::MAX,
            )
            .await
            .unwrap();
        assert!(by_time.messages.is_empty());
        // The byte cap: each message here is one byte of data.
        let capped = engine
            .history("a", HistoryFrom::Oldest, 100, 2)
            .await
            .unwrap();
        assert_eq!(
            capped.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            vec![3, 4]
        );
        let one = engine
            .history("a", HistoryFrom::Oldest, 100, 0)
            .await
            .unwrap();
        assert_eq!(one.messages.len(), 1, "a page always holds one message");
        let delivered = sink.0.lock().clone();
        assert_eq!(delivered.len(), 8);
        assert_eq!(delivered[6], ("a".to_string(), 7));
    }

    pub(crate) async fn ttl_expires_messages_but_not_offsets(engine: &dyn Engine) {
        let r = PublishRequest {
            stream: "t".into(),
            data: "1".into(),
            retention: Retention {
                size: 10,
                ttl: Duration::from_millis(1),
            },
            key: None,
        };
        engine.publish(vec![r.clone(), r]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let page = engine
            .history("t", HistoryFrom::Oldest, 10, usize::MAX)
            .await
            .unwrap();
        assert_eq!((page.top, page.first_kept, page.messages.len()), (2, 3, 0));
    }
}
