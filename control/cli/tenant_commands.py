"""The account commands of the `poolmta` command line (an account token): dedicated
Pools, IPs and their reassignment operations, Bridges, stats, message status."""

from __future__ import annotations

import argparse

from rich.live import Live

from .._pb.poolmta.v1 import poolmta_pb2 as pb
from ..contract.runtime import DEFAULT_SMTP_PORT
from . import dkim_commands, names, render, stats_render, trends
from .client import EXIT_ERROR, EXIT_USAGE, CliError
from .commands import (CommandTree, Context, add_bounce_domain_arguments, done, emit, emit_pages, list_options,
                       requested_bounce_domain)


def _header_arg(value: str) -> pb.Header:
    name, sep, text = value.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {value!r}")
    return pb.Header(name=name.strip(), value=text)


def _window_arg(value: str) -> int:
    try:
        return render.WINDOWS[value.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"window must be lifetime or 30d, got {value!r}") from None


# -- pool ---------------------------------------------------------------------------


def _pool_create(ctx: Context, a) -> int:
    server_id = names.resolve_optional(ctx.client, names.SERVER, a.server)
    request = pb.CreatePoolRequest(label=a.label, server_id=server_id, tag=a.tag or "", feed_type=a.feed_type or "",
                                   headers=a.headers or [])
    return emit(ctx, ctx.client.call("pools", "CreatePool", request), render.pool)


def _pool_list(ctx: Context, a) -> int:
    request = pb.ListPoolsRequest(server_id=names.resolve_optional(ctx.client, names.SERVER, a.server),
                                  status=pb.PoolStatus.Value(a.state.upper()) if a.state else 0)
    return emit_pages(ctx, a, ("pools", "ListPools"), request, "pools", lambda r: render.pools(r.pools))


def _pool_show(ctx: Context, a) -> int:
    smtp_id = ctx.client.resolve_pool(a.pool)
    return emit(ctx, ctx.client.call("pools", "GetPool", pb.GetPoolRequest(smtp_id=smtp_id)), render.pool)


def _pool_rename(ctx: Context, a) -> int:
    request = pb.RenamePoolRequest(smtp_id=ctx.client.resolve_pool(a.pool), label=a.new_label)
    return emit(ctx, ctx.client.call("pools", "RenamePool", request), render.pool)


def _pool_set_default(ctx: Context, a) -> int:
    request = pb.SetDefaultPoolRequest(smtp_id=ctx.client.resolve_pool(a.pool))
    return emit(ctx, ctx.client.call("pools", "SetDefaultPool", request), render.pool)


def _pool_delete(ctx: Context, a) -> int:
    smtp_id = ctx.client.resolve_pool(a.pool)
    reply = ctx.client.call("pools", "DeletePool", pb.DeletePoolRequest(smtp_id=smtp_id))
    return done(ctx, reply, f"Deleted pool {smtp_id}.")


def _pool_headers(ctx: Context, a) -> int:
    if a.headers and a.clear:
        raise CliError("give either --header or --clear, not both", EXIT_USAGE)
    smtp_id = ctx.client.resolve_pool(a.pool)
    if a.headers or a.clear:
        request = pb.SetPoolHeadersRequest(smtp_id=smtp_id, headers=[] if a.clear else a.headers)
        pool = ctx.client.call("pools", "SetPoolHeaders", request)
    else:
        pool = ctx.client.call("pools", "GetPool", pb.GetPoolRequest(smtp_id=smtp_id))
    if ctx.json:
        ctx.printer.json(pool)
    elif pool.headers:
        ctx.printer.show(render.pool_headers(pool))
    else:
        ctx.printer.line(f"Pool {render.pool_ref(pool.smtp_id, pool.label)} has no custom headers.")
    return 0


def _pool_feed_type(ctx: Context, a) -> int:
    request = pb.SetPoolFeedTypeRequest(smtp_id=ctx.client.resolve_pool(a.pool), feed_type=a.feed_type)
    return emit(ctx, ctx.client.call("pools", "SetPoolFeedType", request), render.pool)


def _pool_bounce_domain(ctx: Context, a) -> int:
    domain = requested_bounce_domain(a)
    smtp_id = ctx.client.resolve_pool(a.pool)
    if domain is not None:
        request = pb.SetPoolBounceDomainRequest(smtp_id=smtp_id, bounce_domain=domain)
        pool = ctx.client.call("pools", "SetPoolBounceDomain", request)
    else:
        pool = ctx.client.call("pools", "GetPool", pb.GetPoolRequest(smtp_id=smtp_id))
    return done(ctx, pool, f"Pool {render.pool_ref(pool.smtp_id, pool.label)} bounces to "
                           f"{render.bounce_domain(pool.bounce_domain)}.")


