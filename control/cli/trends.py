"""`poolmta stats pool POOL --trend` and `poolmta stats ip ADDRESS --trend`: what
happened per minute (the last 48 hours) or per hour (the last 30 days), as a
small terminal chart.

One sparkline per counter (sent, delivered, bounced, deferred, complaints), each
scaled to its own peak, beside its total and its busiest bucket, then the totals
and delivery rate of the whole span. When there are more buckets than the
terminal has columns, consecutive buckets are summed into one column. `--json`
prints the Trend reply: every point, oldest first, and the totals.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from datetime import UTC, datetime

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .._pb.poolmta.v1 import poolmta_pb2 as pb
from . import render
from .client import EXIT_USAGE, CliError
from .commands import Context, emit, positive_int

BLOCKS = "▁▂▃▄▅▆▇█"
COUNTERS = (("Sent", "sent"), ("Delivered", "delivered"), ("Bounced", "bounced"), ("Deferred", "deferred"),
            ("Complaints", "complaints"))
# What the rows take besides the chart: the counter's name, its total, its peak.
_BESIDE_CHART = 44
MIN_CHART_WIDTH = 10
_UNIT = {pb.MINUTE: "minute", pb.HOUR: "hour"}


# -- options ----------------------------------------------------------------------------


def add_options(parser: argparse.ArgumentParser) -> None:
    """--trend, and how far back: --minutes N or --hours N (either implies --trend)."""
    parser.add_argument("--trend", action="store_true",
                        help="per-minute or per-hour figures as a chart (default the last 60 minutes)")
    span = parser.add_mutually_exclusive_group()
    span.add_argument("--minutes", type=positive_int, metavar="N", help="the last N minutes, one point each (up to 2880)")
    span.add_argument("--hours", type=positive_int, metavar="N", help="the last N hours, one point each (up to 720)")


def wanted(a: argparse.Namespace) -> bool:
    """True when the command asks for a trend (--trend, --minutes or --hours)."""
    return bool(a.trend or a.minutes is not None or a.hours is not None)


def _span(a: argparse.Namespace) -> tuple[int, int]:
    if getattr(a, "watch", False):
        raise CliError("--watch follows the totals; it does not go with --trend, --minutes or --hours", EXIT_USAGE)
    if a.hours is not None:
        return pb.HOUR, a.hours
    return pb.MINUTE, 60 if a.minutes is None else a.minutes


def show_pool_trend(ctx: Context, smtp_id: int, a: argparse.Namespace) -> int:
    """Print the trend of pool `smtp_id` (of one IP's share of it with --ip)."""
    resolution, points = _span(a)
    request = pb.GetPoolTrendRequest(smtp_id=smtp_id, resolution=resolution, points=points, address=a.ip or "")
    return _show(ctx, ctx.client.call("stats", "GetPoolTrend", request))


def show_ip_trend(ctx: Context, a: argparse.Namespace) -> int:
    """Print the trend of one IP across the pools it has been in."""
    resolution, points = _span(a)
    request = pb.GetIpTrendRequest(address=a.address, resolution=resolution, points=points)
    return _show(ctx, ctx.client.call("stats", "GetIpTrend", request))


def _show(ctx: Context, trend: pb.Trend) -> int:
    width = max(MIN_CHART_WIDTH, ctx.printer.console.width - _BESIDE_CHART)
    return emit(ctx, trend, lambda t: chart(t, width))


# -- the chart --------------------------------------------------------------------------


def columns(values: Sequence[int], width: int) -> list[int]:
    """`values` in at most `width` columns: runs of consecutive values summed, every
    column the same number of values but the last."""
    per = max(1, math.ceil(len(values) / max(1, width)))
    return [sum(values[i:i + per]) for i in range(0, len(values), per)]


def sparkline(values: Sequence[int]) -> str:
    """One character per value: a space for nothing (0 or less), else one of ▁▂▃▄▅▆▇█
    by the value's share of the largest (the largest is always █)."""
    peak = max(values, default=0)
    if peak <= 0:
        return " " * len(values)
    top = len(BLOCKS)
    return "".join(" " if v <= 0 else BLOCKS[min(top, math.ceil(v * top / peak)) - 1] for v in values)


def _minute(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M")


def _title(t: pb.Trend) -> str:
    if t.smtp_id and t.address:
        return f"Trend of {t.address} in {t.pool_label} pool"
    if t.smtp_id:
        return f"Trend of {t.pool_label} pool"
    return f"Trend of IP {t.address}"


def chart(t: pb.Trend, width: int = 60) -> Group:
    """The trend as a title, a span line, a sparkline per counter (at most `width`
    columns) with its total and peak per bucket, and the totals."""
    unit = _UNIT.get(t.resolution, "bucket")
    points = list(t.points)
    span = f"last {len(points)} {unit}{'s' if len(points) != 1 else ''}"
    parts = [Text(_title(t), style="bold")]
    if points:
        first, last = points[0].time.seconds, points[-1].time.seconds
        per = max(1, math.ceil(len(points) / max(1, width)))
        step = f"1 column = {per} {unit}{'s' if per != 1 else ''}"
        parts.append(Text(f"per {unit} · {span} · {_minute(first)} to {_minute(last)} UTC · {step}"))
    rows = Table(box=None, show_header=False, pad_edge=False)
    rows.add_column(style="bold")
    rows.add_column(no_wrap=True)
    rows.add_column(justify="right")
    rows.add_column(justify="right", style="dim")
    for name, field in COUNTERS:
        values = [getattr(p, field) for p in points]
        peak = max(values, default=0)
        rows.add_row(name, sparkline(columns(values, width)), render.count(getattr(t, field)),
                     f"peak {render.count(peak)}/{unit}")
    parts += [Text(""), rows, Text("")]
    parts.append(Text(
        f"Total Sent {render.count(t.sent)} · Delivered {render.count(t.delivered)} · "
        f"Bounced {render.count(t.bounced)} · Delivery rate {render.rate(t.delivery_rate, t.delivered, t.bounced)}"
    ))
    return Group(*parts)
