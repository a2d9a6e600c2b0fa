"""Nothing lost, nothing doubled: reports counted exactly once while a worker is
SIGKILLed in the middle of them (senders retry what got no 250, as MTAs do), and
a report that arrives while Redis is down gets 451 and counts once it is back."""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import time

import pytest
import redis

from control.contract import rediskeys
from control.contract.delivery_event import DeliveryEvent
from tests.dataplane_support import HOSTNAME, Dataplane, events_of, make_pool, make_snapshot, publish, stats_of
from tests.inbound_support import codec_of, dsn, send_report
from tests.support import wait_until

pytestmark = pytest.mark.slow

SERVER = 5
IP = "192.0.2.51"
REPORTS = 60
CLIENTS = 10
KILL_AFTER = 15


def _delivered(client: redis.Redis, count: int) -> list[tuple[str, str]]:
    """`count` messages of pool 51, one recipient each, delivered and counted as the
    delivery engine leaves them: [(message id, recipient)]."""
    now_ms = int(time.time() * 1000)
    messages = []
    for n in range(count):
        message_id, rcpt = f"{now_ms - 3_600_000:012x}c0ffee00{n:06x}", f"rcpt{n}@example.net"
        client.rpush(rediskeys.message_events_key(message_id), DeliveryEvent(
            ts_ms=now_ms, message_id=message_id, user_id=3, bridge_id=1, rcpt=rcpt, outcome="delivered",
            smtp_id=51, pool="promo-3-5-pool-51", ip=IP, reply="250 ok", attempt=1, final=True, rcpt_index=0,
        ).encode())
        messages.append((message_id, rcpt))
    for target in rediskeys.count_targets(SERVER, 51, IP, now_ms / 1000):
        client.hset(target.key, mapping={"sent": count, "delivered": count})
    return messages


async def _report_until_answered(port: int, raw: bytes, rcpt: str, answered: list, failures: list) -> None:
    while True:
        try:
            code, text = await asyncio.to_thread(send_report, port, raw, [rcpt])
        except (smtplib.SMTPException, OSError) as exc:  # cut by the kill: send it again
            failures.append(repr(exc))
            assert len(failures) < 200, failures[-3:]
            await asyncio.sleep(0.1)
            continue
        if code == 250:
            answered.append(text)
            return
        failures.append(f"{code} {text}")  # 421 while a worker restarts, 451: later
        await asyncio.sleep(0.1)


def test_reports_are_counted_exactly_once_across_a_worker_sigkill(redis_client, redis_url, tmp_path):
    publish(redis_client, make_snapshot(SERVER, 1, [make_pool(51, [(IP, 1)], server_id=SERVER)], []))
    messages = _delivered(redis_client, REPORTS)
    plane = Dataplane(tmp_path / "dp", redis_url, SERVER, workers=2).start()
    try:
        codec = codec_of(plane.data_dir)
        reports = [(dsn(rcpt, message_id=f"dsn-{n}@mx.example.net"), codec.encode(mid, 0, HOSTNAME))
                   for n, (mid, rcpt) in enumerate(messages)]
        victim = plane.worker_pids()[0]
        answered: list[str] = []
        failures: list[str] = []

        async def run() -> None:
            async def killer() -> None:
                while len(answered) < KILL_AFTER:
                    await asyncio.sleep(0.001)
                os.kill(victim, signal.SIGKILL)  # right after a 250, with others in flight

            async def client(share) -> None:
                for raw, rcpt in share:
                    await _report_until_answered(plane.inbound_port, raw, rcpt, answered, failures)

            await asyncio.gather(killer(), *(client(reports[i::CLIENTS]) for i in range(CLIENTS)))

        asyncio.run(run())
        assert wait_until(lambda: plane.worker_pids()[0] != victim, 30), plane.log()
        # Once more, every report, as a sender that never saw its 250 would: nothing more counts.
        for raw, rcpt in reports[:10]:
            assert send_report(plane.inbound_port, raw, [rcpt])[0] == 250
    finally:
        assert plane.stop() == 0

    # Usually the kill cuts sessions in flight (`failures`), which their senders then
    # retry; on a busy machine it can land between two sessions of the victim, and the
    # run still shows a killed worker's reports counted once (the re-sends above too).
    assert len(answered) == REPORTS, (len(answered), failures[-3:])
    moved = {"sent": REPORTS, "delivered": 0, "bounced": REPORTS, "deferred": 0, "complaints": 0, "suppressed": 0,
             "dkim_unsigned": 0}
    # Every bucket of the deliveries moved (they are all in this minute, give or take one).
    at = int(messages[0][0][:12], 16) / 1000 + 3600
    for resolution in (None, *rediskeys.RESOLUTIONS):
        assert stats_of(redis_client, SERVER, 51, [IP], resolution=resolution, at=at) == {
            "pool": moved, IP: moved, ("pool", IP): moved}, resolution
    for message_id, _ in messages:
        # the delivery in its list of before the event log, the bounce in the log: both read
        events = events_of(redis_client, message_id)
        assert [(e["outcome"], e.get("source", "")) for e in events] == [("delivered", ""), ("bounced", "dsn")]
    assert redis_client.hlen(rediskeys.suppression_key(3)) == REPORTS


def test_a_report_while_redis_is_down_gets_451_and_counts_once_redis_is_back(fresh_redis, tmp_path):
    client = redis.Redis.from_url(fresh_redis.url)
    try:
        publish(client, make_snapshot(SERVER, 1, [make_pool(51, [(IP, 1)], server_id=SERVER)], []))
        ((message_id, rcpt),) = _delivered(client, 1)
        plane = Dataplane(tmp_path / "dp", fresh_redis.url, SERVER).start()
        try:
            report, path = dsn(rcpt), codec_of(plane.data_dir).encode(message_id, 0, HOSTNAME)
            fresh_redis.kill()
            code, text = send_report(plane.inbound_port, report, [path])
            assert (code, text) == (451, "4.3.0 Reports cannot be recorded right now; try again later")
            fresh_redis.start()
            # The sender retries; the worker's client reconnects on its own.
            assert wait_until(lambda: send_report(plane.inbound_port, report, [path])[0] == 250, 30), plane.log()
            assert send_report(plane.inbound_port, report, [path])[1].endswith("counted already")
        finally:
            assert plane.stop() == 0
        assert stats_of(client, SERVER, 51, [IP])["pool"] == {"sent": 1, "delivered": 0, "bounced": 1, "deferred": 0,
                                                      "complaints": 0, "suppressed": 0, "dkim_unsigned": 0}
    finally:
        client.close()
