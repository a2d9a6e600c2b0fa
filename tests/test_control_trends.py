"""StatsService trends: GetPoolTrend and GetIpTrend read the minute and hour buckets
a real stats batcher wrote into Redis, under the pool's (or IP's) MTA server tag;
the points add up to the totals; bad requests and other accounts' objects are refused."""

from __future__ import annotations

import time

import grpc
import pytest
import redis.asyncio as aioredis

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.contract import rediskeys
from dataplane.stats_batcher import StatsBatcher
from tests.control_support import expect_error

FIELDS = ("sent", "delivered", "bounced", "deferred", "complaints")


def _figures(message) -> dict:
    return {f: getattr(message, f) for f in FIELDS}


def _summed(points) -> dict:
    return {f: sum(getattr(p, f) for p in points) for f in FIELDS}


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def second_server(admin) -> pb.MtaServer:
    return await admin.servers.RegisterMtaServer(pb.RegisterMtaServerRequest(hostname="mta2.example.net", zone="EU-1"))


async def _pool(client, server, label: str, addresses) -> pb.Pool:
    pool = await client.pools.CreatePool(pb.CreatePoolRequest(label=label, server_id=server.server_id))
    for address in addresses:
        await client.ips.ProvisionIp(pb.ProvisionIpRequest(address=address, smtp_id=pool.smtp_id))
    return pool


async def _count(redis_url: str, server_id: int, counts) -> None:
    """Counts [(seconds ago, field, smtp_id, address, n)], written by a stats batcher."""
    client = aioredis.Redis.from_url(redis_url)
    now = time.time()
    clock = Clock(now)
    batcher = StatsBatcher(client, server_id=server_id, clock=clock)
    try:
        for ago, field, smtp_id, address, n in counts:
            clock.now = now - ago
            batcher.count(field, smtp_id, address, n)
        clock.now = now
        assert await batcher.flush() is True
    finally:
        await client.aclose()


async def test_minute_and_hour_trends_add_up_to_the_lifetime_totals(acme, server, second_server, redis_url):
    pool = await _pool(acme, second_server, "promo", ["127.0.0.2", "127.0.0.3"])
    sid = pool.smtp_id
    await _count(redis_url, second_server.server_id, [
        (47 * 3600, "sent", sid, "127.0.0.2", 10), (47 * 3600, "delivered", sid, "127.0.0.2", 9),
        (47 * 3600, "bounced", sid, "127.0.0.2", 1),
        (3 * 3600, "sent", sid, "127.0.0.3", 5), (3 * 3600, "deferred", sid, "127.0.0.3", 2),
        (90, "delivered", sid, "127.0.0.3", 5), (90, "complaints", sid, "127.0.0.3", 1),
        (0, "sent", sid, "127.0.0.2", 4), (0, "bounced", sid, "127.0.0.2", 4),
    ])
    stats = await acme.stats.GetPoolStats(pb.GetPoolStatsRequest(smtp_id=sid))
    minutes = await acme.stats.GetPoolTrend(pb.GetPoolTrendRequest(smtp_id=sid, resolution=pb.MINUTE, points=2880))
    hours = await acme.stats.GetPoolTrend(pb.GetPoolTrendRequest(smtp_id=sid, resolution=pb.HOUR, points=720))
    # PoolStats has no complaints field; its IP rows have.
    lifetime = {**{f: getattr(stats, f) for f in FIELDS if f != "complaints"},
                "complaints": sum(ip.complaints for ip in stats.ips)}
    assert _summed(minutes.points) == _figures(minutes) == lifetime
    assert _summed(hours.points) == _figures(hours) == lifetime
    assert (minutes.sent, minutes.delivered, minutes.bounced) == (19, 14, 5)
    assert abs(minutes.delivery_rate - 14 / 19) < 1e-9
    assert (minutes.smtp_id, minutes.pool_label, minutes.address, minutes.resolution) == (sid, "promo", "", pb.MINUTE)

    for address in ("127.0.0.2", "127.0.0.3"):
        ip_stats = await acme.stats.GetIpStats(pb.GetIpStatsRequest(address=address))
        for resolution, points in ((pb.MINUTE, 2880), (pb.HOUR, 720)):
            ip_trend = await acme.stats.GetIpTrend(
                pb.GetIpTrendRequest(address=address, resolution=resolution, points=points))
            share = await acme.stats.GetPoolTrend(
                pb.GetPoolTrendRequest(smtp_id=sid, resolution=resolution, points=points, address=address))
            assert _summed(ip_trend.points) == _summed(share.points) == _figures(ip_stats), (address, resolution)
            assert (ip_trend.smtp_id, ip_trend.address, share.address) == (0, address, address)

    # The last hour of minutes: only what was counted in it.
    recent = await acme.stats.GetPoolTrend(pb.GetPoolTrendRequest(smtp_id=sid, resolution=pb.MINUTE))
    assert len(recent.points) == 60
    assert (recent.sent, recent.delivered, recent.bounced, recent.complaints) == (4, 5, 4, 1)


