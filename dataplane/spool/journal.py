"""The spool journal's bytes: framed records in append-only segment files, how a
segment is read back (torn tail, damaged record), and the writer thread whose one
fdatasync covers every record appended while the previous one ran (group commit).

Segment `journal/w<K>-<seq>.seg` (K: the worker index that appends to it, seq: 10
digits, increasing) is a sequence of frames, big-endian:

    4 bytes   L, length of the body
    4 bytes   CRC-32 (zlib) of the body
    L bytes   body: kind (1 byte), n (1 byte), the message id (n bytes), payload

Kinds and payloads (the message's state is its newest `M` plus the state records
after it):

    M  an accepted message: 4-byte length of the metadata, the metadata (msgpack,
       `record`'s fields), then the stamped message. Also a copy carried forward by
       compaction or adoption, with the state at the time of the copy.
    A  its attempts replaced: msgpack list of the attempt entries (`record`)
    H  its hold flag: 1 byte, 1 = held
    F  final (delivered, bounced or deleted): no payload; the message is gone
    W  withdrawn: a store whose write failed (the client heard 451); as F

Reading a segment (`scan`): frames are read in order. Bytes at the end that do not
hold a whole frame, or a last whole frame whose CRC fails, are the *torn tail*: a
write a crash cut short, which no client got a 250 for (a 250 waits for the
fdatasync after the write, and a synced frame is whole). A frame with a bad CRC
followed by more frames is damage from outside: it is reported (`Damaged`) and
reading goes on after it. A length that cannot be right (too small, too large)
with more bytes after it ends the reading there: the rest is reported damaged.
"""

from __future__ import annotations

import os
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack

from .durable import FILE_MODE, fsync_dir, write_all
from .record import SpoolCorrupt, SpoolRecord, decode_meta, encode_meta

JOURNAL_DIR = "journal"
SEGMENT_SUFFIX = ".seg"
SEGMENT_MAX_BYTES = 64 * 1024 * 1024

MESSAGE, ATTEMPTS, HELD, FINAL, WITHDRAWN = b"M", b"A", b"H", b"F", b"W"
KINDS = (MESSAGE, ATTEMPTS, HELD, FINAL, WITHDRAWN)

_HEAD = struct.Struct(">II")
HEAD_SIZE = _HEAD.size
_META_LEN = struct.Struct(">I")
_MIN_BODY = 2  # kind and id length
_MAX_BODY = 1 << 31
_IOV_MAX = 512  # buffers per writev (Linux allows 1024)
_NAME = re.compile(r"^w(\d+)-(\d{10})\.seg$")


def segment_name(writer: int, seq: int) -> str:
    """The file name of writer `writer`'s segment number `seq`."""
    return f"w{writer}-{seq:010d}{SEGMENT_SUFFIX}"


def parse_name(name: str) -> tuple[int, int] | None:
    """(writer, seq) of a segment file name; None for any other name."""
    match = _NAME.match(name)
    return (int(match[1]), int(match[2])) if match else None


def segments(journal: Path, writer: int | None = None) -> list[tuple[int, int, str]]:
    """(writer, seq, name) of the segments in `journal` (of one writer when given),
    in writing order per writer."""
    try:
        names = os.listdir(journal)
    except FileNotFoundError:
        return []
    found = [(*parsed, name) for name in names if (parsed := parse_name(name)) is not None]
    return sorted(f for f in found if writer is None or f[0] == writer)


# -- frames --------------------------------------------------------------------


def frame(kind: bytes, message_id: str, payload: bytes | list[bytes] = b"") -> list[bytes]:
    """One frame as byte strings to write in order (a message's body is not copied)."""
    parts = payload if isinstance(payload, list) else [payload]
    key = message_id.encode("ascii")
    lead = kind + bytes([len(key)]) + key
    crc = zlib.crc32(lead)
    for part in parts:
        crc = zlib.crc32(part, crc)
    return [_HEAD.pack(len(lead) + sum(len(p) for p in parts), crc), lead, *parts]


def message_frame(record: SpoolRecord) -> list[bytes]:
    """The `M` frame of an accepted message (or of its copy, state included)."""
    meta = encode_meta(record)
    return frame(MESSAGE, record.id, [_META_LEN.pack(len(meta)), meta, record.message])


def attempts_frame(message_id: str, attempts: tuple[dict, ...]) -> list[bytes]:
    """The `A` frame replacing a message's attempts."""
    return frame(ATTEMPTS, message_id, msgpack.packb(list(attempts), use_bin_type=True))


