"""Input rules for every name, address and header the control plane accepts.

Each `check_*` returns the normalised value or raises InvalidArgument with a
message that says what is allowed.
"""

from __future__ import annotations

import ipaddress
import re

from .contract import rediskeys
from .contract.bounce_domain import BounceDomainError
from .contract.bounce_domain import check_bounce_domain as contract_check_bounce_domain
from .contract.headers import STAMPED_HEADER_NAMES
from .contract.json_records import quoted
from .errors import InvalidArgument

MAX_LABEL = 64
MAX_TAG = 32
MAX_HEADER_NAME = 76  # keeps "name: " within the RFC 5322 §2.1.1 78-character line
MAX_HEADER_VALUE = 900
MAX_HEADERS = 32
MAX_WEIGHT = 1000
MAX_NETWORKS = 64
# The widest network a bridge may trust unless the platform admin allows wider: a
# wider one makes the bridge an open relay for a large part of the Internet.
MIN_TRUSTED_PREFIX_V4 = 24
MIN_TRUSTED_PREFIX_V6 = 48

# Fields a pool may not set as custom headers, besides the four poolmta stamps: who
# the message is from and to, what identifies it, and what the MTAs it crosses add
# to trace and authenticate it. Setting one would forge the sender's identity or a
# receiving MTA's verdict for every message of the pool. A trailing '*' is a family
# (ARC-Seal, ARC-Message-Signature, ...; Content-Type, Content-Transfer-Encoding, ...).
# Compared case-insensitively; README's rules table lists them.
IDENTITY_AND_TRACE_HEADERS = (
    "From", "Sender", "Reply-To", "To", "Cc", "Bcc", "Subject", "Date",
    "Message-ID", "In-Reply-To", "References", "Resent-*",
    "Received", "Return-Path", "Delivered-To", "Received-SPF", "Authentication-Results",
    "DKIM-Signature", "DomainKey-Signature", "ARC-*",
    "MIME-Version", "Content-*",
    "Errors-To", "Disposition-Notification-To", "Return-Receipt-To",
)

_LABEL = re.compile(r"^[A-Za-z0-9._-](?:[A-Za-z0-9._ -]*[A-Za-z0-9._-])?$")
_ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_TAG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
# RFC 5322 §3.6.8: field-name = 1*ftext; ftext = %d33-57 / %d59-126 (printable US-ASCII but ':')
_FIELD_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
_ZONE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
_FEED_TYPE = re.compile(r"^[A-Za-z0-9._/-]{0,64}$")


def check_label(label: str) -> str:
    """A pool or bridge label: 1-64 chars of letters, digits, '.', '_', '-' (spaces inside)."""
    label = label.strip()
    if not label:
        raise InvalidArgument("label must not be empty")
    if len(label) > MAX_LABEL:
        raise InvalidArgument(f"label is {len(label)} characters; the limit is {MAX_LABEL}")
    if not _LABEL.match(label):
        raise InvalidArgument(
            f"label {quoted(label)} may contain only letters, digits, '.', '_', '-' and inner spaces"
        )
    return label


def check_account_name(name: str) -> str:
    """An account name: 1-64 letters, digits, '.', '_' or '-'."""
    if not _ACCOUNT_NAME.match(name or ""):
        raise InvalidArgument(
            f"account name {quoted(name)} must be 1-64 letters, digits, '.', '_' or '-'"
        )
    return name


def slug_from_label(label: str) -> str:
    """A tag derived from a label: lowercase, runs of other characters become '-'."""
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:MAX_TAG].strip("-")
    return slug or "pool"


def check_tag(tag: str) -> str:
    """A tag: lowercase letters and digits in '-'-separated words, at most 32 characters."""
    if not tag or len(tag) > MAX_TAG or not _TAG.match(tag):
        raise InvalidArgument(
            f"tag {quoted(tag)} must be 1-{MAX_TAG} lowercase letters and digits, words joined by '-'"
        )
    return tag


