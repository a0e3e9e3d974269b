//! The redis engine: several Herald nodes share one Redis. History, offsets
//! and epochs live in Redis; a publish is one Lua script (next offset,
//! append, trim, expire, idempotency key, PUBLISH), so offsets stay gap-free
//! whichever node publishes; every node hears publications through Redis
//! pub/sub and hands them to its hub (see [`fanout`]).
//!
//! Client: redis-rs (the `redis` crate). It is the maintained async client
//! (fred has had no release since early 2025), it has a `ConnectionManager`
//! that reconnects by itself for commands, EVALSHA with EVAL fallback
//! (`Script`), a split pub/sub connection (subscribe from one task, read
//! messages in another) and a cluster client for the later Cluster port.
//!
//! Connections per node: one multiplexed command connection (the manager)
//! and one pub/sub connection, whatever the number of channels or clients.
//!
//! On a Redis Cluster (`engine.redis_cluster`) the same holds per master:
//! a stream's keys and pub/sub channel share its hash tag, so a publish
//! script runs on the master of the stream's slot and publishes there with
//! `SPUBLISH` (sharded pub/sub, Redis 7): a publication travels to the
//! nodes subscribed on that shard, not to every shard of the cluster.

mod conn;
mod fanout;
mod occupancy;
mod presence;
mod pubsub;
mod scripts;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ::redis::{Script, Value};
use async_trait::async_trait;

use super::*;
use crate::ids::{random_token, unix_millis};

use conn::Commands;
pub use conn::RedisTarget;
pub(crate) use fanout::Watcher;

/// How long any one Redis call may take before the engine reports failure
/// (a publish then answers 503 rather than hang).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a stream's counters outlive its last publish beyond its history
/// TTL. When they go the stream restarts under a new epoch, so a cursor
/// from before gets `recovered: false`, never a silent restart at 1.
const META_GRACE: Duration = Duration::from_secs(24 * 3600);

/// How long an epoch read from a stream nothing was published to is kept
/// for its first publish to adopt (see `scripts::HISTORY`).
const UNBORN_TTL: Duration = Duration::from_secs(3600);

/// Where one stream lives in Redis.
struct Keys {
    meta: String,
    log: String,
    channel: String,
}

/// Names keys and channels under one prefix. The stream is the hash tag and
/// comes last (or before a hex part that holds no `}`), so no two streams'
/// keys can collide whatever bytes a user id holds.
#[derive(Debug, Clone)]
pub(crate) struct Naming {
    prefix: Arc<str>,
}

impl Naming {
    fn keys(&self, stream: &str) -> Keys {
        let p = &self.prefix;
        Keys {
            meta: format!("{p}:m:{{{stream}}}"),
            log: format!("{p}:l:{{{stream}}}"),
            channel: self.channel(stream),
        }
    }

    /// The sorted set of node ids by last announcement.
    /// An inbox's read cursor, in the inbox's slot.
    fn read_key(&self, stream: &str) -> String {
        format!("{}:r:{{{stream}}}", self.prefix)
    }

    /// An inbox's delivered mark, in the inbox's slot.
    fn delivered_key(&self, stream: &str) -> String {
        format!("{}:d:{{{stream}}}", self.prefix)
    }

