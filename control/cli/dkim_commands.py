"""The `poolmta dkim` commands (an account token): the account's DKIM keys per sending
domain, and `poolmta pool signing`, the domains a pool signs with.

    poolmta dkim generate DOMAIN [--algorithm rsa|ed25519] [--selector S]
    poolmta dkim import DOMAIN --selector S --pem FILE
    poolmta dkim list [DOMAIN]
    poolmta dkim show ID
    poolmta dkim rotate DOMAIN [--selector S]
    poolmta dkim retire ID [--force]
    poolmta dkim delete ID
    poolmta pool signing POOL [--domain D] [--feedback-domain F] [--clear]

A key's TXT record is printed as plain lines (never wrapped), ready to paste; the
private key is never printed (the API never returns it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.text import Text

from .._pb.poolmta.v1 import poolmta_pb2 as pb
from . import render
from .client import EXIT_USAGE, CliError
from .commands import CommandTree, Context, done, emit_pages, list_options

ALGORITHMS = {"rsa": pb.RSA_SHA256, "ed25519": pb.ED25519_SHA256}
TXT_MARKER = "TXT record (one line; a zone file splits it into quoted strings of at most 255 characters):"


def algorithm(value: int) -> str:
    """A DkimAlgorithm as the a= tag says it: rsa-sha256, ed25519-sha256 ("-" unset)."""
    if value == pb.DKIM_ALGORITHM_UNSPECIFIED or value not in pb.DkimAlgorithm.values():
        return render.NONE
    return pb.DkimAlgorithm.Name(value).lower().replace("_", "-")


def state(value: int) -> str:
    """A DkimKeyState as people read it: ACTIVE, PUBLISHED, RETIRED ("-" unset)."""
    if value == pb.DKIM_KEY_STATE_UNSPECIFIED or value not in pb.DkimKeyState.values():
        return render.NONE
    return pb.DkimKeyState.Name(value).removeprefix("DKIM_")


def key(k: pb.DkimKey) -> Text:
    """One key, field by field (the TXT record follows as plain lines: see _show_key)."""
    return render.details(
        [
            ("ID", str(k.key_id)), ("Domain", k.domain), ("Selector", k.selector),
            ("Algorithm", algorithm(k.algorithm)), ("State", state(k.state)),
            ("Created", render.when(k, "create_time")), ("Retired", render.when(k, "retire_time")),
            ("DNS name", k.dns_record_name),
        ]
    )


def keys(items: Sequence[pb.DkimKey]):
    """Keys, one row each, by domain then age."""
    return render.table(
        ["ID", "DOMAIN", "SELECTOR", "ALGORITHM", "STATE", "CREATED", "DNS NAME"],
        [
            (str(k.key_id), k.domain, k.selector, algorithm(k.algorithm), state(k.state),
             render.when(k, "create_time"), k.dns_record_name)
            for k in items
        ],
    )


def _show_key(ctx: Context, reply: pb.DkimKey, *, publish: bool = True) -> int:
    if ctx.json:
        ctx.printer.json(reply)
        return 0
    ctx.printer.show(key(reply))
    ctx.printer.line(TXT_MARKER)
    ctx.printer.line(reply.dns_txt_record)
    if publish and reply.state == pb.DKIM_ACTIVE:
        ctx.printer.note(f"Publish it at {reply.dns_record_name} before mail signed with it reaches receivers.")
    return 0


def _generate(ctx: Context, a) -> int:
    request = pb.GenerateDkimKeyRequest(domain=a.domain, algorithm=ALGORITHMS[a.algorithm],
                                        selector=a.selector or "")
    return _show_key(ctx, ctx.client.call("dkim", "GenerateDkimKey", request))


def _import(ctx: Context, a) -> int:
    try:
        pem = Path(a.pem).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {a.pem}: {exc.strerror}", EXIT_USAGE) from None
    request = pb.ImportDkimKeyRequest(domain=a.domain, selector=a.selector, private_key_pem=pem)
    return _show_key(ctx, ctx.client.call("dkim", "ImportDkimKey", request))


def _list(ctx: Context, a) -> int:
    return emit_pages(ctx, a, ("dkim", "ListDkimKeys"), pb.ListDkimKeysRequest(domain=a.domain or ""), "keys",
                      lambda r: keys(r.keys))


def _show(ctx: Context, a) -> int:
    return _show_key(ctx, ctx.client.call("dkim", "GetDkimKey", pb.GetDkimKeyRequest(key_id=a.id)), publish=False)


def _rotate(ctx: Context, a) -> int:
    request = pb.RotateDkimKeyRequest(domain=a.domain, selector=a.selector or "")
    reply = _show_key(ctx, ctx.client.call("dkim", "RotateDkimKey", request))
    if not ctx.json:
        ctx.printer.note("The previous key is PUBLISHED: keep its TXT record until mail signed with it is "
                         "delivered, then `poolmta dkim retire ID`.")
    return reply


def _retire(ctx: Context, a) -> int:
    reply = ctx.client.call("dkim", "RetireDkimKey", pb.RetireDkimKeyRequest(key_id=a.id, force=a.force))
    return done(ctx, reply, f"Key {reply.key_id} ({reply.dns_record_name}) is RETIRED: its TXT record may go.")


def _delete(ctx: Context, a) -> int:
    reply = ctx.client.call("dkim", "DeleteDkimKey", pb.DeleteDkimKeyRequest(key_id=a.id))
    return done(ctx, reply, f"Deleted DKIM key {a.id}.")


def _pool_signing(ctx: Context, a) -> int:
    if a.clear and (a.domain is not None or a.feedback_domain is not None):
        raise CliError("give --clear alone, or --domain / --feedback-domain", EXIT_USAGE)
    smtp_id = ctx.client.resolve_pool(a.pool)
    pool = ctx.client.call("pools", "GetPool", pb.GetPoolRequest(smtp_id=smtp_id))
    if a.clear or a.domain is not None or a.feedback_domain is not None:
        request = pb.SetPoolSigningDomainsRequest(
            smtp_id=smtp_id,
            signing_domain="" if a.clear else (pool.signing_domain if a.domain is None else a.domain),
            feedback_signing_domain="" if a.clear else (
                pool.feedback_signing_domain if a.feedback_domain is None else a.feedback_domain),
        )
        pool = ctx.client.call("pools", "SetPoolSigningDomains", request)
    return done(ctx, pool, f"Pool {render.pool_ref(pool.smtp_id, pool.label)} signs mail without a key of its "
                           f"own From domain as {render.text(pool.signing_domain)}; feedback signature: "
                           f"{render.text(pool.feedback_signing_domain)}.")


def add_pool_signing(tree: CommandTree, pool_commands) -> None:
    """Add `pool signing` to the `pool` group's subparsers `pool_commands`."""
    p = tree.leaf(pool_commands, "signing", _pool_signing,
                  "show or set the DKIM domains a pool signs with (each needs an active key)")
    p.add_argument("pool", metavar="POOL")
    p.add_argument("--domain", metavar="D", help="d= when the From domain has no active key ('' = none)")
    p.add_argument("--feedback-domain", metavar="F", help="d= of a second, feedback-loop signature ('' = none)")
    p.add_argument("--clear", action="store_true", help="sign with neither")


