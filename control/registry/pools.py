"""Pools of an account: creation on an MTA server, label, default, custom headers,
feed type, bounce domain, DKIM signing domains, and deletion once nothing depends on the pool."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from .. import models, paging, validation
from ..contract.json_records import quoted
from ..errors import AlreadyExists, FailedPrecondition
from ..models import Account
from ..store import Store
from . import dkim, lookups
from .accounts import require_dedicated_tier

DEFAULT_POOL_LABEL = "default"

_Value = TypeVar("_Value")


def insert_pool(s: Store, account: Account, *, label: str, tag: str, server_id: int, feed_type: str) -> int:
    """Insert an account's pool under a label it does not use yet; the account's
    first pool becomes its default. Returns the new smtp_id."""
    _check_label_free(s, account, label)
    # Exactly one default pool: the account's first pool is it.
    first = s.default_pool(account.user_id) is None
    return s.insert_pool(
        user_id=account.user_id, server_id=server_id, label=label, tag=tag,
        feed_type=feed_type, is_default=first,
    )


class Pools:
    """The rules of an account's pools."""

    store: Store

    def create_pool(
        self, account: Account, *, label: str, server_id: int, tag: str = "", feed_type: str = "",
        headers: list[tuple[str, str]] = (),
    ) -> models.Pool:
        """Create a pool on an MTA server (server_id 0: the platform's only one); the
        account's first pool becomes its default."""
        require_dedicated_tier(account, "creating a pool")
        label = validation.check_label(label)
        tag = validation.check_tag(tag) if tag else validation.slug_from_label(label)
        feed_type = validation.check_feed_type(feed_type)
        headers = validation.check_headers(list(headers))
        if server_id < 0:
            validation.check_id(server_id, "server_id")
        with self.store.write() as s:
            server_id = lookups.server_or_only(s, server_id, "a pool").server_id
            smtp_id = insert_pool(s, account, label=label, tag=tag, server_id=server_id, feed_type=feed_type)
            if headers:
                s.set_pool_headers(smtp_id, headers)
            s.bump_routing_version(server_id)
            return s.pool(smtp_id)

    def get_pool(self, account: Account, smtp_id: int, label: str = "") -> models.Pool:
        """The account's pool `smtp_id`, else (smtp_id 0) its pool labelled `label`; NotFound otherwise."""
        with self.store.read() as s:
            if not smtp_id and label:
                return lookups.named(s.pool_labelled(account.user_id, label), label, "pool labelled")
            return lookups.pool(s, account, smtp_id)

    def list_pools(self, account: Account) -> list[models.Pool]:
        """The account's pools, oldest first."""
        with self.store.read() as s:
            return s.pools_of(account.user_id)

    def list_pools_page(self, account: Account, page_size: int, page_token: str, *, server_id: int = 0,
                        status: str = "") -> paging.Page[models.Pool]:
        """One page of the account's pools, oldest first (by smtp_id); only those on MTA
        server `server_id` (NotFound if unknown) and in `status` (models.POOL_*), when given."""
        wanted = paging.request(f"pools:{server_id}:{status}", page_size, page_token)
        with self.store.read() as s:
            lookups.list_filter(s, account, server_id=server_id)
            return paging.fetched(wanted, (int,), lambda after, limit: s.pools_page(
                account.user_id, after=after, limit=limit, server_id=server_id, status=status), lambda p: [p.smtp_id])

    def rename_pool(self, account: Account, smtp_id: int, label: str) -> models.Pool:
        """Change the label; the internal name never changes."""
        label = validation.check_label(label)
        with self.store.write() as s:
            pool = lookups.pool(s, account, smtp_id)
            if pool.label != label:
                _check_label_free(s, account, label)
                s.rename_pool(smtp_id, label)
            return s.pool(smtp_id)

    def set_default_pool(self, account: Account, smtp_id: int) -> models.Pool:
        """Make the pool the account's one default pool (where new IPs land)."""
        with self.store.write() as s:
            lookups.pool(s, account, smtp_id)
            s.set_default_pool(account.user_id, smtp_id)
            return s.pool(smtp_id)

    def delete_pool(self, account: Account, smtp_id: int) -> None:
        """Delete a pool that has no IPs, no active bridges and is not the default."""
        with self.store.write() as s:
            pool = lookups.pool(s, account, smtp_id)
            problems = []
            if pool.ip_count:
                problems.append(
                    f"reassign its {pool.ip_count} IP(s) to another pool (poolmta ip assign ADDRESS POOL)"
                )
            if pool.bridge_count:
                problems.append(f"revoke its {pool.bridge_count} bridge(s) (poolmta bridge revoke ID)")
            if pool.is_default:
                problems.append("make another pool the default (poolmta pool set-default POOL)")
            pending = s.pending_operations_into(smtp_id)
            if pending:
                problems.append(f"wait for operation(s) {', '.join(pending)} moving IPs into it")
            if problems:
                raise FailedPrecondition(
                    f"pool {quoted(pool.label)} cannot be deleted yet: " + "; ".join(problems)
                )
            s.delete_pool(smtp_id)
            s.bump_routing_version(pool.server_id)

    def set_pool_headers(self, account: Account, smtp_id: int, headers: list[tuple[str, str]]) -> models.Pool:
        """Replace the pool's custom headers."""
        headers = validation.check_headers(list(headers))
        return self._set_routed_field(account, smtp_id, Store.set_pool_headers, headers)

    def set_pool_feed_type(self, account: Account, smtp_id: int, feed_type: str) -> models.Pool:
        """Replace the pool's feed type."""
        feed_type = validation.check_feed_type(feed_type)
        return self._set_routed_field(account, smtp_id, Store.set_pool_feed_type, feed_type)

    def set_pool_bounce_domain(self, account: Account, smtp_id: int, bounce_domain: str) -> models.Pool:
        """Set the domain of the pool's VERP return paths ('' = the MTA server's)."""
        bounce_domain = validation.check_bounce_domain(bounce_domain)
        return self._set_routed_field(account, smtp_id, Store.set_pool_bounce_domain, bounce_domain,
                                      unchanged=lambda pool: pool.bounce_domain == bounce_domain)

    def set_pool_signing_domains(self, account: Account, smtp_id: int, signing_domain: str,
                                 feedback_signing_domain: str) -> models.Pool:
        """Set the pool's DKIM signing domain (d= when the From domain has no active key
        of the account) and feedback signing domain (a second signature); '' = none.
        Each must have an ACTIVE key of the account (FailedPrecondition otherwise)."""
        with self.store.write() as s:
            pool = lookups.pool(s, account, smtp_id)
            domains = (dkim.require_active_key(s, account, signing_domain, "signing domain"),
                       dkim.require_active_key(s, account, feedback_signing_domain, "feedback signing domain"))
            if domains != (pool.signing_domain, pool.feedback_signing_domain):
                s.set_pool_signing_domains(smtp_id, domains)
                s.bump_routing_version(pool.server_id)
            return s.pool(smtp_id)

    def _set_routed_field(
        self, account: Account, smtp_id: int, setter: Callable[[Store, int, _Value], None], value: _Value, *,
        unchanged: Callable[[models.Pool], bool] = lambda pool: False,
    ) -> models.Pool:
        """Set a field of the account's pool `smtp_id` that its MTA server's snapshot
        carries (`setter`, a Store method, to `value`) and bump that server's routing
        version, so its data plane loads the change; neither when `unchanged(pool)`.
        Returns the pool as it is now."""
        with self.store.write() as s:
            pool = lookups.pool(s, account, smtp_id)
            if not unchanged(pool):
                setter(s, smtp_id, value)
                s.bump_routing_version(pool.server_id)
            return s.pool(smtp_id)


def _check_label_free(s: Store, account: Account, label: str) -> None:
    if s.pool_labelled(account.user_id, label) is not None:
        raise AlreadyExists(f"a pool labelled {quoted(label)} already exists in this account")
