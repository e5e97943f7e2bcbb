-- KEYS: Shard.timer_keys. ARGV: retention ms (final statuses), then per timer
-- (records: KEYS[7..]): id, attempt, new status, last error, delay ms until the
-- next attempt (retrying). An outcome applies only while the attempt number
-- still matches (a fencing token): a late worker whose lease expired and whose
-- timer was claimed again changes nothing. A late success is still taken while
-- no newer attempt has begun. One {applied, next attempt ms} per timer.
--! include now
--! include finalize
local out = {}
for i = 2, #ARGV, 5 do
  local id, attempt, status, err = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local record = KEYS[6 + #out + 1]
  local r = redis.call('HMGET', record, 's', 'a')
  local owned = (r[2] or '0') == attempt and (r[1] == 'firing' or
    (status == 'fired' and (r[1] == 'scheduled' or r[1] == 'retrying')))
  if not owned then
    out[#out + 1] = {0, 0}
  elseif status ~= 'retrying' then
    redis.call('HSET', record, 'e', err)
    finalize(record, status, id, ARGV[1])
    out[#out + 1] = {1, now}
  else
    local next = now + tonumber(ARGV[i + 4])
    redis.call('HSET', record, 's', 'retrying', 'd', next, 'e', err)
    redis.call('HDEL', record, 'l')
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZADD', KEYS[1], next, id)
    redis.call('ZADD', KEYS[3], next, id)
    out[#out + 1] = {1, next}
  end
end
return out
