//! Configuration (SPEC §6): defaults, then the TOML file, then `HERALD_*`
//! environment variables, then command-line flags, validated before anything
//! binds. `herald config` prints the result with secrets masked.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use herald_protocol::validate_channel;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A configuration problem, naming the key and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A key has a bad value (or is unknown).
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// The dotted key, e.g. `limits.max_connections`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// Who may subscribe to (and poll) a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SubscribeRule {
    /// Anyone, including anonymous clients.
    Public,
    /// Any authenticated user.
    Authenticated,
    /// Users whose token's `channels` claim names the channel, or a pattern
    /// covering it (`venue:*`, `*`).
    Claim,
    /// The application's backend decides: `proxy.subscribe_url` is asked
    /// (SPEC §11 "Backend hooks") and its answer cached per (user, channel).
    Proxy,
}

/// Which engine stores history and fans messages out (SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// Single node, durable store under `engine.path`.
    Embedded,
    /// Single node, nothing kept across restarts.
    Memory,
    /// Several nodes sharing one Redis (`engine.redis_url`).
    Redis,
}

/// How hard the embedded store pushes each commit to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// fsync every group commit: an answered publish survives power loss.
    Full,
    /// fsync at checkpoints only: an answered publish survives a process crash
    /// (`kill -9`) but not a power loss.
    Normal,
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to bind, `host:port`.
    pub listen: String,
    /// Origins allowed to open a WebSocket; empty allows all.
    pub allowed_origins: Vec<String>,
    /// Development mode (SPEC §4); implied by `herald serve` with no config.
    pub dev: bool,
    /// Authentication.
    pub auth: AuthConfig,
    /// Limits on connections, frames and rates.
    pub limits: LimitsConfig,
    /// Heartbeat timing.
    pub heartbeat: HeartbeatConfig,
    /// Engine choice and location.
    pub engine: EngineConfig,
    /// History defaults for namespaces.
    pub history: RetentionConfig,
    /// Notification inbox retention, and the `notification_undelivered` hook.
    pub notifications: NotificationsConfig,
    /// Namespaces: extend the built-in ones; one with a built-in's name replaces it.
    pub namespaces: Vec<NamespaceConfig>,
    /// Logging.
    pub log: LogConfig,
    /// Presence (namespaces with `presence` or `join_leave`).
    pub presence: PresenceConfig,
    /// The application's backend deciding subscribes and connects.
    pub proxy: ProxyConfig,
    /// Signed HTTP callbacks to the application's backend.
    pub webhooks: Vec<WebhookConfig>,
    /// Serve TLS (`https://`, `wss://`) directly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// `[notifications]`: how much of each user's inbox is kept, and when an
/// unseen notification is handed to the backend for a mobile push.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsConfig {
    /// Notifications kept per user (exact).
    pub size: usize,
    /// How long a notification is kept.
    #[serde(with = "duration_str")]
    #[schemars(with = "String")]
    pub ttl: Duration,
    /// When set, a notification that reached none of its user's
    /// connections or polls within this time fires the
    /// `notification_undelivered` webhook (once per cluster). Unset: off.
    #[serde(
        default,
        with = "opt_duration_str",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub undelivered_after: Option<Duration>,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        Self {
            size: 1000,
            ttl: Duration::from_secs(30 * 24 * 3600),
            undelivered_after: None,
        }
    }
}

/// `[proxy]`: the backend hooks of SPEC §11.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Asked (POST) whether a user may subscribe to (or poll) a channel of
    /// a namespace with `subscribe = "proxy"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe_url: Option<String>,
    /// Asked (POST) who a `connect` without a token is, from its `data`
    /// and the upgrade's cookie, origin and user-agent headers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_url: Option<String>,
    /// Time the backend has to answer; a slower answer is an error
    /// (1011 / 503), never an allow.
    #[serde(with = "duration_str")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Sent as `Authorization: Bearer <secret>` with every proxy request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// How long a subscribe decision is remembered per (user, channel)
    /// when the answer gives no `ttl_s`.
    #[serde(with = "duration_str")]
    #[schemars(with = "String")]
    pub cache_ttl: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            subscribe_url: None,
            connect_url: None,
            timeout: Duration::from_secs(2),
            secret: None,
            cache_ttl: Duration::from_secs(60),
        }
    }
}

/// The events a webhook can ask for (SPEC §11 "Webhooks").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEvent {
    /// A channel got its first subscriber (cluster-wide).
    ChannelOccupied,
    /// A channel lost its last subscriber (cluster-wide).
    ChannelVacated,
    /// A user opened their first connection (cluster-wide).
    UserOnline,
    /// A user closed their last connection (cluster-wide).
    UserOffline,
    /// A notification reached none of its user's connections or polls
    /// within `notifications.undelivered_after`.
    NotificationUndelivered,
}

impl WebhookEvent {
    /// The event's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChannelOccupied => "channel_occupied",
            Self::ChannelVacated => "channel_vacated",
            Self::UserOnline => "user_online",
            Self::UserOffline => "user_offline",
            Self::NotificationUndelivered => "notification_undelivered",
        }
    }
}

/// One `[[webhooks]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed (`http://` or `https://`).
    pub url: String,
    /// Which events go there.
    pub events: Vec<WebhookEvent>,
    /// Key of the `Herald-Signature` HMAC-SHA256 (at least 16 bytes).
    pub secret: String,
}

/// `[log]`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (human-readable, the default) or `json` (one object per line).
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// `[auth]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret for client tokens.
    pub hmac_secret: Option<String>,
    /// PEM public key for RS256/ES256 client tokens.
    pub public_key_file: Option<PathBuf>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Keys for the server API (publish, notify, status).
    pub api_keys: Vec<String>,
    /// Allow `connect` without a token (public namespaces only).
    pub allow_anonymous: bool,
    /// Accept tokens without `exp`. A token *with* an `exp` in the past is
    /// refused whatever this says.
    pub allow_no_exp: bool,
    /// Clock leeway for `exp` and `nbf`.
    #[serde(with = "duration_str")]
    #[schemars(with = "String")]
    pub leeway: Duration,
    /// Time a connection has to `refresh` after being told (1009) that its
    /// token expired; then it is closed with 4005.
    #[serde(with = "duration_str")]
    #[schemars(with = "String")]
    pub refresh_grace: Duration,
    /// Largest token accepted (connect, refresh, `Authorization`); larger
    /// ones are refused before any signature check (1001 / 401).
    pub max_token_bytes: usize,
}

