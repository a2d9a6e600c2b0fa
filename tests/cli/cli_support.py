"""The CLI tests' harness: the real `poolmta` CLI run in process (`main(argv)`)
against a real control plane serving from its own thread, and readers of what it
prints. Its fixtures are in `tests/cli/conftest.py`."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from control.cli.main import main
from control.cli.serve import stop_within
from control.config import ControlConfig
from control.server import ControlPlane

POOLMTA_ENV = ("POOLMTA_DATA_DIR", "POOLMTA_REDIS_URL", "POOLMTA_GRPC", "POOLMTA_TOKEN", "POOLMTA_ADMIN_TOKEN")


def subprocess_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in POOLMTA_ENV}


class ThreadedControlPlane:
    """A ControlPlane serving from its own event loop in a daemon thread."""

    def __init__(self, config: ControlConfig):
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="control-plane", daemon=True)
        self.cp = ControlPlane(config)

    def _run(self, coro, timeout: float = 20.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> ThreadedControlPlane:
        self.thread.start()
        self._run(self.cp.start())
        return self

    def stop(self) -> None:
        try:
            # The same guard `poolmta up` uses: ControlPlane.stop() can wait forever on a
            # background loop that swallowed its cancellation (reported upstream).
            self._run(stop_within(self.cp.stop(0), 5.0), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    @property
    def address(self) -> str:
        return self.cp.grpc_address


@dataclass

class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


class Cli:
    """Runs `poolmta --grpc ADDR --data-dir DIR ARGS...` in-process."""

    def __init__(self, capsys, address: str, data_dir: Path):
        self.capsys = capsys
        self.address = address
        self.data_dir = data_dir

    def argv(self, *args: str) -> list[str]:
        return ["--grpc", self.address, "--data-dir", str(self.data_dir), *args]

    def __call__(self, *args: str) -> Result:
        self.capsys.readouterr()
        code = main(self.argv(*args))
        out, err = self.capsys.readouterr()
        return Result(code, out, err)

    def ok(self, *args: str) -> Result:
        result = self(*args)
        assert result.code == 0, f"poolmta {' '.join(args)} -> {result.code}\n{result.out}\n{result.err}"
        return result

    def fails(self, code: int, *args: str) -> Result:
        result = self(*args)
        assert result.code == code, f"poolmta {' '.join(args)} -> {result.code}\n{result.out}\n{result.err}"
        assert "Traceback" not in result.err
        return result


def control_config(data_dir: Path, redis_url: str, **overrides) -> ControlConfig:
    settings = dict(grpc_listen="127.0.0.1:0", publish_check_interval=0.1, reconcile_interval=0.05,
                    grace_seconds=0.5)
    settings.update(overrides)
    return ControlConfig(data_dir=data_dir, redis_url=redis_url, **settings)


def token_after(out: str, marker: str) -> str:
    """The line after the line containing `marker` (where a secret is printed once)."""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if marker in line:
            return lines[i + 1].strip()
    raise AssertionError(f"{marker!r} not in output:\n{out}")


def table_rows(out: str) -> list[list[str]]:
    """The data rows of a rich table: lines below the header rule, split on 2+ spaces."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if set(line.strip()) == {"─"}) + 1
    return [re.split(r"\s{2,}", line.strip()) for line in lines[start:] if line.strip()]


def field(out: str, name: str) -> str:
    """The value of `Name  value` in a details block."""
    for line in out.splitlines():
        if line.startswith(name + "  "):
            return line[len(name):].strip()
    raise AssertionError(f"no field {name!r} in:\n{out}")

# -- renderers and parsing ------------------------------------------------------------


def run_poolmta(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`poolmta ARGS` as a subprocess, its output captured as text."""
    return subprocess.run([sys.executable, "-m", "control.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=subprocess_env())


class Lines:
    """A process's output lines, read by a thread so reads can time out."""

    def __init__(self, stream, companion: Lines | None = None):
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.companion = companion  # the other stream, quoted when an expected line does not come
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def text(self) -> str:
        """What has arrived so far, without waiting."""
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return "".join(self.seen)
            if line is None:
                self._queue.put(None)
                return "".join(self.seen)
            self.seen.append(line)

    def _missing(self, what: str) -> AssertionError:
        other = f"\n--- other stream:\n{self.companion.text()}" if self.companion else ""
        return AssertionError(f"{what}; got:\n{''.join(self.seen)}{other}")

    def _read(self, stream) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def until(self, pattern: str, timeout: float = 30.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise self._missing(f"no line matching {pattern!r} in time") from None
            if line is None:
                self._queue.put(None)
                raise self._missing(f"output ended before {pattern!r}")
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match

    def rest(self, timeout: float = 30.0) -> str:
        """Everything up to the end of the output (the process has exited)."""
        deadline = time.monotonic() + timeout
        while (line := self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))) is not None:
            self.seen.append(line)
        return "".join(self.seen)


def start_up(data_dir: Path, *args: str) -> tuple[subprocess.Popen, Lines, Lines]:
    """`poolmta up` as a subprocess, every listener on a free port unless `args` name
    it; returns it with readers of its stdout and stderr."""
    for option in ("--metrics-listen", "--dataplane-metrics-listen"):
        if option not in args:
            args = (*args, option, "127.0.0.1:0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "control.cli", "--data-dir", str(data_dir), "up", "--grpc-listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
    )
    errors = Lines(proc.stderr)
    return proc, Lines(proc.stdout, companion=errors), errors


def exit_of_up(proc: subprocess.Popen, lines: Lines, errors: Lines) -> tuple[int, str]:
    """Once `poolmta up` says it stopped: its exit code and everything it wrote to stderr."""
    lines.until(r"poolmta: stopped", timeout=60)
    return proc.wait(timeout=30), errors.rest()


def stop_process(proc: subprocess.Popen) -> None:
    """Kill `proc` if it still runs, and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
