-- Shared: write_timer(record key, due key, id, fire, url, request id, first) stores a
-- new scheduled timer firing at `fire` (epoch ms) and its due entry; ARGV[first..]
-- are optional field/value pairs for the record (a payload, a retry policy: only
-- the fields a timer has are stored). Needs `now` (now.lua). Returns {id, fire, now}.
-- The fire time is formatted once (a number argument of redis.call is printed with
-- %.17g at each call, the dearest step of the script).
local function write_timer(record, due, id, fire, url, request_id, first)
  local at = string.format('%d', fire)
  redis.call('HSET', record, 'u', url, 'f', at, 's', 'scheduled', 'r', request_id, unpack(ARGV, first))
  redis.call('ZADD', due, at, id)
  return {id + 0, fire, now}
end
