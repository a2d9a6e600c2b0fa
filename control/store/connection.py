"""The SQLite connection every query family of the store runs its statements on."""

from __future__ import annotations

import sqlite3


class Connection:
    """One SQLite connection, used from one thread; the base of every query family,
    so that `Store` is all of them on the same connection (and the same transaction)."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def _one(self, sql: str, args: tuple = ()) -> sqlite3.Row | None:
        return self._conn.execute(sql, args).fetchone()

    def _all(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        return self._conn.execute(sql, args).fetchall()

    def _insert(self, sql: str, args: tuple) -> int:
        return self._conn.execute(sql, args).lastrowid


def is_unique_violation(exc: sqlite3.IntegrityError) -> bool:
    """True when SQLite refused a row because a UNIQUE key already holds its value."""
    return "UNIQUE constraint failed" in str(exc)
