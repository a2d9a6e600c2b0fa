"""Every Pool rule of the product page, through the real gRPC API."""

import re

import grpc

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.contract.headers import STAMPED_HEADER_NAMES
from tests.control_support import current_snapshot, expect_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


async def test_essential_tier_is_refused_dedicated_pools_ips_and_assignment(make_account, server):
    essential, _ = await make_account("smallco", pb.ESSENTIAL)
    await expect_error(
        essential.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=server.server_id)),
        PRECONDITION, "ESSENTIAL", "PRO or BUSINESS",
    )
    await expect_error(
        essential.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.2", server_id=server.server_id)),
        PRECONDITION, "ESSENTIAL",
    )
    await expect_error(
        essential.ips.AssignPool(pb.AssignPoolRequest(address="127.0.0.2", smtp_id=1)), PRECONDITION, "ESSENTIAL"
    )


async def test_pro_and_business_may_create_pools(make_account, server):
    for name, tier in (("pro", pb.PRO), ("biz", pb.BUSINESS)):
        client, _ = await make_account(name, tier)
        pool = await client.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=server.server_id))
        assert pool.label == "promo"


async def test_essential_bridges_route_through_the_hidden_shared_pool(admin, make_account, server, redis_url):
    await admin.servers.ProvisionSharedIp(pb.ProvisionSharedIpRequest(server_id=server.server_id, address="127.0.0.9"))
    essential, _ = await make_account("smallco", pb.ESSENTIAL)
    await expect_error(
        essential.bridges.CreateBridge(pb.CreateBridgeRequest(name="app", smtp_id=1)), PRECONDITION, "shared pool"
    )
    created = await essential.bridges.CreateBridge(pb.CreateBridgeRequest(name="app", server_id=server.server_id))
    assert created.bridge.shared and created.bridge.smtp_id == 0 and created.bridge.server_id == server.server_id
    assert (await essential.pools.ListPools(pb.ListPoolsRequest())).pools == []
    snap = current_snapshot(redis_url, server.server_id)
    route = next(b for b in snap.bridges if b.username == created.bridge.username)
    shared = snap.pool(route.smtp_id)
    assert shared.shared and shared.internal_name == server.shared_pool
    assert [ip.address for ip in shared.ips] == ["127.0.0.9"]
    shared_ips = await admin.servers.ListSharedIps(pb.ListSharedIpsRequest(server_id=server.server_id))
    assert [ip.address for ip in shared_ips.ips] == ["127.0.0.9"]


async def test_first_ip_creates_the_default_pool_and_new_ips_land_there(acme, server, admin):
    await admin.servers.RegisterMtaServer(pb.RegisterMtaServerRequest(hostname="mta2.example.net", zone="EU-1"))
    await expect_error(acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.2")), INVALID, "server_id",
                       "2 MTA servers")
    first = await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.2", server_id=server.server_id))
    pools = (await acme.pools.ListPools(pb.ListPoolsRequest())).pools
    assert len(pools) == 1 and pools[0].is_default and pools[0].smtp_id == first.smtp_id
    second = await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.3"))
    assert second.smtp_id == first.smtp_id
    promo = await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=server.server_id))
    named = await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.4", smtp_id=promo.smtp_id))
    assert named.smtp_id == promo.smtp_id
    assert not promo.is_default


async def test_the_first_pool_is_the_default_and_there_is_always_exactly_one(acme, server):
    a = await acme.pools.CreatePool(pb.CreatePoolRequest(label="a", server_id=server.server_id))
    b = await acme.pools.CreatePool(pb.CreatePoolRequest(label="b", server_id=server.server_id))
    assert a.is_default and not b.is_default
    await acme.pools.SetDefaultPool(pb.SetDefaultPoolRequest(smtp_id=b.smtp_id))
    defaults = [p.label for p in (await acme.pools.ListPools(pb.ListPoolsRequest())).pools if p.is_default]
    assert defaults == ["b"]
    ip = await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.2"))
    assert ip.smtp_id == b.smtp_id


