"""Fixtures and helpers for control-plane tests: a real ControlPlane on a free
port backed by the real embedded Redis, and authenticated gRPC clients."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
import pytest

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.cli.client import STUBS
from control.config import ControlConfig
from control.contract import dkim_seal, rediskeys, routing_delta, snapshot
from control.contract.redis_client import sync_redis_client
from control.server import ControlPlane



class _AuthedStub:
    """A stub whose every call carries the client's bearer token."""

    def __init__(self, stub, metadata):
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, name):
        method = getattr(self._stub, name)
        return lambda request, **kw: method(request, metadata=self._metadata, timeout=kw.pop("timeout", 10), **kw)


class Client:
    """gRPC stubs for one token: client.pools.CreatePool(...), client.ips.AssignPool(...)."""

    def __init__(self, channel: grpc.aio.Channel, token: str | None):
        metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
        self.channel = channel
        for attr, stub in STUBS.items():
            setattr(self, attr, _AuthedStub(stub(channel), metadata))


def start_config(data_dir: Path, redis_url: str, **overrides) -> ControlConfig:
    return ControlConfig(
        data_dir=data_dir, redis_url=redis_url, grpc_listen="127.0.0.1:0",
        publish_check_interval=0.1, reconcile_interval=0.05, grace_seconds=0.5, **overrides,
    )


@pytest.fixture
async def control_plane(tmp_path, redis_url):
    cp = ControlPlane(start_config(tmp_path / "control", redis_url))
    await cp.start()
    yield cp
    await cp.stop(0)


@pytest.fixture
async def channel(control_plane):
    ch = grpc.aio.insecure_channel(control_plane.grpc_address)
    yield ch
    await ch.close()


@pytest.fixture
def admin(control_plane, channel) -> Client:
    return Client(channel, control_plane.admin_token_path.read_text().strip())


@pytest.fixture
async def server(admin) -> pb.MtaServer:
    """MTA server US-1, registered."""
    return await admin.servers.RegisterMtaServer(pb.RegisterMtaServerRequest(hostname="mta1.example.net", zone="US-1"))


@pytest.fixture
def make_account(admin, channel):
    """async make_account(name, tier=pb.PRO) -> (Client, pb.Account)"""

    async def make(name: str, tier: int = pb.PRO):
        reply = await admin.accounts.CreateAccount(pb.CreateAccountRequest(name=name, tier=tier))
        return Client(channel, reply.token), reply.account

    return make


@pytest.fixture
async def acme(make_account):
    client, _ = await make_account("acme", pb.PRO)
    return client


async def sending_account(admin, make_account, server: pb.MtaServer, *, label: str, address: str):
    """A PRO account `acme` with a pool `label` holding `address` and a Bridge `app`:
    (its Client, an account token for the CLI, the pool, the CreateBridge reply)."""
    acme, account = await make_account("acme", pb.PRO)
    token = (await admin.accounts.IssueAccountToken(pb.IssueAccountTokenRequest(user_id=account.user_id))).token
    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label=label, server_id=server.server_id))
    await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address=address, smtp_id=pool.smtp_id))
    bridge = await acme.bridges.CreateBridge(pb.CreateBridgeRequest(name="app", smtp_id=pool.smtp_id))
    return acme, token, pool, bridge


async def expect_error(call, code: grpc.StatusCode, *fragments: str) -> str:
    """Await `call`; assert it fails with `code` and a message containing each fragment."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, f"{info.value.code()}: {info.value.details()}"
    details = info.value.details()
    for fragment in fragments:
        assert fragment in details, f"{fragment!r} not in {details!r}"
    return details


def current_snapshot(redis_url: str, server_id: int) -> snapshot.Snapshot | None:
    """The routing at the version Redis's `current` pointer names (the newest full
    snapshot kept, moved forward by the change log's deltas); None if there is none."""
    r = sync_redis_client(redis_url)
    try:
        version = r.get(rediskeys.snapshot_current_key(server_id))
        if version is None:
            return None
        target = int(version)
        full_key = rediskeys.snapshot_full_key(server_id)
        for _ in range(rediskeys.SNAPSHOT_FULL_READ_ATTEMPTS):  # a compaction may drop it meanwhile
            start = routing_delta.newest_full([int(v) for v in r.hkeys(full_key)], target)
            if start is None:
                return snapshot.decode(r.get(rediskeys.snapshot_key(server_id, target)))
            data = r.hget(full_key, str(start))
            if rediskeys.full_snapshot_in_data_key(data):
                data = r.get(rediskeys.snapshot_full_data_key(server_id, start))
            if data is not None:
                break
        routing = snapshot.decode(data)
        entries = r.xrange(rediskeys.snapshot_changes_key(server_id), min=f"{start + 1}-0", max=f"{target}-0")
        for delta in routing_delta.delta_chain(start, target, (fields[b"d"] for _, fields in entries)):
            routing = routing_delta.apply(routing, delta)
        return routing
    finally:
        r.close()


def stored_dkim_keys(control_plane) -> tuple[bytes, dict[str, bytes]]:
    """The master key and every stored DKIM private key (PEM) by selector, read from
    SQLite and unsealed."""
    master = dkim_seal.load_master_key(control_plane.config.data_dir)
    conn = sqlite3.connect(control_plane.config.db_path)
    try:
        rows = conn.execute("SELECT user_id, domain, selector, sealed_private_key FROM dkim_keys").fetchall()
    finally:
        conn.close()
    return master, {sel: dkim_seal.unseal(master, blob, dkim_seal.key_aad(uid, dom, sel))
                    for uid, dom, sel, blob in rows}
