"""Authentication and tenant isolation of the gRPC API."""

import os
import stat

import grpc

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from tests.control_support import Client, expect_error

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND


async def test_admin_token_file_is_private(control_plane):
    mode = stat.S_IMODE(os.stat(control_plane.admin_token_path).st_mode)
    assert mode == 0o600
    assert len(control_plane.admin_token_path.read_text().strip()) >= 40


async def test_missing_or_wrong_token_is_unauthenticated(channel):
    anonymous = Client(channel, None)
    await expect_error(anonymous.accounts.ListAccounts(pb.ListAccountsRequest()), UNAUTH, "authorization")
    await expect_error(anonymous.pools.ListPools(pb.ListPoolsRequest()), UNAUTH, "authorization")
    wrong = Client(channel, "not-a-token")
    await expect_error(wrong.accounts.ListAccounts(pb.ListAccountsRequest()), UNAUTH, "invalid")
    await expect_error(wrong.pools.ListPools(pb.ListPoolsRequest()), UNAUTH, "invalid")


async def test_streaming_calls_are_authenticated_too(channel):
    call = Client(channel, "nope").ips.WatchOperation(pb.WatchOperationRequest(operation_id="op-x"))
    await expect_error(call.read(), UNAUTH)


async def test_tokens_work_only_on_their_own_services(admin, acme):
    await expect_error(acme.accounts.ListAccounts(pb.ListAccountsRequest()), DENIED, "admin token")
    await expect_error(admin.pools.ListPools(pb.ListPoolsRequest()), DENIED, "account token")


async def test_issuing_a_token_can_revoke_the_old_ones(admin, channel):
    created = await admin.accounts.CreateAccount(pb.CreateAccountRequest(name="acme", tier=pb.PRO))
    old = Client(channel, created.token)
    await old.pools.ListPools(pb.ListPoolsRequest())
    kept = await admin.accounts.IssueAccountToken(pb.IssueAccountTokenRequest(user_id=created.account.user_id))
    await old.pools.ListPools(pb.ListPoolsRequest())
    fresh = await admin.accounts.IssueAccountToken(
        pb.IssueAccountTokenRequest(user_id=created.account.user_id, revoke_existing=True)
    )
    await expect_error(old.pools.ListPools(pb.ListPoolsRequest()), UNAUTH)
    await expect_error(Client(channel, kept.token).pools.ListPools(pb.ListPoolsRequest()), UNAUTH)
    await Client(channel, fresh.token).pools.ListPools(pb.ListPoolsRequest())


async def test_accounts_validate_and_refuse_duplicates(admin):
    await expect_error(
        admin.accounts.CreateAccount(pb.CreateAccountRequest(name="", tier=pb.PRO)),
        grpc.StatusCode.INVALID_ARGUMENT, "account name",
    )
    await expect_error(
        admin.accounts.CreateAccount(pb.CreateAccountRequest(name="acme")),
        grpc.StatusCode.INVALID_ARGUMENT, "tier is required",
    )
    await admin.accounts.CreateAccount(pb.CreateAccountRequest(name="acme", tier=pb.BUSINESS))
    await expect_error(
        admin.accounts.CreateAccount(pb.CreateAccountRequest(name="acme", tier=pb.PRO)),
        grpc.StatusCode.ALREADY_EXISTS, "acme",
    )
    await expect_error(admin.accounts.GetAccount(pb.GetAccountRequest(user_id=999)), NOT_FOUND, "999")


async def test_tenants_never_see_each_other(make_account, server):
    acme, _ = await make_account("acme")
    globex, _ = await make_account("globex")
    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=server.server_id))
    await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.2", smtp_id=pool.smtp_id))
    bridge = (await acme.bridges.CreateBridge(pb.CreateBridgeRequest(name="web", smtp_id=pool.smtp_id))).bridge
    gpool = await globex.pools.CreatePool(pb.CreatePoolRequest(label="bulk", server_id=server.server_id))

    # globex cannot see or touch acme's objects...
    assert [p.label for p in (await globex.pools.ListPools(pb.ListPoolsRequest())).pools] == ["bulk"]
    assert (await globex.ips.ListIps(pb.ListIpsRequest())).ips == []
    assert (await globex.bridges.ListBridges(pb.ListBridgesRequest())).bridges == []
    await expect_error(globex.pools.GetPool(pb.GetPoolRequest(smtp_id=pool.smtp_id)), NOT_FOUND)
    await expect_error(globex.pools.RenamePool(pb.RenamePoolRequest(smtp_id=pool.smtp_id, label="x")), NOT_FOUND)
    await expect_error(globex.pools.DeletePool(pb.DeletePoolRequest(smtp_id=pool.smtp_id)), NOT_FOUND)
    await expect_error(globex.ips.GetIp(pb.GetIpRequest(address="127.0.0.2")), NOT_FOUND)
    await expect_error(globex.ips.PauseIp(pb.PauseIpRequest(address="127.0.0.2")), NOT_FOUND)
    await expect_error(globex.ips.ReleaseIp(pb.ReleaseIpRequest(address="127.0.0.2")), NOT_FOUND)
    await expect_error(globex.bridges.RevokeBridge(pb.RevokeBridgeRequest(bridge_id=bridge.bridge_id)), NOT_FOUND)
    await expect_error(globex.stats.GetPoolStats(pb.GetPoolStatsRequest(smtp_id=pool.smtp_id)), NOT_FOUND)
    await expect_error(globex.stats.GetIpStats(pb.GetIpStatsRequest(address="127.0.0.2")), NOT_FOUND)
    await expect_error(
        globex.bridges.CreateBridge(pb.CreateBridgeRequest(name="steal", smtp_id=pool.smtp_id)), NOT_FOUND
    )
    # ... and the same the other way round, including moving an IP into a foreign pool.
    await expect_error(acme.pools.GetPool(pb.GetPoolRequest(smtp_id=gpool.smtp_id)), NOT_FOUND)
    await expect_error(
        acme.ips.AssignPool(pb.AssignPoolRequest(address="127.0.0.2", smtp_id=gpool.smtp_id)), NOT_FOUND
    )
    op = await acme.ips.AssignPool(
        pb.AssignPoolRequest(address="127.0.0.2", smtp_id=(await acme.pools.CreatePool(
            pb.CreatePoolRequest(label="tx", server_id=server.server_id))).smtp_id)
    )
    await expect_error(globex.ips.GetOperation(pb.GetOperationRequest(operation_id=op.operation_id)), NOT_FOUND)
