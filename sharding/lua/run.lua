-- KEYS: Shard.timer_keys. ARGV: failed only (1 or 0), then the ids (records:
-- KEYS[7..]). Makes each timer due now: a scheduled one by its fire time, a
-- retrying one by its next attempt (both keep their attempts); a failed one is
-- re-driven: retrying, due now, with a fresh attempt budget (k: the attempts
-- so far) and retry window (p cleared), its attempts and last error kept and
-- its record kept past retention again. With failed only, pending timers are
-- left alone. Returns, per id, the status it had ('missing' when none).
--! include now
local out = {}
for i = 2, #ARGV do
  local id, record = ARGV[i], KEYS[i + 5]
  local r = redis.call('HMGET', record, 's', 'a')
  local st = r[1]
  if st == 'failed' then
    redis.call('HSET', record, 's', 'retrying', 'd', now, 'k', r[2] or 0)
    redis.call('HDEL', record, 'p', 'x')
    redis.call('PERSIST', record)
    redis.call('ZREM', KEYS[5], id)
  elseif ARGV[1] == '0' and st == 'scheduled' then
    redis.call('HSET', record, 'f', now)
    redis.call('HDEL', record, 'd')
  elseif ARGV[1] == '0' and st == 'retrying' then
    redis.call('HSET', record, 'd', now)
  end
  if st == 'failed' or (ARGV[1] == '0' and (st == 'scheduled' or st == 'retrying')) then
    redis.call('ZADD', KEYS[1], now, id)
    if st ~= 'scheduled' then redis.call('ZADD', KEYS[3], now, id) end
  end
  out[#out + 1] = st or 'missing'
end
return out
