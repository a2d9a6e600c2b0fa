"""The store's SQL for operations: asynchronous IP reassignments."""

from __future__ import annotations

import time

from .. import models
from .connection import Connection

# What models.Operation holds; the reconciler also needs the server to watch.
_OPERATION_COLUMNS = """operation_id, user_id, state, address, from_smtp_id, to_smtp_id,
                        routing_version, error, created_at, updated_at"""


class OperationQueries(Connection):
    """Reassignment operations, QUEUED -> APPLYING -> DONE | FAILED."""

    def pending_operations_into(self, smtp_id: int) -> list[str]:
        """Ids of the QUEUED or APPLYING operations moving an IP into pool `smtp_id`."""
        rows = self._all(
            "SELECT operation_id FROM operations WHERE to_smtp_id = ? AND state IN ('QUEUED', 'APPLYING')",
            (smtp_id,),
        )
        return [r[0] for r in rows]

    def insert_operation(
        self, *, operation_id: str, user_id: int, address: str, from_smtp_id: int, to_smtp_id: int,
        server_id: int,
    ) -> None:
        """Insert a QUEUED operation moving `address` from one pool to another."""
        now = time.time()
        self._conn.execute(
            """INSERT INTO operations (operation_id, user_id, address, from_smtp_id, to_smtp_id,
                                       state, server_id, created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, 'QUEUED', ?, ?, ?)""",
            (operation_id, user_id, address, from_smtp_id, to_smtp_id, server_id, now, now),
        )

    def operation(self, operation_id: str) -> models.Operation | None:
        """The operation `operation_id`, None if there is none."""
        row = self._one(f"SELECT {_OPERATION_COLUMNS} FROM operations WHERE operation_id = ?", (operation_id,))
        return models.Operation(**dict(row)) if row else None

    def operations_of(self, user_id: int, *, address: str, before: tuple[float, str] | None,
                      limit: int) -> list[models.Operation]:
        """At most `limit` of the account's operations (only `address`'s when given), newest
        first (create time, then operation_id, descending), starting after `before`."""
        where, args = ["user_id = ?"], [user_id]
        if address:
            where.append("address = ?")
            args.append(address)
        if before is not None:
            where.append("(created_at < ? OR (created_at = ? AND operation_id < ?))")
            args += [before[0], before[0], before[1]]
        rows = self._all(
            f"""SELECT {_OPERATION_COLUMNS} FROM operations WHERE {' AND '.join(where)}
                ORDER BY created_at DESC, operation_id DESC LIMIT ?""",
            (*args, limit),
        )
        return [models.Operation(**dict(r)) for r in rows]

    def pending_operations(self) -> list[tuple[models.Operation, int]]:
        """(operation, server_id) of every QUEUED or APPLYING operation, oldest first."""
        rows = self._all(
            f"""SELECT {_OPERATION_COLUMNS}, server_id
                FROM operations WHERE state IN ('QUEUED', 'APPLYING') ORDER BY created_at"""
        )
        out = []
        for r in rows:
            d = dict(r)
            server_id = d.pop("server_id")
            out.append((models.Operation(**d), server_id))
        return out

    def update_operation(
        self, operation_id: str, *, state: str, routing_version: int | None = None, error: str = ""
    ) -> None:
        """Set the operation's state and error (and its routing version when given)."""
        self._conn.execute(
            """UPDATE operations SET state = ?, routing_version = COALESCE(?, routing_version),
                                     error = ?, updated_at = ?
               WHERE operation_id = ?""",
            (state, routing_version, error, time.time(), operation_id),
        )
