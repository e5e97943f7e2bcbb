-- KEYS: the new timer's record, due. ARGV: id (from reserve_id.lua), url, delay ms,
-- request id. Stores the timer; every key it touches is in KEYS (Redis Cluster).
-- Returns {id, fire, now}.
--! include now
--! include write_timer
return write_timer(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
