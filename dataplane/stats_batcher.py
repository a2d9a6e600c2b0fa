"""Counts per pool and per IP, and delivery events per message, kept in memory
and flushed to Redis in batches.

The hot path only increments a dict entry (a count) or appends to a deque (an
event). A background task turns what is waiting into one batch at most every
`interval` seconds, or as soon as `max_batch_events` events wait, and applies
it in one round trip:

* counts: one Lua script HINCRBYs every counter hash a count touches
  (`rediskeys.count_targets`: lifetime totals and the day, hour and minute
  buckets of the pool, the IP and the pool+IP, all under the worker's MTA server
  tag `{stats:N}`), buckets expiring at their retention (EXPIREAT);
* events: one Lua script per message RPUSHes its events (JSON) to the
  message's event list (`{msg:ID}` tag) and sets the list's expiry;
* the message index: a SET per accepted message with a Message-ID header,
  `rediskeys.message_index_key(Message-ID)` -> our message id, expiring with the
  events (a report that returns only the original headers finds its message
  through it while the message's events last);
* suppressions: one HSETNX per address a permanent bounce put on its account's
  suppression list (`{supp:USER}` tag; `control.contract.suppression`).

A correction made elsewhere (an asynchronous bounce moving a recipient from
delivered to bounced) uses the same script through `apply_counts_once`, with a
marker of its own, so it too applies once however often it is retried.

With events, index entries or suppressions the scripts and commands go in one
pipeline (still one round trip; each command stays on its own hash slot, so a
Redis Cluster works).

Exactly once: each batch has an id, and the counts script first sets the
batch's marker key with NX, applying nothing if the marker exists; the events
script skips an event already in the list (a retried batch carries the very
same JSON); an index entry is a plain SET of the same value, and HSETNX never
replaces a suppression entry (the first one wins). A batch whose flush failed
(Redis down, or the reply lost after Redis applied it) is retried later,
unchanged, before anything newer, so it applies once either way.

A count goes into the buckets of the minute it was counted in (not the minute it
is flushed in), so trends show when things happened even after Redis was down.
While Redis is unreachable, counts wait in memory: they are summed per key
(field, minute, pool, IP), so they take room per key, not per event. A long
outage gives up detail before counts: past half of MAX_COUNT_KEYS new counts are
kept per hour (their minute buckets are not written), past three quarters per
day, and only past the bound are they dropped (logged, `counts_dropped`). Events wait
too, up to `max_pending_events`; past that the oldest are dropped, which is
logged and counted in `metrics["events_dropped"]`. Index entries likewise
(`metrics["index_dropped"]`): losing one only costs a report its header attribution.
Suppressions wait up to `max_pending_suppressions` (`metrics["suppressions_dropped"]`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from redis import exceptions as redis_errors

from control.contract import rediskeys
from control.contract.runtime import reraise_if_cancelling

log = logging.getLogger("poolmta.dataplane.stats")

# (field, the finest bucket known (MINUTE, or HOUR / DAY in a long outage), that
# bucket's start (unix seconds), smtp_id, ip address or "" for a count of the pool alone)
CountKey = tuple[str, rediskeys.Resolution, int, int, str]
# (user_id, normalised address, entry JSON): one address for an account's suppression list
Suppression = tuple[int, str, str]

_FIELDS = frozenset(rediskeys.STATS_FIELDS + rediskeys.DSN_STATS_FIELDS)

# Distinct count keys kept while Redis is down (a key per field, minute, pool and
# IP: a 50-IP server's four hours of minutes, then five days of hours, then four
# months of days); new keys past it are dropped and logged.
MAX_COUNT_KEYS = 100_000

# KEYS[1] the batch marker, KEYS[2..] counter hashes; ARGV[1] marker TTL, then per
# counter hash: when it expires (unix seconds, 0 for never), how many fields
# follow, and that many field, increment pairs.
_APPLY_BATCH = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
local a = 2
for i = 2, #KEYS do
  local expires_at = tonumber(ARGV[a])
  local fields = tonumber(ARGV[a + 1])
  a = a + 2
  for f = 1, fields do
    redis.call('HINCRBY', KEYS[i], ARGV[a], ARGV[a + 1])
    a = a + 2
  end
  if expires_at > 0 then
    redis.call('EXPIREAT', KEYS[i], expires_at)
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


# A change to counters: (field, smtp_id, address, when it happened (unix seconds),
# the finest bucket it is known to, amount; negative takes away).
CountChange = tuple[str, int, str, float, rediskeys.Resolution, int]


def counts_script_input(server_id: int, marker_id: str, changes: Iterable[CountChange],
                        now: float, marker_ttl: int = rediskeys.STATS_BATCH_MARKER_TTL_SECONDS,
                        ) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of the counts script (_APPLY_BATCH) applying `changes` to every
    hash `rediskeys.count_targets` names for them, once per `marker_id` (the script
    does nothing when the marker `stats_batch_marker_key(server_id, marker_id)`
    exists; it is kept `marker_ttl` seconds)."""
    increments: dict[str, tuple[int | None, Counter[str]]] = {}
    targets: dict[tuple, tuple[rediskeys.CountTarget, ...]] = {}
    for field, smtp_id, address, at, finest, n in changes:
        where = (smtp_id, address, at, finest)
        if where not in targets:  # the fields of one pool, IP and minute share their keys
            targets[where] = rediskeys.count_targets(server_id, smtp_id, address, at, now, finest)
        for target in targets[where]:
            increments.setdefault(target.key, (target.expires_at, Counter()))[1][field] += n
    keys = [rediskeys.stats_batch_marker_key(server_id, marker_id)]
    args: list[str | int] = [marker_ttl]
    for key, (expires_at, fields) in increments.items():
        keys.append(key)
        args += [expires_at or 0, len(fields)]
        for field, n in fields.items():
            args += [field, n]
    return keys, args