def add(tree: CommandTree) -> None:
    """Add the `dkim` group."""
    subs = tree.group("dkim", "DKIM keys per sending domain (account token)")
    p = tree.leaf(subs, "generate", _generate, "a new key for a domain; prints the TXT record to publish")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--algorithm", choices=sorted(ALGORITHMS), default="rsa",
                   help="rsa (RSA-2048, default; every verifier knows it) or ed25519 (RFC 8463)")
    p.add_argument("--selector", metavar="S", help="default pm<yyyymm><n>")
    p = tree.leaf(subs, "import", _import, "an existing unencrypted PEM key (RSA >= 1024 bits, or Ed25519)")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--selector", required=True, metavar="S", help="the selector its TXT record is published under")
    p.add_argument("--pem", required=True, metavar="FILE", help="the private key (never printed or logged)")
    p = tree.leaf(subs, "list", _list, "the account's keys, every state (one page unless --limit or --all)")
    p.add_argument("domain", nargs="?", metavar="DOMAIN", help="only this domain's")
    list_options(p)
    for name, handler, help_text in (("show", _show, "one key and its TXT record"),
                                     ("delete", _delete, "forget a RETIRED key")):
        p = tree.leaf(subs, name, handler, help_text)
        p.add_argument("id", type=int, metavar="ID")
    p = tree.leaf(subs, "rotate", _rotate, "a new key with a new selector; the old one stays PUBLISHED")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--selector", metavar="S", help="default pm<yyyymm><n>")
    p = tree.leaf(subs, "retire", _retire, "a PUBLISHED key's TXT record may go (--force: the ACTIVE key)")
    p.add_argument("id", type=int, metavar="ID")
    p.add_argument("--force", action="store_true", help="retire the domain's ACTIVE key without rotating")
