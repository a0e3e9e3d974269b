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
mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use embedded::EmbeddedEngine;
pub use memory::MemoryEngine;
pub use redis::{RedisEngine, RedisTarget};

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
    /// For a notification the `notification_undelivered` hook watches: how
    /// long after its publish time it is due unless delivered. The engine
    /// records it as pending with the message (see
    /// [`Engine::claim_undelivered`]).
    pub undelivered_after: Option<Duration>,
}

/// A notification recorded as pending delivery (SPEC §11
/// `notification_undelivered`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingNotification {
    /// The inbox.
    pub stream: Arc<str>,
    /// The inbox's epoch when it was stored.
    pub epoch: Arc<str>,
    /// Its offset.
    pub offset: u64,
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

/// What an engine keeps at most, all streams together. Checked before a
/// message is stored; expired and trimmed messages, and removed streams, free
/// budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Channels kept at once (inboxes are not counted: only API-key holders
    /// create them, and their bytes count against `max_history_bytes`).
    pub max_channels: usize,
    /// Bytes of message data kept in history and inboxes.
    pub max_history_bytes: u64,
}

impl Budget {
    /// No limits (tests and embedding applications that bound input themselves).
    pub const UNLIMITED: Self = Self {
        max_channels: usize::MAX,
        max_history_bytes: u64::MAX,
    };
}

/// Why an engine refused one message; nothing was stored for it, and the
/// other messages of the same call are unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The message would create a channel past [`Budget::max_channels`].
    #[error("too many channels: this server keeps at most {0} (limits.max_channels); publish to an existing channel or try later")]
    Channels(usize),
    /// The message would take kept data past [`Budget::max_history_bytes`].
    #[error("message history is full: this server keeps at most {0} bytes of messages (limits.max_history_bytes); try later")]
    HistoryBytes(u64),
}

/// The outcome of one message of a publish call.
pub type Outcome = Result<Publication, Refusal>;

/// What an engine keeps right now, for the gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Channels (streams that are not inboxes).
    pub channels: u64,
    /// Channels and inboxes.
    pub streams: u64,
    /// Bytes of message data kept (expired messages count until swept).
    pub history_bytes: u64,
    /// Bytes of the store's files on disk (0 for the memory engine).
    pub store_bytes: u64,
    /// Streams this node subscribes to on another server (Redis pub/sub
    /// channels); 0 for in-process engines.
    pub remote_subscriptions: u64,
    /// Notifications pending delivery (see [`Engine::claim_undelivered`]);
    /// on the redis engine, cluster-wide as of this node's last claim.
    pub undelivered: u64,
}

/// What one sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Expired messages deleted.
    pub expired: u64,
    /// Empty, unwatched streams removed.
    pub streams_removed: u64,
}

/// Receives committed publications, in offset order per stream.
pub trait FanoutSink: Send + Sync {
    /// Called once per committed group; must not block.
    fn deliver(&self, publications: &[Publication]);

    /// Whether anyone on this node listens to `stream` (a subscriber or a
    /// long poll). A watched stream is never removed by a sweep: a listener
    /// remembers the last offset it sent, and a stream that restarted at 1
    /// would look like old news to it.
    fn is_watched(&self, _stream: &str) -> bool {
        false
    }

    /// `stream` was removed and restarts at offset 1 under a new epoch; any
    /// subscriber that attached while it was being removed must resume.
    fn stream_removed(&self, _stream: &str) {}

    /// A `join` or `leave` frame for `stream`'s subscribers, except
    /// connection `except` (the client it is about): not stored, no offset.
    fn deliver_event(&self, _stream: &str, _except: u64, _frame: String) {}
}

/// Who is in a channel: entries (at most the cap asked for) and exact counts.
#[derive(Debug, Clone, Default)]
pub struct PresenceSnapshot {
    /// Entries' JSON objects, `{"client","user","info"}`.
    pub clients: Vec<Arc<str>>,
    /// Distinct users among the entries (anonymous clients not counted).
    pub users: u64,
    /// Entries in all.
    pub total: u64,
}

