"""Queue control on real spooled messages: a real control plane, a real data plane
(two workers) delivering to a real sink whose rules defer, and QueueService over
gRPC, then `poolmta queue` and `poolmta top --once` as a user runs them.

Every message here is deferred on its first attempt (the sink's rules) and would
wait an hour for its retry (`--retry-schedule 1h`): what happens after that is
the operator's doing.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import subprocess
import sys

import grpc

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from dataplane import spool
from tests.control_support import expect_error, sending_account
from tests.dataplane_support import queued_id

SOURCE_IP = "127.0.0.2"
# later*, again*: deferred once, then accepted; stuck*, gone*: deferred for ever.
SINK_RULES = ("later*=451x1:4.7.1 greylisted, try later", "again*=451x1", "stuck*=451", "gone*=451")


async def _until(probe, what: str, timeout: float = 30.0):
    """Await `probe()` until it returns something truthy; that value."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := await probe()):
        assert asyncio.get_running_loop().time() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.1)
    return value


def _send(port: int, username: str, secret: str, rcpt: str) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.login(username, secret)
        smtp.mail("sender@acme.example")
        smtp.rcpt(rcpt)
        code, reply = smtp.data(f"From: sender@acme.example\r\nTo: {rcpt}\r\nSubject: q\r\n\r\nhello\r\n".encode())
        assert code == 250, reply
        return queued_id(reply)


