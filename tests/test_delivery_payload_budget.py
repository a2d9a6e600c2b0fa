"""The payload budget of a worker's delivery queue, on a real spool: a backlog keeps
message bytes in memory only within the budget, the rest are read back exactly
when due, and the accounting is exact (never over the budget, back to 0). And the
memory given back once a large backlog drained."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from dataplane import spool
from dataplane.config import DeliveryConfig
from dataplane.delivery.memory_return import DRAINED_SHARE, LARGE_BACKLOG, DrainWatch, give_back
from dataplane.delivery.payload_budget import PayloadBudget
from dataplane.delivery.queue import DeliveryQueue
from dataplane.smtp_client import data_payload

MESSAGES = 12
# Lines a client dot-stuffed and bare LFs: the bytes read back go through the same
# conversion as the ones kept at acceptance.
BODY = b"".join(b".line %d of the body, long enough to matter\r\n" % i for i in range(20)) + b"bare\nend"


def _record(n: int) -> spool.SpoolRecord:
    message_id = f"{int(time.time() * 1000):012x}aabbcc{n:08x}"
    return spool.SpoolRecord(
        id=message_id, received_ms=int(message_id[:12], 16), server_id=1, snapshot_version=3, worker="h:1:0",
        client_address="127.0.0.1", client_helo="client.example", tls=False, auth="auth", bridge_id=1,
        bridge_username="br-x", user_id=3, smtp_id=7, pool="promo-3-1-pool-7", ip="192.0.2.1",
        ip_hostname="out.example", feed_type="newsletter", zone="US-1", mail_from="sender@example.com",
        rcpt_tos=(f"r{n}@example.net", f"s{n}@example.org"), mail_options=(), smtputf8=False,
        message=b"Subject: message %d\r\n\r\n" % n + BODY,
    )


@pytest.fixture
async def store(tmp_path):
    opened = spool.Spool(tmp_path / "spool")
    opened.open()
    try:
        yield opened
    finally:
        opened.close()


async def _backlog(store: spool.Spool, budget: int) -> tuple[DeliveryQueue, list[spool.SpoolRecord]]:
    """A queue with `budget` bytes of payload memory, handed MESSAGES spooled records
    at acceptance; the accounting is checked after every step."""
    queue = DeliveryQueue(DeliveryConfig(payload_memory=budget), store, owners=1, index=0, start_job=lambda job: None,
                          settle=lambda message: None)
    records = [_record(n) for n in range(MESSAGES)]
    for record in records:
        await store.store(record)
        queue.submit(record, now=time.time())
        _check(queue, budget)
    return queue, records


def _check(queue: DeliveryQueue, budget: int) -> None:
    """The counter is exactly the bytes the messages hold, and within the budget."""
    held = sum(len(m.payload) for m in queue._messages.values() if m.payload is not None)
    assert queue.payload_bytes == held <= budget


async def test_a_backlog_keeps_bytes_only_within_the_budget(store):
    size = len(data_payload(_record(0).message))
    budget = 3 * size + size // 2
    queue, records = await _backlog(store, budget)
    kept = [m for m in queue.messages() if m.payload is not None]
    assert len(kept) == 3 and queue.payload_bytes == 3 * size
    # Every message, kept or not, gives exactly the bytes acceptance would have sent;
    # none keeps the raw message in its record.
    for message, record in zip(queue.messages(), records, strict=True):
        assert message.record.message == b""
        assert await queue.load_payload(message) == data_payload(record.message)
        _check(queue, budget)
    assert queue.payload_bytes == 3 * size  # no room for what was read back
    # A round over with recipients to retry gives its room back; the next message
    # read back is kept in it.
    queue.release_payload(kept[0])
    assert kept[0].payload is None and queue.payload_bytes == 2 * size
    by_id = {record.id: record for record in records}
    waiting = next(m for m in queue.messages() if m.payload is None and m is not kept[0])
    assert await queue.load_payload(waiting) == data_payload(by_id[waiting.id].message)
    assert waiting.payload is not None and queue.payload_bytes == 3 * size
    # Messages leaving the queue, final or lost, give theirs back too: 0 once drained.
    for i, message in enumerate(queue.messages()):
        if i % 2:
            queue.removing(message)
            queue.removed(message)
        else:
            queue.forget(message)
        _check(queue, budget)
    assert len(queue) == 0 and queue.payload_bytes == 0


async def test_a_message_that_left_the_queue_keeps_no_bytes(store):
    queue, records = await _backlog(store, budget=0)
    assert queue.payload_bytes == 0 and all(m.payload is None for m in queue.messages())
    message = queue.messages()[0]
    queue.forget(message)
    queue.payloads.limit = 1 << 20  # room enough now: still nothing for a forgotten message
    assert await queue.load_payload(message) == data_payload(records[0].message)
    assert message.payload is None and queue.payload_bytes == 0


async def test_a_budget_of_zero_reads_every_message_back(store):
    queue, records = await _backlog(store, budget=0)
    for message, record in zip(queue.messages(), records, strict=True):
        assert await queue.load_payload(message) == data_payload(record.message)
    assert queue.payload_bytes == 0 and all(m.payload is None for m in queue.messages())


async def test_a_lost_record_raises_and_keeps_nothing(store):
    queue, records = await _backlog(store, budget=0)
    message = queue.messages()[0]
    await store.remove(message.id)
    queue.payloads.limit = 1 << 20
    with pytest.raises(FileNotFoundError):
        await queue.load_payload(message)
    assert queue.payload_bytes == 0


def test_the_budget_refuses_a_negative_size():
    with pytest.raises(ValueError, match="0 or more bytes, got -1"):
        PayloadBudget(-1)


def test_a_record_keeps_no_bytes_twice():
    record = _record(1)
    queue = DeliveryQueue(DeliveryConfig(), None, owners=1, index=0, start_job=lambda job: None,
                          settle=lambda message: None)
    queue.submit(record, now=time.time())
    queue.submit(replace(record), now=time.time())  # a known id is ignored
    assert queue.payload_bytes == len(data_payload(record.message))


def test_memory_is_given_back_once_per_drained_large_backlog():
    watch = DrainWatch()
    small = [watch.drained(n) for n in (10, LARGE_BACKLOG - 1, 0)]
    assert small == [False, False, False]  # a small backlog is not worth it
    grown = [watch.drained(n) for n in (LARGE_BACKLOG, 2 * LARGE_BACKLOG, LARGE_BACKLOG)]
    assert grown == [False, False, False]  # not down to a quarter yet
    assert watch.drained(2 * LARGE_BACKLOG // DRAINED_SHARE) is True
    assert watch.drained(0) is False  # once per backlog
    # This platform's C library (glibc) can; elsewhere it is a no-op saying so.
    assert give_back() is True
