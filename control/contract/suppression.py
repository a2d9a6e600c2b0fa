"""The per-account suppression list: how an address is written as its key, what an
entry holds, and which permanent failures say the address itself is bad.

Both planes use this module: the data plane adds an entry when a delivery
bounces for good (and refuses RCPT to a listed address), the inbound listener
adds one for an asynchronous bounce or a complaint, and the control plane lists,
shows, adds and removes entries. They all write the Redis hash
`rediskeys.suppression_key(user_id)`: field `normalize_address(address)`, value
`SuppressionEntry(...).encode()`. Adding is HSETNX, so the first entry for an
address wins and a retried write adds nothing.

Addresses (`normalize_address`):

* Unicode is NFC-normalised first, so composed and decomposed spellings of one
  address are one key.
* The local part is lower-cased. RFC 5321 section 2.4 lets a server treat it
  case-sensitively, but the mailbox providers do not, and a list that a sender
  could get around by writing `Bob@` for `bob@` suppresses nothing.
* The domain is lower-cased, a trailing dot dropped, and each label that is not
  ASCII written as its IDNA A-label (`xn--` + Punycode, RFC 3492 / RFC 5891
  section 4.4), so `bücher.example` and `xn--bcher-kva.example` are one key.
  Labels are not otherwise checked against IDNA2008's tables (stdlib only):
  the key must be stable, not the domain valid.

Stdlib only: the data plane may import nothing of `control` but its contract.
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
from dataclasses import dataclass

from .delivery_event import REPORT_SOURCES
from .json_records import load_object, quoted

__all__ = [
    "ADDRESS_FAILURE_STATUSES", "MAX_DETAIL", "REASONS", "REASON_BOUNCE", "REASON_COMPLAINT", "REASON_MANUAL",
    "SOURCES", "SOURCE_API", "SOURCE_DELIVERY", "AddressError", "SuppressionEntry",
    "SuppressionEntryError", "address_failure", "enhanced_status", "normalize_address",
]

# Why an address is on the list.
REASON_BOUNCE = "bounce"  # a permanent failure that says the address is bad
REASON_COMPLAINT = "complaint"  # the recipient reported the mail as spam (RFC 5965 ARF)
REASON_MANUAL = "manual"  # the account added it (gRPC AddSuppression, `poolmta suppression add`)
REASONS = (REASON_BOUNCE, REASON_COMPLAINT, REASON_MANUAL)

# What added it: the destination's reply to RCPT during delivery, a report that
# reached the inbound listener (by its kind: an RFC 3464 DSN, an RFC 5965 ARF
# complaint, a nonstandard bounce; the delivery event's REPORT_SOURCES), or the
# account through the API or the CLI.
SOURCE_DELIVERY = "delivery"
SOURCE_API = "api"
SOURCES = (SOURCE_DELIVERY, *REPORT_SOURCES, SOURCE_API)

# An entry's `detail` (the reply that bounced, or the account's note) is cut to this.
MAX_DETAIL = 300

# RFC 5321 section 4.5.3.1: a local part is at most 64 octets, a domain 255.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255

# RFC 3463 status codes that say the recipient's address is bad, not the message,
# the sender or the sending IP: bad destination mailbox (5.1.1), bad destination
# system (5.1.2), bad mailbox syntax (5.1.3), mailbox moved (5.1.6), null MX
# (5.1.10, RFC 7505), mailbox disabled (5.2.1). Left out on purpose: 5.1.7 and
# 5.1.8 (the sender's address), 5.2.2 (mailbox full: it empties), 5.7.x (policy
# and reputation: a block of the IP or the content says nothing of the address).
ADDRESS_FAILURE_STATUSES = frozenset({"5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10", "5.2.1"})

_STATUS = re.compile(r"\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
# No white space, controls, or the characters that delimit an address in SMTP.
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f<>]")


class AddressError(ValueError):
    """Text that is not an email address the list can hold (the message says why)."""


class SuppressionEntryError(ValueError):
    """Bytes that are not a suppression entry (not JSON, not an object, a field of the wrong kind)."""


def normalize_address(address: str) -> str:
    """The list's key for `address` (see the module docstring): `local@domain` with the
    local part lower-cased and the domain as lower-case ASCII. Surrounding white space
    and angle brackets are dropped. AddressError when there is no local part or domain,
    a part is too long (RFC 5321 section 4.5.3.1), or it holds white space or controls."""
    text = unicodedata.normalize("NFC", str(address).strip())
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        raise AddressError(f"not an email address (expected local-part@domain): {quoted(address)}")
    if _FORBIDDEN.search(text):
        raise AddressError(f"an email address cannot hold spaces, controls, '<' or '>': {quoted(address)}")
    local = local.lower()
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise AddressError(f"the local part is longer than {MAX_LOCAL_PART} octets: {quoted(address)}")
    domain = _ascii_domain(domain.lower().removesuffix("."), address)
    if not domain or len(domain) > MAX_DOMAIN:
        raise AddressError(f"the domain is empty or longer than {MAX_DOMAIN} octets: {quoted(address)}")
    return f"{local}@{domain}"


def _ascii_domain(domain: str, address: str) -> str:
    if domain.isascii():
        return domain
    labels = []
    for label in domain.split("."):
        if label.isascii():
            labels.append(label)
            continue
        try:
            labels.append("xn--" + label.encode("punycode").decode("ascii"))
        except UnicodeError:
            raise AddressError(f"the domain cannot be written in ASCII (IDNA): {quoted(address)}") from None
    return ".".join(labels)


def enhanced_status(text: str | None) -> str | None:
    """The RFC 3463 status code `text` starts with ("5.1.1"; leading zeros dropped), as a
    DSN's Status field or an SMTP reply's text holds it; None when it starts with none."""
    match = _STATUS.match(text or "")
    if match is None:
        return None
    klass, subject, detail = match.groups()
    return f"{klass}.{int(subject)}.{int(detail)}"


def address_failure(status: str | None) -> bool:
    """True when `status` (see `enhanced_status`) says the address is bad for good: one
    of ADDRESS_FAILURE_STATUSES. Temporary (4.x.x) and other permanent codes are False."""
    return enhanced_status(status) in ADDRESS_FAILURE_STATUSES


@dataclass(frozen=True, slots=True)
class SuppressionEntry:
    """Why one address is suppressed, as the list's hash holds it."""

    reason: str  # REASON_BOUNCE | REASON_COMPLAINT | REASON_MANUAL (decoded entries keep what they say)
    at_ms: int  # when it was added, Unix time in milliseconds
    message_id: str = ""  # the message whose bounce or complaint added it ("" for manual entries)
    source: str = ""  # one of SOURCES: what added it
    detail: str = ""  # the reply that bounced, the report's summary, or the account's note

    @property
    def since(self) -> str:
        """The UTC date it was added, "2026-11-27" ("an unknown date" when not recorded)."""
        return time.strftime("%Y-%m-%d", time.gmtime(self.at_ms / 1000)) if self.at_ms > 0 else "an unknown date"

    def encode(self) -> str:
        """The entry as the compact JSON object stored in the hash (keys in field order);
        `detail` cut to MAX_DETAIL characters."""
        return json.dumps({
            "reason": self.reason, "at_ms": self.at_ms, "message_id": self.message_id,
            "source": self.source, "detail": self.detail[:MAX_DETAIL],
        }, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: bytes | str) -> SuppressionEntry:
        """The entry in `raw` (as `encode` writes it). A missing field takes its default
        ("" or 0); SuppressionEntryError when `raw` is not a JSON object or a field
        cannot be read as its type."""
        get = load_object(raw, "suppression entry", SuppressionEntryError).get
        try:
            return cls(
                reason=str(get("reason", "")), at_ms=int(get("at_ms", 0)),
                message_id=str(get("message_id", "")), source=str(get("source", "")),
                detail=str(get("detail", "")),
            )
        except (TypeError, ValueError, OverflowError) as exc:
            raise SuppressionEntryError(f"not a suppression entry ({exc}): {quoted(raw)}") from exc
