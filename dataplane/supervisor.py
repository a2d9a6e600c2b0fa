"""The data-plane supervisor: starts K worker processes that share the SMTP port
(SO_REUSEPORT), prints the ready line, restarts a worker that dies, and stops
them all on SIGINT / SIGTERM.

Before the workers start it holds a bound (not listening) SO_REUSEPORT socket on
the SMTP address, and one on the inbound listener's: that fails early and clearly
when an address is taken, turns port 0 into a concrete port every worker then
binds, and keeps the ports reserved while a worker restarts. Workers are spawned (fresh interpreters, nothing
inherited but the configuration) and die with the supervisor (PDEATHSIG).
It resolves the stats journals dead workers left (at start, and when it reaps a
worker, before restarting it: `stats_journal_recovery`). It also makes the VERP
key file (`<data_dir>/verp.keys`) before the first worker starts, so the workers
all load the same keys and none races to create it.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from multiprocessing.connection import Connection, wait
from typing import IO

from control.contract.metrics_http import MetricsHttpServer
from control.contract.runtime import (
    DATAPLANE_READY_HTTP,
    DATAPLANE_READY_INBOUND,
    DATAPLANE_READY_LINE,
    DATAPLANE_READY_METRICS,
)

from . import metrics, spool, stats_journal_recovery
from .config import DataplaneConfig, format_listen
from .return_path import keyring_path
from .verp_keyring import KeyringError, VerpKeyring
from .worker import listening_socket, worker_main

log = logging.getLogger("poolmta.dataplane.supervisor")

START_TIMEOUT = 60.0
# A worker that dies sooner than this after its start is restarted after a
# growing delay (a crash loop must not spin the CPU).
STABLE_AFTER = 5.0
MAX_RESTART_DELAY = 10.0


class StartError(RuntimeError):
    """The data plane could not start; the message says why."""


def _reserve(host: str, port: int, listen: str) -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket on host:port; StartError if it is taken."""
    try:
        return listening_socket(host, port, listen=False)
    except OSError as exc:
        raise StartError(f"cannot listen on {listen}: {exc.strerror or exc}") from None


@dataclasses.dataclass
class _Slot:
    index: int
    worker_id: str
    process: multiprocessing.process.BaseProcess | None = None
    ready: Connection | None = None
    started_at: float = 0.0
    restart_delay: float = 0.0
    restart_at: float | None = None


