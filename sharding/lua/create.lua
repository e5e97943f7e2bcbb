-- KEYS: the shard's id counter, due. ARGV: record key prefix, shard index, url,
-- delay ms, request id, id epoch (in 100 microsecond units), then optional
-- record fields as name, value pairs (none for most timers). Returns {id, fire, now}.
-- The id sequence n is the larger of the counter + 1 and the clock in units of
-- 100 microseconds since the id epoch (sharding.store.ID_EPOCH_UNITS).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local clock = tonumber(t[1]) * 10000 + math.floor(tonumber(t[2]) / 100) - tonumber(ARGV[6])
local n = math.max(tonumber(redis.call('GET', KEYS[1]) or '0') + 1, clock)
redis.call('SET', KEYS[1], string.format('%d', n))
local id = string.format('%d', n * 1000 + tonumber(ARGV[2]))
local fire = now + tonumber(ARGV[4])
-- The record key is the shard's prefix (its hash tag, so its slot) plus the new id.
redis.call('HSET', ARGV[1] .. id, 'u', ARGV[3], 'f', fire, 's', 'scheduled', 'r', ARGV[5], unpack(ARGV, 7))
redis.call('ZADD', KEYS[2], fire, id)
return {tonumber(id), fire, now}
