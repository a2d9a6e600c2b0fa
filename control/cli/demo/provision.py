"""The product flow through the gRPC API, as a customer goes through it: the platform
admin registers the MTA server and creates the account; the account creates its
Pools, provisions IPs into them and opens a Bridge on each, and (for the demo) makes a
DKIM key for its sending domain. Then wait until every data-plane worker serves the
routing that carries them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from ..._pb.poolmta.v1 import poolmta_pb2 as pb
from ..client import STUBS
from . import DemoError
from .plan import ACCOUNT, SENDER_DOMAIN, SERVER_HOSTNAME, ZONE, PoolPlan

RPC_TIMEOUT = 10.0


class Api:
    """The gRPC stubs, every call carrying one bearer token and a deadline."""

    def __init__(self, channel: grpc.aio.Channel, token: str):
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._stubs = {name: stub(channel) for name, stub in STUBS.items()}

    async def __call__(self, service: str, method: str, request):
        try:
            return await getattr(self._stubs[service], method)(request, metadata=self._metadata, timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            raise DemoError(f"{method} failed: {exc.code().name}: {exc.details()}") from None


@dataclass(frozen=True)
class ProvisionedPool:
    """One Pool of the plan as created: the Pool, its Bridge and the Bridge's secret."""

    plan: PoolPlan
    pool: pb.Pool
    bridge: pb.Bridge
    secret: str


@dataclass(frozen=True)
class Tenant:
    """The demo account as provisioned: its token, Pools and Bridges (with their secrets),
    and the DKIM key of its sending domain (None: its mail goes unsigned)."""

    server: pb.MtaServer
    account: pb.Account
    token: str
    pools: tuple[ProvisionedPool, ...]
    dkim_key: pb.DkimKey | None = None


async def provision(channel: grpc.aio.Channel, admin_token: str, pools: Sequence[PoolPlan],
                    account_name: str = ACCOUNT, *, dkim_algorithm: int | None = None,
                    dkim_domain: str = SENDER_DOMAIN) -> Tenant:
    """The product flow: register the MTA server, create the PRO account, generate a
    DKIM key of `dkim_algorithm` (pb.RSA_SHA256, pb.ED25519_SHA256; None: none) for
    `dkim_domain`, create its Pools (the first becomes the default), provision the IPs
    into them, open a Bridge on each."""
    admin = Api(channel, admin_token)
    server = await admin("servers", "RegisterMtaServer", pb.RegisterMtaServerRequest(hostname=SERVER_HOSTNAME,
                                                                                      zone=ZONE))
    created = await admin("accounts", "CreateAccount", pb.CreateAccountRequest(name=account_name, tier=pb.PRO))
    tenant = Api(channel, created.token)
    dkim_key = None
    if dkim_algorithm is not None:
        dkim_key = await tenant("dkim", "GenerateDkimKey", pb.GenerateDkimKeyRequest(domain=dkim_domain,
                                                                                     algorithm=dkim_algorithm))
    made = []
    for plan in pools:
        pool = await tenant("pools", "CreatePool", pb.CreatePoolRequest(
            label=plan.label, server_id=server.server_id, tag=plan.tag, feed_type=plan.feed_type,
            headers=[pb.Header(name=name, value=value) for name, value in plan.headers]))
        for address in plan.addresses:
            await tenant("ips", "ProvisionIp", pb.ProvisionIpRequest(address=address, smtp_id=pool.smtp_id,
                                                                     server_id=server.server_id))
        bridge = await tenant("bridges", "CreateBridge", pb.CreateBridgeRequest(
            name=plan.bridge, smtp_id=pool.smtp_id, feed_type=plan.feed_type))
        pool = await tenant("pools", "GetPool", pb.GetPoolRequest(smtp_id=pool.smtp_id))
        made.append(ProvisionedPool(plan, pool, bridge.bridge, bridge.secret))
    return Tenant(server, created.account, created.token, tuple(made), dkim_key)


async def wait_for_routing(channel: grpc.aio.Channel, admin_token: str, server_id: int, workers: int,
                           timeout: float, check=None) -> pb.RoutingStatus:
    """Until `workers` live data-plane workers all serve the server's current routing version."""
    admin = Api(channel, admin_token)
    deadline = time.monotonic() + timeout
    while True:
        status = await admin("servers", "GetRoutingStatus", pb.GetRoutingStatusRequest(server_id=server_id))
        if (len(status.workers) >= workers
                and all(w.version >= status.routing_version for w in status.workers)):
            return status
        if check is not None:
            check()
        if time.monotonic() > deadline:
            serving = ", ".join(f"{w.worker_id} v{w.version}" for w in status.workers) or "no live worker"
            raise DemoError(f"the data plane does not serve routing version {status.routing_version} after "
                            f"{timeout:g}s ({serving})")
        await asyncio.sleep(0.1)
