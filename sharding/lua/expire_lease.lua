-- KEYS: Shard.timer_keys. ARGV: id, retention ms, then the default limits (max
-- attempts, retry window ms, floor ms: see next_attempt) (record: KEYS[7]).
-- A firing timer whose lease has run out goes back to retrying (due now), or
-- to failed when its limits allow no further attempt. Returns the new status
-- or false.
--! include now
--! include finalize
--! include next_attempt
local record = KEYS[7]
local r = redis.call('HMGET', record, 's', 'l', 'a')
if r[1] ~= 'firing' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return false
end
if tonumber(r[2] or 0) > now then return false end
local due = next_attempt(record, tonumber(r[3] or 0), 0, now, ARGV[3], ARGV[4], ARGV[5])
if not due then
  redis.call('HSET', record, 'e', 'lease expired on the last attempt')
  finalize(record, 'failed', ARGV[1], ARGV[2])
  return 'failed'
end
redis.call('HSET', record, 's', 'retrying', 'd', due, 'e', 'lease expired (delivery cut off)')
redis.call('HDEL', record, 'l')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[1], due, ARGV[1])
redis.call('ZADD', KEYS[3], due, ARGV[1])
return 'retrying'