# -- ip -----------------------------------------------------------------------------


def _ip_provision(ctx: Context, a) -> int:
    smtp_id = ctx.client.resolve_optional_pool(a.pool)
    server_id = names.resolve_optional(ctx.client, names.SERVER, a.server)
    request = pb.ProvisionIpRequest(address=a.address, smtp_id=smtp_id, server_id=server_id,
                                    weight=a.weight or 0, hostname=a.hostname or "")
    return emit(ctx, ctx.client.call("ips", "ProvisionIp", request), render.ip)


def _ip_list(ctx: Context, a) -> int:
    request = pb.ListIpsRequest(smtp_id=ctx.client.resolve_optional_pool(a.pool),
                                server_id=names.resolve_optional(ctx.client, names.SERVER, a.server),
                                state=pb.IpState.Value(f"IP_{a.state.upper()}") if a.state else 0)
    return emit_pages(ctx, a, ("ips", "ListIps"), request, "ips", lambda r: render.ips(r.ips))


def _ip_show(ctx: Context, a) -> int:
    return emit(ctx, ctx.client.call("ips", "GetIp", pb.GetIpRequest(address=a.address)), render.ip)


def _ip_assign(ctx: Context, a) -> int:
    request = pb.AssignPoolRequest(address=a.address, smtp_id=ctx.client.resolve_pool(a.pool))
    op = ctx.client.call("ips", "AssignPool", request)
    if not a.wait:
        if ctx.json:
            ctx.printer.json(op)
        else:
            ctx.printer.line(f"Operation {op.operation_id} {render.op_state(op.state)}: moving {op.address} "
                             f"from pool {op.from_smtp_id} to pool {op.to_smtp_id}.")
            ctx.printer.line(f"Follow it with: poolmta op watch {op.operation_id}")
        return 0
    if ctx.json:
        ctx.printer.json(op, compact=True)
    else:
        ctx.printer.line(render.operation_line(op))
    return _watch_operation(ctx, op.operation_id, last_state=op.state)


def _ip_pause(ctx: Context, a) -> int:
    return emit(ctx, ctx.client.call("ips", "PauseIp", pb.PauseIpRequest(address=a.address)), render.ip)


def _ip_resume(ctx: Context, a) -> int:
    return emit(ctx, ctx.client.call("ips", "ResumeIp", pb.ResumeIpRequest(address=a.address)), render.ip)


def _ip_weight(ctx: Context, a) -> int:
    request = pb.SetIpWeightRequest(address=a.address, weight=a.weight)
    return emit(ctx, ctx.client.call("ips", "SetIpWeight", request), render.ip)


def _ip_release(ctx: Context, a) -> int:
    reply = ctx.client.call("ips", "ReleaseIp", pb.ReleaseIpRequest(address=a.address))
    return done(ctx, reply, f"Released IP {a.address}.")


# -- op -----------------------------------------------------------------------------


def _op_show(ctx: Context, a) -> int:
    op = ctx.client.call("ips", "GetOperation", pb.GetOperationRequest(operation_id=a.id))
    return emit(ctx, op, render.operation)


def _op_list(ctx: Context, a) -> int:
    return emit_pages(ctx, a, ("ips", "ListOperations"), pb.ListOperationsRequest(address=a.ip or ""), "operations",
                      lambda r: render.operations(r.operations))


def _op_watch(ctx: Context, a) -> int:
    return _watch_operation(ctx, a.id, last_state=None)


def _watch_operation(ctx: Context, operation_id: str, last_state: int | None) -> int:
    """Print each state change of the operation until DONE (exit 0) or FAILED (exit 1)."""
    final = None
    for op in ctx.client.stream("ips", "WatchOperation", pb.WatchOperationRequest(operation_id=operation_id)):
        if op.state != last_state:
            if ctx.json:
                ctx.printer.json(op, compact=True)
            else:
                ctx.printer.line(render.operation_line(op))
            last_state = op.state
        final = op
        if op.state in (pb.DONE, pb.FAILED):
            break
    if final is None or final.state not in (pb.DONE, pb.FAILED):
        raise CliError(f"the control plane ended the watch of operation {operation_id} before it finished")
    if final.state == pb.FAILED:
        raise CliError(f"operation {operation_id} failed: {final.error or 'no reason given'}", EXIT_ERROR)
    return 0


# -- bridge -------------------------------------------------------------------------


def _bridge_id(ctx: Context, a) -> int:
    return names.resolve(ctx.client, names.BRIDGE, a.id)


