"""The stats journal: every count, delivery event, message index entry and
suppression a worker makes, on disk before anything depends on it, until Redis
has it.

Layout of `<data_dir>/stats-journal/server-<N>/` (0700; files 0600):

    <token>.lock          held (flock) by the live worker whose token it is
    <token>.<seq>.log     a segment: records appended in order; seq 8 digits

A worker draws a fresh random token at start. It appends to one current segment;
the stats batcher seals it (at most every flush interval, or when it holds
`segment_max_items` events, index entries and suppressions or
`segment_max_bytes`: then the journal seals it itself) and applies sealed segments
to Redis oldest first, deleting each once Redis acknowledged it. The segment's
name (`<token>.<seq>`) is the id of its counts' batch marker
(`rediskeys.stats_batch_marker_key`, set NX by the counts script), so a segment
applied twice (its reply lost, or replayed after a crash between the apply and
the delete) counts once; its events, index entries and suppressions are
idempotent on their own (see `stats_batcher`).

Why a plain `os.write` and no fsync: a record is written (one write on an
O_APPEND descriptor, so records never interleave) before the 250 or the spool
update it accounts for, and a killed process (even SIGKILL) leaves what it wrote
in the page cache, which the kernel writes back. Only a power loss or kernel
crash can lose the last records not written back yet (by default up to about 30
seconds of counts; the spool, fsynced, still has every message).

Ownership: a segment belongs to the worker holding its token's lock. A lock
nobody holds (its worker died: the kernel drops an flock with the process) is
claimed by the first worker whose non-blocking flock on it succeeds; that worker
applies the segments and deletes the lock file last, so two workers never replay
the same journal. Segments whose lock file is missing are claimed by creating it
(O_EXCL: one creator wins).

Records are framed `<u32 length><u32 crc32><msgpack payload>`; a reader stops at
the first short or damaged frame: a write cut short by a crash (the torn last
record) never reached a 250, and nothing after it can be trusted.

Bound: a worker's own segments take at most `max_bytes` on disk; past it, new
records are refused (the caller counts them dropped) and it is logged, once per
episode, until a flush makes room.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import struct
import threading
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from control.contract.file_modes import PRIVATE_FILE_MODE, private_dir

log = logging.getLogger("poolmta.dataplane.stats")

LOCK_SUFFIX = ".lock"
SEGMENT_SUFFIX = ".log"
_FRAME = struct.Struct("<II")

# Record kinds (the first element of each record).
COUNT, EVENT, INDEX, SUPPRESSION = "c", "e", "i", "s"


@dataclass
class Segment:
    """One sealed (or current) segment file and what it holds."""

    path: Path
    counts: int = 0
    items: int = 0  # events, index entries and suppressions
    events: int = 0
    index: int = 0
    suppressions: int = 0
    size: int = 0
    own: bool = True

    @property
    def batch_id(self) -> str:
        """The id of its counts' batch marker: `<token>.<seq>`, stable across replays."""
        return self.path.name[: -len(SEGMENT_SUFFIX)]

    def note(self, record: list) -> None:
        kind = record[0]
        if kind == COUNT:
            self.counts += record[-1]
            return
        self.items += 1
        if kind == EVENT:
            self.events += 1
        elif kind == INDEX:
            self.index += 1
        else:
            self.suppressions += 1


@dataclass
class SegmentRecords:
    """The records of a segment, by kind, in order."""

    counts: list[tuple[str, int, int, str, int]] = field(default_factory=list)  # field, minute, pool, IP, n
    events: list[tuple[str, str]] = field(default_factory=list)  # message id, JSON
    index: list[tuple[str, str]] = field(default_factory=list)  # index key, message id
    suppressions: list[tuple[int, str, str]] = field(default_factory=list)  # account, address, entry
    torn: bool = False


def encode(record: list) -> bytes:
    """One framed record."""
    payload = msgpack.packb(record, use_bin_type=True)
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def decode_all(data: bytes) -> tuple[list[list], bool]:
    """The records framed in `data`, and whether a short or damaged frame ended it."""
    records, at, end = [], 0, len(data)
    while at < end:
        if end - at < _FRAME.size:
            return records, True
        length, crc = _FRAME.unpack_from(data, at)
        payload = data[at + _FRAME.size: at + _FRAME.size + length]
        if len(payload) != length or zlib.crc32(payload) != crc:
            return records, True
        try:
            record = msgpack.unpackb(payload, raw=False)
        except ValueError:
            return records, True
        records.append(record)
        at += _FRAME.size + length
    return records, False


