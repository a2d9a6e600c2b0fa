"""The store's SQL for routing snapshots: one server's routes in a few set-based queries.

A snapshot of a server with thousands of pools is read with six statements, whatever
its size: its pools, their custom headers, their IPs, its active Bridges, their
trusted networks and its accounts' ACTIVE DKIM keys; each a plain scan of one
server's rows, in the order the snapshot lists them (no per-object queries, no
counting subqueries, no operations lookups).
"""

from __future__ import annotations

import sqlite3

from .connection import Connection


class RouteQueries(Connection):
    """What a routing snapshot of one MTA server is built from."""

    def database_path(self) -> str:
        """The file of the main database ("" for an in-memory one): a second connection,
        for a reader in another thread, opens it."""
        for row in self._all("PRAGMA database_list"):
            if row[1] == "main":
                return row[2] or ""
        return ""

    def route_pools(self, server_id: int) -> list[sqlite3.Row]:
        """The server's pools (its shared pool included), by smtp_id."""
        return self._all(
            """SELECT smtp_id, user_id, internal_name, feed_type, is_shared, bounce_domain, signing_domain,
                      feedback_signing_domain
               FROM pools WHERE server_id = ? ORDER BY smtp_id""", (server_id,))

    def route_pool_headers(self, server_id: int) -> list[sqlite3.Row]:
        """(smtp_id, name, value) of the custom headers of the server's pools, in order."""
        return self._all(
            """SELECT h.smtp_id, h.name, h.value FROM pool_headers h JOIN pools p ON p.smtp_id = h.smtp_id
               WHERE p.server_id = ? ORDER BY h.smtp_id, h.position""", (server_id,))

    def route_ips(self, server_id: int) -> list[sqlite3.Row]:
        """The server's IPs, each pool's oldest first (the order `ips_in_pool` gives)."""
        return self._all(
            """SELECT smtp_id, address, weight, state, hostname FROM ips
               WHERE server_id = ? ORDER BY smtp_id, created_at, address""", (server_id,))

    def route_bridge_networks(self, server_id: int) -> list[sqlite3.Row]:
        """(bridge_id, cidr) of the active Bridges of the server, each Bridge's in order."""
        return self._all(
            """SELECT n.bridge_id, n.cidr FROM bridge_networks n JOIN bridges b ON b.bridge_id = n.bridge_id
               WHERE b.server_id = ? AND b.revoked_at IS NULL ORDER BY n.bridge_id, n.position""", (server_id,))
