"""A source IP that is not on this host (cannot be bound) is never replaced by
another address: its messages are deferred with a reply saying so, counted as
deferred under that IP, logged, and counted in the worker's bind_failures; the
pool's other IP delivers as usual."""

from __future__ import annotations

from control.contract import rediskeys
from tests.dataplane_support import (
    events_of,
    make_bridge,
    make_pool,
    make_snapshot,
    message,
    publish,
    send_all,
    stat,
)
from tests.support import wait_until

SERVER = 6
SECRET = "s3cret"
ABSENT = "192.0.2.50"  # TEST-NET-1: on no host
PRESENT = "127.0.0.16"


def test_an_unbindable_source_ip_defers_and_never_falls_back(redis_client, redis_url, start_dataplane, start_sink):
    publish(redis_client, make_snapshot(SERVER, 1, [make_pool(23, [(ABSENT, 1), (PRESENT, 1)], server_id=SERVER)],
                                        [make_bridge(1, 23, SECRET)]))
    sink = start_sink()
    plane = start_dataplane(redis_url, SERVER, delivery=True, args=[
        "--route", f"*={sink.address}", "--retry-schedule", "0.2s"])
    plan = [(n, [f"rcpt{n}@example.net"], message(n)) for n in range(4)]
    ids = send_all(plane.port, "br-test1", SECRET, plan, sessions=1)

    deferred_key = rediskeys.pool_ip_stats_key(SERVER, 23, ABSENT)
    assert wait_until(lambda: stat(redis_client, deferred_key, "deferred") >= 4, timeout=20)
    assert wait_until(lambda: sink.counts().get("accepted") == 2, timeout=10)
    stuck = [n for n in ids if events_of(redis_client, ids[n])[0]["ip"] == ABSENT]
    assert len(stuck) == 2
    assert all(plane.record(ids[n]).ip == ABSENT for n in stuck)  # still queued, still on their IP
    assert set(sink.counts()["peers"]) == {PRESENT}  # nothing ever left from another address
    for n in stuck:
        events = events_of(redis_client, ids[n])
        assert events and all(e["outcome"] == "deferred" and e["ip"] == ABSENT for e in events)
        assert events[0]["reply"].startswith(f"451 4.4.0 source IP {ABSENT} cannot be bound: ")
    assert stat(redis_client, rediskeys.ip_stats_key(SERVER, ABSENT), "delivered") == 0
    assert plane.stop() == 0
    log = plane.log()
    assert f"source IP {ABSENT} cannot be bound" in log
    assert "bind_failures 0" not in log.split("delivery stopped:")[-1]
