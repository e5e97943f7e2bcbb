-- Shared: fire_time(at, delay, longest) is the fire time in epoch ms: `at` (epoch
-- ms; a past time means now) when given (not '' nor nil), else now + `delay` ms;
-- false when it is more than `longest` ms after now. Needs `now`.
-- (Arithmetic converts a numeral string once; tonumber() parses it twice, in Lua 5.1.)
local function fire_time(at, delay, longest)
  local fire = now + delay
  if at and at ~= '' then fire = math.max(now, tonumber(at)) end
  if longest and longest ~= '' and fire > now + longest then return false end
  return fire
end
