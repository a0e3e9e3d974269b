//! The node: owns the hub, the engine, auth and limits, and is the one place
//! where publishing, notifying, recovery and polling are decided. Sessions and
//! HTTP handlers call it; applications that embed Herald call it directly
//! ([`Node::broadcast`], [`Node::notify`], [`Node::stats`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use herald_protocol::{
    namespace_of, validate_channel, validate_user_id, CommandError, Cursor, ErrorCode,
};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Auth, Identity};
use crate::config::{builtin_namespaces, Config, EngineKind, SubscribeRule};
use crate::engine::{
    Budget, EmbeddedEngine, Engine, EngineError, HistoryFrom, MemoryEngine, Publication,
    PublishRequest, RedisEngine, RedisTarget, Refusal, Retention, StoredKey, StoredMessage,
    SweepReport,
};
use crate::hub::{inbox_key, Conn, Hub, INBOX_PREFIX};
use crate::idempotency::{self, Claim, IdempotencyKeys, Owner, Receipt};
use crate::ids::random_token;
use crate::metrics::Metrics;
use crate::quota::PublishQuota;

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The request was refused (bad input, permission, limits).
    #[error("{}", .0.message)]
    Rejected(#[from] CommandError),
    /// The engine could not serve it; nothing was published.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Messages of `head`'s stream after read cursor `read` (SPEC §11).
fn unread_count(head: &crate::engine::HistoryPage, read: Option<&(Arc<str>, u64)>) -> u64 {
    let read = match read {
        Some((epoch, offset)) if *epoch == head.epoch => *offset,
        _ => 0,
    };
    head.top
        .saturating_sub(read.max(head.first_kept.saturating_sub(1)))
}

impl NodeError {
    /// The protocol code (1011 for engine failures).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Rejected(e) => e.code,
            Self::Engine(_) => ErrorCode::Internal,
        }
    }
}

/// Loads the keys the embedded store kept in their window, so a repeat
/// after a restart still answers the original. A store that cannot say
/// costs only that: the node starts, and says so.
fn restore_keys(keys: &IdempotencyKeys, store: &EmbeddedEngine, max: usize) {
    let kept = match store.kept_keys(max) {
        Ok(kept) => kept,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read idempotency keys kept by the store; repeats of publishes from before this start will publish again");
            return;
        }
    };
    let now = crate::ids::unix_millis();
    for k in kept {
        let remaining = std::time::Duration::from_millis(k.expire_at.saturating_sub(now));
        let receipt = Receipt {
            stream: k.stream.clone(),
            epoch: k.epoch,
            offset: k.offset,
            ts: k.ts,
        };
        keys.restore(k.stream, &k.key, receipt, remaining);
    }
}

/// How often a keyed publish presents its key when the publish it waited
/// for failed, before giving up with an engine error.
const KEY_ATTEMPTS: usize = 3;

/// Options in force for one namespace.
#[derive(Debug, Clone, Copy)]
pub struct NamespacePolicy {
    /// Who may subscribe.
    pub subscribe: SubscribeRule,
    /// How much history is kept.
    pub retention: Retention,
    /// Whether clients may publish.
    pub client_publish: bool,
    /// Whether subscribers' presence is kept (`presence` or `join_leave`).
    pub presence: bool,
    /// Whether `join` / `leave` are pushed to subscribers.
    pub join_leave: bool,
}

/// What one `publish` or `notify` asks for, before validation.
#[derive(Debug, Clone)]
pub enum PublishItem {
    /// Append to a channel.
    Broadcast {
        /// The channel name.
        channel: String,
        /// Valid JSON.
        data: String,
    },
    /// Append to a user's inbox.
    Notify {
        /// The user id.
        user: String,
        /// Valid JSON.
        data: String,
    },
}

/// The outcome of resuming a stream from a cursor.
#[derive(Debug)]
pub struct Recovery {
    /// The stream's epoch.
    pub epoch: Arc<str>,
    /// Where the client stands once the whole replay is delivered.
    pub offset: u64,
    /// Whether exactly the missed messages could be delivered.
    pub recovered: bool,
    /// Messages in the whole replay: the missed ones (or, when not
    /// recovered, the kept ones newer than the cursor).
    pub missed: u64,
    /// The replay's first page; [`Node::replay_page`] reads the rest.
    pub messages: Vec<StoredMessage>,
}

/// Where a poll starts: the protocol's parsed `since`.
pub type PollSince = herald_protocol::Since;

/// One page of a poll.
#[derive(Debug)]
pub struct PollPage {
    /// The stream's epoch.
    pub epoch: Arc<str>,
    /// Messages in offset order.
    pub messages: Vec<StoredMessage>,
    /// Where to resume.
    pub cursor: Cursor,
    /// Whether the page starts exactly where `since` pointed.
    pub recovered: bool,
    /// Whether more messages follow the page.
    pub more: bool,
}

