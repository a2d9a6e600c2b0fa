"""Keeps a worker on its server's newest routing snapshot, and tells the control plane so.

* At start, loads the version the `current` key names.
* Follows the pub/sub notices, and on every heartbeat also reads `current`, so a
  missed notice (or a Redis restart) never strands a worker on an old version.
* Catches up by routing deltas (`control.contract.routing_delta`): the entries of
  the server's change log after the version served, each applied in order. Only
  at start, or when the log has a gap (trimmed past this worker, or a repair
  published a full snapshot alone), it loads the newest full snapshot kept and
  applies the deltas after it. A small catch-up (`advances_in_place`: the usual
  one-pool change) is applied to the served `Routing` in place, on the event loop
  and with no await, in time proportional to the change. Otherwise the new
  `Routing` is built in a thread (off the event loop that serves SMTP) from the one
  served, rebuilding only the pools that changed, then swapped in with one
  assignment. Either way the other pools keep their rotation position, and a
  message sees the old routing or the new one, never a mix.
* Acks: every heartbeat writes its entry (format in `control.contract.acks`)
  under its worker id in the server's worker hash; the entry is removed on a
  clean stop. An ack is also written right after each swap, so the control
  plane hears of it at once.
* Redis down or the control plane silent: the last routing keeps serving and the
  loader keeps retrying. Before any snapshot was loaded `current` is None and the
  SMTP Bridge answers 421.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis import exceptions as redis_errors

from control.contract import rediskeys
from control.contract.acks import format_ack, parse_ack
from control.contract.redis_client import subscribe
from control.contract.runtime import pause, reraise_if_cancelling
from control.contract import routing_delta
from control.contract.routing_delta import RoutingDelta
from control.contract.snapshot import Snapshot, decode

from .dkim_keys import DkimKeyCache
from .routing import Routing

log = logging.getLogger("poolmta.dataplane.snapshot")

REDIS_ERRORS = (redis_errors.RedisError, OSError)
# An ack entry this much older than the heartbeat TTL belongs to a worker that
# died without removing it; any worker may delete it.
STALE_ACK_MS = 12 * rediskeys.WORKER_HEARTBEAT_TTL_MS
MAX_RETRY_DELAY = 2.0


def build_routing(data: bytes | list[bytes], dkim_keys: DkimKeyCache | None = None,
                  deltas: tuple[RoutingDelta, ...] = (), previous: Routing | None = None) -> Routing:
    """Decode a full snapshot, apply `deltas` to it and build its Routing, its DKIM keys
    unsealed and parsed by `dkim_keys` (None: it signs nothing); pools equal to
    `previous`'s keep their rotation. Runs in a thread.

    `data` may be a list holding the snapshot's bytes alone: it is emptied once they are
    decoded, so a caller that hands over its only reference that way does not keep the
    bytes (56 MB at 50k pools) alive while the routing is built beside the snapshot."""
    if isinstance(data, list):
        snapshot = decode(data[0])
        data.clear()
    else:
        snapshot = decode(data)
    for delta in deltas:
        snapshot = routing_delta.apply(snapshot, delta)
    return _routing(snapshot, dkim_keys, previous)


def follow_deltas(routing: Routing, deltas: tuple[RoutingDelta, ...], dkim_keys: DkimKeyCache | None) -> Routing:
    """`routing` moved forward by `deltas`, rebuilding only what they change. Runs in a thread."""
    snapshot = routing.snapshot
    for delta in deltas:
        snapshot = routing_delta.apply(snapshot, delta)
    return _routing(snapshot, dkim_keys, routing)


# A catch-up touching at most this many entries is applied in place on the event loop
# (`advance_in_place`); a larger one is rebuilt in a thread (`follow_deltas`), so one
# big change never holds the loop that serves SMTP for long.
IN_PLACE_MAX_ENTRIES = 256


def advances_in_place(deltas: tuple[RoutingDelta, ...]) -> bool:
    """True when `advance_in_place` may apply `deltas`: few entries, no DKIM key and
    none of the server's own fields changed (those touch every pool's headers, or
    unseal keys: the thread's work)."""
    return (sum(d.entries for d in deltas) <= IN_PLACE_MAX_ENTRIES
            and not any(d.server is not None or d.dkim or d.dkim_gone for d in deltas))


