//! One pub/sub session, on one Redis or on a Redis Cluster, behind one
//! interface for the fan-out: subscribe, unsubscribe, next message, ping.
//!
//! One Redis: a dedicated RESP2 pub/sub connection (`SUBSCRIBE`).
//!
//! A Cluster: a cluster connection speaking RESP3, whose pushes arrive
//! through a sender we give it. Channels are subscribed with `SSUBSCRIBE`,
//! so each lives on the master of its slot. The cluster client repairs
//! broken connections and re-subscribes by itself, but messages published
//! meanwhile are gone, and it does not tell us which. So any sign of that
//! — a disconnection, a shard dropping our subscription (slot moved), or
//! our own push queue overflowing — ends the session: the fan-out then
//! starts a fresh one, re-subscribes everything and catches every stream up
//! from history, exactly as after a lost connection to one Redis.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use ::redis::aio::{PubSubSink, PubSubStream, SendError};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Client, PushInfo, PushKind, Value};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::conn::cluster_builder;
use super::CALL_TIMEOUT;

/// Where a session connects.
pub(crate) enum Source {
    One(Box<Client>),
    Cluster(Vec<String>),
}

/// Bytes of pushes the cluster session may hold unread. Past it pushes are
/// dropped and the session ends (and is caught up from history), so a
/// fan-out that falls behind cannot grow memory without bound.
const PUSH_QUEUE_BYTES: usize = 32 << 20;
/// Channels (un)subscribed at once on a Cluster: `SSUBSCRIBE` takes one
/// slot's channels per call, so each goes alone, many in flight.
const CLUSTER_SUBSCRIBES_AT_ONCE: usize = 64;

/// A session that ended: the fan-out starts a new one.
pub(super) struct Lost;

/// One message: its pub/sub channel and payload.
pub(super) struct Message {
    pub channel: String,
    pub payload: Vec<u8>,
}

pub(super) enum Session {
    One {
        sink: PubSubSink,
        stream: PubSubStream,
    },
    Cluster {
        conn: ClusterConnection,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
        queue: Arc<PushQueue>,
        /// Channels we subscribed and did not unsubscribe: a `sunsubscribe`
        /// push for one of them is the shard dropping it.
        ours: HashSet<String>,
    },
}

async fn within<T, E>(call: impl std::future::Future<Output = Result<T, E>>) -> Result<T, Lost> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        _ => Err(Lost),
    }
}

impl Session {
    pub(super) async fn open(source: &Source) -> Result<Self, Lost> {
        match source {
            Source::One(client) => {
                let pubsub = within(client.get_async_pubsub()).await?;
                let (sink, stream) = pubsub.split();
                Ok(Session::One { sink, stream })
            }
            Source::Cluster(seeds) => {
                let (tx, pushes) = mpsc::unbounded_channel();
                let queue = Arc::new(PushQueue {
                    tx,
                    bytes: AtomicUsize::new(0),
                    overflowed: AtomicBool::new(false),
                });
                let client = cluster_builder(seeds)
                    .use_protocol(::redis::ProtocolVersion::RESP3)
                    .push_sender(Forward(queue.clone()))
                    .build()
                    .map_err(|_| Lost)?;
                let conn = within(client.get_async_connection()).await?;
                Ok(Session::Cluster {
                    conn,
                    pushes,
                    queue,
                    ours: HashSet::new(),
                })
            }
        }
    }

    pub(super) async fn subscribe(&mut self, channels: &[String]) -> Result<(), Lost> {
        match self {
            Session::One { sink, .. } => within(sink.subscribe(channels)).await,
            Session::Cluster { conn, ours, .. } => {
                each_channel(conn, channels, true).await?;
                ours.extend(channels.iter().cloned());
                Ok(())
            }
        }
    }

    pub(super) async fn unsubscribe(&mut self, channels: &[String]) -> Result<(), Lost> {
        match self {
            Session::One { sink, .. } => within(sink.unsubscribe(channels)).await,
            Session::Cluster { conn, ours, .. } => {
                for c in channels {
                    ours.remove(c);
                }
                each_channel(conn, channels, false).await
            }
        }
    }

