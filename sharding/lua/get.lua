-- KEYS: a timer's record. ARGV: the field names to read. Returns their values
-- (nil when absent) followed by the Redis clock in epoch ms: one script, since
-- a cluster pipeline refuses TIME.
--! include now
local r = redis.call('HMGET', KEYS[1], unpack(ARGV))
r[#ARGV + 1] = now
return r
