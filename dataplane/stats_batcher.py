"""Counts per pool and per IP, and delivery events per message, kept in memory
and flushed to Redis in batches.

The hot path only increments a dict entry (a count) or appends to a deque (an
event). A background task turns what is waiting into one batch at most every
`interval` seconds, or as soon as `max_batch_events` events wait, and applies
it in one round trip:

* counts: one Lua script HINCRBYs the lifetime and daily hashes of the pool,
  the IP and the pool+IP (key names from `control.contract.rediskeys`, all
  under the `{stats}` hash tag), daily hashes expiring after the retention period;
* events: one Lua script per message RPUSHes its events (JSON) to the
  message's event list (`{msg:ID}` tag) and sets the list's expiry.

With events the scripts go in one pipeline (still one round trip; each script
stays on its own hash slot, so a Redis Cluster works).

Exactly once: each batch has an id, and the counts script first sets the
batch's marker key with NX, applying nothing if the marker exists; the events
script skips an event already in the list (a retried batch carries the very
same JSON). A batch whose flush failed (Redis down, or the reply lost after
Redis applied it) is retried later, unchanged, before anything newer, so it
applies once either way.

While Redis is unreachable, counts wait in memory: they are summed per key
(field, day, pool, IP), so they take room per key, not per event. Events wait
too, up to `max_pending_events`; past that the oldest are dropped, which is
logged and counted in `metrics["events_dropped"]`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
import time
from collections import Counter, deque
from dataclasses import dataclass

from redis import exceptions as redis_errors

from control.contract import rediskeys
from control.contract.runtime import reraise_if_cancelling

log = logging.getLogger("poolmta.dataplane.stats")

# (field, day "YYYYMMDD", smtp_id, ip address)
CountKey = tuple[str, str, int, str]

_FIELDS = frozenset(rediskeys.STATS_FIELDS + rediskeys.DSN_STATS_FIELDS)

# Distinct count keys kept while Redis is down (a key per field, day, pool and
# IP: far more than any server has); new keys past it are dropped and logged.
MAX_COUNT_KEYS = 100_000

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

# KEYS[1] a message's event list; ARGV[1] its TTL, ARGV[2..] events (JSON), in
# order. An event already in the list (a retried batch) is not added again.
_APPEND_EVENTS = """
local added = 0
for i = 2, #ARGV do
  if not redis.call('LPOS', KEYS[1], ARGV[i]) then
    redis.call('RPUSH', KEYS[1], ARGV[i])
    added = added + 1
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return added
"""


@dataclass(frozen=True)
class _Batch:
    batch_id: str
    keys: list[str]
    args: list[str | int]
    counts: int
    events: tuple[tuple[str, str], ...] = ()  # (message id, JSON)


class StatsBatcher:
    """In-memory counters and events of one worker, flushed every `interval` seconds.

    `batch_prefix` must be unique per process (the worker id); a random part is
    added so a restarted worker never reuses an id.
    """

    def __init__(self, redis, interval: float = 0.25, *, batch_prefix: str = "worker",
                 max_batch_events: int = 1000, max_pending_events: int = 100_000,
                 event_ttl: float = 7 * 86400.0) -> None:
        self._redis = redis
        self._interval = interval
        self._pending: Counter[CountKey] = Counter()
        self._events: deque[tuple[str, str]] = deque()
        self._unsent: _Batch | None = None
        self._script = redis.register_script(_APPLY_BATCH)
        self._prefix = f"{batch_prefix}:{secrets.token_hex(4)}"
        self._seq = itertools.count(1)
        self._day_ends = 0.0
        self._day = ""
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._failing = False
        self._dropping = False
        self.max_batch_events = max_batch_events
        self.max_pending_events = max_pending_events
        self.event_ttl = max(1, math.ceil(event_ttl))
        self.metrics: Counter[str] = Counter()

    def _today(self) -> str:
        now = time.time()
        if now >= self._day_ends:
            self._day_ends = (now // 86400 + 1) * 86400
            self._day = time.strftime("%Y%m%d", time.gmtime(now))
        return self._day

    def count(self, field: str, smtp_id: int, address: str, n: int = 1) -> None:
        """Add `n` to `field` (one of `rediskeys.STATS_FIELDS`: sent, delivered, bounced,
        deferred, complaints; or of `rediskeys.DSN_STATS_FIELDS`, the DSNs sent to senders)
        of the pool, the IP and the pool+IP (today's bucket and lifetime)."""
        if field not in _FIELDS:
            raise ValueError(f"not a stats field: {field!r} (one of {', '.join(sorted(_FIELDS))})")
        key = (field, self._today(), smtp_id, address)
        if key not in self._pending and len(self._pending) >= MAX_COUNT_KEYS:
            self.metrics["counts_dropped"] += n
            log.error("stats: %d distinct counters wait for Redis already; dropping %d %s count(s) of pool %d, IP %s",
                      MAX_COUNT_KEYS, n, field, smtp_id, address)
            return
        self._pending[key] += n

    def count_sent(self, smtp_id: int, address: str, n: int = 1) -> None:
        self.count("sent", smtp_id, address, n)

    def event(self, message_id: str, event_json: str) -> None:
        """Queue one delivery event of a message (a JSON object) for its event list."""
        events = self._events
        events.append((message_id, event_json))
        if len(events) > self.max_pending_events:
            events.popleft()
            self.metrics["events_dropped"] += 1
            if not self._dropping:
                self._dropping = True
                log.error("stats: %d delivery events wait for Redis; dropping the oldest ones "
                          "(counts are kept; see events_dropped)", self.max_pending_events)
        elif len(events) >= self.max_batch_events and self._wake is not None:
            self._wake.set()

    @property
    def pending(self) -> int:
        """Counts not yet known to be in Redis."""
        return sum(self._pending.values()) + (self._unsent.counts if self._unsent else 0)

    @property
    def pending_events(self) -> int:
        """Events not yet known to be in Redis."""
        return len(self._events) + (len(self._unsent.events) if self._unsent else 0)

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="stats-batcher")

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            try:
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            done = await self.flush()
            if not done and not self._failing and len(self._events) >= self.max_batch_events:
                self._wake.set()  # a full batch more is waiting: flush it now

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
        take = min(len(self._events), self.max_batch_events)
        events = tuple(self._events.popleft() for _ in range(take))
        if self._dropping and len(self._events) < self.max_pending_events // 2:
            self._dropping = False
        return _Batch(batch_id, keys, args, counts, events)

    async def _apply(self, batch: _Batch) -> None:
        if not batch.events:
            await self._script(keys=batch.keys, args=batch.args)
            return
        # The client the counts script belongs to carries the whole batch.
        pipe = self._script.registered_client.pipeline(transaction=False)
        if len(batch.keys) > 1:
            pipe.eval(_APPLY_BATCH, len(batch.keys), *batch.keys, *batch.args)
        by_message: dict[str, list[str]] = {}
        for message_id, text in batch.events:
            by_message.setdefault(message_id, []).append(text)
        for message_id, texts in by_message.items():
            pipe.eval(_APPEND_EVENTS, 1, rediskeys.message_events_key(message_id), self.event_ttl, *texts)
        await pipe.execute()

    async def flush(self) -> bool:
        """Send what was counted and the events waiting; True when nothing is left pending."""
        if self._unsent is None:
            if not self._pending and not self._events:
                return True
            self._unsent = self._next_batch()
        batch = self._unsent
        try:
            await self._apply(batch)
        except (redis_errors.RedisError, OSError) as exc:
            reraise_if_cancelling()
            self.metrics["flush_failures"] += 1
            if not self._failing:
                log.warning("stats flush failed, keeping %d counts and %d events in memory: %s",
                            self.pending, self.pending_events, exc)
                self._failing = True
            return False
        self._unsent = None  # applied now, or found applied by an earlier attempt
        self.metrics["flushes"] += 1
        if self._failing:
            log.info("stats flush recovered")
            self._failing = False
        return not self._pending and not self._events

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
        if self.pending or self.pending_events:
            log.warning("exiting with %d stats counts and %d events not flushed to Redis",
                        self.pending, self.pending_events)
