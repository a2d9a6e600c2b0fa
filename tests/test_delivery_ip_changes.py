"""Source IPs that change while messages wait for a retry.

A message keeps the IP it was routed to while that IP is usable, even after the
IP moved to another pool: it still leaves from that IP and counts under its
original pool. An IP that was paused, or released (gone from the snapshot), is
replaced by a fresh pick from the message's pool; the counts follow the new IP,
still under the message's pool."""

from __future__ import annotations

from collections import Counter

from control.contract import rediskeys
from control.contract.snapshot import IP_PAUSED
from tests.dataplane_support import (
    Sink,
    events_of,
    make_bridge,
    make_pool,
    make_snapshot,
    message,
    publish,
    queue_empty,
    send_all,
    sink_outcomes,
    stat,
)
from tests.support import free_port, wait_until

SERVER = 5
SECRET = "s3cret"
MOVES, PAUSES, GOES, NEW = "127.0.0.11", "127.0.0.12", "127.0.0.14", "127.0.0.15"
OTHER = "127.0.0.13"


def test_moved_ip_keeps_its_pool_paused_and_released_ips_are_replaced(
        redis_client, redis_url, start_dataplane, tmp_path):
    pool_a = make_pool(21, [(MOVES, 1), (PAUSES, 1), (GOES, 1)], server_id=SERVER)
    pool_b = make_pool(22, [(OTHER, 1)], server_id=SERVER, tag="other")
    bridge = make_bridge(1, 21, SECRET)
    publish(redis_client, make_snapshot(SERVER, 1, [pool_a, pool_b], [bridge]))
    # The destination is down at first: every attempt is deferred, so the messages wait.
    port = free_port()
    plane = start_dataplane(redis_url, SERVER, delivery=True, args=[
        "--route", f"*=127.0.0.1:{port}", "--retry-schedule", "0.3s"])
    plan = [(n, [f"rcpt{n}@example.net"], message(n)) for n in range(6)]
    ids = send_all(plane.port, bridge.username, SECRET, plan, sessions=1)
    routed = {n: plane.record(ids[n]).ip for n in ids}
    assert Counter(routed.values()) == {MOVES: 2, PAUSES: 2, GOES: 2}
    assert wait_until(lambda: stat(redis_client, rediskeys.pool_stats_key(SERVER, 21), "deferred") >= 6, timeout=20)

    # MOVES goes to pool B, PAUSES is paused, GOES is released, NEW joins pool A.
    moved_a = make_pool(21, [(PAUSES, 1, IP_PAUSED), (NEW, 1)], server_id=SERVER)
    moved_b = make_pool(22, [(OTHER, 1), (MOVES, 1)], server_id=SERVER, tag="other")
    publish(redis_client, make_snapshot(SERVER, 2, [moved_a, moved_b], [bridge]))
    plane.wait_version(redis_client, 2)
    sink = Sink(tmp_path / "sink", listen=f"127.0.0.1:{port}")
    try:
        assert wait_until(lambda: queue_empty(plane), timeout=30), plane.log()
        per_peer, _ = sink_outcomes(sink.log())
        assert per_peer == {MOVES: 2, NEW: 4}
    finally:
        sink.stop()

    def delivered(key: str) -> int:
        return stat(redis_client, key, "delivered")

    assert wait_until(lambda: delivered(rediskeys.pool_stats_key(SERVER, 21)) == 6, timeout=10)
    assert delivered(rediskeys.pool_stats_key(SERVER, 22)) == 0  # the moved IP's mail stays pool A's
    assert delivered(rediskeys.pool_ip_stats_key(SERVER, 21, MOVES)) == 2
    assert delivered(rediskeys.pool_ip_stats_key(SERVER, 22, MOVES)) == 0
    assert delivered(rediskeys.pool_ip_stats_key(SERVER, 21, NEW)) == 4
    assert delivered(rediskeys.ip_stats_key(SERVER, PAUSES)) == delivered(rediskeys.ip_stats_key(SERVER, GOES)) == 0
    for n, ip in routed.items():
        final = [e for e in events_of(redis_client, ids[n]) if e["final"]]
        assert [(e["outcome"], e["pool"], e["ip"]) for e in final] == [
            ("delivered", pool_a.internal_name, MOVES if ip == MOVES else NEW)]
    log = plane.log()
    assert f"source IP {PAUSES} is paused or at weight 0; now sending from {NEW}" in log
    assert f"source IP {GOES} is released; now sending from {NEW}" in log
