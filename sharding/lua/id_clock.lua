-- Shared: id_clock(epoch) is the Redis clock in units of 100 microseconds since the
-- id epoch (sharding.store.ID_EPOCH_UNITS). Needs `t`, the reply of TIME (now.lua).
local function id_clock(epoch)
  return tonumber(t[1]) * 10000 + math.floor(tonumber(t[2]) / 100) - tonumber(epoch)
end
