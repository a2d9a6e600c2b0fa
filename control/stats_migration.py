"""Moves the counters of poolmta before issue 9 under their MTA server's hash tag.

Before, every counter hash shared one tag, `poolmta:{stats}:pool:7`, `...:ip:A`,
`...:pool:7:ip:A`, each also per day (`:d:YYYYMMDD`). Now they live under their
server's `{stats:N}` (`rediskeys.counter_key`), so a Redis Cluster can spread
them. The control plane runs `migrate_legacy_counters` at every start: it finds
the old keys (SCAN), takes the server of each from SQLite (a pool's `server_id`;
an IP's from its row) and, per key, one Lua script adds every field to the new
key, keeps the longer expiry, and deletes the old key. So:

* no count is lost or doubled: a key moves whole or not at all, even if the
  process dies between two keys, and a count an older worker still writes to the
  old key meanwhile is moved by the next start;
* a second run finds nothing to move (idempotent);
* a key whose pool or IP is gone from SQLite (deleted pool, released IP) stays
  where it is, logged: nobody can read it any more, and nothing is destroyed.

The script touches two hash slots, which only a single Redis node allows. On a
Redis Cluster nothing is moved and the log says so; README.md ("Stats") has the
manual step. Applied-batch markers of the old layout are left to expire (7 days):
no worker of this version ever retries an old batch.
"""

from __future__ import annotations

import calendar
import logging
import re
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .contract import rediskeys
from .contract.runtime import pause, reraise_if_cancelling
from .store import Store

log = logging.getLogger(__name__)

# KEYS[1] the old hash, KEYS[2] its new name. Adds every field of the old hash to
# the new one, keeps the longer of their expiries, deletes the old; 1 if it moved.
_MOVE = """
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then
  return 0
end
local ttl = redis.call('PTTL', KEYS[1])
for i = 1, #fields, 2 do
  redis.call('HINCRBY', KEYS[2], fields[i], fields[i + 1])
end
if ttl > 0 and redis.call('PTTL', KEYS[2]) < ttl then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
redis.call('DEL', KEYS[1])
return 1
"""

# What follows LEGACY_STATS_PREFIX in an old counter key: a pool, an IP, or an IP
# within a pool, then a day bucket or nothing (the lifetime totals). An IPv6
# address never ends in a group of 8 digits, so the day suffix cannot be taken
# for part of one.
_LEGACY = re.compile(r"^(?:pool:(?P<pool>\d+)(?::ip:(?P<pool_ip>.+?))?|ip:(?P<ip>.+?))(?::d:(?P<day>\d{8}))?$")


@dataclass(frozen=True)
class MigrationResult:
    moved: int = 0  # counter hashes moved under their server's tag
    orphaned: int = 0  # left where they were: their pool or IP is gone from SQLite
    skipped_cluster: bool = False  # a Redis Cluster: nothing moved, a manual step


@dataclass(frozen=True)
class _LegacyKey:
    smtp_id: int | None
    address: str | None
    day: int | None  # the day bucket's start (unix seconds); None: lifetime totals


def parse_legacy_key(key: str) -> _LegacyKey | None:
    """The scope and day of an old `{stats}` counter key; None for anything else
    (an applied-batch marker, a key of another kind)."""
    if not key.startswith(rediskeys.LEGACY_STATS_PREFIX):
        return None
    found = _LEGACY.match(key[len(rediskeys.LEGACY_STATS_PREFIX):])
    if found is None:
        return None
    day = None
    if found["day"]:
        try:
            day = calendar.timegm(time.strptime(found["day"], "%Y%m%d"))
        except ValueError:
            return None
    pool = found["pool"]
    return _LegacyKey(int(pool) if pool else None, found["pool_ip"] or found["ip"], day)


def _new_key(server_id: int, old: _LegacyKey) -> str:
    resolution = None if old.day is None else rediskeys.DAY
    return rediskeys.counter_key(server_id, old.smtp_id, old.address, resolution, old.day)


class _Servers:
    """The MTA server of a pool or an IP, from SQLite, each looked up once."""

    def __init__(self, store: Store):
        self._store = store
        self._pools: dict[int, int | None] = {}
        self._ips: dict[str, int | None] = {}

    def of(self, old: _LegacyKey) -> int | None:
        if old.smtp_id is not None:
            if old.smtp_id not in self._pools:
                with self._store.read() as s:
                    pool = s.pool(old.smtp_id)
                self._pools[old.smtp_id] = pool.server_id if pool else None
            return self._pools[old.smtp_id]
        assert old.address is not None
        if old.address not in self._ips:
            with self._store.read() as s:
                ip = s.ip(old.address)
            self._ips[old.address] = ip.server_id if ip else None
        return self._ips[old.address]


async def _is_cluster(redis: aioredis.Redis) -> bool:
    info = await redis.info("cluster")
    return bool(int(info.get("cluster_enabled", 0)))


async def migrate_legacy_counters(redis: aioredis.Redis, store: Store) -> MigrationResult:
    """Move every old `{stats}` counter hash under its server's `{stats:N}` tag, each
    exactly once (see the module docstring); a second call moves nothing. Raises
    RedisError / OSError when Redis fails (what was moved stays moved)."""
    if await _is_cluster(redis):
        log.warning("Redis Cluster: counters under the old {stats} tag were not moved; "
                    "README.md (Stats) describes the manual step")
        return MigrationResult(skipped_cluster=True)
    move = redis.register_script(_MOVE)
    servers = _Servers(store)
    moved = orphaned = 0
    async for raw in redis.scan_iter(match=rediskeys.LEGACY_STATS_PREFIX + "*", count=1000):
        key = raw.decode() if isinstance(raw, bytes) else raw
        old = parse_legacy_key(key)
        if old is None:
            continue
        server_id = servers.of(old)
        if server_id is None:
            orphaned += 1
            continue
        moved += await move(keys=[key, _new_key(server_id, old)])
    if moved or orphaned:
        log.info("counters moved under their MTA server's tag: %d; left under {stats} "
                 "(their pool or IP no longer exists): %d", moved, orphaned)
    return MigrationResult(moved, orphaned)


async def migrate_when_redis_answers(redis: aioredis.Redis, store: Store, retry_seconds: float = 2.0) -> None:
    """Run the migration, retrying while Redis is unreachable, until it has run once."""
    failing = False
    while True:
        try:
            await migrate_legacy_counters(redis, store)
            return
        except (RedisError, OSError) as exc:
            reraise_if_cancelling()
            if not failing:
                log.warning("moving old counters waits for Redis: %s", exc)
                failing = True
        await pause(retry_seconds)
