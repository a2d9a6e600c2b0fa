"""`/healthz` and `/readyz` of a data-plane worker.

`/healthz` says the process serves HTTP at all (200 `{"status": "ok"}`): restart
it when this fails. `/readyz` says whether it can accept mail now: Redis answers,
a routing snapshot is loaded, the spool directory is writable and the disk under
it has at least `HttpConfig.min_free_disk` free; 200 `{"status": "ready"}`, else
503 naming the failing checks: send new mail elsewhere while it fails.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from aiohttp import web
from redis import exceptions as redis_errors

from control.contract.runtime import reraise_if_cancelling

# A probe that waits longer than this for Redis calls it unreachable.
REDIS_TIMEOUT = 1.0


def _disk(spool_dir: Path, floor: int) -> tuple[dict, dict]:
    """The spool and disk checks, from the file system (blocking)."""
    writable = os.access(spool_dir, os.W_OK | os.X_OK)
    spool = {"ok": writable, "detail": "writable" if writable else f"{spool_dir} is not writable"}
    try:
        stat = os.statvfs(spool_dir)
    except OSError as exc:
        return {"ok": False, "detail": f"{spool_dir}: {exc.strerror}"}, {
            "ok": False, "detail": "cannot read the free space"}
    free = stat.f_bavail * stat.f_frsize
    ok = free >= floor
    return spool, {"ok": ok, "detail": f"{free} bytes free, floor {floor}", "free_bytes": free}


class Health:
    """The health endpoints of one worker."""

    def __init__(self, *, redis, loader, spool_dir: Path, min_free_disk: int) -> None:
        self.redis = redis
        self.loader = loader
        self.spool_dir = spool_dir
        self.min_free_disk = min_free_disk

    async def healthz(self, _request: web.Request) -> web.Response:
        """200 while the worker's loop serves requests."""
        return web.json_response({"status": "ok"})

    async def _redis(self) -> dict:
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                await self.redis.ping()
        except (redis_errors.RedisError, OSError, TimeoutError) as exc:
            reraise_if_cancelling()
            return {"ok": False, "detail": f"Redis does not answer: {str(exc)[:120] or type(exc).__name__}"}
        return {"ok": True, "detail": "answers"}

    async def checks(self) -> dict[str, dict]:
        """Each readiness check by name: {"ok": bool, "detail": str, ...}."""
        routing = self.loader.current
        snapshot = ({"ok": True, "detail": f"version {routing.version}", "version": routing.version}
                    if routing is not None else {"ok": False, "detail": "no routing snapshot loaded yet"})
        spool, disk = await asyncio.to_thread(_disk, self.spool_dir, self.min_free_disk)
        return {"redis": await self._redis(), "snapshot": snapshot, "spool": spool, "disk": disk}

    async def readyz(self, _request: web.Request) -> web.Response:
        """200 when every check passes, else 503 with the failing ones named."""
        checks = await self.checks()
        failing = [name for name, check in checks.items() if not check["ok"]]
        body = {"status": "not ready" if failing else "ready", "failing": failing, "checks": checks}
        return web.json_response(body, status=503 if failing else 200)
