"""The domain layer: every rule of accounts, MTA servers, pools, IPs and bridges.

Each public method is one transaction on the Store. Methods that change routing
bump the affected servers' routing version inside that transaction; the caller
then has the publisher bring Redis up to date. Callers pass the authenticated
Account for tenant calls; objects of another account are NotFound, exactly as if
they did not exist. Nothing here imports grpc.
"""

from __future__ import annotations

import sqlite3
import uuid

from .. import models, validation
from ..contract import secrets
from ..errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ..models import Account
from ..store import Store, is_unique_violation

SHARED_POOL_LABEL = "shared"
SHARED_POOL_TAG = "shared"
DEFAULT_POOL_LABEL = "default"


def _require_dedicated_tier(account: Account, action: str) -> None:
    # Seed: "Dedicated Pools require Pro or Business tier ... same gating as Dedicated IPs."
    if account.tier not in models.DEDICATED_TIERS:
        raise FailedPrecondition(
            f"{action} needs the PRO or BUSINESS tier; account {account.name!r} is on the "
            f"{account.tier} tier, which sends through the shared pool of its MTA server"
        )


class Registry:
    """Accounts, servers, pools, IPs, bridges and operations, with their rules."""

    def __init__(self, store: Store):
        self.store = store

    # ================================================================ accounts (admin)

    def create_account(self, name: str, tier: str) -> tuple[Account, str]:
        """Create an account; returns it and its first API token (the only time it is seen)."""
        name = validation.check_account_name(name)
        tier = _check_tier(tier)
        token = secrets.generate_secret()
        with self.store.write() as s:
            try:
                user_id = s.insert_account(name, tier)
            except sqlite3.IntegrityError as exc:
                if is_unique_violation(exc):
                    raise AlreadyExists(f"an account named {name!r} already exists") from None
                raise
            s.insert_token(user_id, secrets.hash_secret(token))
            account = s.account(user_id)
        return account, token

    def get_account(self, user_id: int) -> Account:
        with self.store.read() as s:
            return self._account(s, user_id)

    def list_accounts(self) -> list[Account]:
        with self.store.read() as s:
            return s.accounts()

    def set_account_tier(self, user_id: int, tier: str) -> Account:
        """Change the tier; refused to ESSENTIAL while dedicated pools or IPs remain."""
        tier = _check_tier(tier)
        with self.store.write() as s:
            account = self._account(s, user_id)
            if tier not in models.DEDICATED_TIERS:
                pools, ips = s.count_dedicated(user_id)
                if pools or ips:
                    raise FailedPrecondition(
                        f"account {account.name!r} still has {pools} pool(s) and {ips} dedicated IP(s); "
                        f"release its IPs and delete its pools before moving it to {tier}"
                    )
            s.set_account_tier(user_id, tier)
            return s.account(user_id)

    def issue_token(self, user_id: int, revoke_existing: bool) -> str:
        """A new API token for the account (shown once), optionally revoking the older ones."""
        token = secrets.generate_secret()
        with self.store.write() as s:
            self._account(s, user_id)
            if revoke_existing:
                s.revoke_tokens(user_id)
            s.insert_token(user_id, secrets.hash_secret(token))
        return token

    def account_for_token(self, token: str) -> Account | None:
        """The account an API token belongs to, None if unknown or revoked."""
        with self.store.read() as s:
            return s.account_for_token(secrets.hash_secret(token))

    # ================================================================ MTA servers (admin)

    def register_server(self, hostname: str, zone: str) -> models.MtaServer:
        """Register an MTA server with its zone, and create its shared pool."""
        hostname = validation.check_hostname(hostname)
        zone = validation.check_zone(zone)
        with self.store.write() as s:
            try:
                server_id = s.insert_server(hostname, zone)
            except sqlite3.IntegrityError as exc:
                if is_unique_violation(exc):
                    raise AlreadyExists(f"an MTA server with hostname {hostname!r} is already registered") from None
                raise
            s.insert_pool(
                user_id=None, server_id=server_id, label=SHARED_POOL_LABEL, tag=SHARED_POOL_TAG,
                feed_type="", is_default=False, is_shared=True,
            )
            return s.server(server_id)

    def get_server(self, server_id: int) -> models.MtaServer:
        with self.store.read() as s:
            return self._server(s, server_id)

    def list_servers(self) -> list[models.MtaServer]:
        with self.store.read() as s:
            return s.servers()

    def provision_shared_ip(self, server_id: int, address: str, weight: int, hostname: str) -> models.DedicatedIp:
        """Add an IP to a server's shared pool."""
        address = validation.check_address(address)
        weight = validation.check_weight(weight, default=1)
        with self.store.write() as s:
            server = self._server(s, server_id)
            pool = s.shared_pool(server_id)
            self._insert_ip(s, address=address, user_id=None, pool=pool, weight=weight,
                            hostname=validation.check_hostname(hostname) if hostname else server.hostname)
            s.bump_routing_version(server_id)
            return s.ip(address)

    def list_shared_ips(self, server_id: int) -> list[models.DedicatedIp]:
        with self.store.read() as s:
            self._server(s, server_id)
            return s.ips_in_pool(s.shared_pool(server_id).smtp_id)

    def release_shared_ip(self, address: str) -> None:
        address = validation.check_address(address)
        with self.store.write() as s:
            ip = s.ip(address)
            if ip is None or ip.user_id is not None:
                raise NotFound(f"no shared-pool IP {address}")
            s.delete_ip(address)
            s.bump_routing_version(ip.server_id)

    # ================================================================ pools

    def create_pool(
        self, account: Account, *, label: str, server_id: int, tag: str = "", feed_type: str = "",
        headers: list[tuple[str, str]] = (),
    ) -> models.Pool:
        """Create a pool on an MTA server; the account's first pool becomes its default."""
        _require_dedicated_tier(account, "creating a pool")
        label = validation.check_label(label)
        tag = validation.check_tag(tag) if tag else validation.slug_from_label(label)
        feed_type = validation.check_feed_type(feed_type)
        headers = validation.check_headers(list(headers))
        validation.check_id(server_id, "server_id")
        with self.store.write() as s:
            self._server(s, server_id)
            smtp_id = self._insert_pool(s, account, label=label, tag=tag, server_id=server_id, feed_type=feed_type)
            if headers:
                s.set_pool_headers(smtp_id, headers)
            s.bump_routing_version(server_id)
            return s.pool(smtp_id)

    def get_pool(self, account: Account, smtp_id: int) -> models.Pool:
        with self.store.read() as s:
            return self._pool(s, account, smtp_id)

    def list_pools(self, account: Account) -> list[models.Pool]:
        with self.store.read() as s:
            return s.pools_of(account.user_id)

    def rename_pool(self, account: Account, smtp_id: int, label: str) -> models.Pool:
        """Change the label; the internal name never changes."""
        label = validation.check_label(label)
        with self.store.write() as s:
            pool = self._pool(s, account, smtp_id)
            if pool.label != label:
                self._check_label_free(s, account, label)
                s.rename_pool(smtp_id, label)
            return s.pool(smtp_id)

    def set_default_pool(self, account: Account, smtp_id: int) -> models.Pool:
        with self.store.write() as s:
            self._pool(s, account, smtp_id)
            s.set_default_pool(account.user_id, smtp_id)
            return s.pool(smtp_id)

    def delete_pool(self, account: Account, smtp_id: int) -> None:
        """Delete a pool that has no IPs, no active bridges and is not the default."""
        with self.store.write() as s:
            pool = self._pool(s, account, smtp_id)
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
                    f"pool {pool.label!r} cannot be deleted yet: " + "; ".join(problems)
                )
            s.delete_pool(smtp_id)
            s.bump_routing_version(pool.server_id)

    def set_pool_headers(self, account: Account, smtp_id: int, headers: list[tuple[str, str]]) -> models.Pool:
        """Replace the pool's custom headers."""
        headers = validation.check_headers(list(headers))
        with self.store.write() as s:
            pool = self._pool(s, account, smtp_id)
            s.set_pool_headers(smtp_id, headers)
            s.bump_routing_version(pool.server_id)
            return s.pool(smtp_id)

    def set_pool_feed_type(self, account: Account, smtp_id: int, feed_type: str) -> models.Pool:
        feed_type = validation.check_feed_type(feed_type)
        with self.store.write() as s:
            pool = self._pool(s, account, smtp_id)
            s.set_pool_feed_type(smtp_id, feed_type)
            s.bump_routing_version(pool.server_id)
            return s.pool(smtp_id)

    # ================================================================ IPs

    def provision_ip(
        self, account: Account, *, address: str, smtp_id: int = 0, server_id: int = 0,
        weight: int = 0, hostname: str = "",
    ) -> models.DedicatedIp:
        """Add a dedicated IP: to the named pool, else the default pool, which the
        account's first IP creates when the account has no pool yet."""
        _require_dedicated_tier(account, "provisioning a dedicated IP")
        address = validation.check_address(address)
        weight = validation.check_weight(weight, default=1)
        hostname = validation.check_hostname(hostname) if hostname else ""
        with self.store.write() as s:
            if smtp_id:
                pool = self._pool(s, account, smtp_id)
            else:
                pool = s.default_pool(account.user_id)
                if pool is None:
                    if not server_id:
                        raise InvalidArgument(
                            "server_id is required for the account's first IP: it creates the "
                            "default pool on that MTA server"
                        )
                    self._server(s, server_id)
                    new_id = self._insert_pool(
                        s, account, label=DEFAULT_POOL_LABEL, tag=DEFAULT_POOL_LABEL,
                        server_id=server_id, feed_type="",
                    )
                    pool = s.pool(new_id)
            if server_id and server_id != pool.server_id:
                self._server(s, server_id)
                raise FailedPrecondition(
                    f"pool {pool.label!r} is on MTA server {pool.server_id}, not {server_id}; "
                    f"name a pool on server {server_id} (smtp_id) for this IP"
                )
            server = self._server(s, pool.server_id)
            self._insert_ip(s, address=address, user_id=account.user_id, pool=pool, weight=weight,
                            hostname=hostname or server.hostname)
            s.bump_routing_version(pool.server_id)
            return s.ip(address)

    def get_ip(self, account: Account, address: str) -> models.DedicatedIp:
        with self.store.read() as s:
            return self._ip(s, account, address)

    def list_ips(self, account: Account, smtp_id: int = 0) -> list[models.DedicatedIp]:
        with self.store.read() as s:
            if smtp_id:
                self._pool(s, account, smtp_id)
            return s.ips_of(account.user_id, smtp_id)

    def assign_pool(self, account: Account, address: str, smtp_id: int) -> models.Operation:
        """Queue moving an IP to another pool of the same MTA server; the reconciler applies it."""
        _require_dedicated_tier(account, "assigning an IP to a pool")
        validation.check_id(smtp_id, "smtp_id (the target pool)")
        with self.store.write() as s:
            ip = self._ip(s, account, address)
            target = self._pool(s, account, smtp_id)
            if target.server_id != ip.server_id:
                raise FailedPrecondition(
                    f"IP {ip.address} is on MTA server {ip.server_id} and pool {target.label!r} is on "
                    f"server {target.server_id}; an IP can only move between pools of its own server"
                )
            if ip.pending_operation_id:
                raise FailedPrecondition(
                    f"IP {ip.address} already has operation {ip.pending_operation_id} pending; "
                    "wait for it to finish (poolmta op watch ID)"
                )
            if ip.smtp_id == smtp_id:
                raise FailedPrecondition(f"IP {ip.address} is already in pool {target.label!r}")
            operation_id = "op-" + uuid.uuid4().hex[:16]
            s.insert_operation(
                operation_id=operation_id, user_id=account.user_id, address=ip.address,
                from_smtp_id=ip.smtp_id, to_smtp_id=smtp_id, server_id=ip.server_id,
            )
            return s.operation(operation_id)

    def get_operation(self, account: Account, operation_id: str) -> models.Operation:
        with self.store.read() as s:
            op = s.operation(operation_id)
            if op is None or op.user_id != account.user_id:
                raise NotFound(f"no operation {operation_id!r}")
            return op

    def set_ip_weight(self, account: Account, address: str, weight: int) -> models.DedicatedIp:
        weight = validation.check_weight(weight)
        return self._change_ip(account, address, lambda s, a: s.set_ip_weight(a, weight))

    def pause_ip(self, account: Account, address: str) -> models.DedicatedIp:
        return self._change_ip(account, address, lambda s, a: s.set_ip_state(a, models.IP_PAUSED))

    def resume_ip(self, account: Account, address: str) -> models.DedicatedIp:
        return self._change_ip(account, address, lambda s, a: s.set_ip_state(a, models.IP_ACTIVE))

    def release_ip(self, account: Account, address: str) -> None:
        """Remove a dedicated IP; a reassignment still pending for it fails."""
        with self.store.write() as s:
            ip = self._ip(s, account, address)
            if ip.pending_operation_id:
                s.update_operation(ip.pending_operation_id, state=models.OP_FAILED,
                                   error=f"IP {ip.address} was released")
            s.delete_ip(ip.address)
            s.bump_routing_version(ip.server_id)

    # ================================================================ operations (reconciler)

    def pending_operations(self) -> list[tuple[models.Operation, int]]:
        with self.store.read() as s:
            return s.pending_operations()

    def apply_operation(self, operation_id: str) -> models.Operation:
        """Move the IP of a QUEUED operation: APPLYING at a new routing version, or FAILED
        when the move is no longer possible."""
        with self.store.write() as s:
            op = s.operation(operation_id)
            if op is None or op.state != models.OP_QUEUED:
                return op
            ip = s.ip(op.address)
            target = s.pool(op.to_smtp_id)
            error = ""
            if ip is None:
                error = f"IP {op.address} no longer exists"
            elif target is None:
                error = f"target pool {op.to_smtp_id} no longer exists"
            elif target.server_id != ip.server_id:
                error = f"target pool {op.to_smtp_id} is on another MTA server"
            if error:
                s.update_operation(operation_id, state=models.OP_FAILED, error=error)
            else:
                s.move_ip(ip.address, target.smtp_id)
                version = s.bump_routing_version(ip.server_id)
                s.update_operation(operation_id, state=models.OP_APPLYING, routing_version=version)
            return s.operation(operation_id)

    def finish_operation(self, operation_id: str) -> models.Operation:
        """Mark an APPLYING operation DONE."""
        with self.store.write() as s:
            s.update_operation(operation_id, state=models.OP_DONE)
            return s.operation(operation_id)

    # ================================================================ bridges

    def create_bridge(
        self, account: Account, *, name: str, smtp_id: int = 0, server_id: int = 0,
        feed_type: str = "", trusted_networks: list[str] = (),
    ) -> tuple[models.Bridge, str]:
        """Create a bridge with a generated username and secret (returned once).

        PRO/BUSINESS bridges name their pool; ESSENTIAL bridges name an MTA server and
        route through its shared pool."""
        name = validation.check_label(name)
        feed_type = validation.check_feed_type(feed_type)
        networks = validation.check_networks(list(trusted_networks))
        secret = secrets.generate_secret()
        with self.store.write() as s:
            if account.tier in models.DEDICATED_TIERS:
                validation.check_id(smtp_id, "smtp_id (the pool the bridge routes through)")
                pool = self._pool(s, account, smtp_id)
            else:
                if smtp_id:
                    raise FailedPrecondition(
                        f"account {account.name!r} is on the {account.tier} tier, which has no "
                        "dedicated pools; leave the pool unset and name the MTA server (server_id): "
                        "the bridge routes through that server's shared pool"
                    )
                validation.check_id(server_id, "server_id (whose shared pool the bridge routes through)")
                self._server(s, server_id)
                pool = s.shared_pool(server_id)
            if server_id and server_id != pool.server_id:
                raise FailedPrecondition(
                    f"pool {pool.label!r} is on MTA server {pool.server_id}, not {server_id}"
                )
            if any(b.name == name for b in s.bridges_of(account.user_id)):
                raise AlreadyExists(f"a bridge named {name!r} already exists")
            self._check_networks_free(s, pool.server_id, networks, excluding_bridge=0)
            bridge_id = s.insert_bridge(
                user_id=account.user_id, name=name, smtp_id=pool.smtp_id, server_id=pool.server_id,
                username=secrets.generate_username(), secret_hash=secrets.hash_secret(secret),
                feed_type=feed_type,
            )
            if networks:
                s.set_bridge_networks(bridge_id, networks)
            s.bump_routing_version(pool.server_id)
            return s.bridge(bridge_id), secret

    def get_bridge(self, account: Account, bridge_id: int) -> models.Bridge:
        with self.store.read() as s:
            return self._bridge(s, account, bridge_id)

    def list_bridges(self, account: Account, smtp_id: int = 0) -> list[models.Bridge]:
        with self.store.read() as s:
            if smtp_id:
                self._pool(s, account, smtp_id)
            return s.bridges_of(account.user_id, smtp_id)

    def revoke_bridge(self, account: Account, bridge_id: int) -> models.Bridge:
        """Revoke a bridge; it stops authenticating once workers have the new snapshot."""
        with self.store.write() as s:
            bridge = self._bridge(s, account, bridge_id)
            if not bridge.revoked:
                s.revoke_bridge(bridge_id)
                s.bump_routing_version(bridge.server_id)
            return s.bridge(bridge_id)

    def rotate_bridge_secret(self, account: Account, bridge_id: int) -> tuple[models.Bridge, str]:
        """Replace the bridge's secret; returns the new one (shown once)."""
        secret = secrets.generate_secret()
        with self.store.write() as s:
            bridge = self._bridge(s, account, bridge_id)
            if bridge.revoked:
                raise FailedPrecondition(f"bridge {bridge.name!r} is revoked; create a new bridge instead")
            s.set_bridge_secret(bridge_id, secrets.hash_secret(secret))
            s.bump_routing_version(bridge.server_id)
            return s.bridge(bridge_id), secret

    def set_bridge_trusted_networks(self, account: Account, bridge_id: int, cidrs: list[str]) -> models.Bridge:
        """Replace the client networks that may send through the bridge without AUTH."""
        networks = validation.check_networks(list(cidrs))
        with self.store.write() as s:
            bridge = self._bridge(s, account, bridge_id)
            if bridge.revoked:
                raise FailedPrecondition(f"bridge {bridge.name!r} is revoked")
            self._check_networks_free(s, bridge.server_id, networks, excluding_bridge=bridge_id)
            s.set_bridge_networks(bridge_id, networks)
            s.bump_routing_version(bridge.server_id)
            return s.bridge(bridge_id)

    # ================================================================ helpers

    @staticmethod
    def _account(s: Store, user_id: int) -> Account:
        account = s.account(user_id)
        if account is None:
            raise NotFound(f"no account with user_id {user_id}")
        return account

    @staticmethod
    def _server(s: Store, server_id: int) -> models.MtaServer:
        server = s.server(server_id)
        if server is None:
            raise NotFound(f"no MTA server with server_id {server_id}")
        return server

    @staticmethod
    def _pool(s: Store, account: Account, smtp_id: int) -> models.Pool:
        pool = s.pool(smtp_id) if smtp_id > 0 else None
        if pool is None or pool.user_id != account.user_id:
            raise NotFound(f"no pool with smtp_id {smtp_id}")
        return pool

    @staticmethod
    def _ip(s: Store, account: Account, address: str) -> models.DedicatedIp:
        address = validation.check_address(address)
        ip = s.ip(address)
        if ip is None or ip.user_id != account.user_id:
            raise NotFound(f"no dedicated IP {address} in this account")
        return ip

    @staticmethod
    def _bridge(s: Store, account: Account, bridge_id: int) -> models.Bridge:
        bridge = s.bridge(bridge_id) if bridge_id > 0 else None
        if bridge is None or bridge.user_id != account.user_id:
            raise NotFound(f"no bridge with bridge_id {bridge_id}")
        return bridge

    @staticmethod
    def _check_label_free(s: Store, account: Account, label: str) -> None:
        if any(p.label == label for p in s.pools_of(account.user_id)):
            raise AlreadyExists(f"a pool labelled {label!r} already exists in this account")

    def _insert_pool(self, s: Store, account: Account, *, label: str, tag: str, server_id: int, feed_type: str) -> int:
        self._check_label_free(s, account, label)
        # Exactly one default pool: the account's first pool is it.
        first = s.default_pool(account.user_id) is None
        return s.insert_pool(
            user_id=account.user_id, server_id=server_id, label=label, tag=tag,
            feed_type=feed_type, is_default=first,
        )

    @staticmethod
    def _insert_ip(s: Store, *, address: str, user_id: int | None, pool: models.Pool, weight: int, hostname: str) -> None:
        if s.ip(address) is not None:
            raise AlreadyExists(f"IP {address} is already provisioned on this platform")
        try:
            s.insert_ip(address=address, user_id=user_id, server_id=pool.server_id,
                        smtp_id=pool.smtp_id, weight=weight, hostname=hostname)
        except sqlite3.IntegrityError as exc:
            if is_unique_violation(exc):
                raise AlreadyExists(f"IP {address} is already provisioned on this platform") from None
            raise

    @staticmethod
    def _check_networks_free(s: Store, server_id: int, networks: list[str], *, excluding_bridge: int) -> None:
        # The other bridge may belong to another account: name only the network.
        for _other_bridge, other in s.networks_on_server(server_id, excluding_bridge=excluding_bridge):
            for net in networks:
                if validation.networks_overlap(net, other):
                    raise FailedPrecondition(
                        f"trusted network {net} overlaps {other}, already trusted by another bridge on "
                        "the same MTA server; a client address must map to exactly one bridge"
                    )

    def _change_ip(self, account: Account, address: str, change) -> models.DedicatedIp:
        with self.store.write() as s:
            ip = self._ip(s, account, address)
            change(s, ip.address)
            s.bump_routing_version(ip.server_id)
            return s.ip(ip.address)


def _check_tier(tier: str) -> str:
    if tier not in models.TIERS:
        raise InvalidArgument(f"tier must be one of {', '.join(models.TIERS)}, got {tier!r}")
    return tier
