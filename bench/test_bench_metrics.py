"""Benchmark what a Prometheus count adds to the hot path of a worker.

Measured, per count (one recipient's delivery outcome, `group` "metrics count"):

- `mmap`: `dataplane.metrics.deliveries.inc(pool, ip, outcome)` as a worker makes it:
  the labelled child cached, its value in a memory-mapped file (multiprocess mode);
- `memory`: the same with the value in memory (no metrics directory);
- `labels`: the naive way, `Counter.labels(pool, ip, outcome).inc()` in multiprocess
  mode, the child looked up by prometheus-client on every count;
- `journal`: `StatsBatcher.count` of the same outcome, the stats journal append every
  count already pays (one `os.write`): the reference the count is set against.

Fixed inputs: one pool, one IP, one outcome.
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from prometheus_client import Counter, values

from dataplane.metrics import LabelledCounter
from dataplane.stats_batcher import StatsBatcher

POOL, IP, OUTCOME = "promo-3-1-pool-7", "192.0.2.10", "delivered"
LABELS = ("pool", "source_ip", "outcome")


@pytest.fixture
def multiprocess(tmp_path, monkeypatch):
    """Counters made now keep their values in files in tmp_path, as in a worker."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())


def _counter() -> Counter:
    return Counter("poolmta_bench_deliveries", "bench", LABELS, registry=None)


@pytest.mark.parametrize("variant", ["mmap", "memory", "labels", "journal"])
def test_metrics_count(benchmark, measure, request, tmp_path, variant):
    benchmark.group = "metrics count"
    benchmark.extra_info["variant"] = variant
    if variant in ("mmap", "labels"):
        request.getfixturevalue("multiprocess")
    if variant == "journal":
        stats = StatsBatcher(aioredis.Redis(), server_id=1, journal_dir=tmp_path / "journal")
        measure(stats.count, OUTCOME, 7, IP)
        assert stats.pending > 0
        stats.journal.close()
        return
    counter = _counter()
    if variant == "labels":
        measure(lambda: counter.labels(POOL, IP, OUTCOME).inc())
    else:
        cached = LabelledCounter(counter)
        measure(cached.inc, POOL, IP, OUTCOME)
    assert counter.labels(POOL, IP, OUTCOME)._value.get() >= 1
