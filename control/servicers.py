"""gRPC servicers: thin adapters from protobuf to the Registry and back.

Every method goes through `rpc(...)`, the one wrapper for unary and streaming
methods: it authenticates the caller (admin or account), maps DomainErrors to
their gRPC status with the domain's message, turns anything unexpected into
INTERNAL with a generic message (the traceback goes to the log, never to the
client), and after a routing change has the publisher bring Redis up to date
before the reply.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from dataclasses import dataclass

import grpc
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from . import convert, reports_reader, stats_reader, validation
from .suppressions import SuppressionList
from ._pb.poolmta.v1 import poolmta_pb2 as pb
from ._pb.poolmta.v1 import poolmta_pb2_grpc as rpc_pb
from .auth import Authenticator
from .contract import acks, rediskeys
from .contract.runtime import reraise_if_cancelling
from .errors import DomainError, InvalidArgument, NotFound, Unavailable
from .publisher import SnapshotPublisher
from .reconciler import ChangeFeed
from .registry import Registry

log = logging.getLogger(__name__)

ADMIN = "admin"
ACCOUNT = "account"
INTERNAL_MESSAGE = "internal error; the control-plane log has the details"
STATS_POLL_SECONDS = 0.25
DEFAULT_UNATTRIBUTED_LIMIT = 50


@dataclass
class Services:
    """What the servicers share."""

    registry: Registry
    auth: Authenticator
    publisher: SnapshotPublisher
    redis: aioredis.Redis
    feed: ChangeFeed

    async def routing_changed(self) -> None:
        """Publish the new routing now; if Redis is down the publisher's loop will."""
        try:
            await self.publisher.sync()
        except (RedisError, OSError) as exc:
            log.warning("routing change saved; publishing deferred until Redis answers (%s)", exc)
        await self.feed.notify()


def _caller(services: Services, context, who: str):
    metadata = context.invocation_metadata()
    return services.auth.admin(metadata) if who == ADMIN else services.auth.account(metadata)


