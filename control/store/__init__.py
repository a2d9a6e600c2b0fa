"""The system of record: every SQL statement poolmta runs lives in this module.

SQLite in WAL mode with foreign keys on. The schema is created and migrated by
`Store.open()` (table `schema_version`). Invariants the database can hold, it
holds:

* an IP address is unique platform-wide (primary key) and sits in exactly one pool
  (`ips.smtp_id NOT NULL`);
* an IP and a bridge are on their pool's MTA server (composite foreign key
  `(smtp_id, server_id)`), so nothing can point across servers;
* a label is unique per account, an account has at most one default pool, a
  server has one shared pool (unique indexes);
* a pool with IPs or bridges cannot be deleted (foreign keys without cascade);
* at most one pending (QUEUED or APPLYING) reassignment per IP.

The rest ("exactly one default" once an account has pools, tier gating, ...)
is held by the domain layer inside `Store.write()` transactions.
Each routing change bumps `mta_servers.routing_version` in the same transaction.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from . import models

MIGRATIONS: tuple[str, ...] = (
    # 1: the initial schema
    """
    CREATE TABLE accounts (
        user_id     INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        tier        TEXT NOT NULL CHECK (tier IN ('ESSENTIAL', 'PRO', 'BUSINESS')),
        created_at  REAL NOT NULL
    );
    CREATE TABLE api_tokens (
        token_hash  TEXT PRIMARY KEY,
        user_id     INTEGER NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
        created_at  REAL NOT NULL,
        revoked_at  REAL
    );
    CREATE TABLE mta_servers (
        server_id        INTEGER PRIMARY KEY,
        hostname         TEXT NOT NULL UNIQUE,
        zone             TEXT NOT NULL,
        routing_version  INTEGER NOT NULL DEFAULT 1 CHECK (routing_version > 0),
        created_at       REAL NOT NULL
    );
    CREATE TABLE pools (
        smtp_id        INTEGER PRIMARY KEY,
        user_id        INTEGER REFERENCES accounts (user_id),
        server_id      INTEGER NOT NULL REFERENCES mta_servers (server_id),
        label          TEXT NOT NULL,
        tag            TEXT NOT NULL,
        internal_name  TEXT NOT NULL UNIQUE,
        feed_type      TEXT NOT NULL DEFAULT '',
        is_default     INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0, 1)),
        is_shared      INTEGER NOT NULL DEFAULT 0 CHECK (is_shared IN (0, 1)),
        created_at     REAL NOT NULL,
        UNIQUE (user_id, label),
        UNIQUE (smtp_id, server_id),
        CHECK ((is_shared = 1) = (user_id IS NULL)),
        CHECK (NOT (is_shared = 1 AND is_default = 1))
    );
    CREATE UNIQUE INDEX pools_one_default_per_account ON pools (user_id) WHERE is_default = 1;
    CREATE UNIQUE INDEX pools_one_shared_per_server ON pools (server_id) WHERE is_shared = 1;
    CREATE TABLE pool_headers (
        smtp_id   INTEGER NOT NULL REFERENCES pools (smtp_id) ON DELETE CASCADE,
        position  INTEGER NOT NULL,
        name      TEXT NOT NULL,
        value     TEXT NOT NULL,
        PRIMARY KEY (smtp_id, position)
    );
    CREATE UNIQUE INDEX pool_headers_unique_name ON pool_headers (smtp_id, name COLLATE NOCASE);
    CREATE TABLE ips (
        address     TEXT PRIMARY KEY,
        user_id     INTEGER REFERENCES accounts (user_id),
        server_id   INTEGER NOT NULL,
        smtp_id     INTEGER NOT NULL,
        weight      INTEGER NOT NULL CHECK (weight BETWEEN 0 AND 1000),
        state       TEXT NOT NULL CHECK (state IN ('active', 'paused')),
        hostname    TEXT NOT NULL,
        created_at  REAL NOT NULL,
        FOREIGN KEY (smtp_id, server_id) REFERENCES pools (smtp_id, server_id)
    );
    CREATE INDEX ips_by_pool ON ips (smtp_id);
    CREATE INDEX ips_by_account ON ips (user_id);
    CREATE TABLE bridges (
        bridge_id          INTEGER PRIMARY KEY,
        user_id            INTEGER NOT NULL REFERENCES accounts (user_id),
        name               TEXT NOT NULL,
        smtp_id            INTEGER NOT NULL,
        server_id          INTEGER NOT NULL,
        username           TEXT NOT NULL UNIQUE,
        secret_hash        TEXT NOT NULL,
        feed_type          TEXT NOT NULL DEFAULT '',
        created_at         REAL NOT NULL,
        secret_rotated_at  REAL,
        revoked_at         REAL,
        UNIQUE (user_id, name),
        FOREIGN KEY (smtp_id, server_id) REFERENCES pools (smtp_id, server_id)
    );
    CREATE INDEX bridges_by_pool ON bridges (smtp_id);
    CREATE TABLE bridge_networks (
        bridge_id  INTEGER NOT NULL REFERENCES bridges (bridge_id) ON DELETE CASCADE,
        position   INTEGER NOT NULL,
        cidr       TEXT NOT NULL,
        PRIMARY KEY (bridge_id, position)
    );
    CREATE TABLE operations (
        operation_id     TEXT PRIMARY KEY,
        user_id          INTEGER NOT NULL REFERENCES accounts (user_id),
        address          TEXT NOT NULL,
        from_smtp_id     INTEGER NOT NULL,
        to_smtp_id       INTEGER NOT NULL,
        state            TEXT NOT NULL CHECK (state IN ('QUEUED', 'APPLYING', 'DONE', 'FAILED')),
        routing_version  INTEGER NOT NULL DEFAULT 0,
        server_id        INTEGER NOT NULL,
        error            TEXT NOT NULL DEFAULT '',
        created_at       REAL NOT NULL,
        updated_at       REAL NOT NULL
    );
    CREATE UNIQUE INDEX operations_one_pending_per_ip ON operations (address)
        WHERE state IN ('QUEUED', 'APPLYING');
    CREATE INDEX operations_pending ON operations (state) WHERE state IN ('QUEUED', 'APPLYING');
    """,
)

_POOL_SELECT = """
    SELECT p.smtp_id, p.user_id, p.server_id, s.zone, p.label, p.tag, p.internal_name,
           p.feed_type, p.is_default, p.is_shared, p.created_at,
           (SELECT COUNT(*) FROM ips i WHERE i.smtp_id = p.smtp_id) AS ip_count,
           (SELECT COUNT(*) FROM ips i WHERE i.smtp_id = p.smtp_id
                AND i.state = 'active' AND i.weight > 0) AS usable_ip_count,
           (SELECT COUNT(*) FROM bridges b WHERE b.smtp_id = p.smtp_id
                AND b.revoked_at IS NULL) AS bridge_count
    FROM pools p JOIN mta_servers s ON s.server_id = p.server_id