/// `[limits]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Connected sessions on this node.
    pub max_connections: usize,
    /// Connected sessions of one user on this node.
    pub max_connections_per_user: usize,
    /// Channels one connection may subscribe to.
    pub max_subscriptions_per_connection: usize,
    /// Largest WebSocket frame (and message) accepted; larger closes with 1009.
    pub max_frame_bytes: usize,
    /// Largest published `data`, encoded.
    pub max_message_bytes: usize,
    /// Sustained commands per second per connection. WebSocket pings, pongs
    /// and unfinished fragments spend the same tokens (before `connect` too).
    pub commands_per_second: u32,
    /// Commands a connection may send in a burst.
    pub burst: u32,
    /// Rate-limited commands in a row before the connection is closed with 4004.
    pub abuse_threshold: u32,
    /// Frames queued for one connection before it is closed as a slow consumer.
    pub outbound_queue: usize,
    /// Time a socket has to send `connect`.
    #[serde(with = "duration_str")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// Largest HTTP request body (a batch is one body).
    pub max_body_bytes: usize,
    /// Items in one `/api/batch` request.
    pub max_batch_items: usize,
    /// Long-poll requests held at once; past this, polls answer at once.
    pub max_long_poll_waiters: usize,
    /// Time an HTTP API request (body included) may take before it is
    /// answered 408; long polls get their `wait` on top of this. A publish
    /// gets this for its body (408: nothing published) and again for the
    /// store's answer (503: outcome unknown, retry with the same key).
    #[serde(with = "duration_str")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// Time a new connection has to finish its TLS handshake and send its
    /// request headers, and an idle keep-alive connection to start its next
    /// request; then the socket is closed. Bounds half-open sockets.
    #[serde(with = "duration_str")]
    #[schemars(with = "String")]
    pub header_read_timeout: Duration,
    /// Time to let connections drain on shutdown, and queued webhooks be
    /// delivered.
    #[serde(with = "duration_str")]
    #[schemars(with = "String")]
    pub shutdown_timeout: Duration,
    /// Bytes queued for one connection (live frames and replay pages) before
    /// it is closed as a slow consumer; bounds memory together with
    /// `outbound_queue`.
    pub outbound_queue_bytes: usize,
    /// Time any write (an HTTP response, a WebSocket flush) may stay stuck
    /// on a peer that does not read; then the connection is dropped.
    #[serde(with = "duration_str")]
    #[schemars(with = "String")]
    pub write_timeout: Duration,
    /// Bytes of message data in one poll page or one replay page; the page
    /// ends early (`more: true`) rather than grow past it.
    pub max_page_bytes: usize,
    /// Channels the engine keeps at once; publishing to a new channel past
    /// it is refused (1004 / 429). Notification inboxes are not counted
    /// (only API-key holders create them; their bytes count against
    /// `max_history_bytes`). Emptied channels free their place when swept.
    pub max_channels: usize,
    /// Bytes of message data the engine keeps in history and inboxes, all
    /// streams together; publishing past it is refused (1004 / 429).
    pub max_history_bytes: u64,
    /// Client publishes one user may make per second, over all its connections.
    pub client_publishes_per_second: u32,
    /// Client publishes one user may make in a burst.
    pub client_publish_burst: u32,
    /// Sustained poll requests per second per user (per IP when anonymous).
    pub poll_requests_per_second: u32,
    /// Poll requests one user (or anonymous IP) may make in a burst.
    pub poll_burst: u32,
    /// How long an idempotency key answers with its original publication.
    #[serde(with = "duration_str")]
    #[schemars(with = "String")]
    pub idempotency_window: Duration,
    /// Idempotency keys remembered at once; the oldest are forgotten first.
    pub max_idempotency_keys: usize,
    /// Sockets one address may hold without a credential (SPEC §4).
    pub max_connections_per_ip: usize,
    /// Peers (CIDRs or addresses) whose `X-Forwarded-For` / `Forwarded`
    /// header names the client's address.
    pub trusted_proxies: Vec<String>,
    /// Deepest nesting of arrays and objects accepted in message `data`.
    pub max_json_depth: usize,
    /// Time a fragmented WebSocket message may take to complete; then the
    /// socket is closed with 1008.
    #[serde(with = "duration_str")]
    #[schemars(with = "String")]
    pub fragment_timeout: Duration,
    /// Proxy requests (subscribe and connect) in flight at once on this
    /// node; past it, a request waits its turn within `proxy.timeout`.
    pub proxy_concurrency: usize,
    /// Subscribe decisions the proxy cache holds; the oldest go first.
    pub proxy_cache_entries: usize,
    /// Webhook deliveries waiting on this node (all URLs together); an
    /// event past it is dropped and counted. Also bounds the channel and
    /// user changes waiting to be decided for the occupancy and online events.
    pub webhook_queue: usize,
    /// Webhook requests in flight at once on this node.
    pub webhook_concurrency: usize,
    /// Time one webhook request may take (a slower one counts as failed
    /// and is retried).
    #[serde(with = "duration_str")]
    #[schemars(with = "String")]
    pub webhook_timeout: Duration,
    /// How long an event is retried (with backoff) before it is dropped.
    #[serde(with = "duration_str")]
    #[schemars(with = "String")]
    pub webhook_retry_for: Duration,
    /// Notifications waiting for `notifications.undelivered_after` (all
    /// users together, cluster-wide on Redis); past it, new ones are not
    /// tracked (no `notification_undelivered` for them) and counted.
    pub undelivered_pending: usize,
    /// "Delivered" marks waiting to be written to the engine on this node;
    /// past it, a mark is dropped and counted (its notification may then
    /// fire `notification_undelivered` although it was delivered).
    pub undelivered_marks: usize,
}

/// `[presence]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// On the redis engine, how long a node's presence entries (and its
    /// users' online status) outlive its last refresh: each node rewrites
    /// its own entries every third of this, so the entries of a node that
    /// was killed disappear within it. Readers skip older entries.
    #[serde(with = "duration_str")]
    #[schemars(with = "String")]
    pub ttl: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
        }
    }
}

/// `[heartbeat]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// How often the server pings.
    #[serde(with = "duration_str")]
    #[schemars(with = "String")]
    pub ping_interval: Duration,
    /// Extra time a client has to send anything after a ping interval.
    #[serde(with = "duration_str")]
    #[schemars(with = "String")]
    pub pong_timeout: Duration,
}

