"""Operations: asynchronous IP reassignment between pools of one MTA server,
QUEUED -> APPLYING -> DONE | FAILED. Tenants queue and follow them; the reconciler
applies and finishes them."""

from __future__ import annotations

import uuid

from .. import models, paging, validation
from ..contract.json_records import quoted
from ..errors import FailedPrecondition
from ..models import Account
from ..store import Store
from . import lookups
from .accounts import require_dedicated_tier


class Operations:
    """The rules of IP reassignment operations."""

    store: Store

    def assign_pool(self, account: Account, address: str, smtp_id: int) -> models.Operation:
        """Queue moving an IP to another pool of the same MTA server; the reconciler applies it."""
        require_dedicated_tier(account, "assigning an IP to a pool")
        validation.check_id(smtp_id, "smtp_id (the target pool)")
        with self.store.write() as s:
            ip = lookups.ip(s, account, address)
            target = lookups.pool(s, account, smtp_id)
            if target.server_id != ip.server_id:
                raise FailedPrecondition(
                    f"IP {ip.address} is on MTA server {ip.server_id} and pool {quoted(target.label)} is on "
                    f"server {target.server_id}; an IP can only move between pools of its own server"
                )
            if ip.pending_operation_id:
                raise FailedPrecondition(
                    f"IP {ip.address} already has operation {ip.pending_operation_id} pending; "
                    "wait for it to finish (poolmta op watch ID)"
                )
            if ip.smtp_id == smtp_id:
                raise FailedPrecondition(f"IP {ip.address} is already in pool {quoted(target.label)}")
            operation_id = "op-" + uuid.uuid4().hex[:16]
            s.insert_operation(
                operation_id=operation_id, user_id=account.user_id, address=ip.address,
                from_smtp_id=ip.smtp_id, to_smtp_id=smtp_id, server_id=ip.server_id,
            )
            return s.operation(operation_id)

    def get_operation(self, account: Account, operation_id: str) -> models.Operation:
        """The account's operation `operation_id`, or NotFound."""
        with self.store.read() as s:
            return lookups.operation(s, account, operation_id)

    def list_operations(self, account: Account, address: str, page_size: int,
                        page_token: str) -> paging.Page[models.Operation]:
        """One page of the account's operations, newest first (only `address`'s when given)."""
        address = validation.canonical_address(address) if address else ""
        wanted = paging.request(f"operations:{address}", page_size, page_token)
        after = paging.checked_after(wanted, float, str)
        before = None if after is None else (float(after[0]), after[1])
        with self.store.read() as s:
            rows = s.operations_of(account.user_id, address=address, before=before, limit=wanted.size + 1)
        return paging.page(wanted, rows, lambda o: [o.created_at, o.operation_id])

    # The reconciler's side: no account, it works for every tenant.

    def pending_operations(self) -> list[tuple[models.Operation, int]]:
        """(operation, server_id) of every QUEUED or APPLYING operation, oldest first."""
        with self.store.read() as s:
            return s.pending_operations()

    def apply_operation(self, operation_id: str) -> models.Operation:
        """Move the IP of a QUEUED operation: APPLYING at a new routing version, or FAILED
        when the move is no longer possible."""
        with self.store.write() as s:
            op = s.operation(operation_id)
            if op is None or op.state != models.OP_QUEUED:
                return op
            ip = s.ip(op.address)
            target = s.pool(op.to_smtp_id)
            error = ""
            if ip is None:
                error = f"IP {op.address} no longer exists"
            elif target is None:
                error = f"target pool {op.to_smtp_id} no longer exists"
            elif target.server_id != ip.server_id:
                error = f"target pool {op.to_smtp_id} is on another MTA server"
            if error:
                s.update_operation(operation_id, state=models.OP_FAILED, error=error)
            else:
                s.move_ip(ip.address, target.smtp_id)
                version = s.bump_routing_version(ip.server_id)
                s.update_operation(operation_id, state=models.OP_APPLYING, routing_version=version)
            return s.operation(operation_id)

    def finish_operation(self, operation_id: str) -> models.Operation:
        """Mark an APPLYING operation DONE."""
        with self.store.write() as s:
            s.update_operation(operation_id, state=models.OP_DONE)
            return s.operation(operation_id)
