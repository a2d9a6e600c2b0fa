"""Queue control in a worker: the operator's commands (`control.contract.queue_commands`)
applied to the messages this worker owns.

The worker follows its server's command stream from the moment it starts (a
command issued before it started is not its business: the control plane only
waits for the workers live when it asked), applies each command to the messages
of its delivery queue that match the command's filter (the account's own only)
and writes its `QueueResult` back. Every action goes through the queue's stages
so it is what delivery itself would do:

* hold / release: the `held` flag in the spool record (rewritten under the
  message's lock, durable across restarts) and in the queue; a held message
  starts no job; release makes its waiting recipients due now;
* retry: waiting recipients due now (held messages are skipped);
* bounce: waiting recipients not in a transaction right now get a local 550 as
  their outcome (`outcomes.finish_job`): counted as bounced, a DSN per the
  Bridge's switch, no suppression (the address did nothing wrong);
* delete: the record is removed; nothing is counted and no DSN is sent, so the
  pool's sent figure keeps them beyond delivered + bounced (what destinations
  did). It is logged with the recipients it drops.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import RedisError

from control.contract import rediskeys
from control.contract.queue_commands import (
    BOUNCE,
    DELETE,
    HOLD,
    LIST_MESSAGES,
    LIST_QUEUES,
    MAX_LISTED_PER_WORKER,
    RELEASE,
    RESULT_TTL_SECONDS,
    RETRY,
    MessageInfo,
    QueueCommand,
    QueueCommandError,
    QueueFilter,
    QueueResult,
    QueueRow,
)
from control.contract.runtime import reraise_if_cancelling

from ..config import normalize_domain
from ..smtp_reply import BOUNCED, DEFERRED, OPERATOR_BOUNCE, local_reply
from ..spool import SpoolError
from .outcomes import Outcomes, RecipientOutcome
from .queue import DeliveryJob, DeliveryQueue, QueuedMessage

log = logging.getLogger("poolmta.dataplane.delivery")

# How long one XREAD waits for a command (well under the Redis client's socket timeout).
READ_BLOCK_MS = 1000
# Pause after Redis failed before reading the stream again.
RETRY_AFTER_ERROR = 1.0


def matches(message: QueuedMessage, flt: QueueFilter) -> bool:
    """True when the message is the filter's account's and every given field matches."""
    record = message.record
    if record.user_id != flt.user_id:
        return False
    if flt.message_ids and message.id not in flt.message_ids:
        return False
    if flt.smtp_id and record.smtp_id != flt.smtp_id:
        return False
    if flt.ip and message.ip != flt.ip:
        return False
    if flt.domain and normalize_domain(flt.domain) not in {r.domain for r in message.pending.values()}:
        return False
    return True


def _last_error(message: QueuedMessage) -> tuple[str, int]:
    """The newest deferral reply among the message's attempts, and when it came."""
    for entry in reversed(message.attempts):
        if entry.get("outcome") == DEFERRED:
            return f"{entry.get('code', '')} {entry.get('text', '')}".strip(), int(entry.get("at_ms", 0))
    return "", 0


def queue_rows(messages: list[QueuedMessage]) -> list[QueueRow]:
    """Waiting recipients per (pool, source IP, domain): depth, held, oldest, last error."""
    rows: dict[tuple[int, str, str], dict] = {}
    for message in messages:
        error, error_ms = _last_error(message)
        for rcpt in message.pending.values():
            row = rows.setdefault((message.record.smtp_id, message.ip, rcpt.domain),
                                  {"depth": 0, "held": 0, "oldest_ms": message.record.received_ms,
                                   "last_error": "", "last_error_ms": 0})
            row["depth"] += 1
            row["held"] += message.held
            row["oldest_ms"] = min(row["oldest_ms"], message.record.received_ms)
            if error_ms > row["last_error_ms"]:
                row["last_error"], row["last_error_ms"] = error, error_ms
    return [QueueRow(smtp_id=k[0], ip=k[1], domain=k[2], **v) for k, v in sorted(rows.items())]


def message_info(message: QueuedMessage) -> MessageInfo:
    """How a listing shows one queued message."""
    waiting = [r for r in message.pending.values() if not r.busy]
    due = 0 if message.held or not waiting else int(min(r.next_at for r in waiting) * 1000)
    return MessageInfo(
        message_id=message.id, received_ms=message.record.received_ms, smtp_id=message.record.smtp_id,
        ip=message.ip, mail_from=message.record.mail_from, waiting=tuple(message.pending),
        attempts=len(message.attempts), next_attempt_ms=due, held=message.held, last_error=_last_error(message)[0],
    )


