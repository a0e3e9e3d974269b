//! The hub: which local connections listen to which stream, and fan-out.
//!
//! A committed publication is encoded once into a shared frame and offered to
//! every subscriber's bounded queue without waiting. A full queue never blocks
//! delivery to the others: that connection is marked a slow consumer and its
//! session closes it with 4003 (the client resumes from history). The hub never
//! drops a message silently.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use herald_protocol::{encode_message_frame, encode_notification_frame, CloseCode};
use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, oneshot, Notify};
use tungstenite::Utf8Bytes;

use crate::engine::{FanoutSink, Publication, StreamWatcher};
use crate::metrics::Metrics;
use crate::transport::lane::{Lane, Wrote, LANE_BATCH};

const SHARDS: usize = 64;

/// The prefix of inbox stream keys; never valid in a channel name.
pub const INBOX_PREFIX: char = '#';

/// The stream key of `user`'s notification inbox.
pub fn inbox_key(user: &str) -> Arc<str> {
    format!("{INBOX_PREFIX}{user}").into()
}

/// One publication, encoded once and shared by every subscriber.
#[derive(Debug)]
pub struct EncodedPub {
    /// The stream key.
    pub stream: Arc<str>,
    /// The message's offset, for de-duplication during recovery.
    pub offset: u64,
    /// The `message` or `notification` frame.
    pub frame: Utf8Bytes,
    /// The same as a whole WebSocket text frame (a server's frames are
    /// unmasked, so every subscriber gets the same bytes): what the lane
    /// sends, in one piece.
    pub wire: bytes::Bytes,
    /// When the hub received it, for the publish-to-send histogram.
    pub dispatched_at: Instant,
}

impl EncodedPub {
    /// `frame` of `stream` at `offset`, dispatched now, with its wire form.
    fn new(stream: Arc<str>, offset: u64, frame: String) -> Arc<Self> {
        let mut wire = Vec::with_capacity(frame.len() + 10);
        crate::transport::frame::encode_text(&mut wire, &frame);
        Arc::new(Self {
            stream,
            offset,
            frame: frame.into(),
            wire: wire.into(),
            dispatched_at: Instant::now(),
        })
    }
}

/// The hub's side of one connection: its queue, the last offset sent on
/// each of its streams, its direct write lane, and its kill switch.
///
/// Delivery takes one of two roads, decided under the queue's lock. While
/// the session is idle its lane is open, and a flusher task (one per
/// worker thread, see [`Hub::start_flushers`]) writes queued frames to the
/// socket itself, a batch per `writev`, with no wake-up of the session.
/// Otherwise the session is woken and forwards them. Both drain the queue
/// from the front under the lock and skip what the stream's mark says was
/// sent, so the order and the no-duplicate rule hold whichever road a frame
/// takes.
///
/// The queue is a deque under a lock rather than a tokio `mpsc` channel: a
/// channel allocates about 800 bytes up front for every connection, while an
/// empty deque allocates nothing, and most connections sit idle.
///
/// Bounded in frames *and* bytes (`limits.outbound_queue` and
/// `limits.outbound_queue_bytes`): 1024 frames of 64 KiB would otherwise be
/// 64 MiB per stalled reader. The node-wide gauge
/// `herald_outbound_queue_bytes` sums what every queue holds (a frame shared
/// by several queues counts once per queue, as each would keep it alive).
#[derive(Debug)]
pub struct Conn {
    /// Unique on this node.
    pub id: u64,
    queue: Mutex<Queue>,
    capacity: usize,
    max_bytes: usize,
    queued_bytes: Gauge,
    queued: Notify,
    kicked: AtomicU8,
    kick: Notify,
    lane: Option<Arc<Lane>>,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Arc<EncodedPub>>,
    bytes: usize,
    /// Every stream the connection listens to, with the last offset sent
    /// (or due in its replay): a frame at or below it is a duplicate, and a
    /// frame of a stream not here is one it left.
    marks: HashMap<Arc<str>, u64>,
    /// The lane could not write everything: the session must write its
    /// spill, and what is queued, itself.
    stalled: bool,
    /// Handed to a flusher that has not run yet.
    scheduled: bool,
}

/// What a push asks of the hub.
#[derive(Debug, PartialEq, Eq)]
enum Pushed {
    /// Queued; whoever drains this queue will take it.
    Queued,
    /// Queued on an open lane: a flusher must be told.
    Flush,
    /// The queue is full.
    Full,
}

/// Frames for a session to write, already rid of duplicates.
#[derive(Debug, Default)]
pub struct Batch {
    /// The frames, in order.
    pub frames: Vec<Utf8Bytes>,
    /// When the oldest was dispatched.
    pub oldest: Option<Instant>,
    /// The lane stalled: its spill must be written even with no frames.
    pub stalled: bool,
}

/// Drops from `frames` what `marks` says was sent or belongs to a stream
/// left, moving the marks up to what stays.
fn unsent<'a: 'm, 'm>(
    marks: &'m mut HashMap<Arc<str>, u64>,
    frames: impl Iterator<Item = &'a Arc<EncodedPub>> + 'm,
) -> impl Iterator<Item = &'a Arc<EncodedPub>> + 'm {
    frames.filter(move |p| match marks.get_mut(&*p.stream) {
        // Offset 0: presence's join / leave, never stored, never repeated.
        Some(_) if p.offset == 0 => true,
        Some(last) if p.offset > *last => {
            *last = p.offset;
            true
        }
        _ => false,
    })
}

