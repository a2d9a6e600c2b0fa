"""/healthz and /readyz of a real data plane: not ready (503, `snapshot` failing)
until a routing snapshot is loaded, and sends get 503 with Retry-After meanwhile;
ready once it is; not ready (`redis` failing) while Redis is down, though the
process stays alive (/healthz 200) and ready again when Redis is back. Also the
free-disk floor: a floor above the disk's free space fails `disk`. `--http-listen none`
turns HTTP off."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import redis

from tests.dataplane_support import make_bridge, make_pool, make_snapshot, publish
from tests.rest_support import RestClient, assert_problem, basic

SERVER = 1
SECRET = "s3cret-health"


async def _ready(rest: RestClient, want: int, timeout: float = 20.0):
    """The /readyz reply once its status is `want` (AssertionError with the last one if never)."""
    reply = None
    for _ in range(int(timeout / 0.1)):
        reply = await rest.call("GET", "/readyz")
        if reply.status == want:
            return reply
        await asyncio.sleep(0.1)
    raise AssertionError(f"/readyz never answered {want}: {reply}")


async def test_readyz_follows_the_snapshot_and_redis_while_healthz_stays_up(fresh_redis, start_dataplane):
    client = redis.Redis.from_url(fresh_redis.url)
    bridge = make_bridge(1, 7, SECRET)
    plane = start_dataplane(fresh_redis.url, SERVER)
    async with aiohttp.ClientSession() as session:
        rest = RestClient(session, plane.http_port, basic(bridge.username, SECRET))
        waiting = await _ready(rest, 503)
        assert waiting.json["failing"] == ["snapshot"], waiting.json
        early = await rest.send_json({"from": "a@example.com", "to": "b@example.net", "text": "x"})
        assert_problem(early, 503)
        assert "snapshot" in early.json["detail"] and int(early.headers["Retry-After"]) > 0

        publish(client, make_snapshot(SERVER, 1, [make_pool(7, [("127.0.0.2", 1)])], [bridge]))
        ready = await _ready(rest, 200)
        assert ready.json["status"] == "ready" and ready.json["checks"]["snapshot"]["version"] == 1

        fresh_redis.kill()
        down = await _ready(rest, 503)
        assert down.json["failing"] == ["redis"], down.json
        alive = await rest.call("GET", "/healthz")
        assert alive.status == 200 and alive.json == {"status": "ok"}

        fresh_redis.start()
        await _ready(rest, 200)
        openapi = await rest.call("GET", "/openapi.json")
        assert json.loads(openapi.body)["openapi"] == "3.1.0"
    client.close()


async def test_readyz_fails_below_the_free_disk_floor(redis_client, redis_url, start_dataplane):
    publish(redis_client, make_snapshot(SERVER, 1, [make_pool(7, [("127.0.0.2", 1)])], [make_bridge(1, 7, SECRET)]))
    plane = start_dataplane(redis_url, SERVER, args=["--min-free-disk", "1000000G"])
    async with aiohttp.ClientSession() as session:
        reply = await _ready(RestClient(session, plane.http_port), 503)
        assert reply.json["failing"] == ["disk"] and "floor" in reply.json["checks"]["disk"]["detail"]


def test_http_listen_none_serves_no_http(redis_client, redis_url, start_dataplane):
    publish(redis_client, make_snapshot(SERVER, 1, [make_pool(7, [("127.0.0.2", 1)])], [make_bridge(1, 7, SECRET)]))
    plane = start_dataplane(redis_url, SERVER, args=["--http-listen", "none"])
    assert plane.http_port == 0 and " http=" not in plane.log()