async def apply_counts_once(redis, server_id: int, marker_id: str, changes: Iterable[CountChange],
                            now: float | None = None,
                            marker_ttl: int = rediskeys.STATS_BATCH_MARKER_TTL_SECONDS) -> bool:
    """Apply `changes` to the counters of MTA server `server_id` (lifetime totals and
    the buckets of the time each happened) exactly once per `marker_id`, in one Lua
    script: True when applied now, False when that marker was applied before. For a
    correction outside the batcher, such as an asynchronous bounce moving a recipient
    from delivered to bounced on the buckets of its delivery:

        await apply_counts_once(redis, server_id, f"async-bounce:{message_id}:{rcpt_index}",
                                [("delivered", smtp_id, ip, delivered_at, MINUTE, -1),
                                 ("bounced", smtp_id, ip, delivered_at, MINUTE, 1)])

    Raises redis-py's errors (RedisError, OSError): retrying with the same marker is safe."""
    keys, args = counts_script_input(server_id, marker_id, changes, time.time() if now is None else now, marker_ttl)
    return bool(await redis.register_script(_APPLY_BATCH)(keys=keys, args=args))


@dataclass(frozen=True)
class _Batch:
    batch_id: str
    keys: list[str]
    args: list[str | int]
    counts: int
    events: tuple[tuple[str, str], ...] = ()  # (message id, JSON)
    index: tuple[tuple[str, str], ...] = ()  # (message index key, our message id)
    suppressions: tuple[Suppression, ...] = ()


