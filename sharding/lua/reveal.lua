-- KEYS: due, then one record per timer. ARGV: now ms, overdue ms, then the ids
-- (records: KEYS[2..]). Recovery's check of timers that a feed hid in the due
-- index and that no queue holds: each one whose due time (d, else its fire time
-- f) is at least overdue ms in the past is made due now. XX: a timer claimed
-- since the caller read the index has left it and stays out. Returns how many
-- were made due.
local now = tonumber(ARGV[1])
local cutoff = now - tonumber(ARGV[2])
local members = {}
for i = 3, #ARGV do
  local r = redis.call('HMGET', KEYS[i - 1], 'd', 'f')
  local due = tonumber(r[1] or r[2])
  if due and due <= cutoff then
    members[#members + 1] = now
    members[#members + 1] = ARGV[i]
  end
end
if #members == 0 then return 0 end
return redis.call('ZADD', KEYS[1], 'XX', 'CH', unpack(members))
