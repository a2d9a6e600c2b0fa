"""`Spool`: the spool as one worker process uses it (asyncio), over its own journal.

Storing a message appends its `M` frame to the worker's open segment and waits for
the writer thread's fdatasync that covers it (`journal.SegmentWriter`): one
fdatasync for every message appended while the previous one ran, whichever
session sent it. Only then does `store` return, and the client hear 250: the same
promise as the one-file-per-message spool (data durable before the reply), with
one sync per round instead of a file, a rename and a directory fsync per message.

Attempts, the hold flag and the end of a message are small frames appended the
same way (`rewrite_attempts`, `rewrite_held`, `remove`); the body is never written
again. In memory the worker keeps its `index.WriterState`: id -> where the newest
copy is and the state since. The state changes as a call is made (on the event
loop, before the await), so the order of frames in the file is the order of the
calls, and a copy made by compaction carries every state change queued before it.

Reclaim: segments go oldest first, once the oldest sealed one holds no live
message. Oldest first, because a segment's `F` frames end messages whose `M`
frames are in older segments: a newer segment removed first could bring such a
message back at the next start. So that one stuck message does not pin every
segment after it, the oldest sealed segment is *compacted* (its live messages
copied forward, state included, then it is unlinked) when less than half of it is
live, or when more than `compact_after` segments are sealed and less than half of
all their bytes are live: disk use stays within about twice the live bytes plus
`compact_after` segments. Unlinks are followed by a directory fsync before anything
newer goes, so they happen in order after a crash too.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import journal
from .directory import prepare
from .durable import fsync_dir, lock_file
from .index import CORRUPT_DIR, Entry, LoadReport, load_writer, read_entry
from .journal import JOURNAL_DIR, Location, SegmentWriter
from .record import SpoolCorrupt, SpoolError, SpoolRecord

log = logging.getLogger("poolmta.dataplane.spool")

COMPACT_AFTER = 8
# Records a compaction reads per trip to the spool's threads: a segment can hold tens
# of thousands of live records (a backlog), and reading them all at once would hold
# them all in memory.
COPY_BATCH = 256


class SpoolWriteError(SpoolError):
    """A record could not be stored durably; the message is not queued."""


class Spool:
    """A worker's spool: its journal (writer `owner`), the messages it owns (see
    `directory.owner_of`), and the asyncio calls acceptance and delivery make.

    `owner`/`owners`: this worker's index and the number of workers; the ids it makes
    are ones it owns. `segment_bytes`, `compact_after`: see the module docstring."""

    def __init__(self, root: Path, *, threads: int = 4, owner: int = 0, owners: int = 1,
                 segment_bytes: int = journal.SEGMENT_MAX_BYTES, compact_after: int = COMPACT_AFTER) -> None:
        if not 0 <= owner < owners:
            raise ValueError(f"owner index {owner} is not in 0..{owners - 1}")
        self.root = Path(root)
        self.owner = owner
        self.owners = owners
        self.segment_bytes = segment_bytes
        self.compact_after = compact_after
        self.loaded = LoadReport()
        self._journal = self.root / JOURNAL_DIR
        self._nonce = secrets.token_hex(4)
        self._seq = itertools.count()
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None
        self._writer: SegmentWriter | None = None
        self._lock_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._maintenance: asyncio.Task | None = None
        self.state = None

    # -- life -------------------------------------------------------------------

    def open(self) -> None:
        """Take this worker's journal, read it back (cutting a torn tail), and start the
        writer thread; before any other call."""
        prepare(self.root)
        self._lock_fd = lock_file(self._journal / f"w{self.owner}.lock",
                                  f"another process appends to worker {self.owner}'s spool journal", wait=5.0)
        self.state, next_seq, self.loaded = load_writer(self.root, self.owner)
        self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="spool")
        self._writer = SegmentWriter(self._journal, self.owner, next_seq, self._settle_from_thread,
                                     max_bytes=self.segment_bytes)
        self._writer.on_new_segment = self._segment_created

    def close(self) -> None:
        """Write what is queued, then stop the writer and the reader threads."""
        if self._maintenance is not None:
            self._maintenance.cancel()
            self._maintenance = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def syncs(self) -> tuple[int, int]:
        """(fdatasyncs done, frames they covered) since open: what group commit achieves."""
        return (self._writer.syncs, self._writer.frames_synced) if self._writer else (0, 0)

    def new_id(self) -> str:
        """A message id unique across workers and restarts, owned by this worker
        (see `directory`'s docstring)."""
        ms = time.time_ns() // 1_000_000
        counter = (next(self._seq) % (0x1000000 // self.owners)) * self.owners + self.owner
        return f"{ms:012x}{self._nonce}{counter:06x}"

    # -- the writer thread ------------------------------------------------------------

    def _append(self, parts: list[bytes], withdraw_id: str = "") -> asyncio.Future:
        assert self._writer is not None and self.state is not None, "Spool.open() first"
        self._loop = asyncio.get_running_loop()
        ticket = self._loop.create_future()
        self._writer.submit(ticket, parts, withdraw_id)
        return ticket

    def _settle_from_thread(self, results) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._settle, results)

    def _settle(self, results: list[tuple[asyncio.Future | None, Location | None, OSError | None]]) -> None:
        for ticket, location, error in results:
            if location is not None:
                sizes = self.state.sizes
                sizes[location.seq] = max(sizes.get(location.seq, 0), location.offset + location.length)
            if ticket is None or ticket.done():
                continue
            if error is not None:
                ticket.set_exception(error)
            else:
                ticket.set_result(location)

    def _segment_created(self, seq: int) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._maintain)

    # -- the API acceptance and delivery use -----------------------------------------------

    async def store(self, record: SpoolRecord) -> None:
        """Make `record` durable in this worker's journal; SpoolWriteError if it could not
        be. Returns only after the fdatasync covering it returned."""
        try:
            location = await self._append(journal.message_frame(record), withdraw_id=record.id)
        except OSError as exc:
            raise SpoolWriteError(f"storing {record.id}: {exc.strerror or exc}") from exc
        self.state.place(record.id, location.seq, location.offset, location.length)

    async def remove(self, message_id: str) -> bool:
        """Record that the message is final, durably; False if it was not queued. OSError
        when the end could not be written (a restart would deliver it again)."""
        if self.state.end(message_id) is None:
            return False
        await self._append(journal.final_frame(message_id))
        self._maintain()
        return True

    async def rewrite_attempts(self, message_id: str, attempts: tuple[dict, ...]) -> None:
        """Record the message's attempts (replacing the ones before), durably.
        Raises SpoolWriteError, or FileNotFoundError when it is not queued."""
        self._entry(message_id).attempts = tuple(attempts)
        await self._change(message_id, journal.attempts_frame(message_id, tuple(attempts)))

    async def rewrite_held(self, message_id: str, held: bool) -> None:
        """Record the message's hold flag, durably (a hold survives restarts).
        Raises SpoolWriteError, or FileNotFoundError when it is not queued."""
        self._entry(message_id).held = held
        await self._change(message_id, journal.held_frame(message_id, held))

    async def _change(self, message_id: str, parts: list[bytes]) -> None:
        try:
            await self._append(parts)
        except OSError as exc:
            raise SpoolWriteError(f"recording the state of {message_id}: {exc.strerror or exc}") from exc

    def _entry(self, message_id: str) -> Entry:
        assert self.state is not None, "Spool.open() first"
        entry = self.state.entries.get(message_id)
        if entry is None:
            raise FileNotFoundError(f"{message_id} is not in the spool")
        return entry

    async def read(self, message_id: str) -> SpoolRecord:
        """The message's record, verified, read off the event loop (FileNotFoundError, SpoolCorrupt)."""
        found = await self.read_many([message_id])
        if isinstance(found[0], BaseException):
            raise found[0]
        return found[0]

    async def read_many(self, message_ids: list[str]) -> list[SpoolRecord | SpoolError | OSError]:
        """Several records in one trip off the event loop: for each id its record, or the
        SpoolCorrupt / OSError (FileNotFoundError: not queued) it got."""
        assert self._executor is not None, "Spool.open() first"
        entries = [self.state.entries.get(i) for i in message_ids]
        # Copies: compaction may move an entry while the thread reads it.
        places = [None if e is None else Entry(e.seq, e.offset, e.length, e.attempts, e.held) for e in entries]

        def read_all() -> list[SpoolRecord | SpoolError | OSError]:
            found: list[SpoolRecord | SpoolError | OSError] = []
            for message_id, entry in zip(message_ids, places, strict=True):
                try:
                    if entry is None:
                        raise FileNotFoundError(f"{message_id} is not in the spool")
                    found.append(read_entry(self.root, self.owner, entry, message_id))
                except (SpoolCorrupt, OSError) as exc:
                    found.append(exc)
            return found

        found = await asyncio.get_running_loop().run_in_executor(self._executor, read_all)
        for index, result in enumerate(found):
            moved = self.state.entries.get(message_ids[index])
            if isinstance(result, FileNotFoundError) and moved is not None and moved.seq != places[index].seq:
                found[index] = (await self.read_many([message_ids[index]]))[0]  # copied forward meanwhile
        return found

    async def list_ids(self) -> list[str]:
        """Ids of the messages queued in this worker's journal, oldest first."""
        assert self.state is not None, "Spool.open() first"
        return sorted(self.state.entries)

    def quarantine(self, message_id: str) -> None:
        """Take a damaged message out of the queue: its frame's bytes are copied to
        `corrupt/` for an operator, and its end is appended (not awaited)."""
        entry = self.state.end(message_id)
        if entry is None:
            return
        path = self._journal / journal.segment_name(self.owner, entry.seq)
        try:
            with open(path, "rb") as f:
                data = os.pread(f.fileno(), entry.length, entry.offset)
            (self.root / CORRUPT_DIR / f"{message_id}.frame").write_bytes(data)
        except OSError as exc:
            log.error("spool: cannot copy the damaged record of %s aside: %s", message_id, exc)
        self._append(journal.final_frame(message_id)).add_done_callback(_ignore_result)

    # -- reclaim and compaction ---------------------------------------------------------------

    async def maintained(self) -> None:
        """Wait for the reclaim (and compaction) under way, if any, to finish."""
        while self._maintenance is not None and not self._maintenance.done():
            await asyncio.shield(self._maintenance)

    def _maintain(self) -> None:
        if self._maintenance is None or self._maintenance.done():
            self._maintenance = asyncio.get_running_loop().create_task(self._reclaim())

    def _sealed(self) -> list[int]:
        writer = self._writer
        current = writer.seq if writer is not None and writer._fd is not None else None
        return sorted(seq for seq in self.state.sizes if seq != current)

    async def _reclaim(self) -> None:
        """Unlink the oldest sealed segments with nothing live, compacting the oldest one first
        when the module docstring's rule says so."""
        loop = asyncio.get_running_loop()
        try:
            while sealed := self._sealed():
                oldest = sealed[0]
                state = self.state
                if state.live[oldest] > 0:
                    if not self._compactable(sealed):
                        return
                    await self._copy_forward(oldest)
                    if state.live[oldest] > 0:
                        return  # a copy failed: try again after the next removal
                path = self._journal / journal.segment_name(self.owner, oldest)
                await loop.run_in_executor(self._executor, _unlink_durably, path)
                for table in (state.sizes, state.live, state.live_bytes):
                    table.pop(oldest, None)
        except OSError as exc:
            log.error("spool: cannot reclaim a journal segment: %s", exc)

    def _compactable(self, sealed: list[int]) -> bool:
        state = self.state
        oldest = sealed[0]
        if state.live_bytes[oldest] * 2 < state.sizes[oldest]:
            return True
        total = sum(state.sizes[s] for s in sealed)
        live = sum(state.live_bytes[s] for s in sealed)
        return len(sealed) > self.compact_after and live * 2 < total

    async def _copy_forward(self, seq: int) -> None:
        ids = [i for i, e in self.state.entries.items() if e.seq == seq]
        for start in range(0, len(ids), COPY_BATCH):
            await self._copy_records(seq, ids[start:start + COPY_BATCH])
        log.info("spool: compacted journal segment %d (%d live message(s) copied forward)", seq, len(ids))

    async def _copy_records(self, seq: int, ids: list[str]) -> None:
        """Copy the records `ids` still in segment `seq` to the segment written now."""
        for message_id, record in zip(ids, await self.read_many(ids), strict=True):
            entry = self.state.entries.get(message_id)
            if entry is None or entry.seq != seq:
                continue  # final or moved meanwhile
            if isinstance(record, SpoolCorrupt):
                log.error("spool: record %s is damaged (%s); moved to %s/", message_id, record, CORRUPT_DIR)
                self.quarantine(message_id)
                continue
            if isinstance(record, BaseException):
                raise record
            # Built from the state now, with no await before the append: nothing queued
            # after it can be older than what it carries.
            location = await self._append(journal.message_frame(entry.apply(record)))
            if self.state.entries.get(message_id) is entry:
                self.state.move(entry, location.seq, location.offset, location.length)


def _unlink_durably(path: Path) -> None:
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _ignore_result(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a failed end is logged by nobody, retried by the scan
