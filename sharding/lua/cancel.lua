-- KEYS: Shard.timer_keys. ARGV: id, retention ms (record: KEYS[7]). Cancels a
-- pending timer; returns the status the timer had ('missing' when there is
-- none); only a pending one changes.
--! include now
--! include finalize
local st = redis.call('HGET', KEYS[7], 's')
if st == 'scheduled' or st == 'retrying' then finalize(KEYS[7], 'cancelled', ARGV[1], ARGV[2]) end
return st or 'missing'
