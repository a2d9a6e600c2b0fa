"""Bridges: generated credentials shown once, stored hashed, revocable and rotatable one by one."""

import grpc

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.contract.secrets import verify_secret
from control.server import ControlPlane
from tests.control_support import Client, current_snapshot, expect_error, start_config


async def _pool(acme, server, label="promo"):
    return await acme.pools.CreatePool(pb.CreatePoolRequest(label=label, server_id=server.server_id, feed_type="newsletter"))


async def test_secret_is_returned_once_and_stored_hashed(acme, server, redis_url, control_plane):
    pool = await _pool(acme, server)
    created = await acme.bridges.CreateBridge(pb.CreateBridgeRequest(name="web", smtp_id=pool.smtp_id, feed_type="tx"))
    assert created.bridge.username.startswith("br-") and len(created.secret) >= 40
    listed = (await acme.bridges.ListBridges(pb.ListBridgesRequest())).bridges
    assert [b.name for b in listed] == ["web"]
    assert created.secret not in str(listed) and created.secret not in str(
        await acme.bridges.GetBridge(pb.GetBridgeRequest(bridge_id=created.bridge.bridge_id))
    )
    route = current_snapshot(redis_url, server.server_id).bridges[0]
    assert route.username == created.bridge.username and route.feed_type == "tx"
    assert created.secret not in route.secret_hash
    assert verify_secret(created.secret, route.secret_hash)
    assert not verify_secret(created.secret + "x", route.secret_hash)
    db = (control_plane.config.db_path).read_bytes()
    assert created.secret.encode() not in db


async def test_bridges_are_revoked_and_rotated_one_by_one(acme, server, redis_url):
    pool = await _pool(acme, server)
    web = await acme.bridges.CreateBridge(pb.CreateBridgeRequest(name="web", smtp_id=pool.smtp_id))
    mobile = await acme.bridges.CreateBridge(pb.CreateBridgeRequest(name="mobile", smtp_id=pool.smtp_id))
    await expect_error(
        acme.bridges.CreateBridge(pb.CreateBridgeRequest(name="web", smtp_id=pool.smtp_id)),
        grpc.StatusCode.ALREADY_EXISTS, "web",
    )
    rotated = await acme.bridges.RotateBridgeSecret(pb.RotateBridgeSecretRequest(bridge_id=web.bridge.bridge_id))
    assert rotated.secret != web.secret and rotated.bridge.secret_rotate_time.seconds > 0
    routes = {b.username: b for b in current_snapshot(redis_url, server.server_id).bridges}
    assert verify_secret(rotated.secret, routes[web.bridge.username].secret_hash)
    assert not verify_secret(web.secret, routes[web.bridge.username].secret_hash)
    assert verify_secret(mobile.secret, routes[mobile.bridge.username].secret_hash)

    revoked = await acme.bridges.RevokeBridge(pb.RevokeBridgeRequest(bridge_id=mobile.bridge.bridge_id))
    assert revoked.revoked
    routes = {b.username for b in current_snapshot(redis_url, server.server_id).bridges}
    assert routes == {web.bridge.username}
    await expect_error(
        acme.bridges.RotateBridgeSecret(pb.RotateBridgeSecretRequest(bridge_id=mobile.bridge.bridge_id)),
        grpc.StatusCode.FAILED_PRECONDITION, "revoked",
    )


async def test_bridges_need_a_pool_on_dedicated_tiers(acme, server):
    await expect_error(acme.bridges.CreateBridge(pb.CreateBridgeRequest(name="web")), grpc.StatusCode.INVALID_ARGUMENT, "smtp_id")
    await expect_error(
        acme.bridges.CreateBridge(pb.CreateBridgeRequest(name="web", smtp_id=424242)), grpc.StatusCode.NOT_FOUND
    )


async def test_trusted_networks_are_validated_and_never_overlap_on_a_server(make_account, server, redis_url):
    acme, _ = await make_account("acme")
    globex, _ = await make_account("globex")
    pool = await _pool(acme, server)
    gpool = await _pool(globex, server, "bulk")
    await expect_error(
        acme.bridges.CreateBridge(pb.CreateBridgeRequest(name="x", smtp_id=pool.smtp_id, trusted_networks=["10.0.0.1/8"])),
        grpc.StatusCode.INVALID_ARGUMENT, "CIDR",
    )
    await expect_error(
        acme.bridges.CreateBridge(pb.CreateBridgeRequest(name="x", smtp_id=pool.smtp_id,
                                                         trusted_networks=["10.0.0.0/24", "10.0.0.128/25"])),
        grpc.StatusCode.INVALID_ARGUMENT, "overlap",
    )
    app = await acme.bridges.CreateBridge(
        pb.CreateBridgeRequest(name="app", smtp_id=pool.smtp_id, trusted_networks=["127.0.10.0/24", "::1/128"])
    )
    assert list(app.bridge.trusted_networks) == ["127.0.10.0/24", "::1/128"]
    await expect_error(
        globex.bridges.CreateBridge(pb.CreateBridgeRequest(name="g", smtp_id=gpool.smtp_id, trusted_networks=["127.0.10.128/25"])),
        grpc.StatusCode.FAILED_PRECONDITION, "overlaps",
    )
    other = await globex.bridges.CreateBridge(pb.CreateBridgeRequest(name="g", smtp_id=gpool.smtp_id))
    await expect_error(
        globex.bridges.SetBridgeTrustedNetworks(
            pb.SetBridgeTrustedNetworksRequest(bridge_id=other.bridge.bridge_id, trusted_networks=["127.0.10.7/32"])),
        grpc.StatusCode.FAILED_PRECONDITION, "overlaps",
    )
    # A bridge may replace its own networks with overlapping ones; revoking frees them.
    await acme.bridges.SetBridgeTrustedNetworks(
        pb.SetBridgeTrustedNetworksRequest(bridge_id=app.bridge.bridge_id, trusted_networks=["127.0.10.0/25"]))
    snap = current_snapshot(redis_url, server.server_id)
    assert {b.name: b.trusted_networks for b in snap.bridges}["app"] == ("127.0.10.0/25",)
    await acme.bridges.RevokeBridge(pb.RevokeBridgeRequest(bridge_id=app.bridge.bridge_id))
    await globex.bridges.SetBridgeTrustedNetworks(
        pb.SetBridgeTrustedNetworksRequest(bridge_id=other.bridge.bridge_id, trusted_networks=["127.0.10.7/32"]))


