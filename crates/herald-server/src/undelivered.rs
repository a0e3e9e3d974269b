//! The `notification_undelivered` webhook (SPEC §11): a notification that
//! reached none of its user's connections or polls within
//! `notifications.undelivered_after` is handed to the backend, once per
//! cluster, for a mobile push.
//!
//! The engine keeps each watched notification as *pending* with its
//! message ([`crate::engine::PublishRequest::undelivered_after`]), so a
//! restart of a durable node forgets none. Deliveries (a live push, a
//! replay on a resume, a poll page) are *marks*: the hub and the handlers
//! only queue them here ([`Marks::delivered`], never blocking, bounded by
//! `limits.undelivered_marks`), and one task per node writes them to the
//! engine. One timer per node claims what fell due (atomically across the
//! cluster, leased so a node that dies mid-way leaves them to another) and
//! emits the event under an id derived from the notification, so a second
//! emission after a failure is one the receiver deduplicates.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use crate::config::{Config, WebhookEvent};
use crate::engine::{HistoryFrom, PendingNotification};
use crate::hub::INBOX_PREFIX;
use crate::node::Node;

/// Pending notifications claimed per engine call.
const BATCH: usize = 256;
/// Claims per timer tick at most, so a backlog after an outage drains in
/// steps rather than one long burst (the webhook queue bounds it anyway).
const ROUNDS_PER_TICK: usize = 16;
/// How long a claim is held: a node that claimed and died leaves its
/// claims due again after this, for another node (or itself, restarted).
const LEASE: Duration = Duration::from_secs(30);
/// Marks written per engine call at most.
const MARKS_PER_WRITE: usize = 512;

/// `(inbox, epoch, offset)`: the inbox was delivered up to `offset`.
type Mark = (Arc<str>, Arc<str>, u64);

/// Where deliveries are reported; cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub(crate) struct Marks {
    tx: mpsc::Sender<Mark>,
    dropped: Counter,
}

impl Marks {
    /// Inbox `stream` reached a connection or a poll up to `offset`. A mark
    /// past `limits.undelivered_marks` waiting is dropped and counted (its
    /// notification may then fire although delivered: a push too many,
    /// never one missing).
    pub(crate) fn delivered(&self, stream: &Arc<str>, epoch: &Arc<str>, offset: u64) {
        if self
            .tx
            .try_send((stream.clone(), epoch.clone(), offset))
            .is_err()
        {
            self.dropped.inc();
        }
    }
}

/// The hook's state on a node; exists only when it is on.
#[derive(Debug)]
pub(crate) struct Undelivered {
    after: Duration,
    max_pending: u64,
    marks: Marks,
    rx: parking_lot::Mutex<Option<mpsc::Receiver<Mark>>>,
}

impl Undelivered {
    /// `None` unless `notifications.undelivered_after` is set and a webhook
    /// asks for `notification_undelivered`: nothing is tracked for nobody.
    pub(crate) fn new(
        config: &Config,
        wanted: bool,
        metrics: &crate::metrics::Metrics,
    ) -> Option<Self> {
        let after = config.notifications.undelivered_after?;
        if !wanted {
            return None;
        }
        let (tx, rx) = mpsc::channel(config.limits.undelivered_marks.max(1));
        Some(Self {
            after,
            max_pending: config.limits.undelivered_pending as u64,
            marks: Marks {
                tx,
                dropped: metrics.undelivered_marks_dropped.clone(),
            },
            rx: parking_lot::Mutex::new(Some(rx)),
        })
    }

    /// Where the hub reports live deliveries.
    pub(crate) fn marks(&self) -> Marks {
        self.marks.clone()
    }

    /// How long a new notification may wait, or `None` when
    /// `limits.undelivered_pending` are waiting already (counted).
    /// Checked against the engine's count before the publish, so
    /// concurrent publishes may pass it by the few in flight.
    pub(crate) fn track(&self, pending: u64, untracked: &Counter) -> Option<Duration> {
        if pending >= self.max_pending {
            untracked.inc();
            return None;
        }
        Some(self.after)
    }
}

/// Starts the mark writer and the timer; `None` when the hook is off.
pub(crate) fn spawn(node: &Arc<Node>) -> Option<tokio::task::JoinHandle<()>> {
    let hook = node.undelivered.as_ref()?;
    let rx = hook.rx.lock().take()?;
    let after = hook.after;
    let node = node.clone();
    Some(tokio::spawn(async move {
        let writer = write_marks(node.clone(), rx, after);
        let timer = fire_due(node, after);
        tokio::join!(writer, timer);
    }))
}

