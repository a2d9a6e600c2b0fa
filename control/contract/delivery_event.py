"""The delivery event: what the data plane says about one attempt to deliver one
recipient of a message, and what the control plane shows back (`message status`).

The data plane appends each event, encoded here, to the message's Redis list
(`rediskeys.message_events_key`); the control plane decodes the list with
`DeliveryEvent.decode`. The wire format is a compact JSON object with the
field names below; it is what events already in Redis hold, so it stays as it
is. Decoding is lenient where it can be (a missing field takes its default,
numbers written as strings are read, an unknown outcome is kept as it came)
and refuses anything that is not such an object with `DeliveryEventError`.

Stdlib only: both planes import this module, and the data plane may not import
anything else of `control`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from .json_records import load_object, quoted

__all__ = [
    "BOUNCED", "COMPLAINED", "DEFERRED", "DELIVERED", "OUTCOMES", "REPORT_SOURCES", "DeliveryEvent",
    "DeliveryEventError", "decode_list",
]

# What an attempt did for a recipient (also the names of the stats counters).
DELIVERED = "delivered"  # the destination accepted it (2yz)
BOUNCED = "bounced"  # refused for good (5yz), or the queue lifetime ended: final
DEFERRED = "deferred"  # refused for now (4yz, no connection...): retried later
OUTCOMES = (DELIVERED, BOUNCED, DEFERRED)
# What a feedback report (RFC 5965) said about a recipient: not a delivery outcome,
# so not in OUTCOMES; always final, and only ever with a `source`.
COMPLAINED = "complained"

# Where an event's outcome came from when it was not the delivery attempt's own SMTP
# reply: an asynchronous report the inbound listener received, by the report's kind
# (an RFC 3464 DSN, an RFC 5965 ARF report, a nonstandard bounce).
REPORT_SOURCES = ("dsn", "arf", "nonstandard")


class DeliveryEventError(ValueError):
    """Bytes that are not a delivery event (not JSON, not an object, or a field of the wrong kind)."""


@dataclass(frozen=True, slots=True)
class DeliveryEvent:
    """One recipient's outcome of one delivery attempt."""

    ts_ms: int  # when the outcome was known, Unix time in milliseconds
    message_id: str
    user_id: int  # the account that sent the message
    bridge_id: int
    rcpt: str  # the recipient's address
    outcome: str  # DELIVERED | BOUNCED | DEFERRED (decoded events keep what they say)
    smtp_id: int  # the pool the message was routed through (its attribution)
    pool: str  # that pool's internal name
    ip: str  # the source IP the attempt used
    reply: str  # the reply that decided, as "code text"
    attempt: int  # 1 for the recipient's first attempt
    final: bool  # no further attempt follows (delivered or bounced)
    # The recipient's position in the message's envelope, as a VERP return path names
    # it; -1 in events written before it was recorded.
    rcpt_index: int = -1
    # "" for the outcome of a delivery attempt (its SMTP reply); one of REPORT_SOURCES
    # for what an asynchronous report said afterwards (a bounce, a complaint).
    source: str = ""
    # How the message was DKIM-signed at acceptance ("d=example.com s=pm2026111", or
    # "unsigned: no key for example.com"); "" when not recorded (older events, DSNs).
    dkim: str = ""

    def encode(self) -> str:
        """The event as the compact JSON object stored in Redis (keys in field order;
        `source` and `dkim` only when set, so events without them keep their bytes)."""
        fields = {
            "ts_ms": self.ts_ms, "message_id": self.message_id, "user_id": self.user_id,
            "bridge_id": self.bridge_id, "rcpt": self.rcpt, "outcome": self.outcome,
            "smtp_id": self.smtp_id, "pool": self.pool, "ip": self.ip, "reply": self.reply,
            "attempt": self.attempt, "final": self.final, "rcpt_index": self.rcpt_index,
        }
        if self.source:
            fields["source"] = self.source
        if self.dkim:
            fields["dkim"] = self.dkim
        return json.dumps(fields, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: bytes | str) -> DeliveryEvent:
        """The event in `raw` (as `encode` writes it). A missing field takes its
        default (0, "", False, or -1 for `rcpt_index`); DeliveryEventError when `raw` is not a JSON object
        or a field cannot be read as its type."""
        get = load_object(raw, "delivery event", DeliveryEventError).get
        try:
            return cls(
                ts_ms=int(get("ts_ms", 0)),
                message_id=str(get("message_id", "")),
                user_id=int(get("user_id", 0)),
                bridge_id=int(get("bridge_id", 0)),
                rcpt=str(get("rcpt", "")),
                outcome=str(get("outcome", "")),
                smtp_id=int(get("smtp_id", 0)),
                pool=str(get("pool", "")),
                ip=str(get("ip", "")),
                reply=str(get("reply", "")),
                attempt=int(get("attempt", 0)),
                final=bool(get("final", False)),
                rcpt_index=int(get("rcpt_index", -1)),
                source=str(get("source", "")),
                dkim=str(get("dkim", "")),
            )
        except (TypeError, ValueError, OverflowError) as exc:
            raise DeliveryEventError(f"not a delivery event ({exc}): {quoted(raw)}") from exc


def decode_list(items: Iterable[bytes | str]) -> list[DeliveryEvent]:
    """The events of a message's list (as LRANGE returns it), in order; an entry that
    is not a delivery event is left out rather than failing the whole list."""
    events = []
    for item in items:
        try:
            events.append(DeliveryEvent.decode(item))
        except DeliveryEventError:
            continue
    return events
