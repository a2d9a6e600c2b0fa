"""The admin commands of the `poolmta` command line (platform admin token): tenant
accounts, and MTA servers with their shared pools."""

from __future__ import annotations

import argparse

from .._pb.poolmta.v1 import poolmta_pb2 as pb
from . import names, render
from .commands import (CommandTree, Context, add_bounce_domain_arguments, done, emit, emit_pages, list_options,
                       requested_bounce_domain)

TIERS = ("ESSENTIAL", "PRO", "BUSINESS")


def _tier_arg(value: str) -> str:
    upper = value.upper()
    if upper not in TIERS:
        raise argparse.ArgumentTypeError(f"tier must be one of {', '.join(TIERS)}, got {value!r}")
    return upper


# -- account ------------------------------------------------------------------------


def _account_create(ctx: Context, a) -> int:
    request = pb.CreateAccountRequest(name=a.name, tier=pb.Tier.Value(a.tier))
    reply = ctx.client.call("accounts", "CreateAccount", request)
    if ctx.json:
        ctx.printer.json(reply)
        return 0
    p = ctx.printer
    p.show(render.account(reply.account))
    p.line()
    p.line("API token (shown once: only its hash is stored, so save it now):")
    p.line(reply.token)
    p.line()
    p.line("Pool, ip, bridge and stats commands take it as --token or POOLMTA_TOKEN.")
    return 0


def _account_list(ctx: Context, a) -> int:
    request = pb.ListAccountsRequest(server_id=names.resolve_optional(ctx.client, names.SERVER, a.server),
                                     tier=pb.Tier.Value(a.tier) if a.tier else 0)
    return emit_pages(ctx, a, ("accounts", "ListAccounts"), request, "accounts", lambda r: render.accounts(r.accounts))


def _account_show(ctx: Context, a) -> int:
    return emit(ctx, ctx.client.call("accounts", "GetAccount", pb.GetAccountRequest(user_id=names.resolve(ctx.client, names.ACCOUNT, a.id))), render.account)


def _account_tier(ctx: Context, a) -> int:
    request = pb.SetAccountTierRequest(user_id=names.resolve(ctx.client, names.ACCOUNT, a.id), tier=pb.Tier.Value(a.tier))
    return emit(ctx, ctx.client.call("accounts", "SetAccountTier", request), render.account)


def _account_token(ctx: Context, a) -> int:
    user_id = names.resolve(ctx.client, names.ACCOUNT, a.id)
    request = pb.IssueAccountTokenRequest(user_id=user_id, revoke_existing=a.revoke_existing)
    reply = ctx.client.call("accounts", "IssueAccountToken", request)
    if ctx.json:
        ctx.printer.json(reply)
        return 0
    p = ctx.printer
    revoked = " Every earlier token of the account is revoked." if a.revoke_existing else ""
    p.line(f"New API token for account {a.id} (shown once: only its hash is stored, so save it now).{revoked}")
    p.line(reply.token)
    return 0


# -- server -------------------------------------------------------------------------


def _server_register(ctx: Context, a) -> int:
    request = pb.RegisterMtaServerRequest(hostname=a.hostname, zone=a.zone, bounce_domain=a.bounce_domain or "")
    reply = ctx.client.call("servers", "RegisterMtaServer", request)
    emit(ctx, reply, render.server)
    if not ctx.json:
        ctx.printer.line()
        ctx.printer.line(f"Its data plane: poolmta up --server-id {reply.server_id}  "
                         f"(or poolmta dataplane --server-id {reply.server_id})")
    return 0


def _server_list(ctx: Context, a) -> int:
    return emit_pages(ctx, a, ("servers", "ListMtaServers"), pb.ListMtaServersRequest(), "servers",
                      lambda r: render.servers(r.servers))


def _server_show(ctx: Context, a) -> int:
    return emit(ctx, ctx.client.call("servers", "GetMtaServer", pb.GetMtaServerRequest(server_id=names.resolve(ctx.client, names.SERVER, a.id))),
                render.server)


def _server_bounce_domain(ctx: Context, a) -> int:
    domain = requested_bounce_domain(a)
    if domain is not None:
        request = pb.SetMtaServerBounceDomainRequest(server_id=names.resolve(ctx.client, names.SERVER, a.id), bounce_domain=domain)
        server = ctx.client.call("servers", "SetMtaServerBounceDomain", request)
    else:
        server = ctx.client.call("servers", "GetMtaServer", pb.GetMtaServerRequest(server_id=names.resolve(ctx.client, names.SERVER, a.id)))
    return done(ctx, server, f"MTA server {server.server_id} ({server.hostname}) bounces to "
                             f"{render.server_bounce_domain(server)}.")


def _shared_ip_add(ctx: Context, a) -> int:
    request = pb.ProvisionSharedIpRequest(server_id=names.resolve(ctx.client, names.SERVER, a.server_id), address=a.address, weight=a.weight or 0,
                                          hostname=a.hostname or "")
    return emit(ctx, ctx.client.call("servers", "ProvisionSharedIp", request), render.ip)


