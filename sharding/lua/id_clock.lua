-- Shared: id_clock(epoch) is the Redis clock in units of 100 microseconds since the
-- id epoch (sharding.store.ID_EPOCH_UNITS). Needs `t`, the reply of TIME (now.lua).
-- Arithmetic converts the numeral strings (tonumber would parse each twice in Lua 5.1).
local function id_clock(epoch)
  return t[1] * 10000 + math.floor(t[2] / 100) - epoch
end
