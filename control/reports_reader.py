"""Reads what the inbound listeners keep of the reports they could not attribute
(`control.contract.unattributed`, one bounded list per MTA server) and their
counts, for `ListUnattributedReports` / `poolmta report unattributed`."""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import redis.asyncio as aioredis

from . import paging
from .contract import rediskeys
from .contract.unattributed import UnattributedError, UnattributedReport


@dataclass(frozen=True)
class UnattributedReports:
    """One page of the kept reports (newest first), the token of the next page ("" after
    the last) and the counts of the servers read."""

    reports: list[UnattributedReport]
    unattributed_total: int
    too_big_total: int
    next_page_token: str = ""


def report_key(report: UnattributedReport) -> list:
    """The report's place in the listing, newest first: (at_ms, server_id, sha256), compared
    descending (control.paging key)."""
    return [report.at_ms, report.server_id, report.sha256]


async def unattributed_reports(redis: aioredis.Redis, server_ids: list[int],
                               wanted: paging.PageRequest) -> UnattributedReports:
    """The page `wanted` names of these servers' kept reports, newest first, with their
    counts. A token carries the key of the last report given out, so reports that arrive
    between pages (at the head of each list) never shift the next page; an entry that
    does not decode is left out."""
    before = paging.checked_after(wanted, int, int, str)
    pipe = redis.pipeline(transaction=False)
    for server_id in server_ids:
        pipe.hgetall(rediskeys.inbound_counts_key(server_id))
    totals = dict.fromkeys(rediskeys.INBOUND_FIELDS, 0)
    for counts in await pipe.execute():
        for key, value in counts.items():
            name = key.decode() if isinstance(key, bytes) else key
            if name in totals:
                totals[name] += int(value)
    per_server = [await _older_than(redis, server_id, before, wanted.size + 1) for server_id in server_ids]
    merged = heapq.merge(*per_server, key=report_key, reverse=True)  # each one newest first already
    found = paging.page(wanted, [r for _, r in zip(range(wanted.size + 1), merged)], report_key)
    return UnattributedReports(found.items, totals["unattributed"], totals["too_big"], found.next_page_token)


async def _older_than(redis: aioredis.Redis, server_id: int, before: list | None,
                      count: int) -> list[UnattributedReport]:
    """Up to `count` of the server's kept reports whose key is below `before`, newest
    first. The list is read from its head in chunks, only as far as the page needs (at
    most the UNATTRIBUTED_KEPT entries it ever holds); the whole chunk that completes
    the page is sorted in, so reports of one millisecond pushed out of digest order
    still page in key order."""
    key = rediskeys.unattributed_reports_key(server_id)
    found: list[UnattributedReport] = []
    chunk = max(count, 100)
    for start in range(0, rediskeys.UNATTRIBUTED_KEPT, chunk):
        entries = await redis.lrange(key, start, start + chunk - 1)
        for entry in entries:
            try:
                report = UnattributedReport.decode(entry)
            except UnattributedError:
                continue
            if before is None or report_key(report) < before:  # older: after it, newest first
                found.append(report)
        if len(found) >= count or len(entries) < chunk:
            break
    found.sort(key=report_key, reverse=True)
    return found[:count]

