"""Counts per pool and per IP, delivery events per message, message index entries
and suppressions: journaled on disk as they are made, and applied to Redis in
batches.

The hot path appends one record to the worker's stats journal
(`stats_journal`: one `os.write`, before the 250 or the spool update the record
accounts for); what accounts for a spool update goes in a group around it
(`begin` before, `end` after), so a crash between the two counts it exactly when
the update happened. A background task seals the journal's current segment at most
every `interval` seconds (sooner when it holds `max_batch_events` events) and
applies sealed segments, oldest first, each in one or a few round trips, then
deletes it:

* counts: one Lua script HINCRBYs every counter hash a count touches
  (`rediskeys.count_targets`: lifetime totals and the day, hour and minute
  buckets of the pool, the IP and the pool+IP, all under the worker's MTA server
  tag `{stats:N}`), buckets expiring at their retention (EXPIREAT);
* events and the message index (Message-ID -> our message id, for each accepted
  message with a Message-ID header: a report that returns only the original
  headers finds its message through it): in the same script, into the server's
  event log (`control.contract.event_log`: a stream capped by length and age and
  index buckets that expire whole, all under `{stats:N}` too);
* suppressions: one HSETNX per address a permanent bounce put on its account's
  suppression list (`{supp:USER}` tag; `control.contract.suppression`).

A correction made elsewhere (an asynchronous bounce moving a recipient from
delivered to bounced) uses the same script through `stats_script.apply_counts_once`, with a
marker of its own, so it too applies once however often it is retried.

Exactly once: a segment's counts, events and index entries are one batch, named
`<token>.<seq>` by the segment. A journal's segments are applied strictly in
order (the oldest sealed one first, by its own worker or by the one worker that
claims it), so one mark per journal (`rediskeys.stats_journal_mark_key`: the
highest seq applied) says which were applied: the script applies nothing when
the mark is at or past the segment's seq, else moves the mark and applies it. A
mark is one key per worker run (not one per flush); it is kept
`STATS_JOURNAL_MARK_TTL_SECONDS` (45 days) after its last apply, far beyond how
long a segment can wait between being applied and being deleted (a lost reply
is retried at once; a crash between the apply and the delete is replayed when a
worker of the server runs again). HSETNX never replaces a suppression entry
(the first one wins). So a segment applied again (the reply lost after Redis
applied it, or a crash between the apply and the delete, replayed by whichever
worker claims the journal) still counts once. Suppressions stay on their
account's slot; everything else of a batch is on the server's, so a Redis
Cluster works.

A count goes into the buckets of the minute it was counted in (not the minute it
is flushed in), so trends show when things happened even after Redis was down.
While Redis is unreachable, records wait on disk, not in memory, up to the
journal's bound (`stats_journal_max_bytes`); past it new ones are dropped,
logged, and counted in `metrics` (`counts_dropped`, `events_dropped`,
`index_dropped`, `suppressions_dropped`). A worker that stops with records left
says how many, and the next start (any worker) replays them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from redis import exceptions as redis_errors

from control.contract import rediskeys
from control.contract.event_log import DEFAULT_MAX_EVENTS, EventRetention
from control.contract.runtime import reraise_if_cancelling

from .stats_journal import (
    COUNT,
    EVENT,
    INDEX,
    SUPPRESSION,
    Segment,
    SegmentRecords,
    StatsJournal,
    read_segment,
)
from .stats_script import _APPLY_BATCH, counts_script_input

log = logging.getLogger("poolmta.dataplane.stats")

_FIELDS = frozenset(rediskeys.STATS_FIELDS + rediskeys.DSN_STATS_FIELDS)

_DROPPED = {COUNT: "counts_dropped", EVENT: "events_dropped", INDEX: "index_dropped",
            SUPPRESSION: "suppressions_dropped"}

# How often a worker looks for the journals of dead workers to replay (also at start).
CLAIM_INTERVAL = 5.0

class StatsBatcher:
    """The counters, events, index entries and suppressions of one worker of MTA
    server `server_id`: journaled in `journal_dir` as they are made, flushed every
    `interval` seconds.

    `journal_dir` is the server's stats journal directory, shared by its workers
    (each claims the journals of dead ones); None gives a private temporary one,
    removed by `close`, for tests and benches that need no crash safety.
    `clock` says what time it is (unix seconds): the bucket a count goes into.
    Delivery events stay in the server's event log `event_ttl` seconds, at most
    `max_events` of them (`event_log.EventRetention`).
    """

    def __init__(self, redis, interval: float = 0.25, *, server_id: int, journal_dir: Path | None = None,
                 max_batch_events: int = 1000, journal_max_bytes: int = 512 * 1024 * 1024,
                 event_ttl: float = 7 * 86400.0, max_events: int = DEFAULT_MAX_EVENTS,
                 clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._server_id = server_id
        self._clock = clock
        self._interval = interval
        self._temporary = journal_dir is None
        if journal_dir is None:
            journal_dir = Path(tempfile.mkdtemp(prefix="poolmta-stats-journal-"))
        self.journal = StatsJournal(journal_dir, max_bytes=journal_max_bytes, segment_max_items=max_batch_events)
        self.journal.open()
        self._script = redis.register_script(_APPLY_BATCH)
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._failing = False
        self._claimed_at = -math.inf
        self._flushed_at = time.monotonic()  # the end of the last flush that did not fail
        self.max_batch_events = max_batch_events
        self.event_ttl = max(1, math.ceil(event_ttl))
        self.retention = EventRetention(self.event_ttl, max_events)
        self.metrics: Counter[str] = Counter()

    def _append(self, record: list, dropped: str, n: int = 1) -> None:
        journal = self.journal
        sealed = journal.sealed
        if not journal.append(record):
            self.metrics[dropped] += n
        elif journal.sealed > sealed and not self._failing and self._wake is not None:
            self._wake.set()  # a full segment waits: flush now

    def count_record(self, field: str, smtp_id: int, address: str, n: int = 1) -> list:
        """The journal record of a count (see `count`), for a group (`begin`)."""
        if field not in _FIELDS:
            raise ValueError(f"not a stats field: {field!r} (one of {', '.join(sorted(_FIELDS))})")
        return [COUNT, field, rediskeys.MINUTE.start(self._clock()), smtp_id, address, n]

    @staticmethod
    def event_record(message_id: str, event_json: str) -> list:
        """The journal record of a delivery event (see `event`), for a group (`begin`)."""
        return [EVENT, message_id, event_json]

    @staticmethod
    def index_record(header_message_id: str, message_id: str) -> list:
        """The journal record of a message index entry (see `index_message`), for a group."""
        return [INDEX, rediskeys.message_index_field(header_message_id), message_id]

    @staticmethod
    def suppression_record(user_id: int, address: str, entry_json: str) -> list:
        """The journal record of a suppression-list entry (see `suppress`), for a group."""
        return [SUPPRESSION, user_id, address, entry_json]

    def count(self, field: str, smtp_id: int, address: str, n: int = 1) -> None:
        """Add `n` to `field` (one of `rediskeys.STATS_FIELDS`: sent, delivered, bounced,
        deferred, complaints, suppressed; or of `rediskeys.DSN_STATS_FIELDS`, the DSNs sent
        to senders) of the pool, the IP and the pool+IP: their lifetime totals and the day,
        hour and minute buckets of now; of the pool alone when `address` is "" (a count with
        no source IP). Journaled when this returns (unless the journal is full: logged,
        `counts_dropped`)."""
        self._append(self.count_record(field, smtp_id, address, n), "counts_dropped", n)

    def count_sent(self, smtp_id: int, address: str, n: int = 1) -> None:
        """count("sent", ...): a message accepted for `n` distinct recipients."""
        self.count("sent", smtp_id, address, n)

    def event(self, message_id: str, event_json: str) -> None:
        """Journal one delivery event of a message (a JSON object) for its event list."""
        self._append(self.event_record(message_id, event_json), "events_dropped")

    def index_message(self, header_message_id: str, message_id: str) -> None:
        """Journal a message index entry: the Message-ID header value (as
        `message_headers.indexed_message_id` gives it) names our message id."""
        self._append(self.index_record(header_message_id, message_id), "index_dropped")

    def suppress(self, user_id: int, address: str, entry_json: str) -> None:
        """Journal adding `address` (normalised: `suppression.normalize_address`) to the
        account's suppression list with `entry_json` (`SuppressionEntry.encode()`); an
        address already on the list keeps its entry."""
        self._append(self.suppression_record(user_id, address, entry_json), "suppressions_dropped")

    def begin(self, check: list, records: list[list]) -> int | None:
        """Journal `records` (`count_record`, ...) as one group accounting for a spool
        update that `check` describes (`stats_journal.spool_check`), before the update;
        `end` decides it after. None (and the records counted dropped) when the journal
        could not take it."""
        if not records:
            return None
        gid = self.journal.begin(check, records)
        if gid is None:
            for record in records:
                self.metrics[_DROPPED[record[0]]] += record[-1] if record[0] == COUNT else 1
        return gid

    def end(self, group: int | None, committed: bool = True) -> None:
        """The spool update of `group` (from `begin`) happened (`committed`) or not."""
        sealed = self.journal.sealed
        self.journal.end(group, committed)
        if self.journal.sealed > sealed and not self._failing and self._wake is not None:
            self._wake.set()

    @property
    def pending(self) -> int:
        """Counts not yet known to be in Redis."""
        return self.journal.counts

    @property
    def pending_events(self) -> int:
        """Events not yet known to be in Redis."""
        return self.journal.events

    @property
    def pending_index(self) -> int:
        """Message index entries not yet known to be in Redis."""
        return self.journal.index

    @property
    def pending_suppressions(self) -> int:
        """Suppression-list entries not yet known to be in Redis."""
        return self.journal.suppressions

    def flush_lag(self) -> float:
        """Seconds since the last flush that did not fail, while records wait for
        Redis; 0 when none wait. At most about `interval` while Redis keeps up; it
        grows while Redis is unreachable."""
        return 0.0 if self.journal.empty else max(0.0, time.monotonic() - self._flushed_at)

    def start(self) -> None:
        """Start flushing in the background (and replaying dead workers' journals)."""
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
            if not done and not self._failing:
                self._wake.set()  # more segments wait: apply them now

    def _claim(self) -> None:
        now = time.monotonic()
        if now - self._claimed_at >= CLAIM_INTERVAL:
            self._claimed_at = now
            self.journal.claim_orphans()

    async def apply_segment(self, segment: Segment) -> None:
        """Apply one journal segment to Redis, exactly once however often it is called
        (see the module docstring). Raises redis-py's errors (RedisError, OSError)."""
        records = read_segment(segment.path)[0]
        if records.torn:
            log.warning("stats journal: %s ends in a torn record (a write cut short by a crash); "
                        "applying the records before it", segment.path.name)
        await self._apply(segment.batch_id, records)

    def counts_input(self, segment: Segment) -> tuple[list[str], list[str | int]]:
        """KEYS and ARGV of the counts script applying `segment`'s counts under its marker."""
        return self._counts_input(segment.batch_id, read_segment(segment.path)[0])

    def _counts_input(self, batch_id: str, records: SegmentRecords) -> tuple[list[str], list[str | int]]:
        token, _, seq = batch_id.rpartition(".")
        return counts_script_input(
            self._server_id, token,
            ((field, smtp_id, address, start, rediskeys.MINUTE, n)
             for field, start, smtp_id, address, n in records.counts),
            self._clock(), rediskeys.STATS_JOURNAL_MARK_TTL_SECONDS, journal_seq=int(seq),
            events=records.events,
            # an entry journaled before issue 14 names the whole key; its last part is the field
            index=((key.rpartition(":")[2], message_id) for key, message_id in records.index),
            retention=self.retention,
        )

    async def _apply(self, batch_id: str, records: SegmentRecords) -> None:
        client = self._script.registered_client
        if records.counts or records.events or records.index:
            keys, args = self._counts_input(batch_id, records)
            await self._script(keys=keys, args=args)
        for at in range(0, len(records.suppressions), self.max_batch_events):
            pipe = client.pipeline(transaction=False)
            for user_id, address, entry in records.suppressions[at:at + self.max_batch_events]:
                pipe.hsetnx(rediskeys.suppression_key(user_id), address, entry)
            await pipe.execute()

    async def flush(self) -> bool:
        """Apply the oldest waiting journal segment (sealing the current one when none
        is sealed); True when nothing is left pending."""
        journal = self.journal
        self._claim()
        if not journal.sealed:
            journal.seal()
        segment = journal.oldest()
        if segment is None:
            self._flushed_at = time.monotonic()
            return True
        try:
            await self.apply_segment(segment)
        except (redis_errors.RedisError, OSError) as exc:
            reraise_if_cancelling()
            self.metrics["flush_failures"] += 1
            if not self._failing:
                log.warning("stats flush failed, keeping %d counts and %d events in the journal: %s",
                            self.pending, self.pending_events, exc)
                self._failing = True
            return False
        journal.acknowledge(segment)  # applied now, or found applied by an earlier attempt
        self._flushed_at = time.monotonic()
        self.metrics["flushes"] += 1
        if self._failing:
            log.info("stats flush recovered")
            self._failing = False
        return journal.empty

    async def close(self, timeout: float = 2.0) -> None:
        """Stop the background task and try to flush what is left; what is not flushed
        stays in the journal for the next start to replay (said in the log)."""
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
                    if self._failing:
                        await asyncio.sleep(0.1)
        except (TimeoutError, redis_errors.RedisError, OSError):
            pass
        journal = self.journal
        if not journal.empty:
            log.warning("%d stats counts, %d events, %d message index entries and %d suppression-list "
                        "entries left in the stats journal (%s), replayed at next start", self.pending,
                        self.pending_events, self.pending_index, self.pending_suppressions, journal.directory)
        journal.close()
        if self._temporary:
            shutil.rmtree(journal.directory, ignore_errors=True)
