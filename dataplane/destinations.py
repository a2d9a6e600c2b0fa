"""Where a recipient domain's mail goes: a static route, the smarthost, or the
domain's mail servers found in DNS (dnspython's asyncio resolver).

Order: an exact `--route DOMAIN=...` beats `--route '*=...'`, which beats
`--smarthost`, which beats DNS. For DNS (RFC 5321 section 5.1):

* MX records, lowest preference first, equal preferences in random order;
* no MX record (the name exists): the domain itself, the "implicit MX";
* a null MX (a single MX "0 .", RFC 7505): the domain takes no mail, bounce;
* NXDOMAIN: the domain does not exist, bounce;
* anything else (timeout, SERVFAIL, no resolver): try again later.

Each host is then looked up for addresses of the source IP's family (A for an
IPv4 source, AAAA for IPv6); route and smarthost names go through the system
resolver (so /etc/hosts works). `[192.0.2.1]` / `[IPv6:...]` address literals
are used as they are. Answers are cached for their TTL (at most an hour).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import time
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver

from .config import DeliveryConfig
from .smtp_reply import (
    BAD_DOMAIN,
    DNS_FAILED,
    NO_SUCH_DOMAIN,
    NULL_MX,
    Reply,
    local_reply,
)

DNS_LIFETIME = 10.0
MAX_CACHE_SECONDS = 3600.0
NEGATIVE_CACHE_SECONDS = 60.0
ROUTE_CACHE_SECONDS = 60.0
MAX_CACHED = 100_000


class LookupFailed(Exception):
    """No destination for a domain right now; `reply` says why (classify() it:
    5yz = the domain takes no mail, 4yz = try again later)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Hop:
    """One server to try: a host name or address, and its port."""

    name: str
    port: int


@dataclass(frozen=True, slots=True)
class Destination:
    """Where one domain's mail goes.

    `site` names the destination for connection reuse and concurrency limits
    (domains routed to one host:port share it). `hops` are tried in order.
    `dns` says whether hop names are looked up in DNS (MX hosts) or with the
    system resolver (configured routes).
    """

    site: str
    hops: tuple[Hop, ...]
    dns: bool


