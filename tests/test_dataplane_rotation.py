"""Rotation across a 3-IP pool with weights 1/1/2 over 400 messages gives exactly
100/100/200, in the spool records and in the `sent` counters in Redis."""

from __future__ import annotations

import smtplib
import time
from collections import Counter

from control.contract import rediskeys
from tests.dataplane_support import (
    make_bridge,
    make_pool,
    make_snapshot,
    message,
    publish,
    queued_id,
)
from tests.support import wait_until

SERVER = 1
IPS = [("192.0.2.11", 1), ("192.0.2.12", 1), ("192.0.2.13", 2)]


def test_rotation_is_exact_over_400_messages(redis_client, redis_url, start_dataplane):
    pool = make_pool(7, IPS)
    bridge = make_bridge(1, 7, "s3cret")
    publish(redis_client, make_snapshot(SERVER, 1, [pool], [bridge]))
    # One worker: the rotation is exact per worker (each has its own table).
    plane = start_dataplane(redis_url, SERVER, workers=1)

    ids = []
    with smtplib.SMTP("127.0.0.1", plane.port, timeout=10) as client:
        client.login(bridge.username, "s3cret")
        for n in range(400):
            client.mail("sender@example.com")
            client.rcpt("rcpt@example.net")
            code, reply = client.data(message(n))
            assert code == 250, reply
            ids.append(queued_id(reply))

    assert len(set(ids)) == 400
    picks = Counter(plane.record(i).ip for i in ids)
    assert picks == {"192.0.2.11": 100, "192.0.2.12": 100, "192.0.2.13": 200}
    # Each record names the IP's HELO hostname for delivery.
    first = plane.record(ids[0])
    assert first.ip_hostname == f"out-{first.ip.replace('.', '-')}.example"

    now, day = time.time(), rediskeys.DAY

    def sent(key: str) -> int:
        return int(redis_client.hget(key, "sent") or 0)

    assert wait_until(lambda: sent(rediskeys.pool_stats_key(SERVER, 7)) == 400, timeout=10)
    assert sent(rediskeys.pool_stats_key(SERVER, 7, day, now)) == 400
    for address, weight in IPS:
        for key in (rediskeys.ip_stats_key(SERVER, address), rediskeys.ip_stats_key(SERVER, address, day, now),
                    rediskeys.pool_ip_stats_key(SERVER, 7, address),
                    rediskeys.pool_ip_stats_key(SERVER, 7, address, day, now)):
            assert sent(key) == 100 * weight, key
