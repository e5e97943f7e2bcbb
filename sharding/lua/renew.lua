-- KEYS: Shard.timer_keys. ARGV: lease ms, then per timer (records: KEYS[7..]):
-- id, attempt. Extends the lease of each timer still firing with that attempt
-- number to now + lease ms. Returns how many were extended.
--! include now
local lease, renewed = now + tonumber(ARGV[1]), 0
for i = 2, #ARGV, 2 do
  local record = KEYS[6 + (i / 2)]
  local r = redis.call('HMGET', record, 's', 'a')
  if r[1] == 'firing' and r[2] == ARGV[i + 1] then
    redis.call('HSET', record, 'l', lease)
    redis.call('ZADD', KEYS[2], lease, ARGV[i])
    renewed = renewed + 1
  end
end
return renewed
