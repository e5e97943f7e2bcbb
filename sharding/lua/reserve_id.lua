-- KEYS: the shard's id counter. ARGV: shard index, id epoch (100 microsecond units).
-- Takes the shard's next timer id for create_reserved.lua (Redis Cluster: bench/'s
-- pipelined stores; create_proposed.lua reserves the same way when it refuses a proposal).
--! include now
--! include next_id
return tonumber(next_id(KEYS[1], ARGV[1], ARGV[2]))
