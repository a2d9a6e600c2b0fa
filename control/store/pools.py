"""The store's SQL for pools and their custom headers."""

from __future__ import annotations

import sqlite3
import time

from .. import models
from .connection import Connection

_POOL_SELECT = """
    SELECT p.smtp_id, p.user_id, p.server_id, s.zone, p.label, p.tag, p.internal_name,
           p.feed_type, p.bounce_domain, p.signing_domain, p.feedback_signing_domain, p.is_default, p.is_shared, p.created_at,
           (SELECT COUNT(*) FROM ips i WHERE i.smtp_id = p.smtp_id) AS ip_count,
           (SELECT COUNT(*) FROM ips i WHERE i.smtp_id = p.smtp_id
                AND i.state = 'active' AND i.weight > 0) AS usable_ip_count,
           (SELECT COUNT(*) FROM bridges b WHERE b.smtp_id = p.smtp_id
                AND b.revoked_at IS NULL) AS bridge_count
    FROM pools p JOIN mta_servers s ON s.server_id = p.server_id
"""

# models.Pool.status as SQL: EMPTY without IPs, ACTIVE when one takes traffic, else PAUSED.
_USABLE_IP = "EXISTS (SELECT 1 FROM ips i WHERE i.smtp_id = p.smtp_id AND i.state = 'active' AND i.weight > 0)"
_ANY_IP = "EXISTS (SELECT 1 FROM ips i WHERE i.smtp_id = p.smtp_id)"
_POOL_STATUS_WHERE = {
    models.POOL_EMPTY: f"NOT {_ANY_IP}",
    models.POOL_ACTIVE: _USABLE_IP,
    models.POOL_PAUSED: f"{_ANY_IP} AND NOT {_USABLE_IP}",
}


