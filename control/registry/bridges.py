"""Bridges: how applications reach a pool. Generated credentials (the secret shown
once, kept hashed), revoke and rotate one by one, trusted client networks that
never overlap between bridges of one MTA server, and the switch of the DSNs its
senders get for bounced mail."""

from __future__ import annotations

from .. import models, paging, validation
from ..contract import secrets
from ..contract.json_records import quoted
from ..errors import AlreadyExists, FailedPrecondition
from ..models import Account
from ..store import Store
from . import lookups


class Bridges:
    """The rules of an account's bridges."""

    store: Store
    min_trusted_prefix_v4: int
    min_trusted_prefix_v6: int

    def _check_networks(self, cidrs) -> list[str]:
        return validation.check_networks(list(cidrs), min_prefix_v4=self.min_trusted_prefix_v4,
                                         min_prefix_v6=self.min_trusted_prefix_v6)

    def create_bridge(
        self, account: Account, *, name: str, smtp_id: int = 0, server_id: int = 0,
        feed_type: str = "", trusted_networks: list[str] = (),
    ) -> tuple[models.Bridge, str]:
        """Create a bridge with a generated username and secret (returned once).

        PRO/BUSINESS bridges name their pool; ESSENTIAL bridges name an MTA server and
        route through its shared pool."""
        name = validation.check_label(name)
        feed_type = validation.check_feed_type(feed_type)
        networks = self._check_networks(trusted_networks)
        secret = secrets.generate_secret()
        with self.store.write() as s:
            if account.tier in models.DEDICATED_TIERS:
                validation.check_id(smtp_id, "smtp_id (the pool the bridge routes through)")
                pool = lookups.pool(s, account, smtp_id)
            else:
                if smtp_id:
                    raise FailedPrecondition(
                        f"account {quoted(account.name)} is on the {account.tier} tier, which has no "
                        "dedicated pools; leave the pool unset and name the MTA server (server_id): "
                        "the bridge routes through that server's shared pool"
                    )
                validation.check_id(server_id, "server_id (whose shared pool the bridge routes through)")
                lookups.server(s, server_id)
                pool = s.shared_pool(server_id)
            if server_id and server_id != pool.server_id:
                raise FailedPrecondition(
                    f"pool {quoted(pool.label)} is on MTA server {pool.server_id}, not {server_id}"
                )
            if s.bridge_named(account.user_id, name) is not None:
                raise AlreadyExists(f"a bridge named {quoted(name)} already exists")
            _check_networks_free(s, account, pool.server_id, networks, excluding_bridge=0)
            bridge_id = s.insert_bridge(
                user_id=account.user_id, name=name, smtp_id=pool.smtp_id, server_id=pool.server_id,
                username=secrets.generate_username(), secret_hash=secrets.hash_secret(secret),
                feed_type=feed_type,
            )
            if networks:
                s.set_bridge_networks(bridge_id, networks)
            s.bump_routing_version(pool.server_id)
            return s.bridge(bridge_id), secret

    def get_bridge(self, account: Account, bridge_id: int, name: str = "") -> models.Bridge:
        """The account's bridge `bridge_id` (revoked ones included), else (bridge_id 0) its
        bridge named `name`; NotFound otherwise."""
        with self.store.read() as s:
            if not bridge_id and name:
                return lookups.named(s.bridge_named(account.user_id, name), name, "bridge named")
            return lookups.bridge(s, account, bridge_id)

    def list_bridges_page(self, account: Account, page_size: int, page_token: str, *, smtp_id: int = 0,
                          server_id: int = 0, revoked: bool | None = None) -> paging.Page[models.Bridge]:
        """One page of the account's bridges, by bridge_id; only those of pool `smtp_id`
        (NotFound unless it is the account's), on MTA server `server_id` (NotFound if
        unknown) and revoked (True) or active (False), when given."""
        wanted = paging.request(f"bridges:{smtp_id}:{server_id}:{revoked}", page_size, page_token)
        with self.store.read() as s:
            lookups.list_filter(s, account, smtp_id=smtp_id, server_id=server_id)
            return paging.fetched(wanted, (int,), lambda after, limit: s.bridges_page(
                account.user_id, after=after, limit=limit, smtp_id=smtp_id, server_id=server_id, revoked=revoked),
                lambda b: [b.bridge_id])

    def revoke_bridge(self, account: Account, bridge_id: int) -> models.Bridge:
        """Revoke a bridge; it stops authenticating once workers have the new snapshot."""
        with self.store.write() as s:
            bridge = lookups.bridge(s, account, bridge_id)
            if not bridge.revoked:
                s.revoke_bridge(bridge_id)
                s.bump_routing_version(bridge.server_id)
            return s.bridge(bridge_id)

    def rotate_bridge_secret(self, account: Account, bridge_id: int) -> tuple[models.Bridge, str]:
        """Replace the bridge's secret; returns the new one (shown once)."""
        secret = secrets.generate_secret()
        with self.store.write() as s:
            bridge = lookups.bridge(s, account, bridge_id)
            if bridge.revoked:
                raise FailedPrecondition(f"bridge {quoted(bridge.name)} is revoked; create a new bridge instead")
            s.set_bridge_secret(bridge_id, secrets.hash_secret(secret))
            s.bump_routing_version(bridge.server_id)
            return s.bridge(bridge_id), secret

    def set_bridge_trusted_networks(self, account: Account, bridge_id: int, cidrs: list[str]) -> models.Bridge:
        """Replace the client networks that may send through the bridge without AUTH."""
        networks = self._check_networks(cidrs)
        with self.store.write() as s:
            bridge = lookups.bridge(s, account, bridge_id)
            if bridge.revoked:
                raise FailedPrecondition(f"bridge {quoted(bridge.name)} is revoked")
            _check_networks_free(s, account, bridge.server_id, networks, excluding_bridge=bridge_id)
            s.set_bridge_networks(bridge_id, networks)
            s.bump_routing_version(bridge.server_id)
            return s.bridge(bridge_id)


    def set_bridge_send_dsns(self, account: Account, bridge_id: int, send_dsns: bool) -> models.Bridge:
        """Turn the DSNs the bridge's senders get for bounced recipients on or off (mail
        already accepted keeps the setting it was accepted with)."""
        with self.store.write() as s:
            bridge = lookups.bridge(s, account, bridge_id)
            if bridge.revoked:
                raise FailedPrecondition(f"bridge {quoted(bridge.name)} is revoked")
            if bridge.send_dsns != send_dsns:
                s.set_bridge_send_dsns(bridge_id, send_dsns)
                s.bump_routing_version(bridge.server_id)
            return s.bridge(bridge_id)


def _check_networks_free(s: Store, account: Account, server_id: int, networks: list[str], *,
                         excluding_bridge: int) -> None:
    for other_bridge, other in s.networks_on_server(server_id, excluding_bridge=excluding_bridge):
        for net in networks:
            if not validation.networks_overlap(net, other):
                continue
            bridge = s.bridge(other_bridge)
            if bridge.user_id == account.user_id:
                raise FailedPrecondition(
                    f"trusted network {net} overlaps {other}, already trusted by your bridge "
                    f"{quoted(bridge.name)}; a client address must map to exactly one bridge"
                )
            # Another account's bridge: its network, name and existence are its own business.
            raise FailedPrecondition(
                f"trusted network {net} overlaps a network already trusted on this MTA server; "
                "a client address must map to exactly one bridge"
            )
