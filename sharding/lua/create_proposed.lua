-- KEYS: the shard's id counter, due, then the record key of each proposed id. ARGV:
-- shard index, id epoch (100 microsecond units), the first proposed n ('': none), the
-- window T (100 microsecond units), url, delay ms, request id, then optionally: fire
-- time epoch ms ('' or absent: now + delay), the longest delay ms allowed ('' or absent:
-- no check), and field/value pairs for the record.
-- The Redis Cluster create in one round trip (sharding.ids): the client
-- proposes the ids n, n + T + 1, n + 2 (T + 1), ... (one per record key in KEYS), so the
-- record key of the id taken is declared. At most one of them lies in [clock - T, clock]
-- (the clock in units since the id epoch); if one does and is above the counter, the
-- timer is stored under id n' * 1000 + shard and the counter set to n'. Otherwise
-- nothing is stored: the id is reserved as reserve_id.lua does, for create_reserved.lua.
-- Returns {id, fire, now, clock}; fire is 0 when the id was only reserved; {0, 0, now,
-- clock} when the fire time is beyond the longest delay (nothing stored or reserved).
--! include now
--! include fire_time
--! include next_id
--! include write_timer
local clock = id_clock(ARGV[2])
local fire = fire_time(ARGV[8], ARGV[6], ARGV[9])
if not fire then return {0, 0, now, clock} end
local first, window = tonumber(ARGV[3]), tonumber(ARGV[4])
if first and first <= clock and #KEYS > 2 then
  -- The k-th proposal: the last one not above the clock.
  local k = math.min(#KEYS - 2, math.floor((clock - first) / (window + 1)) + 1)
  local n = first + (k - 1) * (window + 1)
  if n >= clock - window and n > tonumber(redis.call('GET', KEYS[1]) or '0') then
    redis.call('SET', KEYS[1], string.format('%d', n))
    local created = write_timer(KEYS[2 + k], KEYS[2], string.format('%d', n * 1000 + tonumber(ARGV[1])),
                                fire, ARGV[5], ARGV[7], 10)
    created[4] = clock
    return created
  end
end
return {tonumber(next_id(KEYS[1], ARGV[1], ARGV[2])), 0, now, clock}
