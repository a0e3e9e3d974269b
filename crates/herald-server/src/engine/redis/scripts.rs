//! The Lua scripts the redis engine runs. Each runs atomically in Redis, so
//! two nodes publishing to one stream at once still get consecutive offsets:
//! the script is the one place an offset is assigned.
//!
//! Keys of one stream all carry the stream as their hash tag (`{stream}`),
//! so a later Redis Cluster port finds them in one slot, as a script needs.
//!
//! A log entry is `"<offset> <ts> <expire_at> <data>"`: the list holds
//! consecutive offsets, so the entry of offset `o` is at index
//! `o - first_kept`, and reading after an offset needs no search.

/// Appends one message. Its numbers are formatted with `%.0f`: Lua 5.1's
/// `tostring` would write a 13-digit time in exponent form past 1e14.
///
/// KEYS: meta (hash: `epoch`, `top`, `ts`), log (list), idempotency key
/// (only when the publish carries one).
/// ARGV: data, history size, ttl ms, now ms, an epoch to use if the stream
/// has none, the pub/sub channel, idempotency ttl ms, meta ttl ms, and
/// `PUBLISH` or (on a Cluster, where the channel is in the keys' slot)
/// `SPUBLISH`.
///
/// Returns `{1, offset, ts, epoch}` for a new message, or
/// `{0, offset, ts, epoch}` when the idempotency key already answered.
pub(super) const PUBLISH: &str = r#"
local meta, log = KEYS[1], KEYS[2]
if KEYS[3] then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local o, t, e = string.match(seen, '^(%d+) (%d+) (%w+)$')
    return {0, tonumber(o), tonumber(t), e}
  end
end
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[5]
  redis.call('HSET', meta, 'epoch', epoch)
end
local now = tonumber(ARGV[4])
local ts = math.max(now, tonumber(redis.call('HGET', meta, 'ts') or '0'))
local top = redis.call('HINCRBY', meta, 'top', 1)
local fts = string.format('%.0f', ts)
redis.call('HSET', meta, 'ts', fts)
local ttl = tonumber(ARGV[3])
-- Expired messages leave from the front first (as the memory engine does).
while true do
  local front = redis.call('LINDEX', log, 0)
  if not front then break end
  local e = tonumber(string.match(front, '^%d+ %d+ (%d+) '))
  if e and e <= ts then redis.call('LPOP', log) else break end
end
local ftop = string.format('%.0f', top)
redis.call('RPUSH', log, ftop .. ' ' .. fts .. ' ' .. string.format('%.0f', ts + ttl) .. ' ' .. ARGV[1])
redis.call('LTRIM', log, -tonumber(ARGV[2]), -1)
redis.call('PEXPIRE', log, ARGV[3])
redis.call('PEXPIRE', meta, ARGV[8])
if KEYS[3] then
  redis.call('SET', KEYS[3], ftop .. ' ' .. fts .. ' ' .. epoch, 'PX', ARGV[7])
end
redis.call(ARGV[9], ARGV[6], epoch .. ' ' .. ftop .. ' ' .. fts .. ' ' .. ARGV[1])
return {1, top, ts, epoch}
"#;

/// Reads a stream's position and a page of its history.
///
/// KEYS: meta, log.
/// ARGV: mode (`o` after offset, `t` after time, `a` oldest), its value,
/// limit, max bytes, now ms, an epoch for a stream that has none, how long
/// that unborn epoch is kept (ms).
///
/// A stream nothing was published to gets its epoch written here, so that
/// the epoch a client reads before the first publish stays valid after it
/// (SPEC §2); it expires soon unless a publish adopts it.
///
/// Returns `{epoch, top, first_kept, first_kept_ts or -1, entries…}`.
pub(super) const HISTORY: &str = r#"
local meta, log = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[6]
  redis.call('HSET', meta, 'epoch', epoch)
  redis.call('PEXPIRE', meta, ARGV[7])
end
local top = tonumber(redis.call('HGET', meta, 'top') or '0')
local now = tonumber(ARGV[5])
local n = redis.call('LLEN', log)
while n > 0 do
  local front = redis.call('LINDEX', log, 0)
  local e = tonumber(string.match(front, '^%d+ %d+ (%d+) '))
  if e and e <= now then
    redis.call('LPOP', log)
    n = n - 1
  else
    break
  end
end
local first_kept = top - n + 1
local first_ts = -1
if n > 0 then
  first_ts = tonumber(string.match(redis.call('LINDEX', log, 0), '^%d+ (%d+) '))
end
local mode, value = ARGV[1], tonumber(ARGV[2])
local start = 0
if mode == 'o' then
  if value >= top then start = n else start = math.max(0, value + 1 - first_kept) end
elseif mode == 't' then
  -- The first entry newer than the time: ts never decreases along the list.
  local lo, hi = 0, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local t = tonumber(string.match(redis.call('LINDEX', log, mid), '^%d+ (%d+) '))
    if t > value then hi = mid else lo = mid + 1 end
  end
  start = lo
end
local limit, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {epoch, top, first_kept, first_ts}
local got, bytes, i = 0, 0, start
while got < limit and i < n do
  local chunk = redis.call('LRANGE', log, i, i + 63)
  if #chunk == 0 then break end
  for _, entry in ipairs(chunk) do
    local head = string.match(entry, '^%d+ %d+ %d+ ')
    bytes = bytes + (#entry - #head)
    if bytes > max_bytes and got > 0 then
      return out
    end
    got = got + 1
    out[#out + 1] = entry
    if got >= limit then return out end
  end
  i = i + #chunk
end
return out
"#;

/// Keeps a watched stream's counters alive: extends the key's expiry to at
/// least ARGV[1] ms (a key without one, or gone, is left alone).
///
/// KEYS: meta.
pub(super) const KEEP: &str = r#"
local t = redis.call('PTTL', KEYS[1])
if t >= 0 and t < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return t
"#;

/// Marks an inbox read up to a cursor (SPEC §11); within one epoch the
/// stored cursor never moves backwards.
///
/// KEYS: the read key (string `"<epoch> <offset>"`).
/// ARGV: epoch, offset.
///
/// Returns `{epoch, offset}` as kept.
pub(super) const MARK_READ: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local e, o = string.match(cur, '^(%w+) (%d+)$')
  if e == ARGV[1] and tonumber(o) >= tonumber(ARGV[2]) then
    return {e, o}
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2])
return {ARGV[1], ARGV[2]}
"#;

/// Marks an inbox delivered up to an offset (SPEC §11
/// `notification_undelivered`), never backwards within an epoch, and keeps
/// the mark for a while: it only has to outlive the notifications it covers.
///
/// KEYS: the delivered key (string `"<epoch> <offset>"`).
/// ARGV: epoch, offset, ms to keep.
pub(super) const MARK_DELIVERED: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local e, o = string.match(cur, '^(%w+) (%d+)$')
  if e == ARGV[1] and tonumber(o) >= tonumber(ARGV[2]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'PX', ARGV[3])
return 1
"#;

/// Claims due pending notifications: the ones due at ARGV[1] get a new due
/// time ARGV[2] (the lease), so exactly one caller takes each until then.
///
/// KEYS: the pending sorted set (member `"<epoch> <offset> <stream>"`, score
/// due ms).
/// ARGV: now, lease end, most to take.
///
/// Returns `{pending count, {members}}`.
pub(super) const CLAIM_UNDELIVERED: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[2], m)
end
return {redis.call('ZCARD', KEYS[1]), due}
"#;
