//! The occupancy and online webhooks (SPEC §11): `channel_occupied` /
//! `channel_vacated` when a channel gets its first WebSocket subscriber /
//! loses its last one, `user_online` / `user_offline` when a user gets their
//! first connection / loses their last one — cluster-wide, once per cluster.
//!
//! The hub and the session table only say "this channel (user) may have
//! changed" through [`Occupancy::channel_changed`] / [`Occupancy::user_changed`]:
//! a `try_send` into a bounded queue, so nothing waits or does I/O under a
//! hub shard lock. One task ([`run`]) takes each key, reads the node's
//! actual state (a subscriber in the hub? a session in the table?) and
//! brings the [`OccupancyStore`] in line with it. Reading the state rather
//! than trusting the message makes a burst of subscribe/unsubscribe
//! coalesce, and makes a dropped message (queue full, counted in
//! `webhooks_dropped{reason="occupancy"}`) repairable: the next heartbeat
//! compares everything the node holds with everything it has.
//!
//! The store decides whether holding or releasing made the channel (user)
//! occupied or vacated across the cluster; only then is an event queued.
//! On a single node the store is [`LocalStore`]; on the redis engine it is a
//! set of node ids per channel (user) in Redis, see
//! `engine/redis/occupancy.rs`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::WebhookEvent;
use crate::engine::EngineError;
use crate::node::Node;

/// What a membership is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A channel with WebSocket subscribers.
    Channel,
    /// A user with connections.
    User,
}

impl Kind {
    fn events(self) -> (WebhookEvent, WebhookEvent) {
        match self {
            Kind::Channel => (WebhookEvent::ChannelOccupied, WebhookEvent::ChannelVacated),
            Kind::User => (WebhookEvent::UserOnline, WebhookEvent::UserOffline),
        }
    }

    fn data(self, name: &str) -> serde_json::Value {
        match self {
            Kind::Channel => serde_json::json!({ "channel": name }),
            Kind::User => serde_json::json!({ "userId": name }),
        }
    }
}

/// A channel or a user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// Channel or user.
    pub kind: Kind,
    /// The channel name or user id.
    pub name: Arc<str>,
}

/// A transition the store decided, with the event id to send it under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// What it is about.
    pub key: Key,
    /// `true`: became occupied (online); `false`: became vacated (offline).
    pub occupied: bool,
    /// The same whichever node decides it, where two could.
    pub id: String,
}

/// Which nodes hold which channels and users.
#[async_trait]
pub trait OccupancyStore: Send + Sync {
    /// This node now holds `key`. `Some(id)` when that made it occupied
    /// across the cluster.
    async fn hold(&self, key: &Key) -> Result<Option<String>, EngineError>;
    /// This node no longer holds `key`. `Some(id)` when that left nobody.
    async fn release(&self, key: &Key) -> Result<Option<String>, EngineError>;
    /// Called every third of `presence.ttl`: says this node is alive and
    /// releases what dead nodes held. Returns the transitions that made, and
    /// whether the store did not know this node (first beat, or it was
    /// taken for dead and cleaned up after), so it must hold everything again.
    async fn heartbeat(&self, ttl: Duration) -> Result<(Vec<Decided>, bool), EngineError>;
    /// The node leaves for good (after releasing everything).
    async fn leave(&self) -> Result<(), EngineError>;
}

/// The single-node store: the node is the cluster.
#[derive(Debug)]
pub struct LocalStore {
    node: String,
    held: Mutex<HashSet<Key>>,
    next: AtomicU64,
}

impl LocalStore {
    /// An empty store for node `node` (event ids start with it).
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            held: Mutex::default(),
            next: AtomicU64::new(1),
        }
    }

    fn id(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-o{n}", self.node)
    }
}

#[async_trait]
impl OccupancyStore for LocalStore {
    async fn hold(&self, key: &Key) -> Result<Option<String>, EngineError> {
        Ok(self.held.lock().insert(key.clone()).then(|| self.id()))
    }

    async fn release(&self, key: &Key) -> Result<Option<String>, EngineError> {
        Ok(self.held.lock().remove(key).then(|| self.id()))
    }

    async fn heartbeat(&self, _ttl: Duration) -> Result<(Vec<Decided>, bool), EngineError> {
        Ok((Vec::new(), false))
    }

    async fn leave(&self) -> Result<(), EngineError> {
        Ok(())
    }
}

/// The hooks' side: a bounded queue of keys that may have changed.
#[derive(Debug)]
pub struct Occupancy {
    channels: bool,
    users: bool,
    tx: mpsc::Sender<Key>,
    rx: Mutex<Option<mpsc::Receiver<Key>>>,
    /// Set when a key was dropped: the next heartbeat compares everything.
    lost: AtomicBool,
    dropped: prometheus_client::metrics::counter::Counter,
}