/// `[engine]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Which engine.
    pub kind: EngineKind,
    /// Directory of the embedded store (and of dev mode's `dev.env`).
    pub path: PathBuf,
    /// Redis URL for the redis engine:
    /// `redis://[:password@]host:port[/db]` or `rediss://` (TLS).
    pub redis_url: Option<String>,
    /// Seed nodes of a Redis Cluster (Redis 7 or later: sharded pub/sub),
    /// instead of `redis_url`: `["redis://h1:p1", "redis://h2:p2", …]`.
    /// Any reachable ones will do; the rest of the cluster is discovered.
    pub redis_cluster: Vec<String>,
    /// Prefix of every Redis key and pub/sub channel, so several Herald
    /// deployments (or tests) can share one Redis.
    pub redis_prefix: String,
    /// Durability of the embedded store.
    pub sync: SyncMode,
    /// How often expired messages and empty streams are removed.
    #[serde(with = "duration_str")]
    #[schemars(with = "String")]
    pub sweep_interval: Duration,
}

/// `[history]`: how much of each channel is kept.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Messages kept per stream (exact).
    pub size: usize,
    /// How long a message is kept.
    #[serde(with = "duration_str")]
    #[schemars(with = "String")]
    pub ttl: Duration,
}

/// One `[[namespaces]]` entry; unset options fall back to `[history]` and defaults.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// The namespace (the part of a channel name before the first `:`).
    pub name: String,
    /// Who may subscribe.
    #[serde(default = "default_subscribe")]
    pub subscribe: SubscribeRule,
    /// Messages kept per channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_size: Option<usize>,
    /// How long messages are kept.
    #[serde(
        default,
        with = "opt_duration_str",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub history_ttl: Option<Duration>,
    /// Whether clients may publish here.
    #[serde(default)]
    pub client_publish: bool,
    /// Keep a presence entry (client id, user, the token's `info` claim)
    /// for every client subscribed here, readable with the WebSocket
    /// `presence` / `presence_stats` commands and
    /// `GET /api/channels/{channel}/presence[/stats]`. Polling clients are
    /// not present.
    #[serde(default)]
    pub presence: bool,
    /// Push `join` and `leave` frames to the other subscribers when a
    /// client subscribes or leaves (implies `presence`).
    #[serde(default)]
    pub join_leave: bool,
}

fn default_subscribe() -> SubscribeRule {
    SubscribeRule::Authenticated
}

/// `[tls]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            allowed_origins: Vec::new(),
            dev: false,
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            heartbeat: HeartbeatConfig::default(),
            engine: EngineConfig::default(),
            history: RetentionConfig {
                size: 1000,
                ttl: Duration::from_secs(24 * 3600),
            },
            notifications: NotificationsConfig::default(),
            namespaces: Vec::new(),
            log: LogConfig::default(),
            presence: PresenceConfig::default(),
            proxy: ProxyConfig::default(),
            webhooks: Vec::new(),
            tls: None,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            hmac_secret: None,
            public_key_file: None,
            issuer: None,
            audience: None,
            api_keys: Vec::new(),
            allow_anonymous: false,
            allow_no_exp: false,
            leeway: Duration::from_secs(5),
            refresh_grace: Duration::from_secs(30),
            max_token_bytes: 8192,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 1_000_000,
            max_connections_per_user: 100,
            max_subscriptions_per_connection: 128,
            max_frame_bytes: 65_536,
            max_message_bytes: 65_536,
            commands_per_second: 50,
            burst: 100,
            abuse_threshold: 100,
            outbound_queue: 1024,
            connect_timeout: Duration::from_secs(10),
            max_body_bytes: 16 * 1024 * 1024,
            max_batch_items: 1000,
            max_long_poll_waiters: 10_000,
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(10),
            outbound_queue_bytes: 1_048_576,
            write_timeout: Duration::from_secs(30),
            max_page_bytes: 1_048_576,
            max_channels: 1_000_000,
            max_history_bytes: 1 << 30,
            client_publishes_per_second: 10,
            client_publish_burst: 20,
            poll_requests_per_second: 20,
            poll_burst: 60,
            idempotency_window: Duration::from_secs(300),
            max_idempotency_keys: 100_000,
            max_connections_per_ip: 1000,
            trusted_proxies: Vec::new(),
            max_json_depth: 32,
            fragment_timeout: Duration::from_secs(10),
            proxy_concurrency: 64,
            proxy_cache_entries: 100_000,
            webhook_queue: 10_000,
            webhook_concurrency: 16,
            webhook_timeout: Duration::from_secs(10),
            webhook_retry_for: Duration::from_secs(600),
            undelivered_pending: 100_000,
            undelivered_marks: 10_000,
        }
    }
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
        }
    }
}

