"""What the gRPC field fuzzing (test_grpc_fuzz) found in the control plane, one
regression test each."""

from __future__ import annotations

import pytest

from control._pb.poolmta.v1 import poolmta_pb2 as pb

pytestmark = pytest.mark.abuse


async def test_a_deleted_pools_id_is_never_given_to_another_accounts_pool(server, make_account):
    # SQLite hands out the largest rowid + 1: deleting the newest pool gave its smtp_id,
    # which keys pool stats in Redis and the internal name, to the next pool of any account.
    tenant, _ = await make_account("tenant")
    victim, _ = await make_account("victim")
    await tenant.pools.CreatePool(pb.CreatePoolRequest(label="default", server_id=server.server_id, tag="dft"))
    gone = await tenant.pools.CreatePool(pb.CreatePoolRequest(label="temp", server_id=server.server_id, tag="tmp"))
    await tenant.pools.DeletePool(pb.DeletePoolRequest(smtp_id=gone.smtp_id))
    fresh = await victim.pools.CreatePool(pb.CreatePoolRequest(label="later", server_id=server.server_id, tag="tmp"))
    assert fresh.smtp_id > gone.smtp_id


async def test_a_deleted_bridges_id_is_never_given_again(server, make_account):
    tenant, _ = await make_account("tenant")
    other = await tenant.pools.CreatePool(pb.CreatePoolRequest(label="kept", server_id=server.server_id, tag="kpt"))
    pool = await tenant.pools.CreatePool(pb.CreatePoolRequest(label="temp", server_id=server.server_id, tag="tmp"))
    bridge = (await tenant.bridges.CreateBridge(pb.CreateBridgeRequest(name="old", smtp_id=pool.smtp_id))).bridge
    await tenant.bridges.RevokeBridge(pb.RevokeBridgeRequest(bridge_id=bridge.bridge_id))
    await tenant.pools.DeletePool(pb.DeletePoolRequest(smtp_id=pool.smtp_id))  # removes the revoked bridge
    fresh = (await tenant.bridges.CreateBridge(pb.CreateBridgeRequest(name="new", smtp_id=other.smtp_id))).bridge
    assert fresh.bridge_id > bridge.bridge_id
