"""Finding the records a rule works on, or refusing the request with NotFound.

Every rule of the registry looks its objects up here, so the tenant rule holds
in one place: another account's pool, IP, bridge or operation is NotFound,
exactly as if it did not exist.
"""

from __future__ import annotations

from .. import models, validation
from ..errors import NotFound
from ..models import Account
from ..store import Store


def account(s: Store, user_id: int) -> Account:
    """The account `user_id`, or NotFound."""
    found = s.account(user_id)
    if found is None:
        raise NotFound(f"no account with user_id {user_id}")
    return found


def server(s: Store, server_id: int) -> models.MtaServer:
    """The MTA server `server_id`, or NotFound."""
    found = s.server(server_id)
    if found is None:
        raise NotFound(f"no MTA server with server_id {server_id}")
    return found


def pool(s: Store, account: Account, smtp_id: int) -> models.Pool:
    """The account's pool `smtp_id`, or NotFound."""
    found = s.pool(smtp_id) if smtp_id > 0 else None
    if found is None or found.user_id != account.user_id:
        raise NotFound(f"no pool with smtp_id {smtp_id}")
    return found


def ip(s: Store, account: Account, address: str) -> models.DedicatedIp:
    """The account's dedicated IP at `address` (checked and canonicalised first), or NotFound."""
    address = validation.check_address(address)
    found = s.ip(address)
    if found is None or found.user_id != account.user_id:
        raise NotFound(f"no dedicated IP {address} in this account")
    return found


def bridge(s: Store, account: Account, bridge_id: int) -> models.Bridge:
    """The account's bridge `bridge_id`, or NotFound."""
    found = s.bridge(bridge_id) if bridge_id > 0 else None
    if found is None or found.user_id != account.user_id:
        raise NotFound(f"no bridge with bridge_id {bridge_id}")
    return found


def operation(s: Store, account: Account, operation_id: str) -> models.Operation:
    """The account's operation `operation_id`, or NotFound."""
    found = s.operation(operation_id)
    if found is None or found.user_id != account.user_id:
        raise NotFound(f"no operation {operation_id!r}")
    return found
