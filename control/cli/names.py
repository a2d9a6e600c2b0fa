"""Objects named by name as well as by id on the command line: `account tier globex
ESSENTIAL`, `server status mta1.example.net`, `bridge revoke promo-app`.

An argument that is a number is the object's id, passed on for the control plane to
judge (an unknown one is its NOT_FOUND); anything else is looked up by name in the
matching List RPC. No match, or several (Bridge names need not be unique), is a
CliError naming what exists, so the person can pick the id.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._pb.poolmta.v1 import poolmta_pb2 as pb
from .client import CliError, ControlClient


@dataclass(frozen=True)
class Named:
    """One kind of object a command names: how to list it, its id and its name fields."""

    noun: str
    service: str
    method: str
    request: type
    items: str
    id_field: str
    name_field: str


ACCOUNT = Named("account", "accounts", "ListAccounts", pb.ListAccountsRequest, "accounts", "user_id", "name")
SERVER = Named("MTA server", "servers", "ListMtaServers", pb.ListMtaServersRequest, "servers", "server_id",
               "hostname")
BRIDGE = Named("bridge", "bridges", "ListBridges", pb.ListBridgesRequest, "bridges", "bridge_id", "name")


def resolve(client: ControlClient, kind: Named, text: str) -> int:
    """The id the argument `text` names: the number itself, else the id of the one
    `kind` whose name is `text` (exactly); CliError when none or several are."""
    wanted = text.strip()
    if wanted.isdigit():
        return int(wanted)
    items = client.list_all(kind.service, kind.method, kind.request(), kind.items)
    found = [item for item in items if getattr(item, kind.name_field) == wanted]
    if len(found) == 1:
        return getattr(found[0], kind.id_field)
    if found:
        ids = ", ".join(str(getattr(item, kind.id_field)) for item in found)
        raise CliError(f"{len(found)} {kind.noun}s are named {wanted!r} (ids {ids}): give the id")
    known = ", ".join(sorted(repr(getattr(item, kind.name_field)) for item in items)) or "none yet"
    raise CliError(f"no {kind.noun} with the name or id {wanted!r} (known: {known})")


def resolve_optional(client: ControlClient, kind: Named, text: str | None) -> int:
    """`resolve(client, kind, text)` when given, else 0 (not named: the control plane chooses)."""
    return resolve(client, kind, text) if text else 0
