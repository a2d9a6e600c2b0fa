"""Benchmark what trends cost: the stats flush that writes them, and the reads that serve them.

Measured, against the embedded Redis (unix socket, `appendfsync always`, as `poolmta up` runs it):

- `stats flush`: one worker's batch, as the stats batcher sends it every 250 ms:
  3 IPs of one pool, sent / delivered / bounced / deferred each, counted in one
  minute; the journal segment sealed, read back (`StatsBatcher.counts_input`) and
  applied by its Lua script.
  `trends` writes every target of `rediskeys.count_targets` (lifetime, day, hour and
  minute of the pool, each IP and each pool+IP: 12 hashes per pool and IP);
  `days` writes only the lifetime and day hashes (6), what a flush wrote before
  trends, through the same script: the ratio is what trends add to a flush.
- `trend read`: `stats_reader.trend` of a pool, 2,880 minute points (48 h, the
  most GetPoolTrend serves) and 720 hour points (30 days), every bucket filled:
  one pipelined round trip of HGETALLs.

The counters land in the benchmark's own Redis, which is emptied before each group.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from control import stats_reader
from control.contract import rediskeys
from control.contract.event_log import EVENT_LOG_ARGS
from control.embedded_redis import EmbeddedRedis
from dataplane.stats_batcher import StatsBatcher

SERVER, POOL = 1, 7
IPS = ("192.0.2.1", "192.0.2.2", "192.0.2.3")
FIELDS = ("sent", "delivered", "bounced", "deferred")


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory):
    server = EmbeddedRedis(Path(tmp_path_factory.mktemp("bench-redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(embedded):
    sync = redis.Redis.from_url(embedded.url)
    sync.flushall()
    yield sync
    sync.close()


def _fill(batcher: StatsBatcher) -> None:
    for address in IPS:
        for field in FIELDS:
            batcher.count(field, POOL, address, 5)


def _days_only(keys: list[str], args: list) -> tuple[list[str], list]:
    """The same batch without its hour and minute hashes: what a flush wrote before trends."""
    head = 3 + EVENT_LOG_ARGS  # the mark's TTL, the seq, the marker of before, the event log's
    kept_keys, kept_args, a = keys[:1], args[:head], head
    for key in keys[1:]:
        fields = args[a + 1]
        chunk = args[a:a + 2 + 2 * fields]
        a += len(chunk)
        if not any(f":{r.letter}:" in key for r in (rediskeys.HOUR, rediskeys.MINUTE)):
            kept_keys.append(key)
            kept_args += chunk
    return kept_keys, kept_args + args[a:]  # then the events and index entries


@pytest.mark.parametrize("variant", ["trends", "days"])
def test_stats_flush(benchmark, measure, client, variant):
    benchmark.group = "stats flush, 3 IPs x 4 fields"
    benchmark.extra_info["variant"] = variant
    batcher = StatsBatcher(client, server_id=SERVER)

    def flush() -> int:
        _fill(batcher)
        journal = batcher.journal
        journal.seal()
        segment = journal.oldest()
        keys, args = batcher.counts_input(segment)
        if variant != "trends":
            keys, args = _days_only(keys, args)
        applied = batcher._script(keys=keys, args=args)
        journal.acknowledge(segment)
        return applied

    try:
        assert measure(flush) == 1
        assert batcher.journal.empty  # nothing left behind
    finally:
        batcher.journal.close()
        shutil.rmtree(batcher.journal.directory)
    written = len(list(client.scan_iter(match=rediskeys.counter_key(SERVER, POOL) + "*")))
    per_scope = 4 if variant == "trends" else 2  # lifetime, day (, hour, minute)
    assert written == per_scope * (1 + len(IPS))  # the pool's hashes and its IPs' within it


@pytest.mark.parametrize("resolution", [rediskeys.MINUTE, rediskeys.HOUR], ids=["2880 minutes", "720 hours"])
def test_trend_read(benchmark, measure, client, embedded, resolution):
    points = resolution.retention_seconds // resolution.seconds
    benchmark.group = f"trend read, {points} {resolution.name}s"
    benchmark.extra_info["variant"] = "pipelined"
    now = time.time()
    for start in stats_reader.trend_starts(resolution, points, now):
        client.hset(rediskeys.pool_stats_key(SERVER, POOL, resolution, start),
                    mapping={"sent": 10, "delivered": 9, "bounced": 1})
    loop = asyncio.new_event_loop()
    reader = aioredis.Redis.from_url(embedded.url)
    try:
        def read() -> stats_reader.Trend:
            return loop.run_until_complete(
                stats_reader.trend(reader, SERVER, resolution, points, smtp_id=POOL, now=now))

        trend = measure(read)
        assert len(trend.points) == points and trend.totals.sent == 10 * points
    finally:
        loop.run_until_complete(reader.aclose())
        loop.close()


@pytest.mark.parametrize("variant", ["group", "journal", "memory"])
def test_stats_count(benchmark, variant, tmp_path):
    """The hot path of one count: `journal` is `StatsBatcher.count`, a framed record
    appended to the worker's stats journal (one os.write, page cache, no fsync);
    `group` is how the Bridge counts `sent` around the spool write (`begin` before it,
    `end` after: two writes); `memory` is what they replaced, a Counter increment of
    the count's key, the naive baseline."""
    benchmark.group = "stats count, one call"
    benchmark.extra_info["variant"] = variant
    if variant == "memory":
        pending: Counter = Counter()

        def count() -> None:
            pending[("sent", rediskeys.MINUTE, rediskeys.MINUTE.start(time.time()), POOL, IPS[0])] += 1

        benchmark(count)
        return
    batcher = StatsBatcher(redis.Redis.from_url("unix:///nonexistent"), server_id=SERVER,
                           journal_dir=tmp_path / "journal")
    def group() -> None:
        batcher.end(batcher.begin(["q", "m"], [batcher.count_record("sent", POOL, IPS[0])]))

    try:
        benchmark(group if variant == "group" else lambda: batcher.count_sent(POOL, IPS[0]))
        assert batcher.metrics["counts_dropped"] == 0
    finally:
        batcher.journal.close()
