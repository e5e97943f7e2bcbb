-- KEYS: Shard.timer_keys (record: KEYS[7]). ARGV: id, fire time epoch ms ('':
-- now + delay), delay ms, the longest delay ms allowed, then the record fields
-- to return. Moves a pending (scheduled or retrying) timer to a new fire time,
-- atomically with claims and cancels: its due entry (and a retrying timer's
-- next attempt) move with it; a queue message already sent for it is now early,
-- and the claim's early check drops it. Returns {'rescheduled', now, {fields}},
-- {'beyond', now} when the fire time is past the longest delay (nothing
-- changed), else {status the timer has ('missing' when none), now}.
--! include now
--! include fire_time
local record = KEYS[7]
local st = redis.call('HGET', record, 's')
if st ~= 'scheduled' and st ~= 'retrying' then return {st or 'missing', now} end
local fire = fire_time(ARGV[2], ARGV[3], ARGV[4])
if not fire then return {'beyond', now} end
redis.call('HSET', record, 'f', fire)
if st == 'retrying' then
  redis.call('HSET', record, 'd', fire)
  redis.call('ZADD', KEYS[3], fire, ARGV[1])
else
  -- A scheduled timer's next attempt is its first: due at the fire time.
  redis.call('HDEL', record, 'd')
end
redis.call('ZADD', KEYS[1], fire, ARGV[1])
return {'rescheduled', now, redis.call('HMGET', record, unpack(ARGV, 5))}
