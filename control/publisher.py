"""Routing publishing: SQLite state -> a routing delta (or a full snapshot) -> Redis.

A routing change costs what changed. For each MTA server the publisher remembers
the routing it last put in Redis (`routing_changes.ServerRouting`); when SQLite's
routing version is ahead it reads only the entries the changes since then touched
(`routing_changes.read_change`: the touches the registry's transactions recorded,
then those pools, Bridges and accounts by id, in a worker thread on a connection of
its own, so RPCs keep being answered meanwhile), and publishes only the delta
(`control.contract.routing_delta`: the pools, Bridges, DKIM accounts that changed,
tombstones for those that went) under the new version. Once it is in Redis the
touches it covers are pruned by the background loop (`prune_touches`), off the
reply path: a touch left over is harmless, the watermark skips it.

The whole server is built from SQLite (`snapshot_builder`) only at the first
publication after a start, on a repair, and when SQLite's version is not ahead of
what was published. The periodic full snapshot (compaction) is the remembered
routing with the delta applied: it is what the deltas lead every worker to, and
building it costs no SQLite reads. Off the hot path, `check_consistency` (run by
the background loop every CONSISTENCY_CHECK_SECONDS) rebuilds each server from
SQLite on a connection of its own, without holding publications, and compares it
with the remembered routing at the same version; a difference is logged as an
ERROR and the rebuilt routing is published as a full snapshot.

Redis layout per server, every key under the server's `{srv:N}` tag:

* `snapshot:changes` — a stream of deltas, entry `<version>-0`, each naming its
  `base` version;
* `snapshot:full` — a hash naming the newest full snapshots (SNAPSHOT_FULLS_KEPT),
  for bootstrap and for workers behind the change log; each is in its own key
  `snapshot:full:<version>`, written in chunks of SNAPSHOT_FULL_CHUNK_BYTES to a
  staging key (one command each, so Redis, fsyncing every write, never stalls its
  other clients on a whole server) and renamed in place by the publish script;
* `snapshot:current` — the newest version, moved forward only.

A delta is published by one Lua script only if `current` still equals the delta's
base (otherwise, Redis lost data or was written by someone else: a full snapshot
is published instead). A full snapshot is written alone at the first publication
after a start and on a repair. A compaction (after SNAPSHOT_FULL_EVERY deltas, or
once the deltas since the last full snapshot weigh a quarter of it) joins a
copy of the remembered routing's packed entries in a thread and writes it as a full
snapshot of its version, in the background: the delta that made it due is published first (so
workers following the log never see a gap), the reply does not wait for an
encoding of the whole server, and deltas published meanwhile stay in the log after
it. Its script keeps the newest
SNAPSHOT_FULLS_KEPT and trims the change log to what follows the full snapshot it
dropped, so Redis holds a bounded amount of routing whatever the number of changes.

Changes coalesce like a group commit: `sync` runs one publication at a time and a
publication covers every change committed before it read SQLite. An idle publisher
publishes at once (no waiting for more changes); changes committed while a
publication is in flight wait for it and are folded into the next one, which
first waits COALESCE_SECONDS for the rest of the burst to commit, so a burst of
changes to one server becomes a few publications. A change committed while Redis is down is
published by the background loop once Redis answers again (retrying with bounded
backoff meanwhile); a Redis that lost its data (FLUSHALL, a new empty server) is
noticed by the same loop and refilled from SQLite with a full snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, replace

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from .contract import rediskeys, routing_delta, snapshot
from . import publish_scripts
from .contract.runtime import reraise_if_cancelling
from .metrics import ControlMetrics
from .routing_changes import ServerRouting, read_change
from .snapshot_builder import ReaderStore, build_in, build_snapshot
from .store import Store

__all__ = ["PublishStats", "SnapshotPublisher", "build_snapshot"]

log = logging.getLogger(__name__)

# The longest wait between two publishing attempts while Redis does not answer.
MAX_RETRY_DELAY = 5.0
# How long a publication that had to wait for another (a burst is under way) waits
# for the rest of the burst to commit; an idle publisher does not wait.
COALESCE_SECONDS = 0.002
# How often the background loop rebuilds every server from SQLite to check the
# remembered routing (a whole-server build: seconds at 50k pools, so rarely).
CONSISTENCY_CHECK_SECONDS = 3600.0


@dataclass
class PublishStats:
    """What the publisher has put in Redis since it started (for tests, benches, logs)."""

    publications: int = 0
    full_snapshots: int = 0
    deltas: int = 0
    bytes: int = 0
    builds: int = 0  # whole servers built from SQLite to start from (not the consistency checks)
    mismatches: int = 0  # servers whose remembered routing a consistency check found differing from SQLite's


@dataclass
class _Published:
    """The routing of one server as Redis holds it (the base of the next delta)."""

    routing: ServerRouting
    deltas_since_full: int
    delta_bytes_since_full: int
    full_bytes: int
    compacting: bool = False  # a full snapshot of this routing is being written in the background


@dataclass
class _Publication:
    """One publication, prepared off the event loop: a delta, or a full snapshot
    built from SQLite (compactions are written apart, in the background)."""

    version: int
    touched_through: int
    delta: routing_delta.RoutingDelta | None = None
    delta_payload: bytes = b""
    full_payload: bytes = b""
    rebuilt: ServerRouting | None = None  # built from SQLite: it replaces the remembered routing


class SnapshotPublisher:
    """Keeps every server's routing in Redis at the version SQLite says."""

    def __init__(self, store: Store, redis: aioredis.Redis, metrics: ControlMetrics | None = None, *,
                 full_every: int = rediskeys.SNAPSHOT_FULL_EVERY,
                 fulls_kept: int = rediskeys.SNAPSHOT_FULLS_KEPT, coalesce_seconds: float = COALESCE_SECONDS,
                 check_seconds: float = CONSISTENCY_CHECK_SECONDS,
                 full_chunk_bytes: int = rediskeys.SNAPSHOT_FULL_CHUNK_BYTES):
        self._store = store
        self._reader = ReaderStore(store)
        self._redis = redis
        self._metrics = metrics
        self._full_every = full_every
        self._fulls_kept = max(1, fulls_kept)
        self._check_seconds = check_seconds
        self._full_chunk_bytes = max(1, full_chunk_bytes)
        self._coalesce_seconds = coalesce_seconds
        self._checker = ReaderStore(store)  # the consistency check's own connection: it never waits for a build
        self._delta_script = redis.register_script(publish_scripts.PUBLISH_DELTA_LUA)
        self._full_script = redis.register_script(publish_scripts.PUBLISH_FULL_LUA)
        self._state: dict[int, _Published] = {}
        self._published: dict[int, int] = {}
        self._pruned: dict[int, int] = {}  # the newest routing touch pruned, per server
        self._lock = asyncio.Lock()
        self._compactions: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self.stats = PublishStats()

    def close(self) -> None:
        """Stop the background compactions and close the reader connection (the
        publisher may not publish afterwards)."""
        for task in self._compactions:
            task.cancel()
        self._reader.close()
        self._checker.close()

    async def publish(self, server_id: int, *, full: bool = False) -> int:
        """Publish `server_id`'s routing as a delta from what Redis holds (a full
        snapshot instead when `full`, or when no delta applies); returns the version
        `current` now points at."""
        previous = None if full else self._state.get(server_id)
        publication = await self._prepare(server_id, previous)
        current = 0
        if publication.delta is not None:
            delta = publication.delta
            try:
                published, current = await self._delta_script(
                    keys=[rediskeys.snapshot_changes_key(server_id), rediskeys.snapshot_current_key(server_id)],
                    args=[delta.version, delta.base, publication.delta_payload, rediskeys.snapshot_channel(server_id)],
                )
            except ResponseError as exc:  # a change log that Redis holds ahead of `current`
                log.warning("Redis refused the routing delta of server %s (%s)", server_id, exc)
                published = 0
            if not published:
                log.warning("Redis does not hold version %s of server %s as the publisher believed (it holds %s); "
                            "publishing a full snapshot", delta.base, server_id, current)
                previous = None
                publication = await self._prepare(server_id, None)
        if publication.full_payload:
            if previous is None:
                await self._expire_legacy_snapshot(server_id)
            current = await self._write_full(server_id, publication.version, publication.full_payload)
        self._remember(server_id, publication, previous)
        current = int(current)
        self._published[server_id] = current
        if self._metrics is not None:
            self._metrics.published(server_id, current)
        log.info("published routing server_id=%s version=%s delta_entries=%s delta_bytes=%d full_bytes=%d",
                 server_id, publication.version,
                 publication.delta.entries if publication.delta is not None else "-",
                 len(publication.delta_payload), len(publication.full_payload))
        self._compact_if_due(server_id)
        return current

    def _compact_if_due(self, server_id: int) -> None:
        published = self._state.get(server_id)
        if published is None or published.compacting:
            return
        if (published.deltas_since_full < self._full_every
                and rediskeys.SNAPSHOT_FULL_DELTA_SHARE * published.delta_bytes_since_full < published.full_bytes):
            return
        published.compacting = True
        # A copy of the dicts (C speed), so that deltas applied meanwhile leave it alone.
        counted = published.deltas_since_full, published.delta_bytes_since_full
        task = asyncio.create_task(self._compact(server_id, published, published.routing.copy(), counted),
                                   name=f"compact-routing-{server_id}")
        self._compactions.add(task)
        task.add_done_callback(self._compactions.discard)

    async def _compact(self, server_id: int, published: _Published, routing: ServerRouting,
                       counted: tuple[int, int]) -> None:
        """Write `routing` (a copy of what `published` held, `counted` deltas and bytes
        after its last full snapshot) as a full snapshot of its version; the deltas
        published since stay in the log after it."""
        try:
            payload = await asyncio.to_thread(routing.encode)
            await self._write_full(server_id, routing.version, payload)
        except (RedisError, OSError) as exc:
            reraise_if_cancelling()
            # Nothing lost: the log still holds every delta; the next publication tries again.
            log.warning("compaction of server %s's routing at version %s deferred (%s)",
                        server_id, routing.version, exc)
            return
        finally:
            published.compacting = False
        self.stats.full_snapshots += 1
        self.stats.bytes += len(payload)
        published.deltas_since_full -= counted[0]
        published.delta_bytes_since_full -= counted[1]
        published.full_bytes = len(payload)
        log.info("compacted routing server_id=%s version=%s full_bytes=%d", server_id, routing.version, len(payload))

    async def _write_full(self, server_id: int, version: int, payload: bytes) -> int:
        return await publish_scripts.write_full_snapshot(
            self._redis, self._full_script, server_id, version, payload,
            fulls_kept=self._fulls_kept, chunk_bytes=self._full_chunk_bytes)

    async def catch_up(self) -> None:
        """Finish what publications left to the background: the compactions under way,
        then the prune of the touches Redis's routing covers."""
        while self._compactions:
            await asyncio.gather(*self._compactions, return_exceptions=True)
        self.prune_touches()

    def prune_touches(self) -> None:
        """Forget the routing touches that every server's published routing covers (one
        short write per server that has some; the background loop calls it)."""
        for server_id, published in list(self._state.items()):
            through = published.routing.touched_through
            if through > self._pruned.get(server_id, 0):
                with self._store.write() as s:
                    s.prune_routing_touches(server_id, through)
                self._pruned[server_id] = through

    async def _expire_legacy_snapshot(self, server_id: int) -> None:
        """Before routing deltas, the newest version's key never expired; give it the
        expiry every replaced version had, so an upgraded Redis sheds it."""
        current = int(await self._redis.get(rediskeys.snapshot_current_key(server_id)) or 0)
        if current:
            await self._redis.expire(rediskeys.snapshot_key(server_id, current), rediskeys.SNAPSHOT_RETENTION_SECONDS)

    async def _prepare(self, server_id: int, previous: _Published | None) -> _Publication:
        """Build, diff and encode, in a worker thread when the store allows it."""
        if self._reader.threaded:
            return await asyncio.to_thread(self._prepare_now, server_id, previous)
        return self._prepare_now(server_id, previous)

    def _prepare_now(self, server_id: int, previous: _Published | None) -> _Publication:
        if previous is None:
            return self._build_publication(server_id)
        routing = previous.routing
        change = self._reader.run(read_change, routing)
        delta = change.delta
        if delta is None:  # SQLite is not ahead of what was published: start again from it
            return self._build_publication(server_id)
        return _Publication(delta.version, change.touched_through, delta, routing_delta.encode_delta(delta))

    def _build_publication(self, server_id: int) -> _Publication:
        self.stats.builds += 1
        return self._full_publication(*self._reader.run(_build_with_touches, server_id))

    @staticmethod
    def _full_publication(routing: snapshot.Snapshot, touched_through: int) -> _Publication:
        rebuilt = ServerRouting(routing, touched_through)
        return _Publication(routing.version, touched_through, full_payload=rebuilt.encode(),
                            rebuilt=rebuilt)

    def _remember(self, server_id: int, publication: _Publication, previous: _Published | None) -> None:
        stats = self.stats
        stats.publications += 1
        stats.bytes += len(publication.delta_payload) + len(publication.full_payload)
        stats.deltas += publication.delta is not None
        stats.full_snapshots += bool(publication.full_payload)
        if publication.rebuilt is not None:
            self._state[server_id] = _Published(publication.rebuilt, 0, 0, len(publication.full_payload))
            return
        if previous is None or publication.delta is None:
            return
        previous.routing.apply(publication.delta, publication.touched_through)
        previous.deltas_since_full += 1
        previous.delta_bytes_since_full += len(publication.delta_payload)

    async def check_consistency(self) -> list[int]:
        """Rebuild every published server's routing from SQLite (in a thread, on a
        connection of its own, publications going on meanwhile) and compare it with the
        routing remembered at the same version; a server that differs is logged as an
        ERROR and its rebuilt routing published in full. Returns those servers. A server
        whose published version moved on while it was rebuilt is checked next time."""
        differing = []
        for server_id in sorted(self._state):
            if self._checker.threaded:
                rebuilt, _ = await asyncio.to_thread(self._checker.run, _build_with_touches, server_id)
            else:
                rebuilt, _ = self._checker.run(_build_with_touches, server_id)
            async with self._lock:
                published = self._state.get(server_id)
                if published is None or published.routing.version != rebuilt.version:
                    continue
                remembered = await asyncio.to_thread(published.routing.snapshot)
                if replace(remembered, published_at_ms=0) == replace(rebuilt, published_at_ms=0):
                    continue
                log.error("routing of server %s at version %s reached by deltas differs from SQLite's; "
                          "publishing the one rebuilt from SQLite", server_id, rebuilt.version)
                self.stats.mismatches += 1
                differing.append(server_id)
                await self.publish(server_id, full=True)
        return differing

    def routing(self, server_id: int) -> snapshot.Snapshot | None:
        """The routing of the server as last published by this publisher (None: none yet)."""
        published = self._state.get(server_id)
        return None if published is None else published.routing.snapshot()

    async def sync(self) -> list[tuple[int, int]]:
        """Publish every server whose routing version is ahead of what was published
        (one publication per server, covering every change committed before it).

        Raises RedisError when Redis cannot be reached (nothing is lost: the next
        sync publishes it)."""
        burst = self._lock.locked()
        async with self._lock:  # changes committed while one ran are folded into this one
            if burst and self._coalesce_seconds and self._pending():
                await asyncio.sleep(self._coalesce_seconds)  # and those of the burst still arriving
            return await self._sync_locked()

    def _pending(self) -> list[int]:
        return [sid for sid, version in self._store_versions().items() if self._published.get(sid, 0) < version]

    async def _sync_locked(self) -> list[tuple[int, int]]:
        return [(server_id, await self.publish(server_id)) for server_id in self._pending()]

    async def republish(self, server_id: int = 0) -> list[tuple[int, int]]:
        """Rebuild and publish full snapshots from SQLite, whatever Redis is believed to hold."""
        async with self._lock:
            servers = [server_id] if server_id else sorted(self._store_versions())
            return [(sid, await self.publish(sid, full=True)) for sid in servers]

    async def verify(self) -> list[tuple[int, int]]:
        """Publish what is pending, and republish in full the servers whose `current`
        pointer in Redis is missing or behind what was published (Redis restarted
        empty, flushed, or a failover lost writes)."""
        async with self._lock:
            ordered = sorted(self._published)
            if ordered:
                pipe = self._redis.pipeline(transaction=False)
                for server_id in ordered:
                    pipe.get(rediskeys.snapshot_current_key(server_id))
                currents = await pipe.execute()
                lost = [sid for sid, cur in zip(ordered, currents) if int(cur or 0) < self._published[sid]]
                for server_id in lost:
                    # What Redis held is gone: the next publication is a full snapshot.
                    self._published.pop(server_id, None)
                    self._state.pop(server_id, None)
                if lost:
                    log.warning("routing missing or behind in Redis for servers %s; republishing", lost)
            return await self._sync_locked()

    async def published_version(self, server_id: int) -> int:
        """The version Redis's `current` pointer holds for the server (0 if none)."""
        return int(await self._redis.get(rediskeys.snapshot_current_key(server_id)) or 0)

    def wake(self) -> None:
        """Have `run` try again now instead of at its next backoff step (Redis is back)."""
        self._wake.set()

    async def run(self, interval: float, max_retry_delay: float = MAX_RETRY_DELAY) -> None:
        """Background loop: publish what is pending and repair Redis, forever.

        Checks every `interval` seconds, and the remembered routing against SQLite
        every CONSISTENCY_CHECK_SECONDS (`check_consistency`). While Redis fails, the wait doubles from
        `interval` up to `max_retry_delay` (a dead Redis is not hammered, and the
        outage is logged once, not at every retry); `wake()` ends a wait early.
        """
        failures = 0
        loop = asyncio.get_running_loop()
        next_check = loop.time() + self._check_seconds
        while True:
            try:
                await self.verify()
                self.prune_touches()
                if loop.time() >= next_check:
                    next_check = loop.time() + self._check_seconds
                    await self.check_consistency()
                if failures:
                    log.warning("Redis reachable again after %d failed attempts; snapshots are up to date",
                                failures)
                failures = 0
            except (RedisError, OSError) as exc:
                # redis-py may turn a cancellation mid-read into ConnectionError.
                reraise_if_cancelling()
                if not failures:
                    log.error("cannot publish snapshots, Redis unreachable (%s); retrying with backoff "
                              "(at most %gs apart) until it answers", exc, max_retry_delay)
                failures += 1
            except Exception:
                reraise_if_cancelling()
                log.exception("snapshot publishing failed; retrying")
                failures += 1
            delay = min(interval * 2 ** min(failures, 32), max(max_retry_delay, interval)) if failures else interval
            reraise_if_cancelling()  # a cancellation a library swallowed (see runtime.pause)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _store_versions(self) -> dict[int, int]:
        with self._store.read() as s:
            return s.routing_versions()


def _build_with_touches(s: Store, server_id: int) -> tuple[snapshot.Snapshot, int]:
    """The server's whole snapshot and the newest touch it covers, in one read transaction."""
    with s.read():
        return build_in(s, server_id), s.last_routing_touch(server_id)
