"""Counters written before issue 9 under the single `{stats}` tag move under their
MTA server's `{stats:N}` when the control plane starts: every count kept (merged
into what the new keys already hold), expiries kept, a second run a no-op, keys of
pools or IPs gone from SQLite left where they are; and with Redis down at start,
the move happens once Redis answers."""

from __future__ import annotations

import time

import grpc
import pytest
import redis

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.contract import rediskeys
from control.server import ControlPlane
from control.stats_migration import MigrationResult, migrate_legacy_counters, parse_legacy_key
from control.store import Store
from tests.control_support import Client, start_config
from tests.support import eventually

OLD = rediskeys.LEGACY_STATS_PREFIX
DAY = time.strftime("%Y%m%d", time.gmtime())


def _parsed(key: str):
    found = parse_legacy_key(key)
    return None if found is None else (found.smtp_id, found.address, found.day)


def test_old_key_names_are_read_back_to_their_pool_ip_and_day():
    assert _parsed(OLD + "pool:7") == (7, None, None)
    assert _parsed(OLD + "pool:7:ip:2001:db8::d:d:20261127") == (7, "2001:db8::d", 1795737600)
    assert _parsed(OLD + "ip:192.0.2.1") == (None, "192.0.2.1", None)
    for other in ("batch:w1:ab:3", "pool:x", "ip:192.0.2.1:d:20261399"):
        assert _parsed(OLD + other) is None, other
    assert _parsed(rediskeys.pool_stats_key(1, 7)) is None  # the new layout is not the old


async def _provisioned(config) -> dict:
    """A control plane's first run: servers 1 and 2, pools on each, IPs in them, one
    pool deleted; {"pool1", "pool2", "gone"} smtp_ids."""
    cp = ControlPlane(config)
    await cp.start()
    channel = grpc.aio.insecure_channel(cp.grpc_address)
    try:
        admin = Client(channel, cp.admin_token_path.read_text().strip())
        for n in (1, 2):
            await admin.servers.RegisterMtaServer(pb.RegisterMtaServerRequest(hostname=f"mta{n}.example.net",
                                                                              zone=f"Z-{n}"))
        reply = await admin.accounts.CreateAccount(pb.CreateAccountRequest(name="acme", tier=pb.PRO))
        acme = Client(channel, reply.token)
        pools = {}
        for name, server_id, address in (("pool1", 1, "127.0.0.2"), ("pool2", 2, "2001:db8::2"), ("gone", 2, None)):
            pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label=name, server_id=server_id))
            if address:
                await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address=address, smtp_id=pool.smtp_id))
            pools[name] = pool.smtp_id
        await acme.pools.DeletePool(pb.DeletePoolRequest(smtp_id=pools["gone"]))
        return pools
    finally:
        await channel.close()
        await cp.stop(0)


def _seed(client: redis.Redis, pools: dict) -> None:
    p1, p2, gone = pools["pool1"], pools["pool2"], pools["gone"]
    client.hset(f"{OLD}pool:{p1}", mapping={"sent": 100, "delivered": 90, "bounced": 10})
    client.hset(f"{OLD}pool:{p1}:d:{DAY}", mapping={"sent": 30, "delivered": 30})
    client.expire(f"{OLD}pool:{p1}:d:{DAY}", 1000)
    client.hset(f"{OLD}pool:{p1}:ip:127.0.0.2", mapping={"sent": 100, "complaints": 2})
    client.hset(f"{OLD}ip:127.0.0.2", mapping={"sent": 100, "complaints": 2})
    client.hset(f"{OLD}pool:{p2}", mapping={"sent": 7})
    client.hset(f"{OLD}ip:2001:db8::2:d:{DAY}", mapping={"sent": 7})
    client.hset(f"{OLD}pool:{gone}", mapping={"sent": 1})  # its pool was deleted
    client.set(f"{OLD}batch:w1:abcd:9", "1", ex=1000)  # an applied-batch marker
    # A new-layout key counted already (a worker of this version ran first): merged.
    client.hset(rediskeys.pool_stats_key(1, p1), mapping={"sent": 5, "delivered": 5})


def _hash(client: redis.Redis, key: str) -> dict:
    return {k.decode(): int(v) for k, v in client.hgetall(key).items()}


async def test_control_plane_start_moves_old_counters_under_their_server_once(tmp_path, redis_url, redis_client):
    config = start_config(tmp_path / "control", redis_url)
    pools = await _provisioned(config)
    _seed(redis_client, pools)
    p1, p2, gone = pools["pool1"], pools["pool2"], pools["gone"]

    cp = ControlPlane(config)
    await cp.start()
    try:
        now = time.time()
        assert _hash(redis_client, rediskeys.pool_stats_key(1, p1)) == {"sent": 105, "delivered": 95, "bounced": 10}
        day_key = rediskeys.pool_stats_key(1, p1, rediskeys.DAY, now)
        assert _hash(redis_client, day_key) == {"sent": 30, "delivered": 30}
        assert 990 <= redis_client.ttl(day_key) <= 1000  # its expiry came along
        assert _hash(redis_client, rediskeys.pool_ip_stats_key(1, p1, "127.0.0.2")) == {"sent": 100, "complaints": 2}
        assert _hash(redis_client, rediskeys.ip_stats_key(1, "127.0.0.2")) == {"sent": 100, "complaints": 2}
        assert _hash(redis_client, rediskeys.pool_stats_key(2, p2)) == {"sent": 7}
        assert _hash(redis_client, rediskeys.ip_stats_key(2, "2001:db8::2", rediskeys.DAY, now)) == {"sent": 7}
        # Left: the deleted pool's counters and the batch marker; nothing else under {stats}.
        left = sorted(k.decode() for k in redis_client.scan_iter(match=OLD + "*"))
        assert left == [f"{OLD}batch:w1:abcd:9", f"{OLD}pool:{gone}"]

        store = Store.open(config.db_path)
        try:
            again = await migrate_legacy_counters(cp._redis, store)
        finally:
            store.close()
        assert again == MigrationResult(moved=0, orphaned=1)
        assert _hash(redis_client, rediskeys.pool_stats_key(1, p1)) == {"sent": 105, "delivered": 95, "bounced": 10}
    finally:
        await cp.stop(0)


@pytest.mark.slow
async def test_with_redis_down_at_start_the_move_waits_for_redis(tmp_path, fresh_redis):
    client = redis.Redis.from_url(fresh_redis.url)
    config = start_config(tmp_path / "control", fresh_redis.url)
    pools = await _provisioned(config)
    _seed(client, pools)
    fresh_redis.stop()
    cp = ControlPlane(config)
    await cp.start()  # serves without Redis; the move is retried in the background
    try:
        fresh_redis.start()
        client.close()
        client = redis.Redis.from_url(fresh_redis.url)
        key = rediskeys.pool_stats_key(1, pools["pool1"])
        assert await eventually(lambda: _hash(client, key).get("sent") == 105, timeout=20)
        assert not client.exists(f"{OLD}pool:{pools['pool1']}")
    finally:
        await cp.stop(0)
        client.close()