"""

_IP_SELECT = """
    SELECT i.address, i.user_id, i.smtp_id, p.label AS pool_label, i.server_id, i.weight,
           i.state, i.hostname, i.created_at,
           COALESCE((SELECT o.operation_id FROM operations o WHERE o.address = i.address
                     AND o.state IN ('QUEUED', 'APPLYING')), '') AS pending_operation_id
    FROM ips i JOIN pools p ON p.smtp_id = i.smtp_id
"""

_BRIDGE_SELECT = """
    SELECT b.bridge_id, b.user_id, b.name, b.smtp_id, p.label AS pool_label, p.is_shared,
           b.server_id, b.username, b.feed_type, b.revoked_at, b.created_at, b.secret_rotated_at
    FROM bridges b JOIN pools p ON p.smtp_id = b.smtp_id
"""

_SERVER_SELECT = """
    SELECT s.server_id, s.hostname, s.zone, s.routing_version, s.created_at,
           COALESCE((SELECT p.internal_name FROM pools p
                     WHERE p.server_id = s.server_id AND p.is_shared = 1), '') AS shared_pool
    FROM mta_servers s
"""


class Store:
    """One SQLite connection to the system of record, used from one thread."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, path: Path | str) -> "Store":
        """Open (creating and migrating as needed) the database at `path`."""
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 5000")
        store = cls(conn)
        store._migrate()
        return store

    def close(self) -> None:
        self._conn.close()

    def _migrate(self) -> None:
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = c.execute("SELECT version FROM schema_version").fetchone()
            current = row[0] if row else 0
            if row is None:
                c.execute("INSERT INTO schema_version (version) VALUES (0)")
            if current > len(MIGRATIONS):
                raise RuntimeError(
                    f"database schema version {current} is newer than this poolmta "
                    f"({len(MIGRATIONS)}); upgrade poolmta"
                )
            for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in _statements(script):
                    c.execute(statement)
                c.execute("UPDATE schema_version SET version = ?", (version,))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def schema_version(self) -> int:
        return self._conn.execute("SELECT version FROM schema_version").fetchone()[0]

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

    def _one(self, sql: str, args: tuple = ()) -> sqlite3.Row | None:
        return self._conn.execute(sql, args).fetchone()

    def _all(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        return self._conn.execute(sql, args).fetchall()

    def _insert(self, sql: str, args: tuple) -> int:
        return self._conn.execute(sql, args).lastrowid

    # ------------------------------------------------------------ accounts and tokens

    def insert_account(self, name: str, tier: str) -> int:
        return self._insert(
            "INSERT INTO accounts (name, tier, created_at) VALUES (?, ?, ?)", (name, tier, time.time())
        )

    def account(self, user_id: int) -> models.Account | None:
        row = self._one("SELECT * FROM accounts WHERE user_id = ?", (user_id,))
        return models.Account(**dict(row)) if row else None

    def accounts(self) -> list[models.Account]:
        return [models.Account(**dict(r)) for r in self._all("SELECT * FROM accounts ORDER BY user_id")]

    def set_account_tier(self, user_id: int, tier: str) -> None:
        self._conn.execute("UPDATE accounts SET tier = ? WHERE user_id = ?", (tier, user_id))

    def insert_token(self, user_id: int, token_hash: str) -> None:
        self._conn.execute(
            "INSERT INTO api_tokens (token_hash, user_id, created_at) VALUES (?, ?, ?)",
            (token_hash, user_id, time.time()),
        )

    def revoke_tokens(self, user_id: int) -> None:
        self._conn.execute(
            "UPDATE api_tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
            (time.time(), user_id),
        )

    def account_for_token(self, token_hash: str) -> models.Account | None:
        row = self._one(
            """SELECT a.* FROM api_tokens t JOIN accounts a ON a.user_id = t.user_id
               WHERE t.token_hash = ? AND t.revoked_at IS NULL""",
            (token_hash,),
        )
        return models.Account(**dict(row)) if row else None

    def count_dedicated(self, user_id: int) -> tuple[int, int]:
        """(pools, IPs) the account owns."""
        pools = self._one("SELECT COUNT(*) FROM pools WHERE user_id = ?", (user_id,))[0]
        ips = self._one("SELECT COUNT(*) FROM ips WHERE user_id = ?", (user_id,))[0]
        return pools, ips

    # ------------------------------------------------------------ MTA servers

    def insert_server(self, hostname: str, zone: str) -> int:
        return self._insert(
            "INSERT INTO mta_servers (hostname, zone, created_at) VALUES (?, ?, ?)",
            (hostname, zone, time.time()),
        )

    def server(self, server_id: int) -> models.MtaServer | None:
        row = self._one(_SERVER_SELECT + " WHERE s.server_id = ?", (server_id,))
        return models.MtaServer(**dict(row)) if row else None

    def servers(self) -> list[models.MtaServer]:
        return [models.MtaServer(**dict(r)) for r in self._all(_SERVER_SELECT + " ORDER BY s.server_id")]

    def bump_routing_version(self, server_id: int) -> int:
        """Mark a routing change on `server_id`; returns the new version."""
        self._conn.execute(
            "UPDATE mta_servers SET routing_version = routing_version + 1 WHERE server_id = ?",
            (server_id,),
        )
        return self._one("SELECT routing_version FROM mta_servers WHERE server_id = ?", (server_id,))[0]

    def routing_versions(self) -> dict[int, int]:
        return {r[0]: r[1] for r in self._all("SELECT server_id, routing_version FROM mta_servers")}

    # ------------------------------------------------------------ pools

    def insert_pool(
        self, *, user_id: int | None, server_id: int, label: str, tag: str, feed_type: str,
        is_default: bool, is_shared: bool = False,
    ) -> int:
        """Insert a pool; its internal name is derived from the id SQLite assigns."""
        owner = 0 if user_id is None else user_id
        smtp_id = self._insert(
            """INSERT INTO pools (user_id, server_id, label, tag, internal_name, feed_type,
                                  is_default, is_shared, created_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
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
        row = self._one(_POOL_SELECT + " WHERE p.smtp_id = ?", (smtp_id,))
        return self._pool_from_row(row) if row else None

    def pools_of(self, user_id: int) -> list[models.Pool]:
        rows = self._all(_POOL_SELECT + " WHERE p.user_id = ? ORDER BY p.smtp_id", (user_id,))
        return [self._pool_from_row(r) for r in rows]

    def pools_on_server(self, server_id: int) -> list[models.Pool]:
        rows = self._all(_POOL_SELECT + " WHERE p.server_id = ? ORDER BY p.smtp_id", (server_id,))
        return [self._pool_from_row(r) for r in rows]

    def shared_pool(self, server_id: int) -> models.Pool | None:
        row = self._one(_POOL_SELECT + " WHERE p.server_id = ? AND p.is_shared = 1", (server_id,))
        return self._pool_from_row(row) if row else None

    def default_pool(self, user_id: int) -> models.Pool | None:
        row = self._one(_POOL_SELECT + " WHERE p.user_id = ? AND p.is_default = 1", (user_id,))
        return self._pool_from_row(row) if row else None

    def rename_pool(self, smtp_id: int, label: str) -> None:
        self._conn.execute("UPDATE pools SET label = ? WHERE smtp_id = ?", (label, smtp_id))

    def set_default_pool(self, user_id: int, smtp_id: int) -> None:
        # Clear first: the partial unique index allows one default at any moment.
        self._conn.execute("UPDATE pools SET is_default = 0 WHERE user_id = ? AND is_default = 1", (user_id,))
        self._conn.execute("UPDATE pools SET is_default = 1 WHERE smtp_id = ?", (smtp_id,))

    def set_pool_feed_type(self, smtp_id: int, feed_type: str) -> None:
        self._conn.execute("UPDATE pools SET feed_type = ? WHERE smtp_id = ?", (feed_type, smtp_id))

    def pool_headers(self, smtp_id: int) -> tuple[tuple[str, str], ...]:
        rows = self._all(
            "SELECT name, value FROM pool_headers WHERE smtp_id = ? ORDER BY position", (smtp_id,)
        )
        return tuple((r[0], r[1]) for r in rows)

    def set_pool_headers(self, smtp_id: int, headers: list[tuple[str, str]]) -> None:
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

    def pending_operations_into(self, smtp_id: int) -> list[str]:
        rows = self._all(
            "SELECT operation_id FROM operations WHERE to_smtp_id = ? AND state IN ('QUEUED', 'APPLYING')",
            (smtp_id,),
        )
        return [r[0] for r in rows]

    # ------------------------------------------------------------ IPs

    def insert_ip(
        self, *, address: str, user_id: int | None, server_id: int, smtp_id: int, weight: int, hostname: str
    ) -> None:
        self._conn.execute(
            """INSERT INTO ips (address, user_id, server_id, smtp_id, weight, state, hostname, created_at)
               VALUES (?, ?, ?, ?, ?, 'active', ?, ?)""",
            (address, user_id, server_id, smtp_id, weight, hostname, time.time()),
        )

    def ip(self, address: str) -> models.DedicatedIp | None:
        row = self._one(_IP_SELECT + " WHERE i.address = ?", (address,))
        return models.DedicatedIp(**dict(row)) if row else None

    def ips_of(self, user_id: int, smtp_id: int = 0) -> list[models.DedicatedIp]:
        if smtp_id:
            rows = self._all(
                _IP_SELECT + " WHERE i.user_id = ? AND i.smtp_id = ? ORDER BY i.created_at, i.address",
                (user_id, smtp_id),
            )
        else:
            rows = self._all(_IP_SELECT + " WHERE i.user_id = ? ORDER BY i.created_at, i.address", (user_id,))
        return [models.DedicatedIp(**dict(r)) for r in rows]

    def ips_in_pool(self, smtp_id: int) -> list[models.DedicatedIp]:
        rows = self._all(_IP_SELECT + " WHERE i.smtp_id = ? ORDER BY i.created_at, i.address", (smtp_id,))
        return [models.DedicatedIp(**dict(r)) for r in rows]

    def move_ip(self, address: str, smtp_id: int) -> None:
        self._conn.execute("UPDATE ips SET smtp_id = ? WHERE address = ?", (smtp_id, address))

    def set_ip_weight(self, address: str, weight: int) -> None:
        self._conn.execute("UPDATE ips SET weight = ? WHERE address = ?", (weight, address))

    def set_ip_state(self, address: str, state: str) -> None:
        self._conn.execute("UPDATE ips SET state = ? WHERE address = ?", (state, address))

    def delete_ip(self, address: str) -> None:
        self._conn.execute("DELETE FROM ips WHERE address = ?", (address,))

    # ------------------------------------------------------------ bridges

    def insert_bridge(
        self, *, user_id: int, name: str, smtp_id: int, server_id: int, username: str,
        secret_hash: str, feed_type: str,
    ) -> int:
        return self._insert(
            """INSERT INTO bridges (user_id, name, smtp_id, server_id, username, secret_hash,
                                    feed_type, created_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
            (user_id, name, smtp_id, server_id, username, secret_hash, feed_type, time.time()),
        )

    def _bridge_from_row(self, row: sqlite3.Row) -> models.Bridge:
        d = dict(row)
        d["shared"] = bool(d.pop("is_shared"))
        d["revoked"] = d.pop("revoked_at") is not None
        if d["shared"]:
            d["pool_label"] = ""
        d["trusted_networks"] = self.bridge_networks(d["bridge_id"])
        return models.Bridge(**d)

    def bridge(self, bridge_id: int) -> models.Bridge | None:
        row = self._one(_BRIDGE_SELECT + " WHERE b.bridge_id = ?", (bridge_id,))
        return self._bridge_from_row(row) if row else None

    def bridges_of(self, user_id: int, smtp_id: int = 0) -> list[models.Bridge]:
        if smtp_id:
            rows = self._all(
                _BRIDGE_SELECT + " WHERE b.user_id = ? AND b.smtp_id = ? ORDER BY b.bridge_id",
                (user_id, smtp_id),
            )
        else:
            rows = self._all(_BRIDGE_SELECT + " WHERE b.user_id = ? ORDER BY b.bridge_id", (user_id,))
        return [self._bridge_from_row(r) for r in rows]

    def bridge_networks(self, bridge_id: int) -> tuple[str, ...]:
        rows = self._all(
            "SELECT cidr FROM bridge_networks WHERE bridge_id = ? ORDER BY position", (bridge_id,)
        )
        return tuple(r[0] for r in rows)

    def set_bridge_networks(self, bridge_id: int, cidrs: list[str]) -> None:
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
        self._conn.execute(
            "UPDATE bridges SET revoked_at = ? WHERE bridge_id = ? AND revoked_at IS NULL",
            (time.time(), bridge_id),
        )

    def set_bridge_secret(self, bridge_id: int, secret_hash: str) -> None:
        self._conn.execute(
            "UPDATE bridges SET secret_hash = ?, secret_rotated_at = ? WHERE bridge_id = ?",
            (secret_hash, time.time(), bridge_id),
        )

    def bridge_routes(self, server_id: int) -> list[sqlite3.Row]:
        """Active bridges of a server with what the snapshot needs (secret hash included)."""
        return self._all(
            """SELECT bridge_id, user_id, name, username, secret_hash, smtp_id, feed_type
               FROM bridges WHERE server_id = ? AND revoked_at IS NULL ORDER BY bridge_id""",
            (server_id,),
        )

    # ------------------------------------------------------------ operations

    def insert_operation(
        self, *, operation_id: str, user_id: int, address: str, from_smtp_id: int, to_smtp_id: int,
        server_id: int,
    ) -> None:
        now = time.time()
        self._conn.execute(
            """INSERT INTO operations (operation_id, user_id, address, from_smtp_id, to_smtp_id,
                                       state, server_id, created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, 'QUEUED', ?, ?, ?)""",
            (operation_id, user_id, address, from_smtp_id, to_smtp_id, server_id, now, now),
        )

    def operation(self, operation_id: str) -> models.Operation | None:
        row = self._one(
            """SELECT operation_id, user_id, state, address, from_smtp_id, to_smtp_id,
                      routing_version, error, created_at, updated_at
               FROM operations WHERE operation_id = ?""",
            (operation_id,),
        )
        return models.Operation(**dict(row)) if row else None

    def pending_operations(self) -> list[tuple[models.Operation, int]]:
        """(operation, server_id) of every QUEUED or APPLYING operation, oldest first."""
        rows = self._all(
            """SELECT operation_id, user_id, state, address, from_smtp_id, to_smtp_id,
                      routing_version, error, created_at, updated_at, server_id
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
        self._conn.execute(
            """UPDATE operations SET state = ?, routing_version = COALESCE(?, routing_version),
                                     error = ?, updated_at = ?
               WHERE operation_id = ?""",
            (state, routing_version, error, time.time(), operation_id),
        )


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def is_unique_violation(exc: sqlite3.IntegrityError) -> bool:
    return "UNIQUE constraint failed" in str(exc)