class QueueControl:
    """Follows the server's command stream and applies commands to this worker's queue."""

    def __init__(self, redis, *, server_id: int, worker_id: str, queue: DeliveryQueue | None,
                 outcomes: Outcomes | None) -> None:
        self.redis = redis
        self.server_id = server_id
        self.worker_id = worker_id
        self.queue = queue  # None with delivery off: such a worker answers, owning nothing
        self.outcomes = outcomes
        self._stream = rediskeys.queue_commands_key(server_id)

    async def run(self) -> None:
        """Apply every command appended to the stream from now on, forever."""
        last_id = None
        while True:
            reraise_if_cancelling()  # a cancellation a library swallowed (see runtime.pause)
            try:
                if last_id is None:
                    newest = await self.redis.xrevrange(self._stream, count=1)
                    last_id = newest[0][0] if newest else b"0-0"
                entries = await self.redis.xread({self._stream: last_id}, block=READ_BLOCK_MS, count=16)
                for _, batch in entries or ():
                    for entry_id, fields in batch:
                        last_id = entry_id
                        await self._answer(fields.get(b"c", b""))
            except (RedisError, OSError) as exc:
                reraise_if_cancelling()
                log.warning("queue control: cannot read the command stream (%s); retrying", exc)
                await asyncio.sleep(RETRY_AFTER_ERROR)

    async def _answer(self, data: bytes) -> None:
        try:
            command = QueueCommand.decode(data)
        except QueueCommandError as exc:
            log.error("queue control: ignoring a malformed command: %s", exc)
            return
        try:
            result = await self.apply(command)
        except Exception:
            log.exception("queue control: command %s (%s) failed", command.command_id, command.action)
            result = QueueResult(self.worker_id, error="the worker could not apply the command; see its log")
        key = rediskeys.queue_results_key(self.server_id, command.command_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, self.worker_id, result.encode())
            pipe.expire(key, RESULT_TTL_SECONDS)
            await pipe.execute()

    async def apply(self, command: QueueCommand) -> QueueResult:
        """This worker's answer to `command`, the action applied to its matching messages."""
        found = [m for m in (self.queue.messages() if self.queue else []) if matches(m, command.filter)]
        action = command.action
        if action == LIST_QUEUES:
            return QueueResult(self.worker_id, rows=tuple(queue_rows(found)))
        if action == LIST_MESSAGES:
            found.sort(key=lambda m: (m.record.received_ms, m.id))
            return QueueResult(self.worker_id, messages=tuple(message_info(m) for m in found[:MAX_LISTED_PER_WORKER]))
        done, skipped = [], []
        for message in found:
            applied = await {RETRY: self._retry, HOLD: self._hold, RELEASE: self._release,
                             BOUNCE: self._bounce, DELETE: self._delete}[action](message)
            (done if applied else skipped).append(message.id)
        if done:
            log.warning("queue control: %s applied to %d message(s): %s", action, len(done), " ".join(done[:20]))
        return QueueResult(self.worker_id, matched=tuple(done), skipped=tuple(skipped))

    async def _retry(self, message: QueuedMessage) -> bool:
        if message.held:
            return False
        self.queue.reschedule(message, time.time())
        return True

    async def _set_held(self, message: QueuedMessage, held: bool) -> bool:
        async with message.lock:  # never beside a rewrite of its attempts
            if message.gone:
                return False
            try:
                await self.queue.spool.rewrite_held(message.id, held)
            except (FileNotFoundError, SpoolError) as exc:
                log.error("queue control: %s: cannot write its hold flag (%s)", message.id, exc)
                return False
            message.held = held
        return True

    async def _hold(self, message: QueuedMessage) -> bool:
        return message.held or await self._set_held(message, True)

    async def _release(self, message: QueuedMessage) -> bool:
        if message.held and not await self._set_held(message, False):
            return False
        self.queue.reschedule(message, time.time())
        return True

    async def _bounce(self, message: QueuedMessage) -> bool:
        waiting = [r for r in message.pending.values() if not r.busy]
        if not waiting:
            return False  # every recipient is in a transaction right now: its reply decides
        reply = local_reply(OPERATOR_BOUNCE)
        for rcpt in waiting:
            rcpt.busy = True
        message.jobs += 1
        job = DeliveryJob(message, waiting[0].domain, waiting, ip=message.ip)
        await self.outcomes.finish_job(job, [RecipientOutcome(r, reply, BOUNCED) for r in waiting], "")
        return True

    async def _delete(self, message: QueuedMessage) -> bool:
        async with message.lock:  # a rewrite under way would bring the file back
            if message.gone:
                return False
            log.warning("queue control: %s deleted with %d recipient(s) not final: %s", message.id,
                        len(message.pending), " ".join(message.pending))
            await self.outcomes.finish_message(message)
        return True
