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

    def _keyset(self, select: str, where: list[str], args: list, order: tuple[str, ...],
                after: list | None, limit: int) -> list[sqlite3.Row]:
        """At most `limit` rows of `select` that match every condition of `where`, in the
        order of the columns `order` (a unique key), after the key `after` (None: from
        the first): keyset paging, one range scan where an index leads with the
        equality columns of `where` and ends with `order`."""
        if after is not None:
            where = [*where, f"({', '.join(order)}) > ({', '.join('?' * len(order))})"]
            args = [*args, *after]
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return self._all(f"{select}{clause} ORDER BY {', '.join(order)} LIMIT ?", (*args, limit))

    def _insert(self, sql: str, args: tuple) -> int:
        return self._conn.execute(sql, args).lastrowid

    def _insert_new_id(self, table: str, sql: str, args: tuple) -> int:
        """Run `sql` (an INSERT whose first value is the id) with an id `table` never
        had, even on a deleted row; returns it. SQLite gives a new row the largest
        rowid + 1, so deleting the newest pool or bridge would hand its id to the next
        one, of any account: pool stats in Redis, internal names and spooled messages
        are keyed by smtp_id, so the new pool would show the old one's history.
        `table` is one of the tables `id_high_water` tracks (migration 4)."""
        (high,) = self._conn.execute(
            f"SELECT MAX(high, (SELECT COALESCE(MAX(rowid), 0) FROM {table})) FROM id_high_water WHERE tbl = ?",
            (table,),
        ).fetchone()
        new_id = high + 1
        self._conn.execute(sql, (new_id, *args))
        self._conn.execute("UPDATE id_high_water SET high = ? WHERE tbl = ?", (new_id, table))
        return new_id


def is_unique_violation(exc: sqlite3.IntegrityError) -> bool:
    """True when SQLite refused a row because a UNIQUE key already holds its value."""
    return "UNIQUE constraint failed" in str(exc)
