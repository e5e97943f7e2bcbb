-- KEYS: the shard's id counter, due. ARGV: record key prefix, shard index, url,
-- delay ms, request id, id epoch (in 100 microsecond units), then optionally:
-- fire time epoch ms ('' or absent: now + delay), the longest delay ms allowed
-- ('' or absent: no check), and field/value pairs for the record. Returns
-- {id, fire, now}, or {0, 0, now} when the fire time is beyond the longest delay
-- (nothing stored).
-- One round trip on one Redis server: the id is made here and the record key
-- built from it, a key not in KEYS, which a Redis Cluster refuses; there the
-- service runs create_proposed.lua (sharding.ids).
--! include now
--! include fire_time
--! include next_id
--! include write_timer
local fire = fire_time(ARGV[7], ARGV[4], ARGV[8])
if not fire then return {0, 0, now} end
local id = next_id(KEYS[1], ARGV[2], ARGV[6])
-- The record key is the shard's prefix (its hash tag, so its slot) plus the new id.
return write_timer(ARGV[1] .. id, KEYS[2], id, fire, ARGV[3], ARGV[5], 9)
