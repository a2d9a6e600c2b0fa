"""What the control plane knows of data-plane workers: the snapshot version each
live worker serves, read from the ack hash the workers refresh in Redis."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from . import rediskeys


@dataclass(frozen=True)
class WorkerAck:
    worker_id: str
    version: int
    heartbeat_ms: int


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
