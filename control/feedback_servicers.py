"""gRPC servicers of the feedback loop's figures: per-Pool and per-IP stats, trends
and message status (read back from Redis by `control.stats_reader`), and the
account's suppression list (`control.suppressions`). Thin, like every servicer:
the wrapper is `control.rpc`.
"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from . import convert, stats_reader, validation
from ._pb.poolmta.v1 import poolmta_pb2 as pb
from ._pb.poolmta.v1 import poolmta_pb2_grpc as rpc_pb
from .contract.runtime import pause, reraise_if_cancelling
from .errors import InvalidArgument, NotFound
from .rpc import ACCOUNT, Servicer, Services, rpc
from .suppressions import SuppressionList

log = logging.getLogger(__name__)

STATS_POLL_SECONDS = 0.25


class SuppressionServicer(Servicer, rpc_pb.SuppressionServiceServicer):
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


class StatsServicer(Servicer, rpc_pb.StatsServiceServicer):
    async def _pool_stats(self, account, smtp_id: int, window: int) -> pb.PoolStats:
        window_name = convert.window_name(window)
        pool = self.registry.get_pool(account, smtp_id)
        addresses = [ip.address for ip in self.registry.list_ips(account, smtp_id)]
        figures = await stats_reader.pool_figures(
            self.services.redis, pool.server_id, smtp_id, addresses, window_name
        )
        return convert.pool_stats(pool, window, figures)

    @rpc(ACCOUNT)
    async def GetPoolStats(self, request, context, account):
        return await self._pool_stats(account, request.smtp_id, request.window)

    @rpc(ACCOUNT)
    async def GetIpStats(self, request, context, account):
        window_name = convert.window_name(request.window)
        ip = self.registry.get_ip(account, request.address)
        counters = await stats_reader.ip_figures(self.services.redis, ip.server_id, ip.address, window_name)
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
        servers = self.registry.servers_of_account(account)
        events = await stats_reader.message_events(self.services.redis, servers, message_id)
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
                await pause(1.0)
                continue
            if stats != last:
                yield stats
                last = stats
            await pause(STATS_POLL_SECONDS)
