"""What the demo prints, built from the CLI's renderers (`control.cli.render`,
`control.cli.stats_render`): the story as it goes, the product's "Sending stats"
panel, a message as the destination received it, the destination's view of the
source IPs, the verdict, and with --keep-running how to reach what keeps running."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ..._pb.poolmta.v1 import poolmta_pb2 as pb
from ...contract.headers import STAMPED_HEADER_NAMES
from .. import render, stats_render
from .channels import BATCH, MESSAGES, RAW, ChannelCheck, RestSender
from .feedback import FedReport
from .provision import Tenant
from .stack import Stack
from .verify import DkimCheck, SourceCheck, received_message


def say(console: Console, message: str) -> None:
    """One line of the story, printed as it is (no markup)."""
    console.print(Text(message))


def progress(console: Console) -> Progress:
    """The progress bars of sending and delivering: description, bar, done/total, rate, time."""
    return Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console)


def show_stack(console: Console, stack: Stack, workers: int, seconds: float, data_dir: Path) -> None:
    """What runs where, once the stack is up."""
    say(console, f"poolmta demo: embedded Redis, control plane (gRPC {stack.grpc_address}), data plane "
                 f"({workers} workers, SMTP {address(stack.smtp_address)}, bounces and complaints "
                 f"{address(stack.inbound_address)}) and sink ({address(stack.sink_address)}) "
                 f"up in {seconds:.1f}s; data in {data_dir}")


def show_tenant(console: Console, tenant: Tenant) -> None:
    """The MTA server, the account and, per Pool, its internal name, IPs and Bridge."""
    say(console, f"MTA server {tenant.server.server_id} ({tenant.server.hostname}, zone {tenant.server.zone}); "
                 f"account {tenant.account.name} (user {tenant.account.user_id}, PRO)")
    for p in tenant.pools:
        default = ", default" if p.pool.is_default else ""
        ips = stats_render.plural_ips(len(p.plan.addresses))
        say(console, f"  Pool {p.pool.label} = {p.pool.internal_name} ({ips}: "
                     f"{', '.join(p.plan.addresses)}{default}); Bridge {p.plan.bridge} (user {p.bridge.username}, "
                     f"feed type {p.bridge.feed_type})")


def pools_table(tenant: Tenant, pools: list[pb.Pool], stats: list[pb.PoolStats]) -> Table:
    """The product's list of Dedicated Pools: one row per Pool with its totals."""
    by_id = {p.smtp_id: p for p in pools}
    rows = []
    for s in stats:
        pool = by_id.get(s.smtp_id)
        rows.append((
            s.label, render.pool_status(pool.status) if pool else render.NONE, str(len(s.ips)),
            render.count(s.sent), render.count(s.delivered), render.count(s.bounced),
            render.rate(s.delivery_rate, s.delivered, s.bounced),
        ))
    return render.table(["Pool", "Status", "IPs", "Total Sent", "Total Delivered", "Total Bounced", "Delivery rate"],
                        rows, title=f"Dedicated Pools of {tenant.account.name} "
                                    f"(user {tenant.account.user_id}, {render.tier(tenant.account.tier)}) "
                                    f"on MTA server {tenant.server.server_id}, zone {tenant.server.zone}",
                        right=range(2, 7))


def show_panel(console: Console, tenant: Tenant, pools: list[pb.Pool], stats: list[pb.PoolStats]) -> None:
    """The "Sending stats" panel: the Pools table, then the first Pool's drill-in."""
    console.print()
    console.print(pools_table(tenant, pools, stats))
    console.print()
    console.print(stats_render.pool_stats(stats[0], live=True))


def show_received(console: Console, stack: Stack, tenant: Tenant) -> None:
    """The header section of a message of the first Pool as the sink received it,
    stamped and custom headers highlighted."""
    first = tenant.pools[0]
    found = received_message(stack, first.pool.internal_name)
    console.print()
    if found is None:
        console.print(Text(f"(the sink kept no message from {first.plan.label})", style="dim"))
        return
    record, data = found
    console.print(Text(f"A message of {first.plan.label} as the destination received it "
                       f"(sink message #{record['n']}, {len(data):,} bytes, connected from {record['peer']}; "
                       f"headers only)", style="bold"))
    custom = {name.lower() for name, _ in first.plan.headers}
    body = Text()
    for line in header_section(data).split("\n"):
        name = line.split(":", 1)[0].strip().lower()
        style = "bold cyan" if name in STAMPED_HEADER_NAMES or name == "received" else "cyan" if name in custom else ""
        body.append(line + "\n", style=style)
    console.print(body, end="")


def header_section(message: bytes) -> str:
    """The message's header lines (unfolded lines kept as sent), CRLF or LF endings."""
    text = message.decode("utf-8", "replace").replace("\r\n", "\n")
    return text.split("\n\n", 1)[0]


def sources_table(checks: list[SourceCheck]) -> Table:
    """The sink's view of the source addresses next to StatsService's per-IP figures."""
    rows = []
    for check in checks:
        seen, ip = check.seen, check.ip
        sink = (render.count(int(seen.get("connections", 0))), render.count(int(seen.get("accepted", 0))))
        if ip is None:
            rows.append((check.address, check.pool, *sink, "", "", "", "", "", "MISMATCH"))
        else:
            rows.append((check.address, check.pool, *sink, render.count(int(seen.get("rejected", 0))),
                         render.count(int(seen.get("deferred", 0))), render.count(ip.sent),
                         render.count(ip.delivered), render.count(ip.bounced),
                         "MISMATCH" if check.problem else "ok"))
    return render.table(["Source IP", "Pool", "Sink connections", "Sink accepted", "Sink 5xx", "Sink 4xx",
                         "Stats sent", "Stats delivered", "Stats bounced", "Check"], rows,
                        title="Where the mail came from, as the destination saw it (sink) and as StatsService "
                              "counts it",
                        right=range(2, 9))


