"""Failed-AUTH throttling (issue 11 item 2), as a class against the embedded Redis:
which client a failure counts against, the count shared by several throttles (one
per worker) through one Lua script, the window, bounded Redis memory under a
concurrent burst, a success that neither counts nor clears, and the in-memory
fallback while Redis does not answer. The same across real workers over real
sockets: `tests/test_auth_throttle_workers.py`."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as aioredis

from control.contract import rediskeys
from dataplane.bridge_auth import AuthThrottle, SharedAuthThrottle, Verdict, verdict_for
from dataplane.config import AuthThrottleConfig
from dataplane.routing import client_key
from tests.support import free_port

SERVER = 1
CONFIG = AuthThrottleConfig(delay_after=2, block_after=5, window=60, base_delay=0.5, max_delay=1.5)


class Clock:
    """A settable clock (seconds), shared by the throttles of one test."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def aredis(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def _workers(aredis, clock: Clock, n: int = 2, config: AuthThrottleConfig = CONFIG) -> list[SharedAuthThrottle]:
    return [SharedAuthThrottle(aredis, SERVER, config, clock=clock) for _ in range(n)]


def test_client_key_counts_ipv4_per_address_and_ipv6_per_64():
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"  # IPv4-mapped: the IPv4 address
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:DB8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key("not an address\r\n" + "x" * 500) == "not?an?address??" + "x" * 48
    assert client_key("") == "unknown"


def test_delays_double_up_to_the_maximum_however_high_the_limit():
    config = AuthThrottleConfig(delay_after=1, block_after=100_000, base_delay=0.5, max_delay=5.0)
    assert [verdict_for(config, n, failed=True).delay for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 5.0]
    assert verdict_for(config, 99_999, failed=True) == Verdict(delay=5.0)
    assert verdict_for(config, 99_999, failed=False) == Verdict()
    assert verdict_for(config, 100_000, failed=False) == Verdict(block=True)


def test_local_throttle_delays_then_blocks_within_the_window():
    clock = Clock()
    throttle = AuthThrottle(CONFIG, clock=clock)
    verdicts = [throttle.attempt("192.0.2.9", failed=True) for _ in range(4)]
    assert [v.delay for v in verdicts] == [0.0, 0.5, 1.0, 1.5]
    assert throttle.attempt("192.0.2.9", failed=False) == Verdict()  # right credentials, under the limit
    assert throttle.attempt("192.0.2.9", failed=True).block
    assert throttle.attempt("192.0.2.9", failed=False).block  # at the limit: right credentials too
    assert throttle.attempt("192.0.2.10", failed=True) == Verdict()
    clock.now += 61
    assert throttle.attempt("192.0.2.9", failed=True) == Verdict()


def test_local_throttle_memory_is_bounded():
    throttle = AuthThrottle(AuthThrottleConfig(max_tracked_addresses=3))
    for n in range(10):
        throttle.attempt(f"192.0.2.{n}", failed=True)
    assert throttle.tracked == 3


async def test_failures_counted_by_one_worker_block_the_client_on_another(aredis):
    first, second = _workers(aredis, Clock())
    verdicts = [await (first, second)[n % 2].attempt("192.0.2.9", failed=True) for n in range(4)]
    assert [v.delay for v in verdicts] == [0.0, 0.5, 1.0, 1.5]  # the shared count, not each worker's
    assert (await first.attempt("192.0.2.9", failed=True)).block  # the 5th failure, whichever worker
    assert (await second.attempt("192.0.2.9", failed=False)).block  # right credentials, still refused
    assert (await second.attempt("192.0.2.10", failed=False)) == Verdict()  # another client is not affected
    assert (await second.attempt("198.51.100.1", failed=True)) == Verdict()
    # Counted per IPv6 /64 and as IPv4 when mapped.
    for n in range(5):
        verdict = await first.attempt(f"2001:db8:1:2::{n + 1:x}", failed=True)
    assert verdict.block and (await second.attempt("2001:db8:1:2:ffff::1", failed=False)).block
    assert (await second.attempt("2001:db8:1:3::1", failed=False)) == Verdict()
    assert (await first.attempt("::ffff:192.0.2.9", failed=False)).block
    assert first.shared and second.shared


async def test_failures_age_out_of_the_window_and_the_key_expires(aredis):
    clock = Clock()
    worker, _ = _workers(aredis, clock)
    key = rediskeys.auth_failures_key(SERVER, "192.0.2.9")
    for _ in range(5):
        await worker.attempt("192.0.2.9", failed=True)
    assert (await worker.attempt("192.0.2.9", failed=False)).block
    assert 0 < await aredis.pttl(key) <= CONFIG.window * 1000
    clock.now += CONFIG.window / 2
    assert (await worker.attempt("192.0.2.9", failed=False)).block
    clock.now += CONFIG.window / 2 + 0.001  # every failure is now older than the window
    assert (await worker.attempt("192.0.2.9", failed=True)) == Verdict()  # counts from 1 again
    assert await aredis.zcard(key) == 1


