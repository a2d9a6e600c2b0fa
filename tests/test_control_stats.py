"""StatsService reads the counters the data plane flushes into Redis, per pool and per IP."""

import time

import grpc

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.contract import rediskeys
from tests.control_support import expect_error


def _day(offset: int) -> float:
    return time.time() - offset * 86400


async def _pool_with_ips(acme, server):
    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=server.server_id))
    for address in ("127.0.0.2", "127.0.0.3"):
        await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address=address, smtp_id=pool.smtp_id))
    return pool


async def test_pool_stats_start_at_zero(acme, server):
    pool = await _pool_with_ips(acme, server)
    stats = await acme.stats.GetPoolStats(pb.GetPoolStatsRequest(smtp_id=pool.smtp_id))
    assert (stats.sent, stats.delivered, stats.bounced, stats.delivery_rate) == (0, 0, 0, 0.0)
    assert [ip.address for ip in stats.ips] == ["127.0.0.2", "127.0.0.3"]


async def test_pool_and_ip_stats_read_lifetime_and_30_day_figures(acme, server, redis_client):
    pool = await _pool_with_ips(acme, server)
    sid = pool.smtp_id
    redis_client.hset(rediskeys.pool_stats_key(server.server_id, sid), mapping={"sent": 100, "delivered": 90, "bounced": 10})
    redis_client.hset(rediskeys.pool_ip_stats_key(server.server_id, sid, "127.0.0.2"), mapping={"sent": 60, "delivered": 57, "bounced": 3})
    redis_client.hset(rediskeys.pool_ip_stats_key(server.server_id, sid, "127.0.0.3"), mapping={"sent": 40, "delivered": 33, "bounced": 7})
    redis_client.hset(rediskeys.ip_stats_key(server.server_id, "127.0.0.2"), mapping={"sent": 60, "delivered": 57, "complaints": 2})
    for day, sent in ((_day(0), 5), (_day(29), 7), (_day(30), 1000)):  # the last one is outside the window
        redis_client.hset(rediskeys.pool_stats_key(server.server_id, sid, rediskeys.DAY, day),
                          mapping={"sent": sent, "delivered": sent})
    life = await acme.stats.GetPoolStats(pb.GetPoolStatsRequest(smtp_id=sid, window=pb.LIFETIME))
    assert (life.sent, life.delivered, life.bounced) == (100, 90, 10)
    assert abs(life.delivery_rate - 0.9) < 1e-9
    assert {ip.address: (ip.sent, ip.bounced) for ip in life.ips} == {"127.0.0.2": (60, 3), "127.0.0.3": (40, 7)}
    month = await acme.stats.GetPoolStats(pb.GetPoolStatsRequest(smtp_id=sid, window=pb.LAST_30_DAYS))
    assert (month.sent, month.delivered, month.window) == (12, 12, pb.LAST_30_DAYS)
    ip = await acme.stats.GetIpStats(pb.GetIpStatsRequest(address="127.0.0.2"))
    assert (ip.sent, ip.delivered, ip.complaints) == (60, 57, 2)


async def test_watch_pool_stats_pushes_changes(acme, server, redis_client):
    pool = await _pool_with_ips(acme, server)
    call = acme.stats.WatchPoolStats(pb.WatchPoolStatsRequest(smtp_id=pool.smtp_id), timeout=20)
    first = await call.read()
    assert first.sent == 0
    redis_client.hincrby(rediskeys.pool_stats_key(server.server_id, pool.smtp_id), "sent", 3)
    second = await call.read()
    assert second.sent == 3
    call.cancel()


async def test_stats_of_unknown_objects_are_not_found(acme, server):
    await expect_error(acme.stats.GetPoolStats(pb.GetPoolStatsRequest(smtp_id=77)), grpc.StatusCode.NOT_FOUND)
    await expect_error(acme.stats.GetIpStats(pb.GetIpStatsRequest(address="127.0.0.99")), grpc.StatusCode.NOT_FOUND)


async def test_message_status_shows_the_accounts_own_events(make_account, server, redis_client):
    import json

    acme, account = await make_account("acme")
    globex, _ = await make_account("globex")
    key = rediskeys.message_events_key("0123abcd")
    base = {"message_id": "0123abcd", "user_id": account.user_id, "bridge_id": 1, "smtp_id": 2,
            "pool": "promo-1-1-pool-2", "ip": "127.0.0.2"}
    redis_client.rpush(key, json.dumps({**base, "ts_ms": 1_000, "rcpt": "defer@x.test", "outcome": "deferred",
                                        "reply": "451 4.3.0 later", "attempt": 1, "final": False}))
    redis_client.rpush(key, json.dumps({**base, "ts_ms": 2_000, "rcpt": "defer@x.test", "outcome": "delivered",
                                        "reply": "250 2.0.0 ok", "attempt": 2, "final": True}))
    status = await acme.stats.GetMessageStatus(pb.GetMessageStatusRequest(message_id="0123abcd"))
    assert [(e.outcome, e.attempt, e.final, e.reply) for e in status.events] == [
        (pb.DEFERRED, 1, False, "451 4.3.0 later"), (pb.DELIVERED, 2, True, "250 2.0.0 ok")]
    assert status.events[1].time.seconds == 2 and status.events[0].ip == "127.0.0.2"
    await expect_error(globex.stats.GetMessageStatus(pb.GetMessageStatusRequest(message_id="0123abcd")),
                       grpc.StatusCode.NOT_FOUND)
    await expect_error(acme.stats.GetMessageStatus(pb.GetMessageStatusRequest(message_id="../etc")),
                       grpc.StatusCode.INVALID_ARGUMENT)