/// One channel's entries of this node, for [`PresenceStore::refresh`].
#[derive(Debug, Clone)]
pub struct RefreshChannel {
    /// The channel.
    pub channel: Arc<str>,
    /// Whether its namespace pushes `leave` (for entries found expired).
    pub join_leave: bool,
    /// This node's clients in it.
    pub clients: Vec<Arc<str>>,
}

/// Presence kept for a whole cluster (the redis engine). Each node's
/// entries carry an expiry that the node renews ([`PresenceStore::refresh`]);
/// readers skip expired ones, so a killed node's entries vanish by themselves.
#[async_trait]
pub trait PresenceStore: Send + Sync {
    /// Adds `entry` (of local connection `conn`) to `channel`, and sends
    /// `event` (a `join` frame) to the channel's subscribers on every node.
    async fn join(
        &self,
        channel: &str,
        entry: &crate::presence::Entry,
        conn: u64,
        event: Option<&str>,
        ttl: Duration,
    ) -> Result<(), EngineError>;

    /// Removes `client` (local connection `conn`) from `channel`, and sends
    /// `event` (a `leave` frame) if it was there.
    async fn leave(
        &self,
        channel: &str,
        client: &str,
        conn: u64,
        event: Option<&str>,
    ) -> Result<(), EngineError>;

    /// The live entries of `channel`, at most `cap` listed.
    async fn read(&self, channel: &str, cap: usize) -> Result<PresenceSnapshot, EngineError>;

    /// Renews this node's entries and users' sessions (batched), and
    /// removes expired entries of the same channels (sending `leave` where
    /// the namespace asks for it).
    async fn refresh(
        &self,
        channels: &[RefreshChannel],
        users: &[(String, Vec<String>)],
        ttl: Duration,
    ) -> Result<(), EngineError>;

    /// Records session `client` of `user`.
    async fn user_online(&self, user: &str, client: &str, ttl: Duration)
        -> Result<(), EngineError>;

    /// Forgets session `client` of `user`.
    async fn user_offline(&self, user: &str, client: &str) -> Result<(), EngineError>;

    /// Live sessions of `user`.
    async fn user_connections(&self, user: &str) -> Result<u64, EngineError>;
}

/// Told by the hub when a stream gains its first local listener (a
/// subscriber or a long poll) and when it loses its last, so an engine that
/// fans out through another server (Redis) listens to exactly the streams
/// this node needs. Called under the hub's lock for that stream, so calls
/// for one stream arrive in order; must not block.
pub trait StreamWatcher: Send + Sync {
    /// Someone on this node now listens to `stream`.
    fn watch(&self, stream: &Arc<str>);
    /// Nobody on this node listens to `stream` any more.
    fn unwatch(&self, stream: &str);
}

/// The epoch of streams created in sweep generation `generation`: the store's
/// epoch, then `g` and the generation (generation 0 is the store's epoch
/// itself, so cursors from before generations existed stay valid). A sweep
/// that removes streams moves to the next generation first, so a stream that
/// comes back never reuses the epoch of the one removed: an old cursor then
/// gets `recovered: false`, never offsets 1, 2, … that it would take as
/// already seen. At most 8 + 1 + 20 alphanumerics, within a cursor's 64.
pub(crate) fn stream_epoch(base: &str, generation: u64) -> Arc<str> {
    if generation == 0 {
        base.into()
    } else {
        format!("{base}g{generation}").into()
    }
}

/// A stored read cursor: the inbox's epoch and the newest offset read.
pub type ReadCursor = (Arc<str>, u64);

/// The read cursor to keep when `(epoch, offset)` is marked read over
/// `current`: within one epoch it never moves backwards.
pub(crate) fn later_read(
    current: Option<(Arc<str>, u64)>,
    epoch: &str,
    offset: u64,
) -> (Arc<str>, u64) {
    match current {
        Some((e, o)) if &*e == epoch && o >= offset => (e, o),
        _ => (epoch.into(), offset),
    }
}

/// Whether `stream` is a channel (not an inbox) for [`Budget::max_channels`].
pub(crate) fn is_channel(stream: &str) -> bool {
    !stream.starts_with(crate::hub::INBOX_PREFIX)
}

