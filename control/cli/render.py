"""What the `poolmta` command line prints: rich tables for people, JSON for scripts.

People see enum names without their prefixes (IP_ACTIVE -> active; tiers stay
ESSENTIAL / PRO / BUSINESS) and timestamps as ISO-8601 UTC. `--json` prints the
reply message as protobuf's canonical JSON mapping with the proto field names
(so int64 ids are strings) and every field present, defaults included; streams
print one compact JSON object per line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import IO

from google.protobuf import json_format
from google.protobuf.message import Message
from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from .._pb.poolmta.v1 import poolmta_pb2 as pb
from ..contract import rediskeys

# Wide enough that piped tables are not folded at 80 columns.
PIPE_WIDTH = 200
NONE = "-"


# -- values ---------------------------------------------------------------------


def when(message: Message, field: str) -> str:
    """A Timestamp field as ISO-8601 UTC (`2026-11-27T22:06:38Z`), "-" when unset."""
    if not message.HasField(field):
        return NONE
    ts = getattr(message, field)
    moment = datetime.fromtimestamp(ts.seconds, UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def tier(value: int) -> str:
    """A Tier as people read it: ESSENTIAL, PRO, BUSINESS ("-" unset)."""
    return NONE if value == pb.TIER_UNSPECIFIED else pb.Tier.Name(value)


def ip_state(value: int) -> str:
    """An IpState without its prefix: active, paused ("-" unset)."""
    return NONE if value == pb.IP_STATE_UNSPECIFIED else pb.IpState.Name(value).removeprefix("IP_").lower()


def pool_status(value: int) -> str:
    """A PoolStatus in lower case ("-" unset)."""
    return NONE if value == pb.POOL_STATUS_UNSPECIFIED else pb.PoolStatus.Name(value).lower()


def op_state(value: int) -> str:
    """An OperationState in lower case: queued, applying, done, failed ("-" unset)."""
    return NONE if value == pb.OPERATION_STATE_UNSPECIFIED else pb.OperationState.Name(value).lower()


WINDOWS = {"lifetime": pb.LIFETIME, "30d": pb.LAST_30_DAYS}
_WINDOW_NAMES = {v: k for k, v in WINDOWS.items()}


def window(value: int) -> str:
    """A stats window by its command-line name: lifetime, 30d."""
    return _WINDOW_NAMES.get(value, "lifetime")


def count(n: int) -> str:
    """A count with thousands separators: 12,345."""
    return f"{n:,}"


def rate(delivery_rate: float, delivered: int, bounced: int) -> str:
    """"97.0%", or "-" while nothing has been delivered or bounced yet."""
    if delivered + bounced == 0:
        return NONE
    return f"{delivery_rate * 100:.1f}%"


def yes(flag: bool) -> str:
    """yes / no."""
    return "yes" if flag else "no"


def text(value: object) -> str:
    """The value as text, "-" when it is empty or None."""
    value = "" if value is None else str(value)
    return value if value else NONE


def pool_ref(smtp_id: int, label: str) -> str:
    """A pool as `label (smtp_id)`, or the smtp_id alone when there is no label."""
    return f"{label} ({smtp_id})" if label else str(smtp_id)


def headers(items: Iterable[pb.Header]) -> str:
    """Custom headers, one `Name: value` per line ("-" when none)."""
    return "\n".join(f"{h.name}: {h.value}" for h in items) or NONE


# -- the printer --------------------------------------------------------------------


class Printer:
    """Writes one command's output to stdout (and notes to stderr)."""

    def __init__(self, json_mode: bool, out: IO[str] | None = None, err: IO[str] | None = None):
        self.json_mode = json_mode
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        is_tty = hasattr(self.out, "isatty") and self.out.isatty()
        self.console = Console(
            file=self.out, highlight=False, markup=False, emoji=False,
            width=None if is_tty else PIPE_WIDTH,
        )

    # Plain lines: never wrapped or styled, so secrets copy cleanly.
    def line(self, value: str = "") -> None:
        """One plain line on stdout."""
        self.out.write(value + "\n")
        self.out.flush()

    def note(self, value: str) -> None:
        """One plain line on stderr (what is not the command's output)."""
        self.err.write(value + "\n")
        self.err.flush()

    def show(self, renderable: RenderableType) -> None:
        """A rich table or text on stdout."""
        self.console.print(renderable)

    def json(self, message: Message | dict, compact: bool = False) -> None:
        """`message` as JSON: indented, or one line when `compact` (streams)."""
        data = message if isinstance(message, dict) else to_dict(message)
        if compact:
            self.line(json.dumps(data, separators=(",", ":")))
        else:
            self.line(json.dumps(data, indent=2))


