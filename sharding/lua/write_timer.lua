-- Shared: write_timer(record key, due key, id, url, delay ms, request id) stores a
-- new scheduled timer and its due entry. Needs `now` (now.lua). Returns {id, fire, now}.
local function write_timer(record, due, id, url, delay, request_id)
  local fire = now + tonumber(delay)
  redis.call('HSET', record, 'u', url, 'f', fire, 's', 'scheduled', 'r', request_id)
  redis.call('ZADD', due, fire, id)
  return {tonumber(id), fire, now}
end
