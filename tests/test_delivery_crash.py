"""A worker SIGKILLed in the middle of delivering: the supervisor restarts it, it
recovers its share of the spool, and every message reaches the sink. A message
reaches it twice only if its transaction was in flight at the kill (at most one
per open connection of the killed worker); the test counts them."""

from __future__ import annotations

import os
import signal
from collections import Counter

from dataplane import spool
from tests.dataplane_support import (
    make_bridge,
    make_pool,
    make_snapshot,
    message,
    publish,
    queue_empty,
    send_all,
    stats_of,
)
from tests.support import wait_until

SERVER = 3
SECRET = "s3cret"
IPS = ["127.0.0.8", "127.0.0.9"]
MESSAGES = 400
WORKERS = 2
MAX_CONN_PER_DESTINATION = 8  # so each worker has 4 connections to the sink


def test_sigkill_mid_delivery_every_message_arrives_duplicates_only_in_flight(
        redis_client, redis_url, start_dataplane, start_sink):
    publish(redis_client, make_snapshot(SERVER, 1, [make_pool(13, [(ip, 1) for ip in IPS], server_id=SERVER)],
                                        [make_bridge(1, 13, SECRET)]))
    # Each delivery takes a while, so the kill finds transactions under way.
    sink = start_sink("--rule", "*=delay:0.05")
    plane = start_dataplane(redis_url, SERVER, workers=WORKERS, delivery=True, args=[
        "--route", f"*={sink.address}", "--retry-schedule", "0.2s",
        "--max-conn-per-destination", str(MAX_CONN_PER_DESTINATION)])

    plan = [(n, [f"rcpt{n}@example.net"], message(n)) for n in range(MESSAGES)]
    # All accepted before the kill: no client-side resend muddles the count.
    ids = send_all(plane.port, "br-test1", SECRET, plan, sessions=8)
    assert len(set(ids.values())) == MESSAGES

    assert wait_until(lambda: sink.counts().get("accepted", 0) >= MESSAGES // 4, timeout=60)
    # Kill the worker with the most of its share still queued (on a loaded machine one
    # worker can be done with its share while the other is not).
    owned = Counter(spool.owner_of(i, WORKERS) for i in spool.queued_ids(plane.spool_dir))
    index = max(range(WORKERS), key=lambda w: owned[w])
    victim = plane.worker_pids()[index]
    os.kill(victim, signal.SIGKILL)
    assert owned[index] >= 10, f"delivery nearly finished before the kill; the test proves nothing: {owned}"
    assert wait_until(lambda: plane.worker_pids()[index] != victim, timeout=30), plane.log()

    assert wait_until(lambda: queue_empty(plane), timeout=90, interval=0.2), sink.counts()
    per_message = Counter(entry["message_id"] for entry in sink.log())
    sent_ids = {raw.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode() for _, _, raw in plan}
    assert set(per_message) == sent_ids  # every message arrived
    duplicates = sum(n - 1 for n in per_message.values())
    assert duplicates <= MAX_CONN_PER_DESTINATION // WORKERS, per_message.most_common(10)
    assert max(per_message.values()) <= 2

    # The restarted worker recovered its share of the spool.
    restarted = [line for line in plane.log().splitlines() if f"worker {index} of 2 recovered" in line]
    assert len(restarted) == 2 and " 0 queued" in restarted[0] and " 0 queued" not in restarted[1], restarted
    # Counts lost with the killed process are at most its last unflushed batch; never more than arrived.

    def delivered() -> int:
        return stats_of(redis_client, SERVER, 13, [])["pool"]["delivered"]

    assert wait_until(lambda: delivered() >= MESSAGES - 100, timeout=10)
    assert delivered() <= sum(per_message.values())
