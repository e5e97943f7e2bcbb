-- KEYS: a timer's record. Rewrites its status with its own value: a write that
-- changes nothing but is replicated, so that a WAIT after it tells whether the
-- replicas hold the record. Returns 1, or 0 when there is no record.
local st = redis.call('HGET', KEYS[1], 's')
if not st then return 0 end
redis.call('HSET', KEYS[1], 's', st)
return 1
