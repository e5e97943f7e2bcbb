-- KEYS: Shard.timer_keys. ARGV: visibility ms, then per timer (records:
-- KEYS[7..]): id, attempt, status before the claim (scheduled or retrying).
-- Undoes a claim whose attempt never started (its consumer had no sender free
-- for it): the timer is pending again with the attempt uncounted, hidden in
-- the due index for the visibility timeout while its caller puts it back on a
-- queue (if that message is lost, it comes due again). Only a claim that still
-- owns its timer (firing, same attempt number) is undone. Returns the ids undone.
--! include now
local hide, released = now + tonumber(ARGV[1]), {}
for i = 2, #ARGV, 3 do
  local id, record, status = ARGV[i], KEYS[6 + (i + 1) / 3], ARGV[i + 2]
  local r = redis.call('HMGET', record, 's', 'a', 'd')
  if r[1] == 'firing' and r[2] == ARGV[i + 1] then
    -- A timer never attempted has no 'a' field (a bare record stays u f s r).
    if redis.call('HINCRBY', record, 'a', -1) == 0 then redis.call('HDEL', record, 'a') end
    redis.call('HSET', record, 's', status)
    redis.call('HDEL', record, 'l')
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZADD', KEYS[1], hide, id)
    if status == 'retrying' then redis.call('ZADD', KEYS[3], r[3], id) end
    released[#released + 1] = id
  end
end
return released
