"""The gRPC QueueService: thin adapters from protobuf to `control.queue_control`
and back. Every method goes through `rpc(...)` (`control.rpc`)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from ._pb.poolmta.v1 import poolmta_pb2 as pb
from ._pb.poolmta.v1 import poolmta_pb2_grpc as rpc_pb
from .contract.queue_commands import BOUNCE, DELETE, HOLD, RELEASE, RETRY, MessageInfo, QueueFilter
from .queue_control import QueueControl, QueueLine
from .rpc import ACCOUNT, Servicer, Services, rpc

_GROUPINGS = {pb.QUEUE_GROUPING_UNSPECIFIED: "pool", pb.QUEUE_BY_POOL: "pool", pb.QUEUE_BY_IP: "ip",
              pb.QUEUE_BY_DOMAIN: "domain"}


def target(flt: pb.QueueFilter) -> QueueFilter:
    """The domain QueueFilter of a proto one (the account is the caller's, set by QueueControl)."""
    return QueueFilter(user_id=0, message_ids=tuple(flt.message_ids), smtp_id=flt.smtp_id, ip=flt.ip,
                       domain=flt.domain)


def _at(ms: int) -> Timestamp:
    """A Unix time in milliseconds as a Timestamp, exactly (no float on the way)."""
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def queue_summary(line: QueueLine) -> pb.QueueSummary:
    """A listing line as protobuf."""
    return pb.QueueSummary(key=line.key, smtp_id=line.smtp_id, depth=line.depth, held=line.held,
                           oldest_time=_at(line.oldest_ms), last_error=line.last_error)


def queued_message(info: MessageInfo) -> pb.QueuedMessage:
    """A queued message as protobuf."""
    return pb.QueuedMessage(
        message_id=info.message_id, received_time=_at(info.received_ms), smtp_id=info.smtp_id,
        ip=info.ip, mail_from=info.mail_from, waiting=list(info.waiting), attempts=info.attempts,
        next_attempt_time=_at(info.next_attempt_ms) if info.next_attempt_ms else None,
        held=info.held, last_error=info.last_error,
    )


class QueueServicer(Servicer, rpc_pb.QueueServiceServicer):
    def __init__(self, services: Services):
        super().__init__(services)
        self.queues = QueueControl(services.redis, services.registry)

    @rpc(ACCOUNT)
    async def ListQueues(self, request, context, account):
        grouping = _GROUPINGS.get(request.group_by, str(request.group_by))
        lines = await self.queues.list_queues(account, grouping, target(request.filter))
        return pb.ListQueuesResponse(queues=[queue_summary(line) for line in lines])

    @rpc(ACCOUNT)
    async def ListQueuedMessages(self, request, context, account):
        page = await self.queues.list_messages(account, target(request.filter), request.page_size,
                                               request.page_token)
        return pb.ListQueuedMessagesResponse(messages=[queued_message(m) for m in page.messages],
                                             next_page_token=page.next_page_token)

    async def _act(self, account, action: str, request) -> pb.QueueActionResponse:
        done = await self.queues.act(account, action, target(request.filter))
        return pb.QueueActionResponse(message_ids=done.applied, skipped_ids=done.skipped)

    @rpc(ACCOUNT)
    async def RetryNow(self, request, context, account):
        return await self._act(account, RETRY, request)

    @rpc(ACCOUNT)
    async def Hold(self, request, context, account):
        return await self._act(account, HOLD, request)

    @rpc(ACCOUNT)
    async def Release(self, request, context, account):
        return await self._act(account, RELEASE, request)

    @rpc(ACCOUNT)
    async def Bounce(self, request, context, account):
        return await self._act(account, BOUNCE, request)

    @rpc(ACCOUNT)
    async def Delete(self, request, context, account):
        return await self._act(account, DELETE, request)
