"""The `poolmta suppression` commands (an account token): the account's suppression
list, whose addresses its Bridges refuse at RCPT.

    poolmta suppression list [--limit N | --all] [--page-size N] [--page-token T]
    poolmta suppression show ADDRESS
    poolmta suppression add ADDRESS [--reason TEXT]
    poolmta suppression remove ADDRESS
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

from .._pb.poolmta.v1 import poolmta_pb2 as pb
from . import render
from .commands import CommandTree, Context, done, emit, emit_pages, list_options


def reason(value: int) -> str:
    """A SuppressionReason as people read it: bounce, complaint, manual ("-" unset)."""
    if value == pb.SUPPRESSION_REASON_UNSPECIFIED or value not in pb.SuppressionReason.values():
        return render.NONE
    return pb.SuppressionReason.Name(value).removeprefix("SUPPRESSION_").lower()


def suppression(s: pb.Suppression) -> Text:
    """One suppressed address, field by field."""
    return render.details(
        [
            ("Address", s.address), ("Reason", reason(s.reason)), ("Since", render.when(s, "create_time")),
            ("Source", render.text(s.source)), ("Message", render.text(s.message_id)),
            ("Detail", render.text(s.detail)),
        ]
    )


def suppressions(items: Sequence[pb.Suppression]):
    """Suppressed addresses, one row each, by address."""
    return render.table(
        ["ADDRESS", "REASON", "SINCE", "SOURCE", "MESSAGE", "DETAIL"],
        [
            (s.address, reason(s.reason), render.when(s, "create_time"), render.text(s.source),
             render.text(s.message_id), render.text(s.detail))
            for s in sorted(items, key=lambda s: s.address)
        ],
    )


def _list(ctx: Context, a) -> int:
    return emit_pages(ctx, a, ("suppressions", "ListSuppressions"), pb.ListSuppressionsRequest(), "suppressions",
                      lambda r: suppressions(r.suppressions))


def _show(ctx: Context, a) -> int:
    request = pb.GetSuppressionRequest(address=a.address)
    return emit(ctx, ctx.client.call("suppressions", "GetSuppression", request), suppression)


def _add(ctx: Context, a) -> int:
    request = pb.AddSuppressionRequest(address=a.address, note=a.reason or "")
    return emit(ctx, ctx.client.call("suppressions", "AddSuppression", request), suppression)


def _remove(ctx: Context, a) -> int:
    reply = ctx.client.call("suppressions", "RemoveSuppression", pb.RemoveSuppressionRequest(address=a.address))
    return done(ctx, reply, f"Removed {a.address.strip()} from the suppression list: the account's Bridges "
                            "accept it again.")


def add(tree: CommandTree) -> None:
    """Add the `suppression` group."""
    subs = tree.group("suppression", "the account's suppression list: addresses its Bridges refuse (account token)")
    list_options(tree.leaf(subs, "list", _list, "one page of suppressed addresses (--limit N: the first N; "
                                                "--all: every page)"))
    p = tree.leaf(subs, "show", _show, "why one address is suppressed (exit 1 when it is not)")
    p.add_argument("address", metavar="ADDRESS")
    p = tree.leaf(subs, "add", _add, "suppress an address by hand")
    p.add_argument("address", metavar="ADDRESS")
    p.add_argument("--reason", metavar="TEXT", help="why (kept with the entry; at most 300 characters)")
    p = tree.leaf(subs, "remove", _remove, "lift a suppression: the account's Bridges accept the address again")
    p.add_argument("address", metavar="ADDRESS")
