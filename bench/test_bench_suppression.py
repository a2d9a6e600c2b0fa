"""Benchmark the suppression-list lookup a Bridge makes for every RCPT.

Measured, against the embedded Redis over its unix socket (as `poolmta up` runs it),
in one asyncio loop, 10 sequential awaits per timed call (so the loop's own cost
per `run_until_complete` is spread thin; every variant pays it alike):

- `lookup`: `SuppressionLookup.rcpt_refusal` for an address that is not listed, the
  common case: normalise the address, one HGET, no entry;
- `refusal`: the same for a listed address: the HGET returns the entry, which is
  decoded, `suppressed` counted (in memory) and the 550 reply formatted;
- `ping`: a plain Redis PING round trip on the same client, the floor any lookup
  costs. The ratios lookup / ping and refusal / ping are printed after the table.

Fixed input: one account whose list holds 100,000 addresses (HGET is O(1); the
size shows it stays so), mixed-case RCPT addresses as clients send them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import pytest
import redis.asyncio as aioredis

from control.contract import rediskeys
from control.contract.snapshot import BridgeRoute
from control.contract.suppression import SuppressionEntry
from control.embedded_redis import EmbeddedRedis
from dataplane.stats_batcher import StatsBatcher
from dataplane.suppression import SuppressionLookup

USER_ID = 3
LISTED = 100_000
BATCH = 10
BRIDGE = BridgeRoute(bridge_id=1, user_id=USER_ID, name="promo-app", username="br-bench", secret_hash="x",
                     smtp_id=7, feed_type="", trusted_networks=())


@pytest.fixture(scope="module")
def redis_loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[asyncio.AbstractEventLoop, aioredis.Redis]]:
    """An embedded Redis holding the account's list, and a client on its own event loop."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("bench-redis"))
    server.start()
    loop = asyncio.new_event_loop()
    client = aioredis.Redis.from_url(server.url)
    entry = SuppressionEntry("bounce", 1_795_000_000_000, message_id="019b7b4f5c00a1b2c3d4000001",
                             source="delivery", detail="550 5.1.1 no such user").encode()

    async def fill() -> None:
        key = rediskeys.suppression_key(USER_ID)
        for start in range(0, LISTED, 5_000):
            await client.hset(key, mapping={f"reader{n}@example.org": entry for n in range(start, start + 5_000)})

    loop.run_until_complete(fill())
    try:
        yield loop, client
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()
        server.stop()


def batched(loop: asyncio.AbstractEventLoop, operation: Callable[[], Awaitable[object]]) -> Callable[[], object]:
    """A plain function that awaits `operation()` BATCH times in a row; the last result."""

    async def run() -> object:
        result = None
        for _ in range(BATCH):
            result = await operation()
        return result

    return lambda: loop.run_until_complete(run())


@pytest.mark.parametrize("variant", ["lookup", "refusal", "ping"])
def test_suppression_lookup(benchmark, measure, redis_loop, variant):
    benchmark.group = f"suppression per RCPT ({BATCH} sequential)"
    benchmark.extra_info["variant"] = variant
    loop, client = redis_loop
    lookup = SuppressionLookup(client, StatsBatcher(client, server_id=1))
    if variant == "ping":
        assert measure(batched(loop, client.ping)) is True
    elif variant == "lookup":
        assert measure(batched(loop, lambda: lookup.rcpt_refusal(BRIDGE, "Dana.Reader@Example.ORG"))) is None
    else:
        reply = measure(batched(loop, lambda: lookup.rcpt_refusal(BRIDGE, "Reader4242@Example.ORG")))
        assert reply.startswith("550 5.7.1 <Reader4242@Example.ORG>: recipient is on this account's suppression")
