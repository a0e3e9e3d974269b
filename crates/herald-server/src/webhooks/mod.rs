//! Webhooks (SPEC §11): events POSTed to the application's backend, signed,
//! at least once within `limits.webhook_retry_for`.
//!
//! Every event to every URL is one delivery task that retries with backoff.
//! Deliveries waiting or in flight are counted against
//! `limits.webhook_queue` (an event past it is dropped and counted: a dead
//! backend must not grow memory without bound), and at most
//! `limits.webhook_concurrency` requests are open at once. The queue lives
//! in memory: on shutdown the node waits for it to empty, within
//! `limits.shutdown_timeout` ([`Webhooks::drain`]); events still queued then,
//! or when a node is killed, are lost with it (the cluster-once events are
//! decided before they are queued, see `occupancy.rs`).

pub mod sign;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, WebhookEvent};
use crate::metrics::Metrics;

/// First retry after this; each later one waits twice as long, up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Hook {
    url: String,
    secret: String,
    events: Vec<WebhookEvent>,
}

/// The node's webhook dispatcher.
#[derive(Debug)]
pub struct Webhooks {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    hooks: Vec<Hook>,
    client: reqwest::Client,
    /// Deliveries waiting or in flight (the bounded "queue").
    pending: AtomicUsize,
    max_pending: usize,
    retry_for: Duration,
    requests: Semaphore,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    /// Woken when the last pending delivery ends.
    idle: tokio::sync::Notify,
    /// Event ids: this node's random prefix and a counter.
    id_prefix: String,
    next_id: AtomicU64,
}

/// Frees a queue place however a delivery ends.
struct Place(Arc<Shared>);

impl Drop for Place {
    fn drop(&mut self) {
        if self.0.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
        self.0.metrics.webhook_queue.dec();
    }
}

impl Webhooks {
    /// The dispatcher for `config.webhooks`; `node_id` makes event ids
    /// unique across the nodes of a cluster.
    pub fn new(
        config: &Config,
        node_id: &str,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        let l = &config.limits;
        let hooks = config
            .webhooks
            .iter()
            .map(|h| Hook {
                url: h.url.clone(),
                secret: h.secret.clone(),
                events: h.events.clone(),
            })
            .collect();
        Self {
            shared: Arc::new(Shared {
                hooks,
                client: crate::outbound::client(l.webhook_timeout),
                pending: AtomicUsize::new(0),
                max_pending: l.webhook_queue,
                retry_for: l.webhook_retry_for,
                requests: Semaphore::new(l.webhook_concurrency),
                metrics,
                shutdown,
                idle: tokio::sync::Notify::new(),
                id_prefix: node_id.to_owned(),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Whether any webhook asks for `event`: callers skip the work of
    /// deciding an event nobody wants.
    pub fn wants(&self, event: WebhookEvent) -> bool {
        self.shared.hooks.iter().any(|h| h.events.contains(&event))
    }

    /// Queues `event` with `data` for every webhook that asks for it, under
    /// a fresh unique id.
    pub fn emit(&self, event: WebhookEvent, data: serde_json::Value) {
        let n = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", self.shared.id_prefix);
        self.emit_with_id(event, data, id);
    }

    /// Queues `event` under `id`. An event that more than one node might
    /// decide to send (after a failover, say) passes an id derived from what
    /// it is about, so receivers deduplicate it.
    pub fn emit_with_id(&self, event: WebhookEvent, data: serde_json::Value, id: String) {
        if !self.wants(event) {
            return;
        }
        let body = serde_json::json!({
            "id": id,
            "event": event.as_str(),
            "ts": crate::auth::unix_now_ms(),
            "data": data,
        });
        let body = Bytes::from(body.to_string());
        for index in 0..self.shared.hooks.len() {
            if !self.shared.hooks[index].events.contains(&event) {
                continue;
            }
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                self.dropped("shutdown");
                continue;
            };
            let s = &self.shared;
            if s.pending.fetch_add(1, Ordering::AcqRel) >= s.max_pending {
                s.pending.fetch_sub(1, Ordering::AcqRel);
                self.dropped("overflow");
                tracing::warn!(
                    event = event.as_str(),
                    "webhook queue full (limits.webhook_queue): event dropped"
                );
                continue;
            }
            s.metrics.webhook_queue.inc();
            let place = Place(s.clone());
            runtime.spawn(deliver(place, index, body.clone(), event));
        }
    }

    /// Waits until nothing is queued or `until`, then stops: deliveries
    /// still waiting are dropped (counted as `shutdown`). For shutdown,
    /// after the last events were queued.
    pub async fn drain(&self, until: tokio::time::Instant) {
        let s = &self.shared;
        loop {
            let idle = s.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if s.pending.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(until, idle).await.is_err() {
                tracing::warn!(
                    pending = s.pending.load(Ordering::Acquire),
                    "shutdown timeout: webhooks not delivered are dropped"
                );
                break;
            }
        }
        s.shutdown.cancel();
    }

    /// Deliveries waiting or in flight.
    pub fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::Acquire)
    }

    fn dropped(&self, reason: &'static str) {
        self.shared
            .metrics
            .webhooks_dropped
            .get_or_create(&[("reason", reason)])
            .inc();
    }
}

/// Sends `body` to hook `index` until it is taken (2xx), retrying with
/// backoff until `limits.webhook_retry_for` has passed.
async fn deliver(place: Place, index: usize, body: Bytes, event: WebhookEvent) {
    let s = &place.0;
    let hook = &s.hooks[index];
    let started = Instant::now();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let outcome = {
            let _permit = tokio::select! {
                p = s.requests.acquire() => p,
                () = s.shutdown.cancelled() => break drop_as(s, "shutdown"),
            };
            let header = sign::signature(&hook.secret, crate::auth::unix_now(), &body);
            s.client
                .post(&hook.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(sign::HEADER, header)
                .body(body.clone())
                .send()
                .await
        };
        match outcome {
            Ok(r) if r.status().is_success() => {
                s.metrics.webhooks_sent.inc();
                return;
            }
            Ok(r) => tracing::warn!(
                event = event.as_str(),
                status = r.status().as_u16(),
                "webhook refused; will retry"
            ),
            Err(e) => {
                tracing::warn!(event = event.as_str(), error = %e.without_url(), "webhook failed; will retry")
            }
        }
        s.metrics.webhook_attempts_failed.inc();
        let wait = jitter(backoff);
        if started.elapsed() + wait > s.retry_for {
            tracing::warn!(
                event = event.as_str(),
                "webhook not taken within limits.webhook_retry_for: event dropped"
            );
            return drop_as(s, "expired");
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = s.shutdown.cancelled() => return drop_as(s, "shutdown"),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn drop_as(s: &Shared, reason: &'static str) {
    s.metrics
        .webhooks_dropped
        .get_or_create(&[("reason", reason)])
        .inc();
}

/// `d` ± 20 %, so the retries of many events to one backend spread out.
fn jitter(d: Duration) -> Duration {
    let factor = 0.8 + rand::random::<f64>() * 0.4;
    d.mul_f64(factor)
}
