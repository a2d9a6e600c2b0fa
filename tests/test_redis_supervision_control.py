"""A control plane whose Redis dies: health NOT_SERVING, Redis RPCs UNAVAILABLE with
a clear message, SQLite RPCs still working; after the supervisor's restart, all of
it recovers without an operator (issue 11 item 5)."""

from __future__ import annotations

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.contract import rediskeys
from control.redis_supervisor import RedisSupervisor
from control.rpc import REDIS_UNAVAILABLE_MESSAGE
from control.server import ControlPlane
from tests.control_support import Client, current_snapshot, expect_error, start_config
from tests.redis_support import aof_path, crash_into_a_loop, replace_file
from tests.support import eventually

pytestmark = pytest.mark.slow

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def redis_url(supervised: RedisSupervisor) -> str:
    """The control plane of these tests (tests.control_support) runs on the supervised Redis."""
    return supervised.url


async def health_of(channel: grpc.aio.Channel, service: str = "") -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return reply.status


async def all_health(channel: grpc.aio.Channel) -> set[int]:
    return {await health_of(channel, name) for name in ("", "poolmta.v1.StatsService", "poolmta.v1.PoolService")}


async def test_a_redis_outage_is_reported_and_everything_recovers_after_the_restart(
        supervised, channel, acme, server):
    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="before", server_id=server.server_id))
    client = redis.Redis.from_url(supervised.url)
    try:
        client.hincrby(rediskeys.pool_stats_key(server.server_id, pool.smtp_id), "sent", 42)
    finally:
        client.close()
    assert await all_health(channel) == {SERVING}

    # Redis dies and, its AOF unreadable, cannot come back for now.
    good = crash_into_a_loop(supervised)
    await health_becomes(channel, NOT_SERVING)

    await expect_error(acme.stats.GetPoolStats(pb.GetPoolStatsRequest(smtp_id=pool.smtp_id)),
                       grpc.StatusCode.UNAVAILABLE, REDIS_UNAVAILABLE_MESSAGE)
    # SQLite-only RPCs keep working; the change is published once Redis is back.
    during = await acme.pools.CreatePool(pb.CreatePoolRequest(label="during", server_id=server.server_id))
    assert {p.smtp_id for p in (await acme.pools.ListPools(pb.ListPoolsRequest())).pools} >= {
        pool.smtp_id, during.smtp_id}

    replace_file(aof_path(supervised.server), good)
    await health_becomes(channel, SERVING)
    assert supervised.restarts == 1
    stats = await acme.stats.GetPoolStats(pb.GetPoolStatsRequest(smtp_id=pool.smtp_id))
    assert stats.sent == 42  # written before the kill, reloaded from the AOF

    async def published() -> bool:
        snap = current_snapshot(supervised.url, server.server_id)
        return snap is not None and during.smtp_id in {p.smtp_id for p in snap.pools}

    assert await eventually(published, timeout=20)


async def test_health_follows_an_external_redis_it_does_not_restart(tmp_path, fresh_redis):
    """`fresh_redis` stands for a Redis given with --redis-url: nobody restarts it,
    and health still says whether it answers."""
    cp = ControlPlane(start_config(tmp_path / "control", fresh_redis.url, health_check_interval=0.1))
    await cp.start()
    try:
        async with grpc.aio.insecure_channel(cp.grpc_address) as channel:
            admin = Client(channel, cp.admin_token_path.read_text().strip())
            assert await all_health(channel) == {SERVING}
            fresh_redis.kill()
            await health_becomes(channel, NOT_SERVING)
            registered = await admin.servers.RegisterMtaServer(pb.RegisterMtaServerRequest(
                hostname="mta1.example.net", zone="US-1"))  # SQLite alone: works
            await expect_error(admin.servers.GetRoutingStatus(pb.GetRoutingStatusRequest(
                server_id=registered.server_id)), grpc.StatusCode.UNAVAILABLE, REDIS_UNAVAILABLE_MESSAGE)
            fresh_redis.start()
            await health_becomes(channel, SERVING)
    finally:
        await cp.stop(0)


async def health_becomes(channel: grpc.aio.Channel, status: int, timeout: float = 20.0) -> None:
    """Wait until the overall health and each service's say `status`."""
    async def reached() -> bool:
        return await all_health(channel) == {status}

    await eventually(reached, timeout=timeout)
