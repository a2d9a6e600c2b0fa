"""The stack of processes the demo (and the load harness) runs: the whole of poolmta
for one MTA server on loopback, with `poolmta sink` as the destination of every domain.

The embedded Redis and the control plane run in this process; the sink and the
data plane (`python -m dataplane`: `control` never imports `dataplane`) are child
processes, each logging to `<data_dir>/logs/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ...config import ControlConfig
from ...contract.runtime import (
    DATAPLANE_READY,
    SINK_READY,
    ready_line_http,
    ready_line_inbound,
    ready_line_smtp,
)
from ...embedded_redis import EmbeddedRedis, EmbeddedRedisError
from ..children import DATAPLANE_STOP_SECONDS, start_child, stop_child
from ..serve import CONTROL_STOP_EXTRA_SECONDS, stop_within
from . import DemoError

# How long a child gets to print its ready line (the data plane spawns fresh interpreters).
START_TIMEOUT = 60.0
SINK_STOP_SECONDS = 5.0
LOG_TAIL_LINES = 20
# Every domain goes to the sink; deferred recipients are retried quickly.
RETRY_SCHEDULE = "0.5s,1s,2s"


@dataclass(frozen=True)
class StackOptions:
    """The stack `Stack` runs.

    data_dir: holds the SQLite database, admin token, embedded Redis, spool and the
        children's logs (`<data_dir>/logs/`).
    sink_store: the sink keeps each message (`<data_dir>/sink/<n>.eml`) and a JSON
        line per message (`<data_dir>/sink.jsonl`); off for benchmarks.
    dataplane_args: extra data-plane flags.
    """

    data_dir: Path
    workers: int = 2
    retry_schedule: str = RETRY_SCHEDULE
    sink_store: bool = True
    dataplane_args: tuple[str, ...] = ()


class ChildProcess:
    """A child process of the stack (see `children`), whose stderr goes to a log file
    and whose stdout is read up to a ready line, then to the log."""

    def __init__(self, name: str, argv: list[str], log_path: Path, ready_marker: str):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.ready_marker = ready_marker
        self.proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self._pump: asyncio.Task | None = None

    @property
    def pid(self) -> int | None:
        """Its process id once started."""
        return self.proc.pid if self.proc is not None else None

    async def start(self, timeout: float = START_TIMEOUT) -> str:
        """Start the child; return its ready line. DemoError (with the end of its log)
        when it exits or stays silent instead."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept for the child's life
        self.proc = await start_child(self.argv, stdout=subprocess.PIPE, stderr=self._log)
        try:
            line = await asyncio.wait_for(self._ready_line(), timeout)
        except TimeoutError:
            raise DemoError(f"{self.name} printed no ready line within {timeout:g}s{self.log_tail()}") from None
        if line is None:
            await self.proc.wait()
            raise DemoError(f"{self.name} exited with code {self.proc.returncode} while starting{self.log_tail()}")
        self._pump = asyncio.create_task(self._copy_rest())
        return line

    async def _ready_line(self) -> str | None:
        assert self.proc is not None and self.proc.stdout is not None and self._log is not None
        while raw := await self.proc.stdout.readline():
            self._log.write(raw)
            self._log.flush()
            line = raw.decode("utf-8", "replace").strip()
            if self.ready_marker in line:
                return line
        return None

    async def _copy_rest(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None and self._log is not None
        while raw := await self.proc.stdout.readline():
            self._log.write(raw)
            self._log.flush()

    def running(self) -> bool:
        """True from start until it exits."""
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; waits for the exit either way."""
        if self.proc is not None:
            await stop_child(self.proc, timeout, f"poolmta demo: {self.name}")
        if self._pump is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(self._pump, return_exceptions=True), 2.0)
            self._pump = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self) -> str:
        """The last lines of its log, as the end of an error message ("" when none)."""
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        lines = [line for line in lines if line.strip()][-LOG_TAIL_LINES:]
        return f"; end of {self.log_path}:\n" + "\n".join(lines) if lines else ""


class Stack:
    """The whole of poolmta for one MTA server on loopback, with a sink as the destination.

        async with Stack(StackOptions(data_dir)) as stack:
            stack.grpc_address, stack.smtp_address, stack.http_address, stack.inbound_address,
            stack.sink_address, stack.admin_token

    The embedded Redis and the control plane run in this process (start it from the
    main thread: the Redis child dies with the thread that forked it); the sink and
    the data plane are child processes. Leaving the block stops all of it, in reverse
    order, whatever happened inside.
    """

    def __init__(self, options: StackOptions):
        self.options = options
        self.data_dir = options.data_dir
        self.redis: EmbeddedRedis | None = None
        self.control = None  # control.server.ControlPlane once started
        self.sink: ChildProcess | None = None
        self.dataplane: ChildProcess | None = None
        self.grpc_address = ""
        self.admin_token = ""
        self.smtp_address: tuple[str, int] = ("", 0)
        self.inbound_address: tuple[str, int] = ("", 0)
        self.http_address: tuple[str, int] = ("", 0)  # the REST Bridge
        self.sink_address: tuple[str, int] = ("", 0)

    @property
    def logs_dir(self) -> Path:
        """Where the children's logs go."""
        return self.data_dir / "logs"

    @property
    def sink_counts_path(self) -> Path:
        """The sink's counts file (accepted, rejected, deferred; per peer address)."""
        return self.data_dir / "sink-counts.json"

    @property
    def sink_log_path(self) -> Path:
        """The sink's JSON line per message (with `sink_store`)."""
        return self.data_dir / "sink.jsonl"

    @property
    def sink_store_dir(self) -> Path:
        """Where the sink keeps each message as `<n>.eml` (with `sink_store`)."""
        return self.data_dir / "sink"

    async def __aenter__(self) -> Stack:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start Redis, the sink, the data plane and the control plane, in that order;
        DemoError saying which did not start. Prefer `async with`, which stops it all."""
        from ...server import ControlPlane

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.redis = EmbeddedRedis(self.data_dir)
        try:
            redis_url = self.redis.start()
        except EmbeddedRedisError as exc:
            raise DemoError(f"the embedded Redis did not start: {exc}") from None
        # The children first: forking once gRPC's threads run makes grpc log about its fork handlers.
        self.sink = ChildProcess("the sink", self._sink_command(), self.logs_dir / "sink.log", SINK_READY)
        ready = await self.sink.start()
        self.sink_address = _host_port(ready.split(SINK_READY, 1)[1].split(",")[0])

        self.dataplane = ChildProcess("the data plane", self._dataplane_command(redis_url),
                                self.logs_dir / "dataplane.log", DATAPLANE_READY)
        ready = await self.dataplane.start()
        smtp = ready_line_smtp(ready)
        if smtp is None:
            raise DemoError(f"the data plane's ready line names no SMTP address: {ready!r}")
        self.smtp_address = _host_port(smtp)
        inbound = ready_line_inbound(ready)
        if inbound is not None:
            self.inbound_address = _host_port(inbound)
        http = ready_line_http(ready)
        if http is None:
            raise DemoError(f"the data plane's ready line names no REST Bridge address: {ready!r}")
        self.http_address = _host_port(http)

        control = ControlPlane(ControlConfig(data_dir=self.data_dir, redis_url=redis_url, grpc_listen="127.0.0.1:0",
                                             publish_check_interval=0.25, grace_seconds=1.0))
        self.control = control
        try:
            await control.start()
        except (OSError, RuntimeError) as exc:
            raise DemoError(f"the control plane did not start: {exc}") from None
        self.grpc_address = control.grpc_address
        self.admin_token = control.admin_token_path.read_text(encoding="utf-8").strip()

    def _sink_command(self) -> list[str]:
        cmd = [sys.executable, "-m", "dataplane.sink", "--listen", "127.0.0.1:0", "--hostname", "mx.example.net",
               "--counts-file", str(self.sink_counts_path)]
        if self.options.sink_store:
            cmd += ["--store", str(self.sink_store_dir), "--log", str(self.sink_log_path)]
        return cmd

    def _dataplane_command(self, redis_url: str) -> list[str]:
        host, port = self.sink_address
        return [
            sys.executable, "-m", "dataplane", "--server-id", "1", "--data-dir", str(self.data_dir),
            "--redis-url", redis_url, "--smtp-listen", "127.0.0.1:0", "--inbound-listen", "127.0.0.1:0",
            "--metrics-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
            "--workers", str(self.options.workers),
            "--log-level", "warning", "--route", f"*={host}:{port}",
            "--retry-schedule", self.options.retry_schedule, *self.options.dataplane_args,
        ]

    async def stop(self) -> None:
        """Stop what runs, newest first; safe to call twice."""
        if self.dataplane is not None:
            await self.dataplane.stop(DATAPLANE_STOP_SECONDS)
        if self.sink is not None:
            await self.sink.stop(SINK_STOP_SECONDS)
        if self.control is not None:
            control, self.control = self.control, None
            await stop_within(control.stop(), control.config.grace_seconds + CONTROL_STOP_EXTRA_SECONDS)
        if self.redis is not None:
            self.redis.stop()

    def sink_counts(self) -> dict:
        """The sink's counts file ({} before its first write)."""
        try:
            return json.loads(self.sink_counts_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def check_children(self) -> None:
        """DemoError when the sink or the data plane has exited."""
        for child in (self.sink, self.dataplane):
            if child is not None and child.proc is not None and not child.running():
                raise DemoError(f"{child.name} exited unexpectedly (code {child.proc.returncode}){child.log_tail()}")


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":")
    return host.strip("[]"), int(port)
