"""Replacing a small file so that a crash at any instant leaves the old one or the
new one, the directory fsync that makes a create, rename or unlink durable, and the
flock that keeps a second process away.

(The spool's messages no longer live one per file: see `journal`. The
one-file-per-message write it replaced is kept in `bench/spool_baseline.py`, as
the baseline the journal is measured against.) Everything here blocks.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from .record import SpoolError

FILE_MODE = 0o640


def fsync_dir(path: Path) -> None:
    """Fsync the directory `path`, so the renames and unlinks done in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def wait_for_flock(path: Path, wait: float, mode: int = FILE_MODE) -> int | None:
    """flock `path` exclusively (created with `mode` if missing), waiting up to `wait`
    seconds for a holder that lets go; its descriptor (to keep open while holding the
    lock), or None if it stays held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.01)


class SpoolLocked(SpoolError):
    """Another process holds the spool (or this worker's journal): two would deliver the same messages."""


def lock_file(path: Path, message: str, wait: float = 0.0) -> int:
    """flock `path` exclusively (created if missing) and return its descriptor, to keep
    open; SpoolLocked(`message`) if another process still holds it after `wait` seconds."""
    fd = wait_for_flock(path, wait)
    if fd is None:
        raise SpoolLocked(message)
    return fd


def replace_durably(path: Path, data: bytes, mode: int) -> None:
    """Replace the file `path` with `data` (permissions `mode`, whatever the umask) so
    that a crash at any instant leaves the old file or the new one, never a mix.

    For small files rewritten rarely (no group commit). The caller serialises writers
    of one path; a temporary file a crashed writer left is replaced. OSError on
    failure, with nothing left but the old file."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)
            write_all(fd, memoryview(data))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        _unlink_quietly(str(tmp))
        raise


def write_all(fd: int, view: memoryview) -> None:
    """Write all of `view`: os.write may write less than it is given (a signal, a full
    disk's last blocks)."""
    while view:
        view = view[os.write(fd, view) :]


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
