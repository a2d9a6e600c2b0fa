"""Reads the per-pool and per-IP counters the data plane flushes into Redis.

Lifetime figures come from the totals hashes; the 30-day window sums the daily
buckets of the last 30 UTC days, today included; a trend is the run of minute or
hour buckets ending now. Every key is the one of the MTA server the pool or IP
belongs to (`{stats:N}`), which the caller takes from SQLite. One round trip per
read: a Lua script reads every field of every hash (all in one slot).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from .contract import event_log, rediskeys
from .contract.delivery_event import DeliveryEvent

LIFETIME = "lifetime"
LAST_30_DAYS = "30d"


@dataclass(frozen=True)
class Counters:
    sent: int = 0
    delivered: int = 0
    bounced: int = 0
    deferred: int = 0
    complaints: int = 0
    suppressed: int = 0  # RCPTs refused for the suppression list (pools only)
    dkim_unsigned: int = 0  # messages accepted without a DKIM signature

    @property
    def delivery_rate(self) -> float:
        """delivered / (delivered + bounced); 0.0 when nothing is final yet."""
        final = self.delivered + self.bounced
        return self.delivered / final if final else 0.0


@dataclass(frozen=True)
class PoolFigures:
    totals: Counters
    per_ip: dict[str, Counters] = field(default_factory=dict)


def window_days(window: str, now: float | None = None) -> list[float | None]:
    """The buckets to sum, as a time each holds: [None] (the lifetime totals) for
    lifetime, else one time in each of the last 30 UTC days, today first."""
    if window == LIFETIME:
        return [None]
    now = time.time() if now is None else now
    return [now - n * rediskeys.DAY.seconds for n in range(30)]


# KEYS: counter hashes (one server's: one slot); ARGV: the fields. Every field of
# every hash as one string, "1,0,2,0,0;4,4,0,0,0;..." (0 where absent): one bulk
# reply for thousands of buckets, where redis-py's parser would take ~0.1 s for
# an array of 14,400 replies (2,880 minutes of 5 counters).
_READ_COUNTERS = """
local rows = {}
for i = 1, #KEYS do
  local values = redis.call('HMGET', KEYS[i], unpack(ARGV))
  for j = 1, #ARGV do
    values[j] = values[j] or '0'
  end
  rows[i] = table.concat(values, ',')
end
return table.concat(rows, ';')
"""


async def _read(redis: aioredis.Redis, keys: list[str]) -> list[Counters]:
    """The counters of each hash in `keys`, in order (zeros for a hash that does not exist)."""
    fields = rediskeys.STATS_FIELDS
    reply = await redis.register_script(_READ_COUNTERS)(keys=keys, args=list(fields))
    rows = (reply.decode() if isinstance(reply, bytes) else reply).split(";")
    return [Counters(**dict(zip(fields, map(int, row.split(","))))) for row in rows[:len(keys)]]


def _sum(counters: list[Counters]) -> Counters:
    return Counters(**{f: sum(getattr(c, f) for c in counters) for f in rediskeys.STATS_FIELDS})


def _window_keys(window: str, server_id: int, smtp_id: int | None, address: str | None) -> list[str]:
    return [rediskeys.counter_key(server_id, smtp_id, address, None if at is None else rediskeys.DAY, at)
            for at in window_days(window)]


async def pool_figures(redis: aioredis.Redis, server_id: int, smtp_id: int, addresses: list[str],
                       window: str) -> PoolFigures:
    """The pool's counters and those of each listed IP while in this pool (keys of
    the pool's MTA server `server_id`)."""
    scopes = [_window_keys(window, server_id, smtp_id, None)]
    scopes += [_window_keys(window, server_id, smtp_id, address) for address in addresses]
    counters = await _read(redis, [key for keys in scopes for key in keys])
    n = len(scopes[0])
    totals, *per_ip = (_sum(counters[i * n:(i + 1) * n]) for i in range(len(scopes)))
    return PoolFigures(totals, dict(zip(addresses, per_ip)))


async def ip_figures(redis: aioredis.Redis, server_id: int, address: str, window: str) -> Counters:
    """One IP's counters across every pool it has been in, complaints included (keys
    of the IP's MTA server `server_id`)."""
    return _sum(await _read(redis, _window_keys(window, server_id, None, address)))


# -- trends ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrendPoint:
    start: int  # the bucket's start, unix seconds (UTC)
    counters: Counters


@dataclass(frozen=True)
class Trend:
    """Consecutive buckets of one resolution, oldest first, the last one holding now."""

    resolution: rediskeys.Resolution
    points: tuple[TrendPoint, ...]

    @property
    def totals(self) -> Counters:
        """The counters summed over every point."""
        return _sum([p.counters for p in self.points])


def trend_starts(resolution: rediskeys.Resolution, points: int, now: float) -> list[int]:
    """The starts of the `points` buckets ending with the one holding `now`, oldest first."""
    last = resolution.start(now)
    return [last - (points - 1 - i) * resolution.seconds for i in range(points)]


async def trend(redis: aioredis.Redis, server_id: int, resolution: rediskeys.Resolution, points: int, *,
                smtp_id: int | None = None, address: str | None = None, now: float | None = None) -> Trend:
    """The last `points` buckets at `resolution`, ending with the one holding `now`, of
    a pool (`smtp_id`), an IP across its pools (`address`) or an IP's counts within a
    pool (both); keys of MTA server `server_id`. A bucket nothing was counted in
    (never written, or expired) is zeros. One round trip."""
    starts = trend_starts(resolution, points, time.time() if now is None else now)
    counters = await _read(redis, [rediskeys.counter_key(server_id, smtp_id, address, resolution, start)
                                   for start in starts])
    return Trend(resolution, tuple(TrendPoint(start, c) for start, c in zip(starts, counters)))


async def message_events(redis: aioredis.Redis, server_ids: Iterable[int], message_id: str) -> list[DeliveryEvent]:
    """A message's delivery events in the event logs of MTA servers `server_ids`
    (`control.contract.event_log`, the older per-message lists included), oldest first;
    [] if none. An entry that is not a delivery event is left out rather than failing
    the whole list."""
    return await event_log.message_events(redis, server_ids, message_id)
