"""How long Redis keeps its other clients waiting while a full routing snapshot is
written or read (issue 14: a compaction never stalls Redis).

An embedded Redis as the product runs it (AOF, `appendfsync always`); another process
PINGs it every millisecond while the main thread writes a
snapshot-sized value of random bytes (56 MB: a 50k-pool server) three ways: idle (no
write: the noise floor), in one command as before (HSET), and chunked as the publisher
does now (`publish_scripts.write_full_snapshot`); then reads it back in one GET. It
prints the PINGs' longest and p99 latency for each.

    .venv/bin/python -m bench.full_snapshot_stall [--mb 56]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import multiprocessing
import time
from pathlib import Path

import redis
import redis.asyncio as aioredis

from control import publish_scripts
from control.contract import rediskeys
from control.embedded_redis import EmbeddedRedis

SERVER = 1


def _ping_every_ms(url: str, stop, results) -> None:
    """In a process of its own (no GIL shared with the writer): PING until `stop` is
    set, then send every (start, latency) in monotonic seconds through `results`."""
    client = redis.Redis.from_url(url)
    samples = []
    while not stop.is_set():
        started = time.monotonic()
        client.ping()
        samples.append((started, time.monotonic() - started))
        time.sleep(0.001)
    client.close()
    results.send(samples)


class Pinger:
    """PINGs Redis every millisecond from another process; `latencies` gives a phase's."""

    def __init__(self, url: str):
        self._stop = multiprocessing.Event()
        self._results, sender = multiprocessing.Pipe(duplex=False)
        self._process = multiprocessing.Process(target=_ping_every_ms, args=(url, self._stop, sender), daemon=True)
        self._samples: list[tuple[float, float]] = []

    def __enter__(self) -> Pinger:
        self._process.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._samples = self._results.recv()
        self._process.join()

    def latencies(self, start: float, end: float) -> list[float]:
        """The latencies (ms, sorted) of the PINGs sent between `start` and `end`."""
        return sorted(1000 * latency for started, latency in self._samples if start <= started < end)


def _report(name: str, latencies: list[float], seconds: float) -> None:
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    print(f"{name:<28} {seconds * 1000:8.0f} ms   PINGs {len(latencies):5d}   "
          f"p99 {p99:7.1f} ms   max {latencies[-1]:7.1f} ms")


async def _phases(url: str, payload: bytes) -> list[tuple[str, float, float]]:
    client = aioredis.Redis.from_url(url)
    script = client.register_script(publish_scripts.PUBLISH_FULL_LUA)
    try:
        await client.ping()

        async def idle():
            await asyncio.sleep(1.0)

        async def one_command():
            await client.hset(rediskeys.snapshot_full_key(SERVER) + ":one-command", "1", payload)

        async def chunked():
            await publish_scripts.write_full_snapshot(client, script, SERVER, 2, payload, fulls_kept=1)

        async def read_whole():
            assert len(await client.get(rediskeys.snapshot_full_data_key(SERVER, 2))) == len(payload)

        windows = []
        for name, phase in (("idle (noise floor)", idle), ("write: one command (before)", one_command),
                            ("write: chunked (now)", chunked), ("read: one GET", read_whole)):
            started = time.monotonic()
            await phase()
            windows.append((name, started, time.monotonic()))
            await asyncio.sleep(0.2)  # apart: the PING answered last belongs to its phase
        return windows
    finally:
        await client.aclose()


def main() -> None:
    """Run the phases against a fresh embedded Redis and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=56.0, help="snapshot size in MB (56: 50k pools)")
    args = parser.parse_args()
    payload = os.urandom(int(args.mb * 1_000_000))
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp)) as server:
        print(f"{args.mb:g} MB snapshot, chunks of {rediskeys.SNAPSHOT_FULL_CHUNK_BYTES} B, "
              f"load average {os.getloadavg()[0]:.1f}")
        with Pinger(server.url) as pinger:
            time.sleep(0.2)  # the pinger connected
            windows = asyncio.run(_phases(server.url, payload))
        for name, start, end in windows:
            _report(name, pinger.latencies(start, end), end - start)


if __name__ == "__main__":
    main()
