"""Worker acks: which snapshot version each data-plane worker of an MTA server serves.

Every worker writes one entry under its worker id in its server's ack hash
(`rediskeys.worker_acks_key`): "version:heartbeat_unix_ms", refreshed on every
heartbeat and right after each snapshot swap. The control plane reads the hash
to know which version every live worker serves (an Operation is done once they
all serve its version). This module owns the entry format on both sides:
`format_ack` for the workers, `parse_ack` and `live_workers` for whoever reads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from . import rediskeys


@dataclass(frozen=True)
class WorkerAck:
    """One worker's entry: the version it serves and when it last said so."""

    worker_id: str
    version: int
    heartbeat_ms: int


def format_ack(version: int, heartbeat_ms: int) -> str:
    """The entry of a worker serving `version`, alive at `heartbeat_ms` (Unix milliseconds)."""
    return f"{int(version)}:{int(heartbeat_ms)}"


def parse_ack(worker_id: str, raw: str) -> WorkerAck | None:
    """Parse "version:heartbeat_ms"; None for a malformed entry."""
    version, sep, heartbeat = raw.partition(":")
    if not sep or not version.isdigit() or not heartbeat.isdigit():
        return None
    return WorkerAck(worker_id, int(version), int(heartbeat))


async def live_workers(redis: aioredis.Redis, server_id: int, now_ms: int | None = None) -> list[WorkerAck]:
    """Workers of `server_id` whose heartbeat has not expired, by worker id."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    raw = await redis.hgetall(rediskeys.worker_acks_key(server_id))
    acks = []
    for key, value in raw.items():
        worker_id = key.decode() if isinstance(key, bytes) else key
        ack = parse_ack(worker_id, value.decode() if isinstance(value, bytes) else value)
        if ack and now_ms - ack.heartbeat_ms <= rediskeys.WORKER_HEARTBEAT_TTL_MS:
            acks.append(ack)
    return sorted(acks, key=lambda a: a.worker_id)