class StatsBatcher:
    """In-memory counters and events of one worker of MTA server `server_id`, flushed
    every `interval` seconds.

    `batch_prefix` must be unique per process (the worker id); a random part is
    added so a restarted worker never reuses an id. `clock` says what time it is
    (unix seconds): the bucket a count goes into.
    """

    def __init__(self, redis, interval: float = 0.25, *, server_id: int, batch_prefix: str = "worker",
                 max_batch_events: int = 1000, max_pending_events: int = 100_000,
                 max_pending_suppressions: int = 10_000, event_ttl: float = 7 * 86400.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._server_id = server_id
        self._clock = clock
        self._interval = interval
        self._pending: Counter[CountKey] = Counter()
        self._events: deque[tuple[str, str]] = deque()
        self._index: deque[tuple[str, str]] = deque()
        self._suppressions: deque[Suppression] = deque()
        self._unsent: _Batch | None = None
        self._script = redis.register_script(_APPLY_BATCH)
        self._prefix = f"{batch_prefix}:{secrets.token_hex(4)}"
        self._seq = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._failing = False
        self._dropping = False
        self._coarse = False
        self.max_batch_events = max_batch_events
        self.max_pending_events = max_pending_events
        self.max_pending_suppressions = max_pending_suppressions
        self.event_ttl = max(1, math.ceil(event_ttl))
        self.metrics: Counter[str] = Counter()

    def count(self, field: str, smtp_id: int, address: str, n: int = 1) -> None:
        """Add `n` to `field` (one of `rediskeys.STATS_FIELDS`: sent, delivered, bounced,
        deferred, complaints, suppressed; or of `rediskeys.DSN_STATS_FIELDS`, the DSNs sent
        to senders) of the pool, the IP and the pool+IP: their lifetime totals and the day,
        hour and minute buckets of now; of the pool alone when `address` is "" (a count with
        no source IP)."""
        if field not in _FIELDS:
            raise ValueError(f"not a stats field: {field!r} (one of {', '.join(sorted(_FIELDS))})")
        waiting = len(self._pending)
        resolution = (rediskeys.MINUTE if waiting < MAX_COUNT_KEYS // 2
                      else rediskeys.HOUR if waiting < MAX_COUNT_KEYS * 3 // 4 else rediskeys.DAY)
        if resolution is not rediskeys.MINUTE and not self._coarse:
            self._coarse = True
            log.warning("stats: %d distinct counters wait for Redis; new counts are kept per %s, "
                        "without their minute buckets", waiting, resolution.name)
        key = (field, resolution, resolution.start(self._clock()), smtp_id, address)
        if key not in self._pending and waiting >= MAX_COUNT_KEYS:
            self.metrics["counts_dropped"] += n
            log.error("stats: %d distinct counters wait for Redis already; dropping %d %s count(s) of pool %d, IP %s",
                      MAX_COUNT_KEYS, n, field, smtp_id, address)
            return
        self._pending[key] += n

    def count_sent(self, smtp_id: int, address: str, n: int = 1) -> None:
        """count("sent", ...): a message accepted for `n` distinct recipients."""
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

    def index_message(self, header_message_id: str, message_id: str) -> None:
        """Queue a message index entry: the Message-ID header value (as
        `message_headers.indexed_message_id` gives it) names our message id."""
        index = self._index
        index.append((rediskeys.message_index_key(header_message_id), message_id))
        if len(index) > self.max_pending_events:
            index.popleft()
            self.metrics["index_dropped"] += 1

    def suppress(self, user_id: int, address: str, entry_json: str) -> None:
        """Queue adding `address` (normalised: `suppression.normalize_address`) to the
        account's suppression list with `entry_json` (`SuppressionEntry.encode()`); an
        address already on the list keeps its entry."""
        waiting = self._suppressions
        waiting.append((user_id, address, entry_json))
        if len(waiting) > self.max_pending_suppressions:
            dropped = waiting.popleft()
            self.metrics["suppressions_dropped"] += 1
            if self.metrics["suppressions_dropped"] % 1000 == 1:  # the first, then every 1,000th
                log.error("stats: %d suppression-list entries wait for Redis; dropping the oldest (account %d, "
                          "%s; %d so far, see suppressions_dropped)", self.max_pending_suppressions,
                          dropped[0], dropped[1], self.metrics["suppressions_dropped"])

    @property
    def pending(self) -> int:
        """Counts not yet known to be in Redis."""
        return sum(self._pending.values()) + (self._unsent.counts if self._unsent else 0)

    @property
    def pending_events(self) -> int:
        """Events not yet known to be in Redis."""
        return len(self._events) + (len(self._unsent.events) if self._unsent else 0)

    @property
    def pending_index(self) -> int:
        """Message index entries not yet known to be in Redis."""
        return len(self._index) + (len(self._unsent.index) if self._unsent else 0)

    @property
    def pending_suppressions(self) -> int:
        """Suppression-list entries not yet known to be in Redis."""
        return len(self._suppressions) + (len(self._unsent.suppressions) if self._unsent else 0)

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
        batch_id = f"{self._prefix}:{next(self._seq)}"
        keys, args = counts_script_input(
            self._server_id, batch_id,
            ((field, smtp_id, address, start, finest, n)
             for (field, finest, start, smtp_id, address), n in self._pending.items()),
            self._clock(),
        )
        counts = sum(self._pending.values())
        self._pending = Counter()
        self._coarse = False
        take = min(len(self._events), self.max_batch_events)
        events = tuple(self._events.popleft() for _ in range(take))
        if self._dropping and len(self._events) < self.max_pending_events // 2:
            self._dropping = False
        take = min(len(self._index), self.max_batch_events)
        index = tuple(self._index.popleft() for _ in range(take))
        take = min(len(self._suppressions), self.max_batch_events)
        suppressions = tuple(self._suppressions.popleft() for _ in range(take))
        return _Batch(batch_id, keys, args, counts, events, index, suppressions)

    async def _apply(self, batch: _Batch) -> None:
        if not batch.events and not batch.index and not batch.suppressions:
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
        for key, message_id in batch.index:
            pipe.set(key, message_id, ex=self.event_ttl)
        for user_id, address, entry in batch.suppressions:
            pipe.hsetnx(rediskeys.suppression_key(user_id), address, entry)
        await pipe.execute()

    async def flush(self) -> bool:
        """Send what was counted and the events waiting; True when nothing is left pending."""
        if self._unsent is None:
            if not self._pending and not self._events and not self._index and not self._suppressions:
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
        return not self._pending and not self._events and not self._index and not self._suppressions

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
        if self.pending or self.pending_events or self.pending_index or self.pending_suppressions:
            log.warning("exiting with %d stats counts, %d events, %d message index entries and %d "
                        "suppression-list entries not flushed to Redis", self.pending, self.pending_events,
                        self.pending_index, self.pending_suppressions)
