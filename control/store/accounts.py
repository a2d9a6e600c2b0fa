"""The store's SQL for accounts and their API tokens (kept hashed)."""

from __future__ import annotations

import time

from .. import models
from .connection import Connection


class AccountQueries(Connection):
    """Accounts, their tiers and API tokens."""

    def insert_account(self, name: str, tier: str) -> int:
        """Insert an account; returns its user_id (IntegrityError if the name is taken)."""
        return self._insert(
            "INSERT INTO accounts (name, tier, created_at) VALUES (?, ?, ?)", (name, tier, time.time())
        )

    def account(self, user_id: int) -> models.Account | None:
        """The account `user_id`, None if there is none."""
        row = self._one("SELECT * FROM accounts WHERE user_id = ?", (user_id,))
        return models.Account(**dict(row)) if row else None

    def accounts_page(self, *, after: list | None, limit: int, server_id: int = 0,
                      tier: str = "") -> list[models.Account]:
        """At most `limit` accounts after the key [user_id] `after`, by user_id; only those
        with a pool or an active Bridge on MTA server `server_id` and of `tier`, when given."""
        where, args = [], []
        if server_id:
            where.append("""(EXISTS (SELECT 1 FROM pools p WHERE p.user_id = a.user_id AND p.server_id = ?)
                             OR EXISTS (SELECT 1 FROM bridges b WHERE b.user_id = a.user_id
                                        AND b.server_id = ? AND b.revoked_at IS NULL))""")
            args += [server_id, server_id]
        if tier:
            where.append("a.tier = ?")
            args.append(tier)
        rows = self._keyset("SELECT a.* FROM accounts a", where, args, ("a.user_id",), after, limit)
        return [models.Account(**dict(r)) for r in rows]

    def account_named(self, name: str) -> models.Account | None:
        """The account called `name`, None if there is none."""
        row = self._one("SELECT * FROM accounts WHERE name = ?", (name,))
        return models.Account(**dict(row)) if row else None

    def set_account_tier(self, user_id: int, tier: str) -> None:
        """Set the account's tier."""
        self._conn.execute("UPDATE accounts SET tier = ? WHERE user_id = ?", (tier, user_id))

    def insert_token(self, user_id: int, token_hash: str) -> None:
        """Store an API token of the account by its hash."""
        self._conn.execute(
            "INSERT INTO api_tokens (token_hash, user_id, created_at) VALUES (?, ?, ?)",
            (token_hash, user_id, time.time()),
        )

    def revoke_tokens(self, user_id: int) -> None:
        """Revoke every API token of the account still valid."""
        self._conn.execute(
            "UPDATE api_tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
            (time.time(), user_id),
        )

    def account_for_token(self, token_hash: str) -> models.Account | None:
        """The account whose valid (unrevoked) token has this hash, None otherwise."""
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