    /// The cluster's pending notifications (one sorted set, so a claim is
    /// one atomic script in one slot).
    fn undelivered_key(&self) -> String {
        format!("{{{}:undelivered}}", self.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{{{}:nodes}}", self.prefix)
    }

    /// One node's report.
    fn node_key(&self, node: &str) -> String {
        format!("{{{}:nodes}}:{}", self.prefix, hex::encode(node))
    }

    fn channel(&self, stream: &str) -> String {
        format!("{}:p:{{{stream}}}", self.prefix)
    }

    /// A channel's presence: expiries (sorted set) and entries (hash).
    fn presence_keys(&self, channel: &str) -> (String, String) {
        let p = &self.prefix;
        (
            format!("{p}:pz:{{{channel}}}"),
            format!("{p}:ph:{{{channel}}}"),
        )
    }

    /// A user's live sessions (sorted set client → expiry), in the slot of
    /// the user's inbox.
    fn online_key(&self, user: &str) -> String {
        format!("{}:on:{{{}}}", self.prefix, crate::hub::inbox_key(user))
    }

    fn idempotency_key(&self, stream: &str, key: &str) -> String {
        format!("{}:k:{{{stream}}}:{}", self.prefix, hex::encode(key))
    }

    /// The stream a pub/sub channel carries.
    fn stream_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(&*self.prefix)?
            .strip_prefix(":p:{")?
            .strip_suffix('}')
    }
}

/// Several nodes sharing one Redis.
pub struct RedisEngine {
    conn: Commands,
    naming: Naming,
    publish: Script,
    history: Script,
    keep: Script,
    mark_read: Script,
    mark_delivered: Script,
    claim_undelivered: Script,
    /// Pending notifications, cluster-wide, as of the last track or claim.
    undelivered: std::sync::atomic::AtomicU64,
    fanout: Arc<fanout::Fanout>,
    presence: presence::RedisPresence,
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        // The pub/sub task holds the fan-out; it must not outlive the engine.
        self.fanout.stop();
    }
}

impl std::fmt::Debug for RedisEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEngine")
            .field("prefix", &self.naming.prefix)
            .finish_non_exhaustive()
    }
}

fn engine_error(e: impl std::fmt::Display) -> EngineError {
    EngineError(format!("redis: {e}"))
}

