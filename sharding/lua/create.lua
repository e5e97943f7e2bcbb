-- KEYS: the shard's id counter, due. ARGV: record key prefix, shard index, url,
-- delay ms, request id, id epoch (in 100 microsecond units), then optionally:
-- fire time epoch ms ('' or absent: now + delay), the longest delay ms allowed
-- ('' or absent: no check), and field/value pairs for the record (a payload, a
-- retry policy: only the fields a timer has are stored). Returns {id, fire, now},
-- or {0, 0, now} when the fire time is beyond the longest delay (nothing stored).
-- The id sequence n is the larger of the counter + 1 and the clock in units of
-- 100 microseconds since the id epoch (sharding.store.ID_EPOCH_UNITS).
--! include now
--! include fire_time
local fire = fire_time(ARGV[7], ARGV[4], ARGV[8])
if not fire then return {0, 0, now} end
local clock = tonumber(t[1]) * 10000 + math.floor(tonumber(t[2]) / 100) - tonumber(ARGV[6])
local n = math.max(tonumber(redis.call('GET', KEYS[1]) or '0') + 1, clock)
redis.call('SET', KEYS[1], string.format('%d', n))
local id = string.format('%d', n * 1000 + tonumber(ARGV[2]))
-- The record key is the shard's prefix (its hash tag, so its slot) plus the new id.
redis.call('HSET', ARGV[1] .. id, 'u', ARGV[3], 'f', fire, 's', 'scheduled', 'r', ARGV[5], unpack(ARGV, 9))
redis.call('ZADD', KEYS[2], fire, id)
return {tonumber(id), fire, now}
