"""The spool's directory: where records live, whose they are, and the worker's API to it.

Layout of `<data_dir>/spool/server-<N>/` (all on one filesystem, so renames are atomic):

    tmp/<pid>.<id>.tmp   a record being written by worker process <pid>. Never read.
                         Removed at start (no worker runs then) and when the
                         supervisor reaps a dead worker.
    queue/<id>.msg       one complete record per accepted message, waiting for
                         the delivery engine, which owns it from here on (rewrites
                         it the same durable way to append attempts, deletes it
                         when delivery is final).
    corrupt/<id>.msg     a queue record that failed the start-up check, moved
                         aside for an operator, never deleted automatically.

Writing, rewriting and removing a record are crash safe (`durable`): a record
is in `queue/` complete, or not at all, and durably so before the client hears 250.

Message ids are 26 lowercase hex digits: 12 of milliseconds since the epoch (so
names sort by acceptance time), 8 random per worker process, 6 of a per-process
counter. They name the files and appear in the 250 reply.

Ownership: of K workers, worker i delivers exactly the records whose id's
counter is i modulo K (`owner_of`). A worker draws its counters from its own
residue class, so it owns what it accepts (handed to its delivery engine in
memory); a restarted worker i finds the same set by scanning `queue/`; with a
different K after a restart, every record still has exactly one owner.

The record's bytes are specified in `record`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from .durable import FILE_MODE, GroupFsync, fsync_dir, remove_durably, write_durably
from .record import (
    SpoolCorrupt,
    SpoolError,
    SpoolRecord,
    encode_record,
    looks_complete,
    read_record,
)

RECORD_SUFFIX = ".msg"
TEMP_SUFFIX = ".tmp"
TMP_DIR = "tmp"
QUEUE_DIR = "queue"
CORRUPT_DIR = "corrupt"
DIR_MODE = 0o750


class SpoolWriteError(SpoolError):
    """A record could not be stored durably; nothing of it is left in `queue/`."""


def owner_of(message_id: str, owners: int) -> int:
    """The index of the worker (of `owners`) that delivers this message (see the module docstring)."""
    return int(message_id[-6:], 16) % owners


def record_path(root: Path, message_id: str) -> Path:
    """Where the record of `message_id` is (or would be) in `queue/`."""
    return Path(root) / QUEUE_DIR / f"{message_id}{RECORD_SUFFIX}"


def queued_ids(root: Path) -> list[str]:
    """Ids of the records in `queue/`, oldest first."""
    queue = Path(root) / QUEUE_DIR
    try:
        names = os.listdir(queue)
    except FileNotFoundError:
        return []
    return sorted(n[: -len(RECORD_SUFFIX)] for n in names if n.endswith(RECORD_SUFFIX))


def iter_records(root: Path) -> Iterator[SpoolRecord]:
    """Every readable record in `queue/`, oldest first."""
    for message_id in queued_ids(root):
        try:
            yield read_record(record_path(root, message_id))
        except FileNotFoundError:  # consumed meanwhile
            continue


def prepare(root: Path) -> None:
    """Create the spool directories (idempotent)."""
    for sub in (TMP_DIR, QUEUE_DIR, CORRUPT_DIR):
        (Path(root) / sub).mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


def remove_temp_files(root: Path, pid: int | None = None) -> int:
    """Delete partial writes in `tmp/`: those of worker `pid`, or all when None.

    Call with None only while no worker of this spool runs. Returns how many.
    """
    tmp = Path(root) / TMP_DIR
    prefix = f"{pid}." if pid is not None else ""
    removed = 0
    try:
        names = os.listdir(tmp)
    except FileNotFoundError:
        return 0
    for name in names:
        if name.startswith(prefix):
            try:
                os.unlink(tmp / name)
                removed += 1
            except FileNotFoundError:
                pass
    return removed


LOCK_NAME = "lock"


class SpoolLocked(SpoolError):
    """Another data plane holds the spool (two would deliver the same records)."""


def lock(root: Path) -> int:
    """Take the spool's exclusive lock for this process's life (a file descriptor, to keep
    open); SpoolLocked if another process holds it. The supervisor holds it: with two
    data planes on one spool, every record would have two owners."""
    import fcntl

    prepare(root)
    fd = os.open(Path(root) / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolLocked(f"another data plane is using the spool {root}") from None
    return fd


@dataclass(frozen=True)
class RecoveryReport:
    """What `recover` found: records left queued (and their bytes), partial writes
    removed, and the ids it moved to `corrupt/`."""

    queued: int
    queued_bytes: int
    removed_partial: int
    quarantined: tuple[str, ...]


def recover(root: Path) -> RecoveryReport:
    """Start-up recovery, run while no worker of this spool runs.

    Creates the directories, deletes every partial write in `tmp/`, and moves
    `queue/` records that are not complete to `corrupt/`.
    """
    root = Path(root)
    prepare(root)
    removed = remove_temp_files(root)
    queued = 0
    size = 0
    bad: list[str] = []
    for message_id in queued_ids(root):
        path = record_path(root, message_id)
        try:
            ok = looks_complete(path)
        except OSError:
            ok = False
        if ok:
            queued += 1
            size += path.stat().st_size
        else:
            os.replace(path, root / CORRUPT_DIR / path.name)
            bad.append(message_id)
    if bad:
        fsync_dir(root / QUEUE_DIR)
        fsync_dir(root / CORRUPT_DIR)
    return RecoveryReport(queued, size, removed, tuple(bad))


def _rewrite_attempts(path: str, tmp_path: str, attempts: tuple[dict, ...], dir_sync: GroupFsync) -> None:
    """Replace the record at `path` with a copy whose attempts are `attempts`, durably."""
    record = replace(read_record(Path(path)), attempts=attempts)
    write_durably(tmp_path, path, encode_record(record), dir_sync)


def _rewrite_held(path: str, tmp_path: str, held: bool, dir_sync: GroupFsync) -> None:
    """Replace the record at `path` with a copy whose `held` flag is `held`, durably."""
    record = replace(read_record(Path(path)), held=held)
    write_durably(tmp_path, path, encode_record(record), dir_sync)


class Spool:
    """The spool as one worker process uses it (asyncio): storing accepted
    records, and the delivery engine's rewrites and removals.

    `owner`/`owners`: this worker's index and the number of workers; the ids it
    makes are ones it owns (see `owner_of`).
    """

    def __init__(self, root: Path, *, threads: int = 8, owner: int = 0, owners: int = 1) -> None:
        if not 0 <= owner < owners:
            raise ValueError(f"owner index {owner} is not in 0..{owners - 1}")
        self.root = Path(root)
        self.owner = owner
        self.owners = owners
        self._tmp = str(self.root / TMP_DIR)
        self._queue = str(self.root / QUEUE_DIR)
        self._pid = os.getpid()
        self._nonce = secrets.token_hex(4)
        self._seq = itertools.count()
        self._executor: ThreadPoolExecutor | None = None
        self._dir_sync: GroupFsync | None = None
        self._dir_fd: int | None = None
        self._threads = threads

    def open(self) -> None:
        """Create the directories and start the writer threads; before any other call."""
        prepare(self.root)
        self._dir_fd = os.open(self._queue, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="spool")
        self._dir_sync = GroupFsync(self._dir_fd)

    def close(self) -> None:
        """Wait for the writes in progress, then stop the writer threads."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def new_id(self) -> str:
        """A message id unique across workers and restarts, owned by this worker
        (see the module docstring)."""
        ms = time.time_ns() // 1_000_000
        counter = (next(self._seq) % (0x1000000 // self.owners)) * self.owners + self.owner
        return f"{ms:012x}{self._nonce}{counter:06x}"

    async def store(self, record: SpoolRecord) -> None:
        """Make `record` durable in `queue/`; SpoolWriteError if it could not be.

        Returns only after the data and the directory entry are on disk.
        """
        assert self._executor is not None and self._dir_sync is not None, "Spool.open() first"
        parts = encode_record(record)
        tmp_path = f"{self._tmp}/{self._pid}.{record.id}{TEMP_SUFFIX}"
        final_path = f"{self._queue}/{record.id}{RECORD_SUFFIX}"
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, write_durably, tmp_path, final_path, parts, self._dir_sync)
        except OSError as exc:
            raise SpoolWriteError(f"storing {final_path}: {exc.strerror or exc}") from exc

    async def remove(self, message_id: str) -> bool:
        """Delete a record whose delivery is final, durably; False if it was already gone."""
        assert self._executor is not None and self._dir_sync is not None, "Spool.open() first"
        path = f"{self._queue}/{message_id}{RECORD_SUFFIX}"
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, remove_durably, path, self._dir_sync)

    async def rewrite_attempts(self, message_id: str, attempts: tuple[dict, ...]) -> None:
        """Rewrite a record with its attempts replaced, durably (message bytes read
        back from the record itself). One call per message at a time.

        Raises SpoolWriteError, SpoolCorrupt, or FileNotFoundError.
        """
        assert self._executor is not None and self._dir_sync is not None, "Spool.open() first"
        path = f"{self._queue}/{message_id}{RECORD_SUFFIX}"
        tmp_path = f"{self._tmp}/{self._pid}.{message_id}{TEMP_SUFFIX}"
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, _rewrite_attempts, path, tmp_path, attempts, self._dir_sync)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise SpoolWriteError(f"rewriting {path}: {exc.strerror or exc}") from exc

    async def rewrite_held(self, message_id: str, held: bool) -> None:
        """Rewrite a record with its `held` flag set to `held`, durably (a hold survives
        restarts). One call per message at a time (the delivery queue's message lock).

        Raises SpoolWriteError, SpoolCorrupt, or FileNotFoundError.
        """
        assert self._executor is not None and self._dir_sync is not None, "Spool.open() first"
        path = f"{self._queue}/{message_id}{RECORD_SUFFIX}"
        tmp_path = f"{self._tmp}/{self._pid}.{message_id}{TEMP_SUFFIX}"
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, _rewrite_held, path, tmp_path, held,
                                                             self._dir_sync)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise SpoolWriteError(f"rewriting {path}: {exc.strerror or exc}") from exc

    async def read(self, message_id: str) -> SpoolRecord:
        """Read and verify a record off the event loop (FileNotFoundError, SpoolCorrupt)."""
        assert self._executor is not None, "Spool.open() first"
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, read_record, record_path(self.root, message_id))

    async def read_many(self, message_ids: list[str]) -> list[SpoolRecord | SpoolError | OSError]:
        """Read and verify several records in one trip off the event loop: for each id its
        record, or the SpoolCorrupt / OSError (FileNotFoundError: consumed meanwhile) it got."""
        assert self._executor is not None, "Spool.open() first"

        def read_all() -> list[SpoolRecord | SpoolError | OSError]:
            found: list[SpoolRecord | SpoolError | OSError] = []
            for message_id in message_ids:
                try:
                    found.append(read_record(record_path(self.root, message_id)))
                except (SpoolCorrupt, OSError) as exc:
                    found.append(exc)
            return found

        return await asyncio.get_running_loop().run_in_executor(self._executor, read_all)

    async def list_ids(self) -> list[str]:
        """Ids in `queue/`, oldest first, listed off the event loop."""
        assert self._executor is not None, "Spool.open() first"
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, queued_ids, self.root)

    def quarantine(self, message_id: str) -> None:
        """Move a damaged record to `corrupt/` for an operator."""
        try:
            os.replace(record_path(self.root, message_id), self.root / CORRUPT_DIR / f"{message_id}{RECORD_SUFFIX}")
        except FileNotFoundError:
            pass
