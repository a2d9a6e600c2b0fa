"""How the spool changes a file so that a crash at any instant leaves it whole or absent.

Writing a record (crash safe): write `tmp/…` with O_EXCL, fdatasync it, rename it
to `queue/<id>.msg`, fsync `queue/`, and only then answer 250. A crash at any
point leaves either no `queue/` entry (the client got no 250 and retries) or a
complete one. Concurrent messages share the directory fsync (group commit): one
fsync covers every rename done before it started.

Rewriting a record is the same write to the same final name; removing one is an
unlink followed by the same group-committed directory fsync. Everything here
blocks: the spool runs it on its writer threads, never on the event loop.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

FILE_MODE = 0o640


def fsync_dir(path: Path) -> None:
    """Fsync the directory `path`, so the renames and unlinks done in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class GroupFsync:
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


def write_durably(tmp_path: str, final_path: str, parts: list[bytes], dir_sync: GroupFsync) -> None:
    """Write `parts` to tmp_path, fdatasync, rename to final_path, fsync the directory
    (group commit). On any failure nothing is left at either path, and OSError propagates."""
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            total = sum(len(p) for p in parts)
            written = os.writev(fd, parts)
            if written < total:  # a short write: finish it the slow way
                _write_all(fd, memoryview(b"".join(parts))[written:])
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
            _write_all(fd, memoryview(data))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        _unlink_quietly(str(tmp))
        raise


def _write_all(fd: int, view: memoryview) -> None:
    # os.write may write less than it is given (a signal, a full disk's last blocks).
    while view:
        view = view[os.write(fd, view) :]


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def remove_durably(path: str, dir_sync: GroupFsync) -> bool:
    """Unlink `path` and fsync its directory (group commit); False if it was not there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    dir_sync.sync()
    return True
