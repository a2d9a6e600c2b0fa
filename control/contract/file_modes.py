"""The file-mode promise both planes keep: a data directory is 0700 and every file
holding state or secrets (SQLite database and its -wal/-shm, admin token, TLS key,
spool files, embedded Redis files) is 0600, whatever the umask.

Modes are set explicitly at creation; on start a path found looser than promised is
tightened, with a log line, because an earlier version (or an operator) may have
left it readable by others.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600

log = logging.getLogger("poolmta.files")


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) as 0700, or tighten it to 0700 when it exists
    with group or other bits. Returns `path`."""
    path = Path(path)
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    tighten(path, PRIVATE_DIR_MODE)
    return path


def tighten(path: Path, mode: int = PRIVATE_FILE_MODE) -> None:
    """chmod `path` to `mode` when it grants more than `mode` (a missing path is left
    alone: it may be created later, with `mode`)."""
    try:
        current = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if current & ~mode:
        os.chmod(path, mode)
        log.warning("%s was mode %04o; set to %04o (poolmta keeps its state private)", path, current, mode)


def create_private_file(path: Path) -> None:
    """Create `path` empty as 0600 if it does not exist (the umask cannot widen it), so
    a library that opens it afterwards (SQLite) keeps that mode; tighten it if looser."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    except FileExistsError:
        tighten(path)
    else:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # the umask can only remove bits; be explicit anyway
        os.close(fd)