class PoolQueries(Connection):
    """Pools (the account's and each server's shared one) with their headers."""

    def insert_pool(
        self, *, user_id: int | None, server_id: int, label: str, tag: str, feed_type: str,
        is_default: bool, is_shared: bool = False,
    ) -> int:
        """Insert a pool; its internal name is derived from its id, one no pool ever had."""
        owner = 0 if user_id is None else user_id
        smtp_id = self._insert_new_id(
            "pools",
            """INSERT INTO pools (smtp_id, user_id, server_id, label, tag, internal_name, feed_type,
                                  is_default, is_shared, created_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (user_id, server_id, label, tag, f"pending-{time.time_ns()}", feed_type,
             int(is_default), int(is_shared), time.time()),
        )
        self._conn.execute(
            "UPDATE pools SET internal_name = ? WHERE smtp_id = ?",
            (models.internal_pool_name(tag, owner, server_id, smtp_id), smtp_id),
        )
        return smtp_id

    def _pool_from_row(self, row: sqlite3.Row) -> models.Pool:
        d = dict(row)
        d["is_default"] = bool(d["is_default"])
        d["is_shared"] = bool(d["is_shared"])
        d["headers"] = self.pool_headers(d["smtp_id"])
        return models.Pool(**d)

    def pool(self, smtp_id: int) -> models.Pool | None:
        """The pool `smtp_id` with its headers and counts, None if there is none."""
        row = self._one(_POOL_SELECT + " WHERE p.smtp_id = ?", (smtp_id,))
        return self._pool_from_row(row) if row else None

    def pools_of(self, user_id: int) -> list[models.Pool]:
        """The account's pools, by smtp_id."""
        rows = self._all(_POOL_SELECT + " WHERE p.user_id = ? ORDER BY p.smtp_id", (user_id,))
        return [self._pool_from_row(r) for r in rows]

    def pools_page(self, user_id: int, *, after: list | None, limit: int, server_id: int = 0,
                   status: str = "") -> list[models.Pool]:
        """At most `limit` of the account's pools after the key [smtp_id] `after`, by smtp_id;
        only those on MTA server `server_id` and in `status` (models.POOL_*), when given."""
        where, args = ["p.user_id = ?"], [user_id]
        if server_id:
            where.append("p.server_id = ?")
            args.append(server_id)
        if status:
            where.append(_POOL_STATUS_WHERE[status])
        rows = self._keyset(_POOL_SELECT, where, args, ("p.smtp_id",), after, limit)
        return [self._pool_from_row(r) for r in rows]

    def pool_labelled(self, user_id: int, label: str) -> models.Pool | None:
        """The account's pool labelled `label`, None if it has none."""
        row = self._one(_POOL_SELECT + " WHERE p.user_id = ? AND p.label = ?", (user_id, label))
        return self._pool_from_row(row) if row else None

    def pools_on_server(self, server_id: int) -> list[models.Pool]:
        """Every pool of the MTA server (its shared pool included), by smtp_id."""
        rows = self._all(_POOL_SELECT + " WHERE p.server_id = ? ORDER BY p.smtp_id", (server_id,))
        return [self._pool_from_row(r) for r in rows]

    def shared_pool(self, server_id: int) -> models.Pool | None:
        """The MTA server's shared pool, None if the server has none."""
        row = self._one(_POOL_SELECT + " WHERE p.server_id = ? AND p.is_shared = 1", (server_id,))
        return self._pool_from_row(row) if row else None

    def default_pool(self, user_id: int) -> models.Pool | None:
        """The account's default pool, None while it has no pool."""
        row = self._one(_POOL_SELECT + " WHERE p.user_id = ? AND p.is_default = 1", (user_id,))
        return self._pool_from_row(row) if row else None

    def rename_pool(self, smtp_id: int, label: str) -> None:
        """Set the pool's label."""
        self._conn.execute("UPDATE pools SET label = ? WHERE smtp_id = ?", (label, smtp_id))

    def set_default_pool(self, user_id: int, smtp_id: int) -> None:
        """Make the pool the account's only default pool."""
        # Clear first: the partial unique index allows one default at any moment.
        self._conn.execute("UPDATE pools SET is_default = 0 WHERE user_id = ? AND is_default = 1", (user_id,))
        self._conn.execute("UPDATE pools SET is_default = 1 WHERE smtp_id = ?", (smtp_id,))

    def set_pool_feed_type(self, smtp_id: int, feed_type: str) -> None:
        """Set the pool's feed type."""
        self._conn.execute("UPDATE pools SET feed_type = ? WHERE smtp_id = ?", (feed_type, smtp_id))

    def set_pool_bounce_domain(self, smtp_id: int, bounce_domain: str) -> None:
        """Set the pool's bounce domain ('' = the MTA server's)."""
        self._conn.execute("UPDATE pools SET bounce_domain = ? WHERE smtp_id = ?", (bounce_domain, smtp_id))

    def set_pool_signing_domains(self, smtp_id: int, domains: tuple[str, str]) -> None:
        """Set the pool's DKIM signing domain and feedback signing domain ('' = none)."""
        self._conn.execute(
            "UPDATE pools SET signing_domain = ?, feedback_signing_domain = ? WHERE smtp_id = ?", (*domains, smtp_id)
        )

    def pools_signing_with(self, user_id: int, domain: str) -> list[models.Pool]:
        """The account's pools that name `domain` as signing or feedback signing domain."""
        rows = self._all(
            _POOL_SELECT + " WHERE p.user_id = ? AND (p.signing_domain = ? OR p.feedback_signing_domain = ?)"
            " ORDER BY p.smtp_id", (user_id, domain, domain),
        )
        return [self._pool_from_row(r) for r in rows]

    def pool_headers(self, smtp_id: int) -> tuple[tuple[str, str], ...]:
        """The pool's custom headers (name, value), in their order."""
        rows = self._all(
            "SELECT name, value FROM pool_headers WHERE smtp_id = ? ORDER BY position", (smtp_id,)
        )
        return tuple((r[0], r[1]) for r in rows)

    def set_pool_headers(self, smtp_id: int, headers: list[tuple[str, str]]) -> None:
        """Replace the pool's custom headers, keeping their order."""
        self._conn.execute("DELETE FROM pool_headers WHERE smtp_id = ?", (smtp_id,))
        self._conn.executemany(
            "INSERT INTO pool_headers (smtp_id, position, name, value) VALUES (?, ?, ?, ?)",
            [(smtp_id, i, n, v) for i, (n, v) in enumerate(headers)],
        )

    def delete_pool(self, smtp_id: int) -> None:
        """Delete a pool and its revoked bridges (active bridges and IPs block it)."""
        self._conn.execute(
            "DELETE FROM bridges WHERE smtp_id = ? AND revoked_at IS NOT NULL", (smtp_id,)
        )
        self._conn.execute("DELETE FROM pools WHERE smtp_id = ?", (smtp_id,))
