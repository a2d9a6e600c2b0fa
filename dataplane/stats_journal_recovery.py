"""Recovery of the stats journals dead workers left: the groups they left open
around a spool update are decided from the spool, and the journal is closed so a
worker may claim and replay it (the rule is in `stats_journal`'s docstring).

The supervisor runs `resolve_orphans` at start, before any worker (what a kill -9
of everything left), and when it reaps a worker, before restarting it: nobody
changes the spool records in question meanwhile, because the worker owning them
is the one being (re)started.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from control.contract.file_modes import PRIVATE_FILE_MODE

from .spool import SpoolError, view_of
from .spool.durable import wait_for_flock
from .stats_journal import (
    ABORT,
    CLOSED,
    COMMIT,
    GROUP,
    LOCK_SUFFIX,
    SEGMENT_SUFFIX,
    decode_all,
    encode,
    read_segment,
    segments_of,
    token_of,
)

log = logging.getLogger("poolmta.dataplane.stats")


def spool_check(spool_dir: Path) -> Callable[[list], bool]:
    """How `resolve_orphans` decides an open group from the spool of `spool_dir`: whether
    the spool update it accounts for happened. A stored message is queued ("q": its
    whole `M` frame is in a journal, or its old-format file is in `queue/`); a rewrite's
    record carries at least that many attempts ("a"); a removed message is not queued
    ("r": its `F` frame is written). A record gone or damaged after a rewrite counts as
    rewritten: it will not be delivered again. The spool is read once, when first asked."""
    view = None

    def happened(check: list) -> bool:
        nonlocal view
        if view is None:
            view = view_of(spool_dir)
        kind, message_id = check[0], check[1]
        queued = view.queued(message_id)
        if kind == "q":
            return queued
        if kind == "r":
            return not queued
        try:
            return len(view.record(message_id).attempts) >= check[2]
        except (FileNotFoundError, SpoolError):
            return True

    return happened


def resolve_orphans(directory: Path, happened: Callable[[list], bool], *, pid: int | None = None,
                    wait: float = 5.0) -> int:
    """Decide the open groups of the journals of dead workers (those of process `pid`,
    or every journal nobody holds) with `happened` (`spool_check`), and close them so a
    worker may claim them. Run by the supervisor before it starts or restarts the
    workers that own the spool records in question. Returns how many groups it decided."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    tokens = {token_of(n) for n in names if n.endswith((SEGMENT_SUFFIX, LOCK_SUFFIX))}
    decided = 0
    for token in sorted(tokens):
        if pid is not None and not token.startswith(f"{pid}-"):
            continue
        fd = wait_for_flock(directory / f"{token}{LOCK_SUFFIX}", wait, PRIVATE_FILE_MODE)
        if fd is None:
            log.warning("stats journal %s is held by a live worker; not resolved", token)
            continue
        try:
            decided += _resolve(directory, token, happened)
        finally:
            os.close(fd)
    return decided


def _resolve(directory: Path, token: str, happened: Callable[[list], bool]) -> int:
    segments = segments_of(directory, token)
    if not segments:
        os.unlink(directory / f"{token}{LOCK_SUFFIX}")
        return 0
    last = directory / segments[-1]
    if read_segment(last)[0].closed:
        return 0
    # Undecided: open in some segment and decided in none (a copy carried into a later
    # segment is decided there). The last segment gets a copy of each, then its decision.
    open_groups: dict[int, list] = {}
    decided: set[int] = set()
    for name in segments:
        data = (directory / name).read_bytes()
        for record in decode_all(data)[0]:
            if record[0] == GROUP:
                open_groups[record[1]] = record
            elif record[0] in (COMMIT, ABORT):
                decided.add(record[1])
    frames = []
    undecided = [group for gid, group in sorted(open_groups.items()) if gid not in decided]
    committed = 0
    for group in undecided:
        done = happened(group[2])
        committed += done
        frames += [encode(group), encode([COMMIT if done else ABORT, group[1]])]
    frames.append(encode([CLOSED]))
    fd = os.open(last, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        if read_segment(last)[0].torn:  # a torn tail would hide what follows: start a segment after it
            os.close(fd)
            seq = int(segments[-1].split(".")[1]) + 1
            fd = os.open(directory / f"{token}.{seq:08d}{SEGMENT_SUFFIX}",
                         os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
        os.write(fd, b"".join(frames))
    finally:
        os.close(fd)
    if undecided:
        log.info("stats journal %s: %d spool update(s) were under way when its worker died; %d had happened",
                 token, len(undecided), committed)
    return len(undecided)