def read_segment(path: Path) -> tuple[SegmentRecords, Segment]:
    """Read a segment file: its records by kind and its summary."""
    data = path.read_bytes()
    records, torn = decode_all(data)
    summary = Segment(path, size=len(data))
    out = SegmentRecords(torn=torn)
    for record in records:
        summary.note(record)
        kind = record[0]
        if kind == COUNT:
            out.counts.append(tuple(record[1:]))
        elif kind == EVENT:
            out.events.append((record[1], record[2]))
        elif kind == INDEX:
            out.index.append((record[1], record[2]))
        elif kind == SUPPRESSION:
            out.suppressions.append((record[1], record[2], record[3]))
    return out, summary


def _token_of(name: str) -> str:
    return name.split(".", 1)[0]


class StatsJournal:
    """One worker's journal in `directory` (see the module docstring).

    max_bytes: the most its own segments take on disk; segment_max_items and
    segment_max_bytes: the size at which the current segment is sealed.
    """

    def __init__(self, directory: Path, *, max_bytes: int = 512 * 1024 * 1024,
                 segment_max_items: int = 1000, segment_max_bytes: int = 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_max_items = segment_max_items
        self.segment_max_bytes = segment_max_bytes
        self.token = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._seq = 0
        self._fd: int | None = None
        self._current: Segment | None = None
        self._sealed: deque[Segment] = deque()
        self._claimed: dict[str, int] = {}  # token -> fd holding its lock
        self._lock_fd: int | None = None
        self._own_bytes = 0
        self.full = False
        # A spool thread appends `sent` the moment a record is queued (`Spool.store`),
        # while the event loop appends and seals: one lock keeps a record out of a
        # segment being sealed.
        self._lock = threading.Lock()

    def open(self) -> None:
        """Create the directory, and take this worker's lock (before any segment exists)."""
        private_dir(self.directory)
        self._lock_fd = self._create_lock(self.token)
        assert self._lock_fd is not None, "a fresh random token's lock cannot exist"

    def _create_lock(self, token: str) -> int | None:
        """Create `<token>.lock` and flock it; None when it exists already."""
        path = self.directory / f"{token}{LOCK_SUFFIX}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
        except FileExistsError:
            return None
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd

    # -- appending (the hot path) -------------------------------------------

    def append(self, record: list) -> bool:
        """Append one record to the current segment; False (nothing written) when the
        journal is full or the write failed, which is logged. Safe from any thread."""
        frame = encode(record)
        with self._lock:
            return self._append(record, frame)

    def _append(self, record: list, frame: bytes) -> bool:
        if self._own_bytes + len(frame) > self.max_bytes:
            if not self.full:
                self.full = True
                log.error("stats journal %s is full (%d bytes, the stats journal bound): new counts and "
                          "events are dropped until Redis takes what waits", self.directory, self.max_bytes)
            return False
        current = self._current
        if current is None:
            current = self._start_segment()
        try:
            written = os.write(self._fd, frame)
        except OSError as exc:
            log.error("stats journal: cannot write %s (%s); a count or event is dropped", current.path, exc)
            return False
        if written != len(frame):  # a short write (disk full): the frame is torn, start afresh
            log.error("stats journal: short write to %s; a count or event is dropped", current.path)
            self._seal()
            return False
        current.size += written
        self._own_bytes += written
        current.note(record)
        if current.items >= self.segment_max_items or current.size >= self.segment_max_bytes:
            self._seal()  # a batch's worth: a segment stays one bounded batch
        return True

    def _start_segment(self) -> Segment:
        self._seq += 1
        path = self.directory / f"{self.token}.{self._seq:08d}{SEGMENT_SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                           PRIVATE_FILE_MODE)
        self._current = Segment(path)
        return self._current

    def seal(self) -> None:
        """Close the current segment (if any) for appending: the next record starts a new one."""
        with self._lock:
            self._seal()

    def _seal(self) -> None:
        if self._current is None:
            return
        assert self._fd is not None
        os.close(self._fd)
        self._fd = None
        self._sealed.append(self._current)
        self._current = None

    # -- applying ------------------------------------------------------------

    @property
    def sealed(self) -> int:
        """Sealed segments waiting to be applied."""
        return len(self._sealed)

    def oldest(self) -> Segment | None:
        """The oldest sealed segment, to apply next."""
        return self._sealed[0] if self._sealed else None

    def acknowledge(self, segment: Segment) -> None:
        """`segment` is in Redis: delete it (and a claimed journal's lock after its last segment)."""
        assert self._sealed and self._sealed[0] is segment
        self._sealed.popleft()
        os.unlink(segment.path)
        if segment.own:
            self._own_bytes -= segment.size
            if self.full and self._own_bytes <= self.max_bytes // 2:
                self.full = False
                log.info("stats journal has room again")
            return
        token = _token_of(segment.path.name)
        if not any(_token_of(s.path.name) == token for s in self._sealed):
            self._release(token, remove=True)

    def _release(self, token: str, *, remove: bool) -> None:
        fd = self._claimed.pop(token)
        if remove:
            try:
                os.unlink(self.directory / f"{token}{LOCK_SUFFIX}")
            except FileNotFoundError:
                pass
        os.close(fd)

    def claim_orphans(self) -> int:
        """Take over the journals of dead workers (see the module docstring): their
        segments join the sealed ones. Returns how many segments were claimed."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return 0
        tokens = {_token_of(n) for n in names if n.endswith(SEGMENT_SUFFIX)}
        locks = {n[: -len(LOCK_SUFFIX)] for n in names if n.endswith(LOCK_SUFFIX)}
        claimed = 0
        for token in sorted((tokens | locks) - {self.token} - set(self._claimed)):
            fd = self._lock_held_by_nobody(token) if token in locks else self._create_lock(token)
            if fd is None:
                continue
            self._claimed[token] = fd
            segments = sorted(n for n in os.listdir(self.directory)
                              if n.endswith(SEGMENT_SUFFIX) and _token_of(n) == token)
            for name in segments:
                _, summary = read_segment(self.directory / name)
                summary.own = False
                self._sealed.append(summary)
            claimed += len(segments)
            if segments:
                log.info("stats journal: claimed %d segment(s) of worker journal %s (%d counts, %d events) "
                         "to replay", len(segments), token, sum(s.counts for s in self._sealed if not s.own),
                         sum(s.events for s in self._sealed if not s.own))
            else:
                self._release(token, remove=True)
        return claimed

    def _lock_held_by_nobody(self, token: str) -> int | None:
        """flock `<token>.lock` without waiting; None when a live worker holds it or it is gone."""
        path = self.directory / f"{token}{LOCK_SUFFIX}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino != os.stat(path).st_ino:  # removed by a claimer that finished
                raise FileNotFoundError(path)
        except (BlockingIOError, FileNotFoundError):
            os.close(fd)
            return None
        return fd

    # -- totals and closing ----------------------------------------------------

    def _all(self) -> list[Segment]:
        return [*self._sealed, *([self._current] if self._current is not None else [])]

    @property
    def counts(self) -> int:
        """Counts (summed amounts) not yet known to be in Redis."""
        return sum(s.counts for s in self._all())

    @property
    def events(self) -> int:
        """Events not yet known to be in Redis."""
        return sum(s.events for s in self._all())

    @property
    def index(self) -> int:
        """Message index entries not yet known to be in Redis."""
        return sum(s.index for s in self._all())

    @property
    def suppressions(self) -> int:
        """Suppression-list entries not yet known to be in Redis."""
        return sum(s.suppressions for s in self._all())

    @property
    def empty(self) -> bool:
        """Nothing waits for Redis."""
        return self._current is None and not self._sealed

    def close(self) -> None:
        """Close the files; an empty journal's lock file is removed, a non-empty one is
        left for the next worker to claim (unlocked by the close)."""
        self.seal()
        for token in list(self._claimed):
            self._release(token, remove=False)
        if self._lock_fd is not None:
            if not self._sealed or all(not s.own for s in self._sealed):
                os.unlink(self.directory / f"{self.token}{LOCK_SUFFIX}")
            os.close(self._lock_fd)
            self._lock_fd = None
