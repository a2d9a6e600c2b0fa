"""Full snapshots written in chunks (issue 14: a compaction never stalls Redis): each
version in a data key of its own, appended to a staging key one command per chunk and
renamed in place; workers and `current_snapshot` read it back whole, still read the
older form (the snapshot in the hash itself), and Redis keeps no dropped version's key
for long."""

import redis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.contract import rediskeys, snapshot
from dataplane.snapshot_loader import SnapshotLoader
from tests.control_support import current_snapshot
from tests.scale_support import add_pools


def _routing_keys(r: redis.Redis, sid: int) -> set[bytes]:
    return set(r.keys(f"poolmta:{{srv:{sid}}}:snapshot:*"))


async def _worker_snapshot(redis_url: str, sid: int) -> snapshot.Snapshot:
    """The routing a worker starting now serves."""
    worker = SnapshotLoader(aioredis.Redis.from_url(redis_url), sid, "w-fresh", heartbeat_interval=0.1)
    await worker.start()
    try:
        return worker.current.snapshot
    finally:
        await worker.stop()
        await worker._redis.aclose()


async def test_a_full_snapshot_written_in_many_chunks_reads_back_whole(acme, control_plane, server, redis_url):
    sid = server.server_id
    add_pools(str(control_plane.config.db_path), sid, 30)
    await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=sid))
    publisher = control_plane._publisher
    publisher._full_chunk_bytes = 64  # hundreds of chunks
    version = await publisher.publish(sid, full=True)
    r = redis.Redis.from_url(redis_url)
    try:
        marker = rediskeys.SNAPSHOT_FULL_IN_DATA_KEY
        assert r.hgetall(rediskeys.snapshot_full_key(sid)) == {str(version).encode(): marker}
        data_key = rediskeys.snapshot_full_data_key(sid, version)
        assert r.strlen(data_key) > 100 * 64 and r.ttl(data_key) == -1  # kept, not expiring like its staging key
        assert not r.keys(f"poolmta:{{srv:{sid}}}:snapshot:staging:*")
        whole = snapshot.decode(r.get(data_key))
    finally:
        r.close()
    assert len(whole.pools) > 30  # the 30 added, the one created (and the shared pool)
    assert current_snapshot(redis_url, sid) == whole
    assert await _worker_snapshot(redis_url, sid) == whole


async def test_a_staging_key_left_by_a_write_cut_short_is_ignored_and_expires(acme, control_plane, server, redis_url):
    sid = server.server_id
    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=sid))
    publisher = control_plane._publisher
    version = await publisher.publish(sid, full=True)
    r = redis.Redis.from_url(redis_url)
    try:
        # What a control plane killed between two chunks of the next version leaves behind.
        staging = rediskeys.snapshot_full_staging_key(sid, version + 1, "cut-short")
        r.set(staging, b"\x85half a snapshot", ex=rediskeys.SNAPSHOT_FULL_STAGING_TTL_SECONDS)
        routing = await _worker_snapshot(redis_url, sid)
        assert routing.version == version and routing.pool(pool.smtp_id) is not None
        # The publish script refuses a staging key that is gone, and changes nothing.
        before = r.hgetall(rediskeys.snapshot_full_key(sid)), r.get(rediskeys.snapshot_current_key(sid))
        try:
            await publisher._full_script(
                keys=[rediskeys.snapshot_full_key(sid), rediskeys.snapshot_current_key(sid),
                      rediskeys.snapshot_changes_key(sid),
                      rediskeys.snapshot_full_staging_key(sid, version + 1, "gone"),
                      rediskeys.snapshot_full_data_key(sid, version + 1)],
                args=[version + 1, rediskeys.SNAPSHOT_FULL_IN_DATA_KEY, rediskeys.snapshot_channel(sid), 1,
                      rediskeys.snapshot_full_data_prefix(sid)])
        except ResponseError as exc:
            assert "staging key" in str(exc)
        else:
            raise AssertionError("published a full snapshot without its data")
        assert (r.hgetall(rediskeys.snapshot_full_key(sid)), r.get(rediskeys.snapshot_current_key(sid))) == before
        assert 0 < r.ttl(staging) <= rediskeys.SNAPSHOT_FULL_STAGING_TTL_SECONDS
        r.pexpire(staging, 1)  # its expiry, come early
        await publisher.publish(sid, full=True)
        assert not r.keys(f"poolmta:{{srv:{sid}}}:snapshot:staging:*")
    finally:
        r.close()
    assert current_snapshot(redis_url, sid).pool(pool.smtp_id) is not None