/// Server status, as `GET /api/websocket` reports it (the seed's `getStats`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Stats {
    /// This node's id.
    pub node: String,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Open WebSocket sessions.
    pub connections: usize,
    /// Users with a live connection on this node.
    pub users: usize,
    /// Channels with a subscriber on this node.
    pub channels: usize,
    /// Channel subscriptions on this node.
    pub subscriptions: usize,
    /// Messages and notifications published through this node.
    pub messages_in: u64,
    /// Frames queued to connections on this node.
    pub messages_out: u64,
    /// The engine's name.
    #[schema(value_type = String)]
    pub engine: &'static str,
    /// Connections this process can hold (its open-file limit, less a reserve).
    pub connection_ceiling: u64,
}

/// A live session's slot; frees itself when dropped.
#[derive(Debug)]
pub struct SessionSlot {
    node: Arc<Node>,
    user: Option<String>,
    conn: u64,
    /// The task recording the session for the cluster's online status.
    online: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.node.connections.fetch_sub(1, Ordering::AcqRel);
        if let Some(user) = &self.user {
            self.node.users.remove(user, self.conn);
            if let Some(o) = &self.node.occupancy {
                o.user_changed(user);
            }
            self.node.user_offline(user, self.conn, self.online.take());
        }
    }
}

/// A Herald node.
pub struct Node {
    pub(crate) config: Arc<Config>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) engine: Arc<dyn Engine>,
    embedded: Option<Arc<EmbeddedEngine>>,
    pub(crate) auth: Auth,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) long_polls: Arc<Semaphore>,
    /// Sockets per address, the open-file reserve, client addresses.
    pub(crate) conns: crate::conns::Conns,
    idempotency: Arc<IdempotencyKeys>,
    /// Client publishes per user (all its connections together).
    client_publishes: PublishQuota,
    namespaces: HashMap<String, NamespacePolicy>,
    default_namespace: NamespacePolicy,
    id: String,
    started: Instant,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    next_conn: AtomicU64,
    connections: AtomicUsize,
    /// Each user's sessions on this node.
    pub(crate) users: crate::users::UserSessions,
    /// This node's presence entries (all of presence on single-node engines).
    pub(crate) presence: crate::presence::Local,
    /// Events for the application's backend.
    pub(crate) webhooks: crate::webhooks::Webhooks,
    /// The occupancy and online webhooks' hooks, when a webhook wants them.
    pub(crate) occupancy: Option<Arc<crate::occupancy::Occupancy>>,
    /// Outbound HTTP for the subscribe and connect proxies.
    pub(crate) proxy_client: reqwest::Client,
    /// The proxies' request budget, decision cache and requests in flight.
    pub(crate) proxy: crate::proxy::Proxy,
    /// The `notification_undelivered` hook, when on.
    pub(crate) undelivered: Option<crate::undelivered::Undelivered>,
    connection_ceiling: AtomicU64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Key material for tokens is unusable.
    #[error(transparent)]
    Key(#[from] crate::auth::KeyError),
    /// The engine could not open.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl Node {
    /// Builds a node from a validated configuration and opens its engine.
    pub fn new(config: Config) -> Result<Arc<Self>, StartError> {
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(metrics.clone()));
        let budget = Budget {
            max_channels: config.limits.max_channels,
            max_history_bytes: config.limits.max_history_bytes,
        };
        let (engine, embedded): (Arc<dyn Engine>, _) = match config.engine.kind {
            EngineKind::Memory => (Arc::new(MemoryEngine::new(hub.clone(), budget)), None),
            EngineKind::Redis => {
                let target = match (&config.engine.redis_url, &config.engine.redis_cluster) {
                    (Some(url), seeds) if seeds.is_empty() => RedisTarget::One(url),
                    (None, seeds) if !seeds.is_empty() => RedisTarget::Cluster(seeds),
                    _ => {
                        return Err(EngineError(
                            "the redis engine needs engine.redis_url or engine.redis_cluster (one of them)"
                                .into(),
                        )
                        .into())
                    }
                };
                let e = Arc::new(RedisEngine::new(
                    target,
                    &config.engine.redis_prefix,
                    hub.clone(),
                )?);
                hub.set_watcher(Arc::downgrade(&e.watcher()));
                (e as Arc<dyn Engine>, None)
            }
            EngineKind::Embedded => {
                let e = Arc::new(EmbeddedEngine::open(
                    &config.engine.path,
                    config.engine.sync,
                    hub.clone(),
                    budget,
                )?);
                (e.clone() as Arc<dyn Engine>, Some(e))
            }
        };
        let auth = Auth::new(&config.auth)?;
        let default_retention = Retention {
            size: config.history.size,
            ttl: config.history.ttl,
        };
        let default_namespace = NamespacePolicy {
            subscribe: SubscribeRule::Authenticated,
            retention: default_retention,
            client_publish: false,
            presence: false,
            join_leave: false,
        };
        let mut namespaces = HashMap::new();
        for ns in builtin_namespaces()
            .into_iter()
            .chain(config.namespaces.iter().cloned())
        {
            namespaces.insert(
                ns.name.clone(),
                NamespacePolicy {
                    subscribe: ns.subscribe,
                    retention: Retention {
                        size: ns.history_size.unwrap_or(default_retention.size),
                        ttl: ns.history_ttl.unwrap_or(default_retention.ttl),
                    },
                    client_publish: ns.client_publish,
                    presence: ns.presence || ns.join_leave,
                    join_leave: ns.join_leave,
                },
            );
        }
        let long_polls = Arc::new(Semaphore::new(config.limits.max_long_poll_waiters));
        let conns = crate::conns::Conns::new(&config.limits, metrics.clone());
        let idempotency = Arc::new(IdempotencyKeys::new(
            config.limits.idempotency_window,
            config.limits.max_idempotency_keys,
            metrics.idempotency_keys.clone(),
        ));
        if let Some(store) = &embedded {
            restore_keys(&idempotency, store, config.limits.max_idempotency_keys);
        }
        let client_publishes = PublishQuota::new(
            config.limits.client_publishes_per_second,
            config.limits.client_publish_burst,
        );
        let presence = crate::presence::Local::new(metrics.presence_entries.clone());
        let id = random_token(12);
        let shutdown = CancellationToken::new();
        // Its own token: shutdown first lets queued events go out
        // (`Node::drain_webhooks`), then stops the dispatcher.
        let webhooks =
            crate::webhooks::Webhooks::new(&config, &id, metrics.clone(), CancellationToken::new());
        let occupancy =
            crate::occupancy::Occupancy::new(&webhooks, &metrics, config.limits.webhook_queue);
        if let Some(o) = &occupancy {
            hub.set_occupancy(o.clone());
        }
        let proxy_client = crate::outbound::client(config.proxy.timeout);
        let proxy = crate::proxy::Proxy::new(&config, metrics.clone());
        let undelivered = crate::undelivered::Undelivered::new(
            &config,
            webhooks.wants(crate::config::WebhookEvent::NotificationUndelivered),
            &metrics,
        );
        if let Some(hook) = &undelivered {
            hub.set_delivered(hook.marks());
        }
        Ok(Arc::new(Self {
            undelivered,
            proxy,
            webhooks,
            occupancy,
            proxy_client,
            presence,
            client_publishes,
            config: Arc::new(config),
            hub,
            engine,
            embedded,
            auth,
            metrics,
            long_polls,
            conns,
            idempotency,
            namespaces,
            default_namespace,
            id,
            started: Instant::now(),
            shutdown,
            tracker: TaskTracker::new(),
            // A random start keeps client ids apart across the nodes of a
            // cluster (presence lists them side by side), and never 0.
            next_conn: AtomicU64::new((rand::random::<u64>() >> 12) | 1),
            connections: AtomicUsize::new(0),
            users: Default::default(),
            connection_ceiling: AtomicU64::new(0),
        }))
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Cancelled when the node starts shutting down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Tracks sessions and other tasks that must finish before exit.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Begins shutdown: sessions send `disconnect` 4000 and close.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    pub(crate) fn set_connection_ceiling(&self, ceiling: u64) {
        self.connection_ceiling.store(ceiling, Ordering::Relaxed);
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// The options of `channel`'s namespace.
    pub fn namespace(&self, channel: &str) -> &NamespacePolicy {
        self.namespaces
            .get(namespace_of(channel))
            .unwrap_or(&self.default_namespace)
    }

    /// Retention of a stream key (channel or inbox).
    pub fn retention(&self, stream: &str) -> Retention {
        if stream.starts_with(INBOX_PREFIX) {
            Retention {
                size: self.config.notifications.size,
                ttl: self.config.notifications.ttl,
            }
        } else {
            self.namespace(stream).retention
        }
    }

    /// Whether `who` may subscribe to (and poll) `channel`.
    pub fn check_subscribe(&self, who: &Identity, channel: &str) -> Result<(), CommandError> {
        if self.config.dev {
            return Ok(());
        }
        let allowed = match self.namespace(channel).subscribe {
            SubscribeRule::Public => true,
            SubscribeRule::Authenticated => who.user.is_some(),
            SubscribeRule::Claim => {
                who.user.is_some() && (who.admin || who.claims_channel(channel))
            }
            // Asked of the backend by `authorize_subscribe`; a caller that
            // cannot wait for it is refused.
            SubscribeRule::Proxy => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(CommandError::new(
                ErrorCode::PermissionDenied,
                format!("permission denied for channel {channel}"),
            ))
        }
    }

    /// Takes one client publish from the quota of `who` (per user over all
    /// its connections; per connection `conn` when anonymous): 1005 when spent.
    pub fn take_client_publish(&self, who: &Identity, conn: u64) -> Result<(), CommandError> {
        if self.client_publishes.take(who.user.as_deref(), conn) {
            Ok(())
        } else {
            self.metrics.rate_limited.inc();
            Err(CommandError::new(
                ErrorCode::RateLimited,
                format!(
                    "too many publishes: at most {} per second per user (limits.client_publishes_per_second)",
                    self.config.limits.client_publishes_per_second
                ),
            ))
        }
    }

    /// Takes a connection slot for session `conn` of `user`, or says which
    /// limit refused it.
    pub fn open_session(
        self: &Arc<Self>,
        user: Option<&str>,
        conn: &Arc<Conn>,
    ) -> Result<SessionSlot, CommandError> {
        let limits = &self.config.limits;
        if self.connections.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(CommandError::new(
                ErrorCode::LimitExceeded,
                "too many connections on this server",
            ));
        }
        if let Some(user) = user {
            if !self.users.add(user, conn, limits.max_connections_per_user) {
                self.connections.fetch_sub(1, Ordering::AcqRel);
                return Err(CommandError::new(
                    ErrorCode::LimitExceeded,
                    "too many connections for this user",
                ));
            }
        }
        if let (Some(user), Some(o)) = (user, &self.occupancy) {
            o.user_changed(user);
        }
        let online = user.and_then(|user| self.user_online(user, conn.id));
        Ok(SessionSlot {
            node: self.clone(),
            user: user.map(str::to_owned),
            conn: conn.id,
            online,
        })
    }

    /// Publishes `data` to `channel` (the seed's `broadcastToChannel`).
    pub async fn broadcast<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        data: &T,
    ) -> Result<Publication, NodeError> {
        let data = serde_json::to_string(data)
            .map_err(|e| CommandError::bad_request(format!("data is not JSON: {e}")))?;
        self.publish_one(PublishItem::Broadcast {
            channel: channel.to_owned(),
            data,
        })
        .await
    }

    /// Appends `data` to `user`'s inbox and delivers it to every connection of
    /// that user (the seed's `sendNotification`).
    pub async fn notify<T: Serialize + ?Sized>(
        &self,
        user: &str,
        data: &T,
    ) -> Result<Publication, NodeError> {
        let data = serde_json::to_string(data)
            .map_err(|e| CommandError::bad_request(format!("data is not JSON: {e}")))?;
        self.publish_one(PublishItem::Notify {
            user: user.to_owned(),
            data,
        })
        .await
    }

    /// Publishes one item whose data is already JSON text.
    pub async fn publish_one(&self, item: PublishItem) -> Result<Publication, NodeError> {
        let request = self.validate(item)?;
        let mut outcomes = self.commit(vec![request], Vec::new()).await?;
        match outcomes.pop() {
            Some(outcome) => Ok(outcome?),
            None => Err(EngineError("engine returned nothing".into()).into()),
        }
    }

    /// Publishes one item under an optional idempotency key: a key seen
    /// within `limits.idempotency_window` for the same stream answers the
    /// original receipt and stores nothing; a repeat of a publish still in
    /// flight waits for it. Dropping the returned future (a timeout) never
    /// loses the outcome: the engine call runs in a task of its own and
    /// records the key when it lands.
    pub async fn publish_keyed(
        &self,
        item: PublishItem,
        key: Option<&str>,
    ) -> Result<Receipt, NodeError> {
        let request = self.validate(item)?;
        let Some(key) = key else {
            let mut outcomes = self.commit(vec![request], Vec::new()).await?;
            return match outcomes.pop() {
                Some(outcome) => Ok(Receipt::from(&outcome?)),
                None => Err(EngineError("engine returned nothing".into()).into()),
            };
        };
        idempotency::validate_key(key)?;
        // Each turn either answers or finds the key's publish failed; a few
        // turns bound the wait when several repeats race a failing engine.
        for _ in 0..KEY_ATTEMPTS {
            match self.idempotency.claim(&request.stream, key) {
                Claim::Done(receipt) => return Ok(receipt),
                Claim::Wait(rx) => {
                    if let Some(receipt) = idempotency::wait(rx).await {
                        return Ok(receipt);
                    }
                }
                Claim::Owner(owner) => {
                    let mut request = request;
                    request.key = Some(self.stored_key(key));
                    let mut outcomes = self.commit(vec![request], vec![Some(owner)]).await?;
                    return match outcomes.pop() {
                        Some(outcome) => Ok(Receipt::from(&outcome?)),
                        None => Err(EngineError("engine returned nothing".into()).into()),
                    };
                }
            }
        }
        Err(EngineError("the publish with this idempotency key keeps failing".into()).into())
    }

    /// [`Node::publish_many`] where each item may carry an idempotency key
    /// (as [`Node::publish_keyed`]). Keys repeated within the batch publish
    /// once; an invalid key fails only its item.
    pub async fn publish_many_keyed(
        &self,
        items: Vec<(PublishItem, Option<String>)>,
    ) -> Result<Vec<Result<Receipt, CommandError>>, EngineError> {
        enum Pending {
            Ready(Result<Receipt, CommandError>),
            Commit(usize),
            Wait(tokio::sync::watch::Receiver<Option<Receipt>>),
        }
        let mut pending = Vec::with_capacity(items.len());
        let mut requests = Vec::new();
        let mut owners = Vec::new();
        for (item, key) in items {
            let mut request = match self.validate(item) {
                Ok(r) => r,
                Err(e) => {
                    pending.push(Pending::Ready(Err(e)));
                    continue;
                }
            };
            let owner = match key {
                None => None,
                Some(key) => {
                    if let Err(e) = idempotency::validate_key(&key) {
                        pending.push(Pending::Ready(Err(e)));
                        continue;
                    }
                    match self.idempotency.claim(&request.stream, &key) {
                        Claim::Done(receipt) => {
                            pending.push(Pending::Ready(Ok(receipt)));
                            continue;
                        }
                        Claim::Wait(rx) => {
                            pending.push(Pending::Wait(rx));
                            continue;
                        }
                        Claim::Owner(owner) => {
                            request.key = Some(self.stored_key(&key));
                            Some(owner)
                        }
                    }
                }
            };
            pending.push(Pending::Commit(requests.len()));
            requests.push(request);
            owners.push(owner);
        }
        let pubs = self.commit(requests, owners).await?;
        let mut results = Vec::with_capacity(pending.len());
        for p in pending {
            results.push(match p {
                Pending::Ready(r) => r,
                Pending::Commit(i) => match pubs.get(i) {
                    Some(Ok(publication)) => Ok(Receipt::from(publication)),
                    Some(Err(e)) => Err(e.clone()),
                    None => Err(CommandError::new(
                        ErrorCode::Internal,
                        "engine returned too few",
                    )),
                },
                Pending::Wait(rx) => idempotency::wait(rx).await.ok_or_else(|| {
                    CommandError::new(
                        ErrorCode::Internal,
                        "the publish with this idempotency key failed; retry",
                    )
                }),
            });
        }
        Ok(results)
    }

    /// Publishes many items in one engine call; invalid items get their own
    /// error and do not stop the others. Fails whole only if the engine fails.
    pub async fn publish_many(
        &self,
        items: Vec<PublishItem>,
    ) -> Result<Vec<Result<Publication, CommandError>>, EngineError> {
        let mut results: Vec<Option<Result<Publication, CommandError>>> =
            Vec::with_capacity(items.len());
        let mut requests = Vec::new();
        for item in items {
            match self.validate(item) {
                Ok(r) => {
                    requests.push(r);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let mut outcomes = self.commit(requests, Vec::new()).await?.into_iter();
        Ok(results
            .into_iter()
            .map(|r| match r {
                Some(r) => r,
                None => outcomes.next().unwrap_or_else(|| {
                    Err(CommandError::new(
                        ErrorCode::Internal,
                        "engine returned too few",
                    ))
                }),
            })
            .collect())
    }

    fn validate(&self, item: PublishItem) -> Result<PublishRequest, CommandError> {
        let (stream, data, notify) = match item {
            PublishItem::Broadcast { channel, data } => {
                validate_channel(&channel)?;
                (Arc::<str>::from(channel), data, false)
            }
            PublishItem::Notify { user, data } => {
                validate_user_id(&user)?;
                (inbox_key(&user), data, true)
            }
        };
        if data.len() > self.config.limits.max_message_bytes {
            return Err(CommandError::new(
                ErrorCode::MessageTooLarge,
                format!(
                    "data is {} bytes; the limit is {}",
                    data.len(),
                    self.config.limits.max_message_bytes
                ),
            ));
        }
        // Every publish path (HTTP, batch, client publish, embedding) ends
        // here, so one check covers them all.
        crate::json_shape::check(&data, self.config.limits.max_json_depth)
            .map_err(CommandError::bad_request)?;
        let retention = self.retention(&stream);
        let undelivered_after = match &self.undelivered {
            Some(hook) if notify => hook.track(
                self.engine.undelivered_pending(),
                &self.metrics.undelivered_untracked,
            ),
            _ => None,
        };
        Ok(PublishRequest {
            stream,
            data: data.into(),
            retention,
            key: None,
            undelivered_after,
        })
    }

    /// Hands `requests` to the engine in a task of its own, so that a caller
    /// that gives up (a request timeout, a dropped connection) cannot hide a
    /// commit: the task still completes `owners` (idempotency keys, one per
    /// request where given) with what landed, or releases them on failure or
    /// refusal. One outcome per request, a budget refusal being 1004 (HTTP 429).
    async fn commit(
        &self,
        requests: Vec<PublishRequest>,
        owners: Vec<Option<Owner>>,
    ) -> Result<Vec<Result<Publication, CommandError>>, EngineError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let engine = self.engine.clone();
        let metrics = self.metrics.clone();
        let task = self.tracker.spawn(async move {
            match engine.publish(requests).await {
                Ok(outcomes) => {
                    let n = outcomes.iter().filter(|o| o.is_ok()).count() as u64;
                    metrics.messages_published.inc_by(n);
                    let mut owners = owners.into_iter();
                    Ok(outcomes
                        .into_iter()
                        .map(|outcome| {
                            // A refused message releases its key (the owner
                            // is dropped), so a retry may publish afresh.
                            let owner = owners.next().flatten();
                            if let (Ok(publication), Some(owner)) = (&outcome, owner) {
                                owner.complete(Receipt::from(publication));
                            }
                            outcome.map_err(refusal_error)
                        })
                        .collect())
                }
                // Dropping the owners releases their keys.
                Err(e) => {
                    metrics.engine_errors.inc();
                    Err(e)
                }
            }
        });
        task.await
            .map_err(|e| EngineError(format!("publish task failed: {e}")))?
    }

    /// Idempotency keys held now.
    pub fn idempotency_keys(&self) -> usize {
        self.idempotency.len()
    }

    /// `key` as a durable engine stores it: until the window passes.
    fn stored_key(&self, key: &str) -> StoredKey {
        let window = self.idempotency.window().as_millis().min(u64::MAX as u128) as u64;
        StoredKey {
            key: key.into(),
            expire_at: crate::ids::unix_millis().saturating_add(window),
        }
    }

    /// Reads what a subscriber resuming from `since` missed: the replay's
    /// first page (at most `max_bytes` of data, at least one message) and
    /// where the whole replay ends. A replay is sent in pages as the socket
    /// drains ([`Node::replay_page`]), so resuming a huge history never holds
    /// more than a page per connection. Call after subscribing the
    /// connection in the hub, so that nothing falls between the two.
    pub async fn recover(
        &self,
        stream: &str,
        since: Option<&Cursor>,
        max_bytes: usize,
    ) -> Result<Recovery, EngineError> {
        let size = self.retention(stream).size;
        self.listening(stream).await?;
        let Some(since) = since else {
            let page = self
                .history(stream, HistoryFrom::AfterOffset(u64::MAX), 0, max_bytes)
                .await?;
            return Ok(Recovery {
                epoch: page.epoch,
                offset: page.top,
                recovered: true,
                missed: 0,
                messages: Vec::new(),
            });
        };
        let mut page = self
            .history(
                stream,
                HistoryFrom::AfterOffset(since.offset),
                size,
                max_bytes,
            )
            .await?;
        let same_epoch = *page.epoch == *since.epoch;
        if same_epoch && since.offset > page.top {
            // A cursor from the future: nothing to replay, and the client must refetch.
            return Ok(Recovery {
                epoch: page.epoch,
                offset: page.top,
                recovered: false,
                missed: 0,
                messages: Vec::new(),
            });
        }
        if !same_epoch {
            page = self
                .history(stream, HistoryFrom::Oldest, size, max_bytes)
                .await?;
        }
        let recovered = same_epoch && since.offset + 1 >= page.first_kept;
        // History is trimmed from the front only, so what is kept after the
        // first message of the replay is every offset up to the top.
        let missed = page
            .messages
            .first()
            .map_or(0, |m| page.top.saturating_sub(m.offset) + 1);
        Ok(Recovery {
            epoch: page.epoch,
            offset: page.top,
            recovered,
            missed,
            messages: page.messages,
        })
    }

    /// The replay's next page: messages of `stream` after offset `after`,
    /// at most `max_bytes` of data (at least one message).
    pub async fn replay_page(
        &self,
        stream: &str,
        after: u64,
        max_bytes: usize,
    ) -> Result<crate::engine::HistoryPage, EngineError> {
        let size = self.retention(stream).size;
        self.history(stream, HistoryFrom::AfterOffset(after), size, max_bytes)
            .await
    }

    /// One page of a stream for polling; the same history the live path
    /// uses, at most `limit` messages and `limits.max_page_bytes` of data.
    pub async fn poll(
        &self,
        stream: &str,
        since: &PollSince,
        limit: usize,
    ) -> Result<PollPage, EngineError> {
        let (page, recovered) = match since {
            PollSince::Oldest => (self.page(stream, HistoryFrom::Oldest, limit).await?, true),
            PollSince::Time(t) => {
                let page = self.page(stream, HistoryFrom::AfterTime(*t), limit).await?;
                // Trimmed messages are older than the first kept one: if that one
                // is no newer than `since`, nothing after `since` was lost.
                // When nothing is kept we cannot tell, and say so.
                let recovered =
                    page.first_kept <= 1 || page.first_kept_ts.is_some_and(|ts| ts <= *t);
                (page, recovered)
            }
            PollSince::Cursor(c) => {
                let page = self
                    .page(stream, HistoryFrom::AfterOffset(c.offset), limit)
                    .await?;
                if *page.epoch != *c.epoch {
                    (self.page(stream, HistoryFrom::Oldest, limit).await?, false)
                } else if c.offset > page.top {
                    let mut page = page;
                    page.messages.clear();
                    (page, false)
                } else {
                    let recovered = c.offset + 1 >= page.first_kept;
                    (page, recovered)
                }
            }
        };
        let mut messages = page.messages;
        messages.truncate(limit);
        let offset = messages.last().map_or(page.top, |m| m.offset);
        // More follow whether the page ended at `limit` or at the byte cap.
        let more = offset < page.top;
        Ok(PollPage {
            cursor: Cursor::new(page.epoch.to_string(), offset),
            epoch: page.epoch,
            messages,
            recovered,
            more,
        })
    }

    /// Waits until the engine brings `stream`'s publications to the hub (a
    /// no-op unless someone here watches it through a remote fan-out). A
    /// listener registered in the hub calls this before reading history.
    pub(crate) async fn listening(&self, stream: &str) -> Result<(), EngineError> {
        self.engine.listening(stream).await.inspect_err(|_| {
            self.metrics.engine_errors.inc();
        })
    }

    /// A history read for a poll page, capped at `limits.max_page_bytes`.
    async fn page(
        &self,
        stream: &str,
        from: HistoryFrom,
        limit: usize,
    ) -> Result<crate::engine::HistoryPage, EngineError> {
        self.history(stream, from, limit, self.config.limits.max_page_bytes)
            .await
    }

    async fn history(
        &self,
        stream: &str,
        from: HistoryFrom,
        limit: usize,
        max_bytes: usize,
    ) -> Result<crate::engine::HistoryPage, EngineError> {
        self.engine
            .history(stream, from, limit, max_bytes)
            .await
            .inspect_err(|_| {
                self.metrics.engine_errors.inc();
            })
    }

    /// Notifications of `user` kept after their read cursor (SPEC §11),
    /// counted by offsets: `top − max(read, first kept − 1)` when the read
    /// cursor is in the inbox's epoch, every kept one otherwise.
    pub async fn unread(&self, user: &str) -> Result<u64, EngineError> {
        let inbox = inbox_key(user);
        let head = self
            .history(&inbox, HistoryFrom::AfterOffset(u64::MAX), 0, 0)
            .await?;
        let read = self.engine.read_cursor(&inbox).await.inspect_err(|_| {
            self.metrics.engine_errors.inc();
        })?;
        Ok(unread_count(&head, read.as_ref()))
    }

    /// Marks `user`'s notifications read up to `cursor` and returns how many
    /// remain unread. A cursor past the inbox's newest offset is clamped to
    /// it; one of another epoch (the inbox's history was lost since) changes
    /// nothing; a read cursor never moves backwards.
    pub async fn mark_read(&self, user: &str, cursor: &Cursor) -> Result<u64, EngineError> {
        let inbox = inbox_key(user);
        let head = self
            .history(&inbox, HistoryFrom::AfterOffset(u64::MAX), 0, 0)
            .await?;
        let read = if *head.epoch == *cursor.epoch {
            let offset = cursor.offset.min(head.top);
            Some(
                self.engine
                    .mark_read(&inbox, &head.epoch, offset)
                    .await
                    .inspect_err(|_| {
                        self.metrics.engine_errors.inc();
                    })?,
            )
        } else {
            self.engine.read_cursor(&inbox).await.inspect_err(|_| {
                self.metrics.engine_errors.inc();
            })?
        };
        Ok(unread_count(&head, read.as_ref()))
    }

    /// The newest `n` messages of `stream` (at most `limits.max_page_bytes`
    /// of data), for the admin API.
    pub async fn recent_history(
        &self,
        stream: &str,
        n: usize,
    ) -> Result<crate::engine::HistoryPage, EngineError> {
        let head = self
            .history(stream, HistoryFrom::AfterOffset(u64::MAX), 0, 0)
            .await?;
        let from = head.top.saturating_sub(n as u64);
        self.page(stream, HistoryFrom::AfterOffset(from), n).await
    }

    /// Current status (the seed's `getStats`).
    pub fn stats(&self) -> Stats {
        Stats {
            node: self.id.clone(),
            uptime_s: self.started.elapsed().as_secs(),
            connections: self.connections.load(Ordering::Relaxed),
            users: self.hub.user_count(),
            channels: self.hub.channel_count(),
            subscriptions: self.hub.subscription_count(),
            // The metrics' counters are the one record of both.
            messages_in: self.metrics.messages_published.get(),
            messages_out: self.metrics.messages_delivered.get(),
            engine: self.engine.name(),
            connection_ceiling: self.connection_ceiling.load(Ordering::Relaxed),
        }
    }

    /// Tells the other nodes on the engine that this one is alive.
    pub async fn announce(&self) {
        let s = self.stats();
        let report = crate::engine::NodeReport {
            node: s.node,
            connections: s.connections as u64,
            users: s.users as u64,
            subscriptions: s.subscriptions as u64,
            uptime_s: s.uptime_s,
        };
        if let Err(e) = self.engine.announce(&report).await {
            tracing::debug!(error = %e, "cannot announce this node");
        }
    }

    /// The nodes alive on this engine; `None` for single-node engines.
    pub async fn cluster(&self) -> Result<Option<Vec<crate::engine::NodeReport>>, EngineError> {
        self.engine.nodes().await
    }

    /// Long polls being held right now.
    pub fn long_polls_held(&self) -> usize {
        self.config.limits.max_long_poll_waiters - self.long_polls.available_permits()
    }

    /// Whether the engine can take publishes.
    pub async fn ready(&self) -> bool {
        self.engine.ready().await
    }

    /// Inbox `stream` reached a connection or a poll up to `offset`: its
    /// notifications there never fire `notification_undelivered`.
    pub(crate) fn notifications_delivered(&self, stream: &Arc<str>, epoch: &Arc<str>, offset: u64) {
        if let Some(hook) = &self.undelivered {
            hook.marks().delivered(stream, epoch, offset);
        }
    }

    /// Renders `/metrics`.
    pub fn render_metrics(&self) -> String {
        let usage = self.engine.usage();
        let gauge = |n: u64| n.min(i64::MAX as u64) as i64;
        self.metrics
            .undelivered_pending
            .set(gauge(usage.undelivered));
        self.metrics.channels.set(gauge(usage.channels));
        self.metrics.streams.set(gauge(usage.streams));
        self.metrics.history_bytes.set(gauge(usage.history_bytes));
        self.metrics.store_bytes.set(gauge(usage.store_bytes));
        self.metrics
            .remote_subscriptions
            .set(gauge(usage.remote_subscriptions));
        self.metrics
            .connections
            .set(self.connections.load(Ordering::Relaxed) as i64);
        self.metrics
            .subscriptions
            .set(self.hub.subscription_count() as i64);
        self.metrics
            .long_poll_waiters
            .set(self.hub.waiter_count() as i64);
        self.conns.update_metrics();
        self.metrics.render()
    }

    /// Deletes expired history and removes empty streams nobody on this node
    /// watches; called every `engine.sweep_interval`. Also forgets idle
    /// client-publish quotas.
    pub async fn sweep(&self) -> SweepReport {
        self.client_publishes.prune();
        self.engine.sweep().await
    }

    /// Caps the embedded store's size so writes fail as on a full disk (see
    /// `EmbeddedEngine::limit_pages_for_tests`); `None` for other engines.
    #[doc(hidden)]
    pub async fn limit_store_pages_for_tests(&self, pages: u64) -> Option<u64> {
        match self.embedded.as_ref() {
            Some(e) => Some(e.limit_pages_for_tests(pages).await),
            None => None,
        }
    }

    /// Runs the occupancy and online webhooks until `stop` (a no-op when no
    /// webhook wants them); on `stop` it releases what this node holds.
    pub fn spawn_occupancy(
        self: &Arc<Self>,
        stop: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let occupancy = self.occupancy.clone()?;
        let store = self.engine.occupancy(&self.id).unwrap_or_else(|| {
            Arc::new(crate::occupancy::LocalStore::new(&self.id))
                as Arc<dyn crate::occupancy::OccupancyStore>
        });
        Some(tokio::spawn(crate::occupancy::run(
            self.clone(),
            occupancy,
            store,
            stop,
        )))
    }

    /// Waits until queued webhooks are delivered or `until`, then stops
    /// the dispatcher.
    pub async fn drain_webhooks(&self, until: tokio::time::Instant) {
        self.webhooks.drain(until).await;
    }

    /// Flushes and closes the engine; call after sessions have drained.
    pub async fn close_engine(&self) {
        self.engine.close().await;
    }
}

/// A budget refusal as the protocol's 1004 (HTTP 429).
fn refusal_error(r: Refusal) -> CommandError {
    CommandError::new(ErrorCode::LimitExceeded, r.to_string())
}
