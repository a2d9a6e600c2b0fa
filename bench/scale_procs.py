"""The scale bench's other processes (`bench/scale.py` starts them), so that the
control plane's process runs only the control plane, as in production:

    python -m bench.scale_procs workers REDIS_URL SERVER_ID ACKS_FILE
        two data-plane workers (`SnapshotLoader`s, as `python -m dataplane` runs
        them) following the server's routing; each version a worker starts serving
        is appended to ACKS_FILE as "<worker> <version> <time.monotonic()>" (the
        monotonic clock is the machine's, so the bench compares it with its own).

    python -m bench.scale_procs writes ADDRESS TOKEN REDIS_URL SERVER_ID COUNT OUT
        COUNT CreatePool then COUNT ProvisionIp RPCs, one at a time, each timed at
        the client; after each the version Redis's `current` names (the reply comes
        after the publication). OUT gets a JSON list of [rpc, start, seconds, version].

    python -m bench.scale_procs storm ADDRESS WRITER READER SERVER_ID RATE SECONDS OUT
        WRITER's CreatePool / ProvisionIp / SetPoolHeaders at RATE per second
        (open loop: each write starts on schedule, however long the others take)
        for SECONDS, while READER, on a channel of its own, calls GetPool,
        ListPools (first page) and GetPoolStats one after the other. OUT gets
        {"writes": {rpc: [seconds]}, "reads": {rpc: [seconds]}}.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

import grpc
import redis.asyncio as aioredis

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.contract import rediskeys
from dataplane.snapshot_loader import SnapshotLoader
from tests.control_support import Client

# Addresses the bench provisions: outside `tests/scale_support.add_pools`'s 10.x.
_PROVISIONED = "203.{}.{}.{}"


def _address(n: int, block: int) -> str:
    return _PROVISIONED.format(block, n // 250 % 250, 1 + n % 250)


class _ReportingLoader(SnapshotLoader):
    """A SnapshotLoader that appends each version it starts serving to a file."""

    def __init__(self, *args, report, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._report = report

    async def load(self, version: int) -> bool:
        """SnapshotLoader.load, then the version served and when, to the report."""
        swapped = await super().load(version)
        if swapped:
            self._report.write(f"{self.worker_id} {self.version} {time.monotonic()}\n")
            self._report.flush()
        return swapped


async def workers(redis_url: str, server_id: int, acks_path: str) -> None:
    """Two workers following `server_id`'s routing until SIGTERM."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    with open(acks_path, "a", encoding="ascii") as report:
        # The data plane's default heartbeat: a new version reaches them by its notice.
        loaders = [_ReportingLoader(aioredis.Redis.from_url(redis_url), server_id, f"bench-w{n}", report=report)
                   for n in range(2)]
        for loader in loaders:
            await loader.start()
        await stop.wait()
        for loader in loaders:
            await loader.stop()
            await loader._redis.aclose()


async def writes(address: str, token: str, redis_url: str, server_id: int, count: int, out: str) -> None:
    """COUNT CreatePool then COUNT ProvisionIp, timed one at a time."""
    redis = aioredis.Redis.from_url(redis_url)
    current = rediskeys.snapshot_current_key(server_id)
    samples = []
    async with grpc.aio.insecure_channel(address) as channel:
        client = Client(channel, token)
        await client.pools.ListPools(pb.ListPoolsRequest(page_size=1))  # the connection, set up untimed
        pools = []
        for n in range(count):
            start = time.monotonic()
            pools.append(await client.pools.CreatePool(pb.CreatePoolRequest(label=f"bench-{n}", server_id=server_id)))
            samples.append(["CreatePool", start, time.monotonic() - start, int(await redis.get(current))])
        for n, pool in enumerate(pools):
            start = time.monotonic()
            await client.ips.ProvisionIp(pb.ProvisionIpRequest(smtp_id=pool.smtp_id, address=_address(n, 0)))
            samples.append(["ProvisionIp", start, time.monotonic() - start, int(await redis.get(current))])
    await redis.aclose()
    with open(out, "w", encoding="ascii") as f:
        json.dump(samples, f)


async def storm(address: str, writer_token: str, reader_token: str, server_id: int, rate: float, seconds: float,
                out: str) -> None:
    """Writes at `rate` per second for `seconds`, reads back to back meanwhile."""
    result: dict[str, dict[str, list[float]]] = {"writes": {}, "reads": {}}

    async def timed(kind: str, rpc: str, call) -> None:
        start = time.monotonic()
        await call
        result[kind].setdefault(rpc, []).append(time.monotonic() - start)

    async with grpc.aio.insecure_channel(address) as write_channel, \
            grpc.aio.insecure_channel(address) as read_channel:
        writer, reader = Client(write_channel, writer_token), Client(read_channel, reader_token)
        mine = await reader.pools.CreatePool(pb.CreatePoolRequest(label="read-me", server_id=server_id))
        pools = [await writer.pools.CreatePool(pb.CreatePoolRequest(label="storm-first", server_id=server_id))]
        done = asyncio.Event()

        async def read_loop() -> None:
            calls = (
                ("GetPool", lambda: reader.pools.GetPool(pb.GetPoolRequest(smtp_id=mine.smtp_id))),
                ("ListPools", lambda: reader.pools.ListPools(pb.ListPoolsRequest(page_size=50))),
                ("GetPoolStats", lambda: reader.stats.GetPoolStats(pb.GetPoolStatsRequest(smtp_id=mine.smtp_id))),
            )
            n = 0
            while not done.is_set():
                rpc, call = calls[n % len(calls)]
                await timed("reads", rpc, call())
                n += 1
                await asyncio.sleep(0.005)  # a busy client, not a flood

        async def write(n: int) -> None:
            if n % 3 == 0:
                pool = await writer.pools.CreatePool(pb.CreatePoolRequest(label=f"storm-{n}", server_id=server_id))
                pools.append(pool)
            elif n % 3 == 1:
                await writer.ips.ProvisionIp(pb.ProvisionIpRequest(smtp_id=pools[-1].smtp_id, address=_address(n, 1)))
            else:
                await writer.pools.SetPoolHeaders(pb.SetPoolHeadersRequest(
                    smtp_id=pools[-1].smtp_id, headers=[pb.Header(name="X-Storm", value=str(n))]))

        async def write_timed(n: int) -> None:
            await timed("writes", ("CreatePool", "ProvisionIp", "SetPoolHeaders")[n % 3], write(n))

        reading = asyncio.create_task(read_loop())
        begin = time.monotonic()
        pending = []
        for n in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, begin + n / rate - time.monotonic()))
            pending.append(asyncio.create_task(write_timed(n)))
        await asyncio.gather(*pending)
        done.set()
        await reading
    with open(out, "w", encoding="ascii") as f:
        json.dump(result, f)


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "workers":
        asyncio.run(workers(args[0], int(args[1]), args[2]))
    elif command == "writes":
        asyncio.run(writes(args[0], args[1], args[2], int(args[3]), int(args[4]), args[5]))
    elif command == "storm":
        asyncio.run(storm(args[0], args[1], args[2], int(args[3]), float(args[4]), float(args[5]), args[6]))
    else:
        sys.exit(f"unknown command {command!r}: workers, writes or storm")
