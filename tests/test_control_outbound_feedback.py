"""The control plane's side of the outbound feedback loop: an MTA server's and a Pool's
own bounce domain and a Bridge's switch of the DSNs its senders get, through the API,
SQLite, the snapshot and back; databases and snapshots from before them still read."""

from __future__ import annotations

import sqlite3

import grpc
import msgpack
import pytest

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.contract import snapshot
from control.contract.bounce_domain import BounceDomainError, check_bounce_domain
from control.store import MIGRATIONS, Store
from control.store.schema import _statements
from tests.control_support import current_snapshot, expect_error


async def _pool_and_bridge(client, server, label="promo"):
    pool = await client.pools.CreatePool(pb.CreatePoolRequest(label=label, server_id=server.server_id))
    bridge = await client.bridges.CreateBridge(pb.CreateBridgeRequest(name=f"{label}-app", smtp_id=pool.smtp_id))
    return pool, bridge.bridge


async def test_a_pool_bounces_to_the_server_hostname_until_it_names_its_own_domain(acme, server, redis_url):
    pool, _ = await _pool_and_bridge(acme, server)
    assert pool.bounce_domain == ""
    assert current_snapshot(redis_url, server.server_id).pool(pool.smtp_id).bounce_domain == ""

    changed = await acme.pools.SetPoolBounceDomain(
        pb.SetPoolBounceDomainRequest(smtp_id=pool.smtp_id, bounce_domain="Bounces.Acme.Example."))
    assert changed.bounce_domain == "bounces.acme.example"
    assert (await acme.pools.GetPool(pb.GetPoolRequest(smtp_id=pool.smtp_id))).bounce_domain == "bounces.acme.example"
    snap = current_snapshot(redis_url, server.server_id)
    assert snap.pool(pool.smtp_id).bounce_domain == "bounces.acme.example"

    cleared = await acme.pools.SetPoolBounceDomain(pb.SetPoolBounceDomainRequest(smtp_id=pool.smtp_id))
    assert cleared.bounce_domain == ""
    after = current_snapshot(redis_url, server.server_id)
    assert after.pool(pool.smtp_id).bounce_domain == "" and after.version > snap.version


BAD_BOUNCE_DOMAINS = [
    ("bounces..acme.example", "not a valid domain name"),
    ("bücher.example", "A-label"),
    ("-bounces.example", "not a valid domain name"),
    ("a" * 300 + ".example", "the limit is 211"),
    ("bounces.example\r\nRCPT TO:<x@y>", "not a valid domain name"),
]


@pytest.mark.parametrize("bad, fragment", BAD_BOUNCE_DOMAINS)
async def test_a_bad_bounce_domain_is_invalid_argument_with_a_short_quote(acme, server, bad, fragment):
    pool, _ = await _pool_and_bridge(acme, server)
    details = await expect_error(
        acme.pools.SetPoolBounceDomain(pb.SetPoolBounceDomainRequest(smtp_id=pool.smtp_id, bounce_domain=bad)),
        grpc.StatusCode.INVALID_ARGUMENT, fragment, "bounce domain")
    assert "\r" not in details and "\n" not in details and len(details) < 300


async def test_a_server_bounces_to_its_hostname_until_the_admin_names_a_domain(admin, acme, server, redis_url):
    pool, _ = await _pool_and_bridge(acme, server)
    assert server.bounce_domain == ""
    before = current_snapshot(redis_url, server.server_id)
    assert before.bounce_domain == ""

    changed = await admin.servers.SetMtaServerBounceDomain(
        pb.SetMtaServerBounceDomainRequest(server_id=server.server_id, bounce_domain="Bounces.MTA1.Example."))
    assert changed.bounce_domain == "bounces.mta1.example" and changed.routing_version > before.version
    got = await admin.servers.GetMtaServer(pb.GetMtaServerRequest(server_id=server.server_id))
    assert got.bounce_domain == "bounces.mta1.example"
    listed = await admin.servers.ListMtaServers(pb.ListMtaServersRequest())
    assert [s.bounce_domain for s in listed.servers] == ["bounces.mta1.example"]
    snap = current_snapshot(redis_url, server.server_id)
    assert snap.bounce_domain == "bounces.mta1.example" and snap.version == changed.routing_version
    # The pool keeps saying "the server's": the data plane resolves it.
    assert snap.pool(pool.smtp_id).bounce_domain == ""

    same = await admin.servers.SetMtaServerBounceDomain(
        pb.SetMtaServerBounceDomainRequest(server_id=server.server_id, bounce_domain="bounces.mta1.example"))
    assert same.routing_version == changed.routing_version

    cleared = await admin.servers.SetMtaServerBounceDomain(
        pb.SetMtaServerBounceDomainRequest(server_id=server.server_id))
    assert cleared.bounce_domain == "" and cleared.routing_version > changed.routing_version
    after = current_snapshot(redis_url, server.server_id)
    assert after.bounce_domain == "" and after.version == cleared.routing_version


