-- KEYS: Shard.timer_keys. ARGV: id, max attempts, retention ms (record: KEYS[7]).
-- A firing timer whose lease has run out goes back to retrying (due now), or
-- to failed when that was its last attempt. Returns the new status or false.
--! include now
--! include finalize
local record = KEYS[7]
local r = redis.call('HMGET', record, 's', 'l', 'a')
if r[1] ~= 'firing' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return false
end
if tonumber(r[2] or 0) > now then return false end
if tonumber(r[3] or 0) >= tonumber(ARGV[2]) then
  redis.call('HSET', record, 'e', 'lease expired on the last attempt')
  finalize(record, 'failed', ARGV[1], ARGV[3])
  return 'failed'
end
redis.call('HSET', record, 's', 'retrying', 'd', now, 'e', 'lease expired (delivery cut off)')
redis.call('HDEL', record, 'l')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZADD', KEYS[3], now, ARGV[1])
return 'retrying'
