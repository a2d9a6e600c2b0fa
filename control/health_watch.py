"""The control plane's gRPC health, kept true: SERVING only while its stores answer.

Every `interval` seconds the watch PINGs Redis (on a client of its own with a
short timeout, so a hung Redis is seen as fast as a dead one) and runs one
trivial query on SQLite. While either fails, the overall status ("") and every
service name say NOT_SERVING; when both answer again, SERVING. Each change is
logged once, not every check. After `HealthServicer.enter_graceful_shutdown()`
the servicer ignores further changes, so stopping always ends NOT_SERVING.

`on_recovered` is called when Redis answers after an outage, so the snapshot
publisher catches up at once rather than at its next backoff step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from grpc_health.v1 import health, health_pb2
from redis.exceptions import RedisError

from .contract.redis_client import redis_client
from .contract.runtime import pause, reraise_if_cancelling
from .metrics import ControlMetrics
from .store import Store

log = logging.getLogger(__name__)

# A PING answered later than this counts as Redis being unavailable.
PING_TIMEOUT = 0.5

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthWatch:
    """Sets `servicer`'s status for "" and each of `service_names` from what Redis and SQLite answer."""

    def __init__(self, servicer: health.aio.HealthServicer, service_names: Sequence[str], redis_url: str,
                 store: Store, on_recovered: Callable[[], None] = lambda: None,
                 metrics: ControlMetrics | None = None) -> None:
        self._servicer = servicer
        self._names = ("", *service_names)
        self._redis = redis_client(redis_url, socket_timeout=PING_TIMEOUT, socket_connect_timeout=PING_TIMEOUT)
        self._store = store
        self._on_recovered = on_recovered
        self._metrics = metrics
        self.serving: bool | None = None  # None until the first check

    async def check(self) -> bool:
        """Check both stores once, update the servicer if the answer changed; True if serving."""
        problems = [p for p in (await self._redis_problem(), self._sqlite_problem()) if p]
        serving = not problems
        if serving != self.serving:
            for name in self._names:
                await self._servicer.set(name, SERVING if serving else NOT_SERVING)
            if self._metrics is not None:
                self._metrics.health(serving)
            if not serving:
                log.error("health NOT_SERVING: %s", "; ".join(problems))
            elif self.serving is not None:
                log.warning("health SERVING again: Redis and SQLite answer")
                self._on_recovered()
            self.serving = serving
        return serving

    async def run(self, interval: float) -> None:
        """Check every `interval` seconds until cancelled; closes its Redis client then."""
        try:
            while True:
                try:
                    await self.check()
                except Exception:  # noqa: BLE001 - a failed check must not end the watch
                    reraise_if_cancelling()
                    log.exception("health check failed; checking again")
                await pause(interval)
        finally:
            await self._redis.aclose()

    async def _redis_problem(self) -> str:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            reraise_if_cancelling()
            return f"Redis does not answer ({type(exc).__name__})"
        return ""

    def _sqlite_problem(self) -> str:
        try:
            self._store.schema_version()  # one read of the database header
        except Exception as exc:  # noqa: BLE001 - any failure means the store is unusable
            return f"SQLite does not answer ({type(exc).__name__}: {exc})"
        return ""
