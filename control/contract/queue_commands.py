"""Queue control between the planes: the commands the control plane writes for an
MTA server's workers, and the results each worker writes back.

Why through Redis: the spool is per data plane on its host, owned record by
record by the workers (`owner_of`), and the control plane may run elsewhere and
never imports `dataplane`. So the control plane appends a `QueueCommand` to the
server's command stream (`rediskeys.queue_commands_key`); every worker of the
server reads the stream, applies the command to the messages it owns (real
spooled records: a hold is a flag written into the record, durable across
restarts) and writes one `QueueResult` into the command's result hash
(`rediskeys.queue_results_key`, field = worker id). The control plane waits
until every live worker (`rediskeys.worker_acks_key`) has answered, or a
timeout, and merges the answers.

Listing uses the same path rather than summaries the workers publish on a
timer: one mechanism, exact figures at the moment asked (a summary would be up
to a period old), and no cost while nobody looks. A worker answers a listing
from memory (its delivery queue), without touching the disk.

Scope: every command carries the account's `user_id`; a worker only lists or
acts on records of that account, so another account's ids are never matched.
Encoded with msgpack, like the snapshot.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass

import msgpack

# What a command does.
LIST_QUEUES = "list_queues"  # per (pool, IP, domain): depth, held, oldest, last error
LIST_MESSAGES = "list_messages"  # the matching messages
RETRY = "retry"  # every waiting recipient due now (held messages stay held)
HOLD = "hold"  # no delivery attempt until released; durable in the spool record
RELEASE = "release"  # held no more, and due now
BOUNCE = "bounce"  # every waiting recipient bounced now (counted, DSN per the Bridge's switch)
DELETE = "delete"  # the record removed; nothing counted, no DSN
ACTIONS = (RETRY, HOLD, RELEASE, BOUNCE, DELETE)
QUERIES = (LIST_QUEUES, LIST_MESSAGES)

# Messages one worker lists at most per command (the control plane pages the merge).
MAX_LISTED_PER_WORKER = 1000
# Entries of the command stream kept (approximately); a command older than a
# worker's start is never applied, so the stream needs no more than a backlog.
COMMAND_STREAM_MAXLEN = 1000
# How long a command's result hash lives (the control plane reads it at once).
RESULT_TTL_SECONDS = 60


class QueueCommandError(ValueError):
    """Bytes that are not a queue command or result of this schema."""


@dataclass(frozen=True)
class QueueFilter:
    """Which messages of one account a command is about. Empty fields match all;
    given fields must all match (a message matches `domain` or `ip` when one of
    its waiting recipients does)."""

    user_id: int
    message_ids: tuple[str, ...] = ()
    smtp_id: int = 0
    ip: str = ""
    domain: str = ""


@dataclass(frozen=True)
class QueueCommand:
    """One command to every worker of a server."""

    command_id: str
    action: str
    filter: QueueFilter

    def encode(self) -> bytes:
        """The command as stream field bytes."""
        return msgpack.packb({"id": self.command_id, "action": self.action, "filter": asdict(self.filter)},
                             use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> QueueCommand:
        """Parse `encode`'s bytes; QueueCommandError when they are not a command."""
        try:
            raw = msgpack.unpackb(data, raw=False)
            flt = dict(raw["filter"])
            flt["message_ids"] = tuple(flt.get("message_ids", ()))
            command = cls(command_id=str(raw["id"]), action=str(raw["action"]), filter=QueueFilter(**flt))
        except Exception as exc:  # msgpack and the dataclass raise several unrelated types
            raise QueueCommandError(f"not a queue command: {exc!r}") from None
        if command.action not in ACTIONS + QUERIES:
            raise QueueCommandError(f"unknown queue action {command.action!r}")
        return command


def new_command(action: str, flt: QueueFilter) -> QueueCommand:
    """A command with a fresh random id."""
    return QueueCommand(command_id=secrets.token_hex(8), action=action, filter=flt)


@dataclass(frozen=True)
class QueueRow:
    """The waiting recipients of one account at one (pool, source IP, domain)."""

    smtp_id: int
    ip: str
    domain: str
    depth: int  # waiting recipients, held ones included
    held: int  # of them, in held messages
    oldest_ms: int  # acceptance time of the oldest message among them
    last_error: str = ""  # the newest deferral reply among them ("" = none)
    last_error_ms: int = 0


@dataclass(frozen=True)
class MessageInfo:
    """One queued message as a listing shows it."""

    message_id: str
    received_ms: int
    smtp_id: int
    ip: str
    mail_from: str
    waiting: tuple[str, ...]  # recipients not final yet
    attempts: int  # delivery attempts so far, all recipients together
    next_attempt_ms: int  # when the earliest waiting recipient is due (0 = held or in flight)
    held: bool
    last_error: str = ""


@dataclass(frozen=True)
class QueueResult:
    """One worker's answer to one command."""

    worker_id: str
    matched: tuple[str, ...] = ()  # ids the action applied to (or the query found)
    skipped: tuple[str, ...] = ()  # ids matched but left alone (e.g. retry of a held message)
    rows: tuple[QueueRow, ...] = ()
    messages: tuple[MessageInfo, ...] = ()
    error: str = ""  # the worker could not apply the command

    def encode(self) -> bytes:
        """The result as hash field bytes."""
        return msgpack.packb(asdict(self), use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> QueueResult:
        """Parse `encode`'s bytes; QueueCommandError when they are not a result."""
        try:
            raw = msgpack.unpackb(data, raw=False)
            return cls(
                worker_id=raw["worker_id"], matched=tuple(raw["matched"]), skipped=tuple(raw["skipped"]),
                rows=tuple(QueueRow(**r) for r in raw["rows"]),
                messages=tuple(MessageInfo(**{**m, "waiting": tuple(m["waiting"])}) for m in raw["messages"]),
                error=raw.get("error", ""),
            )
        except Exception as exc:  # msgpack and the dataclass raise several unrelated types
            raise QueueCommandError(f"not a queue result: {exc!r}") from None


