"""Routing built from one snapshot: who a Bridge is, which source IP its next
message leaves from, and which headers are stamped on it.

A `Routing` is built off the hot path (in a thread, when a new snapshot arrives)
and then only read, except for the rotation table's own position; the worker
swaps the whole object in one assignment. Per message the hot path is one dict
lookup, `RotationTable.pick` and `inject` (both `_fastpath`), then the DKIM
keyring's choice of keys (`dataplane.dkim_keys`: dict lookups).
The source-IP selector it builds is the one delivery re-picks from too, so a
pool has one rotation per worker.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass

from _fastpath import NoUsableIp, inject
from control.contract.headers import STAMPED_HEADERS
from control.contract.routing_delta import RoutingDelta
from control.contract.snapshot import BridgeRoute, PoolRoute, Snapshot

from .delivery.egress import SourceSelector
from .dkim_keys import DkimKeyring, Signing
from .return_path import bounce_domain_of, server_bounce_domains
from .trace_header import printable

__all__ = ["NoUsableIp", "PoolGone", "Route", "Routing", "stamp"]

Header = tuple[bytes, bytes]


class PoolGone(LookupError):
    """The Bridge's pool is not in the snapshot (deleted, or moved to another server)."""


@dataclass(frozen=True, slots=True)
class Route:
    """Where one message goes: the decision recorded in its spool record."""

    pool: PoolRoute
    address: str  # source IP
    ip_hostname: str  # HELO name of that IP
    feed_type: str
    headers: list[Header]  # shared between messages: never mutated
    bounce_domain: str = ""  # of its VERP return paths ("" = none usable)


def client_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A peer address as an IP (an IPv4-mapped IPv6 address as IPv4); None if it is none."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


# The prefix IPv6 clients are counted per: one subnet, the least a site is assigned.
IPV6_CLIENT_PREFIX = 64
# A peer that is not an IP address (none over TCP) is counted under this many of its characters.
_OTHER_CLIENT_CHARS = 64


def client_key(peer_address: str) -> str:
    """What a client at `peer_address` is counted as by the AUTH throttle and the
    connection caps: its IPv4 address (an IPv4-mapped IPv6 one too), or its IPv6 /64
    (`2001:db8:1:2::/64`); a peer that is no IP address, as a short printable prefix."""
    address = client_ip(peer_address)
    if address is None:
        return printable(peer_address, _OTHER_CLIENT_CHARS)
    if address.version == 6:
        return ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False).compressed
    return address.compressed


def in_networks(text: str, networks) -> bool:
    """True when the peer address `text` lies in one of `networks`."""
    address = client_ip(text)
    return address is not None and any(address.version == n.version and address in n for n in networks)


def _network_key(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int]:
    return (network.version, -network.prefixlen)


def _trusted_networks(trusting: dict[int, BridgeRoute]) -> tuple:
    """(network, Bridge) of every trusted network, longest prefix first, so the most
    specific network wins if two ever overlap (the control plane refuses overlaps;
    this keeps a bad snapshot deterministic)."""
    trusted = []
    for bridge_id in sorted(trusting):
        bridge = trusting[bridge_id]
        for cidr in bridge.trusted_networks:
            try:
                trusted.append((ipaddress.ip_network(cidr, strict=False), bridge))
            except ValueError:
                continue  # the control plane validates; never fail a whole snapshot on one entry
    trusted.sort(key=lambda item: _network_key(item[0]))
    return tuple(trusted)