async def test_a_concurrent_burst_is_held_to_the_limit_and_redis_keeps_at_most_the_limit(aredis):
    workers = _workers(aredis, Clock(), n=4)
    verdicts = await asyncio.gather(*(workers[n % 4].attempt("192.0.2.9", failed=True) for n in range(200)))
    # Exactly block_after failures were counted (the last of them blocks); the rest were refused uncounted.
    assert sum(not v.block for v in verdicts) == CONFIG.block_after - 1
    assert await aredis.zcard(rediskeys.auth_failures_key(SERVER, "192.0.2.9")) == CONFIG.block_after
    # One key per client that failed, each expiring one window after its last failure.
    for n in range(300):
        await workers[n % 4].attempt(f"10.0.{n // 256}.{n % 256}", failed=True)
    keys = [key async for key in aredis.scan_iter(match=rediskeys.auth_failures_key(SERVER, "*"))]
    assert len(keys) == 301
    assert all(0 < ttl <= CONFIG.window * 1000 for ttl in [await aredis.pttl(key) for key in keys])


async def test_a_success_neither_counts_nor_clears_the_clients_failures(aredis):
    worker, _ = _workers(aredis, Clock())
    for _ in range(3):
        await worker.attempt("192.0.2.9", failed=True)
    for _ in range(10):
        assert (await worker.attempt("192.0.2.9", failed=False)) == Verdict()
    assert await aredis.zcard(rediskeys.auth_failures_key(SERVER, "192.0.2.9")) == 3
    assert (await worker.attempt("192.0.2.9", failed=True)).delay == 1.5  # the 4th failure


async def test_servers_are_counted_apart(aredis):
    clock = Clock()
    one = SharedAuthThrottle(aredis, 1, CONFIG, clock=clock)
    two = SharedAuthThrottle(aredis, 2, CONFIG, clock=clock)
    for _ in range(5):
        await one.attempt("192.0.2.9", failed=True)
    assert (await one.attempt("192.0.2.9", failed=False)).block
    assert (await two.attempt("192.0.2.9", failed=False)) == Verdict()


async def test_unreachable_redis_falls_back_to_counting_in_the_worker_and_logs_once(caplog):
    unreachable = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    throttle = SharedAuthThrottle(unreachable, SERVER, CONFIG, retry_after=0.0)  # tries Redis every time
    try:
        with caplog.at_level(logging.INFO, logger="poolmta.dataplane.auth"):
            verdicts = [await throttle.attempt("192.0.2.9", failed=True) for _ in range(5)]
            assert (await throttle.attempt("192.0.2.9", failed=False)).block
    finally:
        await unreachable.aclose()
    assert [v.delay for v in verdicts[:4]] == [0.0, 0.5, 1.0, 1.5] and verdicts[4].block
    assert not throttle.shared and throttle.local.tracked == 1
    fallbacks = [r for r in caplog.records if "counting failed AUTHs in this worker only" in r.getMessage()]
    assert len(fallbacks) == 1


@pytest.mark.slow
async def test_the_shared_count_resumes_when_redis_answers_again(fresh_redis, caplog):
    client = aioredis.Redis.from_url(fresh_redis.url, socket_connect_timeout=0.5)
    first = SharedAuthThrottle(client, SERVER, CONFIG, retry_after=0.0)
    second = SharedAuthThrottle(client, SERVER, CONFIG, retry_after=0.0)
    try:
        await first.attempt("192.0.2.9", failed=True)
        fresh_redis.stop()
        with caplog.at_level(logging.INFO, logger="poolmta.dataplane.auth"):
            for _ in range(5):
                await first.attempt("192.0.2.9", failed=True)
            assert (await first.attempt("192.0.2.9", failed=False)).block  # counted in the worker
            assert (await second.attempt("192.0.2.9", failed=False)) == Verdict()  # not shared meanwhile
            fresh_redis.start()
            verdict = await second.attempt("192.0.2.9", failed=True)
            assert second.shared
        # Redis kept the failure from before the outage (its AOF): this is the 2nd.
        assert verdict == Verdict(delay=0.5)
        assert [r.getMessage() for r in caplog.records if "Redis answers again" in r.getMessage()] == [
            "AUTH throttle: Redis answers again; failed AUTHs are counted for every worker"]
    finally:
        await client.aclose()
