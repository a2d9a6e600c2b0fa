"""The data plane's side of the per-account suppression list: the lookup a Bridge
makes for each RCPT (and its replies), and which bounces during delivery put the
recipient on the list.

The list itself (its Redis hash, key format and entry JSON) is
`control.contract.suppression`; entries are added through the stats batcher's
flush (`StatsBatcher.suppress`, an HSETNX in the same round trip as the counts).

Lookup: one HGET per RCPT, on the worker's Redis connection pool. aiosmtpd
answers each RCPT before it reads the next command, so the RCPTs of one
transaction cannot be gathered into one HMGET; one round trip on the local
socket costs about what a PING does (`bench/test_bench_suppression.py`). The
entry (not just its presence) is read so the refusal can say why and since when.
When Redis does not answer within `LOOKUP_TIMEOUT`, the lookup fails with
`SuppressionUnavailable` and the Bridge answers 451: a suppressed address must
never be sent to, and an outage must never refuse an address for good.

A listed address gets `REPLY_SUPPRESSED` (550 5.7.1) at RCPT and counts as
`suppressed` for the Bridge's pool (the pool alone: no source IP is picked for
a recipient refused before DATA). Its text gives the address (printable ASCII,
at most `SUPPRESSED_ADDRESS_CHARS`), why it is listed (bounce, complaint,
manual), since when (UTC date) and how the account lifts it; never the entry's
detail, which can be long and is the account's to read through the API.

Which bounces suppress (`bounce_suppresses`): only the destination's own 5yz
reply to the recipient's RCPT (RFC 5321 section 3.3: a reply to MAIL or to the
message speaks for the whole transaction, so it is about the sender, the content
or the sending IP, not this address), and of those only

* one whose RFC 3463 enhanced status says the address is bad
  (`suppression.ADDRESS_FAILURE_STATUSES`: 5.1.1, 5.1.2, 5.1.3, 5.1.6, 5.1.10,
  5.2.1), or
* one without an enhanced status whose code is 550, 551 or 553, which RFC 5321
  section 4.2.3 defines as mailbox unavailable / user not local / mailbox name
  not allowed.

Never: 4yz replies (a deferral; nor the bounce when the queue lifetime ends,
whose reply is made up here), replies the engine makes up itself (no route,
NXDOMAIN, a message over the server's SIZE, a null MX found in DNS...), 5.7.x
policy refusals, 5.2.2 (mailbox full) or any other status.
"""

from __future__ import annotations

import asyncio
import logging

from redis import exceptions as redis_errors

from control.contract import rediskeys
from control.contract.runtime import reraise_if_cancelling
from control.contract.snapshot import BridgeRoute
from control.contract.suppression import (
    AddressError,
    SuppressionEntry,
    SuppressionEntryError,
    address_failure,
    enhanced_status,
    normalize_address,
)

from .smtp_reply import STAGE_RCPT, Reply

log = logging.getLogger("poolmta.dataplane.suppression")

# --- replies ---------------------------------------------------------------------
REPLY_SUPPRESSED = (
    "550 5.7.1 <{address}>: recipient is on this account's suppression list ({reason} since {since}; "
    "`poolmta suppression remove` lifts it)"
)
REPLY_SUPPRESSION_UNAVAILABLE = (
    "451 4.3.0 The account's suppression list cannot be checked right now; try again later"
)
SUPPRESSED_ADDRESS_CHARS = 100

# Longest wait for Redis at RCPT before the Bridge answers 451 (a client waits
# 5 minutes for a RCPT reply, RFC 5321 section 4.5.3.2.3; a stuck Redis must not
# hold sessions that long).
LOOKUP_TIMEOUT = 2.0

# RFC 5321 section 4.2.3: a mailbox that is unavailable, not local, or whose name is not allowed.
_MAILBOX_CODES = frozenset({550, 551, 553})


class SuppressionUnavailable(Exception):
    """The suppression list could not be read (Redis down or too slow); str() says why."""


class SuppressionLookup:
    """Answers "is this recipient on the account's suppression list?" for the Bridges."""

    def __init__(self, redis, stats, timeout: float = LOOKUP_TIMEOUT) -> None:
        self._redis = redis
        self._stats = stats  # a StatsBatcher: `suppressed` is counted there
        self.timeout = timeout

    async def rcpt_refusal(self, bridge: BridgeRoute, address: str) -> str | None:
        """The reply refusing RCPT to `address` through `bridge`: REPLY_SUPPRESSED (and
        `suppressed` counted for the Bridge's pool) when the address is on its account's
        list, REPLY_SUPPRESSION_UNAVAILABLE when the list cannot be read; None to accept."""
        try:
            entry = await self.find(bridge.user_id, address)
        except SuppressionUnavailable as exc:
            log.warning("RCPT through bridge %d deferred: the suppression list is unreadable (%s)",
                        bridge.bridge_id, exc)
            return REPLY_SUPPRESSION_UNAVAILABLE
        if entry is None:
            return None
        self._stats.count("suppressed", bridge.smtp_id, "")
        return REPLY_SUPPRESSED.format(address=_printable(address, SUPPRESSED_ADDRESS_CHARS),
                                       reason=_printable(entry.reason, 20), since=entry.since)

    async def find(self, user_id: int, address: str) -> SuppressionEntry | None:
        """The entry that suppresses `address` for account `user_id`, or None when it is
        not listed. An address the list cannot hold (`normalize_address` refuses it) is
        never listed. An entry that cannot be decoded still suppresses (reason unknown).
        SuppressionUnavailable when Redis does not answer within `timeout`."""
        try:
            field = normalize_address(address)
        except AddressError:
            return None
        try:
            async with asyncio.timeout(self.timeout):
                raw = await self._redis.hget(rediskeys.suppression_key(user_id), field)
        except (redis_errors.RedisError, OSError, TimeoutError) as exc:
            reraise_if_cancelling()
            raise SuppressionUnavailable(str(exc) or type(exc).__name__) from None
        if raw is None:
            return None
        try:
            return SuppressionEntry.decode(raw)
        except SuppressionEntryError as exc:
            log.warning("suppression list of account %d: unreadable entry for %s (%s); still refusing it",
                        user_id, field, exc)
            return SuppressionEntry(reason="unknown", at_ms=0)


def _printable(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, anything but printable ASCII as '?' (a reply
    line carries no CR, LF or bytes the client did not expect)."""
    return "".join(c if "!" <= c <= "~" else "?" for c in text[:limit]) or "?"


def bounce_suppresses(reply: Reply, stage: str) -> bool:
    """True when a destination's `reply` at `stage` (one of smtp_reply's STAGE_*; "" for
    a reply the engine made up) says the recipient's address is bad for good (see the
    module docstring)."""
    if stage != STAGE_RCPT or not 500 <= reply.code < 600:
        return False
    # Any status the text starts with decides, even one whose class contradicts the
    # code ("550 4.2.2 mailbox full" is not an address failure).
    status = enhanced_status(reply.text)
    if status is not None:
        return address_failure(status)
    return reply.code in _MAILBOX_CODES
