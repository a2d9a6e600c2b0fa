"""The suppression list's parts in process: how an address becomes its key, the entry
format both planes share, which bounces suppress, the stats batcher's HSETNX and
pool-only count, and the Bridge's RCPT lookup, all against the real Redis."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis
from hypothesis import example, given
from hypothesis import strategies as st
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from control.contract import rediskeys
from control.contract.snapshot import BridgeRoute
from control.contract.suppression import (
    AddressError,
    SuppressionEntry,
    SuppressionEntryError,
    address_failure,
    enhanced_status,
    normalize_address,
)
from dataplane.smtp_reply import STAGE_DATA, STAGE_MAIL, STAGE_RCPT, Reply
from dataplane.stats_batcher import StatsBatcher
from dataplane.stats_script import _APPLY_BATCH
from dataplane.suppression import (
    REPLY_SUPPRESSION_UNAVAILABLE,
    SuppressionLookup,
    SuppressionUnavailable,
    bounce_suppresses,
)
from tests.support import free_port

SERVER = 1

# --- addresses -----------------------------------------------------------------------


@pytest.mark.parametrize("given_address, key", [
    ("Bob@Example.COM", "bob@example.com"),
    ("  <bob@example.com>  ", "bob@example.com"),
    ("bob@example.com.", "bob@example.com"),
    ("first.last+tag@sub.example.org", "first.last+tag@sub.example.org"),
    # The last '@' separates the domain (a quoted local part may hold one).
    ('"a@b"@example.net', '"a@b"@example.net'),
    # IDN: the U-label and the A-label are one key; the domain's case does not matter.
    ("info@Bücher.example", "info@xn--bcher-kva.example"),
    ("info@xn--bcher-kva.example", "info@xn--bcher-kva.example"),
    # SMTPUTF8 local parts are lower-cased too, after NFC.
    ("JOSÉ@example.com", "josé@example.com"),
    ("jose\u0301@example.com", "josé@example.com"),
])
def test_addresses_are_keyed_case_insensitively_and_idn_as_a_labels(given_address, key):
    assert normalize_address(given_address) == key


@pytest.mark.parametrize("bad, why", [
    ("", "not an email address"),
    ("no-at-sign", "not an email address"),
    ("@example.com", "not an email address"),
    ("bob@", "not an email address"),
    ("bob smith@example.com", "spaces"),
    ("bob@exa\r\nmple.com", "spaces"),
    ("x" * 65 + "@example.com", "longer than 64"),
    ("bob@" + "a" * 256, "longer than 255"),
])
def test_what_is_not_an_address_is_refused_with_a_reason(bad, why):
    with pytest.raises(AddressError, match=why) as info:
        normalize_address(bad)
    assert len(str(info.value)) < 200  # quotes a short prefix at most


@given(st.emails() | st.text(max_size=80))
@example("Ünïcode@BÜCHER.Example")
def test_normalising_twice_changes_nothing(text):
    try:
        key = normalize_address(text)
    except AddressError:
        return
    assert normalize_address(key) == key and key == key.strip()


# --- entries ---------------------------------------------------------------------------


def test_entries_round_trip_and_decode_leniently():
    entry = SuppressionEntry(reason="bounce", at_ms=1_795_000_000_000, message_id="01ab", source="delivery",
                             detail="550 5.1.1 no such user")
    assert SuppressionEntry.decode(entry.encode()) == entry
    assert json.loads(entry.encode()) == {"reason": "bounce", "at_ms": 1_795_000_000_000, "message_id": "01ab",
                                          "source": "delivery", "detail": "550 5.1.1 no such user"}
    assert entry.since == "2026-11-18"
    assert SuppressionEntry.decode(b'{"reason":"manual","at_ms":"7"}') == SuppressionEntry("manual", 7)
    assert SuppressionEntry("manual", 0).since == "an unknown date"
    assert len(json.loads(SuppressionEntry("bounce", 1, detail="x" * 5000).encode())["detail"]) == 300
    for raw in (b"not json", b"[1, 2]", b'{"at_ms": "soon"}', b"\xff"):
        with pytest.raises(SuppressionEntryError, match="not a suppression entry"):
            SuppressionEntry.decode(raw)


# --- which bounces suppress --------------------------------------------------------------


@pytest.mark.parametrize("status, failure", [
    ("5.1.1", True), ("5.1.10", True), ("5.2.1", True), ("5.01.001 padded", True), ("5.1.2", True),
    ("5.2.2", False), ("5.7.1", False), ("5.1.7", False), ("5.1.8", False), ("4.1.1", False),
    ("", False), (None, False), ("user unknown", False),
])
def test_address_failures_are_the_rfc_3463_address_statuses(status, failure):
    assert address_failure(status) is failure


def test_enhanced_status_is_read_from_the_start_of_a_text():
    assert enhanced_status("5.1.1 <bob@example.net>: no such user") == "5.1.1"
    assert enhanced_status("no such user 5.1.1") is None


@pytest.mark.parametrize("reply, stage, suppresses", [
    # The destination's reply to RCPT, saying the address is bad.
    (Reply(550, "5.1.1 <bob@example.net>: Recipient address rejected: User unknown"), STAGE_RCPT, True),
    (Reply(553, "5.1.3 bad address syntax"), STAGE_RCPT, True),
    (Reply(550, "5.2.1 mailbox disabled"), STAGE_RCPT, True),
    (Reply(551, "User not local; please try <bob@elsewhere>"), STAGE_RCPT, True),  # no enhanced status
    (Reply(550, "Requested action not taken: mailbox unavailable"), STAGE_RCPT, True),
    # Permanent, but not about the address: policy, reputation, a full mailbox.
    (Reply(550, "5.7.1 Service unavailable; client host blocked using zen.spamhaus.org"), STAGE_RCPT, False),
    (Reply(552, "5.2.2 mailbox full"), STAGE_RCPT, False),
    (Reply(554, "transaction failed"), STAGE_RCPT, False),
    (Reply(550, "4.2.2 mailbox full"), STAGE_RCPT, False),  # a status of another class still decides
    # A refusal of MAIL or of the message speaks for the whole transaction.
    (Reply(550, "5.1.1 no such user"), STAGE_MAIL, False),
    (Reply(550, "5.1.1 no such user"), STAGE_DATA, False),
    (Reply(554, "5.7.1 message rejected as spam"), STAGE_DATA, False),
    # Deferrals, and replies the engine made up (no stage): never.
    (Reply(450, "4.1.1 try again"), STAGE_RCPT, False),
    (Reply(451, "4.3.0 later"), STAGE_RCPT, False),
    (Reply(550, "5.4.7 delivery time expired after 3d (6 attempt(s)); last reply: 450 4.2.0 busy"), "", False),
    (Reply(550, "5.1.2 domain example.invalid does not exist (DNS NXDOMAIN)"), "", False),
    (Reply(552, "5.3.4 message of 900 bytes exceeds the 100-byte limit of mx"), "", False),
])
def test_only_a_destinations_address_failure_at_rcpt_suppresses(reply, stage, suppresses):
    assert bounce_suppresses(reply, stage) is suppresses


# --- the stats batcher -------------------------------------------------------------------


async def test_suppressions_flush_with_the_counts_and_the_first_entry_wins(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    try:
        batcher = StatsBatcher(client, server_id=SERVER)
        first = SuppressionEntry("bounce", 1_000, message_id="m1", source="delivery").encode()
        batcher.suppress(3, "bob@example.net", first)
        batcher.suppress(3, "bob@example.net", SuppressionEntry("bounce", 2_000, message_id="m2").encode())
        batcher.count("suppressed", 7, "")
        assert batcher.pending_suppressions == 2
        assert await batcher.flush() is True
        key = rediskeys.suppression_key(3)
        assert await client.hgetall(key) == {b"bob@example.net": first.encode()}
        assert batcher.pending_suppressions == 0

        # A count without an address is the pool's alone: no IP hash is written.
        assert await client.hget(rediskeys.pool_stats_key(SERVER, 7), "suppressed") == b"1"
        assert await client.keys("*:ip:*") == []

        # A segment whose reply was lost is applied again: the entry is not replaced.
        batcher.suppress(3, "ann@example.net", first)
        batcher.journal.seal()
        again = batcher.journal.oldest()
        kept = again.path.read_bytes()
        assert await batcher.flush() is True
        await client.hset(key, "ann@example.net", "removed and re-added by hand")
        again.path.write_bytes(kept)
        await batcher.apply_segment(again)
        assert await client.hget(key, "ann@example.net") == b"removed and re-added by hand"
    finally:
        await client.aclose()


@pytest.fixture
async def unreachable_redis():
    """A client of a Redis that is not there (a free port), failing at once."""
    client = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5,
                            retry=Retry(NoBackoff(), 0))
    yield client
    await client.aclose()


async def test_suppressions_wait_for_redis_on_disk_and_every_one_arrives(redis_url, unreachable_redis):
    batcher = StatsBatcher(unreachable_redis, server_id=SERVER, max_batch_events=10)
    for n in range(40):
        batcher.suppress(3, f"r{n}@example.net", SuppressionEntry("bounce", n).encode())
    assert batcher.pending_suppressions == 40 and batcher.journal.sealed == 4
    assert await batcher.flush() is False

    up = aioredis.Redis.from_url(redis_url)
    try:
        batcher._script = up.register_script(_APPLY_BATCH)  # Redis is back
        while not await batcher.flush():
            pass
        kept = sorted(int(f.decode()[1:].partition("@")[0]) for f in await up.hkeys(rediskeys.suppression_key(3)))
        assert kept == list(range(40))
    finally:
        await batcher.close()
        await up.aclose()


# --- the lookup at RCPT ----------------------------------------------------------------


def _bridge(user_id: int = 3, smtp_id: int = 7) -> BridgeRoute:
    return BridgeRoute(bridge_id=1, user_id=user_id, name="b", username="br-1", secret_hash="x", smtp_id=smtp_id,
                       feed_type="", trusted_networks=())


async def test_a_listed_address_is_refused_with_why_and_since_when_and_counted(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    try:
        stats = StatsBatcher(client, server_id=SERVER)
        lookup = SuppressionLookup(client, stats)
        await client.hset(rediskeys.suppression_key(3), "bob@xn--bcher-kva.example",
                          SuppressionEntry("complaint", 1_795_000_000_000, detail="x" * 300).encode())
        refusal = await lookup.rcpt_refusal(_bridge(), "BOB@bücher.example")
        assert refusal == ("550 5.7.1 <BOB@b?cher.example>: recipient is on this account's suppression list "
                           "(complaint since 2026-11-18; `poolmta suppression remove` lifts it)")
        assert await lookup.rcpt_refusal(_bridge(), "ann@bücher.example") is None
        assert await lookup.rcpt_refusal(_bridge(user_id=4), "bob@xn--bcher-kva.example") is None  # another account
        assert await lookup.rcpt_refusal(_bridge(), "postmaster") is None  # no domain: never listed
        longest = "l" * 64 + "@" + ("d" * 62 + ".") * 3 + "example"
        await client.hset(rediskeys.suppression_key(3), longest, SuppressionEntry("manual", 1).encode())
        long_refusal = await lookup.rcpt_refusal(_bridge(), longest)
        assert long_refusal.startswith("550 5.7.1 <" + "l" * 64 + "@ddd")
        assert len(long_refusal) < 510  # a reply line is at most 512 octets with its CRLF (RFC 5321 4.5.3.1.5)

        # A damaged entry still refuses: never send to an address someone listed.
        await client.hset(rediskeys.suppression_key(3), "eve@example.net", b"\x00garbage")
        assert "(unknown since an unknown date" in await lookup.rcpt_refusal(_bridge(), "eve@example.net")
        assert await stats.flush() is True
        assert await client.hget(rediskeys.pool_stats_key(SERVER, 7), "suppressed") == b"3"
    finally:
        await client.aclose()


async def test_redis_down_at_rcpt_is_a_temporary_refusal(unreachable_redis):
    lookup = SuppressionLookup(unreachable_redis, StatsBatcher(unreachable_redis, server_id=SERVER))
    with pytest.raises(SuppressionUnavailable):
        await lookup.find(3, "bob@example.net")
    assert await lookup.rcpt_refusal(_bridge(), "bob@example.net") == REPLY_SUPPRESSION_UNAVAILABLE
    assert REPLY_SUPPRESSION_UNAVAILABLE.startswith("451 4.3.0 ")