def check_header(name: str, value: str) -> tuple[str, str]:
    """A custom header: an RFC 5322 field name that is not reserved, and a value without CR/LF."""
    if not name or not _FIELD_NAME.match(name):
        raise InvalidArgument(
            f"header name {quoted(name)} is not a valid field name (printable US-ASCII except ':' and space)"
        )
    if len(name) > MAX_HEADER_NAME:
        raise InvalidArgument(f"header name is {len(name)} characters; the limit is {MAX_HEADER_NAME}")
    if name.lower() in STAMPED_HEADER_NAMES:
        raise InvalidArgument(
            f"header {quoted(name)} is stamped by poolmta itself and cannot be set as a custom header"
        )
    if is_identity_or_trace_header(name):
        raise InvalidArgument(
            f"header {quoted(name)} is an identity or trace field (it says who sent the message, "
            "to whom, what it is, or what the MTAs on its way found) and cannot be set as a "
            "custom header"
        )
    if "\r" in value or "\n" in value or "\x00" in value:
        raise InvalidArgument(f"value of header {quoted(name)} must not contain CR, LF or NUL")
    if len(value.encode("utf-8")) > MAX_HEADER_VALUE:
        raise InvalidArgument(f"value of header {quoted(name)} is longer than {MAX_HEADER_VALUE} bytes")
    return name, value.strip(" \t")


def is_identity_or_trace_header(name: str) -> bool:
    """True when `name` (any case) is one of IDENTITY_AND_TRACE_HEADERS or of their families."""
    name = name.lower()
    return any(
        name.startswith(field[:-1].lower()) if field.endswith("*") else name == field.lower()
        for field in IDENTITY_AND_TRACE_HEADERS
    )


def check_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A pool's custom headers: each valid, no name twice (case-insensitive), at most 32."""
    if len(headers) > MAX_HEADERS:
        raise InvalidArgument(f"{len(headers)} headers given; a pool carries at most {MAX_HEADERS}")
    seen: set[str] = set()
    checked = []
    for name, value in headers:
        name, value = check_header(name, value)
        if name.lower() in seen:
            raise InvalidArgument(f"header {quoted(name)} is given twice")
        seen.add(name.lower())
        checked.append((name, value))
    return checked


def canonical_address(address: str) -> str:
    """An IPv4 or IPv6 address in the one form the registry stores it in: compressed,
    lower-case, and an IPv4-mapped IPv6 address ('::ffff:127.0.0.5') as the IPv4 address
    it maps. For lookups; what may be provisioned is check_address."""
    try:
        ip = ipaddress.ip_address((address or "").strip())
    except ValueError:
        raise InvalidArgument(f"{quoted(address)} is not an IPv4 or IPv6 address") from None
    if ip.version == 6 and ip.ipv4_mapped is not None and ip.scope_id is None:
        return ip.ipv4_mapped.compressed
    return ip.compressed


def check_address(address: str) -> str:
    """An address a server can send from, in canonical_address form: a unicast IPv4 or
    IPv6 address (loopback included, for tests); scoped, link-local, multicast,
    unspecified, broadcast and IPv4-compatible IPv6 addresses are INVALID_ARGUMENT
    saying why."""
    canonical = canonical_address(address)
    ip = ipaddress.ip_address(canonical)
    if getattr(ip, "scope_id", None):
        raise InvalidArgument(
            f"{quoted(address)} carries a zone (%interface): a sending address is the same on "
            "every host, so give it without one"
        )
    why = _unsendable(ip)
    if why:
        raise InvalidArgument(f"{quoted(address)} cannot be a sending address: it is {why}")
    return canonical


def _unsendable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if ip.is_unspecified:
        return "the unspecified address (any address), not one address"
    if ip.is_multicast:
        return "a multicast address, which names a group, not a host"
    if ip.is_link_local:
        return "link-local, so it means something only on one network link"
    if ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255"):
        return "the broadcast address"
    if ip.version == 6 and int(ip) >> 32 == 0 and not ip.is_loopback:
        return "an IPv4-compatible IPv6 address (deprecated by RFC 4291); give the IPv4 address"
    return ""


_IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


def check_network(cidr: str) -> str:
    """A client network in CIDR form, normalised (host bits must be zero); an
    IPv4-mapped IPv6 network (::ffff:a.b.c.d/n, n >= 96) is the IPv4 network it maps,
    since clients connecting over IPv4 are seen by their IPv4 address."""
    try:
        net = ipaddress.ip_network((cidr or "").strip(), strict=True)
    except ValueError as exc:
        why = "host bits are set: give the network address" if "host bits" in str(exc) else "e.g. 192.0.2.0/24"
        raise InvalidArgument(f"{quoted(cidr)} is not a network in CIDR form ({why})") from None
    if net.version == 6 and net.subnet_of(_IPV4_MAPPED):
        net = ipaddress.IPv4Network((net.network_address.ipv4_mapped, net.prefixlen - 96))
    return net.compressed


