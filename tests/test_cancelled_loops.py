"""Background loops end when cancelled even if a library call swallowed the
cancellation (`control.contract.runtime.pause`): redis-py 8's pipeline was seen
returning normally from a cancelled `execute`, and a worker's stop then waited forever."""

import asyncio

import redis.asyncio as aioredis

from control.contract import rediskeys
from control.contract.runtime import pause
from dataplane.snapshot_loader import SnapshotLoader


async def _swallowing_call(entered: asyncio.Event) -> str:
    """A call that, like the library at fault, returns normally when cancelled."""
    entered.set()
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        return "swallowed"
    return "slept"


async def test_a_loop_that_pauses_ends_at_its_next_round_after_a_swallowed_cancellation():
    entered = asyncio.Event()
    results = []

    async def loop():
        while True:
            results.append(await _swallowing_call(entered))
            await pause(0.01)

    task = asyncio.create_task(loop())
    await entered.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)
    assert done == {task} and task.cancelled()
    assert results == ["swallowed"]  # no second round


async def test_pause_waits_when_nothing_cancelled_the_task():
    loop = asyncio.get_running_loop()
    start = loop.time()
    await pause(0.05)
    assert loop.time() - start >= 0.05


class _LoaderWhoseLoadSwallowsCancellation(SnapshotLoader):
    """A real loader on a real Redis whose load, like the library at fault, returns
    normally when cancelled."""

    entered: asyncio.Event

    async def load(self, version: int) -> bool:
        self.entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass
        return False


async def test_a_snapshot_loader_stops_although_its_load_swallowed_the_cancellation(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    loader = _LoaderWhoseLoadSwallowsCancellation(client, 7, "w-stuck", heartbeat_interval=0.05)
    loader.entered = asyncio.Event()
    try:
        await loader.start()
        await client.set(rediskeys.snapshot_current_key(7), 3)  # a version for the heartbeat to load
        await asyncio.wait_for(loader.entered.wait(), 10)
        await asyncio.wait_for(loader.stop(), 10)  # TimeoutError here: the stop hung
        assert loader._tasks == []
    finally:
        await client.aclose()
