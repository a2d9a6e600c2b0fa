"""The one wrapper every gRPC servicer method goes through, and what the
servicers share.

`rpc(...)` covers unary and streaming methods: it authenticates the caller (admin
or account), maps DomainErrors to their gRPC status with the domain's message,
Redis being unreachable to UNAVAILABLE (retry shortly), turns anything unexpected into INTERNAL with a generic message (the traceback goes
to the log, never to the client), and after a routing change has the publisher
bring Redis up to date before the reply. It also counts and times every call by
service, method and status code (`control.metrics`).
"""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass, field

import grpc
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.exceptions import RedisError

from .auth import Authenticator
from .errors import DomainError
from .metrics import ControlMetrics
from .publisher import SnapshotPublisher
from .reconciler import ChangeFeed
from .registry import Registry

log = logging.getLogger(__name__)

ADMIN = "admin"
ACCOUNT = "account"
EITHER = "either"  # the admin or an account: for calls that say who the token is (WhoAmI)
INTERNAL_MESSAGE = "internal error; the control-plane log has the details"
REDIS_UNAVAILABLE_MESSAGE = (
    "the stats and routing store (Redis) is unavailable, probably restarting; nothing was read or "
    "changed there: retry shortly"
)
# Redis down, restarting, still loading its AOF (BusyLoadingError, a
# ConnectionError), or a Redis Cluster failing over: the request may succeed in a
# moment. Any other RedisError (a wrong type, a script error) is a bug: INTERNAL.
REDIS_OUTAGE_ERRORS = (
    redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ClusterDownError,
    redis_errors.TryAgainError, redis_errors.ReadOnlyError,
)


@dataclass
class Services:
    """What the servicers share."""

    registry: Registry
    auth: Authenticator
    publisher: SnapshotPublisher
    redis: aioredis.Redis
    feed: ChangeFeed
    metrics: ControlMetrics = field(default_factory=ControlMetrics)

    async def routing_changed(self) -> None:
        """Publish the new routing now; if Redis is down the publisher's loop will."""
        try:
            await self.publisher.sync()
        except (RedisError, OSError) as exc:
            log.warning("routing change saved; publishing deferred until Redis answers (%s)", exc)
        await self.feed.notify()


def _caller(services: Services, context, who: str):
    metadata = context.invocation_metadata()
    if who == EITHER:
        return services.auth.caller(metadata)
    return services.auth.admin(metadata) if who == ADMIN else services.auth.account(metadata)


def _status_of(context, exc: BaseException) -> grpc.StatusCode:
    """The status the client gets for `exc` (`_abort`'s choice)."""
    if isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    if isinstance(exc, DomainError):
        return getattr(grpc.StatusCode, exc.code)
    if isinstance(exc, REDIS_OUTAGE_ERRORS):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


async def _abort(context, exc: BaseException) -> None:
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    if isinstance(exc, DomainError):
        await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
    if isinstance(exc, REDIS_OUTAGE_ERRORS):
        log.warning("RPC answered UNAVAILABLE: Redis unavailable (%s)", exc)
        await context.abort(grpc.StatusCode.UNAVAILABLE, REDIS_UNAVAILABLE_MESSAGE)
    log.error("unexpected error in RPC", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def rpc(who: str, *, changes_routing: bool = False):
    """Wrap a servicer method `(self, request, context, caller)` as a gRPC handler."""

    def decorate(method):
        if inspect.isasyncgenfunction(method):

            @functools.wraps(method)
            async def streaming(self, request, context):
                with self.services.metrics.rpc(type(self), method.__name__) as call:
                    try:
                        caller = _caller(self.services, context, who)
                        async for reply in method(self, request, context, caller):
                            yield reply
                    except Exception as exc:  # noqa: BLE001 - mapped to a status, logged if unexpected
                        call.code = _status_of(context, exc)
                        await _abort(context, exc)

            return streaming

        @functools.wraps(method)
        async def unary(self, request, context):
            with self.services.metrics.rpc(type(self), method.__name__) as call:
                try:
                    caller = _caller(self.services, context, who)
                    reply = method(self, request, context, caller)
                    if inspect.isawaitable(reply):
                        reply = await reply
                except Exception as exc:  # noqa: BLE001 - mapped to a status, logged if unexpected
                    call.code = _status_of(context, exc)
                    await _abort(context, exc)
                if changes_routing:
                    await self.services.routing_changed()
                return reply

        return unary

    return decorate


class Servicer:
    """The base of every servicer: the shared Services and the Registry."""

    def __init__(self, services: Services):
        self.services = services
        self.registry = services.registry
