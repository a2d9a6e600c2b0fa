"""Benchmark the spool's accept path: what storing a message durably costs before
its 250, old (one file per message) against new (the segment journal), in one run.

- `spool accept`: 20 concurrent sessions (asyncio tasks, as the Bridge's sessions
  are) store 10 messages of 5 KB each, one after the other, every store awaited as
  a session awaits it before its 250: 200 messages per call. `files` is the
  one-file-per-message write the journal replaced (`spool_baseline`: temp file,
  fdatasync, rename, shared directory fsync, on 8 threads as the old `Spool` ran it);
  `journal` is `Spool.store`. The ratio journal / files is the cost per message.
- `spool accept+remove`: the same, and each message removed again after it is
  stored (the end of its delivery): unlink + directory fsync against an `F` frame.

`extra_info["frames_per_sync"]` of the journal: frames (messages, and ends) per fdatasync, what
group commit achieved under 20 sessions. The spool lives under the system's temp
directory: on a tmpfs, where fsync is free, the ratios mean nothing (see LOAD.md).
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from bench.spool_baseline import GroupFsync, remove_durably, write_durably
from dataplane import spool
from tests.test_dataplane_units import _record

SESSIONS, PER_SESSION = 20, 10
MESSAGE = b"Subject: bench\r\n\r\n" + b"x" * (5 * 1024 - 19) + b"\n"


class FileSpool:
    """The old accept path: one file per message (bench.spool_baseline)."""

    def __init__(self, root: Path) -> None:
        spool.prepare(root)
        self.root = root
        self.dir_fd = os.open(root / spool.QUEUE_DIR, os.O_RDONLY | os.O_DIRECTORY)
        self.dir_sync = GroupFsync(self.dir_fd)
        self.executor = ThreadPoolExecutor(8)

    async def store(self, record: spool.SpoolRecord) -> None:
        tmp, final = self.root / spool.TMP_DIR / f"{record.id}.tmp", spool.record_path(self.root, record.id)
        await asyncio.get_running_loop().run_in_executor(
            self.executor, write_durably, str(tmp), str(final), spool.encode_record(record), self.dir_sync)

    async def remove(self, message_id: str) -> None:
        await asyncio.get_running_loop().run_in_executor(
            self.executor, remove_durably, str(spool.record_path(self.root, message_id)), self.dir_sync)

    def close(self) -> None:
        self.executor.shutdown()
        os.close(self.dir_fd)


def _records(prefix: int) -> list[list[spool.SpoolRecord]]:
    template = _record(message=MESSAGE)
    return [[replace(template, id=f"{prefix:012x}{session:08x}{n:06x}") for n in range(PER_SESSION)]
            for session in range(SESSIONS)]


async def _sessions(store, records, remove) -> None:
    async def session(mine):
        for record in mine:
            await store.store(record)
            if remove:
                await store.remove(record.id)

    await asyncio.gather(*(session(mine) for mine in records))


@pytest.mark.parametrize("remove", [False, True], ids=["accept", "accept+remove"])
@pytest.mark.parametrize("variant", ["files", "journal"])
def test_spool_accept(benchmark, tmp_path, variant, remove):
    benchmark.group = f"spool {'accept+remove' if remove else 'accept'}, {SESSIONS} sessions x 5 KB"
    benchmark.extra_info["variant"] = variant
    rounds = iter(range(1, 1_000_000))
    loop = asyncio.new_event_loop()
    store = FileSpool(tmp_path) if variant == "files" else spool.Spool(tmp_path)
    if variant == "journal":
        store.open()
    try:
        def one_call():
            records = _records(next(rounds))
            loop.run_until_complete(_sessions(store, records, remove))

        benchmark.pedantic(one_call, rounds=1 if benchmark.disabled else 8, iterations=1, warmup_rounds=1)
        if variant == "journal":
            syncs, frames = store.syncs
            benchmark.extra_info["frames_per_sync"] = round(frames / syncs, 1)
            print(f"\n{benchmark.group}: {frames} frames in {syncs} fdatasyncs "
                  f"({frames / syncs:.1f} per fdatasync)")
    finally:
        store.close()
        loop.close()
