"""In-process tests of the delivery engine's pure parts and small pieces: reply
classification, retry schedules and durations, routes and their precedence, the
DATA payload (CRLF and dot-stuffing, checked against the sink's reader), MX
ordering, spool ownership, the spool's rewrite and removal, the delivery flags,
source-IP selection shared with acceptance, and the stats batcher's events
against a real Redis."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import replace
from types import SimpleNamespace

import pytest
import redis.asyncio as aioredis
from hypothesis import example, given, settings
from hypothesis import strategies as st
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from control.contract import rediskeys
from control.contract.delivery_event import DeliveryEvent
from dataplane import spool
from dataplane.__main__ import build_config, build_parser
from dataplane.config import (
    DeliveryConfig,
    format_duration,
    parse_duration,
    parse_hostport,
    parse_retry_schedule,
    parse_route,
)
from dataplane.delivery import DeliveryEngine, next_attempt_at, retry_delay
from dataplane.delivery.queue import QueuedMessage
from dataplane.destinations import address_literal, order_mx
from dataplane.return_path import ReturnPaths, open_codec
from dataplane.routing import NoUsableIp, Routing
from dataplane.smtp_wire import read_data
from dataplane.smtp_client import data_payload
from dataplane.smtp_reply import BOUNCED, DEFERRED, DELIVERED, STAGE_DATA, STAGE_MAIL, STAGE_RCPT, Reply, classify
from dataplane.stats_batcher import StatsBatcher
from dataplane.stats_script import _APPLY_BATCH
from tests.dataplane_support import logged_events, make_bridge, make_pool, make_snapshot
from tests.support import free_port

# --- replies -------------------------------------------------------------------


@pytest.mark.parametrize("reply, stage, outcome", [
    (Reply(250, "2.0.0 Ok"), STAGE_DATA, DELIVERED),
    (Reply(251, "will forward"), STAGE_DATA, DELIVERED),
    (Reply(550, "5.1.1 no such user"), STAGE_RCPT, BOUNCED),
    (Reply(554, "5.7.1 rejected"), STAGE_DATA, BOUNCED),
    (Reply(553, ""), STAGE_MAIL, BOUNCED),
    (Reply(451, "4.3.0 try later"), STAGE_RCPT, DEFERRED),
    (Reply(421, "4.3.2 closing"), STAGE_MAIL, DEFERRED),
    (Reply(452, "4.5.3 too many recipients"), STAGE_RCPT, DEFERRED),
    # RFC 5321 4.5.3.1.10: 552 to RCPT is temporary; to the message it is permanent.
    (Reply(552, "5.5.3 too many recipients"), STAGE_RCPT, DEFERRED),
    (Reply(552, "5.3.4 message too big"), STAGE_DATA, BOUNCED),
    # The reply code decides; an enhanced code of another class is ignored.
    (Reply(550, "4.2.2 mailbox full"), STAGE_RCPT, BOUNCED),
    (Reply(450, "5.1.1 no such user"), STAGE_RCPT, DEFERRED),
    # Not 2yz/4yz/5yz: the enhanced code decides when there is one, else transient.
    (Reply(354, "go ahead"), STAGE_DATA, DEFERRED),
    (Reply(600, "5.1.1 gone"), STAGE_DATA, BOUNCED),
    (Reply(600, "4.4.1 later"), STAGE_DATA, DEFERRED),
    (Reply(199, "what"), STAGE_DATA, DEFERRED),
])
def test_classify_follows_rfc_5321_and_3463(reply, stage, outcome):
    assert classify(reply, stage) == outcome


def test_enhanced_status_codes_and_reply_text():
    assert Reply(550, "5.1.1 no such user").enhanced == "5.1.1"
    assert Reply(250, "2.0.0 Ok: queued as 7").enhanced == "2.0.0"
    assert Reply(550, "4.2.2 full").enhanced is None  # class does not match the reply code
    assert Reply(550, "no code here").enhanced is None
    assert Reply(550, "5.1.10 null MX").enhanced == "5.1.10"
    assert str(Reply(250, "2.0.0 Ok")) == "250 2.0.0 Ok" and str(Reply(354)) == "354"


# --- durations, schedules, routes ------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [
    ("90", 90), ("0.5s", 0.5), ("5m", 300), ("1.5h", 5400), ("3d", 259200), (" 2H ", 7200), (".25s", 0.25),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "-1s", "0", "0s", "5w", "1e3", "nan", "inf", "1.2.3s", "5 m"])
def test_parse_duration_refuses_with_the_syntax(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@given(st.one_of(st.integers(1, 10**7).map(float), st.integers(1, 10**6).map(lambda n: n / 8),
                 st.floats(1e-6, 1e9)))
@example(1000.125)
@example(1e6)
@example(1e-05)
@example(1.0000000000000002e-06)  # found by hypothesis: fixed-point with 20 places lost the last digit
def test_format_duration_round_trips(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


def test_retry_schedule_last_delay_repeats_and_never_passes_the_lifetime():
    schedule = parse_retry_schedule("5m,10m,20m,40m,1h,2h")
    assert schedule == (300, 600, 1200, 2400, 3600, 7200)
    assert [retry_delay(schedule, n) for n in (1, 2, 6, 7, 50)] == [300, 600, 7200, 7200, 7200]
    assert next_attempt_at(schedule, 1, last_at=1000.0, deadline=10_000.0) == 1300.0
    assert next_attempt_at(schedule, 9, last_at=5000.0, deadline=10_000.0) == 10_000.0  # the last try: at the end
    assert parse_retry_schedule("0.2s, 0.4s,") == (0.2, 0.4)
    with pytest.raises(ValueError, match="at least one duration"):
        parse_retry_schedule(" , ")
    with pytest.raises(ValueError, match="not a duration"):
        parse_retry_schedule("5m,soon")


def test_routes_parse_and_an_exact_domain_beats_star_beats_smarthost():
    assert parse_route("Example.COM.=127.0.0.1:2626") == ("example.com", "127.0.0.1", 2626)
    assert parse_route("*=[::1]:2626") == ("*", "::1", 2626)
    assert parse_route("example.org=mx.example.org") == ("example.org", "mx.example.org", 25)
    for bad, message in [("example.com", "DOMAIN=HOST:PORT"), ("=h:1", "DOMAIN=HOST:PORT"),
                         ("a b=h:1", "not a domain"), ("x.com=h:0", "HOST:PORT"), ("x.com=h:99999", "HOST:PORT"),
                         ("x.com=::1:25", "HOST:PORT")]:
        with pytest.raises(ValueError, match=message):
            parse_route(bad)
    config = DeliveryConfig(routes=(("example.com", "10.0.0.1", 25), ("*", "10.0.0.2", 2525)))
    assert config.route_for("example.com") == ("10.0.0.1", 25)
    assert config.route_for("example.org") == ("10.0.0.2", 2525)
    smarthost = DeliveryConfig(routes=(("example.com", "10.0.0.1", 25),), smarthost=("relay.test", 587))
    assert smarthost.route_for("example.org") == ("relay.test", 587)
    assert DeliveryConfig().route_for("example.org") is None  # MX lookup
    assert parse_hostport("[::1]", what="x", default_port=53) == ("::1", 53)


@pytest.mark.parametrize("kwargs, message", [
    ({"routes": (("a.test", "h", 1), ("a.test", "g", 2))}, "more than one --route for a.test"),
    ({"routes": (("*", "h", 1),), "smarthost": ("s", 2)}, "give one"),
    ({"retry_schedule": ()}, "retry schedule"),
    ({"queue_lifetime": 0}, "queue lifetime"),
    ({"max_conn_per_ip": 0}, "max conn per ip"),
    ({"mx_port": 0}, "MX port"),
    ({"payload_memory": -1}, "payload memory must be 0 or more bytes, got -1"),
])
def test_delivery_config_refuses_nonsense(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DeliveryConfig(**kwargs)


def test_connection_limits_are_shared_by_the_workers():
    config = DeliveryConfig(max_conn_per_ip=20, max_conn_per_destination=5)
    assert config.share(20, 2) == 10 and config.share(5, 2) == 3 and config.share(1, 4) == 1


def test_delivery_flags_and_environment():
    def build(argv, env=None):
        return build_config(build_parser(env or {}).parse_args(["--server-id", "1", *argv]), "redis://x").delivery

    defaults = build([])
    assert defaults == DeliveryConfig()
    assert defaults.retry_schedule == (300, 600, 1200, 2400, 3600, 7200) and defaults.queue_lifetime == 3 * 86400
    flags = build(["--route", "a.test=127.0.0.1:2626", "--route", "*=127.0.0.1:2627", "--retry-schedule",
                   "0.5s,1s,2s", "--queue-lifetime", "1h", "--max-conn-per-ip", "7", "--max-conn-per-destination",
                   "3", "--event-retention", "1d", "--no-delivery", "--dns-server", "127.0.0.1:5353",
                   "--mx-port", "2525", "--delivery-payload-memory", "4K"])
    assert flags == DeliveryConfig(
        enabled=False, routes=(("a.test", "127.0.0.1", 2626), ("*", "127.0.0.1", 2627)),
        retry_schedule=(0.5, 1.0, 2.0), queue_lifetime=3600.0, max_conn_per_ip=7, max_conn_per_destination=3,
        event_retention=86400.0, dns_server=("127.0.0.1", 5353), mx_port=2525, payload_memory=4096)
    env = build([], {"POOLMTA_ROUTE": "a.test=h:1, b.test=h:2", "POOLMTA_SMARTHOST": "relay.test",
                     "POOLMTA_RETRY_SCHEDULE": "1m", "POOLMTA_NO_DELIVERY": "1", "POOLMTA_QUEUE_LIFETIME": "2d"})
    assert env.routes == (("a.test", "h", 1), ("b.test", "h", 2)) and env.smarthost == ("relay.test", 25)
    assert (env.retry_schedule, env.enabled, env.queue_lifetime) == ((60.0,), False, 172800.0)
    assert defaults.payload_memory == 32 * 1024 * 1024
    assert build([], {"POOLMTA_DELIVERY_PAYLOAD_MEMORY": "0"}).payload_memory == 0
    # A flag wins over the environment.
    assert build(["--route", "c.test=h:3"], {"POOLMTA_ROUTE": "a.test=h:1"}).routes == (("c.test", "h", 3),)


def test_bad_delivery_flags_exit_with_usage(capsys):
    for argv in (["--retry-schedule", "soon"], ["--route", "nope"], ["--queue-lifetime", "-1d"],
                 ["--delivery-payload-memory", "lots"]):
        with pytest.raises(SystemExit):
            build_parser({}).parse_args(["--server-id", "1", *argv])
        assert "error:" in capsys.readouterr().err


# --- the DATA payload ----------------------------------------------------------------


@pytest.mark.parametrize("message, wire", [
    (b"", b".\r\n"),
    (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
    (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
    (b"a\rb", b"a\r\nb\r\n.\r\n"),
    (b"no final line end", b"no final line end\r\n.\r\n"),
    (b".starts\r\n.\r\n..two\r\n", b"..starts\r\n..\r\n...two\r\n.\r\n"),
    (b"x\n.\ny", b"x\r\n..\r\ny\r\n.\r\n"),
    (b"mixed\r\nbare\nend", b"mixed\r\nbare\r\nend\r\n.\r\n"),
])
def test_data_payload_normalizes_line_ends_and_stuffs_dots(message, wire):
    assert data_payload(message) == wire


async def _read_back(wire: bytes) -> bytes | None:
    reader = asyncio.StreamReader()
    reader.feed_data(wire)
    reader.feed_eof()
    return await read_data(reader, None)


@given(st.lists(st.one_of(st.binary(max_size=30), st.sampled_from([b".", b"..", b".x", b"\r", b"\n", b"\r\n"])),
                max_size=15).map(b"".join))
@example(b".\r\n")
@example(b"\r\n.\r\n")
@settings(max_examples=300, deadline=None)
def test_the_sink_reads_back_exactly_the_crlf_message(message):
    wire = data_payload(message)
    assert wire.endswith(b".\r\n") and b"\r\n.\r\n" not in wire[:-3] and not wire[:-3].startswith(b".\r\n")
    normalized = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if normalized and not normalized.endswith(b"\r\n"):
        normalized += b"\r\n"
    assert asyncio.run(_read_back(wire)) == normalized


# --- destinations ------------------------------------------------------------------


def test_mx_order_by_preference_with_equal_ones_shuffled():
    records = [(20, "c.test."), (10, "B.test."), (10, "a.test."), (30, "b.test.")]
    orders = {tuple(order_mx(records, random.Random(seed))) for seed in range(40)}
    assert orders == {("b.test", "a.test", "c.test"), ("a.test", "b.test", "c.test")}
    assert order_mx([(0, ".")]) == []  # null MX: no mail
    assert order_mx([(0, "."), (10, "mx.test.")]) == ["mx.test"]  # a stray null MX is ignored


def test_address_literals():
    assert address_literal("[192.0.2.1]") == "192.0.2.1"
    assert address_literal("[IPv6:2001:db8::1]") == "2001:db8::1"
    assert address_literal("example.com") is None and address_literal("[nonsense]") is None


# --- spool ownership, rewrite and removal ----------------------------------------------


@pytest.mark.parametrize("owners", [1, 2, 3, 5])
def test_each_worker_makes_ids_it_owns_even_when_the_counter_wraps(tmp_path, owners):
    for owner in range(owners):
        writer = spool.Spool(tmp_path, owner=owner, owners=owners)
        ids = [writer.new_id() for _ in range(50)]
        writer._seq = iter(range(0x1000000 // owners - 3, 0x1000000 // owners + 3))  # around the wrap
        ids += [writer.new_id() for _ in range(6)]
        assert {spool.owner_of(i, owners) for i in ids} == {owner}
        assert len(set(ids[:50])) == 50 and all(len(i) == 26 for i in ids)
    with pytest.raises(ValueError, match="owner index"):
        spool.Spool(tmp_path, owner=2, owners=2)


def _record(message_id: str) -> spool.SpoolRecord:
    return spool.SpoolRecord(
        id=message_id, received_ms=1, server_id=1, snapshot_version=3, worker="h:1:0",
        client_address="127.0.0.1", client_helo="client.example", tls=False, auth="auth",
        bridge_id=1, bridge_username="br-x", user_id=3, smtp_id=7, pool="promo-3-1-pool-7",
        ip="192.0.2.1", ip_hostname="out.example", feed_type="newsletter", zone="US-1",
        mail_from="s@example.com", rcpt_tos=("a@example.net", "b@example.net"), mail_options=(),
        smtputf8=False, message=b"Subject: x\r\n\r\nbody\r\n",
    )


async def test_spool_rewrites_attempts_and_removes_durably(tmp_path):
    writer = spool.Spool(tmp_path)
    writer.open()
    try:
        record = _record(writer.new_id())
        await writer.store(record)
        attempt = {"at_ms": 5, "rcpt": "a@example.net", "outcome": "delivered", "code": 250, "text": "ok",
                   "ip": "192.0.2.1", "mx": "mx.test", "attempt": 1}
        await writer.rewrite_attempts(record.id, (attempt,))
        assert await writer.read(record.id) == replace(record, attempts=(attempt,))
        assert await writer.list_ids() == [record.id]
        assert await writer.remove(record.id) is True
        assert await writer.remove(record.id) is False
        with pytest.raises(FileNotFoundError):
            await writer.rewrite_attempts(record.id, ())
        assert spool.queued_ids(tmp_path) == [] and list((tmp_path / spool.TMP_DIR).iterdir()) == []
    finally:
        writer.close()


def test_only_one_data_plane_holds_a_spool(tmp_path):
    import os

    fd = spool.lock(tmp_path)
    try:
        with pytest.raises(spool.SpoolLocked, match="another data plane"):
            spool.lock(tmp_path)
    finally:
        os.close(fd)
    os.close(spool.lock(tmp_path))  # free again once the holder is gone


# --- source IPs: one rotation per pool, shared with acceptance ----------------------------


def test_acceptance_and_delivery_pick_from_one_rotation_per_pool():
    pool = make_pool(7, [("192.0.2.1", 1), ("192.0.2.2", 1), ("192.0.2.3", 0)])
    bridge = make_bridge(1, 7, "s3cret")
    routing = Routing(make_snapshot(1, 1, [pool, make_pool(8, [("192.0.2.9", 0)])], [bridge]))
    sources = routing.sources
    assert sources.ip("192.0.2.1") == (True, "out-192-0-2-1.example")
    assert sources.ip("192.0.2.3") == (False, "out-192-0-2-3.example")
    assert sources.ip("198.51.100.7") is None
    # Acceptance's picks and delivery's re-picks advance the same rotation.
    picks = [routing.route(bridge).address, sources.pick(7), routing.route(bridge).address, sources.pick(7)]
    assert picks == ["192.0.2.1", ("192.0.2.2", "out-192-0-2-2.example"), "192.0.2.1",
                     ("192.0.2.2", "out-192-0-2-2.example")]
    with pytest.raises(NoUsableIp):
        sources.pick(8)
    with pytest.raises(KeyError):
        sources.pick(99)


def test_a_message_keeps_its_usable_ip_and_replaces_an_unusable_one(tmp_path):
    config = build_config(build_parser({}).parse_args(["--server-id", "1"]), "redis://x")
    loader = SimpleNamespace(current=None)
    engine = DeliveryEngine(config, loader=loader, spool=spool.Spool(tmp_path), stats=None, index=0,
                            return_paths=ReturnPaths(open_codec(tmp_path)))
    source_for = engine.egress.source_for

    def queued(ip: str, smtp_id: int = 7) -> QueuedMessage:
        record = replace(_record("0" * 26), ip=ip, smtp_id=smtp_id)
        return QueuedMessage(record=record, pending={}, deadline=0.0, ip=ip, helo="recorded.example")

    # No snapshot loaded yet: the record's IP as it is.
    assert source_for(queued("192.0.2.3")) == ("192.0.2.3", "recorded.example")
    bridge = make_bridge(1, 7, "s3cret")
    loader.current = routing = Routing(make_snapshot(1, 1, [
        make_pool(7, [("192.0.2.1", 1), ("192.0.2.2", 1), ("192.0.2.3", 0)]),
        make_pool(8, [("192.0.2.8", 1)]), make_pool(9, [("192.0.2.9", 0)])], [bridge]))
    # Usable, even in another pool now: kept, with the snapshot's HELO name.
    assert source_for(queued("192.0.2.8")) == ("192.0.2.8", "out-192-0-2-8.example")
    assert engine.metrics["ip_repicks"] == 0
    # At weight 0, or released: a fresh pick from the pool's one rotation, kept by the message.
    assert routing.route(bridge).address == "192.0.2.1"
    paused, released = queued("192.0.2.3"), queued("198.51.100.7")
    assert source_for(paused) == ("192.0.2.2", "out-192-0-2-2.example")
    assert (paused.ip, paused.helo) == ("192.0.2.2", "out-192-0-2-2.example")
    assert source_for(released) == ("192.0.2.1", "out-192-0-2-1.example")
    assert engine.metrics["ip_repicks"] == 2
    # Nothing to pick from: no source IP (the job is deferred).
    assert source_for(queued("192.0.2.9", smtp_id=9)) is None
    assert source_for(queued("198.51.100.7", smtp_id=99)) is None


# --- the stats batcher's events ------------------------------------------------------------


async def test_events_are_applied_once_with_their_counts_and_expire(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    try:
        batcher = StatsBatcher(client, server_id=1, event_ttl=3600)
        batcher.count("delivered", 7, "192.0.2.1")
        batcher.event("m1", json.dumps({"rcpt": "a", "outcome": "delivered"}))
        batcher.event("m1", json.dumps({"rcpt": "b", "outcome": "bounced"}))
        batcher.event("m2", json.dumps({"rcpt": "c", "outcome": "deferred"}))
        assert batcher.pending_events == 3
        assert await batcher.flush() is True
        assert [DeliveryEvent.decode(e).rcpt for e in await logged_events(client, 1, "m1")] == ["a", "b"]
        assert 0 < await client.ttl(rediskeys.event_stream_key(1)) <= 3600 + batcher.retention.bucket_seconds
        assert await client.hget(rediskeys.pool_stats_key(1, 7), "delivered") == b"1"

        # A segment whose reply was lost is applied again with the same id and JSON: once.
        batcher.event("m1", json.dumps({"rcpt": "a", "outcome": "delivered", "attempt": 2}))
        batcher.count("delivered", 7, "192.0.2.1")
        batcher.journal.seal()
        await batcher.apply_segment(batcher.journal.oldest())
        assert await batcher.flush() is True
        assert len(await logged_events(client, 1, "m1")) == 3
        assert await client.hget(rediskeys.pool_stats_key(1, 7), "delivered") == b"2"
    finally:
        await client.aclose()


async def test_events_wait_for_redis_on_disk_in_bounded_segments_and_every_one_arrives(redis_url):
    down = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    batcher = StatsBatcher(down, server_id=1, max_batch_events=10)
    for n in range(40):
        batcher.count("deferred", 7, "192.0.2.1")
        batcher.event(f"m{n}", json.dumps({"n": n}))
    assert batcher.pending_events == 40 and batcher.journal.sealed == 4  # 10 events a segment
    assert await batcher.flush() is False
    assert batcher.pending == 40
    await down.aclose()

    up = aioredis.Redis.from_url(redis_url)
    try:
        batcher._script = up.register_script(_APPLY_BATCH)  # Redis is back
        while not await batcher.flush():
            pass
        assert await up.hget(rediskeys.pool_stats_key(1, 7), "deferred") == b"40"
        kept = [n for n in range(40) if await logged_events(up, 1, f"m{n}")]
        assert kept == list(range(40))
        assert batcher.metrics["flushes"] == 4  # a segment per flush, at most max_batch_events events each
    finally:
        await batcher.close()
        await up.aclose()
