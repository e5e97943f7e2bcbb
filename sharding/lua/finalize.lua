-- Shared: finalize(record, status, id, retention) moves a timer to a final status
-- (fired, failed, cancelled). Needs the KEYS layout of Shard.timer_keys and `now`.
local function finalize(record, status, id, retention)
  local done = {fired = KEYS[4], failed = KEYS[5], cancelled = KEYS[6]}
  redis.call('HSET', record, 's', status, 'x', now)
  redis.call('HDEL', record, 'l', 'd')
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZADD', done[status], now, id)
  redis.call('PEXPIRE', record, retention)
end
