"""Queue lifetime: a recipient the destination keeps deferring is retried on the
retry schedule until the lifetime ends, then bounced with the last reply kept
(and the sender gets a DSN); the other recipients are not held up, and the
message leaves the spool."""

from __future__ import annotations

from tests.dataplane_support import (
    events_of,
    make_bridge,
    make_pool,
    make_snapshot,
    message,
    publish,
    queue_empty,
    rcpt_replies,
    send_all,
    stats_of,
)
from tests.support import wait_until

SERVER = 1
SECRET = "s3cret"
IP = "127.0.0.5"


def test_a_recipient_deferred_until_the_queue_lifetime_ends_is_bounced(
        redis_client, redis_url, start_dataplane, start_sink):
    publish(redis_client, make_snapshot(SERVER, 1, [make_pool(9, [(IP, 1)])], [make_bridge(1, 9, SECRET)]))
    sink = start_sink("--rule", "never*=451:4.2.1 mailbox busy, come back later")
    plane = start_dataplane(redis_url, SERVER, delivery=True, args=[
        "--route", f"*={sink.address}", "--retry-schedule", "0.2s,0.3s", "--queue-lifetime", "1.5s"])

    plan = [(n, [f"never{n}@example.net", f"fine{n}@example.net"], message(n)) for n in range(10)]
    ids = send_all(plane.port, "br-test1", SECRET, plan, sessions=2)

    def bounced() -> int:
        return stats_of(redis_client, SERVER, 9, [])["pool"]["bounced"]

    assert wait_until(lambda: bounced() == 10 and queue_empty(plane), timeout=30), \
        stats_of(redis_client, SERVER, 9, [IP])

    stats = stats_of(redis_client, SERVER, 9, [IP])
    assert stats["pool"]["delivered"] == 10
    # The sink answered every attempt the events count: a 451 per attempt to a never*
    # recipient, a 250 to each fine one.
    attempts = sum(max(e["attempt"] for e in events_of(redis_client, ids[n]) if e["rcpt"] == f"never{n}@example.net")
                   for n, _, _ in plan)
    # ... and the 10 DSNs their sender gets (from <>, one per message, its expired recipient).
    counts = sink.wait_counts(lambda c: rcpt_replies(c) >= 10 + attempts + 10 and c.get("notices") == 10,
                              "every recipient answered and 10 DSNs")
    # Every 451 is a deferral except the one that ended the lifetime, which is the bounce.
    assert counts["accepted_rcpts"] - counts["notices"] == 10  # the fine recipients, each on its first attempt
    assert stats["pool"]["deferred"] == counts["deferred"] - 10
    assert stats[IP] == stats[("pool", IP)] == stats["pool"]
    for n, _, _ in plan:
        events = [e for e in events_of(redis_client, ids[n]) if e["rcpt"] == f"never{n}@example.net"]
        *retries, last = events
        assert retries and all(e["outcome"] == "deferred" and not e["final"] for e in retries)
        assert [e["attempt"] for e in events] == list(range(1, len(events) + 1))
        assert last["outcome"] == "bounced" and last["final"]
        assert last["reply"].startswith("550 5.4.7 delivery time expired after 1.5s")
        assert last["reply"].endswith("last reply: 451 4.2.1 mailbox busy, come back later")
        # The sink saw exactly the attempts the events count.
        assert counts["rcpt_attempts"][f"never{n}@example.net"] == last["attempt"]
