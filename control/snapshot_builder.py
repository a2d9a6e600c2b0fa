"""Building a server's routing snapshot from SQLite, set-based.

`build_snapshot` reads one server's routes with the six statements of
`store.routes` inside one read transaction (version and content agree), then
assembles the `Snapshot` in memory: the cost is a few scans of that server's
rows, never a query per pool, IP or Bridge. `read_entries` is the same reading
limited to given pools, Bridges and accounts (what a change touched). It touches nothing but the `Store`
it is given, so the publisher runs it in a worker thread on a connection of its
own (`ReaderStore`) while the event loop keeps answering RPCs.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from typing import TypeVar

from .contract import snapshot
from .store import Store

T = TypeVar("T")


Ids = Collection[int] | None  # the ids of the entries to read (None: every one of the server)


def read_entries(s: Store, server_id: int, *, pools: Ids = None, bridges: Ids = None,
                 dkim_accounts: Ids = None) -> tuple[tuple[snapshot.PoolRoute, ...], tuple[snapshot.BridgeRoute, ...],
                                                     tuple[snapshot.DkimKeyRoute, ...]]:
    """The server's pools, Bridges and DKIM keys as `s` (inside a read transaction) holds
    them, each in snapshot order; only those of the given ids when ids are given (an
    empty collection reads nothing)."""
    return (_pools(s, server_id, pools) if pools is None or pools else (),
            _bridges(s, server_id, bridges) if bridges is None or bridges else (),
            tuple(snapshot.DkimKeyRoute(user_id=row["user_id"], domain=row["domain"], selector=row["selector"],
                                        algorithm=row["algorithm"], sealed_key=bytes(row["sealed_private_key"]))
                  for row in s.route_dkim_keys(server_id, dkim_accounts))
            if dkim_accounts is None or dkim_accounts else ())


def _pools(s: Store, server_id: int, only: Ids) -> tuple[snapshot.PoolRoute, ...]:
    headers: dict[int, list[tuple[str, str]]] = {}
    for row in s.route_pool_headers(server_id, only):
        headers.setdefault(row[0], []).append((row[1], row[2]))
    ips: dict[int, list[snapshot.IpRoute]] = {}
    for row in s.route_ips(server_id, only):
        ips.setdefault(row[0], []).append(
            snapshot.IpRoute(address=row[1], weight=row[2], state=row[3], hostname=row[4]))
    return tuple(
        snapshot.PoolRoute(
            smtp_id=row["smtp_id"],
            user_id=row["user_id"] or 0,
            internal_name=row["internal_name"],
            feed_type=row["feed_type"],
            headers=tuple(headers.get(row["smtp_id"], ())),
            shared=bool(row["is_shared"]),
            bounce_domain=row["bounce_domain"],
            signing_domain=row["signing_domain"],
            feedback_signing_domain=row["feedback_signing_domain"],
            ips=tuple(ips.get(row["smtp_id"], ())),
        )
        for row in s.route_pools(server_id, only)
    )


def _bridges(s: Store, server_id: int, only: Ids) -> tuple[snapshot.BridgeRoute, ...]:
    networks: dict[int, list[str]] = {}
    for row in s.route_bridge_networks(server_id, only):
        networks.setdefault(row[0], []).append(row[1])
    return tuple(
        snapshot.BridgeRoute(
            bridge_id=row["bridge_id"],
            user_id=row["user_id"],
            name=row["name"],
            username=row["username"],
            secret_hash=row["secret_hash"],
            smtp_id=row["smtp_id"],
            feed_type=row["feed_type"],
            trusted_networks=tuple(networks.get(row["bridge_id"], ())),
            send_dsns=bool(row["send_dsns"]),
        )
        for row in s.route_bridges(server_id, only)
    )


def build_snapshot(store: Store, server_id: int) -> snapshot.Snapshot:
    """The snapshot of `server_id` at its current routing version (LookupError: no such server)."""
    with store.read() as s:
        return build_in(s, server_id)


def build_in(s: Store, server_id: int) -> snapshot.Snapshot:
    """`build_snapshot` inside the caller's read transaction `s`."""
    server = s.server(server_id)
    if server is None:
        raise LookupError(f"no MTA server {server_id}")
    pools, bridges, dkim_keys = read_entries(s, server_id)
    return snapshot.Snapshot(
        server_id=server.server_id,
        version=server.routing_version,
        hostname=server.hostname,
        zone=server.zone,
        bounce_domain=server.bounce_domain,
        pools=pools,
        bridges=bridges,
        dkim_keys=dkim_keys,
        published_at_ms=int(time.time() * 1000),
    )


class ReaderStore:
    """A second SQLite connection to the system of record, for building snapshots in a
    worker thread (SQLite in WAL mode lets it read while the event loop's connection
    writes). Falls back to the main store, on the caller's thread, for an in-memory
    database, which no second connection can see."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._path = store.database_path()
        self._reader: Store | None = None
        self._lock = threading.Lock()

    @property
    def threaded(self) -> bool:
        """True when builds may run in another thread (the database is a file)."""
        return bool(self._path)

    def run(self, read: Callable[..., T], *args, **kwargs) -> T:
        """`read(store, *args, **kwargs)` on the reader connection (one at a time); on the main
        store when the database is in memory."""
        if not self._path:
            return read(self._store, *args, **kwargs)
        with self._lock:
            if self._reader is None:
                # Read-only and never migrating: the event loop's Store owns the schema.
                conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
                conn.row_factory = sqlite3.Row
                conn.execute("PRAGMA query_only = ON")
                conn.execute("PRAGMA busy_timeout = 5000")
                self._reader = Store(conn)
            return read(self._reader, *args, **kwargs)

    def close(self) -> None:
        """Close the reader connection, if one was opened."""
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
