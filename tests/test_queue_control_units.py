"""Queue control without processes: the contract's encoding, the spool's hold flag,
and the round trip through the real Redis between the control plane's
QueueControl and in-process workers (the data plane's QueueControl over a real
DeliveryQueue and Spool): merging, paging, scoping and a worker that never answers.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import grpc
import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.contract import acks, rediskeys
from control.contract.queue_commands import (
    ACTIONS,
    QUERIES,
    MessageInfo,
    QueueCommand,
    QueueCommandError,
    QueueFilter,
    QueueResult,
    QueueRow,
    new_command,
)
from control.errors import Unavailable
from control.queue_control import QueueControl as ControlSide
from control.registry import Registry
from control.store import Store
from dataplane import spool
from dataplane.config import DeliveryConfig
from dataplane.delivery.queue import DeliveryQueue
from dataplane.delivery.queue_control import QueueControl as WorkerSide
from tests.control_support import expect_error

text = st.text(max_size=20)
filters = st.builds(QueueFilter, user_id=st.integers(0, 2**40), message_ids=st.tuples(text, text),
                    smtp_id=st.integers(0, 2**40), ip=text, domain=text)
rows = st.builds(QueueRow, smtp_id=st.integers(0, 2**40), ip=text, domain=text, depth=st.integers(0, 10**6),
                 held=st.integers(0, 10**6), oldest_ms=st.integers(0, 2**45), last_error=text,
                 last_error_ms=st.integers(0, 2**45))
infos = st.builds(MessageInfo, message_id=text, received_ms=st.integers(0, 2**45), smtp_id=st.integers(0, 2**40),
                  ip=text, mail_from=text, waiting=st.tuples(text), attempts=st.integers(0, 99),
                  next_attempt_ms=st.integers(0, 2**45), held=st.booleans(), last_error=text)


@given(st.sampled_from(ACTIONS + QUERIES), filters)
def test_a_command_reads_back_as_written(action, flt):
    command = new_command(action, flt)
    assert QueueCommand.decode(command.encode()) == command


@given(text, st.tuples(text), st.lists(rows, max_size=3), st.lists(infos, max_size=3), text)
def test_a_result_reads_back_as_written(worker_id, matched, row_list, info_list, error):
    result = QueueResult(worker_id, matched=matched, skipped=(), rows=tuple(row_list), messages=tuple(info_list),
                         error=error)
    assert QueueResult.decode(result.encode()) == result


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x80", new_command("retry", QueueFilter(1)).encode()[:-3]])
def test_malformed_commands_and_results_are_refused(data):
    with pytest.raises(QueueCommandError):
        QueueCommand.decode(data)
    with pytest.raises(QueueCommandError):
        QueueResult.decode(data)


def test_an_unknown_action_is_refused():
    with pytest.raises(QueueCommandError, match="unknown queue action"):
        QueueCommand.decode(QueueCommand("x", "explode", QueueFilter(1)).encode())


def _record(message_id: str, *, user_id: int, smtp_id: int, received_ms: int, rcpt: str) -> spool.SpoolRecord:
    return spool.SpoolRecord(
        id=message_id, received_ms=received_ms, server_id=1, snapshot_version=1, worker="h:1:0",
        client_address="127.0.0.1", client_helo="client.example", tls=False, auth="auth", bridge_id=1,
        bridge_username="br-x", user_id=user_id, smtp_id=smtp_id, pool="p", ip="192.0.2.1", ip_hostname="out.example",
        feed_type="", zone="US-1", mail_from="s@example.com", rcpt_tos=(rcpt,), mail_options=(), smtputf8=False,
        message=b"Subject: x\r\n\r\nbody\r\n",
    )


async def test_the_hold_flag_is_durable_and_keeps_the_attempts(tmp_path):
    store = spool.Spool(tmp_path)
    store.open()
    try:
        record = _record(store.new_id(), user_id=1, smtp_id=1, received_ms=1, rcpt="a@example.net")
        await store.store(record)
        attempt = {"at_ms": 5, "rcpt": "a@example.net", "outcome": "deferred", "code": 451, "text": "later",
                   "ip": "192.0.2.1", "mx": "", "attempt": 1}
        await store.rewrite_attempts(record.id, (attempt,))
        await store.rewrite_held(record.id, True)
        assert await store.read(record.id) == replace(record, attempts=(attempt,), held=True)
        await store.rewrite_held(record.id, False)
        assert not (await store.read(record.id)).held
    finally:
        store.close()


class _Worker:
    """A data-plane worker's queue control over a real spool and delivery queue (no
    scheduler runs: nothing is delivered), with its ack in Redis so the control plane
    waits for it."""

    def __init__(self, tmp_path, redis_url: str, index: int) -> None:
        self.redis = aioredis.Redis.from_url(redis_url)
        self.spool = spool.Spool(tmp_path / f"w{index}", owner=0, owners=1)
        self.spool.open()
        self.queue = DeliveryQueue(DeliveryConfig(retry_schedule=(3600.0,)), self.spool, owners=1, index=0,
                                   start_job=lambda job: None, settle=lambda message: None)
        self.worker_id = f"test:{index}"
        self.control = WorkerSide(self.redis, server_id=1, worker_id=self.worker_id, queue=self.queue, outcomes=None)
        self.task: asyncio.Task | None = None

    async def start(self, *records: spool.SpoolRecord) -> None:
        for record in records:
            await self.spool.store(record)
            self.queue.submit(record, now=time.time())
        await self.redis.hset(rediskeys.worker_acks_key(1), self.worker_id,
                              acks.format_ack(1, int(time.time() * 1000) + 60_000))
        self.task = asyncio.create_task(self.control.run())
        await asyncio.sleep(0.2)  # it has read where the stream ends

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.spool.close()
        await self.redis.aclose()


async def test_listings_merge_every_worker_page_by_page_and_stay_in_the_account(
        control_plane, server, make_account, tmp_path, redis_url):
    acme, account = await make_account("acme", pb.PRO)
    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=server.server_id))
    other, other_account = await make_account("globex", pb.PRO)
    workers = [_Worker(tmp_path, redis_url, i) for i in range(2)]
    ids = []
    try:
        for index, worker in enumerate(workers):
            records = [_record(worker.spool.new_id(), user_id=account.user_id, smtp_id=pool.smtp_id,
                               received_ms=1000 * n + index, rcpt=f"r{n}@{'example.net' if n % 2 else 'example.org'}")
                       for n in range(3)]
            ids += [r.id for r in records]
            await worker.start(*records, _record(worker.spool.new_id() + "f", user_id=other_account.user_id,
                                                 smtp_id=99, received_ms=5, rcpt="x@example.com"))
        seen, token = [], ""
        while True:
            page = await acme.queue.ListQueuedMessages(pb.ListQueuedMessagesRequest(page_size=4, page_token=token))
            seen += [m.message_id for m in page.messages]
            if not (token := page.next_page_token):
                break
        assert sorted(seen) == sorted(ids) and len(seen) == 6  # every message once, oldest first
        assert [m.received_time.ToMilliseconds() for m in (await acme.queue.ListQueuedMessages(
            pb.ListQueuedMessagesRequest())).messages] == [0, 1, 1000, 1001, 2000, 2001]
        by_domain = await acme.queue.ListQueues(pb.ListQueuesRequest(group_by=pb.QUEUE_BY_DOMAIN))
        assert {q.key: q.depth for q in by_domain.queues} == {"example.org": 4, "example.net": 2}
        assert [q.key for q in (await other.queue.ListQueues(pb.ListQueuesRequest())).queues] == ["shared pool"]
        await expect_error(acme.queue.ListQueuedMessages(pb.ListQueuedMessagesRequest(page_token="nope")),
                           grpc.StatusCode.INVALID_ARGUMENT, "page token")
        await expect_error(acme.queue.ListQueues(pb.ListQueuesRequest(filter=pb.QueueFilter(smtp_id=99))),
                           grpc.StatusCode.NOT_FOUND)
        # a hold through the stream: durable in the worker's spool record
        held = await acme.queue.Hold(pb.QueueActionRequest(filter=pb.QueueFilter(message_ids=[ids[0]])))
        assert list(held.message_ids) == [ids[0]] and (await workers[0].spool.read(ids[0])).held
    finally:
        for worker in workers:
            await worker.stop()


async def test_a_worker_that_does_not_answer_makes_the_request_unavailable(tmp_path, redis_client, redis_url):
    store = Store.open(tmp_path / "db.sqlite")
    registry = Registry(store)
    server = registry.register_server("mta1.example.net", "US-1")
    account, _ = registry.create_account("acme", "PRO")
    redis_client.hset(rediskeys.worker_acks_key(server.server_id), "silent:1",
                      acks.format_ack(1, int(time.time() * 1000) + 60_000))
    redis = aioredis.Redis.from_url(redis_url)
    try:
        with pytest.raises(Unavailable, match="1 of 1 data-plane worker"):
            await ControlSide(redis, registry, timeout=0.3).act(account, "retry", QueueFilter(0, domain="example.net"))
    finally:
        await redis.aclose()
        store.close()


async def test_a_held_record_read_back_after_a_restart_starts_no_delivery(tmp_path):
    store = spool.Spool(tmp_path)
    store.open()
    started = []
    queue = DeliveryQueue(DeliveryConfig(), store, owners=1, index=0, start_job=started.append,
                          settle=lambda message: None)
    scheduler = asyncio.create_task(queue.run_scheduler())
    try:
        held = replace(_record(store.new_id(), user_id=1, smtp_id=1, received_ms=1, rcpt="a@example.net"), held=True)
        free = _record(store.new_id(), user_id=1, smtp_id=1, received_ms=2, rcpt="b@example.net")
        for record in (held, free):  # as the start-up scan hands them over, both due now
            queue.submit(record, now=time.time())
        while not started:
            await asyncio.sleep(0.01)
        # one pass of the scheduler starts everything due: the held one was passed by
        assert [job.message.id for job in started] == [free.id]
        (message,) = [m for m in queue.messages() if m.id == held.id]
        message.held = False
        queue.reschedule(message, time.time())
        while len(started) < 2:
            await asyncio.sleep(0.01)
        assert started[1].message.id == held.id
    finally:
        scheduler.cancel()
        await asyncio.gather(scheduler, return_exceptions=True)
        store.close()
