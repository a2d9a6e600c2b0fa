"""Accounts: their tier and API tokens (admin calls), and the tier gate on dedicated pools."""

from __future__ import annotations

from .. import models, paging, validation
from ..contract import secrets
from ..contract.json_records import quoted
from ..errors import FailedPrecondition, InvalidArgument
from ..models import Account
from ..store import Store
from . import lookups


def require_dedicated_tier(account: Account, action: str) -> None:
    """Refuse `action` (FailedPrecondition naming the tier) unless the account is PRO or BUSINESS."""
    # Seed: "Dedicated Pools require Pro or Business tier ... same gating as Dedicated IPs."
    if account.tier not in models.DEDICATED_TIERS:
        raise FailedPrecondition(
            f"{action} needs the PRO or BUSINESS tier; account {quoted(account.name)} is on the "
            f"{account.tier} tier, which sends through the shared pool of its MTA server"
        )


class Accounts:
    """The rules of accounts, tiers and API tokens."""

    store: Store

    def create_account(self, name: str, tier: str) -> tuple[Account, str]:
        """Create an account; returns it and its first API token (the only time it is seen)."""
        name = validation.check_account_name(name)
        tier = _check_tier(tier)
        token = secrets.generate_secret()
        with self.store.write() as s:
            with lookups.unique(f"an account named {quoted(name)} already exists"):
                user_id = s.insert_account(name, tier)
            s.insert_token(user_id, secrets.hash_secret(token))
            account = s.account(user_id)
        return account, token

    def get_account(self, user_id: int, name: str = "") -> Account:
        """The account `user_id`, else (user_id 0) the one named `name`; NotFound otherwise."""
        with self.store.read() as s:
            if not user_id and name:
                return lookups.named(s.account_named(name), name, "account named")
            return lookups.account(s, user_id)

    def list_accounts_page(self, page_size: int, page_token: str, *, server_id: int = 0,
                           tier: str = "") -> paging.Page[Account]:
        """One page of the accounts, oldest first (by user_id); only those with a pool or an
        active Bridge on MTA server `server_id` and of `tier`, when given (NotFound for an
        unknown server)."""
        tier = _check_tier(tier) if tier else ""
        wanted = paging.request(f"accounts:{server_id}:{tier}", page_size, page_token)
        with self.store.read() as s:
            lookups.list_filter(s, None, server_id=server_id)
            return paging.fetched(wanted, (int,), lambda after, limit: s.accounts_page(
                after=after, limit=limit, server_id=server_id, tier=tier), lambda a: [a.user_id])

    def set_account_tier(self, user_id: int, tier: str) -> Account:
        """Change the tier; refused to ESSENTIAL while dedicated pools or IPs remain."""
        tier = _check_tier(tier)
        with self.store.write() as s:
            account = lookups.account(s, user_id)
            if tier not in models.DEDICATED_TIERS:
                pools, ips = s.count_dedicated(user_id)
                if pools or ips:
                    raise FailedPrecondition(
                        f"account {quoted(account.name)} still has {pools} pool(s) and {ips} dedicated IP(s); "
                        f"release its IPs and delete its pools before moving it to {tier}"
                    )
            s.set_account_tier(user_id, tier)
            return s.account(user_id)

    def issue_token(self, user_id: int, revoke_existing: bool) -> str:
        """A new API token for the account (shown once), optionally revoking the older ones."""
        token = secrets.generate_secret()
        with self.store.write() as s:
            lookups.account(s, user_id)
            if revoke_existing:
                s.revoke_tokens(user_id)
            s.insert_token(user_id, secrets.hash_secret(token))
        return token

    def account_for_token(self, token: str) -> Account | None:
        """The account an API token belongs to, None if unknown or revoked."""
        with self.store.read() as s:
            return s.account_for_token(secrets.hash_secret(token))


def _check_tier(tier: str) -> str:
    if tier not in models.TIERS:
        raise InvalidArgument(f"tier must be one of {', '.join(models.TIERS)}, got {quoted(tier)}")
    return tier
