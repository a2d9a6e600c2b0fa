"""Counter keys per MTA server (`{stats:N}`) and their minute, hour and day buckets:
the contract of `rediskeys.count_targets`, and the stats batcher writing exactly
those keys into a real Redis, each count in the buckets of the time it was counted."""

from __future__ import annotations

import calendar
import time

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from control.contract import rediskeys
from dataplane import stats_journal
from dataplane.stats_batcher import StatsBatcher
from dataplane.stats_script import apply_counts_once

# 2026-11-27 23:59:30 UTC: half a minute before a new minute, hour and day.
FIXED = calendar.timegm((2026, 11, 27, 23, 59, 30))
# The same moment of the clock tonight: buckets written to Redis must not be past
# their expiry already (EXPIREAT in the past deletes the key).
LATE = (int(time.time()) // 86400 + 1) * 86400 - 30
NEXT_DAY = LATE + 40  # 00:00:10


def _slots(keys) -> set[int]:
    return {key_slot(k.encode()) for k in keys}


def test_a_counter_key_names_its_server_scope_and_bucket():
    assert rediskeys.pool_stats_key(1, 7) == "poolmta:{stats:1}:pool:7"
    assert rediskeys.ip_stats_key(2, "192.0.2.1", rediskeys.HOUR, FIXED) == "poolmta:{stats:2}:ip:192.0.2.1:h:2026112723"
    assert (rediskeys.pool_ip_stats_key(1, 7, "2001:db8::1", rediskeys.MINUTE, FIXED)
            == "poolmta:{stats:1}:pool:7:ip:2001:db8::1:m:202611272359")
    assert rediskeys.pool_stats_key(1, 7, rediskeys.DAY, FIXED + 40) == "poolmta:{stats:1}:pool:7:d:20261128"
    with pytest.raises(ValueError, match="needs the time"):
        rediskeys.pool_stats_key(1, 7, rediskeys.MINUTE)
    with pytest.raises(ValueError, match="a pool, an IP or both"):
        rediskeys.counter_key(1)


def test_count_targets_are_every_bucket_of_pool_ip_and_pool_ip_in_one_slot():
    targets = rediskeys.count_targets(3, 7, "192.0.2.1", FIXED)
    assert [t.key for t in targets] == [
        rediskeys.counter_key(3, smtp_id, address, resolution, FIXED if resolution else None)
        for smtp_id, address in ((7, None), (None, "192.0.2.1"), (7, "192.0.2.1"))
        for resolution in (None, rediskeys.DAY, rediskeys.HOUR, rediskeys.MINUTE)
    ]
    # One slot: a batch of one server applies in one script, on a Redis Cluster too.
    assert len(_slots(t.key for t in targets)) == 1
    expiries = {t.key.rsplit(":", 2)[-2] if t.expires_at else "lifetime": t.expires_at for t in targets}
    assert expiries == {
        "lifetime": None,
        "d": calendar.timegm((2026, 11, 27, 0, 0, 0)) + 35 * 86400,
        "h": calendar.timegm((2026, 11, 27, 23, 0, 0)) + 30 * 86400,
        "m": calendar.timegm((2026, 11, 27, 23, 59, 0)) + 48 * 3600,
    }


def test_count_targets_leave_out_buckets_already_gone():
    # A correction to a count of 3 days ago (an asynchronous bounce, say): the
    # minute bucket expired after 48 h and is not re-created; the rest still move.
    late = rediskeys.count_targets(3, 7, "192.0.2.1", FIXED, now=FIXED + 3 * 86400)
    assert len(late) == 9 and not any(":m:" in t.key for t in late)
    gone = rediskeys.count_targets(3, 7, "192.0.2.1", FIXED, now=FIXED + 40 * 86400)
    assert [t.expires_at for t in gone] == [None, None, None]  # only the lifetime totals


def test_servers_get_their_own_tags_and_slots():
    one = rediskeys.count_targets(1, 7, "192.0.2.1", LATE)
    two = rediskeys.count_targets(2, 8, "192.0.2.2", LATE)
    assert all("{stats:1}" in t.key for t in one) and all("{stats:2}" in t.key for t in two)
    assert _slots(t.key for t in one) != _slots(t.key for t in two)
    assert rediskeys.stats_batch_marker_key(2, "w:1") == "poolmta:{stats:2}:batch:w:1"


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_the_batcher_counts_in_the_buckets_of_the_time_counted_and_once(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    try:
        clock = Clock(LATE)
        one = StatsBatcher(client, server_id=1, clock=clock)
        two = StatsBatcher(client, server_id=2, clock=clock)
        one.count("delivered", 7, "192.0.2.1", 2)
        clock.now = NEXT_DAY  # a new minute, hour and day; the flush comes later still
        one.count("delivered", 7, "192.0.2.1")
        one.count("bounced", 7, "192.0.2.2")
        two.count("delivered", 8, "198.51.100.1", 5)
        clock.now = NEXT_DAY + 600
        one.journal.seal()
        segment = one.journal.oldest()
        assert len(_slots(one.counts_input(segment)[0])) == 1  # marker and every counter: one slot, one script
        await one.apply_segment(segment)  # its reply lost: the flush applies it again, counted once
        assert await one.flush() is True and await two.flush() is True

        async def figure(key: str, field: str = "delivered") -> int:
            return int(await client.hget(key, field) or 0)

        for resolution in rediskeys.RESOLUTIONS:
            assert await figure(rediskeys.pool_stats_key(1, 7, resolution, LATE)) == 2
            assert await figure(rediskeys.pool_stats_key(1, 7, resolution, NEXT_DAY)) == 1
            assert await figure(rediskeys.ip_stats_key(1, "192.0.2.2", resolution, NEXT_DAY), "bounced") == 1
            assert await figure(rediskeys.pool_ip_stats_key(2, 8, "198.51.100.1", resolution, NEXT_DAY)) == 5
        assert await figure(rediskeys.pool_stats_key(1, 7)) == 3
        assert await figure(rediskeys.pool_stats_key(2, 7)) == 0  # server 2 never counted pool 7
        assert await figure(rediskeys.ip_stats_key(2, "198.51.100.1")) == 5
        # Each bucket expires at its start plus its retention, whenever it was written
        # (this Redis has no EXPIRETIME: the TTL, give or take the second it ticks).
        minute = rediskeys.pool_stats_key(1, 7, rediskeys.MINUTE, LATE)
        expected = rediskeys.MINUTE.expires_at(LATE) - time.time()
        assert abs(await client.ttl(minute) - expected) <= 2
        hour = rediskeys.ip_stats_key(2, "198.51.100.1", rediskeys.HOUR, NEXT_DAY)
        expected = rediskeys.HOUR.expires_at(NEXT_DAY) - time.time()
        assert abs(await client.ttl(hour) - expected) <= 2
        assert await client.ttl(rediskeys.pool_ip_stats_key(1, 7, "192.0.2.1")) == -1
    finally:
        await client.aclose()


async def test_a_long_outage_keeps_every_minute_on_disk_up_to_the_journal_bound(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    addresses = [f"192.0.2.{n}" for n in range(12)]
    record = stats_journal.encode([stats_journal.COUNT, "sent", rediskeys.MINUTE.start(LATE), 7, addresses[10], 1])
    batcher = StatsBatcher(client, server_id=1, clock=Clock(LATE), journal_max_bytes=8 * len(record))
    for address in addresses:  # 8 fit in the bound, 4 are dropped
        batcher.count("sent", 7, address)
    assert batcher.metrics["counts_dropped"] == 4 and batcher.pending == 8
    try:
        assert await batcher.flush() is True

        async def sent(address: str | None, resolution=None) -> int:
            key = rediskeys.counter_key(1, 7 if address is None else None, address, resolution,
                                        LATE if resolution else None)
            return int(await client.hget(key, "sent") or 0)

        assert [await sent(None, r) for r in (None, rediskeys.DAY, rediskeys.HOUR, rediskeys.MINUTE)] == [8, 8, 8, 8]
        finest = {a: [await sent(a, r) for r in (rediskeys.DAY, rediskeys.HOUR, rediskeys.MINUTE)] for a in addresses}
        assert [finest[a] for a in addresses] == [[1, 1, 1]] * 8 + [[0, 0, 0]] * 4
        batcher.count("sent", 7, addresses[0])  # room again once flushed
        assert batcher.pending == 1 and batcher.metrics["counts_dropped"] == 4
    finally:
        await batcher.close()
        await client.aclose()


async def test_a_correction_moves_counts_on_the_buckets_of_the_original_time_once(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    try:
        delivered_at = time.time() - 3 * 86400  # delivered three days ago: its minute bucket is gone
        batcher = StatsBatcher(client, server_id=4, clock=Clock(delivered_at))
        batcher.count("delivered", 7, "192.0.2.1", 2)
        assert await batcher.flush() is True
        move = [("delivered", 7, "192.0.2.1", delivered_at, rediskeys.MINUTE, -1),
                ("bounced", 7, "192.0.2.1", delivered_at, rediskeys.MINUTE, 1)]
        assert await apply_counts_once(client, 4, "async-bounce:m1:0", move) is True
        assert await apply_counts_once(client, 4, "async-bounce:m1:0", move) is False  # the same report again

        async def figures(resolution=None) -> tuple[int, int]:
            key = rediskeys.pool_ip_stats_key(4, 7, "192.0.2.1", resolution, delivered_at if resolution else None)
            values = await client.hmget(key, "delivered", "bounced")
            return tuple(int(v or 0) for v in values)

        assert await figures() == await figures(rediskeys.DAY) == await figures(rediskeys.HOUR) == (1, 1)
        assert await figures(rediskeys.MINUTE) == (0, 0)  # not re-created
        assert not await client.exists(rediskeys.pool_stats_key(4, 7, rediskeys.MINUTE, delivered_at))
    finally:
        await client.aclose()