async def test_internal_name_is_fixed_while_the_label_is_renamable(acme, make_account, server):
    _, account = await make_account("other")
    pool = await acme.pools.CreatePool(
        pb.CreatePoolRequest(label="Acme Promotional", server_id=server.server_id)
    )
    assert pool.tag == "acme-promotional"
    user_id = (await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.2", smtp_id=pool.smtp_id))).smtp_id
    assert user_id == pool.smtp_id
    m = re.fullmatch(r"acme-promotional-(\d+)-(\d+)-pool-(\d+)", pool.internal_name)
    assert m and int(m.group(2)) == server.server_id and int(m.group(3)) == pool.smtp_id
    assert int(m.group(1)) != account.user_id  # acme's own user id, not another account's
    renamed = await acme.pools.RenamePool(pb.RenamePoolRequest(smtp_id=pool.smtp_id, label="marketing"))
    assert renamed.label == "marketing" and renamed.internal_name == pool.internal_name
    tagged = await acme.pools.CreatePool(pb.CreatePoolRequest(label="tx", server_id=server.server_id, tag="trans"))
    assert tagged.internal_name.startswith("trans-")
    await expect_error(
        acme.pools.CreatePool(pb.CreatePoolRequest(label="x", server_id=server.server_id, tag="Bad Tag")), INVALID, "tag"
    )


async def test_labels_are_validated_and_unique_per_account(acme, make_account, server):
    sid = server.server_id
    await expect_error(acme.pools.CreatePool(pb.CreatePoolRequest(label="", server_id=sid)), INVALID, "empty")
    await expect_error(acme.pools.CreatePool(pb.CreatePoolRequest(label="x" * 65, server_id=sid)), INVALID, "limit is 64")
    await expect_error(acme.pools.CreatePool(pb.CreatePoolRequest(label="a\nb", server_id=sid)), INVALID, "label")
    await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=sid))
    await expect_error(
        acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=sid)), grpc.StatusCode.ALREADY_EXISTS, "promo"
    )
    other = await acme.pools.CreatePool(pb.CreatePoolRequest(label="other", server_id=sid))
    await expect_error(
        acme.pools.RenamePool(pb.RenamePoolRequest(smtp_id=other.smtp_id, label="promo")),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    globex, _ = await make_account("globex")
    await globex.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=sid))


async def test_a_pool_is_bound_to_one_server_which_fixes_its_zone(admin, acme, server):
    eu = await admin.servers.RegisterMtaServer(pb.RegisterMtaServerRequest(hostname="mta-eu.example.net", zone="EU-1"))
    us_pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="us", server_id=server.server_id))
    eu_pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="eu", server_id=eu.server_id))
    assert (us_pool.zone, eu_pool.zone) == ("US-1", "EU-1")
    await expect_error(
        acme.pools.CreatePool(pb.CreatePoolRequest(label="nowhere", server_id=99)), grpc.StatusCode.NOT_FOUND, "99"
    )
    # With two MTA servers, a pool must name one (with one, it is that one).
    await expect_error(acme.pools.CreatePool(pb.CreatePoolRequest(label="none")), INVALID, "server_id")
    await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.2", smtp_id=us_pool.smtp_id))
    await expect_error(
        acme.ips.AssignPool(pb.AssignPoolRequest(address="127.0.0.2", smtp_id=eu_pool.smtp_id)),
        PRECONDITION, "own server",
    )
    await expect_error(
        acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.3", smtp_id=us_pool.smtp_id, server_id=eu.server_id)),
        PRECONDITION, "server",
    )


