"""The delivery event log (issue 14): Redis holds what the configuration says, not
what the traffic made; read back by GetMessageStatus, REST status and attribution."""

from __future__ import annotations

import contextlib
import json
import time

import grpc
import redis.asyncio as aioredis

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.contract import event_log, rediskeys
from control.embedded_redis import DEFAULT_MAXMEMORY, MAXMEMORY_POLICY
from dataplane.stats_batcher import StatsBatcher
from tests.control_support import expect_error
from tests.dataplane_support import logged_events

SERVER = 3
POOL = 7
IP = "192.0.2.1"
# A clock that stands still (from when the tests start): every write of a test goes
# into the same counter and index buckets, whenever it runs. Expiries are real
# (EXPIREAT), so it cannot be an old time.
T0 = float(int(time.time()))


def _event(message_id: str, n: int = 0, *, user_id: int = 1, ts_ms: int = 1_000) -> str:
    return json.dumps({"ts_ms": ts_ms + n, "message_id": message_id, "user_id": user_id, "bridge_id": 1,
                       "rcpt": f"r{n}@example.net", "outcome": "delivered", "smtp_id": POOL, "pool": "p", "ip": IP,
                       "reply": "250 ok", "attempt": 1, "final": True})


class _Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _send(batcher: StatsBatcher, message_id: str) -> None:
    """What one delivered message leaves in the journal: its counts, event and index entry."""
    batcher.count_sent(POOL, IP)
    batcher.count("delivered", POOL, IP)
    batcher.index_message(f"{message_id}@sender.example", message_id)
    batcher.event(message_id, _event(message_id))


@contextlib.asynccontextmanager
async def _batcher(url: str, **options):
    """A client of the Redis at `url` and a stats batcher of SERVER on it; both closed after."""
    client = aioredis.Redis.from_url(url)
    batcher = StatsBatcher(client, server_id=options.pop("server_id", SERVER), **options)
    try:
        yield client, batcher
    finally:
        await batcher.close()
        await client.aclose()


async def _flush_all(batcher: StatsBatcher) -> None:
    while not await batcher.flush():
        pass


async def test_the_log_keeps_at_most_events_max_and_forgets_the_index_of_what_it_trimmed(redis_url):
    async with _batcher(redis_url, max_batch_events=100, max_events=200, clock=_Clock()) as (client, batcher):
        for n in range(1000):
            _send(batcher, f"m{n}")
        await _flush_all(batcher)
        length = await client.xlen(rediskeys.event_stream_key(SERVER))
        assert 200 <= length <= 300  # MAXLEN ~: whole stream nodes (100 entries) are trimmed
        assert [e.rcpt for e in await event_log.message_events(client, [SERVER], "m999")] == ["r0@example.net"]
        assert await event_log.message_events(client, [SERVER], "m0") == []
        assert await event_log.find_message(client, SERVER, "m999@sender.example") == "m999"
        assert await client.hget(rediskeys.pool_stats_key(SERVER, POOL), "sent") == b"1000"  # counts are exact


async def test_the_log_forgets_what_is_older_than_its_retention_without_a_scan(redis_url):
    clock = _Clock()
    async with _batcher(redis_url, event_ttl=3600, clock=clock) as (client, batcher):
        _send(batcher, "old")
        await _flush_all(batcher)
        buckets = rediskeys.event_buckets_key(SERVER)
        (first,) = await client.zrange(buckets, 0, -1)
        bucket_keys = event_log.index_bucket_keys(SERVER, first.decode())
        written = [key for key in bucket_keys if await client.exists(key)]
        assert len(written) == 2  # one hash of each kind: the message's shard
        for key in (buckets, rediskeys.event_stream_key(SERVER), *written):
            assert await client.ttl(key) > 0, key  # each goes on its own once nothing is written
        clock.now += 3600 + 2 * batcher.retention.bucket_seconds  # past the retention
        _send(batcher, "new")
        await _flush_all(batcher)
        assert await event_log.message_events(client, [SERVER], "old") == []
        assert await event_log.find_message(client, SERVER, "old@sender.example") == ""
        assert len(await event_log.message_events(client, [SERVER], "new")) == 1
        (bucket,) = await client.zrange(buckets, 0, -1)  # the old bucket is gone, hashes and all
        assert bucket != first
        assert not await client.exists(*bucket_keys)