def address_literal(domain: str) -> str | None:
    """The address of a `[192.0.2.1]` or `[IPv6:2001:db8::1]` domain (RFC 5321 4.1.3), else None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


def family_of(address: str) -> int:
    return 6 if ":" in address else 4


def order_mx(records: list[tuple[int, str]], rng: random.Random | None = None) -> list[str]:
    """MX host names by preference, equal preferences shuffled (RFC 5321 5.1).

    [] for a null MX ("0 .", RFC 7505): the domain takes no mail. A null MX
    among other records is ignored (RFC 7505 3: it must not be there).
    """
    rng = rng or random
    real = [(pref, host.rstrip(".").lower()) for pref, host in records if host.rstrip(".")]
    shuffled = list(real)
    rng.shuffle(shuffled)
    shuffled.sort(key=lambda item: item[0])  # stable: equal preferences keep the shuffle
    seen: dict[str, None] = {}
    for _, host in shuffled:
        seen.setdefault(host, None)
    return list(seen)


class Destinations:
    """Finds the Destination of a domain and the addresses of a hop (one per worker)."""

    def __init__(self, config: DeliveryConfig) -> None:
        self.config = config
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._mx_cache: dict[str, tuple[float, Destination | LookupFailed]] = {}
        self._address_cache: dict[tuple[str, int, bool], tuple[float, list[str]]] = {}
        # One Destination per configured route: every job holds its destination while
        # it waits, and a backlog of one route is tens of thousands of jobs.
        self._routes: dict[tuple[str, int], Destination] = {}
        self.lookups = 0  # DNS queries made (a metric)

    # -- resolver -----------------------------------------------------------

    def resolver(self) -> dns.asyncresolver.Resolver:
        """The DNS resolver, made on first use (a host without /etc/resolv.conf
        fails only the deliveries that need DNS)."""
        if self._resolver is None:
            if self.config.dns_server is not None:
                host, port = self.config.dns_server
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.port = port  # before nameservers: they take the port when set
                resolver.nameservers = [host]
            else:
                resolver = dns.asyncresolver.Resolver()
            resolver.lifetime = DNS_LIFETIME
            resolver.cache = dns.resolver.Cache()
            self._resolver = resolver
        return self._resolver

    # -- destinations ---------------------------------------------------------

    async def find(self, domain: str) -> Destination:
        """The Destination of a normalized domain; LookupFailed when there is none."""
        route = self.config.route_for(domain)
        if route is not None:
            destination = self._routes.get(route)
            if destination is None:
                host, port = route
                destination = self._routes[route] = Destination(f"route:{host}:{port}", (Hop(host, port),),
                                                                dns=False)
            return destination
        literal = address_literal(domain)
        if literal is not None:
            return Destination(f"literal:{literal}", (Hop(literal, self.config.mx_port),), dns=False)
        now = time.monotonic()
        cached = self._mx_cache.get(domain)
        if cached is not None and cached[0] > now:
            if isinstance(cached[1], LookupFailed):
                raise cached[1]
            return cached[1]
        try:
            destination, ttl = await self._lookup_mx(domain)
        except LookupFailed as failure:
            if failure.reply.code >= 500:
                self._remember(self._mx_cache, domain, (now + NEGATIVE_CACHE_SECONDS, failure))
            raise
        self._remember(self._mx_cache, domain, (now + ttl, destination))
        return destination

    async def _lookup_mx(self, domain: str) -> tuple[Destination, float]:
        port = self.config.mx_port
        try:
            name = dns.name.from_text(domain) if domain else None
        except dns.exception.SyntaxError as exc:
            name = None
            problem = str(exc) or "not a domain name"
        else:
            problem = "the address has no domain"
        if name is None:
            raise LookupFailed(local_reply(BAD_DOMAIN, domain=domain, error=problem))
        try:
            resolver = self.resolver()
            self.lookups += 1
            answer = await resolver.resolve(name, "MX", search=False)
        except dns.resolver.NXDOMAIN:
            raise LookupFailed(local_reply(NO_SUCH_DOMAIN, domain=domain)) from None
        except dns.resolver.NoAnswer:
            # RFC 5321 5.1: no MX, so the domain itself is the mail server.
            return Destination(f"mx:{domain}", (Hop(domain, port),), dns=True), NEGATIVE_CACHE_SECONDS
        except dns.exception.DNSException as exc:
            raise LookupFailed(local_reply(DNS_FAILED, domain=domain, error=_dns_error(exc))) from None
        records = [(rdata.preference, rdata.exchange.to_text()) for rdata in answer]
        hosts = order_mx(records)
        if not hosts:
            raise LookupFailed(local_reply(NULL_MX, domain=domain))
        ttl = min(max(float(answer.rrset.ttl if answer.rrset is not None else 0), 1.0), MAX_CACHE_SECONDS)
        return Destination(f"mx:{domain}", tuple(Hop(host, port) for host in hosts), dns=True), ttl

    # -- addresses -------------------------------------------------------------

    async def addresses(self, destination: Destination, hop: Hop, family: int) -> list[str]:
        """The hop's addresses of `family` (4 or 6); [] when it has none.

        LookupFailed (4yz) when the lookup itself failed (the caller tries the
        next hop and defers if none works).
        """
        try:
            literal = str(ipaddress.ip_address(hop.name))
        except ValueError:
            literal = None
        if literal is not None:
            return [literal] if family_of(literal) == family else []
        key = (hop.name, family, destination.dns)
        now = time.monotonic()
        cached = self._address_cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        if destination.dns:
            found, ttl = await self._dns_addresses(hop.name, family)
        else:
            found, ttl = await self._system_addresses(hop, family), ROUTE_CACHE_SECONDS
        self._remember(self._address_cache, key, (now + ttl, found))
        return found

    async def _dns_addresses(self, name: str, family: int) -> tuple[list[str], float]:
        try:
            resolver = self.resolver()
            self.lookups += 1
            answer = await resolver.resolve(dns.name.from_text(name), "A" if family == 4 else "AAAA", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return [], NEGATIVE_CACHE_SECONDS
        except dns.exception.DNSException as exc:
            raise LookupFailed(local_reply(DNS_FAILED, domain=name, error=_dns_error(exc))) from None
        ttl = min(max(float(answer.rrset.ttl if answer.rrset is not None else 0), 1.0), MAX_CACHE_SECONDS)
        return [rdata.address for rdata in answer], ttl

    async def _system_addresses(self, hop: Hop, family: int) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(hop.name, hop.port, type=socket.SOCK_STREAM,
                                           family=socket.AF_INET if family == 4 else socket.AF_INET6)
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5), socket.EAI_FAMILY):
                return []
            raise LookupFailed(local_reply(DNS_FAILED, domain=hop.name, error=exc.strerror or str(exc))) from None
        seen: dict[str, None] = {}
        for *_, sockaddr in infos:
            seen.setdefault(str(sockaddr[0]), None)
        return list(seen)

    @staticmethod
    def _remember(cache: dict, key, value) -> None:
        if len(cache) >= MAX_CACHED:
            now = time.monotonic()
            for stale in [k for k, (expires, _) in cache.items() if expires <= now]:
                del cache[stale]
            if len(cache) >= MAX_CACHED:
                cache.clear()
        cache[key] = value


def _dns_error(exc: dns.exception.DNSException) -> str:
    if isinstance(exc, dns.exception.Timeout):
        return "timed out"
    if isinstance(exc, dns.resolver.NoNameservers):
        return "no name server answered (SERVFAIL or refused)"
    if isinstance(exc, dns.resolver.NoResolverConfiguration):
        return "no DNS resolver is configured on this host"
    return str(exc) or type(exc).__name__
