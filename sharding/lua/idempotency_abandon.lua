-- KEYS: key. ARGV: fingerprint. Deletes a pending key of this fingerprint.
local r = redis.call('HMGET', KEYS[1], 'fp', 'response')
if r[1] == ARGV[1] and not r[2] then redis.call('DEL', KEYS[1]) end
return 0
