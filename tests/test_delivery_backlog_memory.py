"""A backlog behind a destination that is down, then up, with a payload budget of a
few KB and one connection per destination: every accepted message is delivered
exactly once with exactly its spooled bytes (most of them read back from the
spool), while the bytes the worker keeps in memory stay within the budget and
come back to 0 once the backlog is drained."""

from __future__ import annotations

from email.parser import BytesHeaderParser

from tests.dataplane_support import (make_bridge, make_pool, make_snapshot, message, publish, queue_empty,
                                     send_all, stats_of)
from tests.support import free_port, scrape_metrics, wait_until

SERVER = 12
SECRET = "backlog-s3cret"
IP = "127.0.0.33"
BUDGET = 4096
MESSAGES = 40
# About 1 KB, with lines a client dot-stuffs: bytes read back from the spool must be
# stuffed exactly as the ones kept in memory.
BODY = b"".join(b".line %02d of a body of about one kilobyte, give or take\r\n" % i for i in range(18))


def _message_id(raw: bytes) -> str:
    return BytesHeaderParser().parsebytes(raw)["Message-ID"]


def test_a_backlog_is_delivered_once_with_its_bytes_within_the_payload_budget(
        redis_client, redis_url, start_dataplane, start_sink, tmp_path):
    publish(redis_client, make_snapshot(SERVER, 1, [make_pool(7, [(IP, 1)], server_id=SERVER)],
                                        [make_bridge(1, 7, SECRET)]))
    port = free_port()  # the destination: nothing listens there yet
    plane = start_dataplane(redis_url, SERVER, delivery=True, args=[
        "--route", f"*=127.0.0.1:{port}", "--retry-schedule", "0.5s", "--max-conn-per-destination", "1",
        "--delivery-payload-memory", str(BUDGET)])
    endpoint = f"127.0.0.1:{plane.metrics_port}"
    sampled: list[float] = []

    def payload_bytes() -> float:
        value = sum(scrape_metrics(endpoint).get("poolmta_delivery_payload_bytes", {}).values())
        sampled.append(value)
        return value

    plan = [(n, [f"rcpt{n}@example.net"], message(n, body=BODY)) for n in range(MESSAGES)]
    ids = send_all(plane.port, "br-test1", SECRET, plan, sessions=4)
    assert len(ids) == MESSAGES

    # Down: every message is deferred at least once and stays in the spool, where
    # its exact bytes are read.
    def all_deferred() -> bool:
        payload_bytes()
        return all(plane.record(i).attempts for i in ids.values())

    assert wait_until(all_deferred, timeout=60, interval=0.2)
    spooled = {_message_id(record.message): record.message for record in map(plane.record, ids.values())}
    assert len(spooled) == MESSAGES

    # Up: the backlog drains through one connection.
    store = tmp_path / "received"
    start_sink("--store", str(store), listen=f"127.0.0.1:{port}")

    def drained() -> bool:
        payload_bytes()
        return queue_empty(plane) and stats_of(redis_client, SERVER, 7, [])["pool"]["delivered"] == MESSAGES

    assert wait_until(drained, timeout=120, interval=0.2), stats_of(redis_client, SERVER, 7, [IP])
    assert wait_until(lambda: payload_bytes() == 0, timeout=10)
    assert max(sampled) <= BUDGET, sampled

    received = [path.read_bytes() for path in sorted(store.glob("*.eml"))]
    assert len(received) == MESSAGES  # once each
    assert {_message_id(raw): raw for raw in received} == spooled  # exactly the spooled bytes
    assert "Traceback" not in plane.log()
