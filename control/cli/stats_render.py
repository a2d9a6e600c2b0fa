"""What `poolmta stats pool|ip|message` prints for people: the product's per-Pool
panel, one IP's figures, a message's delivery events (`--trend` charts are
`control.cli.trends`). Built from the values and tables of `control.cli.render`.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .._pb.poolmta.v1 import poolmta_pb2 as pb
from .render import count, pool_ref, rate, table, when, window


def _figures(rows: Sequence[tuple[str, int]]) -> Table:
    t = Table(box=None, show_header=False, pad_edge=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    for name, value in rows:
        t.add_row(name, count(value))
    return t


def plural_ips(n: int) -> str:
    """"1 IP", "3 IPs"."""
    return f"{n} IP" if n == 1 else f"{n} IPs"


def pool_stats(s: pb.PoolStats, live: bool = False) -> Group:
    """The product's per-pool panel: three totals, the delivery rate, then one row per IP."""
    parts: list[RenderableType] = [
        Text(f"Sending stats of {s.label} pool", style="bold"),
        Text(f"{s.internal_name} · smtp_id {s.smtp_id} · {window(s.window)}"),
        Text(""),
        _figures([("Total Sent", s.sent), ("Total Delivered", s.delivered), ("Total Bounced", s.bounced),
                  ("Suppressed at RCPT", s.suppressed), ("Sent without DKIM", s.dkim_unsigned)]),
        Text(""),
        Text(f"Delivery rate {rate(s.delivery_rate, s.delivered, s.bounced)} · "
             f"across {plural_ips(len(s.ips))} in this Pool"),
    ]
    if live:
        parts.append(Text(f"live · DSN-fed aggregate · {window(s.window)}", style="dim"))
    if s.ips:
        parts += [
            Text(""),
            table(
                ["ADDRESS", "SENT", "DELIVERED", "BOUNCED", "DEFERRED", "COMPLAINTS", "DELIVERY RATE"],
                [
                    (i.address, count(i.sent), count(i.delivered), count(i.bounced), count(i.deferred),
                     count(i.complaints), rate(i.delivery_rate, i.delivered, i.bounced))
                    for i in s.ips
                ],
            ),
        ]
    return Group(*parts)


def ip_stats(s: pb.IpStats, window_value: int) -> Group:
    """One IP's figures (complaints and deferrals included) and delivery rate."""
    return Group(
        Text(f"Sending stats of IP {s.address}", style="bold"),
        Text(window(window_value)),
        Text(""),
        _figures(
            [("Total Sent", s.sent), ("Total Delivered", s.delivered), ("Total Bounced", s.bounced),
             ("Complaints", s.complaints), ("Deferred", s.deferred)]
        ),
        Text(""),
        Text(f"Delivery rate {rate(s.delivery_rate, s.delivered, s.bounced)}"),
    )


def message_status(m: pb.MessageStatus) -> Table:
    """One row per delivery attempt outcome of a message, oldest first."""
    outcome = {pb.DELIVERED: "delivered", pb.BOUNCED: "bounced", pb.DEFERRED: "deferred",
               pb.COMPLAINED: "complained"}
    return table(
        ("Time", "Recipient", "Outcome", "Attempt", "Pool", "IP", "Reply"),
        (
            (when(e, "time"), e.recipient or "-",
             outcome.get(e.outcome, "?") + (" (final)" if e.final and e.outcome == pb.DEFERRED else "")
             + (f" ({e.source}, later)" if e.source else ""),
             str(e.attempt), pool_ref(e.smtp_id, e.pool), e.ip, e.reply)
            for e in m.events
        ),
        title=f"Message {m.message_id}" + next((f" · DKIM: {e.dkim}" for e in m.events if e.dkim), ""),
    )
