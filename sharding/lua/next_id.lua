-- Shared: next_id(counter key, shard index, id epoch) takes the shard's next timer
-- id, n * 1000 + shard, where n is the larger of the counter + 1 and the clock in
-- units of 100 microseconds since the id epoch (sharding.store.ID_EPOCH_UNITS).
-- Returns the id as decimal text (a number would print as 2.8753332012300e+14).
-- Needs `t`, the reply of TIME (now.lua). Arithmetic converts the numeral strings.
--! include id_clock
local function next_id(counter, shard, epoch)
  local n = math.max((redis.call('GET', counter) or 0) + 1, id_clock(epoch))
  redis.call('SET', counter, string.format('%d', n))
  return string.format('%d', n * 1000 + shard)
end
