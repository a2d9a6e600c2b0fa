"""Reads what the inbound listeners keep of the reports they could not attribute
(`control.contract.unattributed`, one bounded list per MTA server) and their
counts, for `ListUnattributedReports` / `poolmta report unattributed`."""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import redis.asyncio as aioredis

from .contract import rediskeys
from .contract.unattributed import UnattributedError, UnattributedReport


@dataclass(frozen=True)
class UnattributedReports:
    """The newest kept reports (newest first) and the counts of the servers read."""

    reports: list[UnattributedReport]
    unattributed_total: int
    too_big_total: int


async def unattributed_reports(redis: aioredis.Redis, server_ids: list[int], limit: int) -> UnattributedReports:
    """The newest `limit` kept reports of these servers, newest first, in one
    pipelined round trip; an entry that does not decode is left out."""
    pipe = redis.pipeline(transaction=False)
    for server_id in server_ids:
        pipe.lrange(rediskeys.unattributed_reports_key(server_id), 0, limit - 1)
        pipe.hgetall(rediskeys.inbound_counts_key(server_id))
    results = await pipe.execute()
    per_server: list[list[UnattributedReport]] = []
    totals = dict.fromkeys(rediskeys.INBOUND_FIELDS, 0)
    for entries, counts in zip(results[::2], results[1::2]):
        decoded = []
        for entry in entries:
            try:
                decoded.append(UnattributedReport.decode(entry))
            except UnattributedError:
                continue
        per_server.append(decoded)
        for key, value in counts.items():
            name = key.decode() if isinstance(key, bytes) else key
            if name in totals:
                totals[name] += int(value)
    # Each list is newest first already.
    merged = heapq.merge(*per_server, key=lambda r: -r.at_ms)
    return UnattributedReports([r for _, r in zip(range(limit), merged)], totals["unattributed"], totals["too_big"])
