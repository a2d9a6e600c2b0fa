"""`poolmta top` (an account token): a full-screen view of the account's pools
and IPs that refreshes itself, the dashboard one would otherwise build in
Grafana.

Per pool and per IP: sent, delivered, bounced, deferred and complaints as rates
per minute over the last `WINDOW_MINUTES` minutes, read from the per-minute
trend buckets (GetPoolTrend, GetIpTrend; the bucket in progress counts for the
time it has run), and the queue: waiting recipients and the oldest one's age
(QueueService.ListQueues). `q` or Ctrl-C quits; `--once` prints one frame and
exits (for scripts and tests); `--json` with `--once` prints the figures.
"""

from __future__ import annotations

import contextlib
import select
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from rich.console import Group
from rich.live import Live
from rich.text import Text

from .._pb.poolmta.v1 import poolmta_pb2 as pb
from . import render
from .client import CliError
from .commands import CommandTree, Context, positive_int
from .queue_commands import age

WINDOW_MINUTES = 5
DEFAULT_INTERVAL = 2.0
_COUNTERS = ("sent", "delivered", "bounced", "deferred", "complaints")


@dataclass(frozen=True)
class Line:
    """One row of the view: a pool or an IP, its rates per minute and its queue."""

    name: str
    sent: float
    delivered: float
    bounced: float
    deferred: float
    complaints: float
    queued: int | None  # None when the queue could not be read
    oldest: str


def rates(trend: pb.Trend, now: float) -> dict[str, float]:
    """Per-minute rates over the trend's buckets: the full ones plus the time the
    one in progress has run so far."""
    if not trend.points:
        return dict.fromkeys(_COUNTERS, 0.0)
    last_start = trend.points[-1].time.seconds
    seconds = (len(trend.points) - 1) * 60 + min(60.0, max(1.0, now - last_start))
    return {name: getattr(trend, name) * 60.0 / seconds for name in _COUNTERS}


def _queues(ctx: Context, grouping: int) -> dict[str, pb.QueueSummary] | None:
    try:
        reply = ctx.client.call("queue", "ListQueues", pb.ListQueuesRequest(group_by=grouping))
    except CliError:
        return None  # no data plane answering: the view shows "-" and keeps going
    return {q.key: q for q in reply.queues}


def _line(name: str, trend: pb.Trend, queue: dict[str, pb.QueueSummary] | None, now: float) -> Line:
    summary = queue.get(name) if queue is not None else None
    return Line(name=name, **rates(trend, now), queued=None if queue is None else (summary.depth if summary else 0),
                oldest=age(summary, "oldest_time", now) if summary else render.NONE)


def frame_lines(ctx: Context) -> tuple[list[Line], list[Line]]:
    """The pools' lines and the IPs' lines, read now."""
    now = time.time()
    pools = ctx.client.call("pools", "ListPools", pb.ListPoolsRequest()).pools
    ips = ctx.client.call("ips", "ListIps", pb.ListIpsRequest()).ips
    by_pool, by_ip = _queues(ctx, pb.QUEUE_BY_POOL), _queues(ctx, pb.QUEUE_BY_IP)
    pool_lines = [
        _line(p.label, ctx.client.call("stats", "GetPoolTrend", pb.GetPoolTrendRequest(
            smtp_id=p.smtp_id, resolution=pb.MINUTE, points=WINDOW_MINUTES)), by_pool, now)
        for p in pools
    ]
    ip_lines = [
        _line(i.address, ctx.client.call("stats", "GetIpTrend", pb.GetIpTrendRequest(
            address=i.address, resolution=pb.MINUTE, points=WINDOW_MINUTES)), by_ip, now)
        for i in ips
    ]
    return pool_lines, ip_lines


def _table(title: str, lines: list[Line]):
    return render.table(
        [title, "SENT/MIN", "DELIVERED/MIN", "BOUNCED/MIN", "DEFERRED/MIN", "COMPLAINTS/MIN", "QUEUED", "OLDEST"],
        [(line.name, *(f"{getattr(line, c):.1f}" for c in _COUNTERS),
          render.NONE if line.queued is None else render.count(line.queued), line.oldest) for line in lines],
    )


def frame(ctx: Context) -> Group:
    """One screenful: a heading, the pools, the IPs."""
    pool_lines, ip_lines = frame_lines(ctx)
    heading = Text(f"poolmta top · rates per minute over the last {WINDOW_MINUTES} minutes · "
                   f"{time.strftime('%H:%M:%S')} · q quits", style="bold")
    return Group(heading, _table("POOL", pool_lines), _table("IP", ip_lines))


@contextlib.contextmanager
def _keys() -> Iterator[None]:
    """The terminal in cbreak mode (keys arrive unbuffered), restored on the way out."""
    if not sys.stdin.isatty():
        yield
        return
    import termios  # POSIX only; `--once` never needs it
    import tty

    saved = termios.tcgetattr(sys.stdin)
    try:
        tty.setcbreak(sys.stdin.fileno())
        yield
    finally:
        termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)


def _quit_pressed(timeout: float) -> bool:
    """Wait up to `timeout` seconds for a key; True when it was q."""
    if not sys.stdin.isatty():
        time.sleep(timeout)
        return False
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    return bool(ready) and sys.stdin.read(1).lower() == "q"


def _top(ctx: Context, a) -> int:
    if a.once:
        if ctx.json:
            pools, ips = frame_lines(ctx)
            ctx.printer.json({"pools": [asdict(p) for p in pools], "ips": [asdict(i) for i in ips]})
        else:
            ctx.printer.show(frame(ctx))
        return 0
    try:
        with _keys(), Live(frame(ctx), console=ctx.printer.console, screen=True, auto_refresh=False) as live:
            while not _quit_pressed(a.interval):
                live.update(frame(ctx), refresh=True)
    except KeyboardInterrupt:
        pass
    return 0


def add(tree: CommandTree) -> None:
    """Add the `top` command."""
    parser = tree.command("top", _top, "a live view of the account's pools and IPs: rates, queue (account token)",
                          __doc__.split("\n\n")[0])
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.add_argument("--interval", type=positive_int, default=int(DEFAULT_INTERVAL), metavar="SECONDS",
                        help=f"seconds between refreshes (default {DEFAULT_INTERVAL:.0f})")
