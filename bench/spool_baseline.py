"""The accept path the spool journal replaced, kept as the baseline `test_bench_spool`
measures it against: one file per message (write `tmp/<id>.tmp`, fdatasync, rename
to `queue/<id>.msg`, then a directory fsync shared by concurrent renames), and after
delivery an unlink and another shared directory fsync. Not used by the product.
"""

from __future__ import annotations

import os
import threading

from dataplane.spool.durable import FILE_MODE, write_all


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
                write_all(fd, memoryview(b"".join(parts))[written:])
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.rename(tmp_path, final_path)
    except BaseException:
        unlink_quietly(tmp_path)
        raise
    try:
        dir_sync.sync()
    except BaseException:
        # The rename may not be durable: take it back, so an error means "not queued".
        unlink_quietly(final_path)
        raise




def remove_durably(path: str, dir_sync: GroupFsync) -> bool:
    """Unlink `path` and fsync its directory (group commit); False if it was not there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    dir_sync.sync()
    return True


def unlink_quietly(path: str) -> None:
    """Unlink `path` if it is there."""
    try:
        os.unlink(path)
    except OSError:
        pass