def to_dict(message: Message) -> dict:
    """A reply as --json prints it: proto field names, every field present."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


# -- tables -----------------------------------------------------------------------


def table(columns: Sequence[str], rows: Iterable[Sequence[str]], title: str | None = None,
          right: Iterable[int] = ()) -> Table:
    """The CLI's table: `columns` headers, then `rows`; the columns at the indices in
    `right` (figures) are aligned right."""
    t = Table(*columns, box=box.SIMPLE_HEAD, show_edge=False, title=title, title_justify="left", pad_edge=False)
    for index in right:
        t.columns[index].justify = "right"
    for row in rows:
        t.add_row(*row)
    return t


def details(rows: Sequence[tuple[str, str]]) -> Text:
    """One object as aligned `Field  value` lines (multi-line values indented)."""
    width = max((len(name) for name, _ in rows), default=0)
    out = Text()
    for i, (name, value) in enumerate(rows):
        first, *more = value.split("\n")
        if i:
            out.append("\n")
        out.append(name.ljust(width), style="bold")
        out.append(f"  {first}")
        for line in more:
            out.append("\n" + " " * (width + 2) + line)
    return out


def account(a: pb.Account) -> Text:
    """One account, field by field."""
    return details(
        [("ID", str(a.user_id)), ("Name", a.name), ("Tier", tier(a.tier)), ("Created", when(a, "create_time"))]
    )


def accounts(items: Sequence[pb.Account]) -> Table:
    """Accounts, one row each."""
    return table(
        ["ID", "NAME", "TIER", "CREATED"],
        [(str(a.user_id), a.name, tier(a.tier), when(a, "create_time")) for a in items],
    )


def server(s: pb.MtaServer) -> Text:
    """One MTA server, field by field."""
    return details(
        [
            ("ID", str(s.server_id)), ("Hostname", s.hostname), ("Zone", s.zone),
            ("Bounce domain", server_bounce_domain(s)),
            ("Routing version", str(s.routing_version)), ("Shared pool", text(s.shared_pool)),
            ("Created", when(s, "create_time")),
        ]
    )


def servers(items: Sequence[pb.MtaServer]) -> Table:
    """MTA servers, one row each."""
    return table(
        ["ID", "HOSTNAME", "ZONE", "BOUNCE DOMAIN", "ROUTING VERSION", "SHARED POOL", "CREATED"],
        [
            (str(s.server_id), s.hostname, s.zone, s.bounce_domain or s.hostname, str(s.routing_version),
             text(s.shared_pool), when(s, "create_time"))
            for s in items
        ],
    )


def routing_status(status: pb.RoutingStatus) -> Group:
    """A server's routing versions, then the version each live worker serves."""
    summary = details(
        [
            ("Server", str(status.server_id)),
            ("Routing version", str(status.routing_version)),
            ("Published version", str(status.published_version) if status.published_version else "none"),
            ("Live workers", str(len(status.workers))),
        ]
    )
    workers = table(
        ["WORKER", "SERVES VERSION", "UP TO DATE"],
        [(w.worker_id, str(w.version), yes(w.version >= status.routing_version)) for w in status.workers],
    )
    return Group(summary, Text(""), workers) if status.workers else Group(summary)


def republished(reply: pb.RepublishSnapshotsResponse) -> Table:
    """The snapshot version published for each server."""
    return table(["SERVER", "VERSION"], [(str(s.server_id), str(s.version)) for s in reply.snapshots])


def pool(p: pb.Pool) -> Text:
    """One pool, field by field."""
    return details(
        [
            ("ID (smtp_id)", str(p.smtp_id)), ("Label", p.label), ("Tag", p.tag),
            ("Internal name", p.internal_name), ("Server", str(p.server_id)), ("Zone", text(p.zone)),
            ("Status", pool_status(p.status)), ("Default", yes(p.is_default)),
            ("Feed type", text(p.feed_type)), ("Headers", headers(p.headers)),
            ("Bounce domain", bounce_domain(p.bounce_domain)),
            ("Signing domain", text(p.signing_domain)), ("Feedback signing", text(p.feedback_signing_domain)),
            ("IPs", str(p.ip_count)), ("Bridges", str(p.bridge_count)), ("Created", when(p, "create_time")),
        ]
    )


def pools(items: Sequence[pb.Pool]) -> Table:
    """Pools, one row each."""
    return table(
        ["ID", "LABEL", "STATUS", "DEFAULT", "IPS", "BRIDGES", "SERVER", "ZONE", "FEED TYPE", "INTERNAL NAME"],
        [
            (str(p.smtp_id), p.label, pool_status(p.status), "yes" if p.is_default else "",
             str(p.ip_count), str(p.bridge_count), str(p.server_id), text(p.zone), text(p.feed_type),
             p.internal_name)
            for p in items
        ],
    )


def pool_headers(p: pb.Pool) -> Table:
    """A pool's custom headers, one row each."""
    return table(["NAME", "VALUE"], [(h.name, h.value) for h in p.headers],
                 title=f"Custom headers of pool {pool_ref(p.smtp_id, p.label)}")


def ip(i: pb.DedicatedIp) -> Text:
    """One dedicated IP, field by field."""
    return details(
        [
            ("Address", i.address), ("Pool", pool_ref(i.smtp_id, i.pool_label)), ("Server", str(i.server_id)),
            ("Weight", str(i.weight)), ("State", ip_state(i.state)), ("HELO hostname", text(i.hostname)),
            ("Pending operation", text(i.pending_operation_id)), ("Created", when(i, "create_time")),
        ]
    )


