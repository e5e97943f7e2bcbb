-- KEYS: Shard.timer_keys. ARGV: retention ms (final statuses), then the
-- default limits (max attempts, retry window ms, floor ms: see next_attempt),
-- then per timer (records: KEYS[7..]): id, attempt, status asked for, last
-- error, wait ms until the next attempt (retrying), attempt start ms (0: now). An
-- outcome applies only while the attempt number still matches (a fencing
-- token): a late worker whose lease expired and whose timer was claimed again
-- changes nothing. A late success is still taken while no newer attempt has
-- begun. A retry the limits do not allow fails the timer. One {applied,
-- status, next attempt ms} per timer (not applied: the current status).
--! include now
--! include finalize
--! include next_attempt
local out = {}
for i = 5, #ARGV, 6 do
  local id, attempt, status, err = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local record = KEYS[6 + #out + 1]
  local r = redis.call('HMGET', record, 's', 'a')
  local owned = (r[2] or '0') == attempt and (r[1] == 'firing' or
    (status == 'fired' and (r[1] == 'scheduled' or r[1] == 'retrying')))
  local due = false
  if owned and status == 'retrying' then
    local started = tonumber(ARGV[i + 5])
    due = next_attempt(record, tonumber(attempt), tonumber(ARGV[i + 4]), started > 0 and started or now,
      ARGV[2], ARGV[3], ARGV[4])
    if not due then status = 'failed' end
  end
  if not owned then
    out[#out + 1] = {0, r[1] or 'missing', 0}
  elseif not due then
    redis.call('HSET', record, 'e', err)
    finalize(record, status, id, ARGV[1])
    out[#out + 1] = {1, status, now}
  else
    redis.call('HSET', record, 's', 'retrying', 'd', due, 'e', err)
    redis.call('HDEL', record, 'l')
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZADD', KEYS[1], due, id)
    redis.call('ZADD', KEYS[3], due, id)
    out[#out + 1] = {1, 'retrying', due}
  end
end
return out
