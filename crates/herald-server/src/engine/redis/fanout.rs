//! Fan-out through Redis pub/sub: one pub/sub connection per node, one Redis
//! subscription per stream someone on this node watches.
//!
//! The hub says when a stream gains its first local listener (a subscriber
//! or a long poll) and loses its last ([`Watcher`]). One task owns the
//! pub/sub connection: it subscribes and unsubscribes to match, and hands
//! each message to the hub in offset order. Pub/sub alone can lose messages
//! (a reconnect, or Redis dropping a subscriber that lags past its output
//! buffer limit), so every stream remembers the last offset it delivered:
//! a jump is filled from history first, a repeat is dropped, and after a
//! reconnect every watched stream is re-read from its last offset. Nothing
//! is ever skipped silently: what history can no longer supply makes the
//! stream's subscribers resume by cursor (and learn `recovered: false`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::redis::Script;
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::conn::Commands;
use super::pubsub::{Lost, Message, Session};
use super::{read_history, Naming, CALL_TIMEOUT};
use crate::engine::{EngineError, FanoutSink, HistoryFrom, Publication};

pub(crate) use super::pubsub::Source;
pub(crate) use crate::engine::StreamWatcher as Watcher;

/// Messages read per history call when catching up.
const CATCH_UP_PAGE: usize = 1000;
/// History calls per catch-up: bounds the work of one stream; a stream
/// further behind makes its subscribers resume from history themselves.
const CATCH_UP_PAGES: usize = 100;
/// Channels per SUBSCRIBE when re-subscribing after a reconnect.
const SUBSCRIBE_CHUNK: usize = 256;
/// How often the pub/sub connection is checked with a PING: a peer that
/// vanished without closing TCP is found within this plus [`CALL_TIMEOUT`].
const PING_EVERY: Duration = Duration::from_secs(5);

struct Watch {
    /// True once the Redis subscription is confirmed and the stream caught up.
    ready: watch::Sender<bool>,
    /// The epoch and offset last handed to the hub.
    last: Option<(Arc<str>, u64)>,
}

pub(crate) struct Fanout {
    watches: Mutex<HashMap<Arc<str>, Watch>>,
    /// Streams whose subscription may need a change; the task settles them.
    dirty: Mutex<HashSet<Arc<str>>>,
    changed: Notify,
    connected: AtomicBool,
    /// Redis channels subscribed on the current connection (the gauge).
    subscribed: AtomicU64,
    stop: CancellationToken,
    naming: Naming,
    conn: Commands,
    history: Script,
    sink: Arc<dyn FanoutSink>,
}

impl Watcher for Fanout {
    fn watch(&self, stream: &Arc<str>) {
        self.watches.lock().insert(
            stream.clone(),
            Watch {
                ready: watch::channel(false).0,
                last: None,
            },
        );
        self.dirty.lock().insert(stream.clone());
        self.changed.notify_one();
    }

    fn unwatch(&self, stream: &str) {
        let removed = self.watches.lock().remove_entry(stream);
        if let Some((key, _)) = removed {
            self.dirty.lock().insert(key);
            self.changed.notify_one();
        }
    }
}

impl From<EngineError> for Lost {
    fn from(_: EngineError) -> Self {
        Lost
    }
}

impl Fanout {
    pub(super) fn start(
        source: Source,
        conn: Commands,
        naming: Naming,
        history: Script,
        sink: Arc<dyn FanoutSink>,
    ) -> Arc<Self> {
        let fanout = Arc::new(Self {
            watches: Mutex::new(HashMap::new()),
            dirty: Mutex::new(HashSet::new()),
            changed: Notify::new(),
            connected: AtomicBool::new(false),
            subscribed: AtomicU64::new(0),
            stop: CancellationToken::new(),
            naming,
            conn,
            history,
            sink,
        });
        tokio::spawn(fanout.clone().run(source));
        fanout
    }

    pub(super) fn stop(&self) {
        self.stop.cancel();
    }

    /// The streams watched now.
    pub(super) fn watched(&self) -> Vec<Arc<str>> {
        self.watches.lock().keys().cloned().collect()
    }

    /// Redis channels this node subscribes to now.
    pub(super) fn subscriptions(&self) -> u64 {
        self.subscribed.load(Ordering::Relaxed)
    }

