-- Shared: write_timer(record key, due key, id, fire, url, request id, first) stores a
-- new scheduled timer firing at `fire` (epoch ms) and its due entry; ARGV[first..]
-- are optional field/value pairs for the record (a payload, a retry policy: only
-- the fields a timer has are stored). Needs `now` (now.lua). Returns {id, fire, now}.
local function write_timer(record, due, id, fire, url, request_id, first)
  redis.call('HSET', record, 'u', url, 'f', fire, 's', 'scheduled', 'r', request_id, unpack(ARGV, first))
  redis.call('ZADD', due, fire, id)
  return {tonumber(id), fire, now}
end
