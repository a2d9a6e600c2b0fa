"""The system of record: every SQL statement poolmta runs lives in this package.

SQLite in WAL mode with foreign keys on. The schema is created and migrated by
`Store.open()` (table `schema_version`, see `schema`). Invariants the database
can hold, it holds:

* an IP address is unique platform-wide (primary key) and sits in exactly one pool
  (`ips.smtp_id NOT NULL`);
* an IP and a bridge are on their pool's MTA server (composite foreign key
  `(smtp_id, server_id)`), so nothing can point across servers;
* a label is unique per account, an account has at most one default pool, a
  server has one shared pool (unique indexes);
* a pool with IPs or bridges cannot be deleted (foreign keys without cascade);
* at most one pending (QUEUED or APPLYING) reassignment per IP;
* at most one ACTIVE DKIM key per (account, domain), a selector once per (account, domain).

The rest ("exactly one default" once an account has pools, tier gating, ...)
is held by the domain layer inside `Store.write()` transactions.
Each routing change bumps `mta_servers.routing_version` in the same transaction.

One module per concept holds its queries (`accounts`, `servers`, `pools`, `ips`,
`bridges`, `operations`, `dkim`, and `routes` for snapshots); `Store` is all of them on one connection, so a
transaction spans concepts.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..contract import file_modes
from . import schema
from .accounts import AccountQueries
from .bridges import BridgeQueries
from .connection import is_unique_violation
from .dkim import DkimKeyQueries
from .ips import IpQueries
from .operations import OperationQueries
from .pools import PoolQueries
from .schema import MIGRATIONS
from .routes import RouteQueries
from .servers import ServerQueries

__all__ = ["MIGRATIONS", "Store", "is_unique_violation"]


class Store(AccountQueries, ServerQueries, PoolQueries, IpQueries, BridgeQueries, OperationQueries,
            DkimKeyQueries, RouteQueries):
    """One SQLite connection to the system of record, used from one thread."""

    @classmethod
    def open(cls, path: Path | str) -> "Store":
        """Open (creating and migrating as needed) the database at `path`; the database
        and its -wal/-shm files are 0600 whatever the umask (SQLite gives the -wal/-shm
        the database file's mode, so creating that one 0600 first covers them)."""
        file_modes.create_private_file(Path(path))
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 5000")
        schema.migrate(conn)
        for suffix in ("-wal", "-shm"):
            file_modes.tighten(Path(f"{path}{suffix}"))
        return cls(conn)

    def close(self) -> None:
        """Close the connection; the Store is unusable afterwards."""
        self._conn.close()

    def schema_version(self) -> int:
        """The migration the database is at."""
        return schema.schema_version(self._conn)

    @contextmanager
    def write(self) -> Iterator["Store"]:
        """A write transaction (BEGIN IMMEDIATE): all of it commits or none of it."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator["Store"]:
        """A read transaction: every query inside sees the same committed state."""
        self._conn.execute("BEGIN")
        try:
            yield self
        finally:
            self._conn.execute("COMMIT")