impl Occupancy {
    /// `None` when no webhook asks for any of the four events, so a node
    /// without them pays nothing. `capacity` bounds the keys waiting.
    pub fn new(
        w: &crate::webhooks::Webhooks,
        metrics: &crate::metrics::Metrics,
        capacity: usize,
    ) -> Option<Arc<Self>> {
        let channels =
            w.wants(WebhookEvent::ChannelOccupied) || w.wants(WebhookEvent::ChannelVacated);
        let users = w.wants(WebhookEvent::UserOnline) || w.wants(WebhookEvent::UserOffline);
        if !channels && !users {
            return None;
        }
        let (tx, rx) = mpsc::channel(capacity.max(1));
        Some(Arc::new(Self {
            channels,
            users,
            tx,
            rx: Mutex::new(Some(rx)),
            lost: AtomicBool::new(false),
            dropped: metrics
                .webhooks_dropped
                .get_or_create(&[("reason", "occupancy")])
                .clone(),
        }))
    }

    /// `channel` may have gained its first or lost its last local
    /// subscriber. Never blocks.
    pub fn channel_changed(&self, channel: &Arc<str>) {
        if self.channels {
            self.send(Key {
                kind: Kind::Channel,
                name: channel.clone(),
            });
        }
    }

    /// `user` may have gained its first or lost its last local connection.
    /// Never blocks.
    pub fn user_changed(&self, user: &str) {
        if self.users {
            self.send(Key {
                kind: Kind::User,
                name: user.into(),
            });
        }
    }

    fn send(&self, key: Key) {
        if self.tx.try_send(key).is_err() {
            self.dropped.inc();
            self.lost.store(true, Ordering::Release);
        }
    }
}

/// Whether the node has `key` right now.
fn has(node: &Node, key: &Key) -> bool {
    match key.kind {
        Kind::Channel => node.hub.subscriber_count(&key.name) > 0,
        Kind::User => !node.users.sessions(&key.name).is_empty(),
    }
}

/// Everything the node has right now.
fn everything(node: &Node, occupancy: &Occupancy) -> HashSet<Key> {
    let mut all = HashSet::new();
    if occupancy.channels {
        let (_, channels) = node.hub.busiest_channels(usize::MAX);
        all.extend(channels.into_iter().map(|(name, _)| Key {
            kind: Kind::Channel,
            name,
        }));
    }
    if occupancy.users {
        all.extend(node.users.all_clients().into_iter().map(|(u, _)| Key {
            kind: Kind::User,
            name: u.into(),
        }));
    }
    all
}

/// The task that keeps the store in line with the node and queues the
/// events. Runs until `stop`, then releases everything the node holds
/// (firing vacated / offline where it was the last) and leaves the store.
pub async fn run(
    node: Arc<Node>,
    occupancy: Arc<Occupancy>,
    store: Arc<dyn OccupancyStore>,
    stop: CancellationToken,
) {
    let Some(mut rx) = occupancy.rx.lock().take() else {
        return;
    };
    let ttl = node.config().presence.ttl;
    let period = ttl / 3;
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut runner = Runner {
        node: &node,
        store: &*store,
        held: HashSet::new(),
        retry: false,
    };
    loop {
        tokio::select! {
            // The heartbeat before changes: a steady stream of changes must
            // not starve it, or the others would take this node for dead.
            biased;
            () = stop.cancelled() => break,
            _ = every.tick() => {
                match store.heartbeat(ttl).await {
                    Ok((decided, reclaimed)) => {
                        for d in decided {
                            runner.emit(&d.key, d.occupied, d.id);
                        }
                        if reclaimed {
                            runner.hold_again().await;
                        }
                    }
                    Err(e) => runner.failed(&e),
                }
                // Repairs keys dropped on a full queue and calls that failed.
                let lost = occupancy.lost.swap(false, Ordering::AcqRel);
                let mut keys: HashSet<Key> = runner.held.iter().cloned().collect();
                if lost || runner.retry {
                    keys.extend(everything(&node, &occupancy));
                }
                runner.retry = false;
                for key in keys {
                    runner.sync(&key).await;
                }
            }
            key = rx.recv() => match key {
                Some(key) => runner.sync(&key).await,
                None => break,
            },
        }
    }
    // Sessions are gone by now (the server waits for them first), so this
    // releases everything; keys still queued are covered by `held`.
    while let Ok(key) = rx.try_recv() {
        runner.sync(&key).await;
    }
    let held: Vec<Key> = runner.held.iter().cloned().collect();
    for key in held {
        runner.set(&key, false).await;
    }
    if !runner.held.is_empty() {
        // Leaving would delete the index the others clean up from: stay in
        // it, stale, and a survivor releases the rest after `presence.ttl`.
        tracing::warn!(
            left = runner.held.len(),
            "cannot release every channel and user now; another node releases them within presence.ttl"
        );
    } else if let Err(e) = store.leave().await {
        runner.failed(&e);
    }
}

