//! Presence for the whole cluster (SPEC §11), kept in Redis.
//!
//! Per channel, two keys under the channel's hash tag (one slot, as a
//! script needs): a hash client → entry and a sorted set client → expiry
//! (Unix ms). Every node rewrites the expiry of its own clients every third
//! of `presence.ttl` ([`RedisPresence::refresh`], batched); readers count
//! only entries whose expiry is ahead, so a killed node's entries vanish
//! within `presence.ttl`, and the refresher of any node with clients in the
//! same channel removes them (pushing `leave` where asked).
//!
//! Per user, a sorted set client → expiry under the user's inbox hash tag,
//! refreshed the same way: `GET /api/users/{id}/status` is one `ZCOUNT`.
//!
//! Redis calls: a join, a leave, a read and a status are one call each
//! (one round trip: a script, or a pipeline on one key); a read walks the
//! channel's live entries inside Redis, so its counts are exact. A refresh
//! is one pipeline per [`REFRESH_CHUNK`] channels or users (on a Cluster,
//! where a pipeline holds one slot, one call per channel or user,
//! [`super::STREAMS_AT_ONCE`] at a time).
//!
//! `join` / `leave` travel on the channel's own pub/sub channel, as
//! `"!<conn hex> <frame>"` (an epoch never starts with `!`), so they reach
//! exactly the nodes with subscribers there; the node of the client they
//! are about skips that client.

use std::time::Duration;

use ::redis::Script;
use async_trait::async_trait;

use super::conn::Commands;
use super::{bounded, millis, Naming, STREAMS_AT_ONCE};
use crate::engine::{EngineError, PresenceSnapshot, PresenceStore, RefreshChannel};
use crate::ids::unix_millis;

/// Channels (or users) per pipeline of a refresh.
const REFRESH_CHUNK: usize = 100;
/// Expired entries removed per channel per refresh.
const PRUNE_PER_REFRESH: usize = 100;

/// KEYS: expiries (zset), entries (hash). ARGV: client, stored entry,
/// expiry ms, key ttl ms, `PUBLISH`/`SPUBLISH`, pub/sub channel, event.
const JOIN: &str = r#"
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if ARGV[7] ~= '' then redis.call(ARGV[5], ARGV[6], ARGV[7]) end
return 1
"#;

/// KEYS: expiries, entries. ARGV: client, publish command, pub/sub
/// channel, event (sent only if the entry was there).
const LEAVE: &str = r#"
local gone = redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
if gone == 1 and ARGV[4] ~= '' then redis.call(ARGV[2], ARGV[3], ARGV[4]) end
return gone
"#;

