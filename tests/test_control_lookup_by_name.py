"""Objects addressed by label or name in the API as well as by id (issue 10):
GetAccount by name, GetMtaServer by hostname, GetPool by label, GetBridge by name;
another account's pool or bridge stays NOT_FOUND by name too."""

from __future__ import annotations

import grpc

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from tests.control_support import expect_error

NOT_FOUND = grpc.StatusCode.NOT_FOUND


async def test_get_by_name_answers_like_get_by_id(admin, make_account, server):
    acme, account = await make_account("acme")
    assert await admin.accounts.GetAccount(pb.GetAccountRequest(name="acme")) == account
    assert await admin.servers.GetMtaServer(pb.GetMtaServerRequest(hostname="MTA1.example.net")) == \
        await admin.servers.GetMtaServer(pb.GetMtaServerRequest(server_id=server.server_id))
    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=server.server_id))
    assert await acme.pools.GetPool(pb.GetPoolRequest(label="promo")) == pool
    bridge = (await acme.bridges.CreateBridge(pb.CreateBridgeRequest(name="app", smtp_id=pool.smtp_id))).bridge
    assert await acme.bridges.GetBridge(pb.GetBridgeRequest(name="app")) == bridge
    # An id, when given, wins: the name is only read with id 0.
    assert (await acme.pools.GetPool(pb.GetPoolRequest(smtp_id=pool.smtp_id, label="other"))).label == "promo"


async def test_unknown_or_foreign_names_are_not_found(admin, make_account, server):
    acme, _ = await make_account("acme")
    globex, _ = await make_account("globex")
    await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=server.server_id))
    await expect_error(globex.pools.GetPool(pb.GetPoolRequest(label="promo")), NOT_FOUND, "no pool labelled 'promo'")
    await expect_error(globex.bridges.GetBridge(pb.GetBridgeRequest(name="app")), NOT_FOUND, "no bridge named")
    await expect_error(admin.accounts.GetAccount(pb.GetAccountRequest(name="initech")), NOT_FOUND, "'initech'")
    await expect_error(admin.servers.GetMtaServer(pb.GetMtaServerRequest(hostname="mta9.example.net")), NOT_FOUND)