struct Runner<'a> {
    node: &'a Node,
    store: &'a dyn OccupancyStore,
    /// What this node told the store it holds.
    held: HashSet<Key>,
    /// A call failed: the next heartbeat compares everything.
    retry: bool,
}

impl Runner<'_> {
    async fn sync(&mut self, key: &Key) {
        let has = has(self.node, key);
        if has != self.held.contains(key) {
            self.set(key, has).await;
        }
    }

    /// After the store forgot this node (its first heartbeat, or another
    /// node took it for dead): holds again what it holds, firing occupied
    /// where the cleanup had emptied a channel or user.
    async fn hold_again(&mut self) {
        let held: Vec<Key> = self.held.drain().collect();
        for key in held {
            self.set(&key, true).await;
        }
        self.retry = true;
    }

    async fn set(&mut self, key: &Key, hold: bool) {
        let decided = if hold {
            self.store.hold(key).await
        } else {
            self.store.release(key).await
        };
        match decided {
            Ok(id) => {
                if hold {
                    self.held.insert(key.clone());
                } else {
                    self.held.remove(key);
                }
                if let Some(id) = id {
                    self.emit(key, hold, id);
                }
            }
            Err(e) => {
                self.failed(&e);
            }
        }
    }

    fn emit(&self, key: &Key, occupied: bool, id: String) {
        let (on, off) = key.kind.events();
        let event = if occupied { on } else { off };
        self.node
            .webhooks
            .emit_with_id(event, key.kind.data(&key.name), id);
    }

    fn failed(&mut self, e: &EngineError) {
        self.retry = true;
        self.node.metrics.engine_errors.inc();
        tracing::warn!(error = %e, "cannot record occupancy now; retried at the next heartbeat");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, EngineKind, WebhookConfig};
    use crate::hub::{Conn, QueueBound};
    use prometheus_client::metrics::gauge::Gauge;
    use std::time::Instant;

    /// A store that only records what the node holds.
    #[derive(Default)]
    struct Recording(Mutex<HashSet<Key>>);

    #[async_trait]
    impl OccupancyStore for Recording {
        async fn hold(&self, key: &Key) -> Result<Option<String>, EngineError> {
            Ok(self.0.lock().insert(key.clone()).then(|| "h".into()))
        }
        async fn release(&self, key: &Key) -> Result<Option<String>, EngineError> {
            Ok(self.0.lock().remove(key).then(|| "r".into()))
        }
        async fn heartbeat(&self, _: Duration) -> Result<(Vec<Decided>, bool), EngineError> {
            Ok((Vec::new(), false))
        }
        async fn leave(&self) -> Result<(), EngineError> {
            Ok(())
        }
    }

    async fn eventually(what: &str, probe: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !probe() {
            assert!(Instant::now() < deadline, "not within 5s: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_change_dropped_on_a_full_queue_is_caught_up_at_the_next_heartbeat() {
        let mut config = Config::default();
        config.engine.kind = EngineKind::Memory;
        config.auth.hmac_secret = Some("a-test-secret-of-32-bytes-000000".into());
        config.presence.ttl = Duration::from_secs(1);
        config.limits.webhook_queue = 1;
        config.webhooks = vec![WebhookConfig {
            // Nothing listens: the events themselves don't matter here.
            url: "http://127.0.0.1:9/".into(),
            events: vec![WebhookEvent::ChannelOccupied, WebhookEvent::ChannelVacated],
            secret: "a-webhook-secret-0123".into(),
        }];
        let node = Node::new(config).unwrap();
        let occupancy = node.occupancy.clone().unwrap();
        let conn = Arc::new(Conn::new(
            7,
            QueueBound {
                frames: 8,
                bytes: usize::MAX,
            },
            Gauge::default(),
            None,
        ));
        let (a, b): (Arc<str>, Arc<str>) = ("room:a".into(), "room:b".into());
        // Before the task runs: the queue of one takes `a` and drops `b`.
        node.hub.subscribe(&a, &conn);
        node.hub.subscribe(&b, &conn);
        assert_eq!(occupancy.dropped.get(), 1);
        let store = Arc::new(Recording::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            node.clone(),
            occupancy.clone(),
            store.clone(),
            stop.clone(),
        ));
        eventually("both channels held", || store.0.lock().len() == 2).await;
        node.hub.unsubscribe(&a, 7);
        eventually("a released", || store.0.lock().len() == 1).await;
        // Still subscribed at stop: released on the way out.
        stop.cancel();
        task.await.unwrap();
        assert!(store.0.lock().is_empty());
    }
}
