"""Incremental routing at the control plane: bounded Redis, coalesced publications,
workers that follow the deltas, and reads that never wait for a publication."""

import asyncio

import redis
import redis.asyncio as aioredis

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.contract import rediskeys
from dataplane.snapshot_loader import SnapshotLoader
from tests.control_support import current_snapshot
from tests.scale_support import add_pools
from tests.support import eventually


async def test_redis_keeps_the_newest_full_snapshots_and_the_log_since_the_older(
        acme, control_plane, server, redis_url):
    sid = server.server_id
    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=sid))
    full_every = control_plane._publisher._full_every = 8  # a few compactions in a short test
    changes = 2 * full_every + 10
    for n in range(changes):
        await acme.pools.SetPoolFeedType(pb.SetPoolFeedTypeRequest(smtp_id=pool.smtp_id, feed_type=f"feed{n}"))
    await control_plane._publisher.catch_up()  # compactions are written in the background
    r = redis.Redis.from_url(redis_url)
    try:
        fulls = sorted(int(v) for v in r.hkeys(rediskeys.snapshot_full_key(sid)))
        log = [int(entry_id.split(b"-")[0]) for entry_id, _ in r.xrange(rediskeys.snapshot_changes_key(sid))]
        current = int(r.get(rediskeys.snapshot_current_key(sid)))
        assert r.keys(f"poolmta:{{srv:{sid}}}:snapshot:[0-9]*") == []  # no key per version
    finally:
        r.close()
    assert len(fulls) == rediskeys.SNAPSHOT_FULLS_KEPT and fulls[-1] <= current
    # The log holds what follows the full snapshot dropped last: at most two compactions' worth.
    assert log and max(log) == current and fulls[0] in range(min(log), current + 1)
    assert len(log) <= (rediskeys.SNAPSHOT_FULLS_KEPT + 1) * full_every
    assert current_snapshot(redis_url, sid).pool(pool.smtp_id).feed_type == f"feed{changes - 1}"


async def test_a_burst_of_pools_is_a_few_publications_and_every_worker_serves_them_all(
        make_account, control_plane, server, redis_url):
    sid = server.server_id
    clients = [(await make_account(f"burst{n}", pb.PRO))[0] for n in range(5)]
    workers = [SnapshotLoader(aioredis.Redis.from_url(redis_url), sid, f"w{n}", heartbeat_interval=0.1)
               for n in range(2)]
    for worker in workers:
        await worker.start()
    try:
        await eventually(lambda: all(w.current is not None for w in workers))
        before = control_plane._publisher.stats.publications
        created = await asyncio.gather(*(
            clients[n % 5].pools.CreatePool(pb.CreatePoolRequest(label=f"burst-{n}", server_id=sid))
            for n in range(50)))
        publications = control_plane._publisher.stats.publications - before
        assert publications < 25, publications
        version = current_snapshot(redis_url, sid).version
        await eventually(lambda: all(w.version >= version for w in workers))
        for worker in workers:
            assert {p.smtp_id for p in created} <= {p.smtp_id for p in worker.current.snapshot.pools}
    finally:
        for worker in workers:
            await worker.stop()
            await worker._redis.aclose()


async def test_a_read_answers_while_a_large_publication_is_built(make_account, control_plane, server, redis_url):
    sid = server.server_id
    reader, _ = await make_account("reader", pb.PRO)
    await reader.pools.CreatePool(pb.CreatePoolRequest(label="mine", server_id=sid))
    writer, _ = await make_account("writer", pb.PRO)
    add_pools(str(control_plane.config.db_path), sid, 4000)
    order = []

    async def create():
        await writer.pools.CreatePool(pb.CreatePoolRequest(label="big", server_id=sid))
        order.append("create")

    async def read():
        # Start once the CreatePool has begun, so the read lands during its publication.
        await asyncio.sleep(0)
        reply = await reader.pools.ListPools(pb.ListPoolsRequest())
        assert [p.label for p in reply.pools] == ["mine"]
        order.append("read")

    await asyncio.gather(create(), read())
    assert order == ["read", "create"]
    assert len(current_snapshot(redis_url, sid).pools) >= 4002