/// What a connection may queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueBound {
    /// Frames.
    pub frames: usize,
    /// Bytes of frame text.
    pub bytes: usize,
}

/// A drained queue with more room than this gives it back, so a burst does
/// not leave an idle connection holding a large buffer.
const KEPT_QUEUE_CAPACITY: usize = 16;

impl Conn {
    /// A connection that queues at most `bound` for its session, counting
    /// what it holds in `queued_bytes`.
    /// `lane`, when given, is the socket's direct write lane.
    pub(crate) fn new(
        id: u64,
        bound: QueueBound,
        queued_bytes: Gauge,
        lane: Option<Arc<Lane>>,
    ) -> Self {
        Self {
            id,
            queue: Mutex::new(Queue::default()),
            capacity: bound.frames,
            max_bytes: bound.bytes,
            queued_bytes,
            queued: Notify::new(),
            kicked: AtomicU8::new(0),
            kick: Notify::new(),
            lane,
        }
    }

    /// Queues `p`. `can_flush`: a flusher runs, so an open lane may be used.
    /// `lossy` (presence's join / leave): only into the first half of the
    /// queue's bounds, so an event never fills a queue a message needs.
    fn try_push(&self, p: Arc<EncodedPub>, can_flush: bool, lossy: bool) -> Pushed {
        let len = p.frame.len();
        let mut queue = self.queue.lock();
        let (frames, bytes) = if lossy {
            (self.capacity / 2, self.max_bytes / 2)
        } else {
            (self.capacity, self.max_bytes)
        };
        if queue.frames.len() >= frames || queue.bytes + len > bytes {
            return Pushed::Full;
        }
        let was_empty = queue.frames.is_empty();
        queue.frames.push_back(p);
        queue.bytes += len;
        let flush = was_empty
            && can_flush
            && !queue.scheduled
            && self.lane.as_ref().is_some_and(|l| l.is_open());
        if flush {
            queue.scheduled = true;
        }
        drop(queue);
        self.queued_bytes.inc_by(len as i64);
        if flush {
            return Pushed::Flush;
        }
        // A non-empty queue is drained before the session waits again, so
        // only the first frame needs to wake it. `notify_one` keeps a permit
        // when the session is not waiting yet, so no wake-up is lost.
        if was_empty {
            self.queued.notify_one();
        }
        Pushed::Queued
    }

    /// Up to `max` queued frames not sent yet, oldest first, waiting for
    /// at least one (or for a stalled lane's spill). Closes the lane: the
    /// session writes from here on, until it offers the lane again.
    /// Cancel-safe: frames are taken only in the poll that returns them.
    pub async fn next_batch(&self, max: usize) -> Batch {
        loop {
            {
                let mut queue = self.queue.lock();
                if !queue.frames.is_empty() || queue.stalled {
                    if let Some(lane) = &self.lane {
                        lane.shut();
                    }
                    let stalled = std::mem::take(&mut queue.stalled);
                    let n = queue.frames.len().min(max);
                    let taken: Vec<_> = queue.frames.drain(..n).collect();
                    let bytes: usize = taken.iter().map(|p| p.frame.len()).sum();
                    queue.bytes -= bytes;
                    if queue.frames.is_empty() && queue.frames.capacity() > KEPT_QUEUE_CAPACITY {
                        queue.frames = VecDeque::new();
                    }
                    let frames = unsent(&mut queue.marks, taken.iter())
                        .map(|p| p.frame.clone())
                        .collect();
                    drop(queue);
                    self.queued_bytes.dec_by(bytes as i64);
                    return Batch {
                        frames,
                        oldest: taken.first().map(|p| p.dispatched_at),
                        stalled,
                    };
                }
            }
            self.queued.notified().await;
        }
    }

    /// Opens the lane if the session is `idle` and nothing waits for it.
    pub fn offer_lane(&self, idle: bool) {
        let Some(lane) = &self.lane else {
            return;
        };
        let queue = self.queue.lock();
        if idle && queue.frames.is_empty() && !queue.stalled {
            lane.open();
        }
    }