def held_frame(message_id: str, held: bool) -> list[bytes]:
    """The `H` frame setting a message's hold flag."""
    return frame(HELD, message_id, b"\x01" if held else b"\x00")


def final_frame(message_id: str, kind: bytes = FINAL) -> list[bytes]:
    """The `F` (or `W`) frame ending a message."""
    return frame(kind, message_id)


def decode_message(body: bytes | memoryview) -> SpoolRecord:
    """The record of an `M` frame's body (kind, id, payload); SpoolCorrupt if malformed."""
    view = memoryview(body)
    at = 2 + view[1]
    (meta_len,) = _META_LEN.unpack_from(view, at)
    meta_at = at + _META_LEN.size
    return decode_meta(view[meta_at:meta_at + meta_len], bytes(view[meta_at + meta_len:]))


def decode_state(kind: bytes, payload: bytes | memoryview):
    """The value an `A` (attempts tuple) or `H` (bool) frame's payload carries."""
    if kind == HELD:
        return bytes(payload) == b"\x01"
    try:
        return tuple(msgpack.unpackb(payload, raw=False))
    except (ValueError, TypeError) as exc:  # msgpack's errors are ValueErrors, and a non-list a TypeError
        raise SpoolCorrupt(f"attempts record is malformed: {exc!r}") from None


def read_frame(path: Path | str, offset: int, length: int) -> bytes:
    """The body of the frame at `offset` (`length` = header + body), CRC verified;
    SpoolCorrupt when it does not verify, FileNotFoundError when the segment is gone."""
    with open(path, "rb") as f:
        data = os.pread(f.fileno(), length, offset)
    if len(data) != length:
        raise SpoolCorrupt(f"{path}@{offset}: frame cut short")
    size, crc = _HEAD.unpack_from(data)
    body = data[HEAD_SIZE:]
    if size != len(body) or zlib.crc32(body) != crc:
        raise SpoolCorrupt(f"{path}@{offset}: frame checksum mismatch")
    return body


@dataclass(frozen=True, slots=True)
class Frame:
    """A whole, verified frame of a segment: where it is and what it says."""

    offset: int
    length: int  # header + body
    kind: bytes
    message_id: str
    payload: memoryview


@dataclass(frozen=True, slots=True)
class Damaged:
    """Bytes of a segment that are not a good frame and are not its torn tail."""

    offset: int
    length: int
    reason: str


def scan(data: bytes | memoryview, start: int = 0, *, last: bool = True) -> tuple[list[Frame | Damaged], int]:
    """The frames (and damage) in segment bytes `data` from `start`, and where its
    good part ends: the bytes after it are the torn tail (module docstring). Only a
    writer's `last` segment can have one: an older one was synced whole before the
    next began, so anything bad at its end is damage."""
    view = memoryview(data)
    size = len(view)
    found: list[Frame | Damaged] = []
    at = start
    while at + HEAD_SIZE <= size:
        length, crc = _HEAD.unpack_from(view, at)
        end = at + HEAD_SIZE + length
        if length < _MIN_BODY or length > _MAX_BODY:
            if last and not any(view[at:]):
                break  # zeros a crash left past the last write: torn
            found.append(Damaged(at, size - at, f"impossible frame length {length}"))
            return found, size
        if end > size:
            if not last:
                found.append(Damaged(at, size - at, "frame cut short"))
                return found, size
            break  # cut short: torn
        body = view[at + HEAD_SIZE:end]
        id_end = 2 + body[1]
        kind = bytes(body[:1])
        if zlib.crc32(body) != crc or id_end > length or kind not in KINDS:
            if end == size and last:
                break  # the last frame: torn
            found.append(Damaged(at, end - at, "frame checksum mismatch"))
        else:
            found.append(Frame(at, end - at, kind, bytes(body[2:id_end]).decode("ascii", "replace"),
                               body[id_end:]))
        at = end
    return found, at


