"""Which envelope recipients the inbound listener takes, so it is never a relay.

Taken (anything else gets 550):

* a VERP return path (`dataplane.verp`: `b-<token>@<bounce domain>`) on one of
  this server's bounce domains whose MAC checks out: that is where bounces come.
  A `b-` address that does not decode (forged MAC, expired, unknown key) is
  refused at RCPT with the codec's reason;
* `fbl@`, `abuse@` and `postmaster@` each bounce domain (RFC 5321 4.5.1 requires
  postmaster; RFC 2142 names abuse; fbl is the default feedback-loop address);
* every `--fbl-address` (the addresses registered with providers' feedback loops).

The bounce domains are the MTA server's hostname (the snapshot's, and `--hostname`
when given), the server's own `bounce_domain` when the snapshot names one, plus
every pool's own (`dataplane.return_path.bounce_domains`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from control.contract.snapshot import Snapshot

from ..return_path import bounce_domains as return_path_domains
from ..verp import PREFIX as VERP_PREFIX
from ..verp import VerpCodec, VerpError, VerpToken, check_bounce_domain

log = logging.getLogger("poolmta.dataplane.inbound")

BOUNCE = "bounce"  # a VERP return path
FEEDBACK = "feedback"  # an FBL, abuse or postmaster address

ROLE_LOCAL_PARTS = frozenset({"fbl", "abuse", "postmaster"})
# Refusals quote at most this much of an address.
_QUOTED = 64


class NotAccepted(Exception):
    """A recipient the inbound listener does not take; `why` is for the 550 reply."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


@dataclass(frozen=True, slots=True)
class InboundRecipient:
    """An accepted envelope recipient: BOUNCE (with its verified VERP token) or FEEDBACK."""

    address: str
    kind: str
    token: VerpToken | None = None


def quoted(address: str) -> str:
    """`address` made safe for a reply or a log line: printable ASCII, at most 64 characters."""
    text = "".join(c if " " < c <= "~" else "?" for c in address[:_QUOTED])
    return text + ("..." if len(address) > _QUOTED else "")


def bounce_domains(snapshot: Snapshot, hostname: str | None = None) -> frozenset[str]:
    """The bounce domains of this server: those its return paths use
    (`return_path.bounce_domains`: the snapshot's hostname, the server's and every
    pool's own bounce domain), plus `hostname` when given and valid."""
    return with_hostname(return_path_domains(snapshot), hostname)


def with_hostname(domains: frozenset[str], hostname: str | None) -> frozenset[str]:
    """`domains` (a server's bounce domains) plus `hostname` when given and valid."""
    domains = set(domains)
    if hostname:
        try:
            domains.add(check_bounce_domain(hostname))
        except VerpError as exc:
            log.warning("inbound: %s is not a usable bounce domain: %s", quoted(hostname), exc)
    return frozenset(domains)


class InboundAddresses:
    """The recipients one snapshot's bounce domains and the FBL addresses make."""

    def __init__(self, domains: Iterable[str], fbl_addresses: Iterable[str], codec: VerpCodec) -> None:
        self.domains = frozenset(domains)
        self.fbl_addresses = frozenset(a.lower() for a in fbl_addresses) | frozenset(
            f"{local}@{domain}" for local in ROLE_LOCAL_PARTS for domain in self.domains
        )
        self.codec = codec

    def check(self, address: str) -> InboundRecipient:
        """The recipient `address` is, if this listener takes it; NotAccepted otherwise."""
        lowered = address.lower()
        if lowered in self.fbl_addresses:
            return InboundRecipient(address, FEEDBACK)
        local, at, domain = lowered.rpartition("@")
        if not at or domain.rstrip(".") not in self.domains or not local.startswith(VERP_PREFIX):
            raise NotAccepted(f"<{quoted(address)}> is not a bounce or feedback address of this server")
        try:
            token = self.codec.decode(address, self.domains)
        except VerpError as exc:
            raise NotAccepted(f"<{quoted(address)}> {exc.reason.value}") from None
        return InboundRecipient(address, BOUNCE, token)
