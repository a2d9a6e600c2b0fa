"""poolmta on a real 3-master Redis Cluster (issue 14, "Redis Cluster"): the control
plane and the data plane given a `redis+cluster://` URL, every key on the node owning
its tag's slot, every script on one slot.

* the snapshot notice reaches a subscriber whatever node published it;
* end to end: provision through the API, a data plane of two workers acks the
  snapshot, mail sent over SMTP is delivered to a sink from the pool's IP, the
  stats equal what the sink received, an IP move goes to DONE, a suppressed
  recipient is refused and counted;
* `poolmta up --redis-cluster` runs both planes on the cluster, no embedded Redis;
* the inbound listener's scripts: a report counted, suppressed and kept once;
* the failed-AUTH throttle and the connection caps hold across two workers: the
  scenarios of tests/test_auth_throttle_workers.py and tests/test_smtp_bounds_bridge.py,
  collected here again with `redis_url` and `redis_client` naming the cluster.

Every test here starts a cluster (`redis_cluster`), so every one is `slow`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import smtplib
import time
from collections.abc import Iterator

import pytest
import redis

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.contract import rediskeys
from control.contract.acks import parse_ack
from control.contract.redis_client import redis_client as make_client
from control.contract.redis_client import subscribe, sync_redis_client
from dataplane.inbound.accounting import Accounting
from dataplane.inbound.attribution import Target
from tests.cli.cli_support import exit_of_up, start_up, stop_process
from tests.control_support import current_snapshot
from tests.dataplane_support import message, send_all, sink_outcomes
from tests.dns_support import DnsStub
from tests.redis_cluster_support import RedisTestCluster
from tests.support import wait_until

# The same scenarios, run against the cluster by the fixtures below.
from tests.test_auth_throttle_workers import (  # noqa: F401
    test_failures_over_new_connections_on_two_workers_get_421_at_exactly_the_limit as test_cluster_auth_throttle,
)
from tests.test_smtp_bounds_bridge import (  # noqa: F401
    test_caps_per_address_and_per_server_hold_across_two_workers as test_cluster_connection_caps,
)

IP = "127.0.0.31"
DESTINATION = "dest.test"
MESSAGES = 12


@pytest.fixture
def redis_url(redis_cluster: RedisTestCluster) -> str:
    """The cluster's URL, in place of the session's single Redis."""
    return redis_cluster.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.RedisCluster]:
    """A blocking cluster client; closed after the test."""
    client = sync_redis_client(redis_url)
    try:
        yield client
    finally:
        client.close()


def test_a_notice_published_on_any_node_reaches_the_subscriber(redis_cluster):
    channel = rediskeys.snapshot_channel(5)
    owner = redis_cluster.node_of(channel)
    other = next(port for port in redis_cluster.ports if port != owner)

    async def scenario() -> dict:
        client = make_client(redis_cluster.url)
        pubsub = await subscribe(client, channel)
        try:
            assert pubsub.connection.port == owner
            with contextlib.closing(redis.Redis(port=other)) as elsewhere:
                elsewhere.publish(channel, "7")
            message = None
            for _ in range(50):
                message = await pubsub.get_message(timeout=0.2)
                if message is not None:
                    return message
            raise AssertionError("no notice within 10 s")
        finally:
            await pubsub.aclose()
            await client.aclose()

    assert asyncio.run(scenario())["data"] == b"7"


def _served(client, server_id: int) -> bool:
    """Every live worker of the server serves the newest published version."""
    current = int(client.get(rediskeys.snapshot_current_key(server_id)) or 0)
    now_ms = int(time.time() * 1000)
    acks = [parse_ack(field.decode(), value.decode())
            for field, value in client.hgetall(rediskeys.worker_acks_key(server_id)).items()]
    live = [ack for ack in acks if ack and now_ms - ack.heartbeat_ms <= rediskeys.WORKER_HEARTBEAT_TTL_MS]
    return len(live) == 2 and all(ack.version >= current > 0 for ack in live)


async def _follow(client, operation_id: str) -> list:
    return [op async for op in client.ips.WatchOperation(pb.WatchOperationRequest(operation_id=operation_id))]


async def test_send_deliver_count_move_and_suppress_on_a_cluster(acme, server, redis_url, redis_client,
                                                                 redis_cluster, start_dataplane, start_sink,
                                                                 tmp_path):
    sid = server.server_id
    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="main", server_id=sid))
    other = await acme.pools.CreatePool(pb.CreatePoolRequest(label="other", server_id=sid))
    await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address=IP, smtp_id=pool.smtp_id, server_id=sid))
    made = await acme.bridges.CreateBridge(pb.CreateBridgeRequest(name="app", smtp_id=pool.smtp_id))
    username, secret = made.bridge.username, made.secret
    # Routing, counters and connection counts of one server live on different nodes.
    assert len({redis_cluster.node_of(rediskeys.snapshot_current_key(sid)),
                redis_cluster.node_of(rediskeys.pool_stats_key(sid, pool.smtp_id)),
                redis_cluster.node_of(rediskeys.connection_counts_key(sid, "bridge", 0))}) > 1

    dns = DnsStub({(DESTINATION, "A"): ["127.0.0.1"]})
    try:
        sink = await asyncio.to_thread(start_sink, "--store", str(tmp_path / "received"))
        plane = await asyncio.to_thread(
            start_dataplane, redis_url, sid, workers=2, delivery=True, data_dir=tmp_path / "dp",
            args=["--dns-server", f"127.0.0.1:{dns.port}", "--mx-port", str(sink.port), "--retry-schedule", "1h"])
        assert await asyncio.to_thread(wait_until, lambda: _served(redis_client, sid), 30), plane.log()

        plan = [(f"m{n}", [f"r{n}@{DESTINATION}"], message(n)) for n in range(MESSAGES)]
        accepted = await asyncio.to_thread(send_all, plane.port, username, secret, plan, sessions=3)
        assert len(accepted) == MESSAGES
        counts = await asyncio.to_thread(sink.wait_counts, lambda c: c.get("accepted_rcpts", 0) >= MESSAGES,
                                         f"{MESSAGES} delivered recipients")
        per_peer, _ = sink_outcomes(sink.log())
        assert set(per_peer) == {IP}, per_peer

        async def counted(reached) -> pb.PoolStats:
            for _ in range(150):
                stats = await acme.stats.GetPoolStats(pb.GetPoolStatsRequest(smtp_id=pool.smtp_id))
                if reached(stats):
                    return stats
                await asyncio.sleep(0.2)
            raise AssertionError(f"the pool's stats never got there (sink: {counts}): {stats}")

        stats = await counted(lambda s: s.delivered >= counts["accepted_rcpts"])
        assert (stats.sent, stats.delivered, stats.bounced) == (MESSAGES, counts["accepted_rcpts"], 0)

        # A suppressed recipient is refused at RCPT and counted for the pool.
        await acme.suppressions.AddSuppression(pb.AddSuppressionRequest(address=f"gone@{DESTINATION}"))
        with smtplib.SMTP("127.0.0.1", plane.port, timeout=30) as client:
            client.login(username, secret)
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                client.sendmail("sender@example.com", [f"gone@{DESTINATION}"], message(99))
        assert refused.value.recipients[f"gone@{DESTINATION}"][0] == 550
        assert (await counted(lambda s: s.suppressed >= 1)).suppressed == 1

        # An IP move is DONE once both workers serve the version that has it.
        op = await acme.ips.AssignPool(pb.AssignPoolRequest(address=IP, smtp_id=other.smtp_id))
        states = await _follow(acme, op.operation_id)
        assert states[-1].state == pb.DONE, states[-1]
        assert [ip.address for ip in current_snapshot(redis_url, sid).pool(other.smtp_id).ips] == [IP]
        assert await asyncio.to_thread(wait_until, lambda: _served(redis_client, sid), 30), plane.log()
    finally:
        dns.close()


async def test_a_report_is_counted_suppressed_and_kept_on_one_slot_per_script(redis_url, redis_client):
    """The inbound listener's scripts on the cluster: a complaint naming no message
    (its event would go to the message's own `{msg:ID}` slot) counts once and
    suppresses once, and an unattributed report is kept once."""
    client = make_client(redis_url)
    accounting = Accounting(client, server_id=3, event_ttl=3600)
    now_ms = int(time.time() * 1000)
    complaint = Target(kind="complaint", source="arf", via="headers", subject="complaint:h:f1:a@example.net",
                       message_id="", rcpt="a@example.net", rcpt_index=0, user_id=9, bridge_id=1, smtp_id=7,
                       pool="p", ip="192.0.2.1", counted="", at_ms=now_ms, attempt=0, reply="")
    try:
        assert await accounting.apply([complaint], now_ms) == [True]
        assert await accounting.apply([complaint], now_ms) == [False]
        assert await accounting.keep_unattributed(b"report", reason="why", kind="unknown", peer="192.0.2.9",
                                                  mail_from="", rcpt_tos=["fbl@x"], subject="s", now_ms=now_ms)
        assert not await accounting.keep_unattributed(b"report", reason="why", kind="unknown", peer="192.0.2.9",
                                                      mail_from="", rcpt_tos=["fbl@x"], subject="s", now_ms=now_ms)
    finally:
        await client.aclose()
    assert int(redis_client.hget(rediskeys.ip_stats_key(3, "192.0.2.1"), "complaints")) == 1
    assert redis_client.hlen(rediskeys.suppression_key(9)) == 1
    assert int(redis_client.hget(rediskeys.inbound_counts_key(3), "unattributed")) == 1


def test_up_with_redis_cluster_runs_both_planes_on_the_cluster(redis_cluster, redis_client, tmp_path):
    """`poolmta up --redis-cluster NODES`: no embedded Redis; the control plane and the
    data plane it starts both use the cluster, and stop cleanly."""
    proc, lines, errors = start_up(tmp_path / "up", "--redis-cluster", redis_cluster.nodes,
                                   "--smtp-listen", "127.0.0.1:0", "--workers", "1")
    try:
        assert lines.until(r"Redis (\S+)").group(1) == redis_cluster.url
        ready = lines.until(r"dataplane ready server_id=(\d+) .*", timeout=60)
        server_id = int(ready.group(1))
        assert wait_until(lambda: redis_client.hlen(rediskeys.worker_acks_key(server_id)) == 1, 30)
        proc.send_signal(signal.SIGTERM)
        assert exit_of_up(proc, lines, errors)[0] == 0
    finally:
        stop_process(proc)
    assert not (tmp_path / "up" / "redis").exists()
