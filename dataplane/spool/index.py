"""What a spool journal says: which messages are live, where each one's newest copy
is, and its state; rebuilt from the segments.

* `WriterState`: the index of one writer's segments (id -> `Entry`), with what each
  segment holds live, so the worker knows when a segment can go.
* `load_writer`: the owner's start-up read of its segments: every frame verified,
  a torn tail cut off (truncated), a damaged frame copied to `corrupt/` and skipped.
* `JournalView`: another process's read-only, incremental view of every writer's
  segments (headers only, no CRC check, torn tails ignored), plus the message files
  of a spool written before the journal: the REST status, the inspector, the queue
  tools, and the stats journal's recovery read the spool through it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import journal
from .durable import FILE_MODE
from .journal import ATTEMPTS, FINAL, HELD, JOURNAL_DIR, MESSAGE, WITHDRAWN, Damaged
from .record import SpoolCorrupt, SpoolRecord, read_record

log = logging.getLogger("poolmta.dataplane.spool")

QUEUE_DIR = "queue"
CORRUPT_DIR = "corrupt"
RECORD_SUFFIX = ".msg"


@dataclass(slots=True)
class Entry:
    """A live message: its newest `M` frame, and the state frames after it say."""

    seq: int
    offset: int
    length: int
    attempts: tuple[dict, ...] | None = None  # None: as the M frame has them
    held: bool | None = None

    def apply(self, record: SpoolRecord) -> SpoolRecord:
        """`record` (decoded from the M frame) with this entry's newer state."""
        if self.attempts is not None:
            record = replace(record, attempts=self.attempts)
        if self.held is not None:
            record = replace(record, held=self.held)
        return record


@dataclass
class WriterState:
    """One writer's live messages, and per segment how many of them (and bytes) it holds."""

    entries: dict[str, Entry] = field(default_factory=dict)
    live: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    live_bytes: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    sizes: dict[int, int] = field(default_factory=dict)  # every segment known, by seq

    def place(self, message_id: str, seq: int, offset: int, length: int) -> Entry:
        """A (new) `M` frame of `message_id` at this place: its newest copy."""
        old = self.entries.get(message_id)
        if old is not None:
            self._release(old)
        entry = Entry(seq, offset, length)
        self.entries[message_id] = entry
        self.live[seq] += 1
        self.live_bytes[seq] += length
        return entry

    def move(self, entry: Entry, seq: int, offset: int, length: int) -> None:
        """A copy of `entry`'s message (with its state) landed at this place."""
        self._release(entry)
        entry.seq, entry.offset, entry.length = seq, offset, length
        self.live[seq] += 1
        self.live_bytes[seq] += length

    def end(self, message_id: str) -> Entry | None:
        """The message is final (or withdrawn): forget it; its entry, None if unknown."""
        entry = self.entries.pop(message_id, None)
        if entry is not None:
            self._release(entry)
        return entry

    def apply(self, seq: int, offset: int, length: int, kind: bytes, message_id: str, payload) -> None:
        """Account for one frame read back from segment `seq`."""
        self.sizes[seq] = max(self.sizes.get(seq, 0), offset + length)
        if kind == MESSAGE:
            self.place(message_id, seq, offset, length)
            return
        entry = self.entries.get(message_id)
        if entry is None:
            return  # a message whose M went with a reclaimed segment: final then
        if kind in (FINAL, WITHDRAWN):
            self.end(message_id)
        elif kind == ATTEMPTS:
            entry.attempts = journal.decode_state(kind, payload)
        elif kind == HELD:
            entry.held = journal.decode_state(kind, payload)

    def _release(self, entry: Entry) -> None:
        self.live[entry.seq] -= 1
        self.live_bytes[entry.seq] -= entry.length


@dataclass
class LoadReport:
    """What `load_writer` repaired: torn tails cut (bytes), damaged frames quarantined."""

    torn_bytes: int = 0
    damaged: list[str] = field(default_factory=list)


