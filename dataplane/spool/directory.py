"""The spool's directory: where messages live, whose they are, start-up recovery,
the lock, and the calls other processes use to read it.

Layout of `<data_dir>/spool/server-<N>/` (all on one filesystem):

    journal/w<K>-<seq>.seg   worker K's append-only segments (`journal`: the frames;
                             `worker_spool`: appending, group commit, reclaim)
    journal/w<K>.lock        held (flock) by the worker process appending to them
    corrupt/                 damaged frames or record files moved aside for an
                             operator, never deleted automatically
    queue/<id>.msg, tmp/     a spool written before the journal (one file per
                             message, `record`): carried into the journal at start
    lock                     held by the data plane's supervisor

Message ids are 26 lowercase hex digits: 12 of milliseconds since the epoch (so
they sort by acceptance time), 8 random per worker process, 6 of a per-process
counter. They appear in the 250 reply.

Ownership: of K workers, worker i delivers exactly the messages whose id's
counter is i modulo K (`owner_of`). A worker draws its counters from its own
residue class, so it owns what it accepts and appends it to its own journal
(handed to its delivery engine in memory); a restarted worker i reads its journal
back (`index.load_writer`). When the data plane starts (`recover`, no worker
running), every journal holding a message another worker owns now (K changed),
every journal of a worker index that no longer exists, and every old-format file
is *adopted*: its live messages are copied, state included, into their owners'
journals (a new segment each, fdatasynced, directory fsynced), and only then are
the old segments and files deleted. A crash in between leaves a message twice;
the next start copies only what the owner's journal lacks and deletes the rest.
So with any K, after a restart or a change, every message has exactly one owner.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import journal
from .durable import FILE_MODE, fsync_dir, lock_file
from .index import (
    CORRUPT_DIR,
    QUEUE_DIR,
    JournalView,
    legacy_ids,
    legacy_path,
    load_writer,
    read_entry,
)
from .journal import JOURNAL_DIR
from .record import SpoolCorrupt, SpoolRecord, looks_complete, read_record

log = logging.getLogger("poolmta.dataplane.spool")

TEMP_SUFFIX = ".tmp"
TMP_DIR = "tmp"
DIR_MODE = 0o750
LOCK_NAME = "lock"


def owner_of(message_id: str, owners: int) -> int:
    """The index of the worker (of `owners`) that delivers this message (see the module docstring)."""
    return int(message_id[-6:], 16) % owners


def record_path(root: Path, message_id: str) -> Path:
    """Where a spool written before the journal keeps the record file of `message_id`."""
    return legacy_path(root, message_id)


def queued_ids(root: Path) -> list[str]:
    """Ids of every queued message (any worker's journal, and old-format files), oldest first."""
    view = JournalView(root)
    view.refresh()
    return view.live_ids()


_views: dict[Path, JournalView] = {}
_views_lock = threading.Lock()


def view_of(root: Path) -> JournalView:
    """This process's view of the spool at `root`, brought up to date (it reads only what
    was appended since the last call): for lookups by id from another process."""
    with _views_lock:
        view = _views.setdefault(Path(root), JournalView(Path(root)))
    view.refresh()
    return view


def find_record(root: Path, message_id: str) -> SpoolRecord:
    """The queued message's record, state included (FileNotFoundError when it is not
    queued, SpoolCorrupt when damaged). From any process."""
    return view_of(root).record(message_id)


def iter_records(root: Path) -> Iterator[SpoolRecord]:
    """Every readable queued record, oldest first."""
    view = JournalView(root)
    view.refresh()
    for message_id in view.live_ids():
        try:
            yield view.record(message_id)
        except (FileNotFoundError, SpoolCorrupt):  # consumed meanwhile, or for an operator
            continue


def prepare(root: Path) -> None:
    """Create the spool directories (idempotent)."""
    for sub in (TMP_DIR, QUEUE_DIR, CORRUPT_DIR, JOURNAL_DIR):
        (Path(root) / sub).mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


def remove_temp_files(root: Path, pid: int | None = None) -> int:
    """Delete partial writes of the old format in `tmp/`: those of worker `pid`, or all
    when None. Call with None only while no worker of this spool runs. Returns how many."""
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


def lock(root: Path) -> int:
    """Take the spool's exclusive lock for this process's life (a file descriptor, to keep
    open); SpoolLocked if another process holds it. The supervisor holds it: with two
    data planes on one spool, every message would have two owners."""
    prepare(root)
    return lock_file(Path(root) / LOCK_NAME, f"another data plane is using the spool {root}")


@dataclass(frozen=True)
class RecoveryReport:
    """What `recover` found: messages queued (and their bytes), partial writes removed,
    what it moved to `corrupt/`, and how many messages it adopted (copied to their owner)."""

    queued: int
    queued_bytes: int
    removed_partial: int
    quarantined: tuple[str, ...]
    adopted: int = 0


def recover(root: Path, owners: int = 1) -> RecoveryReport:
    """Start-up recovery, run while no worker of this spool runs (`owners`: how many will).

    Creates the directories, deletes the old format's partial writes, moves its damaged
    record files to `corrupt/`, reads every journal back (cutting torn tails,
    quarantining damage), and adopts what a worker other than its owner holds (module
    docstring)."""
    root = Path(root)
    prepare(root)
    removed = remove_temp_files(root)
    bad: list[str] = []
    legacy: list[str] = []
    for message_id in legacy_ids(root):
        path = legacy_path(root, message_id)
        try:
            ok = looks_complete(path)
        except OSError:
            ok = False
        if ok:
            legacy.append(message_id)
        else:
            os.replace(path, root / CORRUPT_DIR / path.name)
            bad.append(message_id)
    if bad:
        fsync_dir(root / QUEUE_DIR)
        fsync_dir(root / CORRUPT_DIR)
    writers = sorted({w for w, _, _ in journal.segments(root / JOURNAL_DIR)} | set(range(owners)))
    loaded = {}
    for writer in writers:
        with _writer_lock(root, writer):
            loaded[writer] = load_writer(root, writer)
        removed += loaded[writer][2].torn_bytes > 0
        bad += loaded[writer][2].damaged
    adopted = _adopt(root, owners, loaded, legacy)
    view = JournalView(root)
    view.refresh()
    ids = view.live_ids()
    size = sum(found[1].length for i in ids if (found := view.locate(i)) is not None)
    return RecoveryReport(len(ids), size, removed, tuple(bad), adopted)


class _writer_lock:
    """Worker `writer`'s journal lock for a moment (no worker runs during `recover`)."""

    def __init__(self, root: Path, writer: int) -> None:
        self.path = Path(root) / JOURNAL_DIR / f"w{writer}.lock"

    def __enter__(self) -> None:
        self.fd = lock_file(self.path, f"a worker still appends to {self.path.parent}", wait=5.0)

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def _adopt(root: Path, owners: int, loaded: dict, legacy: list[str]) -> int:
    """Copy every message a journal (or an old-format file) holds for another owner into
    its owner's journal, then delete the sources (module docstring). Returns how many."""
    moving = [w for w, (state, _, _) in loaded.items()
              if w >= owners or any(owner_of(i, owners) != w for i in state.entries)]
    if not moving and not legacy:
        return 0
    has = {w: set(loaded[w][0].entries) for w in range(owners)}
    targets: dict[int, _NewSegment] = {}

    def target(message_id: str) -> _NewSegment | None:
        owner = owner_of(message_id, owners)
        if message_id in has[owner]:
            return None  # copied by a start a crash interrupted
        has[owner].add(message_id)
        if owner not in targets:
            targets[owner] = _NewSegment(root, owner, loaded[owner][1])
        return targets[owner]

    copied = 0
    try:
        for writer in moving:
            state = loaded[writer][0]
            for message_id, entry in sorted(state.entries.items()):
                if owner_of(message_id, owners) == writer or (segment := target(message_id)) is None:
                    continue
                segment.append(read_entry(root, writer, entry, message_id))
                copied += 1
        for message_id in legacy:
            if (segment := target(message_id)) is not None:
                segment.append(read_record(legacy_path(root, message_id)))
                copied += 1
        for segment in targets.values():
            segment.commit()
    finally:
        for segment in targets.values():
            segment.close()
    for writer in moving:
        if writer < owners:
            _rewrite_own(root, writer, owners, loaded[writer])
    fsync_dir(root / JOURNAL_DIR)
    # Everything is durable in its owner's journal: the sources can go.
    for writer in moving:
        for _, _, name in journal.segments(root / JOURNAL_DIR, writer):
            if loaded[writer][1] > journal.parse_name(name)[1]:
                os.unlink(root / JOURNAL_DIR / name)
    for message_id in legacy:
        legacy_path(root, message_id).unlink(missing_ok=True)
    fsync_dir(root / JOURNAL_DIR)
    fsync_dir(root / QUEUE_DIR)
    if copied:
        log.warning("spool: %d message(s) adopted by their owner of %d worker(s) (%d old-format file(s))",
                    copied, owners, len(legacy))
    return copied


def _rewrite_own(root: Path, writer: int, owners: int, loaded) -> None:
    """A journal losing some messages to other owners keeps its own in a new segment (so
    its old segments can all go)."""
    state, next_seq, _ = loaded
    segment = _NewSegment(root, writer, next_seq)
    try:
        for message_id, entry in sorted(state.entries.items()):
            if owner_of(message_id, owners) == writer:
                segment.append(read_entry(root, writer, entry, message_id))
        segment.commit()
    finally:
        segment.close()


class _NewSegment:
    """A segment `recover` writes whole for one owner, then fdatasyncs (`commit`). Its
    number follows the owner's last segment, so it supersedes what it copies."""

    def __init__(self, root: Path, writer: int, seq: int) -> None:
        directory = Path(root) / JOURNAL_DIR
        while (directory / journal.segment_name(writer, seq)).exists():
            seq += 1  # one already written for this owner during this recovery
        self.fd = os.open(directory / journal.segment_name(writer, seq),
                          os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)

    def append(self, record: SpoolRecord) -> None:
        """Write the message's `M` frame, state included."""
        os.write(self.fd, b"".join(journal.message_frame(record)))

    def commit(self) -> None:
        """Make what was appended durable."""
        os.fdatasync(self.fd)

    def close(self) -> None:
        """Close the file."""
        os.close(self.fd)