async def test_a_pool_with_ips_bridges_or_default_cannot_be_deleted(acme, server):
    sid = server.server_id
    default = await acme.pools.CreatePool(pb.CreatePoolRequest(label="default", server_id=sid))
    promo = await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=sid))
    await expect_error(acme.pools.DeletePool(pb.DeletePoolRequest(smtp_id=default.smtp_id)), PRECONDITION, "default")
    await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.2", smtp_id=promo.smtp_id))
    bridge = (await acme.bridges.CreateBridge(pb.CreateBridgeRequest(name="web", smtp_id=promo.smtp_id))).bridge
    msg = await expect_error(acme.pools.DeletePool(pb.DeletePoolRequest(smtp_id=promo.smtp_id)), PRECONDITION,
                             "1 IP(s)", "1 bridge(s)")
    assert "default" not in msg.split("deleted yet:")[1]
    op = await acme.ips.AssignPool(pb.AssignPoolRequest(address="127.0.0.2", smtp_id=default.smtp_id))
    async for update in acme.ips.WatchOperation(pb.WatchOperationRequest(operation_id=op.operation_id)):
        last = update
    assert last.state == pb.DONE
    await expect_error(acme.pools.DeletePool(pb.DeletePoolRequest(smtp_id=promo.smtp_id)), PRECONDITION, "bridge")
    await acme.bridges.RevokeBridge(pb.RevokeBridgeRequest(bridge_id=bridge.bridge_id))
    await acme.pools.DeletePool(pb.DeletePoolRequest(smtp_id=promo.smtp_id))
    await expect_error(acme.pools.GetPool(pb.GetPoolRequest(smtp_id=promo.smtp_id)), grpc.StatusCode.NOT_FOUND)


async def test_custom_headers_are_validated(acme, server):
    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=server.server_id))

    def headers(*pairs):
        return pb.SetPoolHeadersRequest(smtp_id=pool.smtp_id, headers=[pb.Header(name=n, value=v) for n, v in pairs])

    await expect_error(acme.pools.SetPoolHeaders(headers(("X-Campaign", "a\r\nBcc: x"))), INVALID, "CR, LF")
    await expect_error(acme.pools.SetPoolHeaders(headers(("X-Campaign", "a\nb"))), INVALID, "CR, LF")
    for reserved in STAMPED_HEADER_NAMES:
        for spelling in (reserved, reserved.upper()):  # field names are case-insensitive
            await expect_error(acme.pools.SetPoolHeaders(headers((spelling, "v"))), INVALID, "stamped by poolmta")
    for bad in ("X Campaign", "X-Campaign:", "", "Ünï"):
        await expect_error(acme.pools.SetPoolHeaders(headers((bad, "v"))), INVALID, "field name")
    await expect_error(acme.pools.SetPoolHeaders(headers(("X-A", "1"), ("x-a", "2"))), INVALID, "twice")
    await expect_error(
        acme.pools.CreatePool(pb.CreatePoolRequest(label="p2", server_id=server.server_id,
                                                   headers=[pb.Header(name="X-Zone", value="x")])),
        INVALID, "stamped by poolmta",
    )
    ok = await acme.pools.SetPoolHeaders(headers(("X-Campaign", "q4 sale"), ("List-Unsubscribe", "<mailto:u@x>")))
    assert [(h.name, h.value) for h in ok.headers] == [("X-Campaign", "q4 sale"), ("List-Unsubscribe", "<mailto:u@x>")]


async def test_pool_status_follows_its_ips(acme, server):
    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=server.server_id))
    assert pool.status == pb.EMPTY
    await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.2", smtp_id=pool.smtp_id))
    assert (await acme.pools.GetPool(pb.GetPoolRequest(smtp_id=pool.smtp_id))).status == pb.ACTIVE
    await acme.ips.PauseIp(pb.PauseIpRequest(address="127.0.0.2"))
    assert (await acme.pools.GetPool(pb.GetPoolRequest(smtp_id=pool.smtp_id))).status == pb.PAUSED


async def test_tier_cannot_drop_to_essential_while_dedicated_resources_remain(admin, make_account, server):
    client, account = await make_account("acme")
    await client.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=server.server_id))
    await expect_error(
        admin.accounts.SetAccountTier(pb.SetAccountTierRequest(user_id=account.user_id, tier=pb.ESSENTIAL)),
        PRECONDITION, "delete its pools",
    )
    up = await admin.accounts.SetAccountTier(pb.SetAccountTierRequest(user_id=account.user_id, tier=pb.BUSINESS))
    assert up.tier == pb.BUSINESS