async def test_a_server_may_be_registered_with_its_bounce_domain(admin, redis_url):
    registered = await admin.servers.RegisterMtaServer(pb.RegisterMtaServerRequest(
        hostname="mta2.example.net", zone="EU-1", bounce_domain="Bounces.MTA2.Example"))
    assert registered.bounce_domain == "bounces.mta2.example"
    assert current_snapshot(redis_url, registered.server_id).bounce_domain == "bounces.mta2.example"
    await expect_error(admin.servers.RegisterMtaServer(pb.RegisterMtaServerRequest(
        hostname="mta3.example.net", zone="EU-1", bounce_domain="bounces..example")),
        grpc.StatusCode.INVALID_ARGUMENT, "not a valid domain name", "bounce domain")
    listed = await admin.servers.ListMtaServers(pb.ListMtaServersRequest())
    assert [s.hostname for s in listed.servers] == ["mta2.example.net"]


@pytest.mark.parametrize("bad, fragment", BAD_BOUNCE_DOMAINS)
async def test_a_bad_server_bounce_domain_is_invalid_argument_with_a_short_quote(admin, server, bad, fragment):
    details = await expect_error(
        admin.servers.SetMtaServerBounceDomain(
            pb.SetMtaServerBounceDomainRequest(server_id=server.server_id, bounce_domain=bad)),
        grpc.StatusCode.INVALID_ARGUMENT, fragment, "bounce domain")
    assert "\r" not in details and "\n" not in details and len(details) < 300
    assert (await admin.servers.GetMtaServer(pb.GetMtaServerRequest(server_id=server.server_id))).bounce_domain == ""


async def test_only_the_admin_sets_a_servers_bounce_domain(admin, acme, server):
    request = pb.SetMtaServerBounceDomainRequest(server_id=server.server_id, bounce_domain="bounces.acme.example")
    await expect_error(acme.servers.SetMtaServerBounceDomain(request), grpc.StatusCode.PERMISSION_DENIED,
                       "admin token")
    await expect_error(admin.servers.SetMtaServerBounceDomain(
        pb.SetMtaServerBounceDomainRequest(server_id=999, bounce_domain="bounces.example")),
        grpc.StatusCode.NOT_FOUND, "999")
    assert (await admin.servers.GetMtaServer(pb.GetMtaServerRequest(server_id=server.server_id))).bounce_domain == ""


async def test_bridges_send_dsns_until_switched_off(acme, server, redis_url):
    _, bridge = await _pool_and_bridge(acme, server)
    assert bridge.send_dsns
    assert current_snapshot(redis_url, server.server_id).bridges[0].send_dsns is True

    off = await acme.bridges.SetBridgeSendDsns(pb.SetBridgeSendDsnsRequest(bridge_id=bridge.bridge_id))
    assert off.send_dsns is False
    assert (await acme.bridges.GetBridge(pb.GetBridgeRequest(bridge_id=bridge.bridge_id))).send_dsns is False
    assert current_snapshot(redis_url, server.server_id).bridges[0].send_dsns is False

    on = await acme.bridges.SetBridgeSendDsns(pb.SetBridgeSendDsnsRequest(bridge_id=bridge.bridge_id, send_dsns=True))
    assert on.send_dsns and current_snapshot(redis_url, server.server_id).bridges[0].send_dsns

    await acme.bridges.RevokeBridge(pb.RevokeBridgeRequest(bridge_id=bridge.bridge_id))
    await expect_error(acme.bridges.SetBridgeSendDsns(pb.SetBridgeSendDsnsRequest(bridge_id=bridge.bridge_id)),
                       grpc.StatusCode.FAILED_PRECONDITION, "revoked")