    /// The flusher's part: writes what is queued through the open lane; if
    /// the lane is closed or stalls, wakes the session to do it.
    fn flush(&self, metrics: &Metrics) {
        let Some(lane) = &self.lane else {
            return;
        };
        let mut queue = self.queue.lock();
        queue.scheduled = false;
        while !queue.frames.is_empty() {
            let Some(mut open) = lane.lock_open() else {
                drop(queue);
                self.queued.notify_one();
                return;
            };
            // One frame is the usual case (nothing coalesces at 10 msg/s
            // per connection): no batch to build for it.
            let single;
            let batch;
            let taken: &[Arc<EncodedPub>] = if queue.frames.len() == 1 {
                single = queue.frames.pop_front();
                single.as_slice()
            } else {
                let n = queue.frames.len().min(LANE_BATCH);
                batch = queue.frames.drain(..n).collect::<Vec<_>>();
                &batch
            };
            let bytes: usize = taken.iter().map(|p| p.frame.len()).sum();
            queue.bytes -= bytes;
            self.queued_bytes.dec_by(bytes as i64);
            let wrote = match taken {
                [one] if unsent(&mut queue.marks, taken.iter()).next().is_some() => {
                    open.write(&[&one.wire[..]])
                }
                [_] => continue,
                many => {
                    let frames: Vec<&[u8]> = unsent(&mut queue.marks, many.iter())
                        .map(|p| &p.wire[..])
                        .collect();
                    if frames.is_empty() {
                        continue;
                    }
                    open.write(&frames)
                }
            };
            metrics.lane_sends.inc();
            match wrote {
                Wrote::All(frames) => {
                    metrics.frames_written_direct.inc_by(frames as u64);
                    metrics
                        .publish_to_send_seconds
                        .observe(taken[0].dispatched_at.elapsed().as_secs_f64());
                }
                Wrote::Stalled => {
                    drop(open);
                    queue.stalled = true;
                    drop(queue);
                    self.queued.notify_one();
                    return;
                }
            }
        }
        if queue.frames.capacity() > KEPT_QUEUE_CAPACITY {
            queue.frames = VecDeque::new();
        }
    }

    /// Starts listening to `stream`, with everything up to `offset` sent
    /// (or due in the replay that follows).
    pub fn set_mark(&self, stream: Arc<str>, offset: u64) {
        self.queue.lock().marks.insert(stream, offset);
    }

    /// Stops listening to `stream`; false when it was not listened to.
    pub fn remove_mark(&self, stream: &str) -> bool {
        self.queue.lock().marks.remove(stream).is_some()
    }

    /// Stops listening to every stream, returning them.
    pub fn take_marks(&self) -> Vec<Arc<str>> {
        let marks = std::mem::take(&mut self.queue.lock().marks);
        marks.into_keys().collect()
    }

    /// Whether the connection listens to `stream`.
    pub fn has_mark(&self, stream: &str) -> bool {
        self.queue.lock().marks.contains_key(stream)
    }

    /// How many streams the connection listens to.
    pub fn mark_count(&self) -> usize {
        self.queue.lock().marks.len()
    }

    /// Asks the session to close with `code` (the first reason wins).
    pub fn kick(&self, code: CloseCode) {
        let code = code.as_u16();
        let first = self.kicked.compare_exchange(
            0,
            (code - 4000) as u8 + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if first.is_ok() {
            self.kick.notify_one();
        }
    }

    /// Resolves when the connection has been kicked, with the close code.
    pub async fn kicked(&self) -> CloseCode {
        loop {
            if let Some(code) = self.kick_code() {
                return code;
            }
            self.kick.notified().await;
        }
    }

    fn kick_code(&self) -> Option<CloseCode> {
        match self.kicked.load(Ordering::Acquire) {
            0 => None,
            n => Some(match n as u16 - 1 + 4000 {
                4003 => CloseCode::SlowConsumer,
                4004 => CloseCode::Abuse,
                4006 => CloseCode::ConnectionLimit,
                4007 => CloseCode::Operator,
                _ => CloseCode::Shutdown,
            }),
        }
    }
}

impl Drop for Conn {
    /// A connection that goes away with frames still queued (a slow
    /// consumer, a session that ended mid-burst) gives their bytes back to
    /// the gauge, whatever the path out.
    fn drop(&mut self) {
        let bytes = self.queue.get_mut().bytes;
        self.queued_bytes.dec_by(bytes as i64);
    }
}

/// A long poll's place in the hub: resolves (true) at the next publication
/// to its stream. Dropping it takes it out of the hub at once — whether the
/// poll was answered, timed out, or its client hung up and the request's
/// future was dropped mid-wait — so waiters never outlive their requests.
#[derive(Debug)]
pub struct Waiter<'a> {
    hub: &'a Hub,
    stream: Arc<str>,
    rx: oneshot::Receiver<()>,
}

impl std::future::Future for Waiter<'_> {
    type Output = bool;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<bool> {
        std::pin::Pin::new(&mut self.rx).poll(cx).map(|r| r.is_ok())
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        // Closing marks the sender closed, which is what pruning looks for.
        self.rx.close();
        self.hub.prune_waiters(&self.stream);
    }
}

#[derive(Default)]
struct Shard {
    streams: HashMap<Arc<str>, Vec<Arc<Conn>>>,
    waiters: HashMap<Arc<str>, Vec<oneshot::Sender<()>>>,
}

impl Shard {
    fn watched(&self, stream: &str) -> bool {
        self.streams.contains_key(stream) || self.waiters.contains_key(stream)
    }
}

