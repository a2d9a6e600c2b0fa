"""Reads the per-pool and per-IP counters the data plane flushes into Redis.

Lifetime figures come from the totals hashes; the 30-day window sums the daily
buckets of the last 30 UTC days, today included. One pipelined round trip per read.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from .contract import rediskeys
from .contract.delivery_event import DeliveryEvent, decode_list

LIFETIME = "lifetime"
LAST_30_DAYS = "30d"


@dataclass(frozen=True)
class Counters:
    sent: int = 0
    delivered: int = 0
    bounced: int = 0
    deferred: int = 0
    complaints: int = 0

    @property
    def delivery_rate(self) -> float:
        """delivered / (delivered + bounced); 0.0 when nothing is final yet."""
        final = self.delivered + self.bounced
        return self.delivered / final if final else 0.0


@dataclass(frozen=True)
class PoolFigures:
    totals: Counters
    per_ip: dict[str, Counters] = field(default_factory=dict)


def window_days(window: str, today: dt.date | None = None) -> list[str | None]:
    """Bucket suffixes to sum: [None] for lifetime, else the last 30 YYYYMMDD days."""
    if window == LIFETIME:
        return [None]
    today = today or dt.datetime.now(dt.timezone.utc).date()
    return [(today - dt.timedelta(days=n)).strftime("%Y%m%d") for n in range(30)]


def _sum(hashes: list[dict]) -> Counters:
    totals = dict.fromkeys(rediskeys.STATS_FIELDS, 0)
    for h in hashes:
        for key, value in h.items():
            name = key.decode() if isinstance(key, bytes) else key
            if name in totals:
                totals[name] += int(value)
    return Counters(**totals)


async def pool_figures(redis: aioredis.Redis, smtp_id: int, addresses: list[str], window: str) -> PoolFigures:
    """The pool's counters and those of each listed IP while in this pool."""
    days = window_days(window)
    pipe = redis.pipeline(transaction=False)
    for day in days:
        pipe.hgetall(rediskeys.pool_stats_key(smtp_id, day))
    for address in addresses:
        for day in days:
            pipe.hgetall(rediskeys.pool_ip_stats_key(smtp_id, address, day))
    results = await pipe.execute()
    n = len(days)
    totals = _sum(results[:n])
    per_ip = {
        address: _sum(results[n * (i + 1) : n * (i + 2)]) for i, address in enumerate(addresses)
    }
    return PoolFigures(totals, per_ip)


async def ip_figures(redis: aioredis.Redis, address: str, window: str) -> Counters:
    """One IP's counters across every pool it has been in, complaints included."""
    pipe = redis.pipeline(transaction=False)
    for day in window_days(window):
        pipe.hgetall(rediskeys.ip_stats_key(address, day))
    return _sum(await pipe.execute())


async def message_events(redis: aioredis.Redis, message_id: str) -> list[DeliveryEvent]:
    """A message's delivery events, oldest first; [] if none. An entry that is not
    a delivery event is left out rather than failing the whole list."""
    return decode_list(await redis.lrange(rediskeys.message_events_key(message_id), 0, -1))
