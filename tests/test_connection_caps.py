"""Connection admission (`dataplane.connection_caps`) against a real Redis: the caps
count across workers, a release frees a slot, a restarted worker's stale counts
are cleared, and without Redis each worker admits within its own share."""

from __future__ import annotations

import socket

import pytest
import redis.asyncio as aioredis

from control.contract import rediskeys
from dataplane.connection_caps import Admission, ConnectionCaps
from tests.redis_support import aof_path
from tests.support import eventually

SERVER = 31


@pytest.fixture
async def aredis(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    await client.delete(*(rediskeys.connection_counts_key(SERVER, "bridge", i) for i in range(2)))
    yield client
    await client.aclose()


def _caps(client, index: int, *, per_address: int = 3, total: int = 5, workers: int = 2) -> ConnectionCaps:
    return ConnectionCaps(client, server_id=SERVER, listener="bridge", index=index, workers=workers,
                          per_address=per_address, total=total)


async def test_the_per_address_cap_counts_across_workers(aredis):
    workers = [_caps(aredis, 0), _caps(aredis, 1)]
    for caps in workers:
        await caps.start()
    try:
        # 3 from one address spread over both workers: the 4th is refused by either.
        assert [await workers[i % 2].admit("192.0.2.1") for i in range(3)] == [Admission.ADMITTED] * 3
        assert await workers[0].admit("192.0.2.1") is Admission.ADDRESS_FULL
        assert await workers[1].admit("192.0.2.1") is Admission.ADDRESS_FULL
        # The total: 2 more from another address fill the server (5).
        assert await workers[1].admit("192.0.2.2") is Admission.ADMITTED
        assert await workers[0].admit("192.0.2.2") is Admission.ADMITTED
        assert await workers[1].admit("192.0.2.3") is Admission.SERVER_FULL
        # A release frees the slot, for any worker.
        workers[0].release("192.0.2.1")
        await eventually(lambda: _admitted(workers[1], "192.0.2.1"))
    finally:
        for caps in workers:
            await caps.close()


async def _admitted(caps: ConnectionCaps, address: str) -> bool:
    return await caps.admit(address) is Admission.ADMITTED


async def test_a_restarted_worker_clears_what_its_predecessor_left(aredis):
    gone = _caps(aredis, 0)
    await gone.start()
    for _ in range(3):
        assert await gone.admit("192.0.2.9") is Admission.ADMITTED
    # Killed without a release; its successor (same index) starts clean.
    successor, other = _caps(aredis, 0), _caps(aredis, 1)
    await successor.start()
    await other.start()
    try:
        assert await other.admit("192.0.2.9") is Admission.ADMITTED
        assert await aredis.pttl(rediskeys.connection_counts_key(SERVER, "bridge", 1)) > 0  # expires unless refreshed
    finally:
        await successor.close()
        await other.close()


async def test_without_redis_each_worker_admits_its_share():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}", socket_connect_timeout=0.2)
    caps = _caps(client, 0, per_address=3, total=5)
    await caps.start()
    try:
        # 3 per address over 2 workers: 2 here; 5 in all: 3 here.
        assert [await caps.admit("192.0.2.1") for _ in range(3)] == [Admission.ADMITTED] * 2 + [Admission.ADDRESS_FULL]
        assert await caps.admit("192.0.2.2") is Admission.ADMITTED
        assert await caps.admit("192.0.2.3") is Admission.SERVER_FULL
        caps.release("192.0.2.1")
        assert await caps.admit("192.0.2.1") is Admission.ADMITTED
    finally:
        await caps.close()
        await client.aclose()


async def test_an_ipv6_client_counts_by_its_64_and_exempt_networks_are_not_counted(aredis):
    caps = ConnectionCaps(aredis, server_id=SERVER, listener="bridge", index=0, workers=1, per_address=2, total=100,
                          exempt=("192.0.2.128/25",))
    await caps.start()
    try:
        # Two addresses of one /64 are one client; another /64 is another.
        assert await caps.admit("2001:db8:0:1::1") is Admission.ADMITTED
        assert await caps.admit("2001:db8:0:1::2") is Admission.ADMITTED
        assert await caps.admit("2001:db8:0:1:ffff::3") is Admission.ADDRESS_FULL
        assert await caps.admit("2001:db8:0:2::1") is Admission.ADMITTED
        # An IPv4-mapped address is its IPv4 address.
        assert await caps.admit("192.0.2.7") is Admission.ADMITTED
        assert await caps.admit("::ffff:192.0.2.7") is Admission.ADMITTED
        assert await caps.admit("192.0.2.7") is Admission.ADDRESS_FULL
        # The exempt network: never refused, never counted.
        assert [await caps.admit("192.0.2.200") for _ in range(5)] == [Admission.ADMITTED] * 5
        caps.release("192.0.2.200")
        key = rediskeys.connection_counts_key(SERVER, "bridge", 0)
        assert await aredis.hget(key, "2001:db8:0:1::/64") == b"2"
        assert await aredis.hget(key, rediskeys.CONNECTIONS_TOTAL_FIELD) == b"5"
    finally:
        await caps.close()


async def test_counts_stay_out_of_the_append_only_file_and_come_back_after_a_restart(fresh_redis):
    # Ephemeral counts: no fsync per admission; a restarted Redis gets them from the refresh.
    client = aioredis.Redis.from_url(fresh_redis.url)
    caps = _caps(client, 0, per_address=2, total=5, workers=1)
    key = rediskeys.connection_counts_key(SERVER, "bridge", 0)
    await caps.start()
    try:
        await client.set("a-durable-write", "1")  # the AOF is written and fsynced as before
        assert await caps.admit("192.0.2.7") is Admission.ADMITTED
        assert await client.hget(key, "192.0.2.7") == b"1"
        aof = aof_path(fresh_redis).read_bytes()
        assert b"a-durable-write" in aof and key.encode() not in aof

        fresh_redis.stop()
        fresh_redis.start()
        await client.connection_pool.disconnect()  # the old connections died with the old Redis
        assert await client.exists(key) == 0  # nothing came back from the AOF
        await caps._refresh()  # what the worker's refresher does every REFRESH_INTERVAL
        assert await client.hget(key, "192.0.2.7") == b"1"
        assert await caps.admit("192.0.2.7") is Admission.ADMITTED
        assert await caps.admit("192.0.2.7") is Admission.ADDRESS_FULL  # still counted across the restart
    finally:
        await caps.close()
        await client.aclose()
