"""Finding the records a rule works on, or refusing the request.

Every rule of the registry looks its objects up here, so two rules hold in one
place: a record that is absent, or another account's pool, IP, bridge or
operation, is NotFound (exactly as if it did not exist); and a record whose
unique key is taken already is AlreadyExists.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from typing import Iterator, TypeVar

from .. import models, validation
from ..contract.json_records import quoted
from ..errors import AlreadyExists, InvalidArgument, NotFound
from ..models import Account
from ..store import Store, is_unique_violation

R = TypeVar("R")


def account(s: Store, user_id: int) -> Account:
    """The account `user_id`, or NotFound."""
    return _found(s.account(user_id), f"no account with user_id {user_id}")


def server(s: Store, server_id: int) -> models.MtaServer:
    """The MTA server `server_id`, or NotFound."""
    return _found(s.server(server_id), f"no MTA server with server_id {server_id}")


def server_or_only(s: Store, server_id: int, what: str) -> models.MtaServer:
    """The MTA server `server_id`; when it is 0 (not given), the platform's only MTA
    server, or INVALID_ARGUMENT saying `what` needs one named when there are several
    (or none yet); NotFound for an unknown id."""
    if server_id:
        return server(s, server_id)
    servers = s.servers()
    if len(servers) == 1:
        return servers[0]
    if not servers:
        raise InvalidArgument(f"{what} needs an MTA server, and none is registered yet")
    ids = ", ".join(str(m.server_id) for m in servers)
    raise InvalidArgument(f"server_id is required for {what}: this platform has {len(servers)} MTA servers ({ids})")


def named(record: R | None, name: str, noun: str) -> R:
    """`record`, the one a store lookup by name found, or NotFound naming `name`."""
    return _found(record, f"no {noun} {quoted(name)}")


def list_filter(s: Store, account: Account | None, *, smtp_id: int = 0, server_id: int = 0) -> None:
    """Check what a listing filters on: the pool `smtp_id` is the account's and the MTA
    server `server_id` exists, when given (0: no such filter); NotFound otherwise, so an
    unknown filter is never an empty list that looks like a real answer."""
    if smtp_id:
        pool(s, account, smtp_id)
    if server_id:
        server(s, server_id)


def pool(s: Store, account: Account, smtp_id: int) -> models.Pool:
    """The account's pool `smtp_id`, or NotFound."""
    return _found(s.pool(smtp_id) if smtp_id > 0 else None, f"no pool with smtp_id {smtp_id}", owner=account)


def ip(s: Store, account: Account, address: str) -> models.DedicatedIp:
    """The account's dedicated IP at `address` (canonicalised first, see canonical_address), or NotFound."""
    address = validation.canonical_address(address)
    return _found(s.ip(address), f"no dedicated IP {address} in this account", owner=account)


def bridge(s: Store, account: Account, bridge_id: int) -> models.Bridge:
    """The account's bridge `bridge_id`, or NotFound."""
    return _found(s.bridge(bridge_id) if bridge_id > 0 else None, f"no bridge with bridge_id {bridge_id}",
                  owner=account)


def operation(s: Store, account: Account, operation_id: str) -> models.Operation:
    """The account's operation `operation_id`, or NotFound."""
    return _found(s.operation(operation_id), f"no operation {quoted(operation_id)}", owner=account)


@contextmanager
def unique(message: str) -> Iterator[None]:
    """For a block that inserts under a unique key: the store refusing a duplicate
    becomes AlreadyExists(message); any other integrity error goes through."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        if is_unique_violation(exc):
            raise AlreadyExists(message) from None
        raise


def _found(record: R | None, message: str, *, owner: Account | None = None) -> R:
    if record is None or (owner is not None and record.user_id != owner.user_id):
        raise NotFound(message)
    return record