def check_networks(cidrs: list[str], *, min_prefix_v4: int = MIN_TRUSTED_PREFIX_V4,
                   min_prefix_v6: int = MIN_TRUSTED_PREFIX_V6) -> list[str]:
    """A bridge's trusted networks: valid, distinct, not overlapping each other, and
    none wider than /`min_prefix_v4` (IPv4) or /`min_prefix_v6` (IPv6)."""
    if len(cidrs) > MAX_NETWORKS:
        raise InvalidArgument(f"at most {MAX_NETWORKS} trusted networks per bridge")
    nets = [ipaddress.ip_network(check_network(c)) for c in cidrs]
    for net in nets:
        minimum = min_prefix_v4 if net.version == 4 else min_prefix_v6
        if net.prefixlen < minimum:
            raise InvalidArgument(
                f"trusted network {net} is wider than this MTA server allows: the minimum prefix "
                f"length for IPv{net.version} is /{minimum} (the platform admin sets it)"
            )
    for i, a in enumerate(nets):
        for b in nets[i + 1 :]:
            if a.version == b.version and a.overlaps(b):
                raise InvalidArgument(f"trusted networks {a} and {b} overlap")
    return [n.compressed for n in nets]


def networks_overlap(a: str, b: str) -> bool:
    """True when two CIDR networks share an address."""
    na, nb = ipaddress.ip_network(a), ipaddress.ip_network(b)
    return na.version == nb.version and na.overlaps(nb)


def check_weight(weight: int, *, default: int | None = None) -> int:
    """A rotation weight 0-1000; `default` replaces 0 when given (proto3 unset)."""
    if weight == 0 and default is not None:
        return default
    if not 0 <= weight <= MAX_WEIGHT:
        raise InvalidArgument(f"weight must be between 0 and {MAX_WEIGHT}, got {weight}")
    return weight


def check_hostname(hostname: str) -> str:
    """A DNS hostname (RFC 1123 labels), lowercased, no trailing dot."""
    hostname = (hostname or "").strip()
    if not _HOSTNAME.match(hostname):
        raise InvalidArgument(f"{quoted(hostname)} is not a valid hostname")
    return hostname.rstrip(".").lower()


def check_zone(zone: str) -> str:
    """A zone name such as US-1, EU-1 or MTA4."""
    if not _ZONE.match(zone or ""):
        raise InvalidArgument(f"zone {quoted(zone)} must be 1-32 letters, digits, '-' or '_'")
    return zone


def check_feed_type(feed_type: str) -> str:
    """A feed type such as 'newsletter' or 'transactional' (may be empty)."""
    feed_type = (feed_type or "").strip()
    if not _FEED_TYPE.match(feed_type):
        raise InvalidArgument(
            f"feed type {quoted(feed_type)} must be at most 64 letters, digits, '.', '_', '/' or '-'"
        )
    return feed_type


def check_bounce_domain(domain: str) -> str:
    """A pool's or an MTA server's bounce domain, lowercased, no trailing dot; '' (the
    default: the server's for a pool, the hostname for a server) stays ''. The rule is
    the one the data plane signs return paths with."""
    domain = (domain or "").strip()
    if not domain:
        return ""
    try:
        return contract_check_bounce_domain(domain)
    except BounceDomainError as exc:
        raise InvalidArgument(f"{exc}; a bounce domain is a domain name such as bounces.example.com "
                              "(empty = the default)") from None


def check_id(value: int, what: str) -> int:
    """A positive object id; 0 (unset) or negative is INVALID_ARGUMENT naming the field."""
    if value <= 0:
        raise InvalidArgument(f"{what} is required")
    return value


# A trend's length when the request gives none: the last hour of minutes, the last day of hours.
DEFAULT_TREND_POINTS = {rediskeys.MINUTE: 60, rediskeys.HOUR: 24}


def check_trend_points(resolution: rediskeys.Resolution, points: int) -> int:
    """How many `resolution` buckets a trend shows: 1 up to as many as are kept (2,880
    minutes, 720 hours); 0 (unset) is DEFAULT_TREND_POINTS."""
    if points == 0:
        return DEFAULT_TREND_POINTS[resolution]
    most = resolution.retention_seconds // resolution.seconds
    if not 1 <= points <= most:
        raise InvalidArgument(
            f"points must be between 1 and {most} for {resolution.name} buckets "
            f"(kept {resolution.retention_seconds // 3600} hours), got {points}"
        )
    return points