/// A history store with fan-out.
#[async_trait]
pub trait Engine: Send + Sync + std::fmt::Debug {
    /// `embedded`, `memory` or `redis`.
    fn name(&self) -> &'static str;

    /// Appends the messages (in order) and returns one outcome per request:
    /// its publication, after it is durable (for durable engines) and handed
    /// to the sink, or the budget that refused it. The redis engine hands it
    /// to the sinks of every node through Redis pub/sub, so its own sink may
    /// get it a moment after this returns (the history has it already).
    async fn publish(&self, requests: Vec<PublishRequest>) -> Result<Vec<Outcome>, EngineError>;

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

    /// Resolves once publications to `stream` reach this node's sink (for
    /// a stream this node watches), so that a history read after it cannot
    /// miss a message that the live path would not bring either. In-process
    /// engines always do; the redis engine waits for its subscription.
    async fn listening(&self, _stream: &str) -> Result<(), EngineError> {
        Ok(())
    }

    /// The read cursor of inbox `stream` (SPEC §11): `(epoch, offset)`, or
    /// `None` if its user never marked anything read. One per inbox.
    async fn read_cursor(&self, stream: &str) -> Result<Option<(Arc<str>, u64)>, EngineError>;

    /// Stores `(epoch, offset)` as inbox `stream`'s read cursor unless the
    /// stored one is in the same epoch and not before it (a read cursor
    /// never moves backwards within an epoch); returns the cursor kept.
    async fn mark_read(
        &self,
        stream: &str,
        epoch: &str,
        offset: u64,
    ) -> Result<(Arc<str>, u64), EngineError>;

    /// Records that inbox `stream`s were delivered (to a connection or a
    /// poll) up to `(epoch, offset)` each: pending notifications at or
    /// below are never claimed. A mark never moves backwards within an
    /// epoch. Engines that keep marks apart from the pending entries keep
    /// each at least `keep`.
    async fn mark_delivered(
        &self,
        marks: &[(Arc<str>, Arc<str>, u64)],
        keep: Duration,
    ) -> Result<(), EngineError>;

    /// Takes up to `max` pending notifications that are due at `now` (Unix
    /// ms) and not delivered, atomically across the nodes sharing the
    /// engine: each is leased to the caller until `now + lease` (then due
    /// again, in case the caller died before [`Engine::finish_undelivered`]).
    async fn claim_undelivered(
        &self,
        now: u64,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<PendingNotification>, EngineError>;

    /// Pending notifications now ([`Usage::undelivered`]), cheaply: asked
    /// before every watched notification is stored.
    fn undelivered_pending(&self) -> u64 {
        self.usage().undelivered
    }

    /// Forgets claimed notifications (their hook fired or was skipped).
    async fn finish_undelivered(&self, done: &[PendingNotification]) -> Result<(), EngineError>;

    /// Whether the engine can take publishes now.
    async fn ready(&self) -> bool;

    /// Deletes expired messages and removes streams that are empty and
    /// unwatched (see [`FanoutSink::is_watched`]), in small slices so that
    /// publishes never wait long behind it; returns when done.
    async fn sweep(&self) -> SweepReport;

    /// What the engine keeps now.
    fn usage(&self) -> Usage;

    /// Tells the other nodes sharing this engine that this one is alive, and
    /// how busy it is. Called every [`ANNOUNCE_EVERY`]; single-node engines
    /// have no one to tell.
    async fn announce(&self, _node: &NodeReport) -> Result<(), EngineError> {
        Ok(())
    }

    /// The nodes alive on this engine (announced within [`NODE_ALIVE_FOR`]),
    /// this one included; `None` for single-node engines.
    async fn nodes(&self) -> Result<Option<Vec<NodeReport>>, EngineError> {
        Ok(None)
    }

    /// Cluster-wide presence; `None` for single-node engines, whose
    /// presence the node keeps in memory.
    fn presence(&self) -> Option<&dyn PresenceStore> {
        None
    }

    /// Cluster-wide occupancy for node `node`; `None` for single-node
    /// engines, whose node is the cluster.
    fn occupancy(
        &self,
        _node: &str,
    ) -> Option<std::sync::Arc<dyn crate::occupancy::OccupancyStore>> {
        None
    }

    /// Finishes pending writes and releases the store.
    async fn close(&self);
}

/// How often a node announces itself to the others ([`Engine::announce`]).
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);
/// How long a node counts as alive after its last announcement: a node that
/// was killed leaves the cluster view this long after its last word.
pub const NODE_ALIVE_FOR: Duration = Duration::from_secs(10);