def _bridge_create(ctx: Context, a) -> int:
    smtp_id = ctx.client.resolve_optional_pool(a.pool)
    server_id = names.resolve_optional(ctx.client, names.SERVER, a.server)
    request = pb.CreateBridgeRequest(name=a.name, smtp_id=smtp_id, server_id=server_id,
                                     feed_type=a.feed_type or "", trusted_networks=a.trust or [])
    reply = ctx.client.call("bridges", "CreateBridge", request)
    return _bridge_with_secret(ctx, reply, "SMTP secret")


def _bridge_rotate(ctx: Context, a) -> int:
    request = pb.RotateBridgeSecretRequest(bridge_id=_bridge_id(ctx, a))
    reply = ctx.client.call("bridges", "RotateBridgeSecret", request)
    return _bridge_with_secret(ctx, reply, "New SMTP secret (the old one no longer works)")


def _bridge_with_secret(ctx: Context, reply: pb.BridgeWithSecret, what: str) -> int:
    if ctx.json:
        ctx.printer.json(reply)
        return 0
    b = reply.bridge
    p = ctx.printer
    p.show(render.bridge(b))
    p.line()
    p.line(f"SMTP username: {b.username}")
    p.line(f"{what} (shown once: only its hash is stored, so save it now):")
    p.line(reply.secret)
    p.line()
    p.line(f"Send with SMTP AUTH (PLAIN or LOGIN) as {b.username} to the SMTP bridge of MTA server "
           f"{b.server_id} (port {DEFAULT_SMTP_PORT} unless its data plane was started with --smtp-listen).")
    return 0


def _bridge_list(ctx: Context, a) -> int:
    request = pb.ListBridgesRequest(smtp_id=ctx.client.resolve_optional_pool(a.pool),
                                    server_id=names.resolve_optional(ctx.client, names.SERVER, a.server),
                                    state=pb.BridgeState.Value(f"BRIDGE_{a.state.upper()}") if a.state else 0)
    return emit_pages(ctx, a, ("bridges", "ListBridges"), request, "bridges", lambda r: render.bridges(r.bridges))


def _bridge_show(ctx: Context, a) -> int:
    request = pb.GetBridgeRequest(bridge_id=_bridge_id(ctx, a))
    return emit(ctx, ctx.client.call("bridges", "GetBridge", request), render.bridge)


def _bridge_revoke(ctx: Context, a) -> int:
    request = pb.RevokeBridgeRequest(bridge_id=_bridge_id(ctx, a))
    return emit(ctx, ctx.client.call("bridges", "RevokeBridge", request), render.bridge)


def _bridge_dsn(ctx: Context, a) -> int:
    if a.state is None:
        bridge = ctx.client.call("bridges", "GetBridge", pb.GetBridgeRequest(bridge_id=_bridge_id(ctx, a)))
    else:
        request = pb.SetBridgeSendDsnsRequest(bridge_id=_bridge_id(ctx, a), send_dsns=a.state == "on")
        bridge = ctx.client.call("bridges", "SetBridgeSendDsns", request)
    return done(ctx, bridge, f"Bridge {bridge.bridge_id} ({bridge.name}): DSNs to senders "
                             f"{render.dsn_switch(bridge.send_dsns)}.")


def _bridge_trust(ctx: Context, a) -> int:
    # `none` is how the help spells "clear"; an empty list is what the API takes for it.
    cidrs = [] if [c.lower() for c in a.cidrs] == ["none"] else a.cidrs
    request = pb.SetBridgeTrustedNetworksRequest(bridge_id=_bridge_id(ctx, a), trusted_networks=cidrs)
    return emit(ctx, ctx.client.call("bridges", "SetBridgeTrustedNetworks", request), render.bridge)


# -- stats --------------------------------------------------------------------------


def _stats_pool(ctx: Context, a) -> int:
    smtp_id = ctx.client.resolve_pool(a.pool)
    if trends.wanted(a):
        return trends.show_pool_trend(ctx, smtp_id, a)
    if a.ip:
        raise CliError("--ip picks one IP's share of the pool's trend: give it with --trend", EXIT_USAGE)
    if not a.watch:
        stats = ctx.client.call("stats", "GetPoolStats", pb.GetPoolStatsRequest(smtp_id=smtp_id, window=a.window))
        return emit(ctx, stats, stats_render.pool_stats)
    updates = ctx.client.stream("stats", "WatchPoolStats", pb.WatchPoolStatsRequest(smtp_id=smtp_id, window=a.window))
    p = ctx.printer
    if ctx.json:
        for stats in updates:
            p.json(stats, compact=True)
    elif p.console.is_terminal:
        with Live(console=p.console, auto_refresh=False) as live:
            for stats in updates:
                live.update(stats_render.pool_stats(stats, live=True), refresh=True)
    else:
        for stats in updates:
            p.show(stats_render.pool_stats(stats, live=True))
            p.line()
    raise CliError(f"the control plane ended the stats stream of pool {smtp_id}")


