-- Shared: next_attempt(record, attempt, wait, first, max attempts, window ms, floor ms)
-- says when the attempt after attempt number `attempt` of the timer `record`
-- is due (epoch ms), or false when none may follow (the timer is then failed).
-- The timer's own limits (m attempts, w seconds) override the defaults passed
-- in. Attempts count from its last re-drive (k); the retry window runs from
-- the start of its first attempt (p; when unset, `first`, which it becomes).
-- The next attempt is due `wait` ms from now; no attempt starts after the
-- window ends, and one whose wait would end within two floors of that
-- deadline (or after it) starts at the deadline itself, so the last attempt
-- comes at the deadline, a floor or more after the previous one. Needs `now`.
local function next_attempt(record, attempt, wait, first, max_attempts, window, floor)
  local r = redis.call('HMGET', record, 'm', 'w', 'p', 'k')
  if attempt - tonumber(r[4] or 0) >= tonumber(r[1] or max_attempts) then return false end
  local deadline = tonumber(r[3] or first) + (r[2] and tonumber(r[2]) * 1000 or tonumber(window))
  local due = now + wait
  if due > deadline - 2 * tonumber(floor) then
    if now + tonumber(floor) > deadline then return false end
    due = deadline
  end
  if not r[3] then redis.call('HSET', record, 'p', first) end
  return due
end
