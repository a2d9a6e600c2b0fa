"""Records the domain layer returns: plain frozen dataclasses, no SQL, no protobuf."""

from __future__ import annotations

from dataclasses import dataclass

from .contract import dkim_record

TIERS = ("ESSENTIAL", "PRO", "BUSINESS")
DEDICATED_TIERS = frozenset({"PRO", "BUSINESS"})

IP_ACTIVE = "active"
IP_PAUSED = "paused"

OP_QUEUED = "QUEUED"
OP_APPLYING = "APPLYING"
OP_DONE = "DONE"
OP_FAILED = "FAILED"
OP_PENDING = (OP_QUEUED, OP_APPLYING)

POOL_ACTIVE = "ACTIVE"
POOL_PAUSED = "PAUSED"
POOL_EMPTY = "EMPTY"


@dataclass(frozen=True)
class Account:
    user_id: int
    name: str
    tier: str
    created_at: float


@dataclass(frozen=True)
class MtaServer:
    server_id: int
    hostname: str
    zone: str
    bounce_domain: str  # '' = its hostname
    routing_version: int
    shared_pool: str
    created_at: float


@dataclass(frozen=True)
class Pool:
    smtp_id: int
    user_id: int | None  # None for a server's shared pool
    server_id: int
    zone: str
    label: str
    tag: str
    internal_name: str
    feed_type: str
    bounce_domain: str  # '' = the MTA server's bounce domain
    signing_domain: str  # DKIM d= when the From domain has no active key; '' = none
    feedback_signing_domain: str  # a second DKIM signature's d=; '' = none
    headers: tuple[tuple[str, str], ...]
    is_default: bool
    is_shared: bool
    ip_count: int
    usable_ip_count: int
    bridge_count: int
    created_at: float

    @property
    def status(self) -> str:
        """ACTIVE when an IP takes traffic, PAUSED when none does, EMPTY without IPs."""
        if self.ip_count == 0:
            return POOL_EMPTY
        return POOL_ACTIVE if self.usable_ip_count else POOL_PAUSED


@dataclass(frozen=True)
class DedicatedIp:
    address: str
    user_id: int | None
    smtp_id: int
    pool_label: str
    server_id: int
    weight: int
    state: str
    hostname: str
    pending_operation_id: str
    created_at: float


@dataclass(frozen=True)
class Bridge:
    bridge_id: int
    user_id: int
    name: str
    smtp_id: int
    pool_label: str
    shared: bool
    server_id: int
    username: str
    feed_type: str
    send_dsns: bool
    trusted_networks: tuple[str, ...]
    revoked: bool
    created_at: float
    secret_rotated_at: float | None


@dataclass(frozen=True)
class Operation:
    operation_id: str
    user_id: int
    state: str
    address: str
    from_smtp_id: int
    to_smtp_id: int
    routing_version: int
    error: str
    created_at: float
    updated_at: float

    @property
    def finished(self) -> bool:
        return self.state in (OP_DONE, OP_FAILED)


DKIM_RSA = "rsa-sha256"
DKIM_ED25519 = "ed25519-sha256"
DKIM_ALGORITHMS = (DKIM_RSA, DKIM_ED25519)
DKIM_ACTIVE = "ACTIVE"  # signs the domain's mail
DKIM_PUBLISHED = "PUBLISHED"  # rotated out: still in DNS so mail in flight verifies, never signs
DKIM_RETIRED = "RETIRED"  # may be removed from DNS; deletable


@dataclass(frozen=True)
class DkimKey:
    """A DKIM key as the API shows it: never its private half."""

    key_id: int
    user_id: int
    domain: str  # lower-case A-label
    selector: str
    algorithm: str  # DKIM_RSA | DKIM_ED25519
    public_key_b64: str  # the TXT record's p= value
    state: str
    created_at: float
    retired_at: float | None

    @property
    def record_name(self) -> str:
        """Where the TXT record goes (RFC 6376 3.6.2.1)."""
        return dkim_record.record_name(self.selector, self.domain)


def internal_pool_name(tag: str, user_id: int, server_id: int, smtp_id: int) -> str:
    """The pool's fixed routing name: {tag}-{user_id}-{server_id}-pool-{smtp_id}."""
    return f"{tag}-{user_id}-{server_id}-pool-{smtp_id}"
