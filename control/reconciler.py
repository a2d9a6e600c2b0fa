"""Applies queued IP reassignments, the asynchronous step of AssignPool.

An operation moves QUEUED -> APPLYING when its IP is moved in SQLite at a new
routing version and that snapshot is published; APPLYING -> DONE once Redis holds
that version (or newer) and every live worker of the server acks serving it. That
version is the defined moment the move takes effect: messages accepted before it
keep the pool they were routed through. A worker that stops heartbeating is no
longer live and is not waited for. Operations survive restarts (SQLite).
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from . import models
from .contract import acks
from .contract.runtime import pause, reraise_if_cancelling
from .publisher import SnapshotPublisher
from .registry import Registry

log = logging.getLogger(__name__)


class ChangeFeed:
    """Wakes streaming RPCs (WatchOperation) when something may have changed."""

    def __init__(self) -> None:
        self._cond = asyncio.Condition()

    async def notify(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    async def wait(self, timeout: float) -> None:
        """Return after the next notify, or after `timeout` seconds."""
        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait(), timeout)
            except asyncio.TimeoutError:
                pass


class Reconciler:
    """Drives every pending operation to DONE or FAILED."""

    def __init__(self, registry: Registry, publisher: SnapshotPublisher, redis: aioredis.Redis, feed: ChangeFeed):
        self._registry = registry
        self._publisher = publisher
        self._redis = redis
        self._feed = feed

    async def step(self) -> int:
        """One pass over pending operations; returns how many changed state."""
        changed = 0
        for op, server_id in self._registry.pending_operations():
            if op.state == models.OP_QUEUED:
                op = self._registry.apply_operation(op.operation_id)
                changed += 1
                if op.state == models.OP_FAILED:
                    log.warning("operation %s failed: %s", op.operation_id, op.error)
                    continue
                log.info("operation %s applying at routing version %s", op.operation_id, op.routing_version)
                await self._publisher.sync()
            if op.state == models.OP_APPLYING and await self._applied(server_id, op.routing_version):
                self._registry.finish_operation(op.operation_id)
                log.info("operation %s done", op.operation_id)
                changed += 1
        if changed:
            await self._feed.notify()
        return changed

    async def _applied(self, server_id: int, version: int) -> bool:
        if await self._publisher.published_version(server_id) < version:
            return False
        live = await acks.live_workers(self._redis, server_id)
        return all(ack.version >= version for ack in live)

    async def run(self, interval: float) -> None:
        """Background loop; Redis outages only delay operations."""
        while True:
            try:
                await self.step()
            except (RedisError, OSError) as exc:
                reraise_if_cancelling()
                log.warning("reconciler waiting for Redis: %s", exc)
            except Exception:
                reraise_if_cancelling()
                log.exception("reconciler pass failed; retrying")
            await pause(interval)
