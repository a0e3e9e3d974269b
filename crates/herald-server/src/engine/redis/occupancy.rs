//! Cluster-wide occupancy (the `channel_occupied` / `channel_vacated` /
//! `user_online` / `user_offline` webhooks) in Redis, decided once per
//! cluster.
//!
//! Per channel a set of the node ids holding it, `<prefix>:oc:{C}` (per
//! user `<prefix>:ou:{U}`), and while it is non-empty the moment it became
//! so, `<prefix>:oct:{C}` (`out`), in the same slot: one script adds (or
//! removes) a node and tells whether the set went from empty to not (or
//! back), so whichever nodes race, exactly one sees each transition. The
//! event id is the event, that moment (Redis `TIME`, µs) and the name: a
//! node that redoes a transition another one decided (cleaning up after a
//! dead node twice, say) sends the same id, and receivers drop it.
//!
//! A node that is killed cannot remove itself. So each node also keeps an
//! index of what it holds, `<prefix>:oi:{<node>}` (written before a hold and
//! cleaned after a release, so it never misses a membership), and writes
//! its heartbeat into the sorted set `<prefix>:ohb` every third of
//! `presence.ttl`. A node that finds another one silent for longer than
//! `presence.ttl` claims it (`SET <prefix>:ocl:{<node>} NX PX ttl`: one
//! claimer at a time) and releases its memberships one by one, firing
//! vacated / offline where the dead node was the last. A node that was only
//! slow and finds itself claimed holds everything again.
//!
//! The index and the heartbeat are separate calls from the membership
//! script: on a Cluster they live in other slots.

use std::time::Duration;

use ::redis::Script;
use async_trait::async_trait;

use super::conn::Commands;
use super::{bounded, millis, Naming};
use crate::config::WebhookEvent;
use crate::engine::EngineError;
use crate::occupancy::{Decided, Key, Kind, OccupancyStore};

/// Dead nodes claimed per heartbeat, and index entries read per call.
const CLAIM_PER_BEAT: isize = 4;
const SCAN_COUNT: usize = 500;

/// KEYS: members, since. ARGV: node. Returns the moment the set became
/// non-empty when this call did it, else nil.
const HOLD: &str = r#"
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 and redis.call('SCARD', KEYS[1]) == 1 then
  local t = redis.call('TIME')
  local since = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('SET', KEYS[2], since)
  return since
end
return false
"#;

/// KEYS: members, since. ARGV: node. Returns the moment the set had become
/// non-empty when this call emptied it, else nil.
const RELEASE: &str = r#"
if redis.call('SREM', KEYS[1], ARGV[1]) == 1 and redis.call('SCARD', KEYS[1]) == 0 then
  local since = redis.call('GET', KEYS[2]) or '0'
  redis.call('DEL', KEYS[2])
  return since
end
return false
"#;

/// The occupancy store of the redis engine, for one node.
pub(crate) struct RedisOccupancy {
    conn: Commands,
    naming: Naming,
    node: String,
    hold: Script,
    release: Script,
}

impl RedisOccupancy {
    pub(super) fn new(conn: Commands, naming: Naming, node: &str) -> Self {
        Self {
            conn,
            naming,
            node: node.to_owned(),
            hold: Script::new(HOLD),
            release: Script::new(RELEASE),
        }
    }

    fn keys(&self, key: &Key) -> (String, String) {
        let p = &self.naming.prefix;
        let (m, t) = match key.kind {
            Kind::Channel => ("oc", "oct"),
            Kind::User => ("ou", "out"),
        };
        (
            format!("{p}:{m}:{{{}}}", key.name),
            format!("{p}:{t}:{{{}}}", key.name),
        )
    }

    fn index_key(&self, node: &str) -> String {
        format!("{}:oi:{{{node}}}", self.naming.prefix)
    }

    fn claim_key(&self, node: &str) -> String {
        format!("{}:ocl:{{{node}}}", self.naming.prefix)
    }

    fn beats_key(&self) -> String {
        format!("{}:ohb", self.naming.prefix)
    }

    /// An index entry: kind letter and name.
    fn entry(key: &Key) -> String {
        let k = match key.kind {
            Kind::Channel => 'c',
            Kind::User => 'u',
        };
        format!("{k}:{}", key.name)
    }

    fn parse_entry(entry: &str) -> Option<Key> {
        let (k, name) = entry.split_once(':')?;
        let kind = match k {
            "c" => Kind::Channel,
            "u" => Kind::User,
            _ => return None,
        };
        Some(Key {
            kind,
            name: name.into(),
        })
    }

    /// The id of a transition, the same on every node that decides it.
    fn id(key: &Key, occupied: bool, since: &str) -> String {
        let event = match (key.kind, occupied) {
            (Kind::Channel, true) => WebhookEvent::ChannelOccupied,
            (Kind::Channel, false) => WebhookEvent::ChannelVacated,
            (Kind::User, true) => WebhookEvent::UserOnline,
            (Kind::User, false) => WebhookEvent::UserOffline,
        };
        format!("{}:{since}:{}", event.as_str(), key.name)
    }