def advance_in_place(routing: Routing, deltas: tuple[RoutingDelta, ...]) -> Routing:
    """`routing` itself, moved forward by `deltas` in time proportional to them (see
    `Routing.advance`). Runs on the event loop; `advances_in_place(deltas)` must hold."""
    snapshot = routing.snapshot
    for delta in deltas:
        snapshot = routing_delta.apply(snapshot, delta)
    routing.advance(snapshot, deltas)
    return routing


def _routing(snapshot: Snapshot, dkim_keys: DkimKeyCache | None, previous: Routing | None) -> Routing:
    if previous is not None and previous.snapshot.dkim_keys is snapshot.dkim_keys:
        keyring = previous.dkim  # no key changed: nothing to unseal or index again
    else:
        keyring = None if dkim_keys is None else dkim_keys.keyring(snapshot)
    return Routing(snapshot, keyring, previous)


class SnapshotLoader:
    """The routing a worker serves, kept current from Redis.

    `current` is the Routing to use for the next decision (None until the first
    snapshot loaded).
    """

    def __init__(
        self,
        redis,
        server_id: int,
        worker_id: str,
        *,
        heartbeat_interval: float = 0.5,
        dkim_keys: DkimKeyCache | None = None,
    ) -> None:
        self._redis = redis
        self._dkim_keys = dkim_keys
        self.server_id = server_id
        self.worker_id = worker_id
        self._interval = heartbeat_interval
        self.current: Routing | None = None
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._redis_down = False
        self._current_key = rediskeys.snapshot_current_key(server_id)
        self._acks_key = rediskeys.worker_acks_key(server_id)

    @property
    def version(self) -> int:
        """The version served; 0 before the first snapshot."""
        return self.current.version if self.current is not None else 0

    async def start(self) -> None:
        """One load attempt now (failure is only logged), then the background tasks."""
        try:
            await self._prune_stale_acks()
            await self.check_current()
        except REDIS_ERRORS as exc:
            self._note_redis_error("initial snapshot load", exc)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._heartbeat_loop(), name="snapshot-heartbeat"),
            loop.create_task(self._notice_loop(), name="snapshot-notices"),
        ]

    async def stop(self) -> None:
        """Stop following, and remove this worker's ack (best effort)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks = []
        try:
            await asyncio.wait_for(self._redis.hdel(self._acks_key, self.worker_id), 1.0)
        except (TimeoutError, *REDIS_ERRORS):
            pass

    async def check_current(self) -> None:
        """Load the version `current` names, if newer than the one served."""
        raw = await self._redis.get(self._current_key)
        if raw is not None:
            await self.load(int(raw))

    async def load(self, version: int) -> bool:
        """Catch up to `version` if it is newer than the one served; True if a newer
        routing was swapped in (it may stop short of `version` when the change log has
        a gap after the newest full snapshot: the next heartbeat tries again)."""
        if version <= self.version:
            return False
        async with self._lock:
            previous = self.version
            if version <= previous:
                return False
            try:
                routing = await self._catch_up(version)
            except ValueError as exc:  # SnapshotError, or a table the fast path refuses
                log.error("snapshot version %d of server %d is unusable, keeping version %d: %s",
                          version, self.server_id, self.version, exc)
                return False
            if routing is None:
                return False
            if routing.snapshot.server_id != self.server_id or not previous < routing.version <= version:
                log.error("routing of server %d version %d came out as server %d version %d; ignored",
                          self.server_id, version, routing.snapshot.server_id, routing.version)
                return False
            self.current = routing
        log.info("serving snapshot version %d of server %d (was %d)", routing.version, self.server_id, previous)
        try:
            await self._ack()
        except REDIS_ERRORS as exc:
            self._note_redis_error("ack", exc)
        return True

    async def _catch_up(self, target: int) -> Routing | None:
        current = self.current
        if current is not None:
            deltas = await self._deltas(current.version, target)
            if deltas is not None and advances_in_place(deltas):
                return advance_in_place(current, deltas)  # no await: see Routing.advance
            if deltas is not None:
                return await asyncio.to_thread(follow_deltas, current, deltas, self._dkim_keys)
        start, data = await self._full_snapshot(target)
        if data is None:
            log.warning("routing version %d of server %d is announced but no full snapshot up to it is in Redis",
                        target, self.server_id)
            return None
        deltas = await self._deltas(start, target) if start < target else ()
        handed_over, data = [data], None  # build_routing drops the bytes once decoded
        routing = await asyncio.to_thread(build_routing, handed_over, self._dkim_keys, deltas or (), current)
        return routing if current is None or routing.version > current.version else None

    async def _full_snapshot(self, target: int) -> tuple[int, bytes | None]:
        """The newest full snapshot kept at or below `target`: its version and bytes
        (None if Redis has none). A data key dropped by a compaction between the read
        of the hash and the read of the key is a miss: the hash, read again, names the
        newer one."""
        full_key = rediskeys.snapshot_full_key(self.server_id)
        for _ in range(rediskeys.SNAPSHOT_FULL_READ_ATTEMPTS):
            start = routing_delta.newest_full([int(v) for v in await self._redis.hkeys(full_key)], target)
            if start is None:  # no full snapshot in the hash: one under its own version key, if any
                return target, await self._redis.get(rediskeys.snapshot_key(self.server_id, target))
            data = await self._redis.hget(full_key, str(start))
            if not rediskeys.full_snapshot_in_data_key(data):  # the snapshot itself (an older release's)
                return start, data
            data = await self._redis.get(rediskeys.snapshot_full_data_key(self.server_id, start))
            if data is not None:
                return start, data
        return start, None

    async def _deltas(self, served: int, target: int) -> tuple[RoutingDelta, ...] | None:
        """The change log's deltas from `served` to `target`; None on a gap."""
        entries = await self._redis.xrange(rediskeys.snapshot_changes_key(self.server_id),
                                           min=f"{served + 1}-0", max=f"{target}-0")
        return routing_delta.delta_chain(served, target, (fields[b"d"] for _, fields in entries))

    def _ack_entry(self) -> str:
        return format_ack(self.version, int(time.time() * 1000))

    async def _ack(self) -> None:
        await self._redis.hset(self._acks_key, self.worker_id, self._ack_entry())

    async def _prune_stale_acks(self) -> None:
        now_ms = int(time.time() * 1000)
        stale = []
        for field, value in (await self._redis.hgetall(self._acks_key)).items():
            ack = parse_ack(field.decode(errors="replace"), value.decode(errors="replace"))
            if ack is None or now_ms - ack.heartbeat_ms > STALE_ACK_MS:
                stale.append(field)
        if stale:
            await self._redis.hdel(self._acks_key, *stale)

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                pipe = self._redis.pipeline(transaction=False)
                pipe.hset(self._acks_key, self.worker_id, self._ack_entry())
                # The hash goes away by itself once every worker of the server is gone.
                pipe.pexpire(self._acks_key, STALE_ACK_MS)
                pipe.get(self._current_key)
                _, _, raw = await pipe.execute()
                if raw is not None:
                    await self.load(int(raw))
                self._note_redis_ok()
            except REDIS_ERRORS as exc:
                self._note_redis_error("heartbeat", exc)
            except ValueError as exc:
                log.error("snapshot current key of server %d is not a version: %s", self.server_id, exc)
            await pause(self._interval)

    async def _notice_loop(self) -> None:
        channel = rediskeys.snapshot_channel(self.server_id)
        delay = 0.1
        while True:
            pubsub = None
            try:
                pubsub = await subscribe(self._redis, channel)
                delay = 0.1
                # A notice published while we were not subscribed is caught here.
                await self.check_current()
                while True:
                    message = await pubsub.get_message(timeout=self._interval * 4)
                    # redis-py's read timeout can swallow a cancellation that lands with
                    # it (seen as a stop() that never returned): check for one here.
                    reraise_if_cancelling()
                    if message is None or message.get("type") != "message":
                        continue
                    try:
                        version = int(message["data"])
                    except (TypeError, ValueError):
                        log.warning("ignoring snapshot notice %r", message["data"])
                        continue
                    await self.load(version)
            except REDIS_ERRORS as exc:
                self._note_redis_error("notice subscription", exc)
            finally:
                try:
                    if pubsub is not None:
                        await pubsub.aclose()
                except REDIS_ERRORS:
                    pass
            await pause(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)

    def _note_redis_error(self, what: str, exc: BaseException) -> None:
        reraise_if_cancelling()
        if not self._redis_down:
            log.warning("Redis unreachable (%s): %s; serving snapshot version %d and retrying",
                        what, exc, self.version)
            self._redis_down = True

    def _note_redis_ok(self) -> None:
        if self._redis_down:
            log.info("Redis reachable again; serving snapshot version %d", self.version)
            self._redis_down = False