/// Runs one Redis call with the engine's deadline.
async fn bounded<T>(
    call: impl std::future::Future<Output = ::redis::RedisResult<T>>,
) -> Result<T, EngineError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(r) => r.map_err(engine_error),
        Err(_) => Err(EngineError("redis: no answer in time".into())),
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl RedisEngine {
    /// An engine on `target` under key prefix `prefix`. Connects lazily, so
    /// a node starts while Redis is down and becomes ready when it is up.
    /// Call inside a Tokio runtime: the connections run as tasks.
    pub fn new(
        target: RedisTarget<'_>,
        prefix: &str,
        sink: Arc<dyn FanoutSink>,
    ) -> Result<Self, EngineError> {
        let naming = Naming {
            prefix: prefix.into(),
        };
        let history = Script::new(scripts::HISTORY);
        let (conn, source) = match target {
            RedisTarget::One(url) => {
                let client = ::redis::Client::open(url).map_err(engine_error)?;
                (
                    Commands::one(client.clone())?,
                    fanout::Source::One(Box::new(client)),
                )
            }
            RedisTarget::Cluster(seeds) => (
                Commands::cluster(seeds)?,
                fanout::Source::Cluster(seeds.to_vec()),
            ),
        };
        let fanout =
            fanout::Fanout::start(source, conn.clone(), naming.clone(), history.clone(), sink);
        let presence = presence::RedisPresence::new(conn.clone(), naming.clone());
        Ok(Self {
            presence,
            conn,
            naming,
            publish: Script::new(scripts::PUBLISH),
            history,
            keep: Script::new(scripts::KEEP),
            mark_read: Script::new(scripts::MARK_READ),
            mark_delivered: Script::new(scripts::MARK_DELIVERED),
            claim_undelivered: Script::new(scripts::CLAIM_UNDELIVERED),
            undelivered: Default::default(),
            fanout,
        })
    }

    /// Adds the published notifications that `track` asks for to the
    /// pending set, due `undelivered_after` after their publish time.
    async fn track_undelivered(
        &self,
        track: &[Option<Duration>],
        outcomes: &[Outcome],
    ) -> Result<(), EngineError> {
        let key = self.naming.undelivered_key();
        // NX: a repeat of an idempotent notify answers the original
        // publication and must not move its due time.
        let mut add = ::redis::cmd("ZADD");
        add.arg(&key).arg("NX");
        let mut any = false;
        for (after, outcome) in track.iter().zip(outcomes) {
            if let (Some(after), Ok(p)) = (after, outcome) {
                add.arg(expire_at(p.ts, *after))
                    .arg(format!("{} {} {}", p.epoch, p.offset, p.stream));
                any = true;
            }
        }
        // Every one refused by a budget: nothing to add (an empty ZADD is
        // an error).
        if !any {
            return Ok(());
        }
        let mut pipe = ::redis::pipe();
        pipe.add_command(add).ignore().cmd("ZCARD").arg(&key);
        let mut conn = self.conn.clone();
        let (count,): (u64,) = bounded(pipe.query_async(&mut conn)).await?;
        self.undelivered
            .store(count, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    async fn remove_pending(&self, members: Vec<String>) -> Result<(), EngineError> {
        let mut conn = self.conn.clone();
        let _: i64 = bounded(
            ::redis::cmd("ZREM")
                .arg(self.naming.undelivered_key())
                .arg(members)
                .query_async(&mut conn),
        )
        .await?;
        Ok(())
    }

    /// The hub's hook: which streams this node listens to.
    pub(crate) fn watcher(&self) -> Arc<dyn Watcher> {
        self.fanout.clone()
    }

    async fn publish_one(&self, req: PublishRequest) -> Result<Publication, EngineError> {
        let (keys, args) = self.publish_args(&req, unix_millis());
        let mut call = self.publish.prepare_invoke();
        for k in keys {
            call.key(k);
        }
        for a in args {
            call.arg(a);
        }
        let mut conn = self.conn.clone();
        let reply: (i64, u64, u64, String) = bounded(call.invoke_async(&mut conn)).await?;
        Ok(publication(req, reply))
    }

    /// A batch as pipelines of EVALSHA (one round trip per
    /// [`PIPELINE_CHUNK`] messages rather than per message). The script is
    /// loaded first (on every master of a Cluster), so EVALSHA finds it; a
    /// Redis that restarted in between breaks the connection, which fails
    /// the call before anything of the chunk ran.
    ///
    /// On a Cluster a pipeline may only hold one slot's commands, so the
    /// batch goes as one series of pipelines per stream, the streams side
    /// by side; each stream's messages keep their order.
    async fn publish_pipelined(
        &self,
        requests: Vec<PublishRequest>,
    ) -> Result<Vec<Outcome>, EngineError> {
        let mut conn = self.conn.clone();
        bounded(self.publish.load_async(&mut conn)).await?;
        if !self.conn.sharded() {
            return self.publish_in_order(requests).await;
        }
        let count = requests.len();
        let mut by_stream: HashMap<Arc<str>, Vec<(usize, PublishRequest)>> = HashMap::new();
        for (i, req) in requests.into_iter().enumerate() {
            by_stream
                .entry(req.stream.clone())
                .or_default()
                .push((i, req));
        }
        let mut slots: Vec<Option<Outcome>> = (0..count).map(|_| None).collect();
        let groups: Vec<Vec<(usize, PublishRequest)>> = by_stream.into_values().collect();
        let mut groups = groups.into_iter().peekable();
        while groups.peek().is_some() {
            let mut wave = Vec::with_capacity(STREAMS_AT_ONCE);
            for group in groups.by_ref().take(STREAMS_AT_ONCE) {
                let (index, reqs): (Vec<usize>, Vec<PublishRequest>) = group.into_iter().unzip();
                wave.push(async move { (index, self.publish_in_order(reqs).await) });
            }
            for (index, outcomes) in futures_util::future::join_all(wave).await {
                for (i, outcome) in index.into_iter().zip(outcomes?) {
                    slots[i] = Some(outcome);
                }
            }
        }
        slots
            .into_iter()
            .map(|o| o.ok_or_else(|| EngineError("redis: a batch message got no answer".into())))
            .collect()
    }

    /// `requests` as pipelines of EVALSHA, in order (the script is loaded).
    async fn publish_in_order(
        &self,
        requests: Vec<PublishRequest>,
    ) -> Result<Vec<Outcome>, EngineError> {
        let mut conn = self.conn.clone();
        let mut out = Vec::with_capacity(requests.len());
        let mut requests = requests.into_iter().peekable();
        while requests.peek().is_some() {
            let chunk: Vec<PublishRequest> = requests.by_ref().take(PIPELINE_CHUNK).collect();
            let now = unix_millis();
            let mut pipe = ::redis::pipe();
            for req in &chunk {
                let (keys, args) = self.publish_args(req, now);
                let cmd = pipe
                    .cmd("EVALSHA")
                    .arg(self.publish.get_hash())
                    .arg(keys.len());
                for k in keys {
                    cmd.arg(k);
                }
                for a in args {
                    cmd.arg(a);
                }
            }
            let replies: Vec<(i64, u64, u64, String)> =
                bounded(pipe.query_async(&mut conn)).await?;
            if replies.len() != chunk.len() {
                return Err(EngineError("redis: short pipeline reply".into()));
            }
            out.extend(
                chunk
                    .into_iter()
                    .zip(replies)
                    .map(|(req, reply)| Ok(publication(req, reply))),
            );
        }
        Ok(out)
    }

    /// The keys and arguments of the `PUBLISH` script for `req`.
    fn publish_args(&self, req: &PublishRequest, now: u64) -> (Vec<String>, Vec<Vec<u8>>) {
        let names = self.naming.keys(&req.stream);
        let ttl = millis(req.retention.ttl).max(1);
        let mut keys = vec![names.meta, names.log];
        let key_ttl = match &req.key {
            Some(k) => {
                keys.push(self.naming.idempotency_key(&req.stream, &k.key));
                k.expire_at.saturating_sub(now).max(1)
            }
            None => 1,
        };
        let number = |n: u64| n.to_string().into_bytes();
        let args = vec![
            req.data.as_bytes().to_vec(),
            number(req.retention.size.max(1) as u64),
            number(ttl),
            number(now),
            random_token(8).into_bytes(),
            names.channel.into_bytes(),
            number(key_ttl),
            number(ttl.saturating_add(millis(META_GRACE))),
            if self.conn.sharded() {
                b"SPUBLISH".to_vec()
            } else {
                b"PUBLISH".to_vec()
            },
        ];
        (keys, args)
    }
}

/// Messages per pipeline of a batch publish.
const PIPELINE_CHUNK: usize = 100;
/// Streams of one batch published side by side on a Cluster.
const STREAMS_AT_ONCE: usize = 16;

fn publication(
    req: PublishRequest,
    (_, offset, ts, epoch): (i64, u64, u64, String),
) -> Publication {
    Publication {
        stream: req.stream,
        epoch: epoch.into(),
        offset,
        ts,
        data: req.data,
    }
}

/// Reads a history page through the `HISTORY` script (also used by the
/// fan-out to fill gaps).
async fn read_history(
    conn: &Commands,
    script: &Script,
    naming: &Naming,
    stream: &str,
    from: HistoryFrom,
    limit: usize,
    max_bytes: usize,
) -> Result<HistoryPage, EngineError> {
    let keys = naming.keys(stream);
    let (mode, value) = match from {
        HistoryFrom::Oldest => ("a", 0),
        HistoryFrom::AfterOffset(o) => ("o", o),
        HistoryFrom::AfterTime(t) => ("t", t),
    };
    let mut call = script.prepare_invoke();
    call.key(&keys.meta)
        .key(&keys.log)
        .arg(mode)
        .arg(value)
        .arg(limit.min(u32::MAX as usize))
        // Lua numbers are doubles: past 2^53 a cap means "no cap" anyway.
        .arg(max_bytes.min(1 << 53))
        .arg(unix_millis())
        .arg(random_token(8))
        .arg(millis(UNBORN_TTL));
    let mut conn = conn.clone();
    let reply: Vec<Value> = bounded(call.invoke_async(&mut conn)).await?;
    parse_page(reply)
}

/// A stored read cursor, `"<epoch> <offset>"`.
fn parse_read(v: &str) -> Option<(Arc<str>, u64)> {
    let (e, o) = v.split_once(' ')?;
    Some((e.into(), o.parse().ok()?))
}

fn parse_page(reply: Vec<Value>) -> Result<HistoryPage, EngineError> {
    let bad = || EngineError("redis: malformed history reply".into());
    let mut it = reply.into_iter();
    let mut next = || it.next().ok_or_else(bad);
    let epoch: String = ::redis::from_redis_value(next()?).map_err(engine_error)?;
    let top: u64 = ::redis::from_redis_value(next()?).map_err(engine_error)?;
    let first_kept: u64 = ::redis::from_redis_value(next()?).map_err(engine_error)?;
    let first_ts: i64 = ::redis::from_redis_value(next()?).map_err(engine_error)?;
    let mut messages = Vec::new();
    for v in it {
        let entry: String = ::redis::from_redis_value(v).map_err(engine_error)?;
        messages.push(parse_entry(&entry).ok_or_else(bad)?);
    }
    Ok(HistoryPage {
        epoch: epoch.into(),
        top,
        first_kept,
        first_kept_ts: u64::try_from(first_ts).ok(),
        messages,
    })
}

/// `"<offset> <ts> <expire_at> <data>"`.
fn parse_entry(entry: &str) -> Option<StoredMessage> {
    let mut parts = entry.splitn(4, ' ');
    let offset = parts.next()?.parse().ok()?;
    let ts = parts.next()?.parse().ok()?;
    let _expire_at = parts.next()?;
    Some(StoredMessage {
        offset,
        ts,
        data: parts.next()?.into(),
    })
}

#[async_trait]
impl Engine for RedisEngine {
    fn name(&self) -> &'static str {
        "redis"
    }

    /// One script call per message, in order (a batch pipelined): each is
    /// atomic on its own, and a batch's messages to one stream get
    /// increasing offsets, consecutive unless another node publishes in
    /// between (a batch is not a transaction in any engine). A failure
    /// part-way fails the call; messages before it may be published (a
    /// retry with idempotency keys answers them).
    async fn publish(
        &self,
        mut requests: Vec<PublishRequest>,
    ) -> Result<Vec<Outcome>, EngineError> {
        let track: Vec<Option<Duration>> = requests.iter().map(|r| r.undelivered_after).collect();
        let outcomes = match requests.pop() {
            Some(req) if requests.is_empty() => vec![Ok(self.publish_one(req).await?)],
            Some(req) => {
                requests.push(req);
                self.publish_pipelined(requests).await?
            }
            None => Vec::new(),
        };
        if track.iter().any(Option::is_some) {
            // After the publish (another slot): a failure here loses the
            // hook for these notifications, never the published message,
            // which a retry would publish twice.
            if let Err(e) = self.track_undelivered(&track, &outcomes).await {
                tracing::warn!(error = %e, "pending notifications not recorded");
            }
        }
        Ok(outcomes)
    }

    async fn history(
        &self,
        stream: &str,
        from: HistoryFrom,
        limit: usize,
        max_bytes: usize,
    ) -> Result<HistoryPage, EngineError> {
        read_history(
            &self.conn,
            &self.history,
            &self.naming,
            stream,
            from,
            limit,
            max_bytes,
        )
        .await
    }

    async fn listening(&self, stream: &str) -> Result<(), EngineError> {
        self.fanout.listening(stream).await
    }

    async fn ready(&self) -> bool {
        let mut conn = self.conn.clone();
        let ping = bounded(::redis::cmd("PING").query_async::<String>(&mut conn)).await;
        ping.is_ok() && self.fanout.connected()
    }

    /// Redis expires history by itself (key TTLs and the scripts' front
    /// trimming), so nothing is deleted here. What a sweep does is keep the
    /// counters of every stream this node watches from expiring (for at
    /// least [`UNBORN_TTL`] more): a watched stream is never removed, so
    /// its subscribers' offsets stay meaningful however quiet it is.
    async fn sweep(&self) -> SweepReport {
        let watched = self.fanout.watched();
        let mut conn = self.conn.clone();
        for stream in watched {
            let mut call = self.keep.prepare_invoke();
            call.key(self.naming.keys(&stream).meta)
                .arg(millis(UNBORN_TTL));
            if let Err(e) = bounded(call.invoke_async::<i64>(&mut conn)).await {
                tracing::warn!(error = %e, "cannot keep watched streams alive now");
                break;
            }
        }
        SweepReport::default()
    }

    /// What this node knows without asking Redis: nothing is stored here,
    /// so only its pub/sub subscriptions.
    fn usage(&self) -> Usage {
        Usage {
            remote_subscriptions: self.fanout.subscriptions(),
            undelivered: self.undelivered.load(std::sync::atomic::Ordering::Relaxed),
            ..Usage::default()
        }
    }

    /// The node's report under a key that expires unless renewed, and its id
    /// in a sorted set by time: a killed node drops out by itself. The keys
    /// share one hash tag, so a Cluster port reads them in one slot.
    async fn read_cursor(&self, stream: &str) -> Result<Option<(Arc<str>, u64)>, EngineError> {
        let mut conn = self.conn.clone();
        let value: Option<String> = bounded(
            ::redis::cmd("GET")
                .arg(self.naming.read_key(stream))
                .query_async(&mut conn),
        )
        .await?;
        Ok(value.and_then(|v| parse_read(&v)))
    }

    async fn mark_read(
        &self,
        stream: &str,
        epoch: &str,
        offset: u64,
    ) -> Result<(Arc<str>, u64), EngineError> {
        let mut call = self.mark_read.prepare_invoke();
        call.key(self.naming.read_key(stream))
            .arg(epoch)
            .arg(offset);
        let mut conn = self.conn.clone();
        let (e, o): (String, u64) = bounded(call.invoke_async(&mut conn)).await?;
        Ok((e.into(), o))
    }

    /// One script per mark (each inbox's mark lives in the inbox's slot),
    /// side by side.
    async fn mark_delivered(
        &self,
        marks: &[(Arc<str>, Arc<str>, u64)],
        keep: Duration,
    ) -> Result<(), EngineError> {
        let keep = millis(keep).max(1);
        let calls = marks.iter().map(|(stream, epoch, offset)| {
            let mut call = self.mark_delivered.prepare_invoke();
            call.key(self.naming.delivered_key(stream))
                .arg(&**epoch)
                .arg(*offset)
                .arg(keep);
            let mut conn = self.conn.clone();
            async move { bounded(call.invoke_async::<i64>(&mut conn)).await }
        });
        for result in futures_util::future::join_all(calls).await {
            result?;
        }
        Ok(())
    }

    /// Claims in one script on the pending set's slot, then reads each
    /// claimed inbox's delivered mark (another slot): the delivered ones are
    /// removed here and not returned.
    async fn claim_undelivered(
        &self,
        now: u64,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<PendingNotification>, EngineError> {
        let key = self.naming.undelivered_key();
        let mut call = self.claim_undelivered.prepare_invoke();
        call.key(&key).arg(now).arg(expire_at(now, lease)).arg(max);
        let mut conn = self.conn.clone();
        let (count, members): (u64, Vec<String>) = bounded(call.invoke_async(&mut conn)).await?;
        self.undelivered
            .store(count, std::sync::atomic::Ordering::Relaxed);
        let claimed: Vec<(String, PendingNotification)> = members
            .into_iter()
            .filter_map(|m| {
                let mut parts = m.splitn(3, ' ');
                let epoch = parts.next()?;
                let offset = parts.next()?.parse().ok()?;
                let stream = parts.next()?;
                let p = PendingNotification {
                    stream: stream.into(),
                    epoch: epoch.into(),
                    offset,
                };
                Some((m, p))
            })
            .collect();
        let reads = claimed.iter().map(|(_, p)| {
            let mut conn = self.conn.clone();
            let key = self.naming.delivered_key(&p.stream);
            async move {
                bounded(
                    ::redis::cmd("GET")
                        .arg(key)
                        .query_async::<Option<String>>(&mut conn),
                )
                .await
            }
        });
        let marks = futures_util::future::join_all(reads).await;
        let mut done = Vec::new();
        let mut out = Vec::new();
        for ((member, p), mark) in claimed.into_iter().zip(marks) {
            let delivered = mark?
                .as_deref()
                .and_then(parse_read)
                .is_some_and(|(e, o)| e == p.epoch && o >= p.offset);
            if delivered {
                done.push(member);
            } else {
                out.push(p);
            }
        }
        if !done.is_empty() {
            self.remove_pending(done).await?;
        }
        Ok(out)
    }

    async fn finish_undelivered(&self, done: &[PendingNotification]) -> Result<(), EngineError> {
        if done.is_empty() {
            return Ok(());
        }
        self.remove_pending(
            done.iter()
                .map(|p| format!("{} {} {}", p.epoch, p.offset, p.stream))
                .collect(),
        )
        .await
    }

    async fn announce(&self, node: &NodeReport) -> Result<(), EngineError> {
        let report = serde_json::to_string(node).map_err(engine_error)?;
        let now = unix_millis();
        let mut conn = self.conn.clone();
        let mut pipe = ::redis::pipe();
        pipe.cmd("SET")
            .arg(self.naming.node_key(&node.node))
            .arg(report)
            .arg("PX")
            .arg(millis(NODE_ALIVE_FOR))
            .ignore()
            .cmd("ZADD")
            .arg(self.naming.nodes_key())
            .arg(now)
            .arg(&node.node)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(self.naming.nodes_key())
            .arg("-inf")
            .arg(now.saturating_sub(millis(NODE_ALIVE_FOR)))
            .ignore()
            // The set goes too once every node has stopped announcing.
            .cmd("PEXPIRE")
            .arg(self.naming.nodes_key())
            .arg(millis(NODE_ALIVE_FOR) * 2)
            .ignore();
        bounded(pipe.query_async::<()>(&mut conn)).await
    }

    async fn nodes(&self) -> Result<Option<Vec<NodeReport>>, EngineError> {
        let since = unix_millis().saturating_sub(millis(NODE_ALIVE_FOR));
        let mut conn = self.conn.clone();
        let ids: Vec<String> = bounded(
            ::redis::cmd("ZRANGEBYSCORE")
                .arg(self.naming.nodes_key())
                .arg(since)
                .arg("+inf")
                .query_async(&mut conn),
        )
        .await?;
        if ids.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let keys: Vec<String> = ids.iter().map(|id| self.naming.node_key(id)).collect();
        let reports: Vec<Option<String>> =
            bounded(::redis::cmd("MGET").arg(keys).query_async(&mut conn)).await?;
        let mut nodes: Vec<NodeReport> = reports
            .into_iter()
            .flatten()
            .filter_map(|r| serde_json::from_str(&r).ok())
            .collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(Some(nodes))
    }

    fn presence(&self) -> Option<&dyn PresenceStore> {
        Some(&self.presence)
    }

    fn occupancy(&self, node: &str) -> Option<Arc<dyn crate::occupancy::OccupancyStore>> {
        Some(Arc::new(occupancy::RedisOccupancy::new(
            self.conn.clone(),
            self.naming.clone(),
            node,
        )))
    }

    async fn close(&self) {
        self.fanout.stop();
    }
}

#[cfg(test)]
mod tests;