/// Local subscribers by stream, sharded by stream key.
pub struct Hub {
    shards: Vec<RwLock<Shard>>,
    hasher: RandomState,
    metrics: Arc<Metrics>,
    channels: AtomicUsize,
    users: AtomicUsize,
    subscriptions: AtomicUsize,
    waiting: AtomicUsize,
    /// Told when a stream gains its first listener and loses its last.
    watcher: OnceLock<Weak<dyn StreamWatcher>>,
    /// Told of notifications pushed to a live connection (the
    /// `notification_undelivered` hook), when that is on.
    delivered: OnceLock<crate::undelivered::Marks>,
    /// The flusher tasks' inboxes, once started. Each entry is a
    /// connection whose queue went from empty to not on an open lane, and
    /// a connection is in at most one pending entry (`Queue::scheduled`),
    /// so what waits here is bounded by the number of connections.
    flushers: OnceLock<Vec<mpsc::UnboundedSender<Vec<Arc<Conn>>>>>,
    /// Told when a channel gains its first subscriber or loses its last
    /// (the occupancy webhooks), when a webhook wants that.
    occupancy: OnceLock<Arc<crate::occupancy::Occupancy>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("subscriptions", &self.subscriptions)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// An empty hub.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            metrics,
            channels: AtomicUsize::new(0),
            users: AtomicUsize::new(0),
            subscriptions: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            watcher: OnceLock::new(),
            delivered: OnceLock::new(),
            flushers: OnceLock::new(),
            occupancy: OnceLock::new(),
        }
    }

    /// Starts `n` flusher tasks on the current runtime (one per worker
    /// thread: a connection's writes go to the flusher of its id, so they
    /// spread over the cores). Until this is called, every delivery wakes
    /// its session.
    pub fn start_flushers(&self, n: usize) {
        let mut senders = Vec::with_capacity(n.max(1));
        for _ in 0..n.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            tokio::spawn(run_flusher(self.metrics.clone(), rx));
        }
        let _ = self.flushers.set(senders);
    }

    /// Sets the hook told which streams have listeners on this node (the
    /// redis engine subscribes to exactly those). Set once, before use.
    pub fn set_watcher(&self, watcher: Weak<dyn StreamWatcher>) {
        let _ = self.watcher.set(watcher);
    }

    /// Where to report notifications pushed to a live connection.
    pub(crate) fn set_delivered(&self, marks: crate::undelivered::Marks) {
        let _ = self.delivered.set(marks);
    }

    /// Called under `stream`'s shard lock after a change, with whether it
    /// was watched before: tells the hook about a transition, in order.
    fn watch_changed(&self, shard: &Shard, stream: &Arc<str>, was_watched: bool) {
        let now = shard.watched(stream);
        if now == was_watched {
            return;
        }
        if let Some(w) = self.watcher.get().and_then(Weak::upgrade) {
            if now {
                w.watch(stream);
            } else {
                w.unwatch(stream);
            }
        }
    }

    /// Sets the occupancy hook. Set once, before use.
    pub fn set_occupancy(&self, occupancy: Arc<crate::occupancy::Occupancy>) {
        let _ = self.occupancy.set(occupancy);
    }

    /// A channel's subscribers went from none to some or back (a
    /// non-blocking send: called under the shard lock).
    fn occupancy_changed(&self, stream: &Arc<str>) {
        if let Some(o) = self.occupancy.get() {
            if crate::engine::is_channel(stream) {
                o.channel_changed(stream);
            }
        }
    }

    fn shard(&self, stream: &str) -> &RwLock<Shard> {
        &self.shards[self.hasher.hash_one(stream) as usize % SHARDS]
    }

    fn stream_counter(&self, stream: &str) -> &AtomicUsize {
        if stream.starts_with(INBOX_PREFIX) {
            &self.users
        } else {
            &self.channels
        }
    }

    /// Adds `conn` to `stream`'s subscribers. From now on it receives every
    /// publication the engine hands over for that stream.
    pub fn subscribe(&self, stream: &Arc<str>, conn: &Arc<Conn>) {
        let mut shard = self.shard(stream).write();
        let was_watched = shard.watched(stream);
        let subs = shard.streams.entry(stream.clone()).or_default();
        if subs.is_empty() {
            self.stream_counter(stream).fetch_add(1, Ordering::Relaxed);
            self.occupancy_changed(stream);
        }
        subs.push(conn.clone());
        self.subscriptions.fetch_add(1, Ordering::Relaxed);
        self.watch_changed(&shard, stream, was_watched);
    }

    /// Removes connection `conn_id` from `stream`.
    pub fn unsubscribe(&self, stream: &str, conn_id: u64) {
        let mut shard = self.shard(stream).write();
        let Some(key) = shard.streams.get_key_value(stream).map(|(k, _)| k.clone()) else {
            return;
        };
        if let Some(subs) = shard.streams.get_mut(stream) {
            if let Some(i) = subs.iter().position(|c| c.id == conn_id) {
                subs.swap_remove(i);
                self.subscriptions.fetch_sub(1, Ordering::Relaxed);
            }
            if subs.is_empty() {
                shard.streams.remove(stream);
                self.stream_counter(stream).fetch_sub(1, Ordering::Relaxed);
                self.occupancy_changed(&key);
                self.watch_changed(&shard, &key, true);
            }
        }
    }

    /// A waiter that resolves at the next publication to `stream` (long polls).
    /// Register before reading history, so nothing published in between is
    /// missed: a publication whose delivery saw no waiter was committed before
    /// the registration, so the history read that follows includes it.
    pub fn wait(&self, stream: &Arc<str>) -> Waiter<'_> {
        let (tx, rx) = oneshot::channel();
        let mut shard = self.shard(stream).write();
        let was_watched = shard.watched(stream);
        shard.waiters.entry(stream.clone()).or_default().push(tx);
        self.waiting.fetch_add(1, Ordering::AcqRel);
        self.watch_changed(&shard, stream, was_watched);
        drop(shard);
        Waiter {
            hub: self,
            stream: stream.clone(),
            rx,
        }
    }

    /// Drops long-poll waiters that gave up, so a quiet stream can't pile them up.
    fn prune_waiters(&self, stream: &str) {
        let mut shard = self.shard(stream).write();
        if let Some(list) = shard.waiters.get_mut(stream) {
            let before = list.len();
            list.retain(|w| !w.is_closed());
            self.waiting
                .fetch_sub(before - list.len(), Ordering::AcqRel);
            if list.is_empty() {
                if let Some((key, _)) = shard.waiters.remove_entry(stream) {
                    self.watch_changed(&shard, &key, true);
                }
            }
        }
    }

    /// Long-poll waiters registered now.
    pub fn waiter_count(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Channels with at least one local subscriber.
    pub fn channel_count(&self) -> usize {
        self.channels.load(Ordering::Relaxed)
    }

    /// Users with at least one local connection listening to their inbox.
    pub fn user_count(&self) -> usize {
        self.users.load(Ordering::Relaxed)
    }

    /// Channel subscriptions and inbox listeners.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.load(Ordering::Relaxed)
    }

    /// Channels with local subscribers, most subscribers first, at most
    /// `limit` of them, and how many there are in all. A scan of every
    /// shard: for the admin API, not for any hot path.
    pub fn busiest_channels(&self, limit: usize) -> (usize, Vec<(Arc<str>, usize)>) {
        let mut all: Vec<(Arc<str>, usize)> = Vec::new();
        for shard in &self.shards {
            let shard = shard.read();
            all.extend(
                shard
                    .streams
                    .iter()
                    .filter(|(k, _)| !k.starts_with(INBOX_PREFIX))
                    .map(|(k, subs)| (k.clone(), subs.len())),
            );
        }
        let total = all.len();
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(limit);
        (total, all)
    }

    /// Local subscribers of `stream`.
    pub fn subscriber_count(&self, stream: &str) -> usize {
        self.shard(stream)
            .read()
            .streams
            .get(stream)
            .map_or(0, Vec::len)
    }

    /// The channels each of `conns` subscribes to (inboxes left out), at
    /// most `limit` each. A scan of every shard: for the admin API only.
    pub fn channels_of(&self, conns: &[u64], limit: usize) -> HashMap<u64, Vec<Arc<str>>> {
        let mut out: HashMap<u64, Vec<Arc<str>>> = HashMap::new();
        if conns.is_empty() {
            return out;
        }
        for shard in &self.shards {
            let shard = shard.read();
            for (stream, subs) in &shard.streams {
                if stream.starts_with(INBOX_PREFIX) {
                    continue;
                }
                for c in subs.iter().filter(|c| conns.contains(&c.id)) {
                    let list = out.entry(c.id).or_default();
                    if list.len() < limit {
                        list.push(stream.clone());
                    }
                }
            }
        }
        for list in out.values_mut() {
            list.sort_unstable();
        }
        out
    }

    /// How many local connections took `p`.
    fn deliver_one(&self, p: &Publication, to_flush: &mut [Vec<Arc<Conn>>]) -> u64 {
        let shard_lock = self.shard(&p.stream);
        if self.waiting.load(Ordering::Acquire) > 0 {
            let mut shard = shard_lock.write();
            let woken = shard.waiters.remove(&p.stream);
            if woken.is_some() {
                self.watch_changed(&shard, &p.stream, true);
            }
            drop(shard);
            if let Some(woken) = woken {
                self.waiting.fetch_sub(woken.len(), Ordering::AcqRel);
                for w in woken {
                    let _ = w.send(());
                }
            }
        }
        let shard = shard_lock.read();
        let Some(subs) = shard.streams.get(&p.stream) else {
            return 0;
        };
        let frame = match p.stream.strip_prefix(INBOX_PREFIX) {
            Some(_) => encode_notification_frame(&p.epoch, p.offset, p.ts, &p.data),
            None => encode_message_frame(&p.stream, &p.epoch, p.offset, p.ts, &p.data),
        };
        let encoded = EncodedPub::new(p.stream.clone(), p.offset, frame);
        self.metrics.frames_encoded.inc();
        let sent = self.offer(subs.iter(), &encoded, to_flush, false);
        self.metrics.messages_delivered.inc_by(sent);
        sent
    }

    /// Queues `encoded` for each of `conns`, noting in `to_flush` (one list
    /// per flusher) those whose open lane a flusher must now write; how
    /// many took it. A message that finds a queue full kicks that
    /// connection (4003: it resumes from history). A `lossy` event (join /
    /// leave: not stored, so nothing to resume) is skipped where the queue
    /// is half full and counted, never a reason to close a connection: a
    /// thousand clients joining a channel at once would otherwise close
    /// everyone in it.
    fn offer<'a>(
        &self,
        conns: impl Iterator<Item = &'a Arc<Conn>>,
        encoded: &Arc<EncodedPub>,
        to_flush: &mut [Vec<Arc<Conn>>],
        lossy: bool,
    ) -> u64 {
        let mut sent = 0u64;
        let can_flush = !to_flush.is_empty();
        for conn in conns {
            match conn.try_push(encoded.clone(), can_flush, lossy) {
                Pushed::Queued => sent += 1,
                Pushed::Flush => {
                    sent += 1;
                    to_flush[conn.id as usize % to_flush.len()].push(conn.clone());
                }
                Pushed::Full if lossy => {
                    self.metrics.presence_events_dropped.inc();
                }
                Pushed::Full => {
                    if conn.kick_code().is_none() {
                        self.metrics.slow_consumer_disconnects.inc();
                    }
                    self.metrics.messages_dropped.inc();
                    conn.kick(CloseCode::SlowConsumer);
                }
            }
        }
        sent
    }

    /// A list per flusher, for [`Hub::offer`].
    fn flush_lists(&self) -> Vec<Vec<Arc<Conn>>> {
        let n = self.flushers.get().map_or(0, Vec::len);
        vec![Vec::new(); n]
    }

    /// Hands each flusher its list.
    fn hand_to_flushers(&self, to_flush: Vec<Vec<Arc<Conn>>>) {
        let Some(flushers) = self.flushers.get() else {
            return;
        };
        for (tx, conns) in flushers.iter().zip(to_flush) {
            if !conns.is_empty() {
                // A flusher ends only with the runtime, and the sessions'
                // lanes with it.
                let _ = tx.send(conns);
            }
        }
    }
}

