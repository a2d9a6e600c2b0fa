"""The Redis side of a routing publication (`control.publisher`): the Lua scripts
that put a delta or a full snapshot in place, each atomically, so a worker never
reads a `current` pointer ahead of what the change log and full snapshots hold."""

# KEYS: changes stream, current key. ARGV: version, base, delta, channel.
# Returns {1, version} when published, {0, current} when `current` is not the base.
PUBLISH_DELTA_LUA = """
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
local version = tonumber(ARGV[1])
if current ~= tonumber(ARGV[2]) or version <= current then
  return {0, current}
end
redis.call('XADD', KEYS[1], ARGV[1] .. '-0', 'd', ARGV[3])
redis.call('SET', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[4], ARGV[1])
return {1, version}
"""

# KEYS: full-snapshot hash, current key, changes stream, staging key (the snapshot,
# appended there chunk by chunk), the version's data key. ARGV: version, the marker
# the hash holds for a snapshot in its data key, channel, full snapshots kept, the
# data keys' prefix (a data key is the prefix and its version; same hash tag).
# Returns the version `current` holds afterwards. Every command here is small (RENAME
# moves the value, the AOF logs the RENAME), so Redis never stalls on a whole snapshot.
# The change log keeps the deltas after the newest full snapshot it drops (after
# the oldest kept when none is dropped): a worker that was serving the dropped one
# still follows the log instead of loading a whole snapshot, whereas Redis keeps
# no more than the full snapshots kept and the deltas of two compaction periods.
PUBLISH_FULL_LUA = """
local version = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[4]) == 0 then
  return redis.error_reply('the staging key of full snapshot ' .. ARGV[1] .. ' is gone')
end
redis.call('RENAME', KEYS[4], KEYS[5])
redis.call('PERSIST', KEYS[5])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local kept = {}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  table.insert(kept, tonumber(field))
end
table.sort(kept)
local extra = #kept - tonumber(ARGV[4])
for i = 1, extra do
  redis.call('HDEL', KEYS[1], tostring(kept[i]))
  redis.call('UNLINK', ARGV[5] .. tostring(kept[i]))
end
local trim_after = kept[math.max(extra, 1)]
redis.call('XTRIM', KEYS[3], 'MINID', tostring(trim_after + 1) .. '-0')
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if version > current then
  redis.call('SET', KEYS[2], ARGV[1])
  redis.call('PUBLISH', ARGV[3], ARGV[1])
  return version
end
return current
"""
