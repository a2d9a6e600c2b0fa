"""Queue control as the control plane serves it: list an account's queues and
queued messages, and retry, hold, release, bounce or delete them, by message id
or by filter (pool, source IP, destination domain).

The spool lives with each MTA server's data plane; this module reaches it
through Redis (`control.contract.queue_commands` says how and why): it appends
one command per MTA server concerned and waits until every live worker of that
server has answered, then merges the answers. A server with no live worker has
nothing queued that anyone delivers, and is skipped; a worker that does not
answer within `COMMAND_TIMEOUT` makes the request UNAVAILABLE, saying that the
workers that did answer may have applied it.

A request names its messages with a `QueueFilter` whose `user_id` is ignored:
every function takes the authenticated Account, and the commands carry its user id,
so one account never sees or touches another's messages (its ids are NOT_FOUND).
Nothing here imports grpc; errors are DomainErrors.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from dataclasses import dataclass, replace

import redis.asyncio as aioredis

from .contract import acks, rediskeys
from .contract.json_records import quoted
from .contract.queue_commands import (
    ACTIONS,
    COMMAND_STREAM_MAXLEN,
    LIST_MESSAGES,
    LIST_QUEUES,
    MessageInfo,
    QueueCommandError,
    QueueFilter,
    QueueResult,
    QueueRow,
    new_command,
)
from .errors import InvalidArgument, NotFound, Unavailable
from .models import Account
from .registry import Registry

# How long the workers get to answer a command.
COMMAND_TIMEOUT = 10.0
_POLL_SECONDS = 0.05
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_IDS = 1000
# Spool ids are lower-case hex (`Spool.new_id`).
_MESSAGE_ID = re.compile(r"[0-9a-f]{1,64}")
_DOMAIN = re.compile(r"[A-Za-z0-9.-]{1,253}")
GROUPINGS = ("pool", "ip", "domain")


@dataclass(frozen=True)
class QueueLine:
    """One line of a queue listing: the waiting recipients of one pool, IP or domain."""

    key: str  # the pool's label, the IP address or the domain
    smtp_id: int  # the pool (0 when grouped by IP or domain)
    depth: int
    held: int
    oldest_ms: int
    last_error: str


@dataclass(frozen=True)
class MessagePage:
    """One page of queued messages, oldest first; an empty token ends the list."""

    messages: list[MessageInfo]
    next_page_token: str


@dataclass(frozen=True)
class ActionOutcome:
    """What an action did: the ids it applied to, the ids it left alone and why."""

    applied: list[str]
    skipped: list[str]


class QueueControl:
    """The account's queues on every MTA server, through Redis (see the module docstring)."""

    def __init__(self, redis: aioredis.Redis, registry: Registry, *, timeout: float = COMMAND_TIMEOUT) -> None:
        self.redis = redis
        self.registry = registry
        self.timeout = timeout

    async def list_queues(self, account: Account, grouping: str, target: QueueFilter) -> list[QueueLine]:
        """The account's waiting recipients grouped by pool, IP or domain, deepest first."""
        if grouping not in GROUPINGS:
            raise InvalidArgument(f"group by one of {', '.join(GROUPINGS)}, not {quoted(grouping)}")
        rows = [row for result in await self._ask(account, LIST_QUEUES, target) for row in result.rows]
        labels = {p.smtp_id: p.label for p in self.registry.list_pools(account)}
        merged: dict[tuple[str, int], dict] = {}
        for row in rows:
            key = _group_key(row, grouping, labels)
            line = merged.setdefault(key, {"depth": 0, "held": 0, "oldest_ms": row.oldest_ms, "error": ("", 0)})
            line["depth"] += row.depth
            line["held"] += row.held
            line["oldest_ms"] = min(line["oldest_ms"], row.oldest_ms)
            if row.last_error_ms > line["error"][1]:
                line["error"] = (row.last_error, row.last_error_ms)
        lines = [QueueLine(key=k[0], smtp_id=k[1], depth=v["depth"], held=v["held"], oldest_ms=v["oldest_ms"],
                           last_error=v["error"][0]) for k, v in merged.items()]
        return sorted(lines, key=lambda line: (-line.depth, line.key))

    async def list_messages(self, account: Account, target: QueueFilter, page_size: int,
                            page_token: str) -> MessagePage:
        """One page of the account's queued messages matching `target`, oldest first.
        Each worker lists at most `MAX_LISTED_PER_WORKER` of them per request."""
        size = page_size or DEFAULT_PAGE_SIZE
        if not 0 < size <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size must be 1-{MAX_PAGE_SIZE} (0 = {DEFAULT_PAGE_SIZE})")
        after = _decode_token(page_token)
        found = sorted((m for r in await self._ask(account, LIST_MESSAGES, target) for m in r.messages),
                       key=lambda m: (m.received_ms, m.message_id))
        if after is not None:
            found = [m for m in found if (m.received_ms, m.message_id) > after]
        page = found[:size]
        token = _encode_token(page[-1]) if len(found) > size else ""
        return MessagePage(messages=page, next_page_token=token)

    async def act(self, account: Account, action: str, target: QueueFilter) -> ActionOutcome:
        """Apply `action` (retry, hold, release, bounce, delete) to the account's matching
        messages. NOT_FOUND when nothing matched (an id of another account never does);
        INVALID_ARGUMENT without any id or filter (acting on the whole queue must be
        asked for with a filter)."""
        if action not in ACTIONS:
            raise InvalidArgument(f"action must be one of {', '.join(ACTIONS)}, not {quoted(action)}")
        if not (target.message_ids or target.smtp_id or target.ip or target.domain):
            raise InvalidArgument("name message ids, or a filter (pool, IP or domain) to act on")
        results = await self._ask(account, action, target)
        applied = sorted({i for r in results for i in r.matched})
        skipped = sorted({i for r in results for i in r.skipped} - set(applied))
        if not applied and not skipped:
            if target.message_ids:
                raise NotFound(f"no queued message of this account with id {quoted(target.message_ids[0])}"
                               + (f" (nor any of the other {len(target.message_ids) - 1})"
                                  if len(target.message_ids) > 1 else ""))
            raise NotFound("no queued message of this account matches the filter")
        return ActionOutcome(applied=applied, skipped=skipped)

    # -- the command round trip ----------------------------------------------------

    async def _ask(self, account: Account, action: str, target: QueueFilter) -> list[QueueResult]:
        flt, server_ids = self._resolve(account, target)
        answers = await asyncio.gather(*(self._ask_server(s, action, flt) for s in server_ids))
        results = [r for answer in answers for r in answer]
        failed = [r for r in results if r.error]
        if failed:
            raise Unavailable(f"{len(failed)} worker(s) could not apply the command "
                              f"({failed[0].worker_id}: {failed[0].error}); the others may have")
        return results

    def _resolve(self, account: Account, target: QueueFilter) -> tuple[QueueFilter, list[int]]:
        """The command filter, and the MTA servers it concerns (NOT_FOUND for a pool or
        IP that is not the account's)."""
        if len(target.message_ids) > MAX_IDS:
            raise InvalidArgument(f"at most {MAX_IDS} message ids per request")
        for message_id in target.message_ids:
            if not _MESSAGE_ID.fullmatch(message_id):
                raise InvalidArgument(f"not a message id (lower-case hex, as the 250 reply gives it): "
                                      f"{quoted(message_id)}")
        if target.domain and not _DOMAIN.fullmatch(target.domain):
            raise InvalidArgument(f"not a domain name: {quoted(target.domain)}")
        servers = {s.server_id for s in self.registry.list_servers()}
        ip = ""
        if target.smtp_id:
            servers &= {self.registry.get_pool(account, target.smtp_id).server_id}
        if target.ip:
            dedicated = self.registry.get_ip(account, target.ip)
            ip = dedicated.address
            servers &= {dedicated.server_id}
        flt = replace(target, user_id=account.user_id, message_ids=tuple(dict.fromkeys(target.message_ids)), ip=ip,
                      domain=target.domain.lower().rstrip("."))
        return flt, sorted(servers)

    async def _ask_server(self, server_id: int, action: str, flt: QueueFilter) -> list[QueueResult]:
        """Every live worker's answer to one command on one server."""
        expected = {ack.worker_id for ack in await acks.live_workers(self.redis, server_id)}
        if not expected:
            return []
        command = new_command(action, flt)
        key = rediskeys.queue_results_key(server_id, command.command_id)
        await self.redis.xadd(rediskeys.queue_commands_key(server_id), {"c": command.encode()},
                              maxlen=COMMAND_STREAM_MAXLEN, approximate=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            answers = await self.redis.hgetall(key)
            if {k.decode() for k in answers} >= expected or loop.time() >= deadline:
                break
            await asyncio.sleep(_POLL_SECONDS)
        missing = expected - {k.decode() for k in answers}
        if missing:
            raise Unavailable(f"{len(missing)} of {len(expected)} data-plane worker(s) of MTA server {server_id} "
                              f"did not answer within {self.timeout:.0f}s; those that did may have applied "
                              "the command: list the queue to see")
        results = []
        for raw in answers.values():
            try:
                results.append(QueueResult.decode(raw))
            except QueueCommandError as exc:
                raise Unavailable(f"a worker of MTA server {server_id} answered in another format ({exc}); "
                                  "is it running another poolmta version?") from None
        return results


def _group_key(row: QueueRow, grouping: str, labels: dict[int, str]) -> tuple[str, int]:
    if grouping == "pool":
        return labels.get(row.smtp_id, "shared pool"), row.smtp_id
    return (row.ip if grouping == "ip" else row.domain), 0


def _encode_token(last: MessageInfo) -> str:
    return base64.urlsafe_b64encode(f"q1:{last.received_ms}:{last.message_id}".encode()).decode()


def _decode_token(token: str) -> tuple[int, str] | None:
    if not token:
        return None
    try:
        version, received, message_id = base64.urlsafe_b64decode(token.encode()).decode().split(":")
        if version != "q1":
            raise ValueError(version)
        return int(received), message_id
    except (ValueError, binascii.Error, UnicodeError):
        raise InvalidArgument(f"not a page token of this listing: {quoted(token)}") from None