    async fn release_for(&self, node: &str, key: &Key) -> Result<Option<String>, EngineError> {
        let (members, since) = self.keys(key);
        let mut call = self.release.prepare_invoke();
        call.key(members).key(since).arg(node);
        let mut conn = self.conn.clone();
        let since: Option<String> = bounded(call.invoke_async(&mut conn)).await?;
        Ok(since.map(|s| Self::id(key, false, &s)))
    }

    /// Releases everything dead node `node` held; the transitions it made.
    async fn clean_up(&self, node: &str, out: &mut Vec<Decided>) -> Result<(), EngineError> {
        let index = self.index_key(node);
        let mut conn = self.conn.clone();
        loop {
            // SRANDMEMBER then SREM per entry rather than SSCAN: removing
            // while scanning is fine for Redis, but this way a claimer that
            // dies half way leaves exactly what is left to do.
            let entries: Vec<String> = bounded(
                ::redis::cmd("SRANDMEMBER")
                    .arg(&index)
                    .arg(SCAN_COUNT)
                    .query_async(&mut conn),
            )
            .await?;
            if entries.is_empty() {
                break;
            }
            for entry in &entries {
                if let Some(key) = Self::parse_entry(entry) {
                    if let Some(id) = self.release_for(node, &key).await? {
                        out.push(Decided {
                            key,
                            occupied: false,
                            id,
                        });
                    }
                }
                bounded(
                    ::redis::cmd("SREM")
                        .arg(&index)
                        .arg(entry)
                        .query_async::<i64>(&mut conn),
                )
                .await?;
            }
        }
        bounded(
            ::redis::cmd("ZREM")
                .arg(self.beats_key())
                .arg(node)
                .query_async::<i64>(&mut conn),
        )
        .await?;
        Ok(())
    }
}

#[async_trait]
impl OccupancyStore for RedisOccupancy {
    async fn hold(&self, key: &Key) -> Result<Option<String>, EngineError> {
        let mut conn = self.conn.clone();
        // Indexed first: a node killed in between leaves an entry that
        // points nowhere (harmless), never a membership nobody can find.
        bounded(
            ::redis::cmd("SADD")
                .arg(self.index_key(&self.node))
                .arg(Self::entry(key))
                .query_async::<i64>(&mut conn),
        )
        .await?;
        let (members, since) = self.keys(key);
        let mut call = self.hold.prepare_invoke();
        call.key(members).key(since).arg(&self.node);
        let since: Option<String> = bounded(call.invoke_async(&mut conn)).await?;
        Ok(since.map(|s| Self::id(key, true, &s)))
    }

    async fn release(&self, key: &Key) -> Result<Option<String>, EngineError> {
        let id = self.release_for(&self.node, key).await?;
        let mut conn = self.conn.clone();
        bounded(
            ::redis::cmd("SREM")
                .arg(self.index_key(&self.node))
                .arg(Self::entry(key))
                .query_async::<i64>(&mut conn),
        )
        .await?;
        Ok(id)
    }

    async fn heartbeat(&self, ttl: Duration) -> Result<(Vec<Decided>, bool), EngineError> {
        let mut conn = self.conn.clone();
        // Redis's clock, not this node's: nodes whose clocks disagree by
        // more than the TTL must not take each other for dead.
        let (secs, micros): (String, String) =
            bounded(::redis::cmd("TIME").query_async(&mut conn)).await?;
        let now = match (secs.parse::<u64>(), micros.parse::<u64>()) {
            (Ok(s), Ok(us)) => s.saturating_mul(1000).saturating_add(us / 1000),
            _ => return Err(EngineError("redis: malformed TIME reply".into())),
        };
        // ZADD answers 1 when the node was not there: at its first beat, or
        // after another node took it for dead and cleaned up after it.
        let added: i64 = bounded(
            ::redis::cmd("ZADD")
                .arg(self.beats_key())
                .arg(now)
                .arg(&self.node)
                .query_async(&mut conn),
        )
        .await?;
        let stale: Vec<String> = bounded(
            ::redis::cmd("ZRANGEBYSCORE")
                .arg(self.beats_key())
                .arg("-inf")
                .arg(now.saturating_sub(millis(ttl)))
                .arg("LIMIT")
                .arg(0)
                .arg(CLAIM_PER_BEAT)
                .query_async(&mut conn),
        )
        .await?;
        let mut decided = Vec::new();
        for node in stale.iter().filter(|n| **n != self.node) {
            let claimed: Option<String> = bounded(
                ::redis::cmd("SET")
                    .arg(self.claim_key(node))
                    .arg(&self.node)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(ttl).max(1))
                    .query_async(&mut conn),
            )
            .await?;
            if claimed.is_some() {
                tracing::info!(node = %node, "releasing the channels and users of a node silent past presence.ttl");
                self.clean_up(node, &mut decided).await?;
            }
        }
        Ok((decided, added == 1))
    }

    async fn leave(&self) -> Result<(), EngineError> {
        let mut conn = self.conn.clone();
        bounded(
            ::redis::cmd("ZREM")
                .arg(self.beats_key())
                .arg(&self.node)
                .query_async::<i64>(&mut conn),
        )
        .await?;
        bounded(
            ::redis::cmd("DEL")
                .arg(self.index_key(&self.node))
                .query_async::<i64>(&mut conn),
        )
        .await?;
        Ok(())
    }
}
