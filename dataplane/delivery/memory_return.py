"""Memory given back to the system once a worker's delivery queue has drained from a
large backlog.

A drained backlog leaves its memory with the worker: CPython keeps freed objects'
memory for reuse, and glibc's malloc keeps the free pages inside its heaps until it
is asked for them. The second part can be had back: `malloc_trim(0)`. Measured on a
worker that drained 50,000 queued 1 KB messages (`bench/backlog_memory.py`): 228 MB
after the drain (65 MB before the backlog), 191 MB after one call. Elsewhere than
glibc (musl, macOS) there is no such call, and giving back is a no-op.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("poolmta.dataplane.delivery")

# A backlog this large (messages queued) is worth giving memory back after.
LARGE_BACKLOG = 10_000
# Drained: the queue is down to this share of its high-water mark.
DRAINED_SHARE = 4


def _find_malloc_trim():
    """glibc's malloc_trim, or None when the C library has none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own C library
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _find_malloc_trim()


def give_back() -> bool:
    """Return the C heap's free pages to the system; False where the C library cannot
    (then nothing happens). Blocks while it runs: call it from a thread."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


class DrainWatch:
    """Follows the length of one worker's queue and says when it has drained from a
    large backlog (once per backlog)."""

    __slots__ = ("high",)

    def __init__(self) -> None:
        self.high = 0  # the queue's high-water mark since the last drain

    def drained(self, queued: int) -> bool:
        """Note `queued` messages now; True when the queue just came down to a quarter
        of a high-water mark of at least LARGE_BACKLOG (the mark then starts again)."""
        self.high = max(self.high, queued)
        if self.high >= LARGE_BACKLOG and queued * DRAINED_SHARE <= self.high:
            log.info("delivery: the queue drained from %d message(s) to %d; giving memory back", self.high, queued)
            self.high = queued
            return True
        return False
