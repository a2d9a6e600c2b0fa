"""End to end through the Bridge: 1,000 messages to a 3-IP pool, delivered by two
workers to a real `poolmta sink` over loopback.

The sink sees every message from the source address its pool chose (127.0.0.2-4),
`bounce*` recipients are bounced with the sink's 550 kept, `defer*` recipients are
delivered after two 451s, and the counters in Redis (pool, IP, pool+IP; lifetime
and today's bucket) equal exactly what the sink recorded, and the minute and hour
buckets add up to the lifetime totals. Each outcome is an event in the message's
Redis list. The sender gets one DSN per message with a bounced recipient, from <>
and the message's own source IP, counted apart (dsn_*).
"""

from __future__ import annotations

import time
from collections import Counter

from control.contract import rediskeys

from tests.dataplane_support import (
    events_of,
    is_notice,
    make_bridge,
    make_pool,
    make_snapshot,
    message,
    publish,
    queue_empty,
    send_all,
    sink_outcomes,
    bucket_sums,
    stats_of,
)
from tests.support import wait_until

SERVER = 1
SECRET = "s3cret"
IPS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
MESSAGES = 1000


def _rcpts(n: int) -> list[str]:
    if n % 20 == 0:
        return [f"bounce{n}@example.net"]
    if n % 20 == 1:
        return [f"defer{n}@example.org"]
    if n % 50 == 2:  # two recipients, one refused: the other is still delivered
        return [f"both{n}@example.net", f"bounce-also{n}@example.net"]
    return [f"rcpt{n}@example.net"]


