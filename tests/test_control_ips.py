"""Dedicated IPs: validation, uniqueness, rotation settings and asynchronous reassignment."""

import asyncio
import time

import grpc
import redis

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.contract import rediskeys
from tests.control_support import current_snapshot, expect_error
from tests.support import eventually

INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def test_addresses_are_validated_and_normalised(acme, server):
    sid = server.server_id
    for bad in ("", "300.1.1.1", "127.0.0", "mail.example.com", "0.0.0.0", "224.0.0.1", "::"):
        await expect_error(acme.ips.ProvisionIp(pb.ProvisionIpRequest(address=bad, server_id=sid)), INVALID)
    ip = await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="2001:DB8:0:0::0001", server_id=sid))
    assert ip.address == "2001:db8::1"
    await expect_error(acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.2", weight=1001)), INVALID, "weight")
    await expect_error(acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.2", hostname="bad host")), INVALID)


async def test_an_address_is_unique_platform_wide(make_account, admin, server):
    acme, _ = await make_account("acme")
    globex, _ = await make_account("globex")
    await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.2", server_id=server.server_id))
    for client in (acme, globex):
        await expect_error(
            client.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.2", server_id=server.server_id)),
            grpc.StatusCode.ALREADY_EXISTS, "127.0.0.2",
        )
    await expect_error(
        admin.servers.ProvisionSharedIp(pb.ProvisionSharedIpRequest(server_id=server.server_id, address="127.0.0.2")),
        grpc.StatusCode.ALREADY_EXISTS,
    )


async def test_concurrent_provisioning_of_one_address_succeeds_once(make_account, server):
    acme, _ = await make_account("acme")
    globex, _ = await make_account("globex")
    for client in (acme, globex):
        await client.pools.CreatePool(pb.CreatePoolRequest(label="p", server_id=server.server_id))
    results = await asyncio.gather(
        *(c.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.7")) for c in (acme, globex, acme, globex)),
        return_exceptions=True,
    )
    ok = [r for r in results if isinstance(r, pb.DedicatedIp)]
    failed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 1 and len(failed) == 3
    assert {f.code() for f in failed} == {grpc.StatusCode.ALREADY_EXISTS}


async def test_weight_pause_resume_and_release_reach_the_snapshot(acme, server, redis_url):
    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=server.server_id))
    await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.2", smtp_id=pool.smtp_id, hostname="o1.acme.example"))
    await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.3", smtp_id=pool.smtp_id, weight=3))

    def ips():
        return {ip.address: (ip.weight, ip.state, ip.hostname)
                for ip in current_snapshot(redis_url, server.server_id).pool(pool.smtp_id).ips}

    assert ips() == {"127.0.0.2": (1, "active", "o1.acme.example"), "127.0.0.3": (3, "active", "mta1.example.net")}
    assert (await acme.ips.SetIpWeight(pb.SetIpWeightRequest(address="127.0.0.2", weight=5))).weight == 5
    assert (await acme.ips.PauseIp(pb.PauseIpRequest(address="127.0.0.3"))).state == pb.IP_PAUSED
    assert ips() == {"127.0.0.2": (5, "active", "o1.acme.example"), "127.0.0.3": (3, "paused", "mta1.example.net")}
    assert (await acme.ips.ResumeIp(pb.ResumeIpRequest(address="127.0.0.3"))).state == pb.IP_ACTIVE
    await acme.ips.ReleaseIp(pb.ReleaseIpRequest(address="127.0.0.2"))
    assert ips() == {"127.0.0.3": (3, "active", "mta1.example.net")}
    await expect_error(acme.ips.GetIp(pb.GetIpRequest(address="127.0.0.2")), grpc.StatusCode.NOT_FOUND)
    await expect_error(acme.ips.SetIpWeight(pb.SetIpWeightRequest(address="127.0.0.3", weight=-1)), INVALID)


async def _follow(client, operation_id):
    states = []
    async for op in client.ips.WatchOperation(pb.WatchOperationRequest(operation_id=operation_id)):
        states.append(op)
    return states


async def test_assignment_is_queued_then_applied_and_watchable(acme, server, redis_url):
    sid = server.server_id
    a = await acme.pools.CreatePool(pb.CreatePoolRequest(label="a", server_id=sid))
    b = await acme.pools.CreatePool(pb.CreatePoolRequest(label="b", server_id=sid))
    await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.2", smtp_id=a.smtp_id))
    op = await acme.ips.AssignPool(pb.AssignPoolRequest(address="127.0.0.2", smtp_id=b.smtp_id))
    assert op.state == pb.QUEUED and (op.from_smtp_id, op.to_smtp_id) == (a.smtp_id, b.smtp_id)
    states = await _follow(acme, op.operation_id)
    assert states[0].state in (pb.QUEUED, pb.APPLYING, pb.DONE)
    assert states[-1].state == pb.DONE and states[-1].routing_version > 0
    snap = current_snapshot(redis_url, sid)
    assert snap.version >= states[-1].routing_version
    assert [ip.address for ip in snap.pool(b.smtp_id).ips] == ["127.0.0.2"]
    assert snap.pool(a.smtp_id).ips == ()
    done = await acme.ips.GetOperation(pb.GetOperationRequest(operation_id=op.operation_id))
    assert done.state == pb.DONE
    assert (await acme.ips.GetIp(pb.GetIpRequest(address="127.0.0.2"))).smtp_id == b.smtp_id
    await expect_error(
        acme.ips.AssignPool(pb.AssignPoolRequest(address="127.0.0.2", smtp_id=b.smtp_id)),
        grpc.StatusCode.FAILED_PRECONDITION, "already in pool",
    )
    await expect_error(
        acme.ips.GetOperation(pb.GetOperationRequest(operation_id="op-missing")), grpc.StatusCode.NOT_FOUND
    )


async def test_assignment_completes_only_when_every_live_worker_serves_it(acme, server, redis_url):
    sid = server.server_id
    a = await acme.pools.CreatePool(pb.CreatePoolRequest(label="a", server_id=sid))
    b = await acme.pools.CreatePool(pb.CreatePoolRequest(label="b", server_id=sid))
    await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.2", smtp_id=a.smtp_id))
    r = redis.Redis.from_url(redis_url)
    try:
        now_ms = int(time.time() * 1000)
        served = current_snapshot(redis_url, sid).version
        # A live worker on the old version, and a dead one (heartbeat long expired) that is ignored.
        r.hset(rediskeys.worker_acks_key(sid), mapping={"w-live": f"{served}:{now_ms}", "w-dead": f"1:{now_ms - 60_000}"})
        op = await acme.ips.AssignPool(pb.AssignPoolRequest(address="127.0.0.2", smtp_id=b.smtp_id))

        async def applying():
            cur = await acme.ips.GetOperation(pb.GetOperationRequest(operation_id=op.operation_id))
            return cur if cur.state == pb.APPLYING else None

        cur = await eventually(applying)
        await asyncio.sleep(0.3)  # several reconciler passes: still waiting for w-live
        assert (await acme.ips.GetOperation(pb.GetOperationRequest(operation_id=op.operation_id))).state == pb.APPLYING
        # The IP already routes for pool b in the published snapshot (the defined moment).
        assert [ip.address for ip in current_snapshot(redis_url, sid).pool(b.smtp_id).ips] == ["127.0.0.2"]
        ip = await acme.ips.GetIp(pb.GetIpRequest(address="127.0.0.2"))
        assert ip.pending_operation_id == op.operation_id
        r.hset(rediskeys.worker_acks_key(sid), "w-live", f"{cur.routing_version}:{int(time.time() * 1000)}")
        states = await _follow(acme, op.operation_id)
        assert states[-1].state == pb.DONE
    finally:
        r.close()


async def test_releasing_an_ip_fails_its_pending_assignment(acme, server, redis_url, control_plane):
    sid = server.server_id
    a = await acme.pools.CreatePool(pb.CreatePoolRequest(label="a", server_id=sid))
    b = await acme.pools.CreatePool(pb.CreatePoolRequest(label="b", server_id=sid))
    await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.2", smtp_id=a.smtp_id))
    r = redis.Redis.from_url(redis_url)
    try:
        # a live worker that never catches up keeps the operation APPLYING
        r.hset(rediskeys.worker_acks_key(sid), "w1", f"1:{int(time.time() * 1000) + 3_600_000}")
        op = await acme.ips.AssignPool(pb.AssignPoolRequest(address="127.0.0.2", smtp_id=b.smtp_id))
        await expect_error(
            acme.ips.AssignPool(pb.AssignPoolRequest(address="127.0.0.2", smtp_id=a.smtp_id)),
            grpc.StatusCode.FAILED_PRECONDITION, op.operation_id,
        )
        await acme.ips.ReleaseIp(pb.ReleaseIpRequest(address="127.0.0.2"))
        states = await _follow(acme, op.operation_id)
        assert states[-1].state == pb.FAILED and "released" in states[-1].error
    finally:
        r.close()