/// One node as the cluster sees it (`GET /api/websocket`'s `cluster.nodes`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeReport {
    /// The node's id.
    pub node: String,
    /// Open WebSocket sessions on it.
    pub connections: u64,
    /// Users with a live connection on it.
    pub users: u64,
    /// Channel subscriptions on it.
    pub subscriptions: u64,
    /// Seconds since it started.
    pub uptime_s: u64,
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
    pub(crate) struct Recorder(
        pub(crate) Mutex<Vec<(String, u64)>>,
        /// Streams that count as watched.
        pub(crate) Mutex<Vec<String>>,
    );

    impl FanoutSink for Recorder {
        fn deliver(&self, publications: &[Publication]) {
            let mut seen = self.0.lock();
            seen.extend(
                publications
                    .iter()
                    .map(|p| (p.stream.to_string(), p.offset)),
            );
        }

        fn is_watched(&self, stream: &str) -> bool {
            self.1.lock().iter().any(|s| s == stream)
        }
    }

    fn ok(outcomes: Vec<Outcome>) -> Vec<Publication> {
        outcomes.into_iter().map(|o| o.unwrap()).collect()
    }

    fn short(stream: &str) -> PublishRequest {
        PublishRequest {
            stream: stream.into(),
            data: "1".into(),
            retention: Retention {
                size: 10,
                ttl: Duration::from_millis(1),
            },
            key: None,
            undelivered_after: None,
        }
    }

    /// A sweep deletes expired messages and removes empty streams nobody
    /// watches; a removed stream comes back under a new epoch (§2: an old
    /// cursor must get `recovered: false`, never offsets it takes as seen),
    /// and an unpublished stream's epoch stays valid after its first publish.
    pub(crate) async fn sweeping_removes_expired_and_empty_unwatched_streams(
        engine: &dyn Engine,
        sink: &Recorder,
    ) {
        sink.1.lock().push("watched".into());
        let first = ok(engine
            .publish(vec![
                short("gone"),
                short("gone"),
                short("watched"),
                short("#inbox"),
                req("kept", "22", 5),
            ])
            .await
            .unwrap());
        let old_epoch = first[0].epoch.clone();
        let before = engine.usage();
        assert!(before.history_bytes >= 6, "{before:?}");
        // Wall time must pass for the messages to expire.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let report = engine.sweep().await;
        // The memory engine may already have dropped the first "gone" at the
        // second publish if a millisecond passed in between.
        assert!(report.expired >= 3, "{report:?}");
        assert!(report.streams_removed >= 2, "gone and #inbox: {report:?}");
        let after = engine.usage();
        assert_eq!(after.streams, before.streams - report.streams_removed);
        assert_eq!(after.history_bytes, before.history_bytes - report.expired);
        let watched = engine
            .history("watched", HistoryFrom::Oldest, 10, usize::MAX)
            .await
            .unwrap();
        assert_eq!(watched.top, 1, "a watched stream is never removed");
        assert_eq!(watched.epoch, old_epoch);
        let kept = engine
            .history("kept", HistoryFrom::Oldest, 10, usize::MAX)
            .await
            .unwrap();
        assert_eq!((kept.top, kept.messages.len()), (1, 1));
        let gone = engine
            .history("gone", HistoryFrom::Oldest, 10, usize::MAX)
            .await
            .unwrap();
        assert_eq!(gone.top, 0, "the removed stream starts over");
        assert_ne!(
            gone.epoch, old_epoch,
            "a removed stream never reuses its epoch"
        );
        assert!(gone.epoch.len() <= 64 && gone.epoch.bytes().all(|b| b.is_ascii_alphanumeric()));
        let again = ok(engine.publish(vec![short("gone")]).await.unwrap());
        assert_eq!(again[0].offset, 1);
        assert_eq!(
            again[0].epoch, gone.epoch,
            "the epoch read before the first publish stays valid"
        );
        // A stream created after the sweep lives in the new generation too.
        let fresh = ok(engine.publish(vec![req("fresh", "1", 5)]).await.unwrap());
        assert_eq!(fresh[0].epoch, gone.epoch);
        sink.1.lock().clear();
    }

    /// Budgets refuse exactly the messages past them, each on its own; trimmed
    /// messages free budget; inboxes are not channels.
    pub(crate) async fn budgets_refuse_new_channels_and_history_bytes(engine: &dyn Engine) {
        // Made with Budget { max_channels: 2, max_history_bytes: 10 }.
        let out = engine
            .publish(vec![
                req("a", "1234", 1),
                req("b", "1234", 5),
                req("c", "1", 5),
                req("#user", "1", 5),
                req("b", "12", 5),
            ])
            .await
            .unwrap();
        assert_eq!(out[0].as_ref().unwrap().offset, 1);
        assert_eq!(out[1].as_ref().unwrap().offset, 1);
        assert_eq!(out[2].as_ref().unwrap_err(), &Refusal::Channels(2));
        assert_eq!(
            out[3].as_ref().unwrap().offset,
            1,
            "inboxes are not channels"
        );
        assert_eq!(
            out[4].as_ref().unwrap_err(),
            &Refusal::HistoryBytes(10),
            "4 + 4 + 1 + 2 > 10"
        );
        let usage = engine.usage();
        assert_eq!(
            (usage.channels, usage.streams, usage.history_bytes),
            (2, 3, 9)
        );
        // "a" keeps one message: a new one of 5 bytes replaces the 4 kept.
        let out = engine
            .publish(vec![req("a", "12345", 1), req("b", "1", 5)])
            .await
            .unwrap();
        assert_eq!(out[0].as_ref().unwrap().offset, 2, "trimming frees budget");
        assert_eq!(out[1].as_ref().unwrap_err(), &Refusal::HistoryBytes(10));
        assert_eq!(engine.usage().history_bytes, 10);
        let page = engine
            .history("c", HistoryFrom::Oldest, 10, usize::MAX)
            .await
            .unwrap();
        assert_eq!(page.top, 0, "a refused channel was not created");
        let page = engine
            .history("b", HistoryFrom::Oldest, 10, usize::MAX)
            .await
            .unwrap();
        assert_eq!(page.top, 1, "a refused message took no offset");
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
            undelivered_after: None,
        }
    }

    pub(crate) async fn offsets_are_gap_free_and_history_is_exact(
        engine: &dyn Engine,
        sink: &Recorder,
    ) {
        // "a" is the stream published to below: its epoch read before the
        // first publish must be the one that publish gets (engines whose
        // epochs are per stream would pass a check against another stream
        // only by chance).
        let empty = engine
            .history("a", HistoryFrom::Oldest, 10, usize::MAX)
            .await
            .unwrap();
        assert_eq!(
            (empty.top, empty.first_kept, empty.messages.len()),
            (0, 1, 0)
        );
        let pubs = ok(engine
            .publish(
                (1..=7)
                    .map(|i| req("a", &i.to_string(), 5))
                    .chain([req("b", "\"x\"", 5)])
                    .collect(),
            )
            .await
            .unwrap());
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
        // Engines that fan out through another server deliver a moment
        // after the publish returns; a bounded wait covers them.
        for _ in 0..200 {
            if sink.0.lock().len() >= 8 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let delivered = sink.0.lock().clone();
        assert_eq!(delivered.len(), 8, "{delivered:?}");
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
            undelivered_after: None,
        };
        ok(engine.publish(vec![r.clone(), r]).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
        let page = engine
            .history("t", HistoryFrom::Oldest, 10, usize::MAX)
            .await
            .unwrap();
        assert_eq!((page.top, page.first_kept, page.messages.len()), (2, 3, 0));
    }

    /// Read cursors (SPEC §11): none at first, kept per inbox, never moved
    /// backwards within an epoch, replaced by one of another epoch.
    pub(crate) async fn read_cursors_move_forward_only(engine: &dyn Engine) {
        assert!(engine.read_cursor("#r1").await.unwrap().is_none());
        let kept = engine.mark_read("#r1", "ep1", 5).await.unwrap();
        assert_eq!((&*kept.0, kept.1), ("ep1", 5));
        let kept = engine.mark_read("#r1", "ep1", 3).await.unwrap();
        assert_eq!((&*kept.0, kept.1), ("ep1", 5), "never backwards");
        let kept = engine.mark_read("#r1", "ep1", 7).await.unwrap();
        assert_eq!((&*kept.0, kept.1), ("ep1", 7));
        let kept = engine.mark_read("#r1", "ep2", 1).await.unwrap();
        assert_eq!((&*kept.0, kept.1), ("ep2", 1), "a new epoch replaces it");
        let read = engine.read_cursor("#r1").await.unwrap().unwrap();
        assert_eq!((&*read.0, read.1), ("ep2", 1));
        assert!(engine.read_cursor("#r2").await.unwrap().is_none());
    }

    /// Pending notifications (SPEC §11 `notification_undelivered`): due
    /// ones are claimed once, leased, and come back after the lease unless
    /// finished; delivered ones (a mark at or above, same epoch) never are.
    pub(crate) async fn undelivered_are_claimed_once_unless_delivered(engine: &dyn Engine) {
        let pending = |stream: &str, data: &str| PublishRequest {
            stream: stream.into(),
            data: data.into(),
            retention: Retention {
                size: 10,
                ttl: Duration::from_secs(3600),
            },
            key: None,
            undelivered_after: Some(Duration::from_millis(1)),
        };
        let pubs = ok(engine
            .publish(vec![
                pending("#u1", "1"),
                pending("#u1", "2"),
                pending("#u1", "3"),
                pending("#u2", "1"),
            ])
            .await
            .unwrap());
        let epoch = pubs[0].epoch.clone();
        // Epochs may be per stream (redis).
        let epoch2 = pubs[3].epoch.clone();
        assert_eq!(engine.usage().undelivered, 4);
        let now = crate::ids::unix_millis() + 1000;
        engine
            .mark_delivered(
                &[
                    ("#u1".into(), epoch.clone(), 2),
                    // Another epoch's mark delivers nothing of this one.
                    ("#u2".into(), "other".into(), 3),
                ],
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        let lease = Duration::from_secs(5);
        let mut claimed = engine.claim_undelivered(now, lease, 10).await.unwrap();
        claimed.sort_by(|a, b| (&a.stream, a.offset).cmp(&(&b.stream, b.offset)));
        let expected = |stream: &str, epoch: &Arc<str>, offset| PendingNotification {
            stream: stream.into(),
            epoch: epoch.clone(),
            offset,
        };
        assert_eq!(
            claimed,
            vec![expected("#u1", &epoch, 3), expected("#u2", &epoch2, 1)]
        );
        assert!(
            engine
                .claim_undelivered(now, lease, 10)
                .await
                .unwrap()
                .is_empty(),
            "a claimed entry is leased"
        );
        let later = now + 6000;
        let mut again = engine.claim_undelivered(later, lease, 10).await.unwrap();
        again.sort_by(|a, b| (&a.stream, a.offset).cmp(&(&b.stream, b.offset)));
        assert_eq!(
            again, claimed,
            "an unfinished claim comes back after its lease"
        );
        engine.finish_undelivered(&again).await.unwrap();
        assert!(engine
            .claim_undelivered(later + 60_000, lease, 10)
            .await
            .unwrap()
            .is_empty());
        // Not due yet: not claimed.
        let mut r = pending("#u1", "4");
        r.undelivered_after = Some(Duration::from_secs(3600));
        ok(engine.publish(vec![r]).await.unwrap());
        assert!(engine
            .claim_undelivered(later + 60_000, lease, 10)
            .await
            .unwrap()
            .is_empty());
    }
}