def _shared_ip_list(ctx: Context, a) -> int:
    request = pb.ListSharedIpsRequest(server_id=names.resolve(ctx.client, names.SERVER, a.server_id))
    return emit_pages(ctx, a, ("servers", "ListSharedIps"), request, "ips", lambda r: render.ips(r.ips))


def _shared_ip_release(ctx: Context, a) -> int:
    reply = ctx.client.call("servers", "ReleaseSharedIp", pb.ReleaseSharedIpRequest(address=a.address))
    return done(ctx, reply, f"Released shared IP {a.address}.")


def _server_republish(ctx: Context, a) -> int:
    request = pb.RepublishSnapshotsRequest(server_id=names.resolve_optional(ctx.client, names.SERVER, a.id))
    return emit(ctx, ctx.client.call("servers", "RepublishSnapshots", request), render.republished)


def _server_status(ctx: Context, a) -> int:
    request = pb.GetRoutingStatusRequest(server_id=names.resolve(ctx.client, names.SERVER, a.id))
    return emit(ctx, ctx.client.call("servers", "GetRoutingStatus", request), render.routing_status)


def _whoami(ctx: Context, a) -> int:
    reply = ctx.client.call("accounts", "WhoAmI", pb.WhoAmIRequest())
    return done(ctx, reply, render.whoami(reply))


# -- parsers ------------------------------------------------------------------------


def add(tree: CommandTree) -> None:
    """Add the `account` and `server` groups, and `whoami`."""
    tree.command("whoami", _whoami, "who the token speaks for: the platform admin or an account (either token)")
    # account
    subs = tree.group("account", "tenant accounts (admin token; ID|NAME: a user_id or an account name)")
    p = tree.leaf(subs, "create", _account_create, "create an account; prints its API token once")
    p.add_argument("name")
    p.add_argument("--tier", type=_tier_arg, required=True, metavar="{ESSENTIAL,PRO,BUSINESS}")
    p = tree.leaf(subs, "list", _account_list, "list the accounts, oldest first (one page unless --limit or --all)")
    list_options(p, server=True)
    p.add_argument("--tier", type=_tier_arg, metavar="{ESSENTIAL,PRO,BUSINESS}", help="only this tier's accounts")
    p = tree.leaf(subs, "show", _account_show, "show one account")
    p.add_argument("id", metavar="ID|NAME")
    p = tree.leaf(subs, "tier", _account_tier, "change an account's tier")
    p.add_argument("id", metavar="ID|NAME")
    p.add_argument("tier", type=_tier_arg, metavar="{ESSENTIAL,PRO,BUSINESS}")
    p = tree.leaf(subs, "token", _account_token, "issue a new API token (printed once)")
    p.add_argument("id", metavar="ID|NAME")
    p.add_argument("--revoke-existing", action="store_true", help="revoke every earlier token of the account")

    # server
    subs = tree.group("server", "MTA servers and their shared pools (admin token; SERVER: a server_id or "
                      "a hostname)")
    p = tree.leaf(subs, "register", _server_register, "register an MTA server")
    p.add_argument("--hostname", required=True, help="its public hostname (default HELO name of its IPs)")
    p.add_argument("--zone", required=True, help="its zone, e.g. US-1, EU-1, MTA4")
    p.add_argument("--bounce-domain", metavar="DOMAIN",
                   help="domain of its VERP return paths, with an MX to it (default its hostname)")
    list_options(tree.leaf(subs, "list", _server_list, "list MTA servers (one page unless --limit or --all)"))
    p = tree.leaf(subs, "show", _server_show, "show one MTA server")
    p.add_argument("id", metavar="ID|NAME")
    p = tree.leaf(subs, "bounce-domain", _server_bounce_domain,
                  "show or set the domain of the VERP return paths of the server's pools without "
                  "their own (default its hostname)")
    p.add_argument("id", metavar="SERVER")
    add_bounce_domain_arguments(p, "the server's hostname")
    shared_subs = tree.group("shared-ip", "IPs of a server's shared pool (ESSENTIAL traffic)", within=subs)
    p = tree.leaf(shared_subs, "add", _shared_ip_add, "add an IP to a server's shared pool")
    p.add_argument("server_id", metavar="SERVER")
    p.add_argument("address")
    p.add_argument("--weight", type=int, help="rotation weight (default 1)")
    p.add_argument("--hostname", help="HELO hostname (default the server's hostname)")
    p = tree.leaf(shared_subs, "list", _shared_ip_list, "list a server's shared IPs")
    list_options(p)
    p.add_argument("server_id", metavar="SERVER")
    p = tree.leaf(shared_subs, "release", _shared_ip_release, "remove an IP from its shared pool")
    p.add_argument("address")
    p = tree.leaf(subs, "republish", _server_republish, "rebuild routing snapshots from SQLite and publish them")
    p.add_argument("id", nargs="?", metavar="SERVER", help="only this server (default every server)")
    p = tree.leaf(subs, "status", _server_status, "routing versions and the version each live worker serves")
    p.add_argument("id", metavar="SERVER")
