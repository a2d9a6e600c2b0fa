"""The store's SQL for bridges, their secrets and trusted networks."""

from __future__ import annotations

import sqlite3
import time

from .. import models
from .connection import Connection

_BRIDGE_SELECT = """
    SELECT b.bridge_id, b.user_id, b.name, b.smtp_id, p.label AS pool_label, p.is_shared,
           b.server_id, b.username, b.feed_type, b.send_dsns, b.revoked_at, b.created_at, b.secret_rotated_at
    FROM bridges b JOIN pools p ON p.smtp_id = b.smtp_id
"""


class BridgeQueries(Connection):
    """Bridges: credentials (secret hashed), revocation and trusted client networks."""

    def insert_bridge(
        self, *, user_id: int, name: str, smtp_id: int, server_id: int, username: str,
        secret_hash: str, feed_type: str,
    ) -> int:
        """Insert a bridge; returns its bridge_id, one no bridge ever had."""
        return self._insert_new_id(
            "bridges",
            """INSERT INTO bridges (bridge_id, user_id, name, smtp_id, server_id, username, secret_hash,
                                    feed_type, created_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (user_id, name, smtp_id, server_id, username, secret_hash, feed_type, time.time()),
        )

    def _bridge_from_row(self, row: sqlite3.Row) -> models.Bridge:
        d = dict(row)
        d["shared"] = bool(d.pop("is_shared"))
        d["revoked"] = d.pop("revoked_at") is not None
        d["send_dsns"] = bool(d["send_dsns"])
        if d["shared"]:
            d["pool_label"] = ""
        d["trusted_networks"] = self.bridge_networks(d["bridge_id"])
        return models.Bridge(**d)

    def bridge(self, bridge_id: int) -> models.Bridge | None:
        """The bridge `bridge_id` with its trusted networks, None if there is none."""
        row = self._one(_BRIDGE_SELECT + " WHERE b.bridge_id = ?", (bridge_id,))
        return self._bridge_from_row(row) if row else None

    def bridges_page(self, user_id: int, *, after: list | None, limit: int, smtp_id: int = 0,
                     server_id: int = 0, revoked: bool | None = None) -> list[models.Bridge]:
        """At most `limit` of the account's bridges after the key [bridge_id] `after`, by
        bridge_id; only those of pool `smtp_id`, on MTA server `server_id` and revoked (or
        not), when given."""
        where, args = ["b.user_id = ?"], [user_id]
        for column, value in (("b.smtp_id", smtp_id), ("b.server_id", server_id)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if revoked is not None:
            where.append("b.revoked_at IS NOT NULL" if revoked else "b.revoked_at IS NULL")
        rows = self._keyset(_BRIDGE_SELECT, where, args, ("b.bridge_id",), after, limit)
        return [self._bridge_from_row(r) for r in rows]

    def bridge_named(self, user_id: int, name: str) -> models.Bridge | None:
        """The account's bridge called `name` (revoked or not), None if it has none."""
        row = self._one(_BRIDGE_SELECT + " WHERE b.user_id = ? AND b.name = ?", (user_id, name))
        return self._bridge_from_row(row) if row else None

    def bridge_networks(self, bridge_id: int) -> tuple[str, ...]:
        """The bridge's trusted networks (CIDR), in the order given."""
        rows = self._all(
            "SELECT cidr FROM bridge_networks WHERE bridge_id = ? ORDER BY position", (bridge_id,)
        )
        return tuple(r[0] for r in rows)

    def set_bridge_networks(self, bridge_id: int, cidrs: list[str]) -> None:
        """Replace the bridge's trusted networks, keeping their order."""
        self._conn.execute("DELETE FROM bridge_networks WHERE bridge_id = ?", (bridge_id,))
        self._conn.executemany(
            "INSERT INTO bridge_networks (bridge_id, position, cidr) VALUES (?, ?, ?)",
            [(bridge_id, i, c) for i, c in enumerate(cidrs)],
        )

    def networks_on_server(self, server_id: int, *, excluding_bridge: int = 0) -> list[tuple[int, str]]:
        """(bridge_id, cidr) of every active bridge on the server."""
        rows = self._all(
            """SELECT n.bridge_id, n.cidr FROM bridge_networks n JOIN bridges b ON b.bridge_id = n.bridge_id
               WHERE b.server_id = ? AND b.revoked_at IS NULL AND b.bridge_id != ?""",
            (server_id, excluding_bridge),
        )
        return [(r[0], r[1]) for r in rows]

    def revoke_bridge(self, bridge_id: int) -> None:
        """Mark the bridge revoked (once: a revoked bridge keeps its first revocation time)."""
        self._conn.execute(
            "UPDATE bridges SET revoked_at = ? WHERE bridge_id = ? AND revoked_at IS NULL",
            (time.time(), bridge_id),
        )

    def set_bridge_secret(self, bridge_id: int, secret_hash: str) -> None:
        """Replace the bridge's secret hash and note when it was rotated."""
        self._conn.execute(
            "UPDATE bridges SET secret_hash = ?, secret_rotated_at = ? WHERE bridge_id = ?",
            (secret_hash, time.time(), bridge_id),
        )

    def set_bridge_send_dsns(self, bridge_id: int, send_dsns: bool) -> None:
        """Turn the bridge's DSNs to senders on or off."""
        self._conn.execute("UPDATE bridges SET send_dsns = ? WHERE bridge_id = ?", (int(send_dsns), bridge_id))