def load_writer(root: Path, writer: int) -> tuple[WriterState, int, LoadReport]:
    """Read writer `writer`'s segments in order (only while no process appends to
    them): its state, the next segment number to use, and what was repaired."""
    state = WriterState()
    report = LoadReport()
    directory = Path(root) / JOURNAL_DIR
    next_seq = 1
    names = journal.segments(directory, writer)
    for _, seq, name in names:
        next_seq = seq + 1
        path = directory / name
        data = path.read_bytes()
        found, end = journal.scan(data, last=seq == names[-1][1])
        state.sizes[seq] = end
        for item in found:
            if isinstance(item, Damaged):
                label = f"{name}@{item.offset}"
                _quarantine_bytes(Path(root), label, memoryview(data)[item.offset:item.offset + item.length])
                report.damaged.append(label)
                log.error("spool journal %s: %d byte(s) damaged (%s); copied to %s/ and skipped", label,
                          item.length, item.reason, CORRUPT_DIR)
                continue
            try:
                state.apply(seq, item.offset, item.length, item.kind, item.message_id, item.payload)
            except SpoolCorrupt as exc:  # a state frame whose CRC held but whose content does not
                report.damaged.append(f"{name}@{item.offset}")
                log.error("spool journal %s@%d: %s; skipped", name, item.offset, exc)
        if found and isinstance(found[-1], Damaged) and found[-1].offset + found[-1].length == len(data):
            end = found[-1].offset  # unreadable to the end: copied aside above, cut here
        if end < len(data):
            cut = len(data) - end
            with open(path, "r+b") as f:
                os.ftruncate(f.fileno(), end)
                os.fsync(f.fileno())
            state.sizes[seq] = end
            if not found or not isinstance(found[-1], Damaged):
                report.torn_bytes += cut
                log.warning("spool journal %s: cut a torn tail of %d byte(s) (a write a crash interrupted, "
                            "never acknowledged)", name, cut)
        del data
    return state, next_seq, report


def _quarantine_bytes(root: Path, label: str, data: memoryview) -> None:
    corrupt = root / CORRUPT_DIR
    corrupt.mkdir(mode=0o750, exist_ok=True)
    fd = os.open(corrupt / f"{label}.bad", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_entry(root: Path, writer: int, entry: Entry, message_id: str) -> SpoolRecord:
    """The record of a live entry of writer `writer`, state applied (SpoolCorrupt;
    FileNotFoundError if its segment went meanwhile)."""
    path = Path(root) / JOURNAL_DIR / journal.segment_name(writer, entry.seq)
    record = journal.decode_message(journal.read_frame(path, entry.offset, entry.length))
    if record.id != message_id:
        raise SpoolCorrupt(f"{path}@{entry.offset} holds {record.id}, not {message_id}")
    return entry.apply(record)


class JournalView:
    """Every writer's live messages as another process sees them, brought up to date
    by `refresh` (it reads only frames appended since the last one), and the message
    files of the old format. Thread safe."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._writers: dict[int, WriterState] = defaultdict(WriterState)
        self._read_to: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Read what the writers appended since the last refresh; forget reclaimed segments."""
        with self._lock:
            directory = self.root / JOURNAL_DIR
            present = {(w, s): name for w, s, name in journal.segments(directory)}
            for key in [k for k in self._read_to if k not in present]:
                del self._read_to[key]
                state = self._writers[key[0]]
                for message_id in [i for i, e in state.entries.items() if e.seq == key[1]]:
                    state.end(message_id)
            for (writer, seq), name in sorted(present.items()):
                start = self._read_to.get((writer, seq), 0)
                state = self._writers[writer]
                try:
                    for offset, length, kind, message_id, payload in journal.scan_headers(directory / name, start):
                        try:
                            state.apply(seq, offset, length, kind, message_id, payload)
                        except SpoolCorrupt:
                            pass  # its owner quarantines it
                        start = offset + length
                except FileNotFoundError:
                    continue
                self._read_to[(writer, seq)] = start

    def live_ids(self) -> list[str]:
        """Ids of the live messages, journal and old-format files, oldest first."""
        with self._lock:
            ids = {i for state in self._writers.values() for i in state.entries}
        return sorted(ids | set(legacy_ids(self.root)))

    def queued(self, message_id: str) -> bool:
        """True when the message is live in a journal or has an old-format file."""
        return self.locate(message_id) is not None or legacy_path(self.root, message_id).exists()

    def locate(self, message_id: str) -> tuple[int, Entry] | None:
        """(writer, entry) of a live journal message; None if the journal has none."""
        with self._lock:
            for writer, state in self._writers.items():
                entry = state.entries.get(message_id)
                if entry is not None:
                    return writer, replace(entry)
        return None

    def record(self, message_id: str) -> SpoolRecord:
        """The live message's record (FileNotFoundError when it is not queued; SpoolCorrupt)."""
        for _ in range(3):  # its segment may be reclaimed under us after a copy forward
            found = self.locate(message_id)
            if found is None:
                return read_record(legacy_path(self.root, message_id))
            try:
                return read_entry(self.root, found[0], found[1], message_id)
            except FileNotFoundError:
                self.refresh()
        raise FileNotFoundError(message_id)


def legacy_path(root: Path, message_id: str) -> Path:
    """Where the old format keeps the record file of `message_id`."""
    return Path(root) / QUEUE_DIR / f"{message_id}{RECORD_SUFFIX}"


def legacy_ids(root: Path) -> list[str]:
    """Ids of old-format record files in `queue/`, oldest first."""
    try:
        names = os.listdir(Path(root) / QUEUE_DIR)
    except FileNotFoundError:
        return []
    return sorted(n[: -len(RECORD_SUFFIX)] for n in names if n.endswith(RECORD_SUFFIX))
