"""Benchmark what authenticating a REST request costs (`RestBridge.authenticate`).

SMTP checks a Bridge's credentials once per connection; the REST Bridge on every
request. Measured against the embedded Redis over its unix socket (as `poolmta up`
runs it), in one asyncio loop, 10 sequential requests' worth per timed call:

- `throttle`: the check as every request made it before proven credentials: the
  secret against the snapshot (one SHA-256), then the shared AUTH throttle's Lua
  script (`SharedAuthThrottle.attempt`, one round trip to Redis);
- `proven`: the check of a request whose client proved the same credentials within
  the last `bridge_auth.PROVEN_FOR` seconds: the SHA-256, then `ProvenCredentials`
  (a dict lookup), no round trip;
- `ping`: a plain Redis PING round trip on the same client, the floor of any round trip.

The ratio throttle / proven (printed after the table) is what proven credentials
save per request; failed attempts still take the `throttle` path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from control.contract.secrets import hash_secret
from control.contract.snapshot import BridgeRoute, Snapshot
from control.embedded_redis import EmbeddedRedis
from dataplane.bridge_auth import (
    ProvenCredentials,
    SharedAuthThrottle,
    check_credentials,
)
from dataplane.config import AuthThrottleConfig
from dataplane.routing import Routing

SECRET = "bench-bridge-s3cret-of-43-characters-xxxxx"
CLIENT = "192.0.2.10"
BATCH = 10
BRIDGE = BridgeRoute(bridge_id=1, user_id=3, name="promo-app", username="br-bench", secret_hash=hash_secret(SECRET),
                     smtp_id=7, feed_type="", trusted_networks=())
ROUTING = Routing(Snapshot(server_id=1, version=1, hostname="mta.bench", zone="US-1", pools=(), bridges=(BRIDGE,),
                           published_at_ms=0))


@pytest.fixture(scope="module")
def loop_and_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[asyncio.AbstractEventLoop,
                                                                                 aioredis.Redis]]:
    """An embedded Redis and a client on its own event loop."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("bench-redis"))
    server.start()
    loop = asyncio.new_event_loop()
    client = aioredis.Redis.from_url(server.url)
    try:
        yield loop, client
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()
        server.stop()


@pytest.mark.parametrize("variant", ["throttle", "proven", "ping"])
def test_rest_request_authentication(benchmark, measure, loop_and_client, variant):
    benchmark.group = f"rest auth per request ({BATCH} sequential)"
    benchmark.extra_info["variant"] = variant
    loop, client = loop_and_client
    throttle = SharedAuthThrottle(client, 1, AuthThrottleConfig())
    proven = ProvenCredentials()
    proven.remember(CLIENT, BRIDGE)

    async def by_throttle() -> BridgeRoute | None:
        bridge = check_credentials(ROUTING, BRIDGE.username.encode(), SECRET.encode())
        verdict = await throttle.attempt(CLIENT, failed=bridge is None)
        return bridge if not verdict.block else None

    async def by_proof() -> BridgeRoute | None:
        bridge = check_credentials(ROUTING, BRIDGE.username.encode(), SECRET.encode())
        return bridge if bridge is not None and proven.proven(CLIENT, bridge) else None

    operation = {"throttle": by_throttle, "proven": by_proof, "ping": client.ping}[variant]

    async def run() -> object:
        result = None
        for _ in range(BATCH):
            result = await operation()
        return result

    result = measure(lambda: loop.run_until_complete(run()))
    assert result is True if variant == "ping" else result == BRIDGE
    assert throttle.shared  # counted in Redis, not in the fallback