class Supervisor:
    def __init__(self, config: DataplaneConfig, *, log_level: str = "info", out: IO[str] = sys.stdout,
                 log_format: str = "text") -> None:
        self.config = config
        self.log_level = log_level
        self.log_format = log_format
        self._metrics: MetricsHttpServer | None = None
        self.out = out
        self._ctx = multiprocessing.get_context("spawn")
        self._stopping = False
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        host = socket.gethostname()
        self._slots = [_Slot(i, f"{host}:{os.getpid()}:{i}") for i in range(config.workers)]

    # -- signals ----------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        self._stopping = True

    def _install_signals(self) -> None:
        self._wakeup_r.setblocking(False)
        self._wakeup_w.setblocking(False)
        signal.set_wakeup_fd(self._wakeup_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _drain_wakeup(self) -> None:
        try:
            while self._wakeup_r.recv(512):
                pass
        except BlockingIOError:
            pass

    # -- workers ----------------------------------------------------------

    def _start(self, slot: _Slot) -> None:
        receiver, sender = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=worker_main,
            args=(self.config, slot.index, slot.worker_id, sender, self.log_level, self.log_format),
            name=f"poolmta-dataplane-w{slot.index}",
        )
        process.start()
        sender.close()
        slot.process, slot.ready = process, receiver
        slot.started_at = time.monotonic()
        slot.restart_at = None
        log.info("worker %d started, pid %d", slot.index, process.pid)

    def _read_ready(self, slot: _Slot) -> tuple | None:
        """The worker's ready message, or None if it closed the pipe without one."""
        assert slot.ready is not None
        try:
            message = slot.ready.recv()
        except (EOFError, OSError):
            message = None
        slot.ready.close()
        slot.ready = None
        return message

    def _reap(self, slot: _Slot) -> None:
        process = slot.process
        assert process is not None
        process.join()
        code = process.exitcode
        removed = spool.remove_temp_files(self.config.spool_dir, process.pid)
        if self._metrics is not None:
            metrics.process_died(process.pid, self.config.metrics_dir)
        self._resolve_journals(process.pid)
        if slot.ready is not None:
            slot.ready.close()
            slot.ready = None
        slot.process = None
        if self._stopping:
            return
        uptime = time.monotonic() - slot.started_at
        slot.restart_delay = 0.0 if uptime >= STABLE_AFTER else min(max(slot.restart_delay * 2, 0.5), MAX_RESTART_DELAY)
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        log.error("worker %d (pid %d) %s after %.1fs; %d partial spool write(s) removed; restarting in %.1fs",
                  slot.index, process.pid, how, uptime, removed, slot.restart_delay)
        slot.restart_at = time.monotonic() + slot.restart_delay

    def _resolve_journals(self, pid: int | None = None) -> None:
        """Decide the stats a dead worker (`pid`; every one at start) left open around a
        spool update, from the spool, before a worker that owns those records starts
        (`stats_journal_recovery.resolve_orphans`); then any worker may replay the journal."""
        config = self.config
        try:
            stats_journal_recovery.resolve_orphans(
                config.stats_journal_dir, stats_journal_recovery.spool_check(config.spool_dir), pid=pid)
        except OSError as exc:
            log.error("cannot resolve the stats journals in %s (%s); their counts wait for the next start",
                      config.stats_journal_dir, exc)

    # -- run --------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGINT / SIGTERM; the exit code (0 after a clean stop)."""
        self._install_signals()
        config = self.config
        try:
            # Before any worker: every worker signs return paths with these keys.
            VerpKeyring.load_or_create(keyring_path(config.data_dir))
        except KeyringError as exc:
            raise StartError(str(exc)) from None
        reservations = []
        try:
            reservations.append(_reserve(config.smtp_host, config.smtp_port, config.smtp_listen))
            port = reservations[0].getsockname()[1]
            config = dataclasses.replace(config, smtp_port=port)
            if config.inbound.enabled:
                reservations.append(_reserve(config.inbound.host, config.inbound.port, config.inbound.listen))
                config = dataclasses.replace(config, inbound=dataclasses.replace(
                    config.inbound, port=reservations[1].getsockname()[1]))
            if config.http.enabled:
                reservations.append(_reserve(config.http.host, config.http.port, config.http.listen))
                config = dataclasses.replace(config, http=dataclasses.replace(
                    config.http, port=reservations[-1].getsockname()[1]))
            self.config = config
            self._serve_metrics()
            self._resolve_journals()  # what the last run left (kill -9 included), before any worker
            for slot in self._slots:
                self._start(slot)
            versions = self._wait_started()
            if versions is None:
                return 1 if not self._stopping else 0
            snapshot = min(versions) if versions and min(versions) > 0 else "none"
            inbound = DATAPLANE_READY_INBOUND.format(inbound=config.inbound.listen) if config.inbound.enabled else ""
            self.out.write(DATAPLANE_READY_LINE.format(
                server_id=config.server_id, smtp=format_listen(config.smtp_host, port),
                workers=config.workers, snapshot=snapshot,
            ) + inbound + self._ready_metrics()
            + (DATAPLANE_READY_HTTP.format(http=config.http.listen) if config.http.enabled else "") + "\n")
            self.out.flush()
            self._serve()
            return 0
        finally:
            log.info("stopping %d worker(s)", sum(1 for s in self._slots if s.process is not None))
            self._stop_all()
            for reservation in reservations:
                reservation.close()
            if self._metrics is not None:
                self._metrics.close()
            log.info("stopped")

    def _serve_metrics(self) -> None:
        """With `metrics_listen`: a fresh metrics directory the workers will count into
        (named in the environment they inherit), served merged; StartError when the
        address is taken."""
        config = self.config
        if config.metrics_listen is None:
            return
        metrics.reset_directory(config.metrics_dir)
        os.environ[metrics.MULTIPROC_DIR_ENV] = str(config.metrics_dir)
        host, port = config.metrics_listen
        try:
            self._metrics = metrics.serve(host, port, config.metrics_dir)
        except OSError as exc:
            raise StartError(f"cannot serve metrics on {format_listen(host, port)}: {exc.strerror or exc}") from None
        log.info("metrics served on http://%s/metrics", self._metrics.listen)

    def _ready_metrics(self) -> str:
        if self._metrics is None:
            return ""
        return DATAPLANE_READY_METRICS.format(metrics=self._metrics.listen)

    def _wait_started(self) -> list[int] | None:
        """Versions the workers started with, once every one is listening; None when
        stopped first or a worker failed to start."""
        deadline = time.monotonic() + START_TIMEOUT
        versions: list[int] = []
        pending = {slot.ready: slot for slot in self._slots if slot.ready is not None}
        while pending:
            if self._stopping:
                return None
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                log.error("workers did not start within %gs", START_TIMEOUT)
                return None
            for conn in wait([*pending, self._wakeup_r], timeout):
                if conn is self._wakeup_r:
                    self._drain_wakeup()
                    continue
                slot = pending.pop(conn)
                message = self._read_ready(slot)
                if message is None:
                    assert slot.process is not None
                    slot.process.join()
                    log.error("worker %d exited while starting (code %s); see its log above",
                              slot.index, slot.process.exitcode)
                    return None
                versions.append(int(message[3]))
        return versions

    def _serve(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            for slot in self._slots:
                if slot.process is None and slot.restart_at is not None and slot.restart_at <= now:
                    self._start(slot)
            waits: list = [self._wakeup_r]
            waits += [slot.process.sentinel for slot in self._slots if slot.process is not None]
            waits += [slot.ready for slot in self._slots if slot.ready is not None]
            pending_restarts = [s.restart_at for s in self._slots if s.process is None and s.restart_at is not None]
            timeout = max(0.0, min(pending_restarts) - now) if pending_restarts else None
            ready = wait(waits, timeout)
            if self._wakeup_r in ready:
                self._drain_wakeup()
            for slot in self._slots:
                if slot.ready is not None and slot.ready in ready:
                    message = self._read_ready(slot)
                    if message is not None:
                        log.info("worker %d (pid %d) back in service", slot.index, message[2])
                if slot.process is not None and slot.process.sentinel in ready:
                    self._reap(slot)

    def _stop_all(self) -> None:
        self._stopping = True
        running = [slot.process for slot in self._slots if slot.process is not None]
        for process in running:
            if process.is_alive():
                try:
                    os.kill(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + self.config.shutdown_grace + 5.0
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker pid %d did not stop in time; killing it", process.pid)
                process.kill()
                process.join()
        for slot in self._slots:
            if slot.process is not None:
                self._reap(slot)
        signal.set_wakeup_fd(-1)
        self._wakeup_r.close()
        self._wakeup_w.close()
