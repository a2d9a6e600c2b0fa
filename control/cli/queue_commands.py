"""The `poolmta queue` commands (an account token): the account's queued mail on
the data planes, and what an operator does with it.

    poolmta queue list [--by pool|ip|domain] [--pool P] [--ip A] [--domain D]
    poolmta queue messages [--pool P] [--ip A] [--domain D] [--limit N | --all] [--page-size N] [--page-token T]
    poolmta queue retry|hold|release|bounce|delete (ID... | --pool P | --ip A | --domain D)
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from .._pb.poolmta.v1 import poolmta_pb2 as pb
from . import render
from .commands import CommandTree, Context, done, emit, emit_pages, list_options

_GROUPINGS = {"pool": pb.QUEUE_BY_POOL, "ip": pb.QUEUE_BY_IP, "domain": pb.QUEUE_BY_DOMAIN}
_ACTIONS = {
    "retry": ("RetryNow", "retried now", "every waiting recipient due now (held messages stay held)"),
    "hold": ("Hold", "held", "no delivery attempt until released (survives restarts)"),
    "release": ("Release", "released", "held no more, and due now"),
    "bounce": ("Bounce", "bounced", "bounce every waiting recipient now (counted; a DSN if the Bridge sends them)"),
    "delete": ("Delete", "deleted", "remove from the spool: no delivery, no DSN, nothing counted"),
}


def age(message, field: str, now: float | None = None) -> str:
    """How long ago a Timestamp field was, e.g. "3m12s" ("-" when unset)."""
    if not message.HasField(field):
        return render.NONE
    seconds = max(0, int((now or time.time()) - getattr(message, field).seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def queues(items: Sequence[pb.QueueSummary], by: str):
    """Queue lines, deepest first."""
    return render.table(
        [by.upper(), "DEPTH", "HELD", "OLDEST", "LAST ERROR"],
        [(q.key, render.count(q.depth), render.count(q.held), age(q, "oldest_time"), render.text(q.last_error))
         for q in items],
    )


def messages(items: Sequence[pb.QueuedMessage]):
    """Queued messages, oldest first."""
    return render.table(
        ["MESSAGE", "AGE", "POOL", "IP", "FROM", "WAITING", "ATTEMPTS", "NEXT", "HELD", "LAST ERROR"],
        [(m.message_id, age(m, "received_time"), str(m.smtp_id), m.ip, render.text(m.mail_from),
          ", ".join(m.waiting[:3]) + (f" (+{len(m.waiting) - 3})" if len(m.waiting) > 3 else ""),
          str(m.attempts), render.when(m, "next_attempt_time"), render.yes(m.held), render.text(m.last_error))
         for m in items],
    )


def _filter(ctx: Context, a, ids: Sequence[str] = ()) -> pb.QueueFilter:
    return pb.QueueFilter(message_ids=list(ids), smtp_id=ctx.client.resolve_optional_pool(a.pool),
                          ip=a.ip or "", domain=a.domain or "")


def _list(ctx: Context, a) -> int:
    request = pb.ListQueuesRequest(group_by=_GROUPINGS[a.by], filter=_filter(ctx, a))
    reply = ctx.client.call("queue", "ListQueues", request)
    if not reply.queues and not ctx.json:
        ctx.printer.line("Nothing queued: every message of this account is delivered or bounced.")
        return 0
    return emit(ctx, reply, lambda r: queues(r.queues, a.by))


def _messages(ctx: Context, a) -> int:
    return emit_pages(ctx, a, ("queue", "ListQueuedMessages"), pb.ListQueuedMessagesRequest(filter=_filter(ctx, a)),
                      "messages", lambda r: messages(r.messages))


def _action(name: str):
    method, verb, _ = _ACTIONS[name]

    def run(ctx: Context, a) -> int:
        reply = ctx.client.call("queue", method, pb.QueueActionRequest(filter=_filter(ctx, a, a.ids)))
        line = f"{len(reply.message_ids)} message(s) {verb}: {' '.join(reply.message_ids) or render.NONE}"
        if reply.skipped_ids:
            line += f"; {len(reply.skipped_ids)} left alone: {' '.join(reply.skipped_ids)}"
        return done(ctx, reply, line)

    return run


def _add_filter_options(parser) -> None:
    parser.add_argument("--pool", metavar="POOL", help="one pool's messages (smtp_id or label)")
    parser.add_argument("--ip", metavar="ADDRESS", help="messages whose next attempt leaves from this IP")
    parser.add_argument("--domain", metavar="DOMAIN", help="messages with recipients waiting at this domain")


def add(tree: CommandTree) -> None:
    """Add the `queue` group."""
    subs = tree.group("queue", "the account's queued mail: list it, retry, hold, release, bounce or delete it "
                               "(account token)")
    p = tree.leaf(subs, "list", _list, "waiting recipients by pool, IP or domain: depth, oldest, last error")
    p.add_argument("--by", choices=sorted(_GROUPINGS), default="pool", help="how to group (default pool)")
    _add_filter_options(p)
    p = tree.leaf(subs, "messages", _messages, "the queued messages, oldest first (--limit N: the first N; "
                                               "--all: every page)")
    _add_filter_options(p)
    list_options(p)
    for name, (_, _, help_text) in _ACTIONS.items():
        p = tree.leaf(subs, name, _action(name), f"{help_text}; by message id or by filter")
        p.add_argument("ids", nargs="*", metavar="ID", help="message ids (as the 250 reply gave them)")
        _add_filter_options(p)
