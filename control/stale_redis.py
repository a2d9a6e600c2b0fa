"""A redis-server left running by a crashed run of a data directory: telling it
apart from anything else that holds its pid, and killing it.

`EmbeddedRedis.start()` calls `kill_stale_server` while it holds the data
directory's ownership lock, so nobody live manages the process the pidfile names.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["StaleRedisError", "kill_stale_server", "read_pid"]

_POLL_INTERVAL = 0.02


class StaleRedisError(RuntimeError):
    """A redis-server left behind by an earlier run could not be killed."""


def read_pid(path: Path) -> int | None:
    """The positive pid a pidfile holds, or None (no file, unreadable, not a pid)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def kill_stale_server(pidfile: Path, redis_dir: Path, data_dir: Path) -> None:
    """Kill the redis-server `pidfile` names if it serves `redis_dir`, and remove the pidfile.

    It is ours only if it is a redis-server whose working directory (Redis chdirs
    to its `dir`) is `redis_dir`: a recycled pid belonging to anything else is left
    alone. SIGTERM, then SIGKILL; raises StaleRedisError if it survives both.
    """
    pid = read_pid(pidfile)
    if pid is None or pid == os.getpid() or not _pid_alive(pid):
        return
    if not _is_redis_of(pid, redis_dir):
        return
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _wait_until(lambda: not _pid_alive(pid), wait):
            break
    else:
        raise StaleRedisError(
            f"a redis-server (pid {pid}) left running by an earlier run of {data_dir} could not be killed"
        )
    with contextlib.suppress(FileNotFoundError):
        pidfile.unlink()


def _pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return not sys.platform.startswith("linux")
    except OSError:
        return True
    # The state follows the parenthesised command name, which may itself hold ')'.
    return stat_line[stat_line.rfind(b")") + 2 :][:1] not in (b"Z", b"X")


def _is_redis_of(pid: int, redis_dir: Path) -> bool:
    """True when `pid` is a redis-server whose working directory is `redis_dir` (Linux /proc)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.ESRCH):
            raise
        return False
    return b"redis-server" in cmdline and os.path.realpath(cwd) == os.path.realpath(redis_dir)


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL)
    return True
