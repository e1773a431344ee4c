"""The GPU lease scripts. Each runs atomically in Redis and reads time only from Redis ``TIME``.

KEYS, in order (see ``RedisNames.gpu_keys``): holders, holder-info, waiters, waiter-expiry,
waiter-info, waiter-seq.
"""

from __future__ import annotations

# Milliseconds on the Redis clock; the only clock any script trusts.
NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Drop lapsed holders and waiters that stopped polling. KEYS: holders, holder-info, waiters,
# waiter-expiry, waiter-info.
RECLAIM = """
for _, slot in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('ZREM', KEYS[1], slot)
  redis.call('HDEL', KEYS[2], slot)
end
for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)) do
  redis.call('ZREM', KEYS[3], w)
  redis.call('ZREM', KEYS[4], w)
  redis.call('HDEL', KEYS[5], w)
end
"""

# KEYS: holders, holder-info, waiters, waiter-expiry, waiter-info, waiter-seq.
# ARGV: token, owner, job_id, lease_ttl_ms, waiter_ttl_ms, slot...
# Returns {slot, expires_at_ms, acquired_at_ms} when granted, else {false, place in queue}.
ACQUIRE = (
    NOW_MS
    + RECLAIM
    + """
local token = ARGV[1]
if not redis.call('ZSCORE', KEYS[3], token) then
  redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[6]), token)
  redis.call('HSET', KEYS[5], token, cjson.encode({owner = ARGV[2], job_id = ARGV[3], since_ms = now}))
end
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[5]), token)
local free = {}
for i = 6, #ARGV do
  if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then table.insert(free, ARGV[i]) end
end
-- Everyone ahead of us fits in the free slots too, so taking one now jumps nobody.
local place = redis.call('ZRANK', KEYS[3], token)
if place >= #free then return {false, place} end
local slot = free[1]
local expires = now + tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], expires, slot)
redis.call('HSET', KEYS[2], slot,
  cjson.encode({token = token, owner = ARGV[2], job_id = ARGV[3], acquired_at_ms = now}))
redis.call('ZREM', KEYS[3], token)
redis.call('ZREM', KEYS[4], token)
redis.call('HDEL', KEYS[5], token)
return {slot, expires, now}
"""
)

# KEYS: holders, holder-info. ARGV: slot, token, lease_ttl_ms. Returns the new expiry, or 0.
RENEW = (
    NOW_MS
    + """
local info = redis.call('HGET', KEYS[2], ARGV[1])
if not info or cjson.decode(info).token ~= ARGV[2] then return 0 end
local expires = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if not expires or expires <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 0
end
expires = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], expires, ARGV[1])
return expires
"""
)

# KEYS: holders, holder-info. ARGV: slot, token. Returns 1 when this token's entry was removed.
RELEASE = """
local info = redis.call('HGET', KEYS[2], ARGV[1])
if not info or cjson.decode(info).token ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""

# A waiter giving up (timeout, cancellation). Also frees a slot granted to it whose reply was lost
# to the cancellation, so that slot need not wait out its TTL.
# KEYS: holders, holder-info, waiters, waiter-expiry, waiter-info. ARGV: token, slot...
LEAVE = """
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
for i = 2, #ARGV do
  local info = redis.call('HGET', KEYS[2], ARGV[i])
  if info and cjson.decode(info).token == ARGV[1] then
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
end
return 0
"""
