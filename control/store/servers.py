"""The store's SQL for MTA servers and their routing versions."""

from __future__ import annotations

import time

from .. import models
from .connection import Connection

_SERVER_SELECT = """
    SELECT s.server_id, s.hostname, s.zone, s.bounce_domain, s.routing_version, s.created_at,
           COALESCE((SELECT p.internal_name FROM pools p
                     WHERE p.server_id = s.server_id AND p.is_shared = 1), '') AS shared_pool
    FROM mta_servers s
"""


class ServerQueries(Connection):
    """MTA servers, and the routing version each routing change bumps."""

    def insert_server(self, hostname: str, zone: str, bounce_domain: str = "") -> int:
        """Insert an MTA server; returns its server_id (IntegrityError if the hostname is taken)."""
        return self._insert(
            "INSERT INTO mta_servers (hostname, zone, bounce_domain, created_at) VALUES (?, ?, ?, ?)",
            (hostname, zone, bounce_domain, time.time()),
        )

    def set_server_bounce_domain(self, server_id: int, bounce_domain: str) -> None:
        """Set the server's bounce domain ('' = its hostname)."""
        self._conn.execute("UPDATE mta_servers SET bounce_domain = ? WHERE server_id = ?", (bounce_domain, server_id))

    def server(self, server_id: int) -> models.MtaServer | None:
        """The MTA server `server_id` with its shared pool's name, None if there is none."""
        row = self._one(_SERVER_SELECT + " WHERE s.server_id = ?", (server_id,))
        return models.MtaServer(**dict(row)) if row else None

    def servers(self) -> list[models.MtaServer]:
        """Every MTA server, by server_id."""
        return [models.MtaServer(**dict(r)) for r in self._all(_SERVER_SELECT + " ORDER BY s.server_id")]

    def servers_page(self, *, after: list | None, limit: int) -> list[models.MtaServer]:
        """At most `limit` MTA servers after the key [server_id] `after`, by server_id."""
        rows = self._keyset(_SERVER_SELECT, [], [], ("s.server_id",), after, limit)
        return [models.MtaServer(**dict(r)) for r in rows]

    def server_with_hostname(self, hostname: str) -> models.MtaServer | None:
        """The MTA server registered as `hostname` (as stored: lower case, no trailing dot), None if none."""
        row = self._one(_SERVER_SELECT + " WHERE s.hostname = ?", (hostname,))
        return models.MtaServer(**dict(row)) if row else None

    def bump_routing_version(self, server_id: int) -> int:
        """Mark a routing change on `server_id`; returns the new version."""
        self._conn.execute(
            "UPDATE mta_servers SET routing_version = routing_version + 1 WHERE server_id = ?",
            (server_id,),
        )
        return self._one("SELECT routing_version FROM mta_servers WHERE server_id = ?", (server_id,))[0]

    def routing_versions(self) -> dict[int, int]:
        """server_id -> current routing version, for every MTA server."""
        return {r[0]: r[1] for r in self._all("SELECT server_id, routing_version FROM mta_servers")}
