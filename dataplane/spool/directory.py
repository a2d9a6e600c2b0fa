"""The durable spool: one file per accepted message, fsynced before the client hears 250.

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

Writing a record (crash safe): write `tmp/…` with O_EXCL, fdatasync it, rename it
to `queue/<id>.msg`, fsync `queue/`, and only then answer 250. A crash at any
point leaves either no `queue/` entry (the client got no 250 and retries) or a
complete one. Concurrent messages share the directory fsync (group commit): one
fsync covers every rename done before it started.

Message ids are 26 lowercase hex digits: 12 of milliseconds since the epoch (so
names sort by acceptance time), 8 random per worker process, 6 of a per-process
counter. They name the files and appear in the 250 reply.

Ownership: of K workers, worker i delivers exactly the records whose id's
counter is i modulo K (`owner_of`). A worker draws its counters from its own
residue class, so it owns what it accepts (handed to its delivery engine in
memory); a restarted worker i finds the same set by scanning `queue/`; with a
different K after a restart, every record still has exactly one owner.

Record format (`queue/<id>.msg`), big-endian integers:

    offset 0         8 bytes   magic b"PMTASPL1" (format version 1)
    8                4 bytes   M, length of the metadata
    12               M bytes   metadata, a msgpack map (SpoolRecord fields below)
    12+M             8 bytes   B, length of the message
    20+M             B bytes   the stamped message: the client's DATA after
                               dot-unstuffing, with the Received trace header and the
                               injected headers at the top; exactly what delivery sends
    20+M+B           4 bytes   CRC-32 (zlib) of bytes 0 .. 20+M+B

Metadata keys: schema (1), id, received_ms, server_id, snapshot_version, worker,
client_address, client_helo, tls, auth ("auth" | "trusted"), bridge_id,
bridge_username, user_id, smtp_id, pool (internal name), ip (chosen source
address), ip_hostname (its HELO name), feed_type, zone, mail_from, rcpt_tos,
mail_options, smtputf8, attempts (list of maps appended by the delivery engine,
one per recipient per attempt: at_ms, rcpt, outcome ("delivered" | "bounced" |
"deferred"), code, text (the reply), ip (the source IP used), mx (the server
that answered, "" if none), attempt (1, 2, ... for that recipient); empty at
acceptance). A recipient with a delivered or bounced entry is final.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import msgpack

MAGIC = b"PMTASPL1"
SCHEMA = 1
RECORD_SUFFIX = ".msg"
TEMP_SUFFIX = ".tmp"
TMP_DIR = "tmp"
QUEUE_DIR = "queue"
CORRUPT_DIR = "corrupt"
DIR_MODE = 0o750
FILE_MODE = 0o640

_META_LEN = struct.Struct(">I")
_BODY_LEN = struct.Struct(">Q")
_CRC = struct.Struct(">I")
_HEAD = len(MAGIC) + _META_LEN.size


class SpoolError(Exception):
    """Base of spool errors."""


class SpoolWriteError(SpoolError):
    """A record could not be stored durably; nothing of it is left in `queue/`."""


class SpoolCorrupt(SpoolError):
    """Bytes that are not a complete, intact spool record."""


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One accepted message: its envelope, routing decision and stamped bytes."""

    id: str
    received_ms: int
    server_id: int
    snapshot_version: int
    worker: str
    client_address: str
    client_helo: str
    tls: bool
    auth: str  # "auth" (SMTP AUTH) | "trusted" (bound by client network)
    bridge_id: int
    bridge_username: str
    user_id: int
    smtp_id: int
    pool: str  # internal name, as stamped in x-virtual-mta
    ip: str
    ip_hostname: str
    feed_type: str
    zone: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    mail_options: tuple[str, ...]
    smtputf8: bool
    message: bytes = field(repr=False)
    attempts: tuple[dict, ...] = ()


_META_FIELDS = tuple(f.name for f in fields(SpoolRecord) if f.name != "message")