def show_rest_requests(console: Console, stack: Stack, rest: RestSender, tallies) -> None:
    """How much of the mail went through the REST Bridge, in which requests."""
    say(console, f"of them {sum(t.rest_sent for t in tallies):,} through the REST Bridge at "
                 f"http://{address(stack.http_address)} ({rest.requests[MESSAGES]:,} POST {MESSAGES} with JSON, "
                 f"{rest.requests[BATCH]:,} POST {BATCH}, {rest.requests[RAW]:,} POST {RAW}), the rest over SMTP")


def channels_table(checks: list[ChannelCheck]) -> Table:
    """Each Pool's mail per channel: accepted, bounced, received by the sink, and the
    source IPs it left from (with how many messages each)."""
    rows = [(check.channel, check.pool, render.count(check.accepted), render.count(check.bounced),
             render.count(check.delivered),
             " · ".join(f"{ip} {n}" for ip, n in sorted(check.sources.items())) or render.NONE,
             "MISMATCH" if check.problems else "ok") for check in checks]
    return render.table(["Channel", "Pool", "Accepted", "Bounced", "Sink received", "Source IPs (messages)", "Check"],
                        rows, title="Mail by channel: SMTP AUTH and the REST Bridge, rotated, delivered and counted "
                                    "alike", right=range(2, 5))


def show_feedback(console: Console, reports: list[FedReport]) -> None:
    """The reports fed to the inbound listener and what StatsService counts since."""
    console.print()
    console.print(render.table(
        ["Report", "About", "Return path (VERP)", "Source IP", "Listener", "StatsService now"],
        [(r.kind, r.rcpt, r.return_path, r.address, r.reply, r.counted) for r in reports],
        title="The feedback loop: reports about mail the demo sent, fed to the inbound listener"))


def show_dkim(console: Console, check: DkimCheck | None) -> None:
    """The line saying dkimpy verified a received message's signature (or why not)."""
    if check is None:
        return
    console.print()
    if check.problem:
        console.print(Text(f"DKIM: {check.problem}", style="bold red"))
    else:
        console.print(Text(f"DKIM: signature d={check.domain} s={check.selector} verified by dkimpy against the "
                           f"TXT record at {check.record_name}", style="bold green"))


def show_verdict(console: Console, problems: list[str], stats: list[pb.PoolStats], counts: dict,
                 reports: list[FedReport]) -> None:
    """CHECK FAILED with every problem, or OK with the totals that add up."""
    console.print()
    if problems:
        console.print(Text("CHECK FAILED:", style="bold red"))
        for problem in problems:
            console.print(Text(f"  - {problem}"))
        return
    sent = sum(s.sent for s in stats)
    delivered = sum(s.delivered for s in stats)
    bounced = sum(s.bounced for s in stats)
    notices = int(counts.get("notices", 0))
    console.print(Text(
        f"OK: StatsService counts {sent:,} sent = {delivered:,} delivered + {bounced:,} bounced, "
        f"exactly what the demo sent, Pool by Pool and IP by IP; the sink accepted "
        f"{int(counts.get('accepted', 0)) - notices:,} messages, as many as were delivered, "
        f"each from the IP StatsService credits (and {notices:,} DSN(s) to the senders of bounced mail, "
        "counted apart).", style="bold green"))
    if reports:
        console.print(Text(
            "OK: the asynchronous bounce moved its recipient from delivered to bounced, and the complaint "
            "counts on its IP: the stats are DSN-fed.", style="bold green"))


def show_endpoints(console: Console, stack: Stack, tenant: Tenant, data_dir: Path) -> None:
    """How to reach what --keep-running leaves running, and commands to try."""
    grpc_flags = f"--grpc {stack.grpc_address}"
    lines = [
        "",
        "Everything keeps running until Ctrl-C:",
        f"  control plane (gRPC)  {stack.grpc_address}",
        f"  admin token           {stack.admin_token}",
        f"  acme's account token  {tenant.token}",
        f"  SMTP Bridge           {address(stack.smtp_address)} (AUTH PLAIN/LOGIN without STARTTLS on loopback)",
        f"  REST Bridge           http://{address(stack.http_address)}/v1/messages (HTTP Basic: a Bridge's "
        "user and secret; /openapi.json, /metrics, /healthz)",
    ]
    for p in tenant.pools:
        lines.append(f"    {p.plan.bridge:<12} {p.pool.label:<20} user {p.bridge.username}  secret {p.secret}")
    lines += [
        f"  inbound listener      {address(stack.inbound_address)} (bounces to VERP return paths, reports to "
        "fbl@ / abuse@ / postmaster@ the server's hostname)",
        f"  sink (destination)    {address(stack.sink_address)}; counts in {stack.sink_counts_path}",
        f"  data directory        {data_dir} (removed on exit)",
        "",
        "Try:",
        f"  poolmta {grpc_flags} --token {tenant.token} pool list",
        f"  poolmta {grpc_flags} --token {tenant.token} stats pool {tenant.pools[0].pool.label} --watch",
        f"  poolmta {grpc_flags} --token {stack.admin_token} server status 1",
        f"  poolmta {grpc_flags} --token {stack.admin_token} report unattributed",
    ]
    for line in lines:
        say(console, line)


def address(host_port: tuple[str, int]) -> str:
    """`host:port`."""
    return f"{host_port[0]}:{host_port[1]}"