/// An `http://` or `https://` URL with a host, for the backend hooks. The
/// message never repeats the URL: it may hold credentials.
fn validate_http_url(field: &str, raw: &str) -> Result<(), ConfigError> {
    let url = url::Url::parse(raw).map_err(|e| invalid(field, format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(field, "the scheme must be http:// or https://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(field, "has no host"));
    }
    Ok(())
}

/// One Redis URL of `field`: `redis://[:password@]host:port[/db]` or
/// `rediss://`. The message never repeats the URL: it may hold a password.
fn validate_redis_url(field: &str, raw: &str) -> Result<(), ConfigError> {
    let url = url::Url::parse(raw).map_err(|e| {
        invalid(
            field,
            format!("not a URL ({e}); expected redis://[:password@]host:port[/db]"),
        )
    })?;
    if !matches!(url.scheme(), "redis" | "rediss") {
        return Err(invalid(field, "the scheme must be redis:// or rediss://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(field, "has no host"));
    }
    let db = url.path().trim_start_matches('/');
    if !db.is_empty() && db.parse::<u16>().is_err() {
        return Err(invalid(
            field,
            "the path must be a database number (/0, /1, …)",
        ));
    }
    redis::Client::open(raw)
        .map_err(|e| invalid(field, format!("not a usable Redis URL: {}", e.category())))?;
    Ok(())
}

impl EngineConfig {
    /// The redis engine's settings: one Redis (a parseable `redis://` or
    /// `rediss://` URL) or a Cluster (a list of them), and a prefix that
    /// cannot break key hash tags.
    fn validate_redis(&self) -> Result<(), ConfigError> {
        match (&self.redis_url, self.redis_cluster.is_empty()) {
            (Some(_), false) => {
                return Err(invalid(
                    "engine.redis_cluster",
                    "set engine.redis_url (one Redis) or engine.redis_cluster (a Redis Cluster), not both",
                ))
            }
            (None, true) => {
                return Err(invalid(
                    "engine.redis_url",
                    "required with engine.kind = \"redis\" (redis://[:password@]host:port[/db]), or engine.redis_cluster for a Redis Cluster",
                ))
            }
            (Some(url), true) => validate_redis_url("engine.redis_url", url)?,
            (None, false) => {
                if self.redis_cluster.len() > 64 {
                    return Err(invalid(
                        "engine.redis_cluster",
                        "at most 64 seed nodes (the rest of the cluster is discovered)",
                    ));
                }
                for url in &self.redis_cluster {
                    validate_redis_url("engine.redis_cluster", url)?;
                    // A Cluster has one database.
                    if url::Url::parse(url).is_ok_and(|u| !u.path().trim_start_matches('/').is_empty() && u.path() != "/0") {
                        return Err(invalid(
                            "engine.redis_cluster",
                            "a Redis Cluster has only database 0; drop the /db part",
                        ));
                    }
                }
            }
        }
        let p = &self.redis_prefix;
        if p.is_empty()
            || p.len() > 64
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
        {
            return Err(invalid(
                "engine.redis_prefix",
                "must be 1 to 64 of A-Z a-z 0-9 _ - . :",
            ));
        }
        Ok(())
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            kind: EngineKind::Embedded,
            path: PathBuf::from("herald-data"),
            redis_url: None,
            redis_cluster: Vec::new(),
            redis_prefix: "herald".into(),
            sync: SyncMode::Full,
            sweep_interval: Duration::from_secs(30),
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            size: 1000,
            ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// The namespaces the product ships with (SPEC §1).
pub fn builtin_namespaces() -> Vec<NamespaceConfig> {
    ["venue_updates", "venue", "vibe_checks", "promotions"]
        .into_iter()
        .map(|name| NamespaceConfig {
            name: name.into(),
            subscribe: SubscribeRule::Authenticated,
            history_size: None,
            history_ttl: None,
            client_publish: false,
            presence: false,
            join_leave: false,
        })
        .collect()
}

/// Overrides that come from command-line flags (they beat env and file).
#[derive(Debug, Clone, Default)]
pub struct FlagOverrides {
    /// `--listen`
    pub listen: Option<String>,
    /// `--port`
    pub port: Option<u16>,
    /// `--dev`
    pub dev: bool,
    /// `--engine`
    pub engine: Option<EngineKind>,
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--log-format`
    pub log_format: Option<LogFormat>,
}

/// Where configuration came from, for `herald serve` to decide on dev mode.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The effective configuration.
    pub config: Config,
    /// Whether a config file was read.
    pub from_file: bool,
}

impl Config {
    /// Loads defaults ← `file` ← `env` ← `flags`, then validates.
    ///
    /// `env` is passed in (rather than read here) so tests can give their own.
    pub fn load(
        file: Option<&Path>,
        env: &BTreeMap<String, String>,
        flags: &FlagOverrides,
    ) -> Result<Loaded, ConfigError> {
        let mut tree = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Syntax {
                        path: path.to_owned(),
                        message: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut tree, env)?;
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(tree))
            .map_err(|e| invalid(&e.path().to_string(), e.inner().to_string()))?;
        if let Some(listen) = &flags.listen {
            config.listen = listen.clone();
        }
        if let Some(port) = flags.port {
            config.listen = with_port(&config.listen, port)?;
        }
        if flags.dev {
            config.dev = true;
        }
        if let Some(kind) = flags.engine {
            config.engine.kind = kind;
        }
        if let Some(dir) = &flags.data_dir {
            config.engine.path = dir.clone();
        }
        if let Some(format) = flags.log_format {
            config.log.format = format;
        }
        config.validate()?;
        Ok(Loaded {
            config,
            from_file: file.is_some(),
        })
    }

    /// The listen address, parsed.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            invalid(
                "listen",
                format!("{:?} is not host:port (e.g. 127.0.0.1:8080)", self.listen),
            )
        })
    }

    /// Whether a token verifier is configured (HMAC secret or public key).
    pub fn has_token_key(&self) -> bool {
        self.auth.hmac_secret.is_some() || self.auth.public_key_file.is_some()
    }

    /// Checks every value that deserializing alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let addr = self.listen_addr()?;
        if self.dev && !addr.ip().is_loopback() {
            return Err(invalid(
                "listen",
                "dev mode binds loopback only (use 127.0.0.1)",
            ));
        }
        if !self.dev
            && !addr.ip().is_loopback()
            && (self.auth.api_keys.is_empty() || !self.has_token_key())
        {
            return Err(invalid(
                "listen",
                "refusing to bind a non-loopback address without auth.api_keys and auth.hmac_secret (or auth.public_key_file)",
            ));
        }
        if let Some(secret) = &self.auth.hmac_secret {
            if secret.len() < 16 {
                return Err(invalid("auth.hmac_secret", "must be at least 16 bytes"));
            }
        }
        for (i, key) in self.auth.api_keys.iter().enumerate() {
            if key.len() < 8 {
                return Err(invalid(
                    &format!("auth.api_keys[{i}]"),
                    "must be at least 8 bytes",
                ));
            }
        }
        let l = &self.limits;
        for (key, value) in [
            ("limits.max_connections", l.max_connections),
            (
                "limits.max_connections_per_user",
                l.max_connections_per_user,
            ),
            (
                "limits.max_subscriptions_per_connection",
                l.max_subscriptions_per_connection,
            ),
            ("limits.outbound_queue", l.outbound_queue),
            ("limits.max_batch_items", l.max_batch_items),
            ("history.size", self.history.size),
            ("notifications.size", self.notifications.size),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if l.max_frame_bytes < 256 {
            return Err(invalid("limits.max_frame_bytes", "must be at least 256"));
        }
        if l.max_message_bytes < 2 {
            return Err(invalid("limits.max_message_bytes", "must be at least 2"));
        }
        if l.max_body_bytes < l.max_message_bytes {
            return Err(invalid(
                "limits.max_body_bytes",
                "must be at least limits.max_message_bytes",
            ));
        }
        if l.commands_per_second == 0 || l.burst == 0 {
            return Err(invalid(
                "limits.commands_per_second",
                "rate and burst must be at least 1",
            ));
        }
        if self.heartbeat.ping_interval < Duration::from_millis(100) {
            return Err(invalid("heartbeat.ping_interval", "must be at least 100ms"));
        }
        if l.connect_timeout.is_zero() {
            return Err(invalid("limits.connect_timeout", "must be more than 0"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, ns) in self.namespaces.iter().enumerate() {
            let key = format!("namespaces[{i}].name");
            if validate_channel(&ns.name).is_err() || ns.name.contains(':') {
                return Err(invalid(
                    &key,
                    format!("{:?} is not a namespace name", ns.name),
                ));
            }
            if !seen.insert(ns.name.as_str()) {
                return Err(invalid(
                    &key,
                    format!("namespace {:?} is defined twice", ns.name),
                ));
            }
            if ns.history_size == Some(0) {
                return Err(invalid(
                    &format!("namespaces[{i}].history_size"),
                    "must be at least 1",
                ));
            }
        }
        if self.engine.kind == EngineKind::Redis {
            self.engine.validate_redis()?;
        }
        for (key, value) in [
            ("limits.max_channels", l.max_channels),
            ("limits.max_connections_per_ip", l.max_connections_per_ip),
            ("limits.max_json_depth", l.max_json_depth),
            ("limits.max_idempotency_keys", l.max_idempotency_keys),
            ("limits.proxy_concurrency", l.proxy_concurrency),
            ("limits.proxy_cache_entries", l.proxy_cache_entries),
            ("limits.webhook_queue", l.webhook_queue),
            ("limits.webhook_concurrency", l.webhook_concurrency),
            ("limits.undelivered_pending", l.undelivered_pending),
            ("limits.undelivered_marks", l.undelivered_marks),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        for (key, rate, burst) in [
            (
                "limits.client_publishes_per_second",
                l.client_publishes_per_second,
                l.client_publish_burst,
            ),
            (
                "limits.poll_requests_per_second",
                l.poll_requests_per_second,
                l.poll_burst,
            ),
        ] {
            if rate == 0 || burst == 0 {
                return Err(invalid(key, "rate and burst must be at least 1"));
            }
        }
        // A frame of the largest message (plus its envelope) must fit, or a
        // healthy subscriber would be closed as a slow consumer.
        if l.outbound_queue_bytes < l.max_message_bytes + 1024 {
            return Err(invalid(
                "limits.outbound_queue_bytes",
                "must be at least limits.max_message_bytes + 1024",
            ));
        }
        if l.max_page_bytes < l.max_message_bytes {
            return Err(invalid(
                "limits.max_page_bytes",
                "must be at least limits.max_message_bytes",
            ));
        }
        if l.max_history_bytes < l.max_message_bytes as u64 {
            return Err(invalid(
                "limits.max_history_bytes",
                "must be at least limits.max_message_bytes",
            ));
        }
        for (key, d) in [
            ("limits.write_timeout", l.write_timeout),
            ("limits.fragment_timeout", l.fragment_timeout),
            ("limits.idempotency_window", l.idempotency_window),
            ("engine.sweep_interval", self.engine.sweep_interval),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be more than 0"));
            }
        }
        if let Err((i, why)) = crate::conns::forwarded::TrustedProxies::parse(&l.trusted_proxies) {
            return Err(invalid(&format!("limits.trusted_proxies[{i}]"), why));
        }
        if self.presence.ttl < Duration::from_secs(1) {
            return Err(invalid("presence.ttl", "must be at least 1s"));
        }
        if self.auth.max_token_bytes < 64 {
            return Err(invalid("auth.max_token_bytes", "must be at least 64"));
        }
        if l.request_timeout.is_zero() {
            return Err(invalid("limits.request_timeout", "must be more than 0"));
        }
        if l.header_read_timeout.is_zero() {
            return Err(invalid("limits.header_read_timeout", "must be more than 0"));
        }
        self.validate_hooks()?;
        if let Some(tls) = &self.tls {
            // Read and parse now so a bad file is reported before binding.
            crate::tls::acceptor(tls)?;
        }
        if self.auth.public_key_file.is_some() && self.auth.hmac_secret.is_some() {
            return Err(invalid(
                "auth.public_key_file",
                "set either auth.hmac_secret or auth.public_key_file, not both",
            ));
        }
        Ok(())
    }

    /// The backend hooks: URLs that parse, a proxy URL wherever a namespace
    /// asks for it, webhook secrets long enough to sign with.
    fn validate_hooks(&self) -> Result<(), ConfigError> {
        let p = &self.proxy;
        for (key, url) in [
            ("proxy.subscribe_url", &p.subscribe_url),
            ("proxy.connect_url", &p.connect_url),
        ] {
            if let Some(url) = url {
                validate_http_url(key, url)?;
            }
        }
        if p.timeout.is_zero() {
            return Err(invalid("proxy.timeout", "must be more than 0"));
        }
        if p.secret.as_ref().is_some_and(|s| s.is_empty()) {
            return Err(invalid(
                "proxy.secret",
                "must not be empty (leave it out instead)",
            ));
        }
        for (i, ns) in self.namespaces.iter().enumerate() {
            if ns.subscribe == SubscribeRule::Proxy && p.subscribe_url.is_none() {
                return Err(invalid(
                    &format!("namespaces[{i}].subscribe"),
                    "\"proxy\" needs proxy.subscribe_url",
                ));
            }
        }
        for (i, hook) in self.webhooks.iter().enumerate() {
            validate_http_url(&format!("webhooks[{i}].url"), &hook.url)?;
            if hook.events.is_empty() {
                return Err(invalid(
                    &format!("webhooks[{i}].events"),
                    "name at least one event",
                ));
            }
            if hook.secret.len() < 16 {
                return Err(invalid(
                    &format!("webhooks[{i}].secret"),
                    "must be at least 16 bytes",
                ));
            }
        }
        if self
            .notifications
            .undelivered_after
            .is_some_and(|d| d.is_zero())
        {
            return Err(invalid(
                "notifications.undelivered_after",
                "must be more than 0 (leave it out to turn the hook off)",
            ));
        }
        if self.limits.webhook_timeout.is_zero() {
            return Err(invalid("limits.webhook_timeout", "must be more than 0"));
        }
        if self.limits.webhook_retry_for.is_zero() {
            return Err(invalid("limits.webhook_retry_for", "must be more than 0"));
        }
        Ok(())
    }

    /// The configuration as TOML with secrets masked, for `herald config`.
    pub fn to_masked_toml(&self) -> String {
        let mut masked = self.clone();
        if masked.auth.hmac_secret.is_some() {
            masked.auth.hmac_secret = Some("********".into());
        }
        masked.auth.api_keys = masked
            .auth
            .api_keys
            .iter()
            .map(|_| "********".to_owned())
            .collect();
        if masked.proxy.secret.is_some() {
            masked.proxy.secret = Some("********".into());
        }
        for hook in &mut masked.webhooks {
            hook.secret = "********".into();
            hook.url = mask_url_credentials(&hook.url);
        }
        for url in [
            &mut masked.proxy.subscribe_url,
            &mut masked.proxy.connect_url,
        ]
        .into_iter()
        .flatten()
        {
            *url = mask_url_credentials(url);
        }
        masked.engine.redis_url = masked.engine.redis_url.as_deref().map(mask_url_credentials);
        masked.engine.redis_cluster = masked
            .engine
            .redis_cluster
            .iter()
            .map(|u| mask_url_credentials(u))
            .collect();
        toml::to_string_pretty(&masked).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// `url` with its user name, password and any `pass`/`password` query
/// value replaced by `********`; a URL that does not parse is masked whole,
/// since we cannot tell where its secret is.
fn mask_url_credentials(raw: &str) -> String {
    const MASK: &str = "********";
    let Ok(mut url) = url::Url::parse(raw) else {
        return MASK.to_owned();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some(MASK));
    }
    if !url.username().is_empty() {
        let _ = url.set_username(MASK);
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let secret = ["pass", "password"].contains(&k.to_ascii_lowercase().as_str());
                (
                    k.into_owned(),
                    if secret {
                        MASK.to_owned()
                    } else {
                        v.into_owned()
                    },
                )
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

fn with_port(listen: &str, port: u16) -> Result<String, ConfigError> {
    let addr: SocketAddr = listen.parse().map_err(|_| {
        invalid(
            "listen",
            format!("{listen:?} is not host:port (e.g. 127.0.0.1:8080)"),
        )
    })?;
    Ok(SocketAddr::new(addr.ip(), port).to_string())
}

/// Top-level keys that may be set as `HERALD_<KEY>`.
const TOP_LEVEL_ENV_KEYS: [&str; 3] = ["listen", "allowed_origins", "dev"];

/// Sections whose keys may be set as `HERALD_<SECTION>_<KEY>`.
const ENV_SECTIONS: [&str; 9] = [
    "proxy",
    "log",
    "auth",
    "limits",
    "heartbeat",
    "engine",
    "history",
    "notifications",
    "tls",
];

/// Overlays `HERALD_*` variables onto the file's table. A variable's type is
/// taken from the default configuration (lists are comma-separated); variables
/// that name no known key are ignored, except that an unknown key in a known
/// section is an error, since that is almost always a typo.
fn apply_env(tree: &mut toml::Table, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
    let port = env.get("HERALD_PORT").or_else(|| env.get("WEBSOCKET_PORT"));
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("HERALD_") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let (path, example) = if let Some(d) = defaults
            .get(&rest)
            .filter(|_| TOP_LEVEL_ENV_KEYS.contains(&rest.as_str()))
        {
            (vec![rest.clone()], Some(d.clone()))
        } else if let Some(section) = ENV_SECTIONS
            .iter()
            .find(|s| rest.starts_with(&format!("{s}_")))
        {
            let key = rest[section.len() + 1..].to_owned();
            let example = defaults.get(*section).and_then(|t| t.get(&key)).cloned();
            if example.is_none() && !OPTIONAL_KEYS.contains(&(section, key.as_str())) {
                return Err(invalid(
                    &format!("{section}.{key}"),
                    format!("unknown key (from environment variable {name})"),
                ));
            }
            (vec![section.to_string(), key], example)
        } else {
            continue;
        };
        let value = env_value(raw, example.as_ref()).map_err(|m| {
            invalid(
                &path.join("."),
                format!("{m} (from environment variable {name})"),
            )
        })?;
        set_path(tree, &path, value);
    }
    if let Some(port) = port {
        let port: u16 = port.parse().map_err(|_| {
            invalid(
                "listen",
                format!("port {port:?} from the environment is not a port number"),
            )
        })?;
        let listen = tree
            .get("listen")
            .and_then(|v| v.as_str())
            .unwrap_or("127.0.0.1:8080")
            .to_owned();
        tree.insert(
            "listen".into(),
            toml::Value::String(with_port(&listen, port)?),
        );
    }
    Ok(())
}

/// Keys that exist but have no default value to copy a type from.
const OPTIONAL_KEYS: [(&str, &str); 11] = [
    ("proxy", "subscribe_url"),
    ("proxy", "connect_url"),
    ("proxy", "secret"),
    ("notifications", "undelivered_after"),
    ("auth", "hmac_secret"),
    ("auth", "public_key_file"),
    ("auth", "issuer"),
    ("auth", "audience"),
    ("engine", "redis_url"),
    ("tls", "cert_file"),
    ("tls", "key_file"),
];

fn env_value(raw: &str, example: Option<&toml::Value>) -> Result<toml::Value, String> {
    Ok(match example {
        Some(toml::Value::Integer(_)) => toml::Value::Integer(
            raw.replace('_', "")
                .parse()
                .map_err(|_| format!("{raw:?} is not an integer"))?,
        ),
        Some(toml::Value::Boolean(_)) => match raw {
            "true" | "1" | "yes" => toml::Value::Boolean(true),
            "false" | "0" | "no" => toml::Value::Boolean(false),
            _ => return Err(format!("{raw:?} is not a boolean")),
        },
        Some(toml::Value::Array(_)) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
        _ => toml::Value::String(raw.to_owned()),
    })
}

fn set_path(tree: &mut toml::Table, path: &[String], value: toml::Value) {
    match path {
        [key] => {
            tree.insert(key.clone(), value);
        }
        [section, rest @ ..] => {
            let entry = tree
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(t) = entry {
                set_path(t, rest, value);
            }
        }
        [] => {}
    }
}

/// Durations as human strings (`"25s"`, `"500ms"`, `"30d"`) or whole seconds.
mod duration_str {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Seconds(u64),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected a duration like \"10s\", \"500ms\", \"24h\" or a number of seconds",
            )
        })? {
            Raw::Seconds(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => humantime::parse_duration(&t).map_err(|e| {
                serde::de::Error::custom(format!(
                    "{t:?} is not a duration ({e}); use e.g. \"10s\", \"500ms\", \"24h\""
                ))
            }),
        }
    }
}

mod opt_duration_str {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration_str::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        super::duration_str::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::load(None, &env(&[]), &FlagOverrides::default())
            .unwrap()
            .config;
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.limits.max_connections_per_user, 100);
        assert_eq!(c.limits.outbound_queue, 1024);
        assert_eq!(c.heartbeat.ping_interval, Duration::from_secs(25));
        assert_eq!(c.notifications.ttl, Duration::from_secs(30 * 86400));
        assert_eq!(c.engine.kind, EngineKind::Embedded);
        assert_eq!(c.limits.request_timeout, Duration::from_secs(30));
        assert_eq!(c.limits.header_read_timeout, Duration::from_secs(10));
        assert!(c.tls.is_none());
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let f = file("listen = \"127.0.0.1:1000\"\n[limits]\nburst = 7\nmax_connections = 5\n");
        let e = env(&[
            ("HERALD_LIMITS_BURST", "9"),
            ("HERALD_LISTEN", "127.0.0.1:2000"),
        ]);
        let c = Config::load(Some(f.path()), &e, &FlagOverrides::default())
            .unwrap()
            .config;
        assert_eq!(c.limits.burst, 9);
        assert_eq!(c.limits.max_connections, 5);
        assert_eq!(c.listen, "127.0.0.1:2000");
        let flags = FlagOverrides {
            port: Some(3000),
            ..Default::default()
        };
        let c = Config::load(Some(f.path()), &e, &flags).unwrap().config;
        assert_eq!(c.listen, "127.0.0.1:3000");
    }

    #[test]
    fn log_format_comes_from_file_env_or_flag() {
        let f = file("[log]\nformat = \"json\"\n");
        let c = Config::load(Some(f.path()), &env(&[]), &FlagOverrides::default());
        assert_eq!(c.unwrap().config.log.format, LogFormat::Json);
        let c = Config::load(
            None,
            &env(&[("HERALD_LOG_FORMAT", "json")]),
            &FlagOverrides::default(),
        );
        assert_eq!(c.unwrap().config.log.format, LogFormat::Json);
        let flags = FlagOverrides {
            log_format: Some(LogFormat::Text),
            ..Default::default()
        };
        let c = Config::load(Some(f.path()), &env(&[]), &flags)
            .unwrap()
            .config;
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(Config::default().log.format, LogFormat::Text);
        let bad = Config::load(
            None,
            &env(&[("HERALD_LOG_FORMAT", "xml")]),
            &FlagOverrides::default(),
        );
        assert!(bad.is_err());
    }

    #[test]
    fn websocket_port_is_honoured_when_herald_port_is_unset() {
        let c = Config::load(
            None,
            &env(&[("WEBSOCKET_PORT", "9001")]),
            &FlagOverrides::default(),
        )
        .unwrap()
        .config;
        assert_eq!(c.listen, "127.0.0.1:9001");
        let e = env(&[("WEBSOCKET_PORT", "9001"), ("HERALD_PORT", "9002")]);
        let c = Config::load(None, &e, &FlagOverrides::default())
            .unwrap()
            .config;
        assert_eq!(c.listen, "127.0.0.1:9002");
    }

    #[test]
    fn env_lists_durations_and_secrets() {
        let e = env(&[
            ("HERALD_AUTH_API_KEYS", "key-one-xx, key-two-xx"),
            ("HERALD_AUTH_HMAC_SECRET", "0123456789abcdef0123"),
            ("HERALD_HEARTBEAT_PING_INTERVAL", "500ms"),
            ("HERALD_AUTH_ALLOW_ANONYMOUS", "true"),
            ("HERALD_BIN", "/ignored/unrelated"),
        ]);
        let c = Config::load(None, &e, &FlagOverrides::default())
            .unwrap()
            .config;
        assert_eq!(c.auth.api_keys, vec!["key-one-xx", "key-two-xx"]);
        assert_eq!(c.auth.hmac_secret.as_deref(), Some("0123456789abcdef0123"));
        assert_eq!(c.heartbeat.ping_interval, Duration::from_millis(500));
        assert!(c.auth.allow_anonymous);
        let masked = c.to_masked_toml();
        assert!(
            !masked.contains("0123456789abcdef0123") && !masked.contains("key-one-xx"),
            "{masked}"
        );
    }

    #[test]
    fn masked_config_hides_redis_credentials() {
        let mut c = Config::default();
        for (url, secrets, kept) in [
            (
                "redis://cacheuser:s3cr3t-pw@cache.internal:6379/0",
                &["s3cr3t-pw", "cacheuser"][..],
                "cache.internal:6379/0",
            ),
            (
                "rediss://:s3cr3t-pw@cache:6380",
                &["s3cr3t-pw"][..],
                "cache:6380",
            ),
            (
                "redis+unix:///run/redis.sock?db=1&pass=s3cr3t-pw",
                &["s3cr3t-pw"][..],
                "db=1",
            ),
            ("not a url s3cr3t-pw", &["s3cr3t-pw"][..], "redis_url"),
        ] {
            c.engine.redis_url = Some(url.into());
            let masked = c.to_masked_toml();
            for secret in secrets {
                assert!(!masked.contains(secret), "{url}: {masked}");
            }
            assert!(
                masked.contains(kept) && masked.contains("********"),
                "{url}: {masked}"
            );
        }
        c.engine.redis_url = Some("redis://cache:6379".into());
        assert!(c.to_masked_toml().contains("redis://cache:6379"));
    }

    #[test]
    fn redis_engine_settings_are_checked_and_masked() {
        let load = |text: &str| {
            Config::load(
                Some(file(text).path()),
                &env(&[]),
                &FlagOverrides::default(),
            )
        };
        let c = load(
            "[engine]\nkind = \"redis\"\nredis_url = \"redis://:s3cr3t-pw@127.0.0.1:6379/2\"\n",
        )
        .unwrap()
        .config;
        assert_eq!(c.engine.kind, EngineKind::Redis);
        assert_eq!(c.engine.redis_prefix, "herald", "the default prefix");
        let masked = c.to_masked_toml();
        assert!(
            !masked.contains("s3cr3t-pw") && masked.contains("127.0.0.1:6379/2"),
            "{masked}"
        );
        let c = load("[engine]\nkind = \"redis\"\nredis_url = \"rediss://cache:6380\"\nredis_prefix = \"app1:herald\"\n")
            .unwrap()
            .config;
        assert_eq!(c.engine.redis_prefix, "app1:herald");
        for (text, key, says) in [
            ("[engine]\nkind = \"redis\"\n", "engine.redis_url", "required"),
            ("[engine]\nkind = \"redis\"\nredis_url = \"http://h:1\"\n", "engine.redis_url", "scheme"),
            ("[engine]\nkind = \"redis\"\nredis_url = \"redis://:pw-in-msg@h:1/x\"\n", "engine.redis_url", "database"),
            ("[engine]\nkind = \"redis\"\nredis_url = \"redis://h:1\"\nredis_prefix = \"a{b}\"\n", "engine.redis_prefix", "A-Z"),
            ("[engine]\nkind = \"redis\"\nredis_url = \"redis://h:1\"\nredis_cluster = [\"redis://h1:1\"]\n", "engine.redis_cluster", "not both"),
            ("[engine]\nkind = \"redis\"\nredis_cluster = [\"redis://h1:1\", \"tcp://:pw-in-msg@h2:1\"]\n", "engine.redis_cluster", "scheme"),
            ("[engine]\nkind = \"redis\"\nredis_cluster = [\"redis://h1:1/3\"]\n", "engine.redis_cluster", "only database 0"),
        ] {
            let err = load(text).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(says), "{text:?} gave {err}");
            assert!(!err.contains("pw-in-msg"), "an error never repeats the URL: {err}");
        }
        let e = env(&[
            ("HERALD_ENGINE_KIND", "redis"),
            ("HERALD_ENGINE_REDIS_URL", "redis://127.0.0.1:6379"),
            ("HERALD_ENGINE_REDIS_PREFIX", "envprefix"),
        ]);
        let c = Config::load(None, &e, &FlagOverrides::default())
            .unwrap()
            .config;
        assert_eq!(c.engine.redis_prefix, "envprefix");
        // A Redis Cluster by its seed nodes, their passwords masked.
        let c = load("[engine]\nkind = \"redis\"\nredis_cluster = [\"redis://:s3cr3t-pw@h1:7000\", \"rediss://h2:7001\"]\n")
            .unwrap()
            .config;
        assert_eq!(c.engine.redis_cluster.len(), 2);
        let masked = c.to_masked_toml();
        assert!(
            !masked.contains("s3cr3t-pw")
                && masked.contains("h1:7000")
                && masked.contains("rediss://h2:7001"),
            "{masked}"
        );
    }

    #[test]
    fn bad_config_names_the_key() {
        let cases = [
            (
                "[limits]\nmax_connections = \"many\"\n",
                "limits.max_connections",
            ),
            ("[limits]\nmax_conections = 5\n", "max_conections"),
            (
                "[heartbeat]\nping_interval = \"soon\"\n",
                "heartbeat.ping_interval",
            ),
            ("listen = \"nowhere\"\n", "listen"),
            ("listen = \"0.0.0.0:8080\"\n", "listen"),
            ("[[namespaces]]\nname = \"a:b\"\n", "namespaces[0].name"),
            (
                "[[namespaces]]\nname = \"chat\"\nsubscribe = \"everyone\"\n",
                "namespaces[0].subscribe",
            ),
            ("[limits]\noutbound_queue = 0\n", "limits.outbound_queue"),
        ];
        for (text, key) in cases {
            let f = file(text);
            let err = Config::load(Some(f.path()), &env(&[]), &FlagOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text:?} gave {err}");
        }
        let err = Config::load(
            None,
            &env(&[("HERALD_LIMITS_BURST", "lots")]),
            &FlagOverrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("limits.burst"), "{err}");
        let err = Config::load(
            None,
            &env(&[("HERALD_LIMITS_BRUST", "1")]),
            &FlagOverrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("limits.brust"), "{err}");
    }

    #[test]
    fn timeouts_and_tls_come_from_env_and_bad_tls_files_name_the_key() {
        let e = env(&[
            ("HERALD_LIMITS_REQUEST_TIMEOUT", "5s"),
            ("HERALD_LIMITS_HEADER_READ_TIMEOUT", "750ms"),
        ]);
        let c = Config::load(None, &e, &FlagOverrides::default())
            .unwrap()
            .config;
        assert_eq!(c.limits.request_timeout, Duration::from_secs(5));
        assert_eq!(c.limits.header_read_timeout, Duration::from_millis(750));
        let e = env(&[
            ("HERALD_TLS_CERT_FILE", "/nonexistent/cert.pem"),
            ("HERALD_TLS_KEY_FILE", "/nonexistent/key.pem"),
        ]);
        let err = Config::load(None, &e, &FlagOverrides::default()).unwrap_err();
        assert!(err.to_string().contains("tls.cert_file"), "{err}");
        let e = env(&[("HERALD_TLS_CERT_FILE", "/nonexistent/cert.pem")]);
        let err = Config::load(None, &e, &FlagOverrides::default()).unwrap_err();
        assert!(err.to_string().contains("key_file"), "{err}");
        let e = env(&[("HERALD_LIMITS_REQUEST_TIMEOUT", "0s")]);
        let err = Config::load(None, &e, &FlagOverrides::default()).unwrap_err();
        assert!(err.to_string().contains("limits.request_timeout"), "{err}");
    }

    #[test]
    fn trusted_proxies_must_be_addresses_or_cidrs() {
        let f = file("[limits]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.1\", \"::1\"]\n");
        let c = Config::load(Some(f.path()), &env(&[]), &FlagOverrides::default())
            .unwrap()
            .config;
        c.validate().unwrap();
        let mut bad = c.clone();
        bad.limits.trusted_proxies.push("lb.internal".into());
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("limits.trusted_proxies[3]"), "{e}");
    }

    #[test]
    fn public_bind_needs_secrets() {
        let f = file("listen = \"0.0.0.0:8080\"\n[auth]\nhmac_secret = \"0123456789abcdef\"\napi_keys = [\"abcdefgh\"]\n");
        assert!(Config::load(Some(f.path()), &env(&[]), &FlagOverrides::default()).is_ok());
    }
}