/// Flushes the connections handed over, a few hundred at a time between
/// yields so sessions and requests on the same worker are not held up by
/// a large fan-out.
async fn run_flusher(metrics: Arc<Metrics>, mut rx: mpsc::UnboundedReceiver<Vec<Arc<Conn>>>) {
    const BETWEEN_YIELDS: usize = 256;
    while let Some(conns) = rx.recv().await {
        for chunk in conns.chunks(BETWEEN_YIELDS) {
            for conn in chunk {
                conn.flush(&metrics);
            }
            tokio::task::yield_now().await;
        }
    }
}

impl FanoutSink for Hub {
    fn deliver(&self, publications: &[Publication]) {
        let mut to_flush = self.flush_lists();
        for p in publications {
            // Reported after the shard lock is released; a queue push only.
            if self.deliver_one(p, &mut to_flush) > 0 && p.stream.starts_with(INBOX_PREFIX) {
                if let Some(marks) = self.delivered.get() {
                    marks.delivered(&p.stream, &p.epoch, p.offset);
                }
            }
        }
        self.hand_to_flushers(to_flush);
    }

    fn is_watched(&self, stream: &str) -> bool {
        let shard = self.shard(stream).read();
        shard.streams.contains_key(stream) || shard.waiters.contains_key(stream)
    }

