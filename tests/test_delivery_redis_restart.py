"""Redis killed and restarted while 600 accepted messages are delivered: the data
plane keeps delivering, keeps the counts and events in memory meanwhile, and once
Redis is back the counters equal exactly what the sink recorded (lifetime totals,
and the minute and hour buckets adding up to them), and every message has each of
its events exactly once. (While Redis is down the Bridge answers RCPT with 451, the
suppression list being unreadable, so the messages are accepted first and the sink
is slowed down to leave a backlog to deliver during the outage.)"""

from __future__ import annotations

import time
from collections import Counter

import redis

from control.contract import rediskeys
from tests.dataplane_support import (
    bucket_sums,
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

SERVER = 2
SECRET = "s3cret"
IPS = ["127.0.0.6", "127.0.0.7"]
MESSAGES = 600


def _rcpts(n: int) -> list[str]:
    return [f"bounce{n}@example.net"] if n % 10 == 0 else [f"defer{n}@example.net"] if n % 10 == 1 else [
        f"rcpt{n}@example.net"]


def test_counts_stay_exact_across_a_redis_restart(fresh_redis, start_dataplane, start_sink):
    client = redis.Redis.from_url(fresh_redis.url)
    try:
        publish(client, make_snapshot(SERVER, 1, [make_pool(11, [(ip, 1) for ip in IPS], server_id=SERVER)],
                                      [make_bridge(1, 11, SECRET)]))
        # Two connections per destination, each message held 50 ms: a backlog builds up.
        sink = start_sink("--rule", "rcpt*=delay:0.05")
        plane = start_dataplane(fresh_redis.url, SERVER, workers=2, delivery=True,
                                args=["--route", f"*={sink.address}", "--retry-schedule", "0.3s",
                                      "--max-conn-per-destination", "2"])
        plane.wait_version(client, 1)

        plan = [(n, _rcpts(n), message(n)) for n in range(MESSAGES)]
        began = time.time()
        ids = send_all(plane.port, "br-test1", SECRET, plan, sessions=4)
        try:
            seen = sink.counts().get("accepted", 0)
            fresh_redis.kill()
            # Delivery goes on without Redis (no timing asserted: just let some happen).
            assert seen < MESSAGES - 100, f"no backlog left to deliver without Redis ({seen} delivered)"
            assert wait_until(lambda: sink.counts().get("accepted", 0) >= seen + 100, timeout=60)
        finally:
            if not fresh_redis.running:
                fresh_redis.start()
        client.close()
        client = redis.Redis.from_url(fresh_redis.url)
        assert len(ids) == MESSAGES

        bounced = sum(1 for _, rs, _ in plan if rs[0].startswith("bounce"))
        delivered = MESSAGES - bounced

        def settled() -> bool:
            pool = stats_of(client, SERVER, 11, [])["pool"]
            return queue_empty(plane) and pool["delivered"] == delivered and pool["bounced"] == bounced

        assert wait_until(settled, timeout=90, interval=0.2), stats_of(client, SERVER, 11, IPS)

        # Every RCPT the engine made was answered: one per message, two more per defer* one.
        defers = sum(1 for _, rs, _ in plan if rs[0].startswith("defer"))
        counts = sink.wait_rcpt_replies(MESSAGES + 2 * defers)
        per_peer, per_message = sink_outcomes(sink.log())
        assert set(per_message.values()) == {1}
        stats = stats_of(client, SERVER, 11, IPS)
        for ip in IPS:
            assert stats[ip]["delivered"] == per_peer[ip]
            assert stats[ip]["bounced"] == counts["peers"][ip]["rejected"]
            assert stats[ip]["deferred"] == counts["peers"][ip]["deferred"]
            assert stats[ip] == stats[("pool", ip)]
        assert stats["pool"]["sent"] == MESSAGES
        assert stats["pool"]["deferred"] == counts["deferred"] == 2 * sum(1 for _, rs, _ in plan
                                                                          if rs[0].startswith("defer"))
        for n, rcpts, _ in plan:
            outcomes = Counter(e["outcome"] for e in events_of(client, ids[n]))
            expected = ({"bounced": 1} if rcpts[0].startswith("bounce")
                        else {"deferred": 2, "delivered": 1} if rcpts[0].startswith("defer") else {"delivered": 1})
            assert outcomes == expected, (n, outcomes)
        # The minute and hour buckets were applied exactly once too: they add up to the totals.
        for resolution in (rediskeys.MINUTE, rediskeys.HOUR):
            assert bucket_sums(client, SERVER, 11, IPS, resolution, began) == stats, resolution
        assert "stats flush failed" in plane.log() and "stats flush recovered" in plane.log()
    finally:
        client.close()
