"""The store's SQL for DKIM keys (sealed: see control.contract.dkim_seal)."""

from __future__ import annotations

import sqlite3
import time

from .. import models
from .connection import Connection

_KEY_SELECT = """
    SELECT key_id, user_id, domain, selector, algorithm, public_key_b64, state, created_at, retired_at
    FROM dkim_keys
"""


class DkimKeyQueries(Connection):
    """DKIM keys of accounts, and which of them each MTA server's snapshot carries."""

    def insert_dkim_key(self, *, user_id: int, domain: str, selector: str, algorithm: str, sealed: bytes,
                        public_key_b64: str) -> int:
        """Insert an ACTIVE key (the caller demoted the domain's previous one)."""
        return self._insert(
            """INSERT INTO dkim_keys (user_id, domain, selector, algorithm, sealed_private_key,
                                      public_key_b64, state, created_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
            (user_id, domain, selector, algorithm, sealed, public_key_b64, models.DKIM_ACTIVE, time.time()),
        )

    def dkim_key(self, key_id: int) -> models.DkimKey | None:
        """The key `key_id`, None if there is none."""
        row = self._one(_KEY_SELECT + " WHERE key_id = ?", (key_id,))
        return models.DkimKey(**dict(row)) if row else None

    def dkim_keys_page(self, user_id: int, *, after: list | None, limit: int,
                       domain: str = "") -> list[models.DkimKey]:
        """At most `limit` of the account's keys after the key [domain, key_id] `after`, by
        domain then age; only `domain`'s when given."""
        where, args = ["user_id = ?"], [user_id]
        if domain:
            where.append("domain = ?")
            args.append(domain)
        rows = self._keyset(_KEY_SELECT, where, args, ("domain", "key_id"), after, limit)
        return [models.DkimKey(**dict(r)) for r in rows]

    def active_dkim_key(self, user_id: int, domain: str) -> models.DkimKey | None:
        """The account's ACTIVE key for `domain`, None if it has none."""
        row = self._one(_KEY_SELECT + " WHERE user_id = ? AND domain = ? AND state = ?",
                        (user_id, domain, models.DKIM_ACTIVE))
        return models.DkimKey(**dict(row)) if row else None

    def dkim_selectors(self, user_id: int, domain: str) -> set[str]:
        """Every selector the account has used for `domain` (retired keys included)."""
        rows = self._all("SELECT selector FROM dkim_keys WHERE user_id = ? AND domain = ?", (user_id, domain))
        return {r[0] for r in rows}

    def set_dkim_key_state(self, key_id: int, state: str) -> None:
        """Move the key to `state`; RETIRED records when."""
        retired_at = time.time() if state == models.DKIM_RETIRED else None
        self._conn.execute("UPDATE dkim_keys SET state = ?, retired_at = ? WHERE key_id = ?",
                           (state, retired_at, key_id))

    def delete_dkim_key(self, key_id: int) -> None:
        """Remove the key's row, sealed private key included."""
        self._conn.execute("DELETE FROM dkim_keys WHERE key_id = ?", (key_id,))

    def servers_of_account(self, user_id: int) -> list[int]:
        """The MTA servers carrying the account's pools or active Bridges (ESSENTIAL
        Bridges through a shared pool included): the snapshots its keys go to."""
        rows = self._all(
            """SELECT server_id FROM pools WHERE user_id = ?
               UNION SELECT server_id FROM bridges WHERE user_id = ? AND revoked_at IS NULL
               ORDER BY server_id""", (user_id, user_id),
        )
        return [r[0] for r in rows]

    def dkim_key_routes(self, server_id: int) -> list[sqlite3.Row]:
        """The ACTIVE keys (sealed) of the accounts `servers_of_account` puts on the server."""
        return self._all(
            """SELECT user_id, domain, selector, algorithm, sealed_private_key FROM dkim_keys
               WHERE state = 'ACTIVE' AND user_id IN (
                   SELECT user_id FROM pools WHERE server_id = ? AND user_id IS NOT NULL
                   UNION SELECT user_id FROM bridges WHERE server_id = ? AND revoked_at IS NULL)
               ORDER BY user_id, domain""", (server_id, server_id),
        )
