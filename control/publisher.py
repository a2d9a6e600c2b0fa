"""Routing snapshot publishing: SQLite state -> msgpack snapshot -> Redis.

For each MTA server the publisher builds the snapshot at the server's current
routing version (read in one transaction, so version and content agree), stores it
under an immutable per-version key, moves the `current` pointer forward (never
back) and publishes a notice — atomically, in one Lua script on the server's hash
slot. A change committed while Redis is down is published by the background
loop once Redis answers again (retrying with bounded backoff meanwhile); a Redis that lost its data (FLUSHALL, a new empty
server) is noticed by the same loop and refilled from SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .contract import rediskeys, snapshot
from .contract.runtime import reraise_if_cancelling
from .metrics import ControlMetrics
from .store import Store

log = logging.getLogger(__name__)

# The longest wait between two publishing attempts while Redis does not answer.
MAX_RETRY_DELAY = 5.0

# KEYS: version key, current key, previous version key. ARGV: version, payload, channel, retention.
_PUBLISH_LUA = """
redis.call('SET', KEYS[1], ARGV[2], 'NX')
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
local version = tonumber(ARGV[1])
if version > current then
  redis.call('SET', KEYS[2], ARGV[1])
  if current > 0 and redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('EXPIRE', KEYS[3], tonumber(ARGV[4]))
  end
  redis.call('PUBLISH', ARGV[3], ARGV[1])
  return version
end
return current
"""


def build_snapshot(store: Store, server_id: int) -> snapshot.Snapshot:
    """The snapshot of `server_id` at its current routing version."""
    with store.read() as s:
        server = s.server(server_id)
        if server is None:
            raise LookupError(f"no MTA server {server_id}")
        pools = []
        for pool in s.pools_on_server(server_id):
            pools.append(
                snapshot.PoolRoute(
                    smtp_id=pool.smtp_id,
                    user_id=pool.user_id or 0,
                    internal_name=pool.internal_name,
                    feed_type=pool.feed_type,
                    headers=pool.headers,
                    shared=pool.is_shared,
                    bounce_domain=pool.bounce_domain,
                    signing_domain=pool.signing_domain,
                    feedback_signing_domain=pool.feedback_signing_domain,
                    ips=tuple(
                        snapshot.IpRoute(address=ip.address, weight=ip.weight, state=ip.state, hostname=ip.hostname)
                        for ip in s.ips_in_pool(pool.smtp_id)
                    ),
                )
            )
        bridges = tuple(
            snapshot.BridgeRoute(
                bridge_id=row["bridge_id"],
                user_id=row["user_id"],
                name=row["name"],
                username=row["username"],
                secret_hash=row["secret_hash"],
                smtp_id=row["smtp_id"],
                feed_type=row["feed_type"],
                trusted_networks=s.bridge_networks(row["bridge_id"]),
                send_dsns=bool(row["send_dsns"]),
            )
            for row in s.bridge_routes(server_id)
        )
        dkim_keys = tuple(
            snapshot.DkimKeyRoute(user_id=row["user_id"], domain=row["domain"], selector=row["selector"],
                                  algorithm=row["algorithm"], sealed_key=bytes(row["sealed_private_key"]))
            for row in s.dkim_key_routes(server_id)
        )
        return snapshot.Snapshot(
            server_id=server.server_id,
            version=server.routing_version,
            hostname=server.hostname,
            zone=server.zone,
            bounce_domain=server.bounce_domain,
            pools=tuple(pools),
            bridges=bridges,
            dkim_keys=dkim_keys,
            published_at_ms=int(time.time() * 1000),
        )


class SnapshotPublisher:
    """Keeps every server's snapshot in Redis at the version SQLite says."""

    def __init__(self, store: Store, redis: aioredis.Redis, metrics: ControlMetrics | None = None):
        self._store = store
        self._redis = redis
        self._metrics = metrics
        self._script = redis.register_script(_PUBLISH_LUA)
        self._published: dict[int, int] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    async def publish(self, server_id: int) -> int:
        """Publish `server_id`'s snapshot; returns the version `current` now points at."""
        snap = build_snapshot(self._store, server_id)
        payload = snapshot.encode(snap)
        current = await self._script(
            keys=[
                rediskeys.snapshot_key(server_id, snap.version),
                rediskeys.snapshot_current_key(server_id),
                rediskeys.snapshot_key(server_id, snap.version - 1),
            ],
            args=[snap.version, payload, rediskeys.snapshot_channel(server_id),
                  rediskeys.SNAPSHOT_RETENTION_SECONDS],
        )
        self._published[server_id] = int(current)
        if self._metrics is not None:
            self._metrics.published(server_id, int(current))
        log.info("published snapshot server_id=%s version=%s", server_id, snap.version)
        return int(current)

    async def sync(self) -> list[tuple[int, int]]:
        """Publish every server whose routing version is ahead of what was published.

        Raises RedisError when Redis cannot be reached (nothing is lost: the next
        sync publishes it)."""
        async with self._lock:
            done = []
            for server_id, version in self._store_versions().items():
                if self._published.get(server_id, 0) < version:
                    done.append((server_id, await self.publish(server_id)))
            return done

    async def republish(self, server_id: int = 0) -> list[tuple[int, int]]:
        """Rebuild and publish from SQLite, whatever Redis is believed to hold."""
        async with self._lock:
            servers = [server_id] if server_id else sorted(self._store_versions())
            return [(sid, await self.publish(sid)) for sid in servers]

    async def verify(self) -> list[tuple[int, int]]:
        """Republish servers whose `current` pointer in Redis is missing or behind
        (Redis restarted empty, flushed, or a failover lost writes)."""
        versions = self._store_versions()
        if not versions:
            return []
        ordered = sorted(versions)
        pipe = self._redis.pipeline(transaction=False)
        for server_id in ordered:
            pipe.get(rediskeys.snapshot_current_key(server_id))
        currents = await pipe.execute()
        stale = [sid for sid, cur in zip(ordered, currents) if int(cur or 0) < versions[sid]]
        for server_id in stale:
            self._published.pop(server_id, None)
        if stale:
            log.warning("snapshot missing or behind in Redis for servers %s; republishing", stale)
        return await self.sync()

    async def published_version(self, server_id: int) -> int:
        """The version Redis's `current` pointer holds for the server (0 if none)."""
        return int(await self._redis.get(rediskeys.snapshot_current_key(server_id)) or 0)

    def wake(self) -> None:
        """Have `run` try again now instead of at its next backoff step (Redis is back)."""
        self._wake.set()

    async def run(self, interval: float, max_retry_delay: float = MAX_RETRY_DELAY) -> None:
        """Background loop: publish what is pending and repair Redis, forever.

        Checks every `interval` seconds. While Redis fails, the wait doubles from
        `interval` up to `max_retry_delay` (a dead Redis is not hammered, and the
        outage is logged once, not at every retry); `wake()` ends a wait early.
        """
        failures = 0
        while True:
            try:
                await self.verify()
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
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _store_versions(self) -> dict[int, int]:
        with self._store.read() as s:
            return s.routing_versions()