class Routing:
    """Everything a worker routes by, at one snapshot version.

    Given the `previous` version's Routing, only what changed is rebuilt: an
    unchanged pool (the same `PoolRoute`, which `routing_delta.apply` keeps as the
    same object) keeps its rotation table, position included, and its stamped
    headers; the Bridge indexes are rebuilt only when a Bridge changed, the DKIM
    keyring is passed in by the caller (the previous one when no key changed).

    What the return paths and the inbound listener ask per version (a pool's bounce
    domain, the set of bounce domains, a pool by internal name or by IP address) is
    read from indexes `advance` keeps, so a one-pool change never costs a scan of
    every pool there either.
    """

    def __init__(self, snapshot: Snapshot, dkim: DkimKeyring | None = None,
                 previous: Routing | None = None) -> None:
        self.snapshot = snapshot
        self.dkim = DkimKeyring() if dkim is None else dkim
        self.version = snapshot.version
        self._pools: dict[int, PoolRoute] = {p.smtp_id: p for p in snapshot.pools}
        same_server = previous is not None and (
            (previous.snapshot.server_id, previous.snapshot.zone, previous.snapshot.hostname,
             previous.snapshot.bounce_domain) == (snapshot.server_id, snapshot.zone, snapshot.hostname,
                                                  snapshot.bounce_domain))
        self.sources = SourceSelector(snapshot.pools, previous.sources if previous is not None else None)
        self._bounce_domains: dict[int, str] = {}
        # The headers stamped (filled as Bridges send): the pool's own feed type's by
        # smtp_id, a Bridge's override's apart (few Bridges override: a dict per pool
        # would cost every pool 200 bytes).
        self._headers: dict[int, list[Header]] = {}
        self._override_headers: dict[int, dict[str, list[Header]]] = {}
        if same_server:
            # Headers and bounce domains depend on the server's fields and the pool only.
            kept = {smtp_id for smtp_id, pool in self._pools.items() if previous._pools.get(smtp_id) is pool}
            self._bounce_domains = {smtp_id: previous._bounce_domains[smtp_id] for smtp_id in kept}
            # A copy first: the event loop may add to the previous cache meanwhile.
            self._headers = {smtp_id: h for smtp_id, h in dict(previous._headers).items() if smtp_id in kept}
            self._override_headers = {smtp_id: h for smtp_id, h in dict(previous._override_headers).items()
                                      if smtp_id in kept}
        for pool in snapshot.pools:
            if pool.smtp_id not in self._bounce_domains:
                self._bounce_domains[pool.smtp_id] = bounce_domain_of(snapshot, pool)
        # How many pools use each bounce domain, so `advance` knows when the set changes.
        self._domain_pools: Counter[str] = Counter(self._bounce_domains.values())
        self._domain_set: frozenset[str] | None = None  # built on first use, kept while it holds
        self._by_name: dict[str, PoolRoute] | None = None  # built on first use, then kept by advance
        # One header tuple per distinct value, shared by every pool's stamped headers.
        self._stamps: dict[Header, Header] = {}
        if previous is not None and previous.snapshot.bridges is snapshot.bridges:
            self.bridges_by_username = previous.bridges_by_username
            self.bridges_by_id = previous.bridges_by_id
            self._trusting = previous._trusting
            self._trusted = previous._trusted
        else:
            self._index_bridges(snapshot.bridges)
        for bridge in snapshot.bridges:
            pool = self._pools.get(bridge.smtp_id)
            if pool is not None:
                self._headers_for(pool, bridge.feed_type or pool.feed_type)

    def _index_bridges(self, bridges: tuple[BridgeRoute, ...]) -> None:
        self.bridges_by_username: dict[str, BridgeRoute] = {b.username: b for b in bridges}
        self.bridges_by_id: dict[int, BridgeRoute] = {b.bridge_id: b for b in bridges}
        # The Bridges with trusted networks, so a change re-sorts only theirs.
        self._trusting: dict[int, BridgeRoute] = {b.bridge_id: b for b in bridges if b.trusted_networks}
        self._trusted = _trusted_networks(self._trusting)

    def _headers_for(self, pool: PoolRoute, feed_type: str) -> list[Header]:
        if feed_type == pool.feed_type:
            by_feed = self._headers
            key = pool.smtp_id
        else:
            by_feed = self._override_headers.get(pool.smtp_id)
            if by_feed is None:
                by_feed = self._override_headers[pool.smtp_id] = {}
            key = feed_type
        headers = by_feed.get(key)
        if headers is None:
            snap = self.snapshot
            # The attribution headers, in their order, before the pool's custom
            # headers; `inject` removes client-sent copies. Without a feed type
            # there is no x-feedtype at all: an empty one tells a receiver nothing
            # and looks like a broken stamp.
            feed = [self._stamp(STAMPED_HEADERS.feed_type, feed_type.encode("utf-8"))] if feed_type else []
            headers = [
                (STAMPED_HEADERS.virtual_mta, pool.internal_name.encode("utf-8")),
                *feed,
                self._stamp(STAMPED_HEADERS.zone, snap.zone.encode("utf-8")),
                self._stamp(STAMPED_HEADERS.server_id, str(snap.server_id).encode("ascii")),
                *(self._stamp(n.encode("utf-8"), v.encode("utf-8")) for n, v in pool.headers),
            ]
            by_feed[key] = headers
        return headers

    def _stamp(self, name: bytes, value: bytes) -> Header:
        """The one tuple of this header line (zone, server id, feed types and custom
        headers repeat across pools: a worker holds one copy of each)."""
        header = (name, value)
        return self._stamps.setdefault(header, header)

    def advance(self, snapshot: Snapshot, deltas: tuple[RoutingDelta, ...]) -> None:
        """Move this routing, in place, to `snapshot` (its snapshot with `deltas`
        applied), touching only the pools and Bridges the deltas name: an untouched
        pool keeps its rotation position, headers and bounce domain. Only for deltas
        `advances_in_place` accepts. Raises (ValueError: a rotation table the fast path
        refuses) before changing anything.

        Atomic for the worker: it runs on the event loop and has no await inside, and
        the loop is single-threaded, so a message is routed entirely by the old
        routing or entirely by the new one, never by a mix.
        """
        pools: dict[int, PoolRoute | None] = {}
        bridges: dict[int, BridgeRoute | None] = {}
        for delta in deltas:  # the last delta's word on an entry is the one that holds
            pools.update((p.smtp_id, p) for p in delta.pools)
            pools.update(dict.fromkeys(delta.pools_gone))
            bridges.update((b.bridge_id, b) for b in delta.bridges)
            bridges.update(dict.fromkeys(delta.bridges_gone))
        prepared = self.sources.prepare(pools)
        bounce_domains = {smtp_id: bounce_domain_of(snapshot, pool)
                          for smtp_id, pool in pools.items() if pool is not None}
        # From here on only dict updates that cannot fail.
        self.sources.replace(prepared)
        for smtp_id, pool in pools.items():
            self._headers.pop(smtp_id, None)
            self._override_headers.pop(smtp_id, None)
            self._forget_pool(smtp_id)
            if pool is not None:
                self._pools[smtp_id] = pool
                self._bounce_domains[smtp_id] = domain = bounce_domains[smtp_id]
                self._domain_pools[domain] += 1
                if self._domain_pools[domain] == 1:
                    self._domain_set = None
                if self._by_name is not None:
                    self._by_name[_name_key(pool.internal_name)] = pool
        if bridges:
            self._replace_bridges(bridges)
        self.snapshot = snapshot
        self.version = snapshot.version

    def _forget_pool(self, smtp_id: int) -> None:
        """Take a pool out of the per-pool indexes (a no-op for one not in them)."""
        old = self._pools.pop(smtp_id, None)
        if old is None:
            return
        domain = self._bounce_domains.pop(smtp_id)
        self._domain_pools[domain] -= 1
        if not self._domain_pools[domain]:
            del self._domain_pools[domain]
            self._domain_set = None
        if self._by_name is not None and self._by_name.get(_name_key(old.internal_name)) is old:
            del self._by_name[_name_key(old.internal_name)]

    def _replace_bridges(self, bridges: dict[int, BridgeRoute | None]) -> None:
        trusting_changed = False
        for bridge_id in bridges:
            old = self.bridges_by_id.pop(bridge_id, None)
            if old is not None and self.bridges_by_username.get(old.username) is old:
                del self.bridges_by_username[old.username]
            trusting_changed |= self._trusting.pop(bridge_id, None) is not None
        for bridge_id, bridge in bridges.items():
            if bridge is None:
                continue
            self.bridges_by_id[bridge_id] = bridge
            self.bridges_by_username[bridge.username] = bridge
            if bridge.trusted_networks:
                self._trusting[bridge_id] = bridge
                trusting_changed = True
        if trusting_changed:
            self._trusted = _trusted_networks(self._trusting)

    def pool(self, smtp_id: int) -> PoolRoute:
        """The pool; PoolGone when this snapshot has no such pool."""
        try:
            return self._pools[smtp_id]
        except KeyError:
            raise PoolGone(smtp_id) from None

    def bounce_domain(self, smtp_id: int) -> str:
        """The bounce domain of the pool's return paths (`return_path.bounce_domain_of`);
        for a pool no longer here, the MTA server's ("" when none is usable)."""
        domain = self._bounce_domains.get(smtp_id)
        if domain is not None:
            return domain
        return server_bounce_domains(self.snapshot)[0]

    @property
    def bounce_domains(self) -> frozenset[str]:
        """Every bounce domain of the server (`return_path.bounce_domains`: its hostname,
        its own and its pools'); the same object until a change adds or removes one."""
        if self._domain_set is None:
            self._domain_set = frozenset({*self._domain_pools, *server_bounce_domains(self.snapshot)} - {""})
        return self._domain_set

    def pool_named(self, internal_name: str) -> PoolRoute | None:
        """The pool with this internal name (any case), if the server has it."""
        if self._by_name is None:
            self._by_name = {_name_key(p.internal_name): p for p in self._pools.values()}
        return self._by_name.get(_name_key(internal_name))

    def pool_of_ip(self, address: str) -> PoolRoute | None:
        """The pool the source IP `address` (canonical form) belongs to, if any."""
        return self.sources.pool_of(address)

    def current_bridge(self, bridge_id: int, username: str, secret_hash: str) -> BridgeRoute | None:
        """The Bridge if it still exists with these credentials (not revoked, not rotated)."""
        bridge = self.bridges_by_id.get(bridge_id)
        if bridge is None or bridge.username != username or bridge.secret_hash != secret_hash:
            return None
        return bridge

    def trusted_bridge(self, client_address: str) -> BridgeRoute | None:
        """The Bridge whose trusted networks hold `client_address`, if any."""
        if not self._trusted:
            return None
        address = client_ip(client_address)
        if address is None:
            return None
        for network, bridge in self._trusted:
            if address.version == network.version and address in network:
                return bridge
        return None

    def route(self, bridge: BridgeRoute) -> Route:
        """Pick the source IP for the Bridge's next message (advances the rotation).

        Raises PoolGone, or NoUsableIp when every IP of the pool is paused.
        """
        pool = self.pool(bridge.smtp_id)
        address, ip_hostname = self.sources.pick(pool.smtp_id)
        feed_type = bridge.feed_type or pool.feed_type
        return Route(
            pool=pool,
            address=address,
            ip_hostname=ip_hostname,
            feed_type=feed_type,
            headers=self._headers_for(pool, feed_type),
            bounce_domain=self._bounce_domains[pool.smtp_id],
        )

    def signing(self, bridge: BridgeRoute, route: Route, message: bytes) -> Signing:
        """The DKIM signatures for a message of `bridge` routed by `route`."""
        return self.dkim.signing(bridge.user_id, route.pool, message)


def _name_key(internal_name: str) -> str:
    return internal_name.lower()


def stamp(raw: bytes, route: Route, trace: bytes = b"") -> bytes:
    """The message with its attribution and custom headers injected (client copies
    removed), below `trace` (the Received header), all in one copy of the message."""
    return inject(raw, route.headers, trace)