def encode_record(record: SpoolRecord) -> list[bytes]:
    """The record's file content as a list of byte strings (written with one writev)."""
    meta = {name: getattr(record, name) for name in _META_FIELDS}  # not asdict: no deep copies
    meta["schema"] = SCHEMA
    message = record.message
    packed = msgpack.packb(meta, use_bin_type=True)
    head = MAGIC + _META_LEN.pack(len(packed))
    body_len = _BODY_LEN.pack(len(message))
    crc = zlib.crc32(head)
    crc = zlib.crc32(packed, crc)
    crc = zlib.crc32(body_len, crc)
    crc = zlib.crc32(message, crc)
    return [head, packed, body_len, message, _CRC.pack(crc)]


def decode_record(data: bytes) -> SpoolRecord:
    """Parse a record file's bytes; SpoolCorrupt when truncated, damaged or unknown."""
    view = memoryview(data)
    if len(view) < _HEAD or bytes(view[: len(MAGIC)]) != MAGIC:
        raise SpoolCorrupt("not a poolmta spool record (bad magic)")
    (meta_len,) = _META_LEN.unpack_from(view, len(MAGIC))
    body_at = _HEAD + meta_len + _BODY_LEN.size
    if len(view) < body_at:
        raise SpoolCorrupt("record truncated in its metadata")
    (body_len,) = _BODY_LEN.unpack_from(view, _HEAD + meta_len)
    end = body_at + body_len
    if len(view) != end + _CRC.size:
        raise SpoolCorrupt(f"record is {len(view)} bytes, its lengths say {end + _CRC.size}")
    (crc,) = _CRC.unpack_from(view, end)
    if zlib.crc32(view[:end]) != crc:
        raise SpoolCorrupt("record checksum mismatch")
    try:
        meta = msgpack.unpackb(view[_HEAD : _HEAD + meta_len], raw=False)
        if meta.pop("schema") != SCHEMA:
            raise SpoolCorrupt("record schema is not supported")
        meta["rcpt_tos"] = tuple(meta["rcpt_tos"])
        meta["mail_options"] = tuple(meta["mail_options"])
        meta["attempts"] = tuple(meta["attempts"])
        return SpoolRecord(message=bytes(view[body_at:end]), **meta)
    except SpoolCorrupt:
        raise
    except Exception as exc:  # msgpack and the dataclass raise several unrelated types
        raise SpoolCorrupt(f"record metadata is malformed: {exc!r}") from None


def read_record(path: Path) -> SpoolRecord:
    """Read and verify one record file."""
    return decode_record(Path(path).read_bytes())


def owner_of(message_id: str, owners: int) -> int:
    """The index of the worker (of `owners`) that delivers this message (see the module docstring)."""
    return int(message_id[-6:], 16) % owners


def record_path(root: Path, message_id: str) -> Path:
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
    queued: int
    queued_bytes: int
    removed_partial: int
    quarantined: tuple[str, ...]