    /// Presence's `join` / `leave`: queued like a message, best effort (see
    /// [`Hub::offer`]), with offset 0, which the marks pass unfiltered.
    fn deliver_event(&self, stream: &str, except: u64, frame: String) {
        let shard = self.shard(stream).read();
        let Some((key, subs)) = shard.streams.get_key_value(stream) else {
            return;
        };
        let encoded = EncodedPub::new(key.clone(), 0, frame);
        self.metrics.frames_encoded.inc();
        let mut to_flush = self.flush_lists();
        self.offer(
            subs.iter().filter(|c| c.id != except),
            &encoded,
            &mut to_flush,
            true,
        );
        drop(shard);
        self.hand_to_flushers(to_flush);
    }

    fn stream_removed(&self, stream: &str) {
        let shard = self.shard(stream).read();
        if let Some(subs) = shard.streams.get(stream) {
            // They may hold offsets of the removed stream and would skip the
            // new one's 1, 2, …; closing with 4003 makes them resume by
            // cursor, and the epoch change tells them `recovered: false`.
            for conn in subs {
                conn.kick(CloseCode::SlowConsumer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: u64, frames: usize) -> Conn {
        let bound = QueueBound {
            frames,
            bytes: usize::MAX,
        };
        listening(Conn::new(id, bound, Gauge::default(), None))
    }

    /// `conn`, listening to the test streams from their start.
    fn listening(conn: Conn) -> Conn {
        for stream in ["c", "venue:1"] {
            conn.set_mark(stream.into(), 0);
        }
        conn
    }

    fn offsets(batch: &Batch) -> Vec<u64> {
        batch
            .frames
            .iter()
            .map(|f| {
                let v: serde_json::Value = serde_json::from_str(f).unwrap();
                v["offset"].as_u64().unwrap()
            })
            .collect()
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_and_the_gauge_follows_it() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let gauge = Gauge::default();
        let frame_len = {
            let probe = Arc::new(conn(9, 8));
            let stream: Arc<str> = "c".into();
            hub.subscribe(&stream, &probe);
            hub.deliver(&[publication("c", 1)]);
            let len = probe.next_batch(1).await.frames[0].len();
            hub.unsubscribe("c", 9);
            len
        };
        let bound = QueueBound {
            frames: 100,
            bytes: 2 * frame_len + 1,
        };
        let small = Arc::new(listening(Conn::new(1, bound, gauge.clone(), None)));
        let stream: Arc<str> = "c".into();
        hub.subscribe(&stream, &small);
        hub.deliver(&[publication("c", 2), publication("c", 3)]);
        assert_eq!(gauge.get(), 2 * frame_len as i64);
        assert!(small.kick_code().is_none(), "two frames fit");
        hub.deliver(&[publication("c", 4)]);
        assert_eq!(small.kicked().await, CloseCode::SlowConsumer);
        assert_eq!(small.next_batch(1).await.frames.len(), 1);
        assert_eq!(gauge.get(), frame_len as i64);
        hub.unsubscribe("c", 1);
        drop(small);
        assert_eq!(gauge.get(), 0, "a dropped queue gives its bytes back");
    }

    fn publication(stream: &str, offset: u64) -> Publication {
        Publication {
            stream: stream.into(),
            epoch: "E".into(),
            offset,
            ts: 1,
            data: "{}".into(),
        }
    }

    #[tokio::test]
    async fn one_encoding_is_shared_by_every_subscriber() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let (a, b) = (Arc::new(conn(1, 4)), Arc::new(conn(2, 4)));
        let stream: Arc<str> = "venue:1".into();
        hub.subscribe(&stream, &a);
        hub.subscribe(&stream, &b);
        hub.deliver(&[publication("venue:1", 1), publication("other", 1)]);
        let (m1, m2) = (a.next_batch(8).await, b.next_batch(8).await);
        assert_eq!(
            m1.frames[0].as_str().as_ptr(),
            m2.frames[0].as_str().as_ptr(),
            "both subscribers got the same encoded frame"
        );
        assert_eq!(
            m1.frames.len(),
            1,
            "nothing from a stream it did not subscribe to"
        );
        assert_eq!((hub.channel_count(), hub.subscription_count()), (1, 2));
        hub.unsubscribe("venue:1", 1);
        hub.unsubscribe("venue:1", 2);
        assert_eq!((hub.channel_count(), hub.subscription_count()), (0, 0));
    }

    #[tokio::test]
    async fn a_full_queue_kicks_that_connection_only() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let (slow, fast) = (Arc::new(conn(1, 1)), Arc::new(conn(2, 16)));
        let stream: Arc<str> = "c".into();
        hub.subscribe(&stream, &slow);
        hub.subscribe(&stream, &fast);
        for i in 1..=3 {
            hub.deliver(&[publication("c", i)]);
        }
        assert_eq!(slow.kicked().await, CloseCode::SlowConsumer);
        assert!(fast.kick_code().is_none());
        assert_eq!(offsets(&fast.next_batch(2).await), [1, 2]);
        assert_eq!(offsets(&fast.next_batch(2).await), [3]);
    }

    #[tokio::test]
    async fn join_and_leave_events_fill_half_a_queue_at_most_and_never_close_it() {
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(metrics.clone());
        let c = Arc::new(conn(1, 4));
        hub.subscribe(&"c".into(), &c);
        for i in 0..10 {
            hub.deliver_event("c", 99, format!(r#"{{"type":"join","n":{i}}}"#));
        }
        assert!(c.kick_code().is_none(), "a burst of joins closes no one");
        assert_eq!(metrics.presence_events_dropped.get(), 8);
        // The other half is still there for messages.
        hub.deliver(&[publication("c", 1), publication("c", 2)]);
        assert!(c.kick_code().is_none());
        let batch = c.next_batch(8).await;
        assert_eq!(batch.frames.len(), 4, "two joins, then both messages");
        // An event is never sent to the connection it is about.
        hub.deliver_event("c", 1, "{}".into());
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(20), c.next_batch(8)).await;
        assert!(waited.is_err());
    }

    #[tokio::test]
    async fn frames_at_or_below_the_mark_or_of_a_stream_left_are_dropped() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let c = Arc::new(conn(1, 16));
        c.set_mark("c".into(), 2);
        hub.subscribe(&"c".into(), &c);
        hub.subscribe(&"venue:1".into(), &c);
        hub.deliver(&[
            publication("c", 2),
            publication("c", 3),
            publication("venue:1", 1),
        ]);
        assert!(c.remove_mark("venue:1"));
        assert_eq!(offsets(&c.next_batch(8).await), [3]);
    }

    /// A TCP pair: the server side as a lane-capable stream, and the client.
    async fn tcp_pair() -> (crate::transport::lane::SharedTcp, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (crate::transport::lane::SharedTcp::new(server), client)
    }

    /// Reads `n` unmasked short text frames' payloads' offsets.
    async fn read_offsets(client: &mut tokio::net::TcpStream, n: usize) -> Vec<u64> {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        for _ in 0..n {
            let mut head = [0u8; 2];
            client.read_exact(&mut head).await.unwrap();
            assert_eq!(head[0], 0x81);
            let mut body = vec![0u8; usize::from(head[1])];
            client.read_exact(&mut body).await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            out.push(v["offset"].as_u64().unwrap());
        }
        out
    }

    #[tokio::test]
    async fn an_open_lane_is_written_by_the_flusher_without_waking_the_session() {
        let hub = Arc::new(Hub::new(Arc::new(Metrics::new())));
        hub.start_flushers(2);
        let (tcp, mut client) = tcp_pair().await;
        let bound = QueueBound {
            frames: 16,
            bytes: usize::MAX,
        };
        let gauge = Gauge::default();
        let c = Arc::new(listening(Conn::new(
            7,
            bound,
            gauge.clone(),
            Some(tcp.lane()),
        )));
        hub.subscribe(&"c".into(), &c);
        c.offer_lane(true);
        hub.deliver(&[publication("c", 1), publication("c", 2)]);
        assert_eq!(read_offsets(&mut client, 2).await, [1, 2]);
        // The session was never asked to write.
        let woken =
            tokio::time::timeout(std::time::Duration::from_millis(50), c.next_batch(8)).await;
        assert!(woken.is_err(), "no wake-up, nothing queued");
        assert_eq!(gauge.get(), 0);
        // A session that is not idle keeps the lane closed: the frames
        // wait in the queue for it, in order.
        c.offer_lane(false);
        c.lane.as_ref().unwrap().shut();
        hub.deliver(&[publication("c", 3)]);
        assert_eq!(offsets(&c.next_batch(8).await), [3]);
        // Offered again: the flusher takes over.
        c.offer_lane(true);
        hub.deliver(&[publication("c", 4)]);
        assert_eq!(read_offsets(&mut client, 1).await, [4]);
    }

    #[tokio::test]
    async fn a_stalled_lane_hands_the_spill_and_the_rest_to_the_session() {
        let hub = Arc::new(Hub::new(Arc::new(Metrics::new())));
        hub.start_flushers(1);
        let (tcp, _client) = tcp_pair().await;
        let bound = QueueBound {
            frames: 1024,
            bytes: usize::MAX,
        };
        let c = Arc::new(listening(Conn::new(
            7,
            bound,
            Gauge::default(),
            Some(tcp.lane()),
        )));
        hub.subscribe(&"c".into(), &c);
        c.offer_lane(true);
        // Large frames the client never reads: the socket fills.
        let big = format!("\"{}\"", "x".repeat(50_000));
        let publications: Vec<_> = (1..=200)
            .map(|i| Publication {
                data: big.as_str().into(),
                ..publication("c", i)
            })
            .collect();
        hub.deliver(&publications);
        // The flusher closes the lane when the kernel stops taking bytes.
        let lane = c.lane.as_ref().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while lane.is_open() {
            assert!(
                std::time::Instant::now() < deadline,
                "the lane never stalled"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let batch = c.next_batch(1024).await;
        assert!(batch.stalled, "the session is told to write the spill");
        assert!(!c.lane.as_ref().unwrap().is_open());
        assert!(!batch.frames.is_empty(), "and what the lane did not take");
    }

    #[tokio::test]
    async fn waiters_wake_on_publish() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let stream: Arc<str> = "c".into();
        let w = hub.wait(&stream);
        hub.deliver(&[publication("c", 1)]);
        assert!(w.await);
        assert_eq!(hub.waiter_count(), 0);
    }

    #[test]
    fn a_dropped_waiter_leaves_the_hub_without_a_publish() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let stream: Arc<str> = "c".into();
        let waiters: Vec<_> = (0..5).map(|_| hub.wait(&stream)).collect();
        let other = hub.wait(&"d".into());
        assert_eq!(hub.waiter_count(), 6);
        drop(waiters);
        assert_eq!(hub.waiter_count(), 1);
        drop(other);
        assert_eq!(hub.waiter_count(), 0);
        assert!(hub.shards.iter().all(|s| s.read().waiters.is_empty()));
    }

    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl StreamWatcher for Log {
        fn watch(&self, stream: &Arc<str>) {
            self.0.lock().push(format!("+{stream}"));
        }
        fn unwatch(&self, stream: &str) {
            self.0.lock().push(format!("-{stream}"));
        }
    }

    /// The watcher hears the first listener arrive and the last leave,
    /// whether subscribers or long polls, and nothing in between.
    #[tokio::test]
    async fn the_watcher_hears_first_and_last_listeners_only() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let log = Arc::new(Log::default());
        let weak: Weak<dyn StreamWatcher> =
            Arc::downgrade(&(log.clone() as Arc<dyn StreamWatcher>));
        hub.set_watcher(weak);
        let stream: Arc<str> = "c".into();
        let (a, b) = (Arc::new(conn(1, 4)), Arc::new(conn(2, 4)));
        hub.subscribe(&stream, &a);
        hub.subscribe(&stream, &b);
        let w = hub.wait(&stream);
        hub.unsubscribe("c", 1);
        hub.unsubscribe("c", 2);
        assert_eq!(*log.0.lock(), ["+c"], "the waiter still listens");
        drop(w);
        assert_eq!(*log.0.lock(), ["+c", "-c"]);
        // A long poll answered by a publication leaves too.
        let w = hub.wait(&stream);
        hub.deliver(&[publication("c", 1)]);
        assert!(w.await);
        assert_eq!(*log.0.lock(), ["+c", "-c", "+c", "-c"]);
        hub.unsubscribe("c", 3);
        assert_eq!(log.0.lock().len(), 4, "unknown connections change nothing");
    }
}