def _stats_ip(ctx: Context, a) -> int:
    if trends.wanted(a):
        return trends.show_ip_trend(ctx, a)
    stats = ctx.client.call("stats", "GetIpStats", pb.GetIpStatsRequest(address=a.address, window=a.window))
    return emit(ctx, stats, lambda s: stats_render.ip_stats(s, a.window))


def _message_status(ctx: Context, a) -> int:
    status = ctx.client.call("stats", "GetMessageStatus", pb.GetMessageStatusRequest(message_id=a.id))
    return emit(ctx, status, stats_render.message_status)


# -- parsers ------------------------------------------------------------------------


def _pool_option(parser: argparse.ArgumentParser, help_text: str, required: bool = False) -> None:
    parser.add_argument("--pool", metavar="POOL", required=required, help=help_text + " (smtp_id or label)")


def add(tree: CommandTree) -> None:
    """Add the `pool`, `ip`, `bridge`, `op`, `stats` and `message` groups."""
    # pool
    subs = tree.group("pool", "dedicated pools (account token)")
    p = tree.leaf(subs, "create", _pool_create, "create a pool on an MTA server")
    p.add_argument("label")
    p.add_argument("--server", metavar="SERVER", help="MTA server id or hostname (fixes the zone; default the "
                   "platform's only one)")
    p.add_argument("--tag", help="slug for the internal name (default derived from the label)")
    p.add_argument("--feed-type", help="stamped as x-feedtype")
    p.add_argument("--header", dest="headers", type=_header_arg, action="extend", nargs="+", metavar="NAME=VALUE",
                   help="a custom header stamped on every message (repeatable)")
    list_options(tree.leaf(subs, "list", _pool_list, "list the account's pools (one page unless --limit or --all)"),
                 server=True, states=("active", "paused", "empty"))
    p = tree.leaf(subs, "show", _pool_show, "show one pool")
    p.add_argument("pool", metavar="POOL")
    p = tree.leaf(subs, "rename", _pool_rename, "change a pool's label (its internal name stays)")
    p.add_argument("pool", metavar="POOL")
    p.add_argument("new_label", metavar="NEW_LABEL")
    p = tree.leaf(subs, "set-default", _pool_set_default, "make the pool new IPs land in")
    p.add_argument("pool", metavar="POOL")
    p = tree.leaf(subs, "delete", _pool_delete, "delete an empty, non-default pool")
    p.add_argument("pool", metavar="POOL")
    p = tree.leaf(subs, "headers", _pool_headers, "show, replace (--header) or clear (--clear) a pool's custom headers")
    p.add_argument("pool", metavar="POOL")
    # One spelling with `pool create --header`; `--set` stays as a hidden alias for older scripts.
    p.add_argument("--header", dest="headers", type=_header_arg, action="extend", nargs="+",
                   metavar="NAME=VALUE", help="replace every custom header with these (repeatable)")
    p.add_argument("--set", dest="headers", type=_header_arg, action="extend", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--clear", action="store_true", help="remove every custom header")
    p = tree.leaf(subs, "feed-type", _pool_feed_type, "change a pool's feed type")
    p.add_argument("pool", metavar="POOL")
    p.add_argument("feed_type", metavar="TYPE")
    p = tree.leaf(subs, "bounce-domain", _pool_bounce_domain,
                  "show or set the domain of the pool's VERP return paths (default the MTA server's)")
    p.add_argument("pool", metavar="POOL")
    add_bounce_domain_arguments(p, "the MTA server's bounce domain")
    dkim_commands.add_pool_signing(tree, subs)

    # ip
    subs = tree.group("ip", "dedicated IPs (account token)")
    p = tree.leaf(subs, "provision", _ip_provision, "add a dedicated IP (to the default pool unless --pool)")
    p.add_argument("address")
    _pool_option(p, "pool to land in (default the default pool)")
    p.add_argument("--server", metavar="SERVER", help="MTA server id or hostname; for the account's first IP "
                   "when the platform has several")
    p.add_argument("--weight", type=int, help="rotation weight 1-1000 (default 1)")
    p.add_argument("--hostname", help="HELO hostname (default the server's hostname)")
    p = tree.leaf(subs, "list", _ip_list, "list the account's IPs (one page unless --limit or --all)")
    list_options(p, server=True, states=("active", "paused"))
    _pool_option(p, "only this pool's IPs")
    p = tree.leaf(subs, "show", _ip_show, "show one IP")
    p.add_argument("address")
    p = tree.leaf(subs, "assign", _ip_assign, "queue moving an IP to another pool of its MTA server")
    p.add_argument("address")
    p.add_argument("pool", metavar="POOL")
    p.add_argument("--wait", action="store_true", help="follow the operation until DONE or FAILED")
    for name, handler, help_text in (("pause", _ip_pause, "take an IP out of rotation"),
                                     ("resume", _ip_resume, "put an IP back into rotation"),
                                     ("release", _ip_release, "remove an IP from the account")):
        p = tree.leaf(subs, name, handler, help_text)
        p.add_argument("address")
    p = tree.leaf(subs, "weight", _ip_weight, "change an IP's rotation weight (0 takes it out of rotation)")
    p.add_argument("address")
    p.add_argument("weight", type=int, metavar="W")

    # bridge
    subs = tree.group("bridge", "SMTP / API credentials exposing a pool (account token)")
    p = tree.leaf(subs, "create", _bridge_create, "create a bridge; prints its secret once")
    p.add_argument("name")
    route = p.add_mutually_exclusive_group(required=True)
    route.add_argument("--pool", metavar="POOL", help="pool to route through (smtp_id or label; PRO, BUSINESS)")
    route.add_argument("--server", metavar="SERVER", help="MTA server whose shared pool it uses (ESSENTIAL)")
    p.add_argument("--feed-type", help="overrides the pool's x-feedtype")
    p.add_argument("--trust", action="extend", nargs="+", metavar="CIDR",
                   help="client networks that may send without AUTH")
    p = tree.leaf(subs, "list", _bridge_list, "list the account's bridges (never their secrets; one page unless "
                  "--limit or --all)")
    list_options(p, server=True, states=("active", "revoked"))
    _pool_option(p, "only this pool's bridges")
    for name, handler, help_text in (("show", _bridge_show, "show one bridge (never its secret)"),
                                     ("revoke", _bridge_revoke, "revoke a bridge"),
                                     ("rotate", _bridge_rotate, "replace a bridge's secret; prints the new one once")):
        p = tree.leaf(subs, name, handler, help_text)
        p.add_argument("id", metavar="BRIDGE")
    p = tree.leaf(subs, "dsn", _bridge_dsn, "show, or turn on or off, the DSNs senders get for bounced mail")
    p.add_argument("id", metavar="BRIDGE")
    p.add_argument("state", nargs="?", choices=("on", "off"), metavar="on|off")
    p = tree.leaf(subs, "trust", _bridge_trust, "replace the networks trusted to send without AUTH (none = clear)")
    p.add_argument("id", metavar="BRIDGE")
    p.add_argument("cidrs", nargs="*", metavar="CIDR")

    # op
    subs = tree.group("op", "IP reassignment operations (account token)")
    p = tree.leaf(subs, "list", _op_list, "the account's operations, newest first")
    p.add_argument("--ip", metavar="ADDRESS", help="only the operations moving this IP")
    list_options(p)
    p = tree.leaf(subs, "show", _op_show, "show an operation")
    p.add_argument("id", metavar="ID")
    p = tree.leaf(subs, "watch", _op_watch, "follow an operation until DONE or FAILED (exit 1 on FAILED)")
    p.add_argument("id", metavar="ID")

    # stats
    subs = tree.group("stats", "Sent / Delivered / Bounced per pool and per IP, totals and trends (account token)")
    p = tree.leaf(subs, "pool", _stats_pool, "a pool's totals, delivery rate and per-IP breakdown, or its trend")
    p.add_argument("pool", metavar="POOL")
    p.add_argument("--window", type=_window_arg, default=pb.LIFETIME, metavar="{lifetime,30d}")
    p.add_argument("--watch", action="store_true", help="keep redrawing as the figures change, until Ctrl-C")
    trends.add_options(p)
    p.add_argument("--ip", metavar="ADDRESS", help="with --trend: only this IP's share of the pool")
    p = tree.leaf(subs, "ip", _stats_ip, "one IP's figures, complaints included")
    p.add_argument("address")
    p.add_argument("--window", type=_window_arg, default=pb.LIFETIME, metavar="{lifetime,30d}")
    trends.add_options(p)

    # message
    subs = tree.group("message", "delivery events of one message (account token)")
    p = tree.leaf(subs, "status", _message_status, "every delivery outcome of a message, by recipient")
    p.add_argument("id", metavar="MESSAGE_ID", help="the id from the bridge's 250 reply")
