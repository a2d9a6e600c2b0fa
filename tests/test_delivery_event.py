"""The delivery event of `control.contract`: the exact wire format both planes share
(msgpack), the JSON of the events already in Redis still read, a lossless round
trip, tolerance of what older or partial events lack, and one clear refusal of
anything else."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.contract import delivery_event
from control.contract.delivery_event import (
    BOUNCED, COMPLAINED, DEFERRED, DELIVERED, OUTCOMES, REPLY_CHARS, REPORT_SOURCES, DeliveryEvent,
    DeliveryEventError,
)
from dataplane import smtp_reply

EVENT = DeliveryEvent(
    ts_ms=1_700_000_000_123, message_id="01HZX3", user_id=3, bridge_id=9, rcpt="r@example.net",
    outcome=DEFERRED, smtp_id=7, pool="promo-3-1-pool-7", ip="192.0.2.1",
    reply="451 4.2.1 mailbox busy", attempt=2, final=False, rcpt_index=4,
)

# What the event log holds now: a msgpack array of the fields in order, the outcome
# as its code (2: deferred), the unset `source` and `dkim` left out.
PACKED = (b"\x9d\xcf\x00\x00\x01\x8b\xcf\xe5\x68\x7b\xa601HZX3\x03\x09\xadr@example.net\x02\x07"
          b"\xb0promo-3-1-pool-7\xa9192.0.2.1\xb6451 4.2.1 mailbox busy\x02\xc2\x04")

# What events were written as before issue 14 (and still are in Redis until they expire).
WIRE = ('{"ts_ms":1700000000123,"message_id":"01HZX3","user_id":3,"bridge_id":9,"rcpt":"r@example.net",'
        '"outcome":"deferred","smtp_id":7,"pool":"promo-3-1-pool-7","ip":"192.0.2.1",'
        '"reply":"451 4.2.1 mailbox busy","attempt":2,"final":false,"rcpt_index":4}')

# The bytes the data plane wrote before events carried the recipient's index: they
# must still decode, with the index unknown.
WIRE_BEFORE_RCPT_INDEX = WIRE.replace(',"rcpt_index":4', "")


def test_encode_writes_the_compact_wire_format():
    assert EVENT.encode() == PACKED
    assert len(PACKED) < len(WIRE) / 2  # what keeps the event log's Redis memory small


def test_decode_reads_both_wire_formats_from_bytes_and_the_json_from_text():
    assert DeliveryEvent.decode(PACKED) == EVENT
    assert DeliveryEvent.decode(bytearray(PACKED)) == EVENT
    assert DeliveryEvent.decode(WIRE) == EVENT
    assert DeliveryEvent.decode(WIRE.encode()) == EVENT


def test_every_outcome_and_the_optional_fields_round_trip_in_few_bytes():
    for outcome in (*OUTCOMES, COMPLAINED, "quarantined"):
        event = dataclasses.replace(EVENT, outcome=outcome, source="dsn", dkim="d=example.com s=pm2026111")
        assert DeliveryEvent.decode(event.encode()) == event
    assert DeliveryEvent.decode(dataclasses.replace(EVENT, rcpt_index=-1).encode()).rcpt_index == -1


def test_a_reply_of_any_length_is_kept_to_its_first_reply_chars():
    long = dataclasses.replace(EVENT, reply="421 4.7.0 " + "try again later " * 400)  # a remote server's choice
    packed = long.encode()
    assert DeliveryEvent.decode(packed) == dataclasses.replace(long, reply=long.reply[:REPLY_CHARS])
    assert len(packed) < len(PACKED) + REPLY_CHARS


def test_events_written_before_the_recipient_index_still_decode():
    assert DeliveryEvent.decode(WIRE_BEFORE_RCPT_INDEX) == dataclasses.replace(EVENT, rcpt_index=-1)


ids = st.integers(min_value=0, max_value=2**63 - 1)  # SQLite's rowids
events = st.builds(
    DeliveryEvent,
    ts_ms=st.integers(min_value=0, max_value=2**53), message_id=st.text(), user_id=ids,
    bridge_id=ids, rcpt=st.text(), outcome=st.sampled_from(OUTCOMES),
    smtp_id=ids, pool=st.text(), ip=st.text(), reply=st.text(max_size=REPLY_CHARS),
    attempt=st.integers(min_value=0, max_value=1000), final=st.booleans(),
    rcpt_index=st.integers(min_value=-1, max_value=65535), source=st.sampled_from(("", *REPORT_SOURCES)),
    dkim=st.text(),
)


@given(events)
def test_round_trip_is_lossless(event):
    assert DeliveryEvent.decode(event.encode()) == event
    as_json = json.dumps({**dataclasses.asdict(event)}, separators=(",", ":"))  # as written before
    assert DeliveryEvent.decode(as_json) == DeliveryEvent.decode(as_json.encode("utf-8")) == event


def test_missing_fields_take_their_defaults():
    assert DeliveryEvent.decode(b"{}") == DeliveryEvent(
        ts_ms=0, message_id="", user_id=0, bridge_id=0, rcpt="", outcome="", smtp_id=0, pool="", ip="",
        reply="", attempt=0, final=False)
    partial = DeliveryEvent.decode(json.dumps({"rcpt": "a@x.test", "outcome": "delivered", "final": True}))
    assert (partial.rcpt, partial.outcome, partial.final, partial.attempt) == ("a@x.test", DELIVERED, True, 0)


def test_lenient_fields_unknown_outcomes_and_extra_keys_are_read():
    event = DeliveryEvent.decode(json.dumps({
        "ts_ms": "2000", "smtp_id": 2.0, "attempt": "3", "outcome": "quarantined", "later_field": [1]}))
    assert (event.ts_ms, event.smtp_id, event.attempt, event.outcome) == (2000, 2, 3, "quarantined")


@pytest.mark.parametrize("raw", [
    b"", b"not json", b"\xff\xfe", b"[1, 2]", b'"text"', b"null", b"42",
    b'{"ts_ms": "soon"}', b'{"attempt": [1]}', b'{"user_id": {}}', b'{"ts_ms": 1e400}',
    b"[" * 100_000,
    b"\x9f", b"\x9f" + b"\x00" * 15 + b"\x00", b"\x91\xa4soon", b"\x92\x91\x00\x00",
    b"\xdc\x00\x10" + b"\x00" * 16,  # more fields than an event has
])
def test_garbage_is_refused_with_one_exception_type(raw):
    with pytest.raises(DeliveryEventError, match="^not a delivery event"):
        DeliveryEvent.decode(raw)


def test_a_refusal_quotes_only_a_short_prefix_of_the_input():
    with pytest.raises(DeliveryEventError) as caught:
        DeliveryEvent.decode("x" * 10_000)
    assert len(str(caught.value)) < 200


def test_events_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        EVENT.outcome = BOUNCED  # type: ignore[misc]


def test_both_planes_use_one_definition_of_the_outcome_names():
    assert OUTCOMES == (DELIVERED, BOUNCED, DEFERRED) == ("delivered", "bounced", "deferred")
    assert (smtp_reply.DELIVERED, smtp_reply.BOUNCED, smtp_reply.DEFERRED) == OUTCOMES
    assert smtp_reply.OUTCOMES is delivery_event.OUTCOMES
