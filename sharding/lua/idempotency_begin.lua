-- KEYS: the idempotency key's hash. ARGV: fingerprint, ttl seconds.
-- Returns {'new'} (now pending), {'mismatch'}, {'pending'} or {'done', response}.
local r = redis.call('HMGET', KEYS[1], 'fp', 'response')
if not r[1] then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return {'new'}
end
if r[1] ~= ARGV[1] then return {'mismatch'} end
if not r[2] then return {'pending'} end
return {'done', r[2]}
