"""The store's SQL for routing snapshots: one server's routes in a few set-based queries.

A snapshot of a server with thousands of pools is read with six statements, whatever
its size: its pools, their custom headers, their IPs, its active Bridges, their
trusted networks and its accounts' ACTIVE DKIM keys; each a plain scan of one
server's rows, in the order the snapshot lists them (no per-object queries, no
counting subqueries, no operations lookups).

Each statement also takes `only`, the ids of the entries a change touched (from
`routing_touches`, which triggers fill in the changing transaction): then it reads
those entries alone, by key, whatever the server's size.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection

from .connection import Connection


def _only(column: str, ids: Collection[int] | None) -> tuple[str, tuple]:
    """The condition (and its argument) keeping the rows whose `column` is in `ids` (None: all rows)."""
    if ids is None:
        return "", ()
    return f" AND {column} IN (SELECT value FROM json_each(?))", (json.dumps(sorted(ids)),)


class RouteQueries(Connection):
    """What a routing snapshot of one MTA server is built from."""

    def database_path(self) -> str:
        """The file of the main database ("" for an in-memory one): a second connection,
        for a reader in another thread, opens it."""
        for row in self._all("PRAGMA database_list"):
            if row[1] == "main":
                return row[2] or ""
        return ""

    def route_pools(self, server_id: int, only: Collection[int] | None = None) -> list[sqlite3.Row]:
        """The server's pools (its shared pool included; those of `only` when given), by smtp_id."""
        cond, args = _only("smtp_id", only)
        return self._all(
            f"""SELECT smtp_id, user_id, internal_name, feed_type, is_shared, bounce_domain, signing_domain,
                      feedback_signing_domain
               FROM pools WHERE server_id = ?{cond} ORDER BY smtp_id""", (server_id, *args))

    def route_pool_headers(self, server_id: int, only: Collection[int] | None = None) -> list[sqlite3.Row]:
        """(smtp_id, name, value) of the custom headers of the server's pools (of `only`), in order."""
        cond, args = _only("p.smtp_id", only)
        return self._all(
            f"""SELECT h.smtp_id, h.name, h.value FROM pool_headers h JOIN pools p ON p.smtp_id = h.smtp_id
               WHERE p.server_id = ?{cond} ORDER BY h.smtp_id, h.position""", (server_id, *args))

    def route_ips(self, server_id: int, only: Collection[int] | None = None) -> list[sqlite3.Row]:
        """The server's IPs (those in the pools of `only`), each pool's oldest first (the
        order `ips_in_pool` gives)."""
        cond, args = _only("smtp_id", only)
        return self._all(
            f"""SELECT smtp_id, address, weight, state, hostname FROM ips
               WHERE server_id = ?{cond} ORDER BY smtp_id, created_at, address""", (server_id, *args))

    def route_bridges(self, server_id: int, only: Collection[int] | None = None) -> list[sqlite3.Row]:
        """The server's active Bridges (of `only`) with what the snapshot needs (secret hash included)."""
        cond, args = _only("bridge_id", only)
        return self._all(
            f"""SELECT bridge_id, user_id, name, username, secret_hash, smtp_id, feed_type, send_dsns
               FROM bridges WHERE server_id = ? AND revoked_at IS NULL{cond} ORDER BY bridge_id""",
            (server_id, *args))

    def route_bridge_networks(self, server_id: int, only: Collection[int] | None = None) -> list[sqlite3.Row]:
        """(bridge_id, cidr) of the active Bridges of the server (of `only`), each Bridge's in order."""
        cond, args = _only("b.bridge_id", only)
        return self._all(
            f"""SELECT n.bridge_id, n.cidr FROM bridge_networks n JOIN bridges b ON b.bridge_id = n.bridge_id
               WHERE b.server_id = ? AND b.revoked_at IS NULL{cond} ORDER BY n.bridge_id, n.position""",
            (server_id, *args))

    def route_dkim_keys(self, server_id: int, only: Collection[int] | None = None) -> list[sqlite3.Row]:
        """The ACTIVE keys (sealed) of the accounts with a pool or an active Bridge on the
        server (of the accounts `only`), by account and domain."""
        if only is None:
            return self.dkim_key_routes(server_id)
        cond, args = _only("k.user_id", only)
        return self._all(
            f"""SELECT k.user_id, k.domain, k.selector, k.algorithm, k.sealed_private_key FROM dkim_keys k
               WHERE k.state = 'ACTIVE'{cond} AND (
                   EXISTS (SELECT 1 FROM pools p WHERE p.user_id = k.user_id AND p.server_id = ?)
                   OR EXISTS (SELECT 1 FROM bridges b WHERE b.user_id = k.user_id AND b.server_id = ?
                              AND b.revoked_at IS NULL))
               ORDER BY k.user_id, k.domain""", (*args, server_id, server_id))

    def routing_touches(self, server_id: int, after: int) -> list[sqlite3.Row]:
        """(touch_id, kind, ref) of what the changes to the server recorded after touch `after`, oldest first."""
        return self._all("SELECT touch_id, kind, ref FROM routing_touches WHERE server_id = ? AND touch_id > ? "
                         "ORDER BY touch_id", (server_id, after))

    def last_routing_touch(self, server_id: int) -> int:
        """The newest touch recorded for the server (0: none)."""
        return self._one("SELECT COALESCE(MAX(touch_id), 0) FROM routing_touches WHERE server_id = ?",
                         (server_id,))[0]

    def prune_routing_touches(self, server_id: int, through: int) -> None:
        """Forget the server's touches up to `through` (a publication in Redis covers them)."""
        self._conn.execute("DELETE FROM routing_touches WHERE server_id = ? AND touch_id <= ?", (server_id, through))
