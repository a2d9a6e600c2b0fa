"""The store's SQL for IPs (dedicated and shared)."""

from __future__ import annotations

import time

from .. import models
from .connection import Connection

_IP_SELECT = """
    SELECT i.address, i.user_id, i.smtp_id, p.label AS pool_label, i.server_id, i.weight,
           i.state, i.hostname, i.created_at,
           COALESCE((SELECT o.operation_id FROM operations o WHERE o.address = i.address
                     AND o.state IN ('QUEUED', 'APPLYING')), '') AS pending_operation_id
    FROM ips i JOIN pools p ON p.smtp_id = i.smtp_id
"""


class IpQueries(Connection):
    """IPs: where they sit, their weight, state and HELO hostname."""

    def insert_ip(
        self, *, address: str, user_id: int | None, server_id: int, smtp_id: int, weight: int, hostname: str
    ) -> None:
        """Insert an active IP; IntegrityError when the database refuses it (address taken,
        pool on another server, weight out of range)."""
        self._conn.execute(
            """INSERT INTO ips (address, user_id, server_id, smtp_id, weight, state, hostname, created_at)
               VALUES (?, ?, ?, ?, ?, 'active', ?, ?)""",
            (address, user_id, server_id, smtp_id, weight, hostname, time.time()),
        )

    def ip(self, address: str) -> models.DedicatedIp | None:
        """The IP at `address` with its pool label and pending operation, None if there is none."""
        row = self._one(_IP_SELECT + " WHERE i.address = ?", (address,))
        return models.DedicatedIp(**dict(row)) if row else None

    def ips_of(self, user_id: int, smtp_id: int = 0) -> list[models.DedicatedIp]:
        """The account's IPs, of pool `smtp_id` only unless it is 0, oldest first."""
        rows = self._all(
            _IP_SELECT + " WHERE i.user_id = ? AND (? = 0 OR i.smtp_id = ?) ORDER BY i.created_at, i.address",
            (user_id, smtp_id, smtp_id),
        )
        return [models.DedicatedIp(**dict(r)) for r in rows]

    def ips_page(self, user_id: int | None, *, after: list | None, limit: int, smtp_id: int = 0,
                 server_id: int = 0, state: str = "") -> list[models.DedicatedIp]:
        """At most `limit` IPs of the account `user_id` (None: of shared pools) after the key
        [created_at, address] `after`, oldest first; only those of pool `smtp_id`, on MTA
        server `server_id` and in `state` (active or paused), when given."""
        where, args = ["i.user_id IS ?"], [user_id]
        for column, value in (("i.smtp_id", smtp_id), ("i.server_id", server_id), ("i.state", state)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        rows = self._keyset(_IP_SELECT, where, args, ("i.created_at", "i.address"), after, limit)
        return [models.DedicatedIp(**dict(r)) for r in rows]

    def ips_in_pool(self, smtp_id: int) -> list[models.DedicatedIp]:
        """The IPs of pool `smtp_id`, oldest first."""
        rows = self._all(_IP_SELECT + " WHERE i.smtp_id = ? ORDER BY i.created_at, i.address", (smtp_id,))
        return [models.DedicatedIp(**dict(r)) for r in rows]

    def move_ip(self, address: str, smtp_id: int) -> None:
        """Put the IP in pool `smtp_id`."""
        self._conn.execute("UPDATE ips SET smtp_id = ? WHERE address = ?", (smtp_id, address))

    def set_ip_weight(self, address: str, weight: int) -> None:
        """Set the IP's rotation weight."""
        self._conn.execute("UPDATE ips SET weight = ? WHERE address = ?", (weight, address))

    def set_ip_state(self, address: str, state: str) -> None:
        """Set the IP's state (active or paused)."""
        self._conn.execute("UPDATE ips SET state = ? WHERE address = ?", (state, address))

    def delete_ip(self, address: str) -> None:
        """Delete the IP."""
        self._conn.execute("DELETE FROM ips WHERE address = ?", (address,))
