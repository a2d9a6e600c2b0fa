"""The server commands of the `poolmta` command line that run the control plane: `up` and `control`.

`up` runs everything for one MTA server on this host, in this order: the embedded
Redis (unless a Redis URL is given; supervised, restarted from its AOF if it
dies: `control.redis_supervisor`), the control plane in this process, then the
data plane as a child process (`python -m dataplane ...`; `control` never imports
`dataplane`). SIGINT / SIGTERM stop it all in reverse order: the data plane gets
SIGTERM (SIGKILL after a grace period), the control plane stops gracefully, then
Redis. A data plane that exits on its own is an error: the rest is stopped and
`up` exits non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import grpc

from .._pb.poolmta.v1 import poolmta_pb2 as pb
from .._pb.poolmta.v1 import poolmta_pb2_grpc as rpc
from .. import grpc_tls, validation
from ..config import ControlConfig
from ..contract import file_modes
from ..contract.redis_client import RedisUrlError, check_redis_url, redacted_url
from ..contract.runtime import DATAPLANE_READY, DEFAULT_SMTP_LISTEN, ready_line_smtp
from ..embedded_redis import DEFAULT_MAXMEMORY, EmbeddedRedisError
from ..redis_supervisor import RedisSupervisor, resolve_redis
from .children import DATAPLANE_STOP_SECONDS, start_child, stop_child
from .client import CliError

log = logging.getLogger(__name__)

# How much longer than its gRPC grace period the control plane gets to stop.
CONTROL_STOP_EXTRA_SECONDS = 5.0


@dataclass(frozen=True)
class ServeOptions:
    """What `poolmta up` / `poolmta control` run with (built once from flags and environment).

    admin_token: POOLMTA_ADMIN_TOKEN, or None for `<data_dir>/admin.token`.
    dataplane: start the data plane child (False for `control` and `up --no-dataplane`).
    http_listen, inbound_listen, workers: passed to the data plane only when given.
    dataplane_args: more data-plane arguments (--route, --smarthost, its TLS), passed as given.
    min_trusted_prefix_v4/_v6: the widest network a bridge may trust (ControlConfig).
    grpc_tls, grpc_insecure: TLS for gRPC, or plaintext off loopback allowed (ControlConfig).
    metrics_listen: the control plane's metrics address (None: not served).
    dataplane_metrics_listen: the data plane's (`--metrics-listen`), passed only when given;
        "none" turns them off.
    log_format: text or json, for the control plane and the data plane.
    redis_maxmemory: the embedded Redis's memory cap in bytes (`--redis-maxmemory`).
    """

    data_dir: Path
    redis_url: str | None
    grpc_listen: str
    admin_token: str | None = None
    dataplane: bool = False
    min_trusted_prefix_v4: int = validation.MIN_TRUSTED_PREFIX_V4
    min_trusted_prefix_v6: int = validation.MIN_TRUSTED_PREFIX_V6
    server_id: int = 1
    smtp_listen: str = DEFAULT_SMTP_LISTEN
    http_listen: str | None = None
    inbound_listen: str | None = None
    workers: int | None = None
    grpc_tls: grpc_tls.ServerTls | None = None
    grpc_insecure: bool = False
    metrics_listen: str | None = None
    dataplane_metrics_listen: str | None = None
    log_format: str = "text"
    dataplane_args: tuple[str, ...] = ()
    redis_maxmemory: int = DEFAULT_MAXMEMORY


def serve(opts: ServeOptions, out: IO[str]) -> int:
    """Run until SIGINT/SIGTERM (exit 0) or an unexpected data-plane exit (exit 1)."""
    try:
        file_modes.private_dir(opts.data_dir)
    except OSError as exc:
        raise CliError(f"cannot create the data directory {opts.data_dir}: {exc.strerror}") from None
    try:
        check_redis_url(opts.redis_url or "unix://")
    except RedisUrlError as exc:
        raise CliError(str(exc)) from None
    try:
        redis_url, embedded = resolve_redis(opts.data_dir, opts.redis_url, opts.redis_maxmemory)
    except EmbeddedRedisError as exc:
        raise CliError(f"the embedded Redis did not start: {exc}") from None
    try:
        return asyncio.run(_Stack(opts, redis_url, embedded, out).run())
    finally:
        if embedded is not None:
            embedded.stop()


class _Stack:
    """One run of the control plane (and data plane child) on a started Redis."""

    def __init__(self, opts: ServeOptions, redis_url: str, embedded: RedisSupervisor | None, out: IO[str]):
        self.opts = opts
        self.redis_url = redis_url
        self.embedded = embedded
        self.out = out
        self.stopping = asyncio.Event()
        self.dataplane: asyncio.subprocess.Process | None = None
        self._pumps: list[asyncio.Task] = []
        self._ready = asyncio.Event()
        self._ready_line = ""

    def say(self, message: str) -> None:
        self.out.write(f"poolmta: {message}\n")
        self.out.flush()

    async def run(self) -> int:
        # The control plane imports grpc.aio servers, Redis and SQLite: only `up`
        # and `control` pay for that, not every client command.
        from ..server import ControlPlane

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)

        opts = self.opts
        self.say(f"data directory {opts.data_dir}")
        if self.embedded is not None:
            self.say(f"Redis {self.redis_url} (embedded, pid {self.embedded.server.pid}), "
                     "restarted from its append-only file if it dies")
        else:
            self.say(f"Redis {redacted_url(self.redis_url)}")

        cp = ControlPlane(
            ControlConfig(
                data_dir=opts.data_dir, redis_url=self.redis_url, grpc_listen=opts.grpc_listen,
                admin_token=opts.admin_token, min_trusted_prefix_v4=opts.min_trusted_prefix_v4,
                min_trusted_prefix_v6=opts.min_trusted_prefix_v6, grpc_tls=opts.grpc_tls,
                grpc_insecure=opts.grpc_insecure, metrics_listen=opts.metrics_listen,
            )
        )
        try:
            await cp.start()
        except (OSError, RuntimeError) as exc:
            await stop_within(cp.stop(0), CONTROL_STOP_EXTRA_SECONDS)
            raise CliError(f"the control plane could not start on {opts.grpc_listen}: {exc}") from None
        exit_code = 0
        try:
            security = f"TLS, certificate {opts.grpc_tls.cert_file}" if opts.grpc_tls else "plaintext"
            self.say(f"control plane (gRPC) listening on {cp.grpc_address} ({security})")
            if cp.metrics_address:
                self.say(f"control plane metrics on http://{cp.metrics_address}/metrics")
            if opts.admin_token:
                self.say("admin token: the one in POOLMTA_ADMIN_TOKEN")
            else:
                self.say(f"admin token in {cp.admin_token_path} (client commands read it from there)")
            if opts.dataplane:
                exit_code = await self._run_with_dataplane(cp)
            else:
                self.say("up; Ctrl-C or SIGTERM stops it")
                await self.stopping.wait()
        finally:
            self.say("stopping")
            await self._stop_dataplane()
            await stop_within(cp.stop(), cp.config.grace_seconds + CONTROL_STOP_EXTRA_SECONDS)
            for task in self._pumps:
                task.cancel()
            await asyncio.gather(*self._pumps, return_exceptions=True)
        self.say("stopped")
        return exit_code

    async def _run_with_dataplane(self, cp) -> int:
        opts = self.opts
        await self._announce_server(cp)
        await self._start_dataplane()
        self.say(f"data plane for MTA server {opts.server_id} starting (pid {self.dataplane.pid}): "
                 f"SMTP bridge on {opts.smtp_listen}")
        stop_wait = asyncio.create_task(self.stopping.wait())
        exited = asyncio.create_task(self.dataplane.wait())
        ready_wait = asyncio.create_task(self._ready.wait())
        try:
            pending = {stop_wait, exited, ready_wait}
            while True:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if ready_wait in done:
                    smtp = ready_line_smtp(self._ready_line)
                    where = f" (SMTP bridge on {smtp})" if smtp else ""
                    self.say(f"data plane ready{where}; up. Ctrl-C or SIGTERM stops it")
                if stop_wait in done:
                    return 0
                if exited in done:
                    code = self.dataplane.returncode
                    await self._drain_pumps()
                    self.out.flush()
                    sys.stderr.write(
                        f"\nerror: THE DATA PLANE EXITED UNEXPECTEDLY (exit code {code}); "
                        "stopping the control plane and Redis. Its output above says why.\n\n"
                    )
                    sys.stderr.flush()
                    return 1
        finally:
            for task in (stop_wait, exited, ready_wait):
                task.cancel()

    async def _announce_server(self, cp) -> None:
        """Say which MTA server this host runs, or how to register it when it is not yet."""
        token = self.opts.admin_token or cp.admin_token_path.read_text(encoding="utf-8").strip()
        async with grpc_tls.self_channel(cp.grpc_address, self.opts.grpc_tls) as channel:
            try:
                server = await rpc.MtaServerServiceStub(channel).GetMtaServer(
                    pb.GetMtaServerRequest(server_id=self.opts.server_id),
                    metadata=(("authorization", f"Bearer {token}"),), timeout=5,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    log.warning("could not check MTA server %s: %s", self.opts.server_id, exc.details())
                    return
                self.say(
                    f"MTA server {self.opts.server_id} is not registered yet: its data plane answers "
                    "421 until it is. Register it with:\n"
                    "    poolmta server register --hostname <public hostname> --zone <zone, e.g. US-1>"
                )
                return
        self.say(f"MTA server {server.server_id}: {server.hostname}, zone {server.zone}")

    def _dataplane_command(self) -> list[str]:
        opts = self.opts
        cmd = [
            sys.executable, "-m", "dataplane", "--server-id", str(opts.server_id),
            "--data-dir", str(opts.data_dir), "--redis-url", self.redis_url, "--smtp-listen", opts.smtp_listen,
        ]
        if opts.http_listen:
            cmd += ["--http-listen", opts.http_listen]
        if opts.inbound_listen:
            cmd += ["--inbound-listen", opts.inbound_listen]
        if opts.workers is not None:
            cmd += ["--workers", str(opts.workers)]
        if opts.dataplane_metrics_listen:
            cmd += ["--metrics-listen", opts.dataplane_metrics_listen]
        cmd += ["--log-format", opts.log_format]
        return cmd + list(opts.dataplane_args)

    def _ready_seen(self, line: str) -> None:
        if not self._ready.is_set():
            self._ready_line = line
            self._ready.set()

    async def _start_dataplane(self) -> None:
        self.dataplane = await start_child(self._dataplane_command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._pumps = [
            asyncio.create_task(_pump(self.dataplane.stdout, self.out, self._ready_seen)),
            asyncio.create_task(_pump(self.dataplane.stderr, sys.stderr, self._ready_seen)),
        ]

    async def _stop_dataplane(self) -> None:
        proc = self.dataplane
        if proc is None or proc.returncode is not None:
            return
        await stop_child(proc, DATAPLANE_STOP_SECONDS, "poolmta: the data plane")
        await self._drain_pumps()

    async def _drain_pumps(self) -> None:
        """Let the pumps forward the exited data plane's last words."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._pumps, return_exceptions=True), 2.0)


async def stop_within(stopping: Coroutine, timeout: float) -> None:
    """Await `stopping`; if it has not finished after `timeout` seconds, cancel every
    other task of the loop until it has.

    A background loop that swallows its cancellation (a Redis client can turn a
    cancelled read into a connection error, which such a loop retries) must not
    keep SIGTERM from stopping poolmta.
    """
    task = asyncio.ensure_future(stopping)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        sys.stderr.write(f"poolmta: the control plane did not stop within {timeout:g}s; cancelling what is left\n")
    while not task.done():
        for other in asyncio.all_tasks():
            if other is not task and other is not asyncio.current_task():
                other.cancel()
        await asyncio.wait({task}, timeout=1.0)
    task.result()


async def _pump(stream: asyncio.StreamReader, sink: IO[str], on_ready: Callable[[str], None]) -> None:
    """Forward a child's output line by line, calling `on_ready` with the data plane's ready line."""
    while line := await stream.readline():
        decoded = line.decode("utf-8", "replace")
        sink.write(decoded)
        sink.flush()
        if DATAPLANE_READY in decoded:
            on_ready(decoded)
