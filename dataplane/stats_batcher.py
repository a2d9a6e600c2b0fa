"""Counts per pool and per IP, kept in memory and flushed to Redis in batches.

The hot path only increments a dict entry. A background task turns everything
counted since the last flush into one batch and applies it with one Lua script
(one round trip): HINCRBY into the lifetime and daily hashes of the pool, the IP
and the pool+IP (key names from `control.rediskeys`, all under the `{stats}` hash
tag), daily hashes expiring after the retention period.

Exactly once: each batch has an id, and the script first sets the batch's marker
key with NX, applying nothing if the marker exists. A batch whose flush failed
(Redis down, or the reply lost after Redis applied it) is retried later with the
same id, before any newer counts, so it is counted once either way. While Redis
is unreachable the counts wait in memory.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass

from redis import exceptions as redis_errors

from control import rediskeys

log = logging.getLogger("poolmta.dataplane.stats")

# (field, day "YYYYMMDD", smtp_id, ip address)
CountKey = tuple[str, str, int, str]

# KEYS[1] the batch marker, KEYS[2..] counter hashes; ARGV[1] marker TTL, ARGV[2]
# daily-bucket TTL, then per counter hash: field, increment, "1" if daily.
_APPLY_BATCH = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
local day_ttl = tonumber(ARGV[2])
for i = 2, #KEYS do
  local a = 3 + (i - 2) * 3
  redis.call('HINCRBY', KEYS[i], ARGV[a], ARGV[a + 1])
  if ARGV[a + 2] == '1' then
    redis.call('EXPIRE', KEYS[i], day_ttl)
  end
end
return 1
"""


@dataclass(frozen=True)
class _Batch:
    batch_id: str
    keys: list[str]
    args: list[str | int]
    counts: int


class StatsBatcher:
    """In-memory counters of one worker, flushed every `interval` seconds.

    `batch_prefix` must be unique per process (the worker id); a random part is
    added so a restarted worker never reuses an id.
    """

    def __init__(self, redis, interval: float = 0.25, *, batch_prefix: str = "worker") -> None:
        self._redis = redis
        self._interval = interval
        self._pending: Counter[CountKey] = Counter()
        self._unsent: _Batch | None = None
        self._script = redis.register_script(_APPLY_BATCH)
        self._prefix = f"{batch_prefix}:{secrets.token_hex(4)}"
        self._seq = itertools.count(1)
        self._day_ends = 0.0
        self._day = ""
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def _today(self) -> str:
        now = time.time()
        if now >= self._day_ends:
            self._day_ends = (now // 86400 + 1) * 86400
            self._day = time.strftime("%Y%m%d", time.gmtime(now))
        return self._day

    def count(self, field: str, smtp_id: int, address: str, n: int = 1) -> None:
        """Add `n` to `field` of the pool, the IP and the pool+IP (today's bucket and lifetime)."""
        self._pending[(field, self._today(), smtp_id, address)] += n

    def count_sent(self, smtp_id: int, address: str) -> None:
        self.count("sent", smtp_id, address)

    @property
    def pending(self) -> int:
        """Counts not yet known to be in Redis."""
        return sum(self._pending.values()) + (self._unsent.counts if self._unsent else 0)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="stats-batcher")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    def _next_batch(self) -> _Batch:
        increments: Counter[tuple[str, str, bool]] = Counter()
        for (field, day, smtp_id, address), n in self._pending.items():
            for bucket in (None, day):
                daily = bucket is not None
                increments[(rediskeys.pool_stats_key(smtp_id, bucket), field, daily)] += n
                increments[(rediskeys.ip_stats_key(address, bucket), field, daily)] += n
                increments[(rediskeys.pool_ip_stats_key(smtp_id, address, bucket), field, daily)] += n
        batch_id = f"{self._prefix}:{next(self._seq)}"
        keys = [rediskeys.stats_batch_marker_key(batch_id)]
        args: list[str | int] = [rediskeys.STATS_BATCH_MARKER_TTL_SECONDS, rediskeys.STATS_DAY_RETENTION_SECONDS]
        for (key, field, daily), n in increments.items():
            keys.append(key)
            args += [field, n, "1" if daily else "0"]
        counts = sum(self._pending.values())
        self._pending = Counter()
        return _Batch(batch_id, keys, args, counts)

    async def flush(self) -> bool:
        """Send what was counted; True when nothing is left pending."""
        if self._unsent is None:
            if not self._pending:
                return True
            self._unsent = self._next_batch()
        batch = self._unsent
        try:
            await self._script(keys=batch.keys, args=batch.args)
        except (redis_errors.RedisError, OSError) as exc:
            if not self._failing:
                log.warning("stats flush failed, keeping %d counts in memory: %s", self.pending, exc)
                self._failing = True
            return False
        self._unsent = None  # applied now, or found applied by an earlier attempt
        if self._failing:
            log.info("stats flush recovered")
            self._failing = False
        return not self._pending

    async def close(self, timeout: float = 2.0) -> None:
        """Stop the background task and try to flush what is left."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        try:
            async with asyncio.timeout(timeout):
                while not await self.flush():
                    await asyncio.sleep(0.1)
        except (TimeoutError, redis_errors.RedisError, OSError):
            pass
        if self.pending:
            log.warning("exiting with %d stats counts not flushed to Redis", self.pending)
