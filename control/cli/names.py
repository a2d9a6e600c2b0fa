"""Objects named by name as well as by id on the command line: `account tier globex
ESSENTIAL`, `server status mta1.example.net`, `bridge revoke promo-app`, `pool show
promo`.

An argument that is a number is the object's id, passed on for the control plane to
judge (an unknown one is its NOT_FOUND); anything else is resolved by the control
plane: one Get call by name (GetAccount by name, GetMtaServer by hostname, GetBridge
by name, GetPool by label), never a listing, so naming an object costs the same with
ten objects or fifty thousand.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._pb.poolmta.v1 import poolmta_pb2 as pb
from .client import CliError, ControlClient


@dataclass(frozen=True)
class Named:
    """One kind of object a command names: the Get call that finds it by name, its id
    and its name fields, and the command that lists them (for the hint)."""

    noun: str
    service: str
    method: str
    request: type
    id_field: str
    name_field: str
    lister: str


ACCOUNT = Named("account", "accounts", "GetAccount", pb.GetAccountRequest, "user_id", "name", "account list")
SERVER = Named("MTA server", "servers", "GetMtaServer", pb.GetMtaServerRequest, "server_id", "hostname",
               "server list")
BRIDGE = Named("bridge", "bridges", "GetBridge", pb.GetBridgeRequest, "bridge_id", "name", "bridge list")


def resolve(client: ControlClient, kind: Named, text: str) -> int:
    """The id the argument `text` names: the number itself, else the id of the `kind`
    whose name is `text` (exactly), asked of the control plane in one call; CliError
    when there is none."""
    wanted = text.strip()
    if wanted.isdigit():
        return int(wanted)
    return by_name(client, kind, wanted)


def by_name(client: ControlClient, kind: Named, name: str) -> int:
    """The id of the `kind` called `name`: one Get call; CliError naming it when the
    control plane knows none (another account's is none too)."""
    found = client.found(kind.service, kind.method, kind.request(**{kind.name_field: name}))
    if found is None:
        raise CliError(f"no {kind.noun} with the name or id {name!r}", hint=f"`poolmta {kind.lister}` shows them")
    return getattr(found, kind.id_field)


def resolve_optional(client: ControlClient, kind: Named, text: str | None) -> int:
    """`resolve(client, kind, text)` when given, else 0 (not named: the control plane chooses)."""
    return resolve(client, kind, text) if text else 0