def scan_headers(path: Path | str, start: int = 0) -> Iterator[tuple[int, int, bytes, str, bytes]]:
    """(offset, length, kind, id, payload of a state frame) of each whole frame of the
    segment at `path` from `start`, without reading message bodies or checking CRCs:
    how another process follows a segment its writer appends to."""
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        at = start
        while at + HEAD_SIZE <= size:
            head = os.pread(fd, HEAD_SIZE + 2 + 255, at)
            length, _ = _HEAD.unpack_from(head)
            if length < _MIN_BODY or length > _MAX_BODY or at + HEAD_SIZE + length > size:
                return
            kind = head[HEAD_SIZE:HEAD_SIZE + 1]
            id_end = HEAD_SIZE + 2 + head[HEAD_SIZE + 1]
            message_id = head[HEAD_SIZE + 2:id_end].decode("ascii", "replace")
            payload = b""
            if kind in (ATTEMPTS, HELD):
                payload = os.pread(fd, HEAD_SIZE + length - id_end, at + id_end)
            yield at, HEAD_SIZE + length, kind, message_id, payload
            at += HEAD_SIZE + length


# -- the writer thread -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Location:
    """Where a frame went: its segment's sequence number, offset and length."""

    seq: int
    offset: int
    length: int


Settle = Callable[[list[tuple[object, Location | None, OSError | None]]], None]


class SegmentWriter:
    """Appends frames to writer `writer`'s segments on one thread. Each round takes
    every frame submitted since the last round began, writes them, fdatasyncs once,
    and only then settles them (`settle`, called on the writer thread with (ticket,
    Location or None, error) per submission, in order). A new segment is created
    (and the directory fsynced) before anything is written to it.

    On a write or sync error the round's frames are cut off the segment again
    (ftruncate, best effort), their submitters get the error, `W` frames for their
    messages go first into the next round, and the next round starts a new segment."""

    def __init__(self, journal: Path, writer: int, next_seq: int, settle: Settle, *,
                 max_bytes: int = SEGMENT_MAX_BYTES) -> None:
        self.journal = Path(journal)
        self.writer = writer
        self.max_bytes = max_bytes
        self.seq = next_seq - 1  # the segment being appended to; none open yet
        self.syncs = 0  # fdatasyncs done: for measurement
        self.frames_synced = 0
        self.on_new_segment: Callable[[int], None] | None = None
        self._settle = settle
        self._fd: int | None = None
        self._size = 0
        self._pending: list[tuple[object, list[bytes], str]] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"spool-journal-{writer}", daemon=True)
        self._thread.start()

    def submit(self, ticket: object, parts: list[bytes], withdraw_id: str = "") -> None:
        """Queue one frame (`parts`); `ticket` is settled once it is durable or failed.
        `withdraw_id`: the message a `W` frame should end if this write fails."""
        with self._cond:
            if self._stopping:
                raise OSError("the spool journal is closed")
            self._pending.append((ticket, parts, withdraw_id))
            self._cond.notify()

    def close(self) -> None:
        """Write what is queued, then stop the thread and close the segment."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
            self._round(batch)

    def _round(self, batch: list[tuple[object, list[bytes], str]]) -> None:
        results: list[tuple[object, Location | None, OSError | None]] = []
        start = self._size
        try:
            if self._fd is None or self._size >= self.max_bytes:
                self._new_segment()
                start = 0
            at = start
            buffers: list[bytes] = []
            for ticket, parts, _ in batch:
                length = sum(len(p) for p in parts)
                results.append((ticket, Location(self.seq, at, length), None))
                buffers += parts
                at += length
            for first in range(0, len(buffers), _IOV_MAX):
                _write_buffers(self._fd, buffers[first:first + _IOV_MAX])
            os.fdatasync(self._fd)
            self._size = at
            self.syncs += 1
            self.frames_synced += len(batch)
        except OSError as exc:
            self._abandon(start)
            results = [(ticket, None, exc) for ticket, _, _ in batch]
            withdrawn = [(None, final_frame(wid, WITHDRAWN), "") for _, _, wid in batch if wid]
            with self._cond:
                self._pending[:0] = withdrawn
        self._settle(results)

    def _new_segment(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.seq += 1
        path = self.journal / segment_name(self.writer, self.seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            fsync_dir(self.journal)  # the name is durable before any 250 depends on it
        except OSError:
            os.close(fd)
            raise
        self._fd, self._size = fd, 0
        if self.on_new_segment is not None:
            self.on_new_segment(self.seq)

    def _abandon(self, start: int) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, start)
        except OSError:
            pass  # the W frames end what stays
        os.close(self._fd)
        self._fd = None


def _write_buffers(fd: int, buffers: list[bytes]) -> None:
    total = sum(len(b) for b in buffers)
    written = os.writev(fd, buffers)
    if written < total:  # a short write: finish it the slow way
        write_all(fd, memoryview(b"".join(buffers))[written:])

