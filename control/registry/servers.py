"""MTA servers (admin calls): registration with a zone, each server's bounce domain,
and each server's shared pool and its IPs, through which ESSENTIAL accounts send."""

from __future__ import annotations

from .. import models, paging, validation
from ..contract.json_records import quoted
from ..errors import NotFound
from ..store import Store
from . import lookups
from .ips import IP_KEY_TYPES, insert_ip, ip_key

SHARED_POOL_LABEL = "shared"
SHARED_POOL_TAG = "shared"


class MtaServers:
    """The rules of MTA servers and their shared pools."""

    store: Store

    def servers_of_account(self, account: models.Account) -> list[int]:
        """The ids of the MTA servers carrying the account's pools or active Bridges:
        where its messages' delivery events are."""
        with self.store.read() as s:
            return s.servers_of_account(account.user_id)

    def register_server(self, hostname: str, zone: str, bounce_domain: str = "") -> models.MtaServer:
        """Register an MTA server with its zone and bounce domain ('' = its hostname), and
        create its shared pool."""
        hostname = validation.check_hostname(hostname)
        zone = validation.check_zone(zone)
        bounce_domain = validation.check_bounce_domain(bounce_domain)
        with self.store.write() as s:
            with lookups.unique(f"an MTA server with hostname {quoted(hostname)} is already registered"):
                server_id = s.insert_server(hostname, zone, bounce_domain)
            s.insert_pool(
                user_id=None, server_id=server_id, label=SHARED_POOL_LABEL, tag=SHARED_POOL_TAG,
                feed_type="", is_default=False, is_shared=True,
            )
            return s.server(server_id)

    def get_server(self, server_id: int, hostname: str = "") -> models.MtaServer:
        """The MTA server `server_id`, else (server_id 0) the one with `hostname`; NotFound otherwise."""
        with self.store.read() as s:
            if not server_id and hostname:
                return lookups.named(s.server_with_hostname(hostname.strip().lower().rstrip(".")), hostname,
                                     "MTA server with hostname")
            return lookups.server(s, server_id)

    def list_servers(self) -> list[models.MtaServer]:
        """Every registered MTA server, in registration order."""
        with self.store.read() as s:
            return s.servers()

    def list_servers_page(self, page_size: int, page_token: str) -> paging.Page[models.MtaServer]:
        """One page of the MTA servers, in registration order (by server_id)."""
        wanted = paging.request("servers", page_size, page_token)
        with self.store.read() as s:
            return paging.fetched(wanted, (int,), lambda after, limit: s.servers_page(after=after, limit=limit),
                                  lambda m: [m.server_id])

    def set_server_bounce_domain(self, server_id: int, bounce_domain: str) -> models.MtaServer:
        """Set the domain of the VERP return paths of the server's pools that have none of
        their own ('' = the server's hostname), and bump its routing version so its data
        plane loads the change; no bump when it is unchanged. Returns the server as it is now."""
        bounce_domain = validation.check_bounce_domain(bounce_domain)
        with self.store.write() as s:
            server = lookups.server(s, server_id)
            if server.bounce_domain != bounce_domain:
                s.set_server_bounce_domain(server_id, bounce_domain)
                s.bump_routing_version(server_id)
            return s.server(server_id)

    def provision_shared_ip(self, server_id: int, address: str, weight: int, hostname: str) -> models.DedicatedIp:
        """Add an IP to a server's shared pool."""
        address = validation.check_address(address)
        weight = validation.check_weight(weight, default=1)
        with self.store.write() as s:
            server = lookups.server(s, server_id)
            pool = s.shared_pool(server_id)
            insert_ip(s, address=address, user_id=None, pool=pool, weight=weight,
                      hostname=validation.check_hostname(hostname) if hostname else server.hostname)
            s.bump_routing_version(server_id)
            return s.ip(address)

    def list_shared_ips_page(self, server_id: int, page_size: int,
                             page_token: str) -> paging.Page[models.DedicatedIp]:
        """One page of the IPs of the server's shared pool, oldest first; NotFound for an
        unknown server."""
        wanted = paging.request(f"shared-ips:{server_id}", page_size, page_token)
        with self.store.read() as s:
            lookups.server(s, server_id)
            smtp_id = s.shared_pool(server_id).smtp_id
            return paging.fetched(wanted, IP_KEY_TYPES, lambda after, limit: s.ips_page(
                None, after=after, limit=limit, smtp_id=smtp_id), ip_key)

    def release_shared_ip(self, address: str) -> None:
        """Remove an IP from its server's shared pool; NotFound unless it is a shared-pool IP."""
        address = validation.canonical_address(address)
        with self.store.write() as s:
            ip = s.ip(address)
            if ip is None or ip.user_id is not None:
                raise NotFound(f"no shared-pool IP {address}")
            s.delete_ip(address)
            s.bump_routing_version(ip.server_id)