async def test_a_full_snapshot_of_the_older_form_still_bootstraps_a_worker(acme, control_plane, server, redis_url):
    sid = server.server_id
    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=sid))
    version = await control_plane._publisher.publish(sid, full=True)
    r = redis.Redis.from_url(redis_url)
    try:
        # Redis as a release before chunked writes left it: the snapshot in the hash itself.
        data_key = rediskeys.snapshot_full_data_key(sid, version)
        r.hset(rediskeys.snapshot_full_key(sid), str(version), r.get(data_key))
        r.delete(data_key)
        routing = current_snapshot(redis_url, sid)
        assert routing.version == version and routing.pool(pool.smtp_id) is not None
        assert await _worker_snapshot(redis_url, sid) == routing
        # The next full snapshot takes its place: the older form is dropped with its version.
        await acme.pools.SetPoolFeedType(pb.SetPoolFeedTypeRequest(smtp_id=pool.smtp_id, feed_type="news"))
        newer = await control_plane._publisher.publish(sid, full=True)
        marker = rediskeys.SNAPSHOT_FULL_IN_DATA_KEY
        assert r.hgetall(rediskeys.snapshot_full_key(sid)) == {str(newer).encode(): marker}
    finally:
        r.close()
    assert current_snapshot(redis_url, sid).pool(pool.smtp_id).feed_type == "news"


async def test_many_compactions_leave_only_the_kept_versions_keys_for_long(acme, control_plane, server, redis_url):
    sid = server.server_id
    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=sid))
    publisher = control_plane._publisher
    publisher._full_every = 3
    publisher._full_chunk_bytes = 200
    for n in range(40):
        await acme.pools.SetPoolFeedType(pb.SetPoolFeedTypeRequest(smtp_id=pool.smtp_id, feed_type=f"feed{n}"))
        await publisher.catch_up()  # each compaction written before the next change
    assert publisher.stats.full_snapshots > 10
    r = redis.Redis.from_url(redis_url)
    try:
        fulls = [int(v) for v in r.hkeys(rediskeys.snapshot_full_key(sid))]
        assert len(fulls) == rediskeys.SNAPSHOT_FULLS_KEPT
        expected = {rediskeys.snapshot_full_key(sid), rediskeys.snapshot_changes_key(sid),
                    rediskeys.snapshot_current_key(sid), *(rediskeys.snapshot_full_data_key(sid, v) for v in fulls)}
        dropped = _routing_keys(r, sid) - {key.encode() for key in expected}
        # The dropped versions' data keys went with their hash fields: nothing else is left.
        assert dropped == set()
    finally:
        r.close()
    assert current_snapshot(redis_url, sid).pool(pool.smtp_id).feed_type == "feed39"
    assert (await _worker_snapshot(redis_url, sid)).pool(pool.smtp_id).feed_type == "feed39"


async def test_a_snapshot_of_a_few_chunks_is_written_whole_and_holds_no_spare_room(acme, control_plane, server,
                                                                                   redis_url):
    sid = server.server_id
    add_pools(str(control_plane.config.db_path), sid, 30)
    await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=sid))
    publisher = control_plane._publisher
    r = redis.Redis.from_url(redis_url)
    try:
        size = r.strlen(rediskeys.snapshot_full_data_key(sid, await publisher.publish(sid, full=True)))
        publisher._full_chunk_bytes = size // 3 + 1  # three chunks: under SNAPSHOT_FULL_ONE_COMMAND_CHUNKS
        version = await publisher.publish(sid, full=True)
        data_key = rediskeys.snapshot_full_data_key(sid, version)
        # Appended, the string would keep as much spare room again as it holds.
        assert r.strlen(data_key) == size and r.memory_usage(data_key, samples=0) < size + 1024
    finally:
        r.close()
    assert current_snapshot(redis_url, sid).version == version
