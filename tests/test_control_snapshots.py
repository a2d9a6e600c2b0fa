"""Snapshot publishing: content matches the store, versions only grow, Redis loss is repaired."""

import asyncio

import grpc
import redis
import redis.asyncio as aioredis

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.contract import rediskeys, routing_delta, snapshot
from control.publisher import build_snapshot
from control.server import ControlPlane
from control.store import Store
from tests.control_support import Client, current_snapshot, start_config
from tests.support import eventually


def _routing(snap: snapshot.Snapshot):
    """Everything but the version and publication time."""
    return snap.server_id, snap.zone, snap.hostname, snap.pools, snap.bridges


async def test_snapshot_matches_the_store_after_each_change(acme, server, redis_url, control_plane):
    sid = server.server_id
    seen = [current_snapshot(redis_url, sid).version]

    def check():
        snap = current_snapshot(redis_url, sid)
        store = Store.open(control_plane.config.db_path)
        try:
            expected = build_snapshot(store, sid)
        finally:
            store.close()
        assert snap.version == expected.version and _routing(snap) == _routing(expected)
        assert snap.version > seen[-1]
        seen.append(snap.version)
        return snap

    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(
        label="promo", server_id=sid, feed_type="newsletter", headers=[pb.Header(name="X-Brand", value="acme")]))
    snap = check()
    route = snap.pool(pool.smtp_id)
    assert (route.internal_name, route.feed_type, route.headers) == (pool.internal_name, "newsletter", (("X-Brand", "acme"),))
    assert snap.zone == "US-1" and snap.server_id == sid
    await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.2", smtp_id=pool.smtp_id, weight=2))
    check()
    await acme.pools.SetPoolHeaders(pb.SetPoolHeadersRequest(smtp_id=pool.smtp_id, headers=[pb.Header(name="X-New", value="1")]))
    assert check().pool(pool.smtp_id).headers == (("X-New", "1"),)
    await acme.pools.SetPoolFeedType(pb.SetPoolFeedTypeRequest(smtp_id=pool.smtp_id, feed_type="promo"))
    assert check().pool(pool.smtp_id).feed_type == "promo"
    await acme.bridges.CreateBridge(pb.CreateBridgeRequest(name="web", smtp_id=pool.smtp_id))
    check()
    await acme.ips.PauseIp(pb.PauseIpRequest(address="127.0.0.2"))
    check()


async def test_a_change_publishes_a_delta_of_what_changed_and_a_notice(acme, server, redis_url):
    sid = server.server_id
    sub = aioredis.Redis.from_url(redis_url)
    pubsub = sub.pubsub()
    await pubsub.subscribe(rediskeys.snapshot_channel(sid))
    try:
        before = current_snapshot(redis_url, sid)
        pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=sid))
        after = current_snapshot(redis_url, sid)
        notices = []

        async def got_notice():
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if msg:
                notices.append(int(msg["data"]))
            return after.version in notices

        await eventually(got_notice)
        r = redis.Redis.from_url(redis_url)
        [(_, fields)] = r.xrange(rediskeys.snapshot_changes_key(sid), min=f"{after.version}-0",
                                 max=f"{after.version}-0")
        r.close()
        delta = routing_delta.decode_delta(fields[b"d"])
        assert (delta.base, delta.version) == (before.version, after.version)
        assert [p.smtp_id for p in delta.pools] == [pool.smtp_id] and delta.entries == 1
        assert routing_delta.apply(before, delta) == after
    finally:
        await pubsub.aclose()
        await sub.aclose()


async def test_versions_keep_growing_across_a_control_plane_restart(tmp_path, redis_url):
    cfg = start_config(tmp_path / "cp", redis_url)
    versions = []
    for round_ in range(2):
        cp = ControlPlane(cfg)
        await cp.start()
        ch = grpc.aio.insecure_channel(cp.grpc_address)
        admin = Client(ch, cp.admin_token_path.read_text().strip())
        try:
            if round_ == 0:
                await admin.servers.RegisterMtaServer(pb.RegisterMtaServerRequest(hostname="mta1.example.net", zone="US-1"))
            versions.append(current_snapshot(redis_url, 1).version)
            await admin.servers.ProvisionSharedIp(pb.ProvisionSharedIpRequest(server_id=1, address=f"127.0.1.{round_ + 1}"))
            versions.append(current_snapshot(redis_url, 1).version)
        finally:
            await ch.close()
            await cp.stop(0)
    first_before, first_after, second_before, second_after = versions
    assert first_after > first_before
    assert second_before == first_after  # a restart neither resets nor skips back
    assert second_after > second_before


async def test_flushed_redis_gets_the_same_routing_back(acme, admin, server, redis_url):
    sid = server.server_id
    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=sid))
    await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.2", smtp_id=pool.smtp_id))
    before = current_snapshot(redis_url, sid)
    r = redis.Redis.from_url(redis_url)
    r.flushall()
    r.close()
    # the publisher notices by itself...
    restored = await eventually(lambda: current_snapshot(redis_url, sid))
    assert restored.version >= before.version and _routing(restored) == _routing(before)
    # ...and an operator can force it.
    r = redis.Redis.from_url(redis_url)
    r.flushall()
    r.close()
    reply = await admin.servers.RepublishSnapshots(pb.RepublishSnapshotsRequest())
    assert [(s.server_id, s.version) for s in reply.snapshots] == [(sid, before.version)]
    assert _routing(current_snapshot(redis_url, sid)) == _routing(before)


async def test_changes_made_while_redis_is_down_are_published_when_it_returns(tmp_path, fresh_redis):
    url = fresh_redis.url
    cp = ControlPlane(start_config(tmp_path / "cp", url))
    await cp.start()
    ch = grpc.aio.insecure_channel(cp.grpc_address)
    admin = Client(ch, cp.admin_token_path.read_text().strip())
    try:
        await admin.servers.RegisterMtaServer(pb.RegisterMtaServerRequest(hostname="mta1.example.net", zone="US-1"))
        fresh_redis.kill()
        ip = await admin.servers.ProvisionSharedIp(pb.ProvisionSharedIpRequest(server_id=1, address="127.0.0.9"))
        assert ip.address == "127.0.0.9"  # committed although Redis is down
        await asyncio.sleep(0.3)
        fresh_redis.start()
        snap = await eventually(
            lambda: (s := current_snapshot(url, 1)) and s.pool(s.pools[0].smtp_id).ips and s, timeout=15
        )
        assert [i.address for i in snap.pools[0].ips] == ["127.0.0.9"]
    finally:
        await ch.close()
        await cp.stop(0)


def test_decode_rejects_what_is_not_a_snapshot():
    import msgpack
    import pytest

    for data in (b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"schema": 99}), msgpack.packb({"schema": 1})):
        with pytest.raises(snapshot.SnapshotError):
            snapshot.decode(data)
    snap = snapshot.Snapshot(server_id=1, version=3, hostname="h", zone="US-1")
    assert snapshot.decode(snapshot.encode(snap)) == snap
