-- KEYS: the new timer's record, due. ARGV: id (from reserve_id.lua), url, delay ms,
-- request id, fire time epoch ms ('': now + delay), the longest delay ms allowed
-- ('': no check), then field/value pairs for the record. Stores the timer as
-- create.lua does; every key it touches is in KEYS (Redis Cluster). Returns
-- {id, fire, now}, or {0, 0, now} when the fire time is beyond the longest delay.
--! include now
--! include fire_time
--! include write_timer
local fire = fire_time(ARGV[5], ARGV[3], ARGV[6])
if not fire then return {0, 0, now} end
return write_timer(KEYS[1], KEYS[2], ARGV[1], fire, ARGV[2], ARGV[4], 7)
