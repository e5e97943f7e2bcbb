-- KEYS: due [, the shard's own queue]. ARGV: limit, visibility ms [, most
-- messages the queue may hold]. Takes up to limit due timers and hides them for
-- the visibility timeout (a claim removes them for good; if their message is
-- lost they come due again). Returns their ids. With the queue given, nothing
-- is taken while it holds that many messages: a backlog waits in the due index,
-- not on the queue, so that no fed timer waits out its visibility timeout on a
-- long queue and is fed a second time.
--! include now
if KEYS[2] and redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[3]) then return {} end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local hide = now + tonumber(ARGV[2])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], 'XX', hide, id) end
return ids
