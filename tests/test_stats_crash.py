"""Stats exact through every crash (issue 11 item 6), each scenario a few hundred
messages through two workers to the sink, then the pool's counters (the Redis hashes
StatsService reads) compared with what the sink received, exactly: `sent` equals the
messages accepted and `delivered` the distinct messages the sink got (it may get a
message twice after a crash: delivery is at least once; the count follows the spool,
not the wire), and every message has exactly one delivery event.

(a) a worker SIGKILLed right after the load, its last counts still in its journal, and
    deliveries under way; (b) Redis killed mid-delivery and started again; (c) the data
    plane stopped while Redis is down, then Redis and the data plane started again;
(d) SIGKILL of the supervisor, the workers and Redis, then all started again."""

from __future__ import annotations

import contextlib
import os
import signal
from collections import Counter

import redis

from tests.dataplane_support import (
    events_of,
    make_bridge,
    make_pool,
    make_snapshot,
    message,
    publish,
    queue_empty,
    send_all,
    sink_outcomes,
    stats_of,
)
from tests.support import wait_until

SERVER, POOL = 6, 16
SECRET = "s3cret"
IPS = ["127.0.0.10", "127.0.0.11"]
MESSAGES = 240
PLANE_ARGS = ["--retry-schedule", "0.3s", "--max-conn-per-destination", "4"]


def _load(url: str, plane) -> dict:
    """Publish the pool and send every message through the Bridge; {n: our message id}."""
    with contextlib.closing(redis.Redis.from_url(url)) as client:
        publish(client, make_snapshot(SERVER, 1, [make_pool(POOL, [(ip, 1) for ip in IPS], server_id=SERVER)],
                                      [make_bridge(1, POOL, SECRET)]))
        plane.wait_version(client, 1)
    plan = [(n, [f"rcpt{n}@example.net"], message(n)) for n in range(MESSAGES)]
    ids = send_all(plane.port, "br-test1", SECRET, plan, sessions=6)
    assert len(set(ids.values())) == MESSAGES
    return ids


def _start(start_dataplane, url: str, sink):
    return start_dataplane(url, SERVER, workers=2, delivery=True, args=["--route", f"*={sink.address}", *PLANE_ARGS])


def _assert_exact(url: str, plane, sink, ids: dict) -> None:
    """Once the queue is empty and the sink has every message: the counters equal what
    it received, and each message has one delivery event."""
    with contextlib.closing(redis.Redis.from_url(url)) as client:
        _assert_counters(client, plane, sink, ids)


def _assert_counters(client, plane, sink, ids: dict) -> None:
    assert wait_until(lambda: queue_empty(plane), timeout=120, interval=0.2), plane.log()
    assert wait_until(lambda: len(sink_outcomes(sink.log())[1]) == MESSAGES, timeout=60), sink.counts()

    def pool() -> dict:
        return stats_of(client, SERVER, POOL, [])["pool"]

    assert wait_until(lambda: pool()["delivered"] >= MESSAGES and pool()["sent"] >= MESSAGES, timeout=30), (
        pool(), sorted(p.name for p in plane.data_dir.glob("stats-journal/*/*")), plane.log()[-3000:])
    assert wait_until(lambda: not any(plane.data_dir.glob("stats-journal/*/*.log")), timeout=15), plane.log()
    distinct = len(sink_outcomes(sink.log())[1])
    figures = pool()
    assert (figures["sent"], figures["delivered"], figures["bounced"]) == (MESSAGES, distinct, 0), figures
    per_ip = stats_of(client, SERVER, POOL, IPS)
    assert sum(per_ip[ip]["sent"] for ip in IPS) == MESSAGES
    outcomes = Counter(tuple(e["outcome"] for e in events_of(client, message_id)) for message_id in ids.values())
    assert outcomes == {("delivered",): MESSAGES}, outcomes


def test_a_worker_sigkill_loses_and_doubles_no_count(redis_url, start_dataplane, start_sink):
    sink = start_sink("--rule", "*=delay:0.03")
    plane = _start(start_dataplane, redis_url, sink)
    ids = _load(redis_url, plane)
    victim = plane.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)  # its last counts are in its journal only; deliveries under way
    assert wait_until(lambda: plane.worker_pids()[0] != victim, timeout=30), plane.log()
    _assert_exact(redis_url, plane, sink, ids)


def test_a_redis_kill_and_restart_loses_and_doubles_no_count(fresh_redis, start_dataplane, start_sink):
    sink = start_sink("--rule", "*=delay:0.03")
    plane = _start(start_dataplane, fresh_redis.url, sink)
    ids = _load(fresh_redis.url, plane)
    seen = sink.counts().get("accepted", 0)
    fresh_redis.kill()
    try:
        assert wait_until(lambda: sink.counts().get("accepted", 0) >= seen + 40, timeout=60)
    finally:
        fresh_redis.start()
    _assert_exact(fresh_redis.url, plane, sink, ids)


def test_a_stop_while_redis_is_down_keeps_the_counts_for_the_next_start(fresh_redis, start_dataplane, start_sink):
    sink = start_sink()
    plane = _start(start_dataplane, fresh_redis.url, sink)
    ids = _load(fresh_redis.url, plane)
    fresh_redis.kill()
    try:
        assert wait_until(lambda: len(sink_outcomes(sink.log())[1]) == MESSAGES, timeout=60), sink.counts()
        plane.stop()
    finally:
        fresh_redis.start()
    assert "left in the stats journal" in plane.log() and "replayed at next start" in plane.log()
    _assert_exact(fresh_redis.url, _start(start_dataplane, fresh_redis.url, sink), sink, ids)


def test_kill_9_of_everything_then_a_restart_loses_and_doubles_no_count(fresh_redis, start_dataplane, start_sink):
    sink = start_sink("--rule", "*=delay:0.03")
    plane = _start(start_dataplane, fresh_redis.url, sink)
    ids = _load(fresh_redis.url, plane)
    workers = list(plane.worker_pids().values())
    for pid in workers:  # stopped first, so the supervisor's death cannot stop them gracefully
        os.kill(pid, signal.SIGSTOP)
    plane.kill()
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    fresh_redis.kill()
    fresh_redis.start()
    _assert_exact(fresh_redis.url, _start(start_dataplane, fresh_redis.url, sink), sink, ids)
