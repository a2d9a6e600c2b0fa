"""The inbound side's parts on their own, with a real Redis and real keyring files:
which recipients the listener takes, attribution (VERP, the returned headers, pool
and IP only), the one script that counts a report exactly once, the store of
unattributed reports, the message index, and the contract records they write."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import redis.asyncio as aioredis

from control.contract import event_log, rediskeys
from control.contract.delivery_event import BOUNCED, COMPLAINED, DEFERRED, DELIVERED, DeliveryEvent
from control.contract.unattributed import RAW_KEPT_BYTES, UnattributedError, UnattributedReport
from dataplane.inbound import Accounting, Attributor, Target, counter_keys
from dataplane.inbound.addresses import BOUNCE, FEEDBACK, InboundAddresses, NotAccepted, bounce_domains
from dataplane.inbound.attribution import COMPLAINT, _suppresses
from dataplane.message_headers import indexed_message_id
from dataplane.reports import parse_report
from dataplane.routing import Routing
from dataplane.stats_batcher import StatsBatcher
from dataplane.verp import VerpCodec
from dataplane.verp_keyring import VerpKeyring
from tests.dataplane_support import HOSTNAME, make_pool, make_snapshot
from tests.inbound_support import arf, dsn, qmail_bounce

DAY_MS = 86_400_000
IP = "127.0.0.2"


@pytest.fixture
def codec(tmp_path) -> VerpCodec:
    return VerpCodec(VerpKeyring.load_or_create(tmp_path / "verp.keys"))


@pytest.fixture
async def redis(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def _id(age_ms: int = 3_600_000, counter: int = 1) -> str:
    """A message id (dataplane.spool's form) accepted `age_ms` ago."""
    return f"{int(time.time() * 1000) - age_ms:012x}a1b2c3d4{counter:06x}"


def _event(message_id: str, rcpt: str, index: int, outcome: str = DELIVERED, *, ip: str = IP,
           final: bool = True, ts_ms: int | None = None) -> str:
    return DeliveryEvent(
        ts_ms=ts_ms or int(time.time() * 1000), message_id=message_id, user_id=3, bridge_id=1, rcpt=rcpt,
        outcome=outcome, smtp_id=7, pool="promo-3-1-pool-7", ip=ip, reply="250 ok", attempt=1, final=final,
        rcpt_index=index,
    ).encode()


SNAPSHOT = make_snapshot(1, 1, [make_pool(7, [(IP, 1), ("127.0.0.3", 1)])], [])
ROUTING = Routing(SNAPSHOT)
DOMAINS = frozenset({HOSTNAME})


# -- which recipients the listener takes -------------------------------------------------


def test_bounce_domains_are_the_servers_hostname_and_every_pools_own():
    pool = make_pool(7, [(IP, 1)])
    own = dataclasses.replace(pool, smtp_id=8, bounce_domain="Bounces.Acme.Example.")
    bad = dataclasses.replace(pool, smtp_id=9, bounce_domain="not a domain")
    snapshot = make_snapshot(1, 1, [pool, own, bad], [])
    assert bounce_domains(snapshot) == {HOSTNAME, "bounces.acme.example"}
    assert bounce_domains(snapshot, "mx1.example.org") == {HOSTNAME, "bounces.acme.example", "mx1.example.org"}


def test_the_servers_own_bounce_domain_is_taken_beside_its_hostname(codec):
    snapshot = dataclasses.replace(make_snapshot(1, 1, [make_pool(7, [(IP, 1)])], []),
                                   bounce_domain="Bounces.MTA1.Example")
    domains = bounce_domains(snapshot)
    assert domains == {HOSTNAME, "bounces.mta1.example"}
    addresses = InboundAddresses(domains, (), codec)
    taken = addresses.check(codec.encode(_id(), 1, "bounces.mta1.example"))
    assert (taken.kind, taken.token.rcpt_index) == (BOUNCE, 1)
    assert addresses.check("postmaster@bounces.mta1.example").kind == FEEDBACK


def test_only_verp_return_paths_and_feedback_addresses_are_taken(codec):
    addresses = InboundAddresses(DOMAINS, ["fbl-acme@feedback.example"], codec)
    good = codec.encode(_id(), 2, HOSTNAME)
    taken = addresses.check(good.upper())  # an MTA may change the case (RFC 5321 2.4)
    assert (taken.kind, taken.token.rcpt_index) == (BOUNCE, 2)
    for address in (f"fbl@{HOSTNAME}", f"Abuse@{HOSTNAME}", f"postmaster@{HOSTNAME}", "FBL-acme@feedback.example"):
        assert addresses.check(address).kind == FEEDBACK
    for address, why in (
        ("someone@example.com", "not a bounce or feedback address"),
        (f"info@{HOSTNAME}", "not a bounce or feedback address"),
        (good.replace(HOSTNAME, "elsewhere.example"), "not a bounce or feedback address"),
        (good[:10] + ("a" if good[10] != "a" else "b") + good[11:], "MAC does not match"),
        (codec.encode(_id(age_ms=31 * DAY_MS), 0, HOSTNAME), "older than the maximum age"),
        (f"b-x@{HOSTNAME}", "malformed"),
    ):
        with pytest.raises(NotAccepted) as refused:
            addresses.check(address)
        assert why in refused.value.why, refused.value.why


# -- attribution -------------------------------------------------------------------------


async def test_a_dsn_to_a_verp_return_path_names_the_recipient_and_how_it_is_counted(redis, redis_client, codec):
    message_id = _id()
    redis_client.rpush(rediskeys.message_events_key(message_id), _event(message_id, "a@example.net", 0),
                       _event(message_id, "b@example.net", 1, BOUNCED))
    addresses = InboundAddresses(DOMAINS, [], codec)
    attributor = Attributor(redis, codec)
    for index, rcpt, counted in ((0, "a@example.net", DELIVERED), (1, "b@example.net", BOUNCED)):
        recipient = addresses.check(codec.encode(message_id, index, HOSTNAME))
        found = await attributor.attribute(parse_report(dsn("forwarded@elsewhere.example")), [recipient],
                                           ROUTING, DOMAINS)
        (target,) = found.targets
        assert (target.via, target.rcpt, target.rcpt_index, target.counted, target.subject) == (
            "verp", rcpt, index, counted, f"bounce:{message_id}:{index}")
        assert (target.pool, target.ip, target.user_id, target.source) == ("promo-3-1-pool-7", IP, 3, "dsn")
        assert "5.1.1" in target.reply and "asynchronous DSN from mx.example.net" in target.reply


async def test_a_recent_message_whose_outcome_is_not_recorded_yet_is_retried(redis, redis_client, codec):
    attributor = Attributor(redis, codec)
    addresses = InboundAddresses(DOMAINS, [], codec)
    young, old = _id(age_ms=1000), _id(age_ms=DAY_MS, counter=2)
    redis_client.rpush(rediskeys.message_events_key(young), _event(young, "a@example.net", 0, DEFERRED, final=False))
    report = parse_report(dsn("a@example.net"))
    found = await attributor.attribute(report, [addresses.check(codec.encode(young, 0, HOSTNAME))], ROUTING, DOMAINS)
    assert found.retry and not found.targets
    found = await attributor.attribute(report, [addresses.check(codec.encode(young, 1, HOSTNAME))], ROUTING, DOMAINS)
    assert found.retry  # that recipient has no event yet
    found = await attributor.attribute(report, [addresses.check(codec.encode(old, 0, HOSTNAME))], ROUTING, DOMAINS)
    assert not found.retry and not found.targets
    assert f"message {old} has no delivery events" in found.reason


async def test_without_verp_our_received_line_or_the_message_index_names_the_message(redis, redis_client, codec):
    message_id, indexed = _id(), _id(counter=2)
    for mid in (message_id, indexed):
        redis_client.rpush(rediskeys.message_events_key(mid), _event(mid, "a@example.net", 0),
                           _event(mid, "b@example.net", 1, ip="127.0.0.3"))
    redis_client.set(rediskeys.message_index_key("m-42@acme.example"), indexed)
    attributor = Attributor(redis, codec)
    ours = f"Received: from app (unknown [10.0.0.9])\n\tby {HOSTNAME} (poolmta) with ESMTPA id {message_id}; now\n"
    found = await attributor.attribute(parse_report(dsn("B@example.net", returned=ours)), [], ROUTING, DOMAINS)
    assert [(t.via, t.message_id, t.rcpt, t.ip) for t in found.targets] == [
        ("received", message_id, "b@example.net", "127.0.0.3")]
    by_index = "Message-ID: <m-42@acme.example>\nx-virtual-mta: promo-3-1-pool-7\n"
    found = await attributor.attribute(parse_report(dsn("a@example.net", returned=by_index)), [], ROUTING, DOMAINS)
    assert [(t.via, t.message_id, t.rcpt) for t in found.targets] == [("message-id", indexed, "a@example.net")]
    # An x-virtual-mta naming another pool refutes the message; an unknown Message-ID names none.
    refuted = by_index.replace("pool-7", "pool-8")
    found = await attributor.attribute(parse_report(dsn("a@example.net", returned=refuted)), [], ROUTING, DOMAINS)
    assert not found.targets and "is not the pool of message" in found.reason
    # A Received line of ours naming a message without events (expired) does not stop the index.
    expired = f"Received: by {HOSTNAME} (poolmta) with ESMTPA id {_id(age_ms=9 * DAY_MS, counter=9)}; then\n"
    found = await attributor.attribute(parse_report(dsn("a@example.net", returned=expired + by_index)), [],
                                       ROUTING, DOMAINS)
    assert [(t.via, t.message_id) for t in found.targets] == [("message-id", indexed)]
    unknown = "Message-ID: <nope@acme.example>\n"
    found = await attributor.attribute(parse_report(dsn("a@example.net", returned=unknown)), [], ROUTING, DOMAINS)
    assert not found.targets and "is not in the message index" in found.reason


async def test_a_complaint_naming_no_recipient_counts_once_for_the_message(redis, redis_client, codec):
    message_id = _id()
    redis_client.rpush(rediskeys.message_events_key(message_id), _event(message_id, "a@example.net", 0),
                       _event(message_id, "b@example.net", 1))
    report = parse_report(arf(mail_from=codec.encode(message_id, 1, HOSTNAME)))
    (target,) = (await Attributor(redis, codec).attribute(report, [], ROUTING, DOMAINS)).targets
    assert (target.kind, target.via, target.rcpt, target.subject) == (COMPLAINT, "verp", "b@example.net",
                                                                     f"complaint:{message_id}:1")
    received = f"Received: by {HOSTNAME} (poolmta) with ESMTPA id {message_id}; now\n"
    report = parse_report(arf(returned=received + "Subject: hi\n\nbody"))
    (target,) = (await Attributor(redis, codec).attribute(report, [], ROUTING, DOMAINS)).targets
    assert (target.via, target.rcpt, target.subject, target.ip) == ("received", "", f"complaint:{message_id}:*", IP)


async def test_with_no_message_a_complaint_counts_for_the_pool_and_ip_a_bounce_is_kept(redis, codec):
    attributor = Attributor(redis, codec)
    returned = "Received: from out ([127.0.0.3]) by mx.example.org; now\nx-virtual-mta: PROMO-3-1-pool-7\n\nhi"
    (target,) = (await attributor.attribute(parse_report(arf(returned=returned)), [], ROUTING, DOMAINS)).targets
    assert (target.via, target.message_id, target.smtp_id, target.ip, target.user_id) == ("headers", "", 7,
                                                                                          "127.0.0.3", 3)
    only_ip = await attributor.attribute(parse_report(arf(source_ip="::ffff:127.0.0.2")), [], ROUTING, DOMAINS)
    assert [(t.smtp_id, t.ip) for t in only_ip.targets] == [(7, IP)]  # the IP's pool in the snapshot
    stranger = await attributor.attribute(parse_report(arf(source_ip="192.0.2.1")), [], ROUTING, DOMAINS)
    assert not stranger.targets and "no pool or IP of this server" in stranger.reason
    bounce = await attributor.attribute(parse_report(qmail_bounce("a@example.net", returned="Return-Path: <x@y>\n"
                                                                  + returned)), [], ROUTING, DOMAINS)
    assert not bounce.targets  # moving a recipient's count needs its message


async def test_reports_with_nothing_to_count_say_why(redis, codec):
    attributor = Attributor(redis, codec)
    delayed = await attributor.attribute(parse_report(dsn("a@example.net", status="4.2.2", action="delayed")), [],
                                         ROUTING, DOMAINS)
    relayed = await attributor.attribute(parse_report(dsn("a@example.net", status="2.0.0", action="relayed")), [],
                                         ROUTING, DOMAINS)
    assert delayed.nothing_to_count and relayed.nothing_to_count
    not_spam = await attributor.attribute(parse_report(arf(feedback_type="not-spam")), [], ROUTING, DOMAINS)
    garbage = await attributor.attribute(parse_report(b"\x00garbage" * 100), [], ROUTING, DOMAINS)
    assert "'not-spam' is not a complaint" in not_spam.reason and not not_spam.nothing_to_count
    assert garbage.reason.startswith("not a bounce or complaint") and not garbage.nothing_to_count


async def test_a_forged_return_path_in_a_feedback_report_is_not_attributed_by_verp(redis, redis_client, codec,
                                                                                   tmp_path):
    message_id = _id()
    redis_client.rpush(rediskeys.message_events_key(message_id), _event(message_id, "a@example.net", 0))
    forger = VerpCodec(VerpKeyring.load_or_create(tmp_path / "forger.keys"))
    report = parse_report(arf(mail_from=forger.encode(message_id, 0, HOSTNAME)))
    found = await Attributor(redis, codec).attribute(report, [], ROUTING, DOMAINS)
    assert not found.targets and "MAC does not match" in found.reason


# -- accounting --------------------------------------------------------------------------


def _target(kind: str = "bounce", counted: str = DELIVERED, *, message_id: str = "m1", at_ms: int = 0,
            ip: str = IP, rcpt: str = "A@example.net") -> Target:
    return Target(kind=kind, source="dsn" if kind == "bounce" else "arf", via="verp",
                  subject=f"{kind}:{message_id}:0", message_id=message_id, rcpt=rcpt, rcpt_index=0, user_id=3,
                  bridge_id=1, smtp_id=7, pool="promo-3-1-pool-7", ip=ip, counted=counted, at_ms=at_ms,
                  attempt=1, reply="5.1.1 user unknown (asynchronous DSN)")


SERVER = 1


def _counts(client, resolution: rediskeys.Resolution | None = None, at: float | None = None) -> dict:
    keys = {"pool": rediskeys.pool_stats_key(SERVER, 7, resolution, at),
            "ip": rediskeys.ip_stats_key(SERVER, IP, resolution, at),
            "pool+ip": rediskeys.pool_ip_stats_key(SERVER, 7, IP, resolution, at)}
    return {name: {k.decode(): int(v) for k, v in client.hgetall(key).items()} for name, key in keys.items()}


def test_counter_keys_are_where_the_stats_batcher_counts():
    at_ms, now_ms = 1_795_996_800_000 + 3_600_000, 1_795_996_800_000 + 7_200_000  # 2026-11-30 01:00 and 02:00Z
    assert counter_keys(SERVER, 7, IP, at_ms, now_ms) == rediskeys.count_targets(SERVER, 7, IP, at_ms / 1000,
                                                                                 now=now_ms / 1000)
    keys = [t.key for t in counter_keys(SERVER, 7, IP, at_ms, now_ms)]
    assert len(keys) == 12 and all("{stats:1}" in k for k in keys)
    # Without an IP only the pool's counters move.
    assert [t.key for t in counter_keys(SERVER, 7, "", at_ms, now_ms)] == keys[:4]
    # A delivery older than 48 hours has no minute bucket left to move.
    late = at_ms + 3 * 86_400_000
    assert len(counter_keys(SERVER, 7, IP, at_ms, late)) == 9


async def test_a_bounce_moves_delivered_to_bounced_in_the_delivery_buckets_once(redis, redis_client):
    accounting = Accounting(redis, server_id=SERVER, event_ttl=3600)
    now_ms = int(time.time() * 1000)
    delivered_at = now_ms - 2 * 3_600_000  # two hours ago: its buckets move, not the current ones
    buckets = [(None, None)] + [(r, delivered_at / 1000) for r in rediskeys.RESOLUTIONS]
    for resolution, at in buckets:
        for name, key in {"pool": rediskeys.pool_stats_key(SERVER, 7, resolution, at),
                          "ip": rediskeys.ip_stats_key(SERVER, IP, resolution, at),
                          "pool+ip": rediskeys.pool_ip_stats_key(SERVER, 7, IP, resolution, at)}.items():
            redis_client.hset(key, mapping={"sent": 2, "delivered": 2})
    assert await accounting.apply([_target(at_ms=delivered_at)], now_ms) == [True]
    assert await accounting.apply([_target(at_ms=delivered_at)], now_ms + 5) == [False]
    moved = {"sent": 2, "delivered": 1, "bounced": 1}
    for resolution, at in buckets:
        assert _counts(redis_client, resolution, at) == {"pool": moved, "ip": moved, "pool+ip": moved}, resolution
    assert _counts(redis_client, rediskeys.MINUTE, now_ms / 1000) == {"pool": {}, "ip": {}, "pool+ip": {}}
    day_key = rediskeys.pool_stats_key(SERVER, 7, rediskeys.DAY, delivered_at / 1000)
    assert 0 < redis_client.ttl(day_key) <= rediskeys.STATS_DAY_RETENTION_SECONDS
    (event,) = await event_log.message_events(redis, [SERVER], "m1")
    assert (event.outcome, event.source, event.final, event.rcpt, event.ts_ms) == (BOUNCED, "dsn", True,
                                                                                 "A@example.net", now_ms)
    entry = json.loads(redis_client.hget(rediskeys.suppression_key(3), "a@example.net"))
    assert entry == {"reason": "bounce", "at_ms": now_ms, "message_id": "m1", "source": "dsn",
                     "detail": "5.1.1 user unknown (asynchronous DSN)"}
    marker = rediskeys.report_marker_key(SERVER, "bounce:m1:0")
    assert 0 < redis_client.ttl(marker) <= rediskeys.REPORT_MARKER_TTL_SECONDS


def test_an_asynchronous_bounce_suppresses_by_the_delivery_sides_rule():
    assert _suppresses("5.1.1") and _suppresses("5.2.1") and _suppresses("")  # no status: a detector's permanent
    assert not _suppresses("5.7.1") and not _suppresses("5.2.2") and not _suppresses("5.0.0")


async def test_a_bounce_that_does_not_suppress_still_moves_its_counts(redis, redis_client):
    accounting = Accounting(redis, server_id=SERVER, event_ttl=3600)
    now_ms = int(time.time() * 1000)
    blocked = dataclasses.replace(_target(at_ms=now_ms), reply="5.7.1 blocked by policy (asynchronous DSN)",
                                  suppresses=False)
    assert await accounting.apply([blocked], now_ms) == [True]
    assert _counts(redis_client)["pool"] == {"delivered": -1, "bounced": 1}
    assert redis_client.hlen(rediskeys.suppression_key(3)) == 0


async def test_a_recipient_counted_bounced_or_not_final_moves_nothing(redis, redis_client):
    accounting = Accounting(redis, server_id=SERVER, event_ttl=3600)
    now_ms = int(time.time() * 1000)
    assert await accounting.apply([_target(counted=BOUNCED, message_id="m1"),
                                   _target(counted="", message_id="m2")], now_ms) == [True, True]
    assert _counts(redis_client) == {"pool": {}, "ip": {}, "pool+ip": {}}
    assert await event_log.message_events(redis, [SERVER], "m1") == []  # bounced already: nothing to show
    assert len(await event_log.message_events(redis, [SERVER], "m2")) == 1  # its bounce is still news
    assert redis_client.hlen(rediskeys.suppression_key(3)) == 1  # one address, suppressed once


async def test_a_complaint_counts_once_per_recipient_and_a_first_suppression_entry_stays(redis, redis_client):
    accounting = Accounting(redis, server_id=SERVER, event_ttl=3600)
    redis_client.hset(rediskeys.suppression_key(3), "a@example.net", '{"reason": "manual"}')
    now_ms = int(time.time() * 1000)
    assert await accounting.apply([_target("complaint", at_ms=now_ms)], now_ms) == [True]
    assert await accounting.apply([_target("complaint", at_ms=now_ms)], now_ms) == [False]
    assert _counts(redis_client)["ip"] == {"complaints": 1}
    assert _counts(redis_client, rediskeys.DAY, now_ms / 1000)["pool+ip"] == {"complaints": 1}
    assert _counts(redis_client, rediskeys.MINUTE, now_ms / 1000)["pool+ip"] == {"complaints": 1}
    (event,) = await event_log.message_events(redis, [SERVER], "m1")
    assert (event.outcome, event.source) == (COMPLAINED, "arf")
    assert redis_client.hget(rediskeys.suppression_key(3), "a@example.net") == b'{"reason": "manual"}'
    # Without an IP (a header-only complaint that named just the pool) only the pool counts.
    await accounting.apply([_target("complaint", message_id="", ip="", rcpt="")], now_ms)
    assert _counts(redis_client)["pool"] == {"complaints": 2}


async def test_the_suppression_is_applied_once_on_its_own_slot_and_a_retry_completes_it(redis, redis_client):
    accounting = Accounting(redis, server_id=SERVER, event_ttl=3600)
    now_ms = int(time.time() * 1000)
    # A crash after the counting script but before the suppression's: no 250 was
    # given, the sender retries, nothing is counted again and the suppression is made.
    redis_client.set(rediskeys.report_marker_key(SERVER, "complaint:m1:0"), "1")
    assert await accounting.apply([_target("complaint", at_ms=now_ms)], now_ms) == [False]
    assert _counts(redis_client)["pool"] == {}
    assert json.loads(redis_client.hget(rediskeys.suppression_key(3), "a@example.net"))["reason"] == "complaint"
    marker = rediskeys.suppression_marker_key(3, "complaint:m1:0")
    assert "{supp:3}" in marker and 0 < redis_client.ttl(marker) <= rediskeys.REPORT_MARKER_TTL_SECONDS
    # The operator lifts it; the same report arriving again does not put it back.
    redis_client.hdel(rediskeys.suppression_key(3), "a@example.net")
    assert await accounting.apply([_target("complaint", at_ms=now_ms)], now_ms) == [False]
    assert redis_client.hlen(rediskeys.suppression_key(3)) == 0


async def test_unattributed_reports_are_kept_newest_first_bounded_and_once(redis, redis_client):
    accounting = Accounting(redis, server_id=4, event_ttl=3600)
    big = b"x" * (RAW_KEPT_BYTES + 10)
    kept = [await accounting.keep_unattributed(raw, reason="why", kind="unknown", peer="192.0.2.1", mail_from="",
                                               rcpt_tos=["fbl@mta.example"], subject="s", now_ms=n)
            for n, raw in enumerate([big, b"second", big])]
    assert kept == [True, True, False]  # the same bytes again: a retransmission
    entries = [UnattributedReport.decode(e) for e in redis_client.lrange(rediskeys.unattributed_reports_key(4), 0, -1)]
    assert [(e.raw[:6], e.size, e.truncated, e.at_ms) for e in entries] == [(b"second", 6, False, 1),
                                                                             (b"x" * 6, len(big), True, 0)]
    assert len(entries[1].raw) == RAW_KEPT_BYTES
    assert redis_client.hget(rediskeys.inbound_counts_key(4), "unattributed") == b"2"
    for n in range(rediskeys.UNATTRIBUTED_KEPT):
        await accounting.keep_unattributed(b"%d" % n, reason="r", kind="unknown", peer="p", mail_from="",
                                           rcpt_tos=[], subject="", now_ms=10 + n)
    assert redis_client.llen(rediskeys.unattributed_reports_key(4)) == rediskeys.UNATTRIBUTED_KEPT
    assert redis_client.hget(rediskeys.inbound_counts_key(4), "unattributed") == b"%d" % (rediskeys.UNATTRIBUTED_KEPT + 2)


# -- the message index and the records ---------------------------------------------------------


@pytest.mark.parametrize(("value", "indexed"), [
    ("<m1@example.com>", "m1@example.com"),
    ("  (comment) <m1@example.com> (more)", "m1@example.com"),
    ("m1@example.com", "m1@example.com"),
    ("<>", None), ("", None), (None, None), ("<" + "x" * 999 + ">", None),
])
def test_indexed_message_id_is_the_msg_id_between_the_angle_brackets(value, indexed):
    assert indexed_message_id(value) == indexed


async def test_the_stats_batcher_writes_message_index_entries_expiring_with_the_events(redis, redis_client):
    batcher = StatsBatcher(redis, server_id=SERVER, event_ttl=600)
    batcher.index_message("m-1@acme.example", "0190aaaa00000000000001")
    assert batcher.pending_index == 1
    assert await batcher.flush()
    assert await event_log.find_message(redis, SERVER, "m-1@acme.example") == "0190aaaa00000000000001"
    assert await event_log.find_message(redis, SERVER + 1, "m-1@acme.example") == ""  # per server
    (bucket,) = redis_client.zrange(rediskeys.event_buckets_key(SERVER), 0, -1)
    (key,) = [k for k in event_log.index_bucket_keys(SERVER, bucket.decode()) if redis_client.exists(k)]
    assert 0 < redis_client.ttl(key) <= 600 + batcher.retention.bucket_seconds  # it expires with the events
    assert batcher.pending_index == 0
    await batcher.close()


async def test_a_message_index_entry_of_before_the_event_log_is_still_found(redis, redis_client):
    redis_client.set(rediskeys.message_index_key("m-2@acme.example"), "0190aaaa00000000000002")
    assert await event_log.find_message(redis, SERVER, "m-2@acme.example") == "0190aaaa00000000000002"


def test_delivery_events_carry_their_source_only_when_a_report_wrote_them():
    event = DeliveryEvent.decode(_event("m1", "a@example.net", 0))
    assert event.source == "" and len(event.encode()) < len(dataclasses.replace(event, source="dsn").encode())
    complained = dataclasses.replace(event, outcome=COMPLAINED, source="arf")
    assert DeliveryEvent.decode(complained.encode()) == complained


def test_unattributed_reports_round_trip_and_refuse_what_they_are_not():
    report = UnattributedReport(at_ms=1, server_id=2, reason="r", kind="unknown", peer="p", mail_from="",
                                rcpt_tos=("a@b",), size=3, sha256="00", subject="s", raw=b"\x00\xff\r\n")
    assert UnattributedReport.decode(report.encode()) == report
    for bad in (b"not json", b"[]", b'{"rcpt_tos": "a"}', b'{"raw": "!!"}'):
        with pytest.raises(UnattributedError):
            UnattributedReport.decode(bad)
