"""The Redis side of a routing publication (`control.publisher`): the Lua scripts
that put a delta or a full snapshot in place, each atomically, so a worker never
reads a `current` pointer ahead of what the change log and full snapshots hold, and
the chunked write of a full snapshot that comes before its script."""

import asyncio
import contextlib
import secrets

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from .contract import rediskeys

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
# A dropped version's data key goes at once (UNLINK: freed off Redis's main thread);
# a worker that read its marker just before finds the key gone and reads the hash
# again, where a newer full snapshot now is (`dataplane.snapshot_loader`).
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


async def write_full_snapshot(redis: aioredis.Redis, full_script: AsyncScript, server_id: int, version: int,
                              payload: bytes, *, fulls_kept: int,
                              chunk_bytes: int = rediskeys.SNAPSHOT_FULL_CHUNK_BYTES) -> int:
    """Put `payload` in Redis as the full snapshot of `version` (`full_script` is
    PUBLISH_FULL_LUA registered on `redis`): appended to a staging key of its own, one
    chunk per command (Redis answers its other clients between them), then moved in
    place by the script; returns the version `current` holds afterwards. A write cut
    short leaves only the staging key, which expires. A snapshot of at most
    SNAPSHOT_FULL_ONE_COMMAND_CHUNKS chunks goes in one command: Redis keeps up to
    1 MB of room after a string grown by APPEND, which would double a small one."""
    staging = rediskeys.snapshot_full_staging_key(server_id, version, secrets.token_hex(8))
    view = memoryview(payload)
    if len(view) <= rediskeys.SNAPSHOT_FULL_ONE_COMMAND_CHUNKS * chunk_bytes:
        chunk_bytes = max(len(view), 1)
    try:
        await redis.set(staging, view[:chunk_bytes], ex=rediskeys.SNAPSHOT_FULL_STAGING_TTL_SECONDS)
        for start in range(chunk_bytes, len(view), chunk_bytes):
            await redis.append(staging, view[start:start + chunk_bytes])
        return await full_script(
            keys=[rediskeys.snapshot_full_key(server_id), rediskeys.snapshot_current_key(server_id),
                  rediskeys.snapshot_changes_key(server_id), staging,
                  rediskeys.snapshot_full_data_key(server_id, version)],
            args=[version, rediskeys.SNAPSHOT_FULL_IN_DATA_KEY, rediskeys.snapshot_channel(server_id),
                  fulls_kept, rediskeys.snapshot_full_data_prefix(server_id)],
        )
    except BaseException:
        with contextlib.suppress(RedisError, OSError):  # else its expiry sheds it
            await asyncio.shield(redis.unlink(staging))
        raise
