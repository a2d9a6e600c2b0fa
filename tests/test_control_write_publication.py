"""A write RPC's reply and its publication: the reply comes once the change is in
SQLite and its routing is in Redis (a worker's next read serves it), with nothing
else on the reply path: compactions and the prune of routing touches happen in the
background and still leave Redis and SQLite agreeing."""

from dataclasses import replace

import redis
import redis.asyncio as aioredis

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.contract import rediskeys
from control.snapshot_builder import build_snapshot
from control.store import Store
from dataplane.snapshot_loader import SnapshotLoader
from tests.support import eventually


async def _fresh_worker(redis_url: str, sid: int) -> SnapshotLoader:
    """A worker that has read Redis once, right now (no background tasks)."""
    worker = SnapshotLoader(aioredis.Redis.from_url(redis_url), sid, "fresh")
    await worker.check_current()
    await worker._redis.aclose()
    return worker


async def test_a_write_replies_once_its_change_is_durable_and_served_by_a_workers_next_read(
        acme, control_plane, server, redis_url):
    sid = server.server_id
    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=sid))
    routing = (await _fresh_worker(redis_url, sid)).current.snapshot
    assert routing.pool(pool.smtp_id) is not None

    ip = await acme.ips.ProvisionIp(pb.ProvisionIpRequest(smtp_id=pool.smtp_id, address="192.0.2.10"))
    routing = (await _fresh_worker(redis_url, sid)).current.snapshot
    assert [i.address for i in routing.pool(pool.smtp_id).ips] == [ip.address]

    await acme.pools.SetPoolHeaders(pb.SetPoolHeadersRequest(
        smtp_id=pool.smtp_id, headers=[pb.Header(name="X-Campaign", value="spring")]))
    routing = (await _fresh_worker(redis_url, sid)).current.snapshot
    assert ("X-Campaign", "spring") in [tuple(h) for h in routing.pool(pool.smtp_id).headers]

    # Committed before the reply: another connection to the system of record sees it all.
    store = Store.open(control_plane.config.db_path)
    try:
        assert replace(build_snapshot(store, sid), published_at_ms=0) == replace(routing, published_at_ms=0)
    finally:
        store.close()


async def test_compactions_in_the_background_leave_a_starting_worker_at_sqlites_routing(
        acme, control_plane, server, redis_url):
    sid = server.server_id
    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=sid))
    before = await control_plane._publisher.published_version(sid)
    full_every = control_plane._publisher._full_every = 8  # a compaction in a short test
    for n in range(full_every + 5):
        await acme.pools.SetPoolFeedType(pb.SetPoolFeedTypeRequest(smtp_id=pool.smtp_id, feed_type=f"feed{n}"))
    await control_plane._publisher.catch_up()
    r = redis.Redis.from_url(redis_url)
    try:
        fulls = sorted(int(v) for v in r.hkeys(rediskeys.snapshot_full_key(sid)))
        current = int(r.get(rediskeys.snapshot_current_key(sid)))
    finally:
        r.close()
    assert before < fulls[-1] <= current  # a compaction, in the background
    assert control_plane._publisher.stats.full_snapshots >= 2

    worker = await _fresh_worker(redis_url, sid)
    store = Store.open(control_plane.config.db_path)
    try:
        built = build_snapshot(store, sid)
    finally:
        store.close()
    assert worker.version == current
    assert replace(worker.current.snapshot, published_at_ms=0) == replace(built, published_at_ms=0)


async def test_the_background_loop_prunes_the_touches_of_what_was_published(acme, control_plane, server):
    sid = server.server_id
    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=sid))
    await acme.ips.ProvisionIp(pb.ProvisionIpRequest(smtp_id=pool.smtp_id, address="192.0.2.20"))
    store = Store.open(control_plane.config.db_path)

    def touches_left() -> int:
        with store.read() as s:
            return s._one("SELECT COUNT(*) FROM routing_touches")[0]

    try:
        await eventually(lambda: touches_left() == 0)
    finally:
        store.close()
