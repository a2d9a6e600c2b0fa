"""The delivery event: what the data plane says about one attempt to deliver one
recipient of a message, and what the control plane shows back (`message status`).

The data plane appends each event, encoded here, to its server's event log
(`control.contract.event_log`); both planes read it back with `DeliveryEvent.decode`.

Two wire formats, one codec:

* written now (issue 14, "Redis memory bounded by configuration"): a msgpack array
  of the fields in their order below (`encode`), the known outcomes as small
  integers (`_OUTCOME_CODES`), the trailing fields left out while they hold their
  defaults, the reply cut to its first REPLY_CHARS characters (a remote server
  chooses its length: up to 100 lines). About 150 bytes for a typical event,
  against about 330 as JSON, and about 1 KB at most (the longest addresses SMTP
  lets through): the log keeps `--events-max` of them, so this is most of Redis's
  memory at volume.
* read still: the compact JSON object with the field names below, which events
  written before (the stream's older entries, the per-message lists of before
  the event log) hold until they expire.

A msgpack array starts with a byte 0x90-0x9f (or 0xdc); a JSON object with "{": the
first byte says which. Decoding is lenient where it can be (a missing field takes
its default, numbers written as strings are read, an unknown outcome is kept as it
came) and refuses anything else with `DeliveryEventError`.

Stdlib and msgpack only (like `snapshot`): both planes import this module, and the
data plane may not import anything else of `control`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import astuple, dataclass, fields

import msgpack

from .json_records import load_object, quoted

__all__ = [
    "BOUNCED", "COMPLAINED", "DEFERRED", "DELIVERED", "OUTCOMES", "REPLY_CHARS", "REPORT_SOURCES", "DeliveryEvent",
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


# How much of the deciding reply an event keeps: the code, the enhanced status and
# the first line or two, what a person needs to see why (the data plane's delivery
# log has the whole reply).
REPLY_CHARS = 200

# The outcomes an encoded event names by number (position = code); any other
# outcome is written as its text. Append only: events in Redis carry these codes.
_OUTCOME_CODES = (DELIVERED, BOUNCED, DEFERRED, COMPLAINED)


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

    def encode(self) -> bytes:
        """The event as stored in the event log: a msgpack array of the fields in
        order, a known outcome as its code, the reply cut to REPLY_CHARS, trailing
        fields at their defaults left out (`decode` reads it back equal, but for a
        longer reply)."""
        values = list(astuple(self))
        values[_REPLY_AT] = self.reply[:REPLY_CHARS]
        if self.outcome in _OUTCOME_CODES:
            values[_OUTCOME_AT] = _OUTCOME_CODES.index(self.outcome)
        while len(values) > _REQUIRED and values[-1] == _DEFAULTS[len(values) - 1]:
            values.pop()
        return msgpack.packb(values, use_bin_type=True)

    @classmethod
    def decode(cls, raw: bytes | str) -> DeliveryEvent:
        """The event in `raw`: the msgpack array `encode` writes, or the JSON object
        events were written as before. A missing field takes its default (0, "",
        False, or -1 for `rcpt_index`); DeliveryEventError when `raw` is neither or a
        field cannot be read as its type."""
        if isinstance(raw, (bytes, bytearray)) and raw[:1] and (0x90 <= raw[0] <= 0x9F or raw[0] == 0xDC):
            get = _unpack_array(raw).get
        else:
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


_NAMES = tuple(f.name for f in fields(DeliveryEvent))
_DEFAULTS = tuple(f.default for f in fields(DeliveryEvent))  # MISSING (equal to nothing) for the required
_OUTCOME_AT, _REPLY_AT = _NAMES.index("outcome"), _NAMES.index("reply")
_REQUIRED = _NAMES.index("rcpt_index")  # the fields with no default are always written


def _unpack_array(raw: bytes | bytearray) -> dict:
    """The fields of an encoded event by name (only those it has); DeliveryEventError
    when `raw` is not one msgpack array of at most the known fields."""
    try:
        values = msgpack.unpackb(raw, raw=False, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # ExtraData is a ValueError
        raise DeliveryEventError(f"not a delivery event (not msgpack: {exc}): {quoted(raw)}") from exc
    if not isinstance(values, list) or len(values) > len(_NAMES):
        raise DeliveryEventError(f"not a delivery event (not an array of its fields): {quoted(raw)}")
    named = dict(zip(_NAMES, values))
    outcome = named.get("outcome")
    if isinstance(outcome, int) and not isinstance(outcome, bool) and 0 <= outcome < len(_OUTCOME_CODES):
        named["outcome"] = _OUTCOME_CODES[outcome]
    return named


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
