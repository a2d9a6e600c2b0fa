"""The child processes poolmta's commands start (`up`'s data plane, the demo's sink
and data plane, `poolmta dataplane`'s data plane): how they start and how they stop.

Each runs in its own session, so a terminal's Ctrl-C reaches poolmta alone, which
then stops its children in order; PDEATHSIG stops a child if poolmta itself is
killed. Stopping is SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import IO

from ..contract.runtime import argv_dying_with_parent

# What a child's output can be handed to: a pipe, a file, or None (ours).
Output = int | IO | None

# How long the data plane gets to finish in-flight SMTP sessions after SIGTERM.
DATAPLANE_STOP_SECONDS = 15.0


async def start_child(argv: Sequence[str], stdout: Output, stderr: Output) -> asyncio.subprocess.Process:
    """Start `argv` with no stdin, in its own session, dying with the calling thread."""
    return await asyncio.create_subprocess_exec(
        *argv_dying_with_parent(argv), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
        start_new_session=True,
    )


async def stop_child(proc: asyncio.subprocess.Process, timeout: float, who: str) -> None:
    """SIGTERM `proc`, then SIGKILL after `timeout` seconds, saying so on stderr as
    `who` ("poolmta: the data plane"); returns once it has exited."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        sys.stderr.write(f"{who} did not stop within {timeout:g}s; killing it\n")
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def exit_code(returncode: int) -> int:
    """A child's return code as a shell reports it: 128 + N when signal N ended it."""
    return returncode if returncode >= 0 else 128 - returncode
