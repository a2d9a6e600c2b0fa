"""The stats journal: every count, delivery event, message index entry and
suppression a worker makes, on disk before anything depends on it, until Redis
has it. One module past ~450 lines on purpose: the record format, the segment
files and the claim of dead workers' journals share one crash-safety argument,
made here once; recovery from the spool is `dataplane.stats_journal_recovery`.

Layout of `<data_dir>/stats-journal/server-<N>/` (0700; files 0600):

    <token>.lock          held (flock) by the live worker whose token it is
    <token>.<seq>.log     a segment: records appended in order; seq 8 digits

A worker draws a fresh random token at start. It appends to one current segment;
the stats batcher seals it (at most every flush interval, or when it holds
`segment_max_items` events, index entries and suppressions or
`segment_max_bytes`: then the journal seals it itself) and applies sealed segments
to Redis oldest first, deleting each once Redis acknowledged it. The segment's
name (`<token>.<seq>`) says which journal's mark
(`rediskeys.stats_journal_mark_key(token)`, the highest seq applied, moved by the
batch script) covers it, so a segment applied twice (its reply lost, or
replayed after a crash between the apply and the delete) counts once, its
events and index entries too (the same script); its suppressions are idempotent
on their own (see `stats_batcher`).

Exactly what the spool holds: a record that accounts for a spool update (`sent`
for a stored message; an outcome's count, event and suppression for the
rewrite or removal recording it) cannot be written together with that update,
and a kill between the two would lose or double it. So such records go in a
group: `["g", id, check, records]` before the spool update, then `["k", id]`
(committed) or `["x", id]` (aborted) after it. A segment applies only the groups
committed in it; sealing a segment copies the groups still open into the next
one, so a group's commit always lands beside its latest copy. A worker that dies
leaves at most a few groups open (one per spool update under way): before the
worker is started again (`resolve_orphans`, called by the supervisor when it
reaps a worker and when the data plane starts; `stats_journal_recovery`), each
is decided by looking at
the spool (`check`: the message's record is there / carries that many attempts
/ is gone), which nobody changes meanwhile because the worker owning those
records is the one being restarted, and the journal gets its closing `["z"]`.
Only closed journals are claimed; a worker stopping cleanly closes its own.

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

# Record kinds (the first element of each record): plain ones, then a group (of
# plain records, applied once committed), its commit, its abort, and the journal's end.
COUNT, EVENT, INDEX, SUPPRESSION = "c", "e", "i", "s"
GROUP, COMMIT, ABORT, CLOSED = "g", "k", "x", "z"
_PLAIN = frozenset((COUNT, EVENT, INDEX, SUPPRESSION))


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
    fresh: bool = False  # holds more than copies of groups still open (worth sealing)

    @property
    def batch_id(self) -> str:
        """The id of its batch: `<token>.<seq>` (its journal's mark covers it once the
        mark reaches seq), stable across replays."""
        return self.path.name[: -len(SEGMENT_SUFFIX)]

    def note(self, record: list) -> None:
        """Add a plain record (or the records of a committed group) to the summary."""
        kind = record[0]
        if kind not in _PLAIN:
            return
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
    open_groups: dict[int, list] = field(default_factory=dict)  # id -> check, of groups undecided here
    closed: bool = False  # ends with the journal's closing record


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
    """Read a segment file: its plain records and those of the groups committed in it,
    by kind, and its summary."""
    data = path.read_bytes()
    records, torn = decode_all(data)
    summary = Segment(path, size=len(data))
    out = SegmentRecords(torn=torn, closed=bool(records) and records[-1][0] == CLOSED)
    groups: dict[int, list] = {}
    applied: list[list] = []
    for record in records:
        kind = record[0]
        if kind in _PLAIN:
            applied.append(record)
        elif kind == GROUP:
            groups[record[1]] = record
        elif kind == COMMIT and record[1] in groups:
            applied.extend(groups.pop(record[1])[3])
        elif kind == ABORT:
            groups.pop(record[1], None)
    out.open_groups = {gid: group[2] for gid, group in groups.items()}
    for record in applied:
        summary.note(record)
        kind = record[0]
        if kind == COUNT:
            out.counts.append(tuple(record[1:]))
        elif kind == EVENT:
            out.events.append((record[1], record[2]))
        elif kind == INDEX:
            out.index.append((record[1], record[2]))
        else:
            out.suppressions.append((record[1], record[2], record[3]))
    return out, summary


def token_of(name: str) -> str:
    return name.split(".", 1)[0]


def segments_of(directory: Path, token: str) -> list[str]:
    """The names of the segments of journal `token`, oldest first."""
    return sorted(n for n in os.listdir(directory) if n.endswith(SEGMENT_SUFFIX) and token_of(n) == token)


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
        self._groups: dict[int, tuple[bytes, list]] = {}  # open groups: id -> (frame, records)
        self._group_ids = 0
        self.full = False

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
        """Append one plain record to the current segment; False (nothing written) when
        the journal is full or the write failed, which is logged."""
        if not self._write(encode(record)):
            return False
        self._current.note(record)
        self._seal_if_big()
        return True

    def begin(self, check: list, records: list[list]) -> int | None:
        """Open a group of `records` for a spool update `check` describes (see the module
        docstring); its id, or None when it could not be written (logged)."""
        self._group_ids += 1
        gid = self._group_ids
        frame = encode([GROUP, gid, check, records])
        if not self._write(frame):
            return None
        self._groups[gid] = (frame, records)
        return gid

    def end(self, gid: int | None, committed: bool) -> None:
        """Decide group `gid` (None: nothing to do): its records apply when `committed`."""
        if gid is None:
            return
        _, records = self._groups.pop(gid)
        # Past the bound too: a decision is tiny, and without it the group would be lost.
        if self._write(encode([COMMIT if committed else ABORT, gid]), bounded=False) and committed:
            for record in records:
                self._current.note(record)
        self._seal_if_big()

    def _write(self, frame: bytes, *, bounded: bool = True, fresh: bool = True) -> bool:
        if bounded and self._own_bytes + len(frame) > self.max_bytes:
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
        current.size += written
        current.fresh = current.fresh or fresh
        self._own_bytes += written
        if written != len(frame):  # a short write (disk full): the frame is torn, start afresh
            log.error("stats journal: short write to %s; a count or event is dropped", current.path)
            self.seal()
            return False
        return True

    def _seal_if_big(self) -> None:
        current = self._current
        if current is not None and (current.items >= self.segment_max_items
                                    or current.size >= self.segment_max_bytes):
            self.seal()  # a batch's worth: a segment stays one bounded batch

    def _start_segment(self) -> Segment:
        self._seq += 1
        path = self.directory / f"{self.token}.{self._seq:08d}{SEGMENT_SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                           PRIVATE_FILE_MODE)
        self._current = Segment(path)
        return self._current

    def seal(self) -> None:
        """Close the current segment (if any) for appending: the next record starts a new
        one, which starts with a copy of each group still open. A segment holding only
        such copies stays current: there is nothing to apply in it yet."""
        if self._current is None or not self._current.fresh:
            return
        assert self._fd is not None
        os.close(self._fd)
        self._fd = None
        self._sealed.append(self._current)
        self._current = None
        for frame, _ in self._groups.values():
            self._write(frame, bounded=False, fresh=False)

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
        token = token_of(segment.path.name)
        if not any(token_of(s.path.name) == token for s in self._sealed):
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
        tokens = {token_of(n) for n in names if n.endswith(SEGMENT_SUFFIX)}
        locks = {n[: -len(LOCK_SUFFIX)] for n in names if n.endswith(LOCK_SUFFIX)}
        claimed = 0
        for token in sorted((tokens | locks) - {self.token} - set(self._claimed)):
            fd = self._lock_held_by_nobody(token) if token in locks else self._create_lock(token)
            if fd is None:
                continue
            segments = segments_of(self.directory, token)
            if segments and not read_segment(self.directory / segments[-1])[0].closed:
                os.close(fd)  # not resolved yet (`resolve_orphans`): left alone until it is
                continue
            self._claimed[token] = fd
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
        """Nothing waits for Redis (groups still open wait for their spool update)."""
        return not self._sealed and (self._current is None or not self._current.fresh)

    def close(self) -> None:
        """Close the files; an empty journal's lock file is removed, a non-empty one is
        left (unlocked by the close) for `resolve_orphans`, then the next worker to claim."""
        if self._current is not None:  # sealed without carrying open groups over: they stay undecided
            assert self._fd is not None
            os.close(self._fd)
            self._fd = None
            self._sealed.append(self._current)
            self._current = None
        for token in list(self._claimed):
            self._release(token, remove=False)
        if self._lock_fd is not None:
            if not self._sealed or all(not s.own for s in self._sealed):
                os.unlink(self.directory / f"{self.token}{LOCK_SUFFIX}")
            os.close(self._lock_fd)
            self._lock_fd = None