def _looks_complete(path: Path) -> bool:
    """Cheap start-up check: magic and length fields agree with the file size.

    A full checksum check reads every byte; the delivery engine does it when it
    reads the record. A record that got into `queue/` was fsynced before its
    rename, so this catches only damage from outside.
    """
    with open(path, "rb") as f:
        head = f.read(_HEAD)
        if len(head) < _HEAD or head[: len(MAGIC)] != MAGIC:
            return False
        (meta_len,) = _META_LEN.unpack_from(head, len(MAGIC))
        f.seek(_HEAD + meta_len)
        raw = f.read(_BODY_LEN.size)
        if len(raw) < _BODY_LEN.size:
            return False
        (body_len,) = _BODY_LEN.unpack(raw)
        size = os.fstat(f.fileno()).st_size
    return size == _HEAD + meta_len + _BODY_LEN.size + body_len + _CRC.size


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
            ok = _looks_complete(path)
        except OSError:
            ok = False
        if ok:
            queued += 1
            size += path.stat().st_size
        else:
            os.replace(path, root / CORRUPT_DIR / path.name)
            bad.append(message_id)
    if bad:
        _fsync_dir(root / QUEUE_DIR)
        _fsync_dir(root / CORRUPT_DIR)
    return RecoveryReport(queued, size, removed, tuple(bad))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _GroupFsync:
    """Group commit of one directory's fsync, for the writer threads.

    A caller needs an fsync that *started* after its rename. Fsyncs run one at a
    time and are numbered; a caller arriving while number N runs waits for N+1,
    which the first caller to find none running performs for everyone waiting.
    """

    _KEEP_RESULTS = 64

    def __init__(self, dir_fd: int) -> None:
        self._fd = dir_fd
        self._cond = threading.Condition()
        self._started = 0  # number of the newest fsync started
        self._finished = 0  # number of the newest fsync finished
        self._running = False
        self._errors: dict[int, OSError] = {}

    def sync(self) -> None:
        """Return once an fsync that started after this call has finished; OSError if it failed."""
        with self._cond:
            ticket = self._started + 1
            while self._finished < ticket:
                if not self._running:
                    self._running = True
                    self._started = number = self._started + 1
                    break
                self._cond.wait()
            else:
                self._raise_if_failed(ticket)
                return
        error = None
        try:
            os.fsync(self._fd)
        except OSError as exc:
            error = exc
        with self._cond:
            self._running = False
            self._finished = number
            if error is not None:
                self._errors[number] = error
                for old in [n for n in self._errors if n <= number - self._KEEP_RESULTS]:
                    del self._errors[old]
            self._cond.notify_all()
            self._raise_if_failed(ticket)

    def _raise_if_failed(self, ticket: int) -> None:
        error = self._errors.get(ticket)
        if error is not None:
            raise error


def _write_durably(tmp_path: str, final_path: str, parts: list[bytes], dir_sync: _GroupFsync) -> None:
    """Write `parts` to tmp_path, fdatasync, rename to final_path, fsync the directory
    (group commit). On any failure nothing is left at either path, and OSError propagates."""
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            total = sum(len(p) for p in parts)
            written = os.writev(fd, parts)
            if written < total:  # a short write: finish it the slow way
                rest = memoryview(b"".join(parts))[written:]
                while rest:
                    rest = rest[os.write(fd, rest) :]
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.rename(tmp_path, final_path)
    except BaseException:
        _unlink_quietly(tmp_path)
        raise
    try:
        dir_sync.sync()
    except BaseException:
        # The rename may not be durable: take it back, so an error means "not queued".
        _unlink_quietly(final_path)
        raise


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _remove_durably(path: str, dir_sync: _GroupFsync) -> bool:
    """Unlink `path` and fsync its directory (group commit); False if it was not there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    dir_sync.sync()
    return True


def _rewrite_attempts(path: str, tmp_path: str, attempts: tuple[dict, ...], dir_sync: _GroupFsync) -> None:
    """Replace the record at `path` with a copy whose attempts are `attempts`, durably."""
    record = replace(read_record(Path(path)), attempts=attempts)
    _write_durably(tmp_path, path, encode_record(record), dir_sync)


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
        self._dir_sync: _GroupFsync | None = None
        self._dir_fd: int | None = None
        self._threads = threads

    def open(self) -> None:
        prepare(self.root)
        self._dir_fd = os.open(self._queue, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="spool")
        self._dir_sync = _GroupFsync(self._dir_fd)

    def close(self) -> None:
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
            await loop.run_in_executor(self._executor, _write_durably, tmp_path, final_path, parts, self._dir_sync)
        except OSError as exc:
            raise SpoolWriteError(f"storing {final_path}: {exc.strerror or exc}") from exc

    async def remove(self, message_id: str) -> bool:
        """Delete a record whose delivery is final, durably; False if it was already gone."""
        assert self._executor is not None and self._dir_sync is not None, "Spool.open() first"
        path = f"{self._queue}/{message_id}{RECORD_SUFFIX}"
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, _remove_durably, path, self._dir_sync)

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
