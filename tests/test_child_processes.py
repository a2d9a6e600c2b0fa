"""Children poolmta starts die with the thread that started them
(`control.contract.runtime.argv_dying_with_parent`): no Python runs in the forked
copy of a process with threads, and the death signal is set before the program runs."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from control.contract.runtime import argv_dying_with_parent


def _wait_gone(proc: subprocess.Popen, seconds: float) -> int | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return proc.returncode
        time.sleep(0.05)
    return None


def test_the_child_becomes_the_program_with_the_same_pid():
    argv = argv_dying_with_parent([sys.executable, "-c", "import os, sys; print(os.getpid()); sys.exit(3)"])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 3
    assert int(out) == proc.pid


def test_a_child_started_by_a_thread_gets_sigterm_when_that_thread_ends():
    started: list[subprocess.Popen] = []

    def start() -> None:
        started.append(subprocess.Popen(argv_dying_with_parent(["sleep", "60"])))
        time.sleep(0.5)  # the prelude has set its death signal and become `sleep`

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    proc = started[0]
    try:
        assert _wait_gone(proc, 10) == -15
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_child_whose_parent_is_already_gone_leaves_at_once():
    # The prelude compares its parent with the pid it was given: a different one means
    # the starter died before the death signal was set.
    argv = argv_dying_with_parent(["sleep", "60"])
    pid_at = argv.index(str(os.getpid()))
    argv[pid_at] = "1"
    proc = subprocess.Popen(argv)
    assert _wait_gone(proc, 10) == 1