    /// The next message; `Err` when the session is over.
    pub(super) async fn next(&mut self) -> Result<Message, Lost> {
        match self {
            Session::One { stream, .. } => {
                let msg = stream.next().await.ok_or(Lost)?;
                Ok(Message {
                    channel: msg.get_channel_name().to_owned(),
                    payload: msg.get_payload_bytes().to_vec(),
                })
            }
            Session::Cluster {
                pushes,
                queue,
                ours,
                ..
            } => loop {
                let push = pushes.recv().await.ok_or(Lost)?;
                queue.taken(&push);
                if queue.overflowed.load(Ordering::Acquire) {
                    tracing::warn!("redis cluster pushes fell behind; re-subscribing");
                    return Err(Lost);
                }
                match push.kind {
                    PushKind::SMessage | PushKind::Message => {
                        if let Some(m) = message(push.data) {
                            return Ok(m);
                        }
                    }
                    PushKind::Disconnection => {
                        tracing::warn!("a redis cluster connection was lost; re-subscribing");
                        return Err(Lost);
                    }
                    PushKind::SUnsubscribe => {
                        let dropped = push
                            .data
                            .first()
                            .and_then(text)
                            .is_some_and(|c| ours.contains(&c));
                        if dropped {
                            tracing::warn!("a redis cluster shard dropped a subscription (slot moved?); re-subscribing");
                            return Err(Lost);
                        }
                    }
                    _ => {}
                }
            },
        }
    }

    /// Checks that the session's connections still answer: a peer that
    /// vanished without closing TCP is found this way.
    pub(super) async fn ping(&mut self) -> Result<(), Lost> {
        match self {
            // In subscribed mode the answer is an array, not PONG.
            Session::One { sink, .. } => within(sink.ping::<Value>()).await.map(|_| ()),
            Session::Cluster { conn, .. } => {
                let ping = ::redis::cmd("PING");
                let route = ::redis::cluster_routing::RoutingInfo::MultiNode((
                    ::redis::cluster_routing::MultipleNodeRoutingInfo::AllMasters,
                    None,
                ));
                within(conn.route_command(ping, route)).await.map(|_| ())
            }
        }
    }
}

/// Subscribes (or unsubscribes) each of `channels` alone, several at once.
async fn each_channel(
    conn: &ClusterConnection,
    channels: &[String],
    subscribe: bool,
) -> Result<(), Lost> {
    for wave in channels.chunks(CLUSTER_SUBSCRIBES_AT_ONCE) {
        let mut calls = Vec::with_capacity(wave.len());
        for channel in wave {
            let mut conn = conn.clone();
            calls.push(async move {
                if subscribe {
                    within(conn.ssubscribe(channel)).await
                } else {
                    within(conn.sunsubscribe(channel)).await
                }
            });
        }
        for done in futures_util::future::join_all(calls).await {
            done?;
        }
    }
    Ok(())
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// `[channel, payload]` of a message push.
fn message(data: Vec<Value>) -> Option<Message> {
    let mut it = data.into_iter();
    let channel = text(&it.next()?)?;
    let payload = match it.next()? {
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.into_bytes(),
        _ => return None,
    };
    Some(Message { channel, payload })
}

/// The cluster session's push queue, bounded in bytes: the cluster client
/// needs a sender that never blocks, so rather than wait when full it drops
/// and flags the session as lost.
pub(super) struct PushQueue {
    tx: mpsc::UnboundedSender<PushInfo>,
    bytes: AtomicUsize,
    overflowed: AtomicBool,
}

fn push_bytes(push: &PushInfo) -> usize {
    64 + push
        .data
        .iter()
        .map(|v| match v {
            Value::BulkString(b) => b.len(),
            Value::SimpleString(s) => s.len(),
            _ => 16,
        })
        .sum::<usize>()
}

impl PushQueue {
    fn taken(&self, push: &PushInfo) {
        self.bytes.fetch_sub(push_bytes(push), Ordering::AcqRel);
    }
}

struct Forward(Arc<PushQueue>);

impl ::redis::aio::AsyncPushSender for Forward {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        let q = &self.0;
        let size = push_bytes(&info);
        if q.bytes.fetch_add(size, Ordering::AcqRel) + size > PUSH_QUEUE_BYTES {
            q.bytes.fetch_sub(size, Ordering::AcqRel);
            q.overflowed.store(true, Ordering::Release);
            return Ok(());
        }
        if q.tx.send(info).is_err() {
            q.bytes.fetch_sub(size, Ordering::AcqRel);
            return Err(SendError);
        }
        Ok(())
    }
}