async def test_the_keyspace_does_not_grow_with_the_messages(redis_url):
    clock = _Clock()
    async with _batcher(redis_url, max_batch_events=50, max_events=200, clock=clock) as (client, batcher):
        log_keys = []
        for n in range(5000):
            _send(batcher, f"m{n}")
            if n % 100 == 99:
                await _flush_all(batcher)
                clock.now += 1  # 100 messages a second
                log_keys.append(len([k async for k in client.scan_iter(match=f"{rediskeys.event_stream_key(SERVER)}*")]
                                    + [k async for k in client.scan_iter(
                                        match=rediskeys.message_index_bucket_key(SERVER, "*"))]))
        # the stream, the buckets, and the hashes of the bucket being written and of
        # the one before (the stream's 200 events are the last few seconds), whose
        # ~1,600 messages fill one bucket: never more, however many messages
        assert max(log_keys) <= 2 + 2 * 2 * event_log.INDEX_SHARDS
        assert await client.zcard(rediskeys.event_buckets_key(SERVER)) <= 2
        assert len([k async for k in client.scan_iter(match=rediskeys.stats_journal_mark_key(SERVER, "*"))]) == 1


async def test_a_segment_replayed_after_later_ones_counts_once_and_the_mark_is_kept_long(tmp_path, redis_url):
    async with _batcher(redis_url, journal_dir=tmp_path / "j", clock=_Clock()) as (client, batcher):
        _send(batcher, "m1")
        batcher.journal.seal()
        first = batcher.journal.oldest()
        kept = first.path.read_bytes()
        await _flush_all(batcher)
        _send(batcher, "m2")
        await _flush_all(batcher)
        # a crash between the apply and the delete of the first segment, replayed
        # after the second was applied (by the worker that claimed the journal)
        first.path.write_bytes(kept)
        await batcher.apply_segment(first)
        assert await client.hget(rediskeys.pool_stats_key(SERVER, POOL), "sent") == b"2"
        assert len(await logged_events(client, SERVER, "m1")) == 1
        mark = rediskeys.stats_journal_mark_key(SERVER, batcher.journal.token)
        assert await client.get(mark) == b"2"
        assert rediskeys.STATS_DAY_RETENTION_SECONDS < await client.ttl(mark) <= (
            rediskeys.STATS_JOURNAL_MARK_TTL_SECONDS)


async def test_a_full_redis_refuses_the_batch_loudly_and_it_is_applied_once_later(fresh_redis):
    async with _batcher(fresh_redis.url, clock=_Clock()) as (client, batcher):
        assert await client.config_get("maxmemory-policy") == {"maxmemory-policy": MAXMEMORY_POLICY}
        await client.set("ballast", "x" * 2_000_000)
        await client.config_set("maxmemory", 1024**2)  # below what it holds: every write is refused
        _send(batcher, "m1")
        assert await batcher.flush() is False
        assert batcher.metrics["flush_failures"] == 1 and batcher.pending == 2  # kept in the journal
        assert await client.get("ballast")  # nothing was evicted
        await client.config_set("maxmemory", DEFAULT_MAXMEMORY)
        await _flush_all(batcher)
        assert await client.hget(rediskeys.pool_stats_key(SERVER, POOL), "sent") == b"1"
        assert len(await event_log.message_events(client, [SERVER], "m1")) == 1


async def test_message_status_reads_the_event_log_of_the_accounts_servers(make_account, server, redis_url):
    acme, account = await make_account("acme")
    globex, _ = await make_account("globex")
    await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=server.server_id))
    async with _batcher(redis_url, server_id=server.server_id) as (client, batcher):
        batcher.event("0123abcd", _event("0123abcd", user_id=account.user_id, ts_ms=2_000))
        await _flush_all(batcher)
        # one more written before the event log, in the message's own list: read too
        await client.rpush(rediskeys.message_events_key("0123abcd"),
                           _event("0123abcd", 1, user_id=account.user_id, ts_ms=500))
        status = await acme.stats.GetMessageStatus(pb.GetMessageStatusRequest(message_id="0123abcd"))
        assert [(e.recipient, e.time.ToMilliseconds()) for e in status.events] == [
            ("r1@example.net", 501), ("r0@example.net", 2_000)]
        await expect_error(globex.stats.GetMessageStatus(pb.GetMessageStatusRequest(message_id="0123abcd")),
                           grpc.StatusCode.NOT_FOUND)


def test_a_message_id_says_when_it_was_accepted_so_a_read_skips_older_buckets():
    now = T0
    ours = f"{int(now * 1000):012x}a1b2c3d4000001"
    assert event_log.accepted_at(ours, now) == int(now * 1000) / 1000
    assert event_log.accepted_at("m1", now) is None and event_log.accepted_at("0123abcd", now) is None
    assert event_log.accepted_at("zz" * 13, now) is None  # not hex
    assert event_log.accepted_at(f"{int((now + 2 * 86400) * 1000):012x}00", now) is None  # not one of ours
    _, args = event_log.read_events_input(SERVER, ours)
    assert args[2] == f"({int(now) - event_log.CLOCK_SLACK_SECONDS}"
    assert event_log.read_events_input(SERVER, "m1")[1][2] == "-inf"