/// KEYS: expiries, entries. ARGV: now ms, cap.
/// Returns `{total, users, entry…}` over the live entries; a stored entry
/// is `"<user length>:<user><entry json>"`.
const READ: &str = r#"
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
local cap = tonumber(ARGV[2])
local seen, users, total = {}, 0, 0
local out = {0, 0}
local i = 1
while i <= #live do
  local chunk = {}
  for j = i, math.min(i + 499, #live) do chunk[#chunk + 1] = live[j] end
  i = i + #chunk
  local values = redis.call('HMGET', KEYS[2], unpack(chunk))
  for _, v in ipairs(values) do
    if v then
      local n, rest = string.match(v, '^(%d+):(.*)$')
      if n then
        n = tonumber(n)
        local user = string.sub(rest, 1, n)
        if n > 0 and not seen[user] then
          seen[user] = true
          users = users + 1
        end
        total = total + 1
        if #out - 2 < cap then out[#out + 1] = string.sub(rest, n + 1) end
      end
    end
  end
end
out[1] = total
out[2] = users
return out
"#;

/// KEYS: expiries, entries. ARGV: now ms, expiry ms, key ttl ms, prune
/// limit, publish command, pub/sub channel, channel name, `1` to push
/// `leave` for expired entries, then this node's clients.
/// Renews the clients still there (`XX`: a client that left stays gone),
/// then removes expired entries.
const REFRESH: &str = r#"
local expiry = ARGV[2]
local args = {}
for i = 9, #ARGV do
  args[#args + 1] = expiry
  args[#args + 1] = ARGV[i]
end
if #args > 0 then
  for i = 1, #args, 1000 do
    local part = {}
    for j = i, math.min(i + 999, #args) do part[#part + 1] = args[j] end
    redis.call('ZADD', KEYS[1], 'XX', unpack(part))
  end
end
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[4]))
for _, client in ipairs(stale) do
  local v = redis.call('HGET', KEYS[2], client)
  redis.call('HDEL', KEYS[2], client)
  redis.call('ZREM', KEYS[1], client)
  if v and ARGV[8] == '1' then
    local n, rest = string.match(v, '^(%d+):(.*)$')
    if n then
      local entry = string.sub(rest, tonumber(n) + 1)
      redis.call(ARGV[5], ARGV[6], '!0 {"type":"leave","channel":"' .. ARGV[7] .. '","info":' .. entry .. '}')
    end
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return #stale
"#;

/// The presence store of the redis engine.
pub(crate) struct RedisPresence {
    conn: Commands,
    naming: Naming,
    join: Script,
    leave: Script,
    read: Script,
    refresh: Script,
}

impl RedisPresence {
    pub(super) fn new(conn: Commands, naming: Naming) -> Self {
        Self {
            conn,
            naming,
            join: Script::new(JOIN),
            leave: Script::new(LEAVE),
            read: Script::new(READ),
            refresh: Script::new(REFRESH),
        }
    }

    fn publish_command(&self) -> &'static str {
        if self.conn.sharded() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// Keys live this long past a refresh: a channel whose every node
    /// stopped leaves nothing behind.
    fn key_ttl(ttl: Duration) -> u64 {
        millis(ttl).saturating_mul(2).max(1)
    }

    fn refresh_call(&self, c: &RefreshChannel, now: u64, ttl: Duration) -> ::redis::Cmd {
        let (zset, hash) = self.naming.presence_keys(&c.channel);
        let mut cmd = ::redis::cmd("EVALSHA");
        cmd.arg(self.refresh.get_hash())
            .arg(2)
            .arg(zset)
            .arg(hash)
            .arg(now)
            .arg(now.saturating_add(millis(ttl)))
            .arg(Self::key_ttl(ttl))
            .arg(PRUNE_PER_REFRESH)
            .arg(self.publish_command())
            .arg(self.naming.channel(&c.channel))
            .arg(&*c.channel)
            .arg(if c.join_leave { "1" } else { "0" });
        for client in &c.clients {
            cmd.arg(&**client);
        }
        cmd
    }

    fn user_refresh_calls(
        &self,
        pipe: &mut ::redis::Pipeline,
        user: &str,
        clients: &[String],
        now: u64,
        ttl: Duration,
    ) {
        let key = self.naming.online_key(user);
        let expiry = now.saturating_add(millis(ttl));
        if !clients.is_empty() {
            let zadd = pipe.cmd("ZADD").arg(&key).arg("XX");
            for c in clients {
                zadd.arg(expiry).arg(c);
            }
            zadd.ignore();
        }
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(Self::key_ttl(ttl))
            .ignore();
    }
}

/// `"<user length>:<user><entry json>"`: the read script counts users
/// without parsing JSON.
fn stored_entry(entry: &crate::presence::Entry) -> String {
    format!("{}:{}{}", entry.user.len(), entry.user, entry.json)
}

fn event_payload(conn: u64, event: Option<&str>) -> String {
    event.map(|e| format!("!{conn:x} {e}")).unwrap_or_default()
}

#[async_trait]
impl PresenceStore for RedisPresence {
    async fn join(
        &self,
        channel: &str,
        entry: &crate::presence::Entry,
        conn: u64,
        event: Option<&str>,
        ttl: Duration,
    ) -> Result<(), EngineError> {
        let (zset, hash) = self.naming.presence_keys(channel);
        let mut call = self.join.prepare_invoke();
        call.key(zset)
            .key(hash)
            .arg(&*entry.client)
            .arg(stored_entry(entry))
            .arg(unix_millis().saturating_add(millis(ttl)))
            .arg(Self::key_ttl(ttl))
            .arg(self.publish_command())
            .arg(self.naming.channel(channel))
            .arg(event_payload(conn, event));
        let mut conn = self.conn.clone();
        bounded(call.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    async fn leave(
        &self,
        channel: &str,
        client: &str,
        conn: u64,
        event: Option<&str>,
    ) -> Result<(), EngineError> {
        let (zset, hash) = self.naming.presence_keys(channel);
        let mut call = self.leave.prepare_invoke();
        call.key(zset)
            .key(hash)
            .arg(client)
            .arg(self.publish_command())
            .arg(self.naming.channel(channel))
            .arg(event_payload(conn, event));
        let mut conn = self.conn.clone();
        bounded(call.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    async fn read(&self, channel: &str, cap: usize) -> Result<PresenceSnapshot, EngineError> {
        let (zset, hash) = self.naming.presence_keys(channel);
        let mut call = self.read.prepare_invoke();
        call.key(zset).key(hash).arg(unix_millis()).arg(cap);
        let mut conn = self.conn.clone();
        let reply: Vec<::redis::Value> = bounded(call.invoke_async(&mut conn)).await?;
        let bad = || EngineError("redis: malformed presence reply".into());
        let mut it = reply.into_iter();
        let total: u64 =
            ::redis::from_redis_value(it.next().ok_or_else(bad)?).map_err(|_| bad())?;
        let users: u64 =
            ::redis::from_redis_value(it.next().ok_or_else(bad)?).map_err(|_| bad())?;
        let mut clients = Vec::new();
        for v in it {
            let entry: String = ::redis::from_redis_value(v).map_err(|_| bad())?;
            clients.push(entry.into());
        }
        Ok(PresenceSnapshot {
            clients,
            users,
            total,
        })
    }

    async fn refresh(
        &self,
        channels: &[RefreshChannel],
        users: &[(String, Vec<String>)],
        ttl: Duration,
    ) -> Result<(), EngineError> {
        let now = unix_millis();
        let mut conn = self.conn.clone();
        if !channels.is_empty() {
            bounded(self.refresh.load_async(&mut conn)).await?;
        }
        if !self.conn.sharded() {
            for chunk in channels.chunks(REFRESH_CHUNK) {
                let mut pipe = ::redis::pipe();
                for c in chunk {
                    pipe.add_command(self.refresh_call(c, now, ttl)).ignore();
                }
                bounded(pipe.query_async::<()>(&mut conn)).await?;
            }
            for chunk in users.chunks(REFRESH_CHUNK) {
                let mut pipe = ::redis::pipe();
                for (user, clients) in chunk {
                    self.user_refresh_calls(&mut pipe, user, clients, now, ttl);
                }
                bounded(pipe.query_async::<()>(&mut conn)).await?;
            }
            return Ok(());
        }
        // A Cluster pipeline holds one slot: one call per channel or user,
        // several at a time.
        for chunk in channels.chunks(STREAMS_AT_ONCE) {
            let calls = chunk.iter().map(|c| {
                let cmd = self.refresh_call(c, now, ttl);
                let mut conn = self.conn.clone();
                async move { bounded(cmd.query_async::<i64>(&mut conn)).await }
            });
            for r in futures_util::future::join_all(calls).await {
                r?;
            }
        }
        for chunk in users.chunks(STREAMS_AT_ONCE) {
            let calls = chunk.iter().map(|(user, clients)| {
                let mut pipe = ::redis::pipe();
                self.user_refresh_calls(&mut pipe, user, clients, now, ttl);
                let mut conn = self.conn.clone();
                async move { bounded(pipe.query_async::<()>(&mut conn)).await }
            });
            for r in futures_util::future::join_all(calls).await {
                r?;
            }
        }
        Ok(())
    }

    async fn user_online(
        &self,
        user: &str,
        client: &str,
        ttl: Duration,
    ) -> Result<(), EngineError> {
        let key = self.naming.online_key(user);
        let now = unix_millis();
        let mut pipe = ::redis::pipe();
        pipe.cmd("ZADD")
            .arg(&key)
            .arg(now.saturating_add(millis(ttl)))
            .arg(client)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(Self::key_ttl(ttl))
            .ignore();
        let mut conn = self.conn.clone();
        bounded(pipe.query_async::<()>(&mut conn)).await
    }

    async fn user_offline(&self, user: &str, client: &str) -> Result<(), EngineError> {
        let mut conn = self.conn.clone();
        bounded(
            ::redis::cmd("ZREM")
                .arg(self.naming.online_key(user))
                .arg(client)
                .query_async::<i64>(&mut conn),
        )
        .await?;
        Ok(())
    }

    async fn user_connections(&self, user: &str) -> Result<u64, EngineError> {
        let mut conn = self.conn.clone();
        bounded(
            ::redis::cmd("ZCOUNT")
                .arg(self.naming.online_key(user))
                .arg(format!("({}", unix_millis()))
                .arg("+inf")
                .query_async(&mut conn),
        )
        .await
    }
}
