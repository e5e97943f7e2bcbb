-- KEYS: Shard.timer_keys (due, leases, retries, done:fired, done:failed,
-- done:cancelled, then one record per timer). ARGV: lease ms, early tolerance
-- ms, then the ids (records: KEYS[7..]).
-- One entry per id: {status} when not claimable, {'early', due} when not yet
-- due, {'firing', attempts, url, fire, now, request id, attempts since the last
-- re-drive, body, content type, headers, status before the claim} when claimed
-- (the payload fields false when the timer has none).
--! include now
local out = {}
local lease = now + tonumber(ARGV[1])
for i = 3, #ARGV do
  local id, record = ARGV[i], KEYS[i + 4]
  local r = redis.call('HMGET', record, 's', 'd', 'f', 'u', 'r', 'k', 'b', 'c', 'h')
  if r[1] ~= 'scheduled' and r[1] ~= 'retrying' then
    out[#out + 1] = {r[1] or 'missing'}
  else
    local due = tonumber(r[2] or r[3])
    -- Never early for a retry: its due time keeps it a floor (1 s) after the attempt before.
    if due > now + (r[1] == 'retrying' and 0 or tonumber(ARGV[2])) then
      -- A stale message: the feed that sent it hid the timer; show it again at its due time.
      redis.call('ZADD', KEYS[1], 'XX', due, id)
      out[#out + 1] = {'early', due}
    else
      local attempts = redis.call('HINCRBY', record, 'a', 1)
      redis.call('HSET', record, 's', 'firing', 'l', lease)
      redis.call('ZREM', KEYS[1], id)
      redis.call('ZREM', KEYS[3], id)
      redis.call('ZADD', KEYS[2], lease, id)
      out[#out + 1] = {'firing', attempts, r[4], r[3], now, r[5] or '', attempts - tonumber(r[6] or 0),
                        r[7], r[8], r[9], r[1]}
    end
  end
end
return out