async def test_points_are_consecutive_buckets_ending_now_with_zeros_where_nothing_happened(acme, server):
    pool = await _pool(acme, server, "quiet", ["127.0.0.4"])
    before = time.time()
    trend = await acme.stats.GetPoolTrend(pb.GetPoolTrendRequest(smtp_id=pool.smtp_id, resolution=pb.HOUR, points=5))
    after = time.time()
    starts = [p.time.seconds for p in trend.points]
    assert len(starts) == 5 and all(b - a == 3600 for a, b in zip(starts, starts[1:]))
    assert starts[-1] in {rediskeys.HOUR.start(before), rediskeys.HOUR.start(after)}
    assert all(_figures(p) == dict.fromkeys(FIELDS, 0) for p in trend.points)
    day = await acme.stats.GetIpTrend(pb.GetIpTrendRequest(address="127.0.0.4", resolution=pb.HOUR))
    assert len(day.points) == 24  # the default: the last day of hours


async def test_a_pool_reads_the_counters_of_its_own_server_only(acme, server, second_server, redis_url):
    pool = await _pool(acme, server, "one", ["127.0.0.5"])
    # The same pool id and address counted under another server's tag is not this pool's.
    await _count(redis_url, second_server.server_id, [(0, "sent", pool.smtp_id, "127.0.0.5", 7)])
    await _count(redis_url, server.server_id, [(0, "sent", pool.smtp_id, "127.0.0.5", 2)])
    trend = await acme.stats.GetPoolTrend(pb.GetPoolTrendRequest(smtp_id=pool.smtp_id, resolution=pb.MINUTE))
    ip = await acme.stats.GetIpTrend(pb.GetIpTrendRequest(address="127.0.0.5", resolution=pb.MINUTE))
    stats = await acme.stats.GetPoolStats(pb.GetPoolStatsRequest(smtp_id=pool.smtp_id))
    assert trend.sent == ip.sent == stats.sent == 2


@pytest.mark.parametrize(("resolution", "points", "fragments"), [
    (pb.TREND_RESOLUTION_UNSPECIFIED, 10, ("resolution is required", "MINUTE", "HOUR")),
    (7, 10, ("resolution is required",)),
    (pb.MINUTE, -1, ("between 1 and 2880", "got -1")),
    (pb.MINUTE, 2881, ("between 1 and 2880", "48 hours")),
    (pb.HOUR, 721, ("between 1 and 720", "720 hours")),
])
async def test_bad_resolutions_and_point_counts_are_invalid_arguments(acme, server, resolution, points, fragments):
    pool = await _pool(acme, server, "promo", ["127.0.0.6"])
    await expect_error(acme.stats.GetPoolTrend(
        pb.GetPoolTrendRequest(smtp_id=pool.smtp_id, resolution=resolution, points=points)),
        grpc.StatusCode.INVALID_ARGUMENT, *fragments)
    await expect_error(acme.stats.GetIpTrend(
        pb.GetIpTrendRequest(address="127.0.0.6", resolution=resolution, points=points)),
        grpc.StatusCode.INVALID_ARGUMENT, *fragments)


async def test_another_accounts_pool_and_ips_are_not_found(make_account, server):
    acme, _ = await make_account("acme")
    globex, _ = await make_account("globex")
    theirs = await _pool(globex, server, "theirs", ["127.0.0.7"])
    mine = await _pool(acme, server, "mine", ["127.0.0.8"])
    not_found = grpc.StatusCode.NOT_FOUND
    await expect_error(acme.stats.GetPoolTrend(
        pb.GetPoolTrendRequest(smtp_id=theirs.smtp_id, resolution=pb.MINUTE)), not_found)
    await expect_error(acme.stats.GetIpTrend(
        pb.GetIpTrendRequest(address="127.0.0.7", resolution=pb.HOUR)), not_found)
    await expect_error(acme.stats.GetPoolTrend(  # their IP as my pool's share
        pb.GetPoolTrendRequest(smtp_id=mine.smtp_id, resolution=pb.MINUTE, address="127.0.0.7")), not_found)
    await expect_error(acme.stats.GetIpTrend(
        pb.GetIpTrendRequest(address="not an address", resolution=pb.HOUR)), grpc.StatusCode.INVALID_ARGUMENT)