/// How long the redis engine keeps an inbox's mark: longer than any
/// notification it covers stays pending.
fn mark_keep(after: Duration) -> Duration {
    (after.saturating_mul(2) + LEASE).max(Duration::from_secs(24 * 3600))
}

async fn write_marks(node: Arc<Node>, mut rx: mpsc::Receiver<Mark>, after: Duration) {
    let keep = mark_keep(after);
    let mut buf = Vec::with_capacity(MARKS_PER_WRITE);
    while rx.recv_many(&mut buf, MARKS_PER_WRITE).await > 0 {
        // One mark per inbox: the highest offset of its latest epoch.
        let mut latest: HashMap<Arc<str>, (Arc<str>, u64)> = HashMap::new();
        for (stream, epoch, offset) in buf.drain(..) {
            match latest.get_mut(&stream) {
                Some((e, o)) if *e == epoch => *o = (*o).max(offset),
                _ => {
                    latest.insert(stream, (epoch, offset));
                }
            }
        }
        let marks: Vec<Mark> = latest.into_iter().map(|(s, (e, o))| (s, e, o)).collect();
        if let Err(e) = node.engine.mark_delivered(&marks, keep).await {
            node.metrics.engine_errors.inc();
            tracing::warn!(error = %e, marks = marks.len(), "delivered marks not recorded");
        }
    }
}

/// Every quarter of `after` (50 ms to 1 s), claims what is due and fires.
async fn fire_due(node: Arc<Node>, after: Duration) {
    let period = (after / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        for _ in 0..ROUNDS_PER_TICK {
            let now = crate::ids::unix_millis();
            let claimed = match node.engine.claim_undelivered(now, LEASE, BATCH).await {
                Ok(c) => c,
                Err(e) => {
                    node.metrics.engine_errors.inc();
                    tracing::warn!(error = %e, "claiming undelivered notifications failed");
                    break;
                }
            };
            for p in &claimed {
                if let Err(e) = fire(&node, p).await {
                    node.metrics.engine_errors.inc();
                    tracing::warn!(error = %e, "reading an undelivered notification failed");
                }
            }
            // What failed above stays leased and comes back after LEASE,
            // under the same event id.
            if let Err(e) = node.engine.finish_undelivered(&claimed).await {
                node.metrics.engine_errors.inc();
                tracing::warn!(error = %e, "finishing undelivered notifications failed");
            }
            if claimed.len() < BATCH {
                break;
            }
        }
    }
}

/// Emits the event for `p` unless its inbox changed epoch meanwhile (its
/// offsets then name other notifications). A notification trimmed from
/// history since fires with `data: null`: the user still missed it.
async fn fire(node: &Node, p: &PendingNotification) -> Result<(), crate::engine::EngineError> {
    let Some(user) = p.stream.strip_prefix(INBOX_PREFIX) else {
        return Ok(());
    };
    let page = node
        .engine
        .history(
            &p.stream,
            HistoryFrom::AfterOffset(p.offset.saturating_sub(1)),
            1,
            node.config().limits.max_message_bytes,
        )
        .await?;
    if *page.epoch != *p.epoch {
        return Ok(());
    }
    let data = page
        .messages
        .first()
        .filter(|m| m.offset == p.offset)
        .and_then(|m| serde_json::from_str::<serde_json::Value>(&m.data).ok())
        .unwrap_or(serde_json::Value::Null);
    let cursor = format!("{}:{}", p.epoch, p.offset);
    let id = format!("undelivered:{user}:{}:{}", p.epoch, p.offset);
    node.webhooks.emit_with_id(
        WebhookEvent::NotificationUndelivered,
        serde_json::json!({
            "userId": user,
            "offset": p.offset,
            "cursor": cursor,
            "data": data,
        }),
        id,
    );
    node.metrics.undelivered_fired.inc();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_outlive_what_they_cover() {
        assert_eq!(
            mark_keep(Duration::from_secs(5)),
            Duration::from_secs(24 * 3600)
        );
        assert!(mark_keep(Duration::from_secs(48 * 3600)) > Duration::from_secs(96 * 3600));
    }
}
