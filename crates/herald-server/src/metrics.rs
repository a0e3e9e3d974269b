//! Every metric Herald exports, named in one place, rendered in the Prometheus
//! text format at `GET /metrics`. Per node (not a process-global recorder), so
//! several nodes can live in one process, as they do in tests.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The node's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket sessions (set at scrape time).
    pub connections: Gauge,
    /// Subscriptions (set at scrape time).
    pub subscriptions: Gauge,
    /// Long polls waiting in the hub for a message (set at scrape time).
    pub long_poll_waiters: Gauge,
    /// Presence entries of this node's subscribers (SPEC §11).
    pub presence_entries: Gauge,
    /// Bytes of frames queued for WebSocket sessions, all queues together.
    pub outbound_queue_bytes: Gauge,
    /// Poll requests refused with 429 / 1005.
    pub poll_rate_limited: Counter,
    /// Users and addresses with a poll rate bucket in memory.
    pub poll_rate_keys: Gauge,
    /// Channels the engine keeps (set at scrape time).
    pub channels: Gauge,
    /// Channels and inboxes the engine keeps (set at scrape time).
    pub streams: Gauge,
    /// Bytes of message data kept (set at scrape time).
    pub history_bytes: Gauge,
    /// Bytes of the store's files on disk (set at scrape time).
    pub store_bytes: Gauge,
    /// Redis pub/sub channels subscribed (set at scrape time).
    pub remote_subscriptions: Gauge,
    /// Messages and notifications accepted for publishing.
    pub messages_published: Counter,
    /// Frames handed to connection queues.
    pub messages_delivered: Counter,
    /// Frames not queued because a connection's queue was full.
    pub messages_dropped: Counter,
    /// Live frames written straight from the fan-out through a socket's
    /// lane, with no wake-up of its session.
    pub frames_written_direct: Counter,
    /// Live frames written by their session after a wake-up (its lane was
    /// closed or stalled, or the socket has none: TLS).
    pub frames_written_by_session: Counter,
    /// Publications encoded into a frame by the hub: once each, however
    /// many subscribers share it.
    pub frames_encoded: Counter,
    /// `send`/`sendmsg` calls made through lanes (one per frame, or fewer
    /// when frames queued up and went together).
    pub lane_sends: Counter,
    /// Presence join / leave frames skipped because the connection's queue
    /// was half full (they are best effort; messages never are).
    pub presence_events_dropped: Counter,
    /// Connections closed with 4003.
    pub slow_consumer_disconnects: Counter,
    /// Commands refused with 1005.
    pub rate_limited: Counter,
    /// Engine failures (publishes or reads that got 503 / 1011).
    pub engine_errors: Counter,
    /// Idempotency keys remembered (`limits.max_idempotency_keys` at most).
    pub idempotency_keys: Gauge,
    /// Time from the hub receiving a publication to its frame being written.
    pub publish_to_send_seconds: Histogram,
    /// Descriptors the process holds, counted in `/proc/self/fd` (set at
    /// scrape time; the open-socket count where there is no `/proc`).
    pub open_fds: Gauge,
    /// The process's open-file limit (set at scrape time).
    pub fd_ceiling: Gauge,
    /// Client sockets open, HTTP and WebSocket (set at scrape time).
    pub open_sockets: Gauge,
    /// Sockets counted against `limits.max_connections_per_ip` (set at scrape time).
    pub ip_counted_sockets: Gauge,
    /// Addresses holding such sockets (set at scrape time).
    pub ip_counted_addresses: Gauge,
    /// Sockets refused at accept or at their first request, by `reason`:
    /// `per_ip`, `fd_reserve`, `fd_ceiling`.
    pub connections_refused: Family<[(&'static str, &'static str); 1], Counter>,
    /// Bytes held by WebSocket read and message-assembly buffers, all
    /// connections together (kept by each socket's drop guard).
    pub ws_read_buffer_bytes: Gauge,
    /// Webhook deliveries waiting or in flight (`limits.webhook_queue`).
    pub webhook_queue: Gauge,
    /// Webhook deliveries the backend took (2xx).
    pub webhooks_sent: Counter,
    /// Webhook attempts that failed (error, timeout or non-2xx) and were
    /// retried or given up.
    pub webhook_attempts_failed: Counter,
    /// Webhook deliveries given up, by `reason`: `overflow` (queue full),
    /// `expired` (not taken within `limits.webhook_retry_for`), `shutdown`;
    /// and `occupancy`: a channel or user change that found its queue full
    /// (caught up at the next heartbeat).
    pub webhooks_dropped: Family<[(&'static str, &'static str); 1], Counter>,
    /// Proxy requests by `kind` (`subscribe`, `connect`) and `outcome`
    /// (`allow`, `deny`, `error`).
    pub proxy_requests: Family<[(&'static str, &'static str); 2], Counter>,
    /// Subscribe decisions answered from the proxy cache.
    pub proxy_cache_hits: Counter,
    /// Subscribe decisions cached (`limits.proxy_cache_entries`).
    pub proxy_cache_entries: Gauge,
    /// Notifications waiting for `notifications.undelivered_after`
    /// (`limits.undelivered_pending`; cluster-wide on Redis).
    pub undelivered_pending: Gauge,
    /// `notification_undelivered` events this node decided to send.
    pub undelivered_fired: Counter,
    /// Notifications not watched because `limits.undelivered_pending` was
    /// reached.
    pub undelivered_untracked: Counter,
    /// Delivered marks dropped because `limits.undelivered_marks` was full.
    pub undelivered_marks_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `herald_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("herald");
        let m = Self {
            connections: Gauge::default(),
            subscriptions: Gauge::default(),
            long_poll_waiters: Gauge::default(),
            presence_entries: Gauge::default(),
            outbound_queue_bytes: Gauge::default(),
            poll_rate_limited: Counter::default(),
            poll_rate_keys: Gauge::default(),
            channels: Gauge::default(),
            streams: Gauge::default(),
            history_bytes: Gauge::default(),
            store_bytes: Gauge::default(),
            remote_subscriptions: Gauge::default(),
            messages_published: Counter::default(),
            messages_delivered: Counter::default(),
            frames_written_direct: Counter::default(),
            frames_written_by_session: Counter::default(),
            frames_encoded: Counter::default(),
            lane_sends: Counter::default(),
            presence_events_dropped: Counter::default(),
            messages_dropped: Counter::default(),
            slow_consumer_disconnects: Counter::default(),
            rate_limited: Counter::default(),
            engine_errors: Counter::default(),
            idempotency_keys: Gauge::default(),
            // 100 µs to ~13 s.
            publish_to_send_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            open_fds: Gauge::default(),
            fd_ceiling: Gauge::default(),
            open_sockets: Gauge::default(),
            ip_counted_sockets: Gauge::default(),
            ip_counted_addresses: Gauge::default(),
            connections_refused: Family::default(),
            ws_read_buffer_bytes: Gauge::default(),
            webhook_queue: Gauge::default(),
            webhooks_sent: Counter::default(),
            webhook_attempts_failed: Counter::default(),
            webhooks_dropped: Family::default(),
            proxy_requests: Family::default(),
            proxy_cache_hits: Counter::default(),
            proxy_cache_entries: Gauge::default(),
            undelivered_pending: Gauge::default(),
            undelivered_fired: Counter::default(),
            undelivered_untracked: Counter::default(),
            undelivered_marks_dropped: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Open WebSocket sessions",
            m.connections.clone(),
        );
        registry.register(
            "subscriptions",
            "Channel subscriptions and inbox listeners",
            m.subscriptions.clone(),
        );
        registry.register(
            "long_poll_waiters",
            "Long polls waiting for a message",
            m.long_poll_waiters.clone(),
        );
        registry.register(
            "presence_entries",
            "Presence entries of this node's subscribers (bounded by the subscription limits)",
            m.presence_entries.clone(),
        );
        registry.register(
            "outbound_queue_bytes",
            "Bytes of frames queued for WebSocket sessions (limits.outbound_queue_bytes each)",
            m.outbound_queue_bytes.clone(),
        );
        registry.register(
            "poll_rate_limited",
            "Poll requests refused as rate limited (429 / 1005)",
            m.poll_rate_limited.clone(),
        );
        registry.register(
            "poll_rate_keys",
            "Users and addresses with a poll rate bucket in memory",
            m.poll_rate_keys.clone(),
        );
        registry.register(
            "channels",
            "Channels the engine keeps (limits.max_channels)",
            m.channels.clone(),
        );
        registry.register(
            "streams",
            "Channels and notification inboxes the engine keeps",
            m.streams.clone(),
        );
        registry.register(
            "history_bytes",
            "Bytes of message data kept in history and inboxes (limits.max_history_bytes)",
            m.history_bytes.clone(),
        );
        registry.register(
            "store_bytes",
            "Bytes of the embedded store's files (database and WAL)",
            m.store_bytes.clone(),
        );
        registry.register(
            "remote_subscriptions",
            "Redis pub/sub channels this node subscribes to (one per stream with a local listener)",
            m.remote_subscriptions.clone(),
        );
        registry.register(
            "messages_published",
            "Messages and notifications published",
            m.messages_published.clone(),
        );
        registry.register(
            "messages_delivered",
            "Frames queued to connections",
            m.messages_delivered.clone(),
        );
        registry.register(
            "frames_written_direct",
            "Live frames written from the fan-out through a socket's lane (no session wake-up)",
            m.frames_written_direct.clone(),
        );
        registry.register(
            "frames_written_by_session",
            "Live frames written by their session after a wake-up (lane closed or stalled, or TLS)",
            m.frames_written_by_session.clone(),
        );
        registry.register(
            "frames_encoded",
            "Publications and presence events encoded by the hub (once each, shared by every subscriber)",
            m.frames_encoded.clone(),
        );
        registry.register(
            "lane_sends",
            "send/sendmsg calls made through lanes (at most one per frame)",
            m.lane_sends.clone(),
        );
        registry.register(
            "presence_events_dropped",
            "Join/leave frames skipped because the connection's queue was half full (best effort; messages never are)",
            m.presence_events_dropped.clone(),
        );
        registry.register(
            "messages_dropped",
            "Frames not queued because a connection's queue was full",
            m.messages_dropped.clone(),
        );
        registry.register(
            "slow_consumer_disconnects",
            "Connections closed as slow consumers (4003)",
            m.slow_consumer_disconnects.clone(),
        );
        registry.register(
            "rate_limited",
            "Commands refused as rate limited (1005)",
            m.rate_limited.clone(),
        );
        registry.register("engine_errors", "Engine failures", m.engine_errors.clone());
        registry.register(
            "idempotency_keys",
            "Idempotency keys remembered (in flight or within the window)",
            m.idempotency_keys.clone(),
        );
        registry.register(
            "publish_to_send_seconds",
            "Time from fan-out to the frame being written",
            m.publish_to_send_seconds.clone(),
        );
        registry.register(
            "open_fds",
            "Open file descriptors of the process",
            m.open_fds.clone(),
        );
        registry.register(
            "fd_ceiling",
            "The process's open-file limit",
            m.fd_ceiling.clone(),
        );
        registry.register(
            "open_sockets",
            "Open client sockets, HTTP and WebSocket",
            m.open_sockets.clone(),
        );
        registry.register(
            "ip_counted_sockets",
            "Sockets without a credential, counted against limits.max_connections_per_ip",
            m.ip_counted_sockets.clone(),
        );
        registry.register(
            "ip_counted_addresses",
            "Client addresses holding sockets without a credential",
            m.ip_counted_addresses.clone(),
        );
        registry.register(
            "connections_refused",
            "Sockets refused, by reason (per_ip, fd_reserve, fd_ceiling)",
            m.connections_refused.clone(),
        );
        registry.register(
            "ws_read_buffer_bytes",
            "Bytes of WebSocket read and message-assembly buffers, all connections",
            m.ws_read_buffer_bytes.clone(),
        );
        registry.register(
            "undelivered_pending",
            "Notifications waiting for notifications.undelivered_after (limits.undelivered_pending)",
            m.undelivered_pending.clone(),
        );
        registry.register(
            "undelivered_fired",
            "notification_undelivered events this node sent",
            m.undelivered_fired.clone(),
        );
        registry.register(
            "undelivered_untracked",
            "Notifications not watched for notification_undelivered: limits.undelivered_pending reached",
            m.undelivered_untracked.clone(),
        );
        registry.register(
            "undelivered_marks_dropped",
            "Delivered marks dropped: limits.undelivered_marks full",
            m.undelivered_marks_dropped.clone(),
        );
        registry.register(
            "webhook_queue",
            "Webhook deliveries waiting or in flight (limits.webhook_queue)",
            m.webhook_queue.clone(),
        );
        registry.register(
            "webhooks_sent",
            "Webhook deliveries the backend took (2xx)",
            m.webhooks_sent.clone(),
        );
        registry.register(
            "webhook_attempts_failed",
            "Webhook attempts that failed (error, timeout, non-2xx)",
            m.webhook_attempts_failed.clone(),
        );
        registry.register(
            "webhooks_dropped",
            "Webhook deliveries given up, by reason (overflow, expired, shutdown; occupancy: a channel or user change that found its queue full)",
            m.webhooks_dropped.clone(),
        );
        registry.register(
            "proxy_requests",
            "Proxy requests to the backend, by kind (subscribe, connect) and outcome (allow, deny, error)",
            m.proxy_requests.clone(),
        );
        registry.register(
            "proxy_cache_hits",
            "Subscribe decisions answered from the proxy cache",
            m.proxy_cache_hits.clone(),
        );
        registry.register(
            "proxy_cache_entries",
            "Subscribe decisions cached (limits.proxy_cache_entries)",
            m.proxy_cache_entries.clone(),
        );
        for reason in ["overflow", "expired", "shutdown"] {
            let _ = m.webhooks_dropped.get_or_create(&[("reason", reason)]);
        }
        for kind in ["subscribe", "connect"] {
            for outcome in ["allow", "deny", "error"] {
                let _ = m
                    .proxy_requests
                    .get_or_create(&[("kind", kind), ("outcome", outcome)]);
            }
        }
        // Every reason exported from the start, at 0: a series that appears
        // only at its first refusal breaks `rate()` and dashboards.
        for reason in ["per_ip", "fd_reserve", "fd_ceiling"] {
            let _ = m.connections_refused.get_or_create(&[("reason", reason)]);
        }
        Self { registry, ..m }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}