def _poolmta(control_plane, token: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "control.cli", "--grpc", control_plane.grpc_address,
                           "--token", token, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def _messages(acme, **flt) -> dict[str, pb.QueuedMessage]:
    reply = await acme.queue.ListQueuedMessages(pb.ListQueuedMessagesRequest(filter=pb.QueueFilter(**flt)))
    return {m.message_id: m for m in reply.messages}


async def test_queue_control_acts_on_real_spooled_messages(
        control_plane, admin, server, make_account, redis_url, start_dataplane, start_sink):
    acme, token, pool, bridge = await sending_account(admin, make_account, server, label="acme-promo",
                                                       address=SOURCE_IP)
    other, _ = await make_account("globex", pb.PRO)
    sink = await asyncio.to_thread(start_sink, *(a for rule in SINK_RULES for a in ("--rule", rule)))
    plane = await asyncio.to_thread(
        start_dataplane, redis_url, server.server_id, workers=2, delivery=True,
        args=("--route", f"*={sink.address}", "--retry-schedule", "1h"),
    )
    creds = (plane.port, bridge.bridge.username, bridge.secret)
    later, again, stuck, gone = [
        await asyncio.to_thread(_send, *creds, f"{name}@{domain}")
        for name, domain in (("later", "example.net"), ("again", "example.org"), ("stuck", "example.net"),
                             ("gone", "example.com"))
    ]

    async def all_deferred():
        found = await _messages(acme)
        return found if len(found) == 4 and all(m.last_error for m in found.values()) else None

    found = await _until(all_deferred, "every message deferred once")
    assert "greylisted" in found[later].last_error and found[later].attempts == 1

    # list: by pool, by domain, and narrowed by a filter
    by_pool = await acme.queue.ListQueues(pb.ListQueuesRequest(group_by=pb.QUEUE_BY_POOL))
    assert [(q.key, q.depth, q.held) for q in by_pool.queues] == [("acme-promo", 4, 0)]
    assert by_pool.queues[0].HasField("oldest_time") and by_pool.queues[0].last_error.startswith("451")
    by_domain = await acme.queue.ListQueues(pb.ListQueuesRequest(group_by=pb.QUEUE_BY_DOMAIN))
    assert {q.key: q.depth for q in by_domain.queues} == {"example.net": 2, "example.org": 1, "example.com": 1}
    by_ip = await acme.queue.ListQueues(pb.ListQueuesRequest(group_by=pb.QUEUE_BY_IP))
    assert [(q.key, q.depth) for q in by_ip.queues] == [(SOURCE_IP, 4)]
    assert set(await _messages(acme, domain="example.net")) == {later, stuck}

    # another account sees nothing and reaches nothing
    assert not (await other.queue.ListQueues(pb.ListQueuesRequest())).queues
    await expect_error(other.queue.Hold(pb.QueueActionRequest(filter=pb.QueueFilter(message_ids=[later]))),
                       grpc.StatusCode.NOT_FOUND, later)
    await expect_error(acme.queue.Hold(pb.QueueActionRequest()), grpc.StatusCode.INVALID_ARGUMENT, "filter")
    await expect_error(acme.queue.Hold(pb.QueueActionRequest(filter=pb.QueueFilter(message_ids=["../x"]))),
                       grpc.StatusCode.INVALID_ARGUMENT, "not a message id")

    # hold: durable in the spool record, and a retry passes it by
    held = await acme.queue.Hold(pb.QueueActionRequest(filter=pb.QueueFilter(message_ids=[later])))
    assert list(held.message_ids) == [later]
    assert plane.record(later).held
    retried = await acme.queue.RetryNow(pb.QueueActionRequest(filter=pb.QueueFilter(domain="example.net")))
    assert list(retried.message_ids) == [stuck] and list(retried.skipped_ids) == [later]
    # the retried one is tried again (deferred again: stuck* always is) while the held one is not
    await _until(lambda: _attempted(acme, stuck, 2), "the retried message's second attempt")
    assert (await _messages(acme))[later].attempts == 1 and (await _messages(acme))[later].held

    # retry now delivers a deferred message before its schedule
    await acme.queue.RetryNow(pb.QueueActionRequest(filter=pb.QueueFilter(message_ids=[again])))
    await _until(lambda: _gone(acme, again), "the retried message delivered")

    # release delivers the held one
    released = await acme.queue.Release(pb.QueueActionRequest(filter=pb.QueueFilter(message_ids=[later])))
    assert list(released.message_ids) == [later]
    await _until(lambda: _gone(acme, later), "the released message delivered")
    accepted = {r for entry in sink.log() for r in entry["rcpts"]}
    assert {"later@example.net", "again@example.org"} <= accepted

    # bounce: a bounced outcome, counted, and a DSN to the sender (the Bridge's switch is on)
    bounced = await acme.queue.Bounce(pb.QueueActionRequest(filter=pb.QueueFilter(message_ids=[stuck])))
    assert list(bounced.message_ids) == [stuck]
    await _until(lambda: _gone(acme, stuck), "the bounced message out of the queue")

    async def stats():
        figures = await acme.stats.GetPoolStats(pb.GetPoolStatsRequest(smtp_id=pool.smtp_id))
        return figures if figures.bounced == 1 and figures.delivered == 2 else None

    figures = await _until(stats, "the bounce and the deliveries counted")
    assert figures.sent == 4
    await _until(lambda: _dsn_arrived(sink), "the DSN to the sender")

    # delete: gone from the spool, nothing counted
    deleted = await acme.queue.Delete(pb.QueueActionRequest(filter=pb.QueueFilter(domain="example.com")))
    assert list(deleted.message_ids) == [gone]
    assert not await _messages(acme)
    assert gone not in spool.queued_ids(plane.spool_dir)
    await expect_error(acme.queue.Delete(pb.QueueActionRequest(filter=pb.QueueFilter(message_ids=[gone]))),
                       grpc.StatusCode.NOT_FOUND, gone)
    figures = await acme.stats.GetPoolStats(pb.GetPoolStatsRequest(smtp_id=pool.smtp_id))
    assert (figures.sent, figures.delivered, figures.bounced) == (4, 2, 1)

    # the CLI, as a user runs it
    empty = await asyncio.to_thread(_poolmta, control_plane, token, "queue", "list")
    assert "Nothing queued" in empty
    held_id = await asyncio.to_thread(_send, *creds, "stuck-2@example.net")
    await _until(lambda: _attempted(acme, held_id, 1), "the new message's first attempt")
    out = await asyncio.to_thread(_poolmta, control_plane, token, "queue", "hold", "--pool", "acme-promo")
    assert held_id in out and "1 message(s) held" in out
    listed = json.loads(await asyncio.to_thread(_poolmta, control_plane, token, "--json", "queue", "list",
                                                "--by", "domain"))
    assert listed["queues"][0]["key"] == "example.net" and listed["queues"][0]["held"] == "1"
    table = await asyncio.to_thread(_poolmta, control_plane, token, "queue", "messages")
    assert held_id in table and "stuck-2@example.net" in table
    frame = await asyncio.to_thread(_poolmta, control_plane, token, "top", "--once")
    assert "acme-promo" in frame and SOURCE_IP in frame and "QUEUED" in frame
    figures_json = json.loads(await asyncio.to_thread(_poolmta, control_plane, token, "--json", "top", "--once"))
    (line,) = figures_json["pools"]
    assert line["name"] == "acme-promo" and line["queued"] == 1 and line["sent"] > 0 and line["bounced"] > 0


async def _attempted(acme, message_id: str, attempts: int) -> bool:
    found = (await _messages(acme)).get(message_id)
    return found is not None and found.attempts >= attempts


async def _gone(acme, message_id: str) -> bool:
    return message_id not in await _messages(acme)


async def _dsn_arrived(sink) -> bool:
    return any(entry["mail_from"] in ("", "<>") and "sender@acme.example" in entry["rcpts"] for entry in sink.log())