async def test_a_read_finds_events_written_after_the_acceptance_its_id_names(redis_url):
    clock = _Clock()
    async with _batcher(redis_url, clock=clock) as (client, batcher):
        early = f"{int((T0 - 3600) * 1000):012x}a1b2c3d4000001"
        batcher.event(early, _event(early))  # written at T0, an hour after its acceptance
        await _flush_all(batcher)
        clock.now += 2 * batcher.retention.bucket_seconds
        batcher.event(early, _event(early, 1))  # a retry, two buckets later
        late = f"{int(clock.now * 1000):012x}a1b2c3d4000002"
        batcher.event(late, _event(late))
        await _flush_all(batcher)
        assert await client.zcard(rediskeys.event_buckets_key(SERVER)) == 2
        assert len(await event_log.message_events(client, [SERVER], early)) == 2  # both buckets
        assert len(await event_log.message_events(client, [SERVER], late)) == 1


async def test_a_segment_applied_before_journal_marks_existed_is_not_applied_again(tmp_path, redis_url):
    async with _batcher(redis_url, journal_dir=tmp_path / "j", clock=_Clock()) as (client, batcher):
        _send(batcher, "m1")
        batcher.journal.seal()
        segment = batcher.journal.oldest()
        # a worker of before applied it (setting its marker) and died before deleting it
        await client.set(rediskeys.stats_batch_marker_key(SERVER, segment.batch_id), "1", ex=3600)
        await _flush_all(batcher)
        assert await client.hget(rediskeys.pool_stats_key(SERVER, POOL), "sent") is None
        _send(batcher, "m2")  # the next segment applies as usual
        await _flush_all(batcher)
        assert await client.hget(rediskeys.pool_stats_key(SERVER, POOL), "sent") == b"1"


async def test_the_index_stays_in_compact_hashes_as_buckets_fill(redis_url):
    clock = _Clock()
    async with _batcher(redis_url, max_batch_events=500, clock=clock) as (client, batcher):
        for n in range(4000):
            _send(batcher, f"m{n}")
        wide = "wide"  # a message of 30 recipients: 30 events, most in one batch
        for n in range(30):
            batcher.event(wide, _event(wide, n))
        await _flush_all(batcher)
        buckets = [b.decode() for b in await client.zrange(rediskeys.event_buckets_key(SERVER), 0, -1)]
        assert len(buckets) >= 2  # 4,000 messages fill more than one bucket of 16 x 128 entries
        for bucket in buckets:
            for key in event_log.index_bucket_keys(SERVER, bucket):
                if await client.exists(key):
                    assert await client.hlen(key) <= event_log.INDEX_SHARD_ENTRIES
                    assert await client.object("encoding", key) == b"ziplist", key
        assert [e.rcpt for e in await event_log.message_events(client, [SERVER], wide)] == [
            f"r{n}@example.net" for n in range(30)]
        assert all([len(await event_log.message_events(client, [SERVER], f"m{n}")) == 1 for n in range(0, 4000, 97)])
        assert await event_log.find_message(client, SERVER, "m1234@sender.example") == "m1234"


async def test_what_the_log_held_before_its_index_was_sharded_is_read_and_then_dropped(redis_url):
    clock = _Clock()
    async with _batcher(redis_url, event_ttl=3600, clock=clock) as (client, batcher):
        # as written before: a JSON event, one hash of each kind per 5-minute bucket
        # (member its start, score its end: still ahead, as while a worker of before
        # writes beside the new ones), the ids space-separated
        start = int(T0) - 100
        stream = rediskeys.event_stream_key(SERVER)
        first = await client.xadd(stream, {"e": _event("old", 0)}, id=f"{start * 1000}-0")
        second = await client.xadd(stream, {"e": _event("old", 1)}, id=f"{start * 1000}-1")
        await client.hset(rediskeys.event_index_bucket_key(SERVER, start), "old", f"{first.decode()} {second.decode()}")
        await client.hset(rediskeys.message_index_bucket_key(SERVER, start), rediskeys.message_index_field(
            "old@sender.example"), "old")
        await client.zadd(rediskeys.event_buckets_key(SERVER), {str(start): start + 300})
        for name in ("new", "new2"):
            _send(batcher, name)
            await _flush_all(batcher)
        assert await client.zcard(rediskeys.event_buckets_key(SERVER)) == 2  # the old one and one new one
        assert [e.rcpt for e in await event_log.message_events(client, [SERVER], "old")] == [
            "r0@example.net", "r1@example.net"]
        assert await event_log.find_message(client, SERVER, "old@sender.example") == "old"
        assert await event_log.find_message(client, SERVER, "new@sender.example") == "new"
        clock.now += 3600 + 600  # the old bucket (and its events) are past the retention, the new ones not
        _send(batcher, "newer")
        await _flush_all(batcher)
        assert await event_log.message_events(client, [SERVER], "old") == []
        assert not await client.exists(*event_log.index_bucket_keys(SERVER, str(start)))
        assert len(await event_log.message_events(client, [SERVER], "newer")) == 1