async def _abort(context, exc: BaseException) -> None:
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    if isinstance(exc, DomainError):
        await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
    log.error("unexpected error in RPC", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def rpc(who: str, *, changes_routing: bool = False):
    """Wrap a servicer method `(self, request, context, caller)` as a gRPC handler."""

    def decorate(method):
        if inspect.isasyncgenfunction(method):

            @functools.wraps(method)
            async def streaming(self, request, context):
                try:
                    caller = _caller(self.services, context, who)
                    async for reply in method(self, request, context, caller):
                        yield reply
                except Exception as exc:  # noqa: BLE001 - mapped to a status, logged if unexpected
                    await _abort(context, exc)

            return streaming

        @functools.wraps(method)
        async def unary(self, request, context):
            try:
                caller = _caller(self.services, context, who)
                reply = method(self, request, context, caller)
                if inspect.isawaitable(reply):
                    reply = await reply
            except Exception as exc:  # noqa: BLE001 - mapped to a status, logged if unexpected
                await _abort(context, exc)
            if changes_routing:
                await self.services.routing_changed()
            return reply

        return unary

    return decorate


class _Servicer:
    def __init__(self, services: Services):
        self.services = services
        self.registry = services.registry


class AccountServicer(_Servicer, rpc_pb.AccountServiceServicer):
    @rpc(ADMIN)
    def CreateAccount(self, request, context, admin):
        account, token = self.registry.create_account(request.name, convert.tier_name(request.tier))
        return pb.CreateAccountResponse(account=convert.account(account), token=token)

    @rpc(ADMIN)
    def GetAccount(self, request, context, admin):
        return convert.account(self.registry.get_account(request.user_id))

    @rpc(ADMIN)
    def ListAccounts(self, request, context, admin):
        return pb.ListAccountsResponse(accounts=[convert.account(a) for a in self.registry.list_accounts()])

    @rpc(ADMIN)
    def SetAccountTier(self, request, context, admin):
        return convert.account(self.registry.set_account_tier(request.user_id, convert.tier_name(request.tier)))

    @rpc(ADMIN)
    def IssueAccountToken(self, request, context, admin):
        return pb.IssueAccountTokenResponse(token=self.registry.issue_token(request.user_id, request.revoke_existing))


class MtaServerServicer(_Servicer, rpc_pb.MtaServerServiceServicer):
    @rpc(ADMIN, changes_routing=True)
    def RegisterMtaServer(self, request, context, admin):
        return convert.server(self.registry.register_server(request.hostname, request.zone))

    @rpc(ADMIN)
    def GetMtaServer(self, request, context, admin):
        return convert.server(self.registry.get_server(request.server_id))

    @rpc(ADMIN)
    def ListMtaServers(self, request, context, admin):
        return pb.ListMtaServersResponse(servers=[convert.server(s) for s in self.registry.list_servers()])

    @rpc(ADMIN, changes_routing=True)
    def ProvisionSharedIp(self, request, context, admin):
        return convert.ip(
            self.registry.provision_shared_ip(request.server_id, request.address, request.weight, request.hostname)
        )

    @rpc(ADMIN)
    def ListSharedIps(self, request, context, admin):
        return pb.ListIpsResponse(ips=[convert.ip(i) for i in self.registry.list_shared_ips(request.server_id)])

    @rpc(ADMIN, changes_routing=True)
    def ReleaseSharedIp(self, request, context, admin):
        self.registry.release_shared_ip(request.address)
        return pb.ReleaseSharedIpResponse()

    @rpc(ADMIN)
    async def RepublishSnapshots(self, request, context, admin):
        if request.server_id:
            self.registry.get_server(request.server_id)
        try:
            done = await self.services.publisher.republish(request.server_id)
        except (RedisError, OSError) as exc:
            raise Unavailable(f"Redis is unreachable, nothing was republished: {exc}") from None
        return pb.RepublishSnapshotsResponse(
            snapshots=[pb.PublishedSnapshot(server_id=s, version=v) for s, v in done]
        )

    @rpc(ADMIN)
    async def GetRoutingStatus(self, request, context, admin):
        server = self.registry.get_server(request.server_id)
        try:
            published = await self.services.publisher.published_version(server.server_id)
            live = await acks.live_workers(self.services.redis, server.server_id)
        except (RedisError, OSError) as exc:
            raise Unavailable(f"Redis is unreachable: {exc}") from None
        return pb.RoutingStatus(
            server_id=server.server_id, routing_version=server.routing_version, published_version=published,
            workers=[pb.WorkerAck(worker_id=a.worker_id, version=a.version) for a in live],
        )

    @rpc(ADMIN)
    async def ListUnattributedReports(self, request, context, admin):
        limit = request.limit or DEFAULT_UNATTRIBUTED_LIMIT
        if not 0 < limit <= rediskeys.UNATTRIBUTED_KEPT:
            raise InvalidArgument(f"limit must be 1-{rediskeys.UNATTRIBUTED_KEPT} (0 = {DEFAULT_UNATTRIBUTED_LIMIT})")
        if request.server_id:
            server_ids = [self.registry.get_server(request.server_id).server_id]
        else:
            server_ids = [s.server_id for s in self.registry.list_servers()]
        try:
            found = await reports_reader.unattributed_reports(self.services.redis, server_ids, limit)
        except (RedisError, OSError) as exc:
            raise Unavailable(f"Redis is unreachable: {exc}") from None
        return convert.unattributed_reports(found)


class PoolServicer(_Servicer, rpc_pb.PoolServiceServicer):
    @rpc(ACCOUNT, changes_routing=True)
    def CreatePool(self, request, context, account):
        return convert.pool(
            self.registry.create_pool(
                account, label=request.label, server_id=request.server_id, tag=request.tag,
                feed_type=request.feed_type, headers=convert.headers_in(request.headers),
            )
        )

    @rpc(ACCOUNT)
    def GetPool(self, request, context, account):
        return convert.pool(self.registry.get_pool(account, request.smtp_id))

    @rpc(ACCOUNT)
    def ListPools(self, request, context, account):
        return pb.ListPoolsResponse(pools=[convert.pool(p) for p in self.registry.list_pools(account)])

    @rpc(ACCOUNT)
    def RenamePool(self, request, context, account):
        return convert.pool(self.registry.rename_pool(account, request.smtp_id, request.label))

    @rpc(ACCOUNT)
    def SetDefaultPool(self, request, context, account):
        return convert.pool(self.registry.set_default_pool(account, request.smtp_id))

    @rpc(ACCOUNT, changes_routing=True)
    def DeletePool(self, request, context, account):
        self.registry.delete_pool(account, request.smtp_id)
        return pb.DeletePoolResponse()

    @rpc(ACCOUNT, changes_routing=True)
    def SetPoolHeaders(self, request, context, account):
        return convert.pool(
            self.registry.set_pool_headers(account, request.smtp_id, convert.headers_in(request.headers))
        )

    @rpc(ACCOUNT, changes_routing=True)
    def SetPoolFeedType(self, request, context, account):
        return convert.pool(self.registry.set_pool_feed_type(account, request.smtp_id, request.feed_type))

    @rpc(ACCOUNT, changes_routing=True)
    def SetPoolBounceDomain(self, request, context, account):
        return convert.pool(self.registry.set_pool_bounce_domain(account, request.smtp_id, request.bounce_domain))


class IpServicer(_Servicer, rpc_pb.IpServiceServicer):
    @rpc(ACCOUNT, changes_routing=True)
    def ProvisionIp(self, request, context, account):
        return convert.ip(
            self.registry.provision_ip(
                account, address=request.address, smtp_id=request.smtp_id, server_id=request.server_id,
                weight=request.weight, hostname=request.hostname,
            )
        )

    @rpc(ACCOUNT)
    def GetIp(self, request, context, account):
        return convert.ip(self.registry.get_ip(account, request.address))

    @rpc(ACCOUNT)
    def ListIps(self, request, context, account):
        return pb.ListIpsResponse(ips=[convert.ip(i) for i in self.registry.list_ips(account, request.smtp_id)])

    @rpc(ACCOUNT)
    async def AssignPool(self, request, context, account):
        op = self.registry.assign_pool(account, request.address, request.smtp_id)
        await self.services.feed.notify()
        return convert.operation(op)

    @rpc(ACCOUNT)
    def GetOperation(self, request, context, account):
        return convert.operation(self.registry.get_operation(account, request.operation_id))

    @rpc(ACCOUNT)
    async def WatchOperation(self, request, context, account):
        last = None
        while True:
            op = self.registry.get_operation(account, request.operation_id)
            if op != last:
                yield convert.operation(op)
                last = op
            if op.finished:
                return
            await self.services.feed.wait(0.5)

    @rpc(ACCOUNT, changes_routing=True)
    def SetIpWeight(self, request, context, account):
        return convert.ip(self.registry.set_ip_weight(account, request.address, request.weight))

    @rpc(ACCOUNT, changes_routing=True)
    def PauseIp(self, request, context, account):
        return convert.ip(self.registry.pause_ip(account, request.address))

    @rpc(ACCOUNT, changes_routing=True)
    def ResumeIp(self, request, context, account):
        return convert.ip(self.registry.resume_ip(account, request.address))

    @rpc(ACCOUNT, changes_routing=True)
    def ReleaseIp(self, request, context, account):
        self.registry.release_ip(account, request.address)
        return pb.ReleaseIpResponse()


class BridgeServicer(_Servicer, rpc_pb.BridgeServiceServicer):
    @rpc(ACCOUNT, changes_routing=True)
    def CreateBridge(self, request, context, account):
        bridge, secret = self.registry.create_bridge(
            account, name=request.name, smtp_id=request.smtp_id, server_id=request.server_id,
            feed_type=request.feed_type, trusted_networks=list(request.trusted_networks),
        )
        return pb.BridgeWithSecret(bridge=convert.bridge(bridge), secret=secret)

    @rpc(ACCOUNT)
    def GetBridge(self, request, context, account):
        return convert.bridge(self.registry.get_bridge(account, request.bridge_id))

    @rpc(ACCOUNT)
    def ListBridges(self, request, context, account):
        return pb.ListBridgesResponse(
            bridges=[convert.bridge(b) for b in self.registry.list_bridges(account, request.smtp_id)]
        )

    @rpc(ACCOUNT, changes_routing=True)
    def RevokeBridge(self, request, context, account):
        return convert.bridge(self.registry.revoke_bridge(account, request.bridge_id))

    @rpc(ACCOUNT, changes_routing=True)
    def RotateBridgeSecret(self, request, context, account):
        bridge, secret = self.registry.rotate_bridge_secret(account, request.bridge_id)
        return pb.BridgeWithSecret(bridge=convert.bridge(bridge), secret=secret)

    @rpc(ACCOUNT, changes_routing=True)
    def SetBridgeTrustedNetworks(self, request, context, account):
        return convert.bridge(
            self.registry.set_bridge_trusted_networks(account, request.bridge_id, list(request.trusted_networks))
        )

    @rpc(ACCOUNT, changes_routing=True)
    def SetBridgeSendDsns(self, request, context, account):
        return convert.bridge(self.registry.set_bridge_send_dsns(account, request.bridge_id, request.send_dsns))


class SuppressionServicer(_Servicer, rpc_pb.SuppressionServiceServicer):
    def __init__(self, services: Services):
        super().__init__(services)
        self.suppressions = SuppressionList(services.redis)

    @rpc(ACCOUNT)
    async def ListSuppressions(self, request, context, account):
        page = await self.suppressions.page(account, request.page_size, request.page_token)
        return pb.ListSuppressionsResponse(suppressions=[convert.suppression(s) for s in page.suppressions],
                                           next_page_token=page.next_page_token)

    @rpc(ACCOUNT)
    async def GetSuppression(self, request, context, account):
        return convert.suppression(await self.suppressions.get(account, request.address))

    @rpc(ACCOUNT)
    async def AddSuppression(self, request, context, account):
        return convert.suppression(await self.suppressions.add(account, request.address, request.note))

    @rpc(ACCOUNT)
    async def RemoveSuppression(self, request, context, account):
        await self.suppressions.remove(account, request.address)
        return pb.RemoveSuppressionResponse()


class StatsServicer(_Servicer, rpc_pb.StatsServiceServicer):
    async def _pool_stats(self, account, smtp_id: int, window: int) -> pb.PoolStats:
        pool = self.registry.get_pool(account, smtp_id)
        addresses = [ip.address for ip in self.registry.list_ips(account, smtp_id)]
        figures = await stats_reader.pool_figures(
            self.services.redis, pool.server_id, smtp_id, addresses, convert.window_name(window)
        )
        return convert.pool_stats(pool, window, figures)

    @rpc(ACCOUNT)
    async def GetPoolStats(self, request, context, account):
        return await self._pool_stats(account, request.smtp_id, request.window)

    @rpc(ACCOUNT)
    async def GetIpStats(self, request, context, account):
        ip = self.registry.get_ip(account, request.address)
        counters = await stats_reader.ip_figures(
            self.services.redis, ip.server_id, ip.address, convert.window_name(request.window)
        )
        return convert.ip_stats(ip.address, counters)

    @rpc(ACCOUNT)
    async def GetPoolTrend(self, request, context, account):
        resolution = convert.trend_resolution(request.resolution)
        points = validation.check_trend_points(resolution, request.points)
        pool = self.registry.get_pool(account, request.smtp_id)
        address = self.registry.get_ip(account, request.address).address if request.address else None
        trend = await stats_reader.trend(self.services.redis, pool.server_id, resolution, points,
                                         smtp_id=pool.smtp_id, address=address)
        return convert.trend(trend, smtp_id=pool.smtp_id, pool_label=pool.label, address=address or "")

    @rpc(ACCOUNT)
    async def GetIpTrend(self, request, context, account):
        resolution = convert.trend_resolution(request.resolution)
        points = validation.check_trend_points(resolution, request.points)
        ip = self.registry.get_ip(account, request.address)
        trend = await stats_reader.trend(self.services.redis, ip.server_id, resolution, points, address=ip.address)
        return convert.trend(trend, address=ip.address)

    @rpc(ACCOUNT)
    async def GetMessageStatus(self, request, context, account):
        message_id = request.message_id.strip()
        if not message_id or len(message_id) > 64 or not message_id.isalnum():
            raise InvalidArgument("message_id must be the id from the bridge's 250 reply (letters and digits)")
        events = await stats_reader.message_events(self.services.redis, message_id)
        mine = [e for e in events if e.user_id == account.user_id]
        if not mine:
            raise NotFound(f"no delivery events for message {message_id} (unknown, not yet attempted, or expired)")
        return convert.message_status(message_id, mine)

    @rpc(ACCOUNT)
    async def WatchPoolStats(self, request, context, account):
        last = None
        while True:
            try:
                stats = await self._pool_stats(account, request.smtp_id, request.window)
            except (RedisError, OSError) as exc:
                reraise_if_cancelling()
                log.warning("WatchPoolStats waiting for Redis: %s", exc)
                await asyncio.sleep(1.0)
                continue
            if stats != last:
                yield stats
                last = stats
            await asyncio.sleep(STATS_POLL_SECONDS)


def add_servicers(server: grpc.aio.Server, services: Services) -> list[str]:
    """Register every poolmta servicer; returns the full service names."""
    rpc_pb.add_AccountServiceServicer_to_server(AccountServicer(services), server)
    rpc_pb.add_MtaServerServiceServicer_to_server(MtaServerServicer(services), server)
    rpc_pb.add_PoolServiceServicer_to_server(PoolServicer(services), server)
    rpc_pb.add_IpServiceServicer_to_server(IpServicer(services), server)
    rpc_pb.add_BridgeServiceServicer_to_server(BridgeServicer(services), server)
    rpc_pb.add_StatsServiceServicer_to_server(StatsServicer(services), server)
    rpc_pb.add_SuppressionServiceServicer_to_server(SuppressionServicer(services), server)
    return [s.full_name for s in pb.DESCRIPTOR.services_by_name.values()]
