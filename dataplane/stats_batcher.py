"""Counts per pool and per IP, kept in memory and flushed to Redis in batches.

The hot path only increments a dict entry; a background task sends everything
counted since the last flush in one pipeline round trip (HINCRBY into the
lifetime and daily hashes of the pool, the IP and the pool+IP, key names from
`control.rediskeys`). While Redis is unreachable the counts stay in memory and
go out with the next successful flush.

Delivery is at least once per count: if a connection drops after Redis applied
a pipeline but before the reply arrived, that batch is counted again. The stats
issue replaces this with an idempotent flush; this batcher only counts `sent`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from redis import exceptions as redis_errors

from control import rediskeys

log = logging.getLogger("poolmta.dataplane.stats")

# (field, day "YYYYMMDD", smtp_id, ip address)
CountKey = tuple[str, str, int, str]


class StatsBatcher:
    """In-memory counters of one worker, flushed every `interval` seconds."""

    def __init__(self, redis, interval: float = 0.25) -> None:
        self._redis = redis
        self._interval = interval
        self._pending: Counter[CountKey] = Counter()
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
        """Counts not yet in Redis."""
        return sum(self._pending.values())

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="stats-batcher")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> bool:
        """Send what was counted; True when nothing is left pending."""
        if not self._pending:
            return True
        batch, self._pending = self._pending, Counter()
        increments: Counter[tuple[str, str]] = Counter()
        for (field, day, smtp_id, address), n in batch.items():
            for day_or_none in (None, day):
                increments[(rediskeys.pool_stats_key(smtp_id, day_or_none), field)] += n
                increments[(rediskeys.ip_stats_key(address, day_or_none), field)] += n
                increments[(rediskeys.pool_ip_stats_key(smtp_id, address, day_or_none), field)] += n
        try:
            pipe = self._redis.pipeline(transaction=False)
            for (key, field), n in increments.items():
                pipe.hincrby(key, field, n)
            await pipe.execute()
        except asyncio.CancelledError:
            self._pending.update(batch)
            raise
        except (redis_errors.RedisError, OSError) as exc:
            self._pending.update(batch)
            if not self._failing:
                log.warning("stats flush failed, keeping %d counts in memory: %s", sum(batch.values()), exc)
                self._failing = True
            return False
        if self._failing:
            log.info("stats flush recovered")
            self._failing = False
        return not self._pending

    async def close(self, timeout: float = 2.0) -> None:
        """Stop the background task and make a last attempt to flush."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        try:
            await asyncio.wait_for(self.flush(), timeout)
        except (asyncio.TimeoutError, redis_errors.RedisError, OSError):
            pass
        if self._pending:
            log.warning("exiting with %d stats counts not flushed to Redis", self.pending)
