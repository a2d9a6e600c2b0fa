"""Fair shares under sustained load: with one connection allowed per source IP and
three destinations each with a long queue, a busy connection gives its slot up
every few messages, so no destination waits for another's whole queue.

The messages are accepted with delivery off, then a data plane with delivery on
recovers them all from the spool at once: every queue is full from the start."""

from __future__ import annotations

import itertools

from tests.dataplane_support import (
    Dataplane,
    make_bridge,
    make_pool,
    make_snapshot,
    message,
    publish,
    queue_empty,
    send_all,
)
from tests.support import wait_until

SERVER = 8
SECRET = "s3cret"
IP = "127.0.0.19"
PER_DOMAIN = 100
DOMAINS = ["a.test", "b.test", "c.test"]


def test_destinations_take_turns_on_a_busy_ip(redis_client, redis_url, start_sink, tmp_path):
    publish(redis_client, make_snapshot(SERVER, 1, [make_pool(27, [(IP, 1)], server_id=SERVER)],
                                        [make_bridge(1, 27, SECRET)]))
    sink = start_sink(listen="127.0.0.21:0,127.0.0.22:0,127.0.0.23:0")  # three destinations
    listens = sink.counts()["listen"]
    assert len(listens) == 3
    plan = [(f"{d}{n}", [f"rcpt{n}@{d}"], message(n)) for d in DOMAINS for n in range(PER_DOMAIN)]

    with_delivery_off = Dataplane(tmp_path / "dp", redis_url, SERVER).start()
    try:
        send_all(with_delivery_off.port, "br-test1", SECRET, plan, sessions=1)
    finally:
        assert with_delivery_off.stop() == 0

    routes = [arg for d, listen in zip(DOMAINS, listens, strict=True) for arg in ("--route", f"{d}={listen}")]
    plane = Dataplane(tmp_path / "dp", redis_url, SERVER, delivery=True, args=[
        *routes, "--max-conn-per-ip", "1", "--max-conn-per-destination", "1"]).start()
    try:
        assert wait_until(lambda: queue_empty(plane), timeout=60), sink.counts()
        order = [entry["rcpts"][0].rpartition("@")[2] for entry in sorted(sink.log(), key=lambda e: e["n"])]
        assert len(order) == len(plan)
        # Every destination got its turn early on, long before any queue was done, and
        # they kept taking turns (one after the other would be 3 runs).
        assert set(order[:PER_DOMAIN]) == set(DOMAINS), order[:PER_DOMAIN]
        runs = 1 + sum(1 for before, after in itertools.pairwise(order) if before != after)
        assert runs >= 10, order
        assert "Traceback" not in plane.log()
    finally:
        assert plane.stop() == 0