def test_a_thousand_messages_leave_from_their_pool_ips_and_stats_match_the_sink(
        redis_client, redis_url, start_dataplane, start_sink):
    pool = make_pool(7, [(ip, 1) for ip in IPS])
    bridge = make_bridge(1, 7, SECRET)
    publish(redis_client, make_snapshot(SERVER, 1, [pool], [bridge]))
    sink = start_sink()
    plane = start_dataplane(redis_url, SERVER, workers=2, delivery=True,
                            args=["--route", f"*={sink.address}", "--retry-schedule", "0.2s,0.4s"])

    plan = [(n, _rcpts(n), message(n)) for n in range(MESSAGES)]
    began = time.time()
    ids = send_all(plane.port, bridge.username, SECRET, plan, sessions=10)
    assert len(set(ids.values())) == MESSAGES

    rcpts = [r for _, rs, _ in plan for r in rs]
    bounced = [r for r in rcpts if r.startswith("bounce")]
    deferred = [r for r in rcpts if r.startswith("defer")]
    delivered = len(rcpts) - len(bounced)
    dsns = sum(1 for _, rs, _ in plan if any(r.startswith("bounce") for r in rs))

    def settled() -> bool:
        pool_stats = stats_of(redis_client, SERVER, 7, [])["pool"]
        counts = sink.counts()
        return (queue_empty(plane) and pool_stats["delivered"] == delivered and pool_stats["bounced"] == len(bounced)
                and counts.get("accepted_rcpts", 0) - counts.get("notices", 0) == delivered
                and counts.get("notices") == dsns)

    assert wait_until(settled, timeout=90, interval=0.2), (stats_of(redis_client, SERVER, 7, IPS), sink.counts())

    # What the sink recorded, per peer address: the senders' mail, then their DSNs.
    log = [entry for entry in sink.log() if not is_notice(entry)]
    notices = [entry for entry in sink.log() if is_notice(entry)]
    assert len(notices) == dsns and {n["rcpts"][0] for n in notices} == {"sender@example.com"}
    pool_dsns = redis_client.hgetall(rediskeys.pool_stats_key(SERVER, 7))
    assert int(pool_dsns[b"dsn_sent"]) == int(pool_dsns[b"dsn_delivered"]) == dsns
    per_peer, per_message = sink_outcomes(log)
    refused = sum(1 for _, rs, _ in plan if all(r.startswith("bounce") for r in rs))
    assert len(log) == MESSAGES - refused and set(per_message.values()) == {1}  # each message once
    assert set(per_peer) == set(IPS)
    # Every RCPT the engine made was answered: delivered, bounced, or deferred twice.
    counts = sink.wait_rcpt_replies(len(rcpts) + 2 * len(deferred))
    assert counts["rejected"] == len(bounced) and counts["deferred"] == 2 * len(deferred)

    # Counters: exactly the sink's, per IP, per pool+IP and for the pool, lifetime and today.
    for resolution in (None, rediskeys.DAY):
        stats = stats_of(redis_client, SERVER, 7, IPS, resolution=resolution, at=time.time())
        for ip in IPS:
            peer = counts["peers"][ip]
            expected = {"delivered": per_peer[ip], "bounced": peer["rejected"], "deferred": peer["deferred"]}
            for key in (ip, ("pool", ip)):
                assert {f: stats[key][f] for f in expected} == expected, (resolution, key)
            # Every recipient accepted from this IP ended here: nothing moved to another IP.
            assert stats[ip]["sent"] == stats[ip]["delivered"] + stats[ip]["bounced"]
        assert stats["pool"]["sent"] == len(rcpts)
        assert stats["pool"]["delivered"] == delivered
        assert stats["pool"]["bounced"] == len(bounced)
        assert stats["pool"]["deferred"] == 2 * len(deferred)
    # Trends add up: every minute's and every hour's buckets since the first send sum
    # to the lifetime totals, for the pool, each IP and each pool+IP.
    lifetime = stats_of(redis_client, SERVER, 7, IPS)
    assert bucket_sums(redis_client, SERVER, 7, IPS, rediskeys.MINUTE, began) == lifetime
    assert bucket_sums(redis_client, SERVER, 7, IPS, rediskeys.HOUR, began) == lifetime

    # The sink saw each message from the IP its events name, with the pool's header.
    by_message_id = {entry["message_id"]: entry for entry in log}
    outcomes = Counter()
    for n, rcpt_list, raw in plan:
        events = events_of(redis_client, ids[n])
        assert events, n
        for event in events:
            assert (event["message_id"], event["smtp_id"], event["pool"], event["user_id"], event["bridge_id"]) == (
                ids[n], 7, pool.internal_name, 3, 1)
            outcomes[event["outcome"]] += 1
        final = {e["rcpt"]: e for e in events if e["final"]}
        assert set(final) == set(rcpt_list)
        # Each event names its recipient's place in the envelope (what VERP encodes).
        assert all(e["rcpt_index"] == rcpt_list.index(e["rcpt"]) for e in events), events
        header = raw.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()
        entry = by_message_id.get(header)
        if entry is None:
            assert all(r.startswith("bounce") for r in rcpt_list)
        else:
            assert entry["x-virtual-mta"] == pool.internal_name
            assert {final[r]["ip"] for r in entry["rcpts"]} == {entry["peer"]}
            assert entry["helo"] == f"out-{entry['peer'].replace('.', '-')}.example"
        for rcpt, event in final.items():
            if rcpt.startswith("bounce"):
                assert event["outcome"] == "bounced" and event["reply"].startswith("550 5.1.1"), event
                assert event["attempt"] == 1
            elif rcpt.startswith("defer"):
                assert event["outcome"] == "delivered" and event["attempt"] == 3, event
                retries = [e for e in events if e["rcpt"] == rcpt and not e["final"]]
                assert [(e["outcome"], e["attempt"], e["reply"][:3]) for e in retries] == [
                    ("deferred", 1, "451"), ("deferred", 2, "451")]
            else:
                assert event["outcome"] == "delivered" and event["reply"].startswith("250 "), event
    assert outcomes == {"delivered": delivered, "bounced": len(bounced), "deferred": 2 * len(deferred)}
    assert "Traceback" not in plane.log()