async def test_trusted_networks_have_a_minimum_prefix_and_mapped_ipv6_is_ipv4(acme, server):
    """Issue 11 item 3: /1 or ::/0 would make a bridge an open relay for half the Internet."""
    pool = await _pool(acme, server)
    for wide, minimum in (("128.0.0.0/1", "/24"), ("10.0.0.0/23", "/24"), ("::/0", "/48"),
                          ("2001:db8::/47", "/48"), ("::ffff:10.0.0.0/104", "/24")):
        await expect_error(
            acme.bridges.CreateBridge(pb.CreateBridgeRequest(name="x", smtp_id=pool.smtp_id, trusted_networks=[wide])),
            grpc.StatusCode.INVALID_ARGUMENT, minimum,
        )
    app = await acme.bridges.CreateBridge(pb.CreateBridgeRequest(
        name="app", smtp_id=pool.smtp_id, trusted_networks=["192.0.2.0/24", "2001:db8::/48", "::ffff:198.51.100.0/120"]))
    assert list(app.bridge.trusted_networks) == ["192.0.2.0/24", "2001:db8::/48", "198.51.100.0/24"]
    # The mapped form of an IPv4 network already trusted overlaps it.
    await expect_error(
        acme.bridges.CreateBridge(pb.CreateBridgeRequest(name="y", smtp_id=pool.smtp_id,
                                                         trusted_networks=["::ffff:192.0.2.7/128"])),
        grpc.StatusCode.FAILED_PRECONDITION, "overlaps",
    )


async def test_an_overlap_with_another_account_reveals_nothing_about_it(make_account, server):
    acme, _ = await make_account("acme")
    globex, _ = await make_account("globex")
    pool, gpool = await _pool(acme, server), await _pool(globex, server, "bulk")
    await acme.bridges.CreateBridge(pb.CreateBridgeRequest(name="secret-app", smtp_id=pool.smtp_id,
                                                           trusted_networks=["192.0.2.0/24"]))
    with_other = await expect_error(
        globex.bridges.CreateBridge(pb.CreateBridgeRequest(name="g", smtp_id=gpool.smtp_id,
                                                           trusted_networks=["192.0.2.128/25"])),
        grpc.StatusCode.FAILED_PRECONDITION, "overlaps a network already trusted on this MTA server",
    )
    assert "192.0.2.0" not in with_other and "secret-app" not in with_other
    own = await expect_error(
        acme.bridges.CreateBridge(pb.CreateBridgeRequest(name="b", smtp_id=pool.smtp_id,
                                                         trusted_networks=["192.0.2.128/25"])),
        grpc.StatusCode.FAILED_PRECONDITION, "secret-app",
    )
    assert "192.0.2.0/24" in own


async def test_the_platform_admin_may_allow_wider_trusted_networks(tmp_path, redis_url):
    cp = ControlPlane(start_config(tmp_path / "control", redis_url, min_trusted_prefix_v4=16, min_trusted_prefix_v6=32))
    await cp.start()
    try:
        async with grpc.aio.insecure_channel(cp.grpc_address) as channel:
            admin = Client(channel, cp.admin_token_path.read_text().strip())
            server = await admin.servers.RegisterMtaServer(pb.RegisterMtaServerRequest(hostname="mta1.example.net", zone="US-1"))
            reply = await admin.accounts.CreateAccount(pb.CreateAccountRequest(name="acme", tier=pb.PRO))
            acme = Client(channel, reply.token)
            pool = await _pool(acme, server)
            app = await acme.bridges.CreateBridge(pb.CreateBridgeRequest(
                name="app", smtp_id=pool.smtp_id, trusted_networks=["10.1.0.0/16", "2001:db8::/32"]))
            assert list(app.bridge.trusted_networks) == ["10.1.0.0/16", "2001:db8::/32"]
            await expect_error(
                acme.bridges.CreateBridge(pb.CreateBridgeRequest(name="x", smtp_id=pool.smtp_id,
                                                                 trusted_networks=["10.0.0.0/15"])),
                grpc.StatusCode.INVALID_ARGUMENT, "/16",
            )
    finally:
        await cp.stop(0)
