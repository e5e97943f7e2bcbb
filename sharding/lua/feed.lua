-- KEYS: due. ARGV: limit, visibility ms. Takes up to limit due timers and
-- hides them for the visibility timeout (a claim removes them for good; if
-- their message is lost they come due again). Returns their ids.
--! include now
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local hide = now + tonumber(ARGV[2])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], 'XX', hide, id) end
return ids