    pub(super) fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Resolves once this node hears `stream`'s publications (when someone
    /// here watches it), so a history read after it misses nothing.
    pub(super) async fn listening(&self, stream: &str) -> Result<(), EngineError> {
        let rx = self.watches.lock().get(stream).map(|w| w.ready.subscribe());
        let Some(mut rx) = rx else {
            return Ok(());
        };
        let waited = tokio::time::timeout(CALL_TIMEOUT, rx.wait_for(|ready| *ready))
            .await
            .map(|r| r.map(|_| ()));
        match waited {
            // Unwatched meanwhile (the sender is gone): nobody listens.
            Ok(_) => Ok(()),
            Err(_) => Err(EngineError(
                "redis: cannot subscribe to the stream now".into(),
            )),
        }
    }

    /// Connects, serves, and reconnects with backoff until stopped.
    async fn run(self: Arc<Self>, source: Source) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let connect = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = Session::open(&source) => r,
            };
            if let Ok(mut session) = connect {
                backoff = Duration::from_millis(50);
                // Everything watched must be subscribed and caught up anew.
                let all: Vec<Arc<str>> = self.watches.lock().keys().cloned().collect();
                self.dirty.lock().extend(all);
                let _ = self.serve(&mut session).await;
                self.connected.store(false, Ordering::Release);
                self.subscribed.store(0, Ordering::Relaxed);
                for w in self.watches.lock().values() {
                    w.ready.send_replace(false);
                }
                tracing::warn!("redis pub/sub connection lost; reconnecting");
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    async fn serve(&self, session: &mut Session) -> Result<(), Lost> {
        let mut subscribed: HashSet<Arc<str>> = HashSet::new();
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        loop {
            self.settle(session, &mut subscribed).await?;
            self.connected.store(true, Ordering::Release);
            tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                _ = self.changed.notified() => {}
                msg = session.next() => self.on_message(msg?).await?,
                _ = ping.tick() => session.ping().await?,
            }
        }
    }

    /// Brings subscriptions in line with the watched streams; newly
    /// subscribed (or re-subscribed) streams are caught up from history.
    async fn settle(
        &self,
        session: &mut Session,
        subscribed: &mut HashSet<Arc<str>>,
    ) -> Result<(), Lost> {
        let dirty: Vec<Arc<str>> = std::mem::take(&mut *self.dirty.lock())
            .into_iter()
            .collect();
        if dirty.is_empty() {
            return Ok(());
        }
        let (mut add, mut catch_up, mut remove) = (Vec::new(), Vec::new(), Vec::new());
        {
            let watches = self.watches.lock();
            for s in dirty {
                if watches.contains_key(&s) {
                    if !subscribed.contains(&s) {
                        add.push(s.clone());
                    }
                    catch_up.push(s);
                } else if subscribed.contains(&s) {
                    remove.push(s);
                }
            }
        }
        // On failure the streams stay dirty for the next connection.
        let requeue = |streams: &[Arc<str>]| self.dirty.lock().extend(streams.iter().cloned());
        for chunk in add.chunks(SUBSCRIBE_CHUNK) {
            let channels: Vec<String> = chunk.iter().map(|s| self.naming.channel(s)).collect();
            if session.subscribe(&channels).await.is_err() {
                requeue(&add);
                requeue(&catch_up);
                return Err(Lost);
            }
            subscribed.extend(chunk.iter().cloned());
        }
        for chunk in remove.chunks(SUBSCRIBE_CHUNK) {
            let channels: Vec<String> = chunk.iter().map(|s| self.naming.channel(s)).collect();
            session.unsubscribe(&channels).await?;
            for s in chunk {
                subscribed.remove(s);
            }
        }
        self.subscribed
            .store(subscribed.len() as u64, Ordering::Relaxed);
        for (i, s) in catch_up.iter().enumerate() {
            if self.catch_up(s).await.is_err() {
                requeue(&catch_up[i..]);
                return Err(Lost);
            }
        }
        Ok(())
    }

    /// Delivers what `stream` published since the last offset handed over
    /// (or learns where it stands, for a new watch), then marks it ready.
    async fn catch_up(&self, stream: &Arc<str>) -> Result<(), EngineError> {
        let last = match self.watches.lock().get(stream) {
            Some(w) => w.last.clone(),
            None => return Ok(()),
        };
        match last {
            None => {
                let page = self
                    .read(stream, HistoryFrom::AfterOffset(u64::MAX), 0)
                    .await?;
                self.set_last(stream, page.epoch, page.top);
            }
            Some((epoch, offset)) => self.fill(stream, &epoch, offset, u64::MAX).await?,
        }
        if let Some(w) = self.watches.lock().get(stream) {
            w.ready.send_replace(true);
        }
        Ok(())
    }

    /// Hands the hub `stream`'s messages after `offset` up to `upto` from
    /// history, in order. When history no longer has them (trimmed,
    /// expired, or the stream restarted under a new epoch), the stream's
    /// subscribers are told to resume by cursor instead.
    async fn fill(
        &self,
        stream: &Arc<str>,
        epoch: &Arc<str>,
        mut offset: u64,
        upto: u64,
    ) -> Result<(), EngineError> {
        for _ in 0..CATCH_UP_PAGES {
            let want = upto.saturating_sub(offset).min(CATCH_UP_PAGE as u64) as usize;
            if want == 0 {
                break;
            }
            let page = self
                .read(stream, HistoryFrom::AfterOffset(offset), want)
                .await?;
            if page.epoch != *epoch || page.first_kept > offset + 1 || page.top < offset {
                tracing::warn!(%stream, "missed messages are no longer in history; subscribers resume");
                self.sink.stream_removed(stream);
                self.set_last(stream, page.epoch, page.top.min(upto));
                return Ok(());
            }
            let publications: Vec<Publication> = page
                .messages
                .into_iter()
                .take_while(|m| m.offset <= upto)
                .map(|m| Publication {
                    stream: stream.clone(),
                    epoch: epoch.clone(),
                    offset: m.offset,
                    ts: m.ts,
                    data: m.data,
                })
                .collect();
            let Some(newest) = publications.last().map(|p| p.offset) else {
                break;
            };
            self.sink.deliver(&publications);
            offset = newest;
            self.set_last(stream, epoch.clone(), offset);
            if offset >= page.top {
                break;
            }
        }
        if offset < upto && upto != u64::MAX {
            // Still short after the bounded catch-up: never a silent gap.
            self.sink.stream_removed(stream);
            self.set_last(stream, epoch.clone(), upto);
        }
        Ok(())
    }

    async fn read(
        &self,
        stream: &str,
        from: HistoryFrom,
        limit: usize,
    ) -> Result<crate::engine::HistoryPage, EngineError> {
        read_history(
            &self.conn,
            &self.history,
            &self.naming,
            stream,
            from,
            limit,
            usize::MAX,
        )
        .await
    }

    fn set_last(&self, stream: &str, epoch: Arc<str>, offset: u64) {
        if let Some(w) = self.watches.lock().get_mut(stream) {
            w.last = Some((epoch, offset));
        }
    }

    /// One publication from pub/sub: `"<epoch> <offset> <ts> <data>"`.
    async fn on_message(&self, msg: Message) -> Result<(), Lost> {
        let Some(stream) = self.naming.stream_of(&msg.channel) else {
            return Ok(());
        };
        let Ok(payload) = std::str::from_utf8(&msg.payload) else {
            return Ok(());
        };
        if let Some(event) = payload.strip_prefix('!') {
            // Presence's join / leave: `!<conn hex> <frame>` (see presence.rs).
            if let Some((conn, frame)) = event.split_once(' ') {
                let except = u64::from_str_radix(conn, 16).unwrap_or(0);
                self.sink.deliver_event(stream, except, frame.to_owned());
            }
            return Ok(());
        }
        let mut parts = payload.splitn(4, ' ');
        let (Some(epoch), Some(Ok(offset)), Some(Ok(ts)), Some(data)) = (
            parts.next(),
            parts.next().map(str::parse::<u64>),
            parts.next().map(str::parse::<u64>),
            parts.next(),
        ) else {
            tracing::warn!(%stream, "malformed publication on redis pub/sub");
            return Ok(());
        };
        let (key, last) = {
            let watches = self.watches.lock();
            match watches.get_key_value(stream) {
                Some((key, w)) => (key.clone(), w.last.clone()),
                None => return Ok(()),
            }
        };
        let epoch: Arc<str> = match &last {
            Some((e, _)) if **e == *epoch => e.clone(),
            _ => epoch.into(),
        };
        match last {
            Some((e, o)) if Arc::ptr_eq(&e, &epoch) => {
                if offset <= o {
                    return Ok(()); // already delivered (caught up from history)
                }
                if offset > o + 1 {
                    self.fill(&key, &epoch, o, offset - 1).await?;
                }
            }
            // A stream we had not placed yet, or one that restarted under a
            // new epoch: its subscribers must resume by cursor.
            Some(_) => self.sink.stream_removed(&key),
            None => {}
        }
        self.sink.deliver(&[Publication {
            stream: key.clone(),
            epoch: epoch.clone(),
            offset,
            ts,
            data: data.into(),
        }]);
        self.set_last(&key, epoch, offset);
        Ok(())
    }
}