async def test_another_accounts_pool_and_bridge_are_not_found(make_account, server):
    acme, _ = await make_account("acme")
    globex, _ = await make_account("globex")
    pool, bridge = await _pool_and_bridge(acme, server)
    await expect_error(globex.pools.SetPoolBounceDomain(
        pb.SetPoolBounceDomainRequest(smtp_id=pool.smtp_id, bounce_domain="bounces.globex.example")),
        grpc.StatusCode.NOT_FOUND)
    await expect_error(globex.bridges.SetBridgeSendDsns(pb.SetBridgeSendDsnsRequest(bridge_id=bridge.bridge_id)),
                       grpc.StatusCode.NOT_FOUND)
    assert (await acme.pools.GetPool(pb.GetPoolRequest(smtp_id=pool.smtp_id))).bounce_domain == ""


def test_a_database_from_before_gets_the_defaults(tmp_path):
    path = tmp_path / "poolmta.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for statement in _statements(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("INSERT INTO schema_version (version) VALUES (1)")
    conn.execute("INSERT INTO accounts VALUES (1, 'acme', 'PRO', 0)")
    conn.execute("INSERT INTO mta_servers (server_id, hostname, zone, created_at) VALUES (1, 'mta1.example.net', "
                 "'US-1', 0)")
    conn.execute("INSERT INTO pools (smtp_id, user_id, server_id, label, tag, internal_name, created_at) "
                 "VALUES (5, 1, 1, 'promo', 'promo', 'promo-1-1-pool-5', 0)")
    conn.execute("INSERT INTO bridges (bridge_id, user_id, name, smtp_id, server_id, username, secret_hash, "
                 "created_at) VALUES (7, 1, 'app', 5, 1, 'br-x', 'h', 0)")
    conn.close()
    store = Store.open(path)
    try:
        assert store.schema_version() == len(MIGRATIONS)
        assert store.pool(5).bounce_domain == ""
        assert store.server(1).bounce_domain == ""
        assert store.bridge(7).send_dsns is True
    finally:
        store.close()


def test_a_snapshot_from_before_decodes_with_the_defaults():
    new = snapshot.Snapshot(server_id=1, version=2, hostname="mta1.example.net", zone="US-1", pools=(
        snapshot.PoolRoute(smtp_id=5, user_id=1, internal_name="p", feed_type="", headers=(), ips=()),),
        bridges=(snapshot.BridgeRoute(bridge_id=7, user_id=1, name="app", username="br-x", secret_hash="h",
                                      smtp_id=5, feed_type=""),))
    doc = msgpack.unpackb(snapshot.encode(new), raw=False)
    del doc["bounce_domain"]
    del doc["pools"][0]["bounce_domain"]
    del doc["bridges"][0]["send_dsns"]
    old = snapshot.decode(msgpack.packb(doc, use_bin_type=True))
    assert old == new
    assert old.pools[0].bounce_domain == "" and old.bridges[0].send_dsns is True
    assert old.bounce_domain == ""


def test_a_servers_bounce_domain_survives_the_snapshot_round_trip():
    named = snapshot.Snapshot(server_id=1, version=3, hostname="mta1.example.net", zone="US-1",
                              bounce_domain="bounces.mta1.example")
    assert snapshot.decode(snapshot.encode(named)) == named
    assert snapshot.decode(snapshot.encode(named)).bounce_domain == "bounces.mta1.example"


def test_both_planes_hold_one_bounce_domain_rule():
    from dataplane.verp import VerpError, check_bounce_domain as verp_check

    for good in ("MTA1.Example.NET.", "xn--bcher-kva.example", "a" * 63 + ".example"):
        assert check_bounce_domain(good) == verp_check(good) == good.rstrip(".").lower()
    for bad in ("", "a..b", "a" * 64 + ".example", "ex ample.com", "x" * 212):
        with pytest.raises(BounceDomainError):
            check_bounce_domain(bad)
        with pytest.raises(VerpError):
            verp_check(bad)
