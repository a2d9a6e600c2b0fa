"""Dedicated IPs of an account: provisioning (into the named or the default pool),
rotation weight, pause and resume, and release."""

from __future__ import annotations

from .. import models, paging, validation
from ..contract.json_records import quoted
from ..errors import AlreadyExists, FailedPrecondition
from ..models import Account
from ..store import Store
from . import lookups
from .accounts import require_dedicated_tier
from .pools import DEFAULT_POOL_LABEL, insert_pool


def insert_ip(s: Store, *, address: str, user_id: int | None, pool: models.Pool, weight: int, hostname: str) -> None:
    """Insert an IP into `pool` (user_id None for a shared pool); AlreadyExists when the
    address is provisioned anywhere on the platform."""
    taken = f"IP {address} is already provisioned on this platform"
    if s.ip(address) is not None:
        raise AlreadyExists(taken)
    with lookups.unique(taken):
        s.insert_ip(address=address, user_id=user_id, server_id=pool.server_id,
                    smtp_id=pool.smtp_id, weight=weight, hostname=hostname)


# IPs are listed oldest first: by (created_at, address), a key no IP shares.
IP_KEY_TYPES = (float, str)


def ip_key(ip: models.DedicatedIp) -> list:
    """The IP's place in a listing (control.paging key)."""
    return [ip.created_at, ip.address]


class DedicatedIps:
    """The rules of an account's dedicated IPs."""

    store: Store

    def provision_ip(
        self, account: Account, *, address: str, smtp_id: int = 0, server_id: int = 0,
        weight: int = 0, hostname: str = "",
    ) -> models.DedicatedIp:
        """Add a dedicated IP: to the named pool, else the default pool, which the
        account's first IP creates when the account has no pool yet."""
        require_dedicated_tier(account, "provisioning a dedicated IP")
        address = validation.check_address(address)
        weight = validation.check_weight(weight, default=1)
        hostname = validation.check_hostname(hostname) if hostname else ""
        with self.store.write() as s:
            if smtp_id:
                pool = lookups.pool(s, account, smtp_id)
            else:
                pool = s.default_pool(account.user_id)
                if pool is None:
                    # The account's first IP creates its default pool on that MTA server.
                    server_id = lookups.server_or_only(s, server_id, "the account's first IP").server_id
                    new_id = insert_pool(
                        s, account, label=DEFAULT_POOL_LABEL, tag=DEFAULT_POOL_LABEL,
                        server_id=server_id, feed_type="",
                    )
                    pool = s.pool(new_id)
            if server_id and server_id != pool.server_id:
                lookups.server(s, server_id)
                raise FailedPrecondition(
                    f"pool {quoted(pool.label)} is on MTA server {pool.server_id}, not {server_id}; "
                    f"name a pool on server {server_id} (smtp_id) for this IP"
                )
            server = lookups.server(s, pool.server_id)
            insert_ip(s, address=address, user_id=account.user_id, pool=pool, weight=weight,
                      hostname=hostname or server.hostname)
            s.bump_routing_version(pool.server_id)
            return s.ip(address)

    def get_ip(self, account: Account, address: str) -> models.DedicatedIp:
        """The account's dedicated IP at `address`, or NotFound."""
        with self.store.read() as s:
            return lookups.ip(s, account, address)

    def list_ips(self, account: Account, smtp_id: int = 0) -> list[models.DedicatedIp]:
        """The account's dedicated IPs, of one pool when `smtp_id` is given (NotFound if
        it is not the account's)."""
        with self.store.read() as s:
            if smtp_id:
                lookups.pool(s, account, smtp_id)
            return s.ips_of(account.user_id, smtp_id)

    def list_ips_page(self, account: Account, page_size: int, page_token: str, *, smtp_id: int = 0,
                      server_id: int = 0, state: str = "") -> paging.Page[models.DedicatedIp]:
        """One page of the account's dedicated IPs, oldest first; only those of pool
        `smtp_id` (NotFound unless it is the account's), on MTA server `server_id`
        (NotFound if unknown) and in `state` (active or paused), when given."""
        wanted = paging.request(f"ips:{smtp_id}:{server_id}:{state}", page_size, page_token)
        with self.store.read() as s:
            lookups.list_filter(s, account, smtp_id=smtp_id, server_id=server_id)
            return paging.fetched(wanted, IP_KEY_TYPES, lambda after, limit: s.ips_page(
                account.user_id, after=after, limit=limit, smtp_id=smtp_id, server_id=server_id, state=state),
                ip_key)

    def set_ip_weight(self, account: Account, address: str, weight: int) -> models.DedicatedIp:
        """Set the IP's rotation weight (0 takes it out of rotation)."""
        weight = validation.check_weight(weight)
        return self._change_ip(account, address, lambda s, a: s.set_ip_weight(a, weight))

    def pause_ip(self, account: Account, address: str) -> models.DedicatedIp:
        """Take the IP out of rotation, keeping its weight."""
        return self._change_ip(account, address, lambda s, a: s.set_ip_state(a, models.IP_PAUSED))

    def resume_ip(self, account: Account, address: str) -> models.DedicatedIp:
        """Put a paused IP back into rotation."""
        return self._change_ip(account, address, lambda s, a: s.set_ip_state(a, models.IP_ACTIVE))

    def release_ip(self, account: Account, address: str) -> None:
        """Remove a dedicated IP; a reassignment still pending for it fails."""
        with self.store.write() as s:
            ip = lookups.ip(s, account, address)
            if ip.pending_operation_id:
                s.update_operation(ip.pending_operation_id, state=models.OP_FAILED,
                                   error=f"IP {ip.address} was released")
            s.delete_ip(ip.address)
            s.bump_routing_version(ip.server_id)

    def _change_ip(self, account: Account, address: str, change) -> models.DedicatedIp:
        with self.store.write() as s:
            ip = lookups.ip(s, account, address)
            change(s, ip.address)
            s.bump_routing_version(ip.server_id)
            return s.ip(ip.address)
