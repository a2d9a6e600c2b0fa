"""VERP return paths: envelope senders that map an asynchronous bounce back to its message.

Every outgoing message is sent with an envelope sender (MAIL FROM) on a bounce
domain that names the message and the recipient, under a keyed MAC, so a bounce
that arrives days later is attributed to its message, recipient (and through the
message index to pool, IP and account), and a forged one is refused.

Format (version 1)::

    b-<40 base32 characters>@<bounce domain>

    the 40 characters are the RFC 4648 base32 alphabet in lowercase, no padding,
    of 25 octets:

    octets  0..12   message id: its 26 hex digits as 13 octets
    octets 13..14   recipient index, big-endian, 0..65535 (MAX_RCPT_INDEX)
    octet  15       key id, 0..255: the keyring key that made the MAC
    octets 16..24   MAC: the first 9 octets (72 bits) of
                    HMAC-SHA256(key, "poolmta-verp-1" NUL octets 0..15 NUL domain)
                    with the domain in lowercase ASCII

    example: b-aaaaxmrqhiaqeaqiaemacaaaaeaqmpy7u3u5v3gfkq@mta1.example.net

- The local part is 42 characters, within the 64 octets of RFC 5321 4.5.3.1.1, and
  only atext (RFC 5322 3.2.3: letters, digits, "-"), so no MTA has to quote it.
  The bounce domain is at most 211 octets, so the address stays within the 254
  octets a path allows (RFC 5321 4.5.3.1.3, 256 with the angle brackets).
- Case-insensitive: base32 has one case, and decoding folds it, so an MTA that
  changes the case of the address (RFC 5321 2.4 lets it treat the local part so)
  changes nothing. The domain is compared in lowercase too (RFC 5321 2.4).
- The prefix "b-" says "a bounce address of format 1"; a future format takes
  another prefix, so the inbound listener can tell them apart before decoding.
- The MAC covers the domain, so an address is good only on the domain it was
  made for. 72 bits: a forger has to guess online, one SMTP transaction per try,
  and each try succeeds with probability 2^-72.
- Expiry: the message id starts with its acceptance time (12 hex digits of
  milliseconds, see `dataplane.spool`). An address is refused once the message is
  older than `max_age` (default 30 days: the queue lifetime is days, RFC 5321
  4.5.4.1 suggests 4-5, a remote MTA that accepted the message may keep retrying
  its own delivery as long before it bounces, and complaints trickle in for weeks;
  the stats window is 30 days, so a later bounce could not change the numbers
  anyone reads) and refused as not yet valid when its time is more than
  `clock_skew` ahead of ours (default 5 minutes).

Bounce domain: the MTA server's hostname by default (`bounce_domain`; an admin may
name another per server, `dataplane.return_path.bounce_domain_of`). Mail to a
name without MX records goes to its address records (RFC 5321 5.1, the implicit
MX), and the server's hostname already resolves to the server, so bounces reach
its inbound listener with no new DNS record. A pool may name its own bounce domain
(e.g. `bounces.acme.example`, with an MX to the server) so SPF for the envelope
sender is the account's and aligns with its From domain for DMARC.

Keys are in a `dataplane.verp_keyring.VerpKeyring`; the codec signs with its
current key and verifies with any key it still holds. It looks at the keyring
file every `reload_interval` (60 s), and at once when an address names a key it
does not know, so a rotation or retirement made elsewhere (another worker, the
CLI) reaches every process without a restart.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hmac
import logging
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from control.contract.bounce_domain import DOMAIN as _DOMAIN
from control.contract.bounce_domain import MAX_BOUNCE_DOMAIN_LENGTH, BounceDomainError
from control.contract.bounce_domain import (
    check_bounce_domain as contract_check_bounce_domain,
)
from dataplane.verp_keyring import KeyringError, VerpKey, VerpKeyring

log = logging.getLogger("poolmta.dataplane.verp")

PREFIX = "b-"
MAX_RCPT_INDEX = 0xFFFF
MESSAGE_ID_HEX = 26
MAC_BYTES = 9
TOKEN_CHARS = 40  # 25 octets in base32, a multiple of 5 octets: no padding
LOCAL_PART_LENGTH = len(PREFIX) + TOKEN_CHARS
MAX_PATH = 254  # RFC 5321 4.5.3.1.3: 256 octets including "<" and ">"
MAX_DOMAIN_LENGTH = MAX_PATH - LOCAL_PART_LENGTH - 1
assert MAX_DOMAIN_LENGTH == MAX_BOUNCE_DOMAIN_LENGTH, "the contract's bounce domain limit is VERP's"
MAX_INPUT = 1024  # decode looks at no more than this many characters
DEFAULT_MAX_AGE = 30 * 86400.0
DEFAULT_CLOCK_SKEW = 300.0
DEFAULT_RELOAD_INTERVAL = 60.0
_MAC_CONTEXT = b"poolmta-verp-1\x00"
_PAYLOAD_BYTES = 16  # message id 13, recipient index 2, key id 1

_MESSAGE_ID = re.compile(r"[0-9a-f]{26}")
_TOKEN = re.compile(r"[A-Za-z2-7]{40}")


class VerpReason(enum.Enum):
    """Why an address was refused (or, for INVALID, why an argument was)."""

    NOT_OURS = "not a bounce address of ours"
    MALFORMED = "malformed bounce address"
    UNKNOWN_KEY = "signed with a key the keyring no longer holds"
    BAD_MAC = "MAC does not match"
    EXPIRED = "older than the maximum age"
    NOT_YET_VALID = "dated in the future"
    INVALID = "invalid argument"


class VerpError(ValueError):
    """An address that does not decode, or an argument encode cannot use; `reason` says which."""

    def __init__(self, reason: VerpReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VerpToken:
    """What a verified bounce address says: the message, which of its recipients
    (index into the message's recipient list), and the key that signed it."""

    message_id: str
    rcpt_index: int
    key_id: int

    @property
    def accepted_ms(self) -> int:
        """When the message was accepted, in milliseconds since the epoch (from its id)."""
        return int(self.message_id[:12], 16)


def _quote(text: str) -> str:
    # Escaped to ASCII (no CR/LF), and short: refusals end up in logs and SMTP replies.
    quoted = ascii(text[:64])
    return quoted if len(quoted) <= 80 else quoted[:80] + "..."


def check_bounce_domain(domain: str) -> str:
    """`domain` as a bounce domain: lowercased, one trailing dot removed, RFC 5321
    4.1.2 syntax (LDH labels of 1-63 octets, ASCII: give IDNs as A-labels), at most
    MAX_DOMAIN_LENGTH (211) octets. VerpError(INVALID) otherwise. The rule is the
    contract's (`control.contract.bounce_domain`), which the control plane holds too."""
    try:
        return contract_check_bounce_domain(domain)
    except BounceDomainError as exc:
        raise VerpError(VerpReason.INVALID, str(exc)) from None


def bounce_domain(server_hostname: str, pool_domain: str | None = None) -> str:
    """The bounce domain for a pool's mail: the pool's own (`pool_domain`) when it has
    one, else the MTA server's hostname (see the module docstring for why).
    Validated and lowercased by `check_bounce_domain`."""
    return check_bounce_domain(pool_domain if pool_domain else server_hostname)


def _mac(secret: bytes, payload: bytes, domain: str) -> bytes:
    message = _MAC_CONTEXT + payload + b"\x00" + domain.encode("ascii")
    return hmac.digest(secret, message, "sha256")[:MAC_BYTES]


class VerpCodec:
    """Makes and checks bounce addresses with a keyring.

    max_age: seconds after acceptance an address is still honoured (> 0).
    clock_skew: seconds a message id's time may be ahead of this clock (>= 0).
    reload_interval: seconds between looks at the keyring file (>= 0), so a rotation
        or retirement made by another process takes effect here within that time;
        an address naming a key this process does not know looks at once.
    clock: seconds since the epoch (tests pass their own).
    """

    def __init__(self, keyring: VerpKeyring, max_age: float = DEFAULT_MAX_AGE,
                 clock_skew: float = DEFAULT_CLOCK_SKEW, reload_interval: float = DEFAULT_RELOAD_INTERVAL,
                 clock: Callable[[], float] = time.time) -> None:
        if not max_age > 0:
            raise VerpError(VerpReason.INVALID, f"max age must be positive, got {max_age}")
        if not clock_skew >= 0:
            raise VerpError(VerpReason.INVALID, f"clock skew must not be negative, got {clock_skew}")
        if not reload_interval >= 0:
            raise VerpError(VerpReason.INVALID, f"reload interval must not be negative, got {reload_interval}")
        self.keyring = keyring
        self.max_age = max_age
        self.clock_skew = clock_skew
        self.reload_interval = reload_interval
        self._clock = clock
        self._next_reload = time.monotonic() + reload_interval

    def _reload(self, due: bool = False) -> None:
        """Re-read the keyring if it changed, when the interval has passed or `due`."""
        now = time.monotonic()
        if not due and now < self._next_reload:
            return
        self._next_reload = now + self.reload_interval
        try:
            self.keyring.reload_if_changed()
        except KeyringError as exc:
            # Keep working with the keys held: a broken file must not stop mail or bounces.
            log.warning("VERP keyring not reloaded: %s", exc)

    def encode(self, message_id: str, rcpt_index: int, domain: str) -> str:
        """The bounce address for recipient `rcpt_index` (0-based, at most MAX_RCPT_INDEX)
        of message `message_id` (26 lowercase hex digits) on `domain`, signed with the
        keyring's current key. VerpError(INVALID) for an argument out of range."""
        if not isinstance(message_id, str) or not _MESSAGE_ID.fullmatch(message_id):
            raise VerpError(VerpReason.INVALID,
                            f"message id {_quote(str(message_id))} is not 26 lowercase hex digits")
        if type(rcpt_index) is not int or not 0 <= rcpt_index <= MAX_RCPT_INDEX:
            raise VerpError(VerpReason.INVALID,
                            f"recipient index must be 0..{MAX_RCPT_INDEX}, got {str(rcpt_index)[:20]}")
        domain = check_bounce_domain(domain)
        self._reload()
        key = self.keyring.current
        payload = bytes.fromhex(message_id) + rcpt_index.to_bytes(2, "big") + bytes((key.id,))
        token = base64.b32encode(payload + _mac(key.secret, payload, domain)).decode("ascii").lower()
        return f"{PREFIX}{token}@{domain}"

    def decode(self, address: str, domains: Collection[str] | None = None) -> VerpToken:
        """The token of a bounce address this server made, checked: VerpError otherwise,
        with the reason (NOT_OURS: no "b-" prefix, or a domain outside `domains` when
        given, lowercase; MALFORMED; UNKNOWN_KEY; BAD_MAC; EXPIRED; NOT_YET_VALID).
        Never raises anything else, whatever `address` is."""
        if not isinstance(address, str):
            raise VerpError(VerpReason.MALFORMED, f"an address is a string, not {type(address).__name__}")
        if len(address) > MAX_INPUT:
            raise VerpError(VerpReason.MALFORMED, f"{len(address)} characters; an address has at most {MAX_PATH}")
        local, at, domain = address.rpartition("@")
        if not at or not local[:len(PREFIX)].lower() == PREFIX:
            raise VerpError(VerpReason.NOT_OURS, _quote(address))
        domain = domain[:-1].lower() if domain.endswith(".") else domain.lower()
        if domains is not None and domain not in domains:
            raise VerpError(VerpReason.NOT_OURS, f"domain {_quote(domain)} is not a bounce domain here")
        token = local[len(PREFIX):]
        if not _TOKEN.fullmatch(token) or not _DOMAIN.fullmatch(domain):
            raise VerpError(VerpReason.MALFORMED, _quote(address))
        try:
            raw = base64.b32decode(token.upper())
        except binascii.Error:  # the regex admits only alphabet characters; kept for safety
            raise VerpError(VerpReason.MALFORMED, _quote(address)) from None
        payload, mac = raw[:_PAYLOAD_BYTES], raw[_PAYLOAD_BYTES:]
        key_id = payload[15]
        self._reload()
        key = self._key(key_id)
        # RFC 2104 section 5 truncation; compared in constant time, so a forger learns
        # nothing from how long the refusal took.
        if not hmac.compare_digest(mac, _mac(key.secret, payload, domain)):
            raise VerpError(VerpReason.BAD_MAC, _quote(address))
        found = VerpToken(message_id=payload[:13].hex(), rcpt_index=int.from_bytes(payload[13:15], "big"),
                          key_id=key_id)
        age = self._clock() - found.accepted_ms / 1000.0
        if age > self.max_age:
            raise VerpError(VerpReason.EXPIRED, f"message {found.message_id} is {age / 86400:.1f} days old")
        if -age > self.clock_skew:
            raise VerpError(VerpReason.NOT_YET_VALID, f"message {found.message_id} is {-age:.0f} s in the future")
        return found

    def _key(self, key_id: int) -> VerpKey:
        key = self.keyring.key(key_id)
        if key is None:
            # Another process may have rotated: look at the file once before refusing.
            self._reload(due=True)
            key = self.keyring.key(key_id)
        if key is None:
            raise VerpError(VerpReason.UNKNOWN_KEY, f"key id {key_id}")
        return key
