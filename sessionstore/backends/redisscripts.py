"""The Lua scripts the ``redis`` backend runs on the server
(:mod:`sessionstore.backends.redis` describes the storage format).

Each runs as one atomic step however many machines write: the
compare-and-swap of a session's hash together with its user's set, and the
pruning of a user's set.
"""

# KEYS[1] the key; ARGV: expected version ('' = must be absent, '*' = any),
# 'put' or 'del', the fence (server time in ms after which the swap is
# refused: -1), the session id, the prefix of user sets, then for 'put':
# version, created, accessed, expires, payload, the key's expiry time in
# milliseconds, and the user ('' for none).  Returns 1 when the swap holds
# (with '*', a 'del' returns how many keys it deleted, for ``delete``).
CAS = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if now_ms > tonumber(ARGV[3]) then
    return -1
end
local current = redis.call('HGET', KEYS[1], 'v')
if ARGV[1] == '' then
    if current then return 0 end
elseif ARGV[1] ~= '*' and current ~= ARGV[1] then
    return 0
end
local old_user = redis.call('HGET', KEYS[1], 'u')
local user = ARGV[2] == 'put' and ARGV[12] or ''
if old_user and old_user ~= user then
    redis.call('SREM', ARGV[5] .. old_user, ARGV[4])
end
if ARGV[2] == 'del' then
    local deleted = redis.call('DEL', KEYS[1])
    if ARGV[1] == '*' then return deleted end
    return 1
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[6], 'c', ARGV[7], 'a', ARGV[8], 'e', ARGV[9], 'p', ARGV[10])
redis.call('PEXPIREAT', KEYS[1], ARGV[11])
if user ~= '' then
    local users = ARGV[5] .. user
    redis.call('HSET', KEYS[1], 'u', user)
    redis.call('SADD', users, ARGV[4])
    local ttl = redis.call('PTTL', users)
    if ttl < 0 or now_ms + ttl < tonumber(ARGV[11]) then
        redis.call('PEXPIREAT', users, ARGV[11])
    end
end
return 1
"""

# KEYS[1] a user's set; ARGV[1] the prefix.  Drops the ids whose session key
# is gone (expired by TTL), in one atomic step: an id is never dropped while
# its key exists.  Returns how many were dropped.
PRUNE = """
local dropped = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    if redis.call('EXISTS', ARGV[1] .. id) == 0 then
        redis.call('SREM', KEYS[1], id)
        dropped = dropped + 1
    end
end
return dropped
"""