def ips(items: Sequence[pb.DedicatedIp]) -> Table:
    """Dedicated IPs, one row each."""
    return table(
        ["ADDRESS", "POOL", "SERVER", "WEIGHT", "STATE", "HELO HOSTNAME", "PENDING OPERATION"],
        [
            (i.address, pool_ref(i.smtp_id, i.pool_label), str(i.server_id), str(i.weight),
             ip_state(i.state), text(i.hostname), text(i.pending_operation_id))
            for i in items
        ],
    )


def bounce_domain(domain: str) -> str:
    """A pool's bounce domain for people: its own, or the MTA server's."""
    return domain or "the MTA server's bounce domain (default)"


def server_bounce_domain(s: pb.MtaServer) -> str:
    """An MTA server's bounce domain for people: its own, or its hostname."""
    return s.bounce_domain or f"{s.hostname} (its hostname, default)"


def dsn_switch(on: bool) -> str:
    """A Bridge's DSN switch for people."""
    return "on" if on else "off"


def _bridge_route(b: pb.Bridge) -> str:
    return f"shared pool of server {b.server_id}" if b.shared else pool_ref(b.smtp_id, b.pool_label)


def bridge(b: pb.Bridge) -> Text:
    """One Bridge, field by field (never its secret)."""
    return details(
        [
            ("ID", str(b.bridge_id)), ("Name", b.name), ("Routes through", _bridge_route(b)),
            ("Server", str(b.server_id)), ("Username", b.username), ("Feed type", text(b.feed_type)),
            ("Trusted networks", "\n".join(b.trusted_networks) or NONE),
            ("DSNs to senders", dsn_switch(b.send_dsns)), ("State", "revoked" if b.revoked else "active"), ("Created", when(b, "create_time")),
            ("Secret rotated", when(b, "secret_rotate_time")),
        ]
    )


def bridges(items: Sequence[pb.Bridge]) -> Table:
    """Bridges, one row each (never their secrets)."""
    return table(
        ["ID", "NAME", "ROUTES THROUGH", "USERNAME", "FEED TYPE", "TRUSTED NETWORKS", "STATE", "CREATED"],
        [
            (str(b.bridge_id), b.name, _bridge_route(b), b.username, text(b.feed_type),
             ", ".join(b.trusted_networks) or NONE, "revoked" if b.revoked else "active", when(b, "create_time"))
            for b in items
        ],
    )


def operation(op: pb.Operation) -> Text:
    """One operation, field by field."""
    return details(
        [
            ("ID", op.operation_id), ("State", op_state(op.state)), ("Address", op.address),
            ("From pool", str(op.from_smtp_id)), ("To pool", str(op.to_smtp_id)),
            ("Routing version", str(op.routing_version) if op.routing_version else NONE),
            ("Error", text(op.error)), ("Created", when(op, "create_time")), ("Updated", when(op, "update_time")),
        ]
    )


def operations(items: Sequence[pb.Operation]) -> Table:
    """Operations, one row each, in the order given (newest first)."""
    return table(
        ["ID", "STATE", "ADDRESS", "FROM POOL", "TO POOL", "ROUTING VERSION", "CREATED", "ERROR"],
        [
            (op.operation_id, op_state(op.state), op.address, str(op.from_smtp_id), str(op.to_smtp_id),
             str(op.routing_version) if op.routing_version else NONE, when(op, "create_time"), text(op.error))
            for op in items
        ],
    )


def whoami(reply: pb.WhoAmIResponse) -> str:
    """Who a token speaks for, as a line."""
    if reply.admin:
        return "The platform admin (account and server commands)."
    a = reply.account
    return f"Account {a.name} (user {a.user_id}, {tier(a.tier)})."


def operation_line(op: pb.Operation) -> str:
    """One line per state change of a watched operation."""
    stamp = when(op, "update_time") if op.HasField("update_time") else when(op, "create_time")
    line = (f"{stamp}  {op.operation_id}  {op_state(op.state):<8}  {op.address}  "
            f"pool {op.from_smtp_id} -> {op.to_smtp_id}")
    if op.routing_version:
        line += f"  routing v{op.routing_version}"
    if op.error:
        line += f"  error: {op.error}"
    return line


def unattributed_reports(reply: pb.ListUnattributedReportsResponse) -> Group:
    """The kept reports, newest first, under the servers' totals."""
    shown = table(
        ("Time", "Server", "Kind", "From", "Envelope", "Size", "Subject", "Why not counted"),
        (
            (when(r, "time"), str(r.server_id), r.kind, r.peer,
             f"<{r.mail_from}> -> {', '.join(r.rcpt_to) or '-'}", count(r.size), text(r.subject), r.reason)
            for r in reply.reports
        ),
        right=(5,),
    )
    summary = (f"{count(reply.unattributed_total)} report(s) accepted but not attributed so far "
               f"(the newest {rediskeys.UNATTRIBUTED_KEPT:,} per server are kept); "
               f"{count(reply.too_big_total)} refused over the size cap")
    return Group(Text(summary, style="dim"), shown)
