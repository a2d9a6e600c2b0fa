"""Keeping the embedded Redis running: whoever starts it supervises it.

A watcher thread polls the redis-server child; when it exits (crash, OOM kill,
`kill -9`), the supervisor starts it again on the same data directory, socket or
port and redis.conf, so it reloads its append-only file: with `appendfsync
always` every write Redis acknowledged is in that file (see
`EmbeddedRedis._write_config`), so nothing a client was told succeeded is lost.

Restarts back off: the first comes `initial_delay` seconds after the exit, each
further one in a row twice as late, up to `max_delay`; a server that stayed up
`stable_seconds` starts the schedule again. A Redis that cannot start (a corrupt
AOF, a full disk) is retried at `max_delay` for as long as it takes, without
spinning the CPU, each attempt logged with the exit code and the end of the log.

`stop()` wins over the watcher: it raises the stop flag, then stops the server
under the same lock the watcher restarts under, so no restart follows a stop.

The watcher thread forks every restarted redis-server, and Linux's
PR_SET_PDEATHSIG follows the forking *thread*: the restarted server gets SIGTERM
when the watcher ends, which happens only in `stop()` (after the server is
stopped) or when the whole process dies, where it is what we want.

An external Redis (`--redis-url`) is not ours and is not supervised; the control
plane's health check (`control.health_watch`) reports on either kind.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from .embedded_redis import DEFAULT_MAXMEMORY, EmbeddedRedis, EmbeddedRedisError

__all__ = ["RedisSupervisor", "restart_delay", "resolve_redis"]

log = logging.getLogger(__name__)

INITIAL_DELAY = 0.1
MAX_DELAY = 5.0
STABLE_SECONDS = 10.0
# How often the watcher looks at the child: a dead Redis is noticed within this.
POLL_INTERVAL = 0.1


def restart_delay(failures: int, initial: float = INITIAL_DELAY, maximum: float = MAX_DELAY) -> float:
    """Seconds to wait before the restart that follows `failures` exits or failed
    starts in a row (1 = the first): `initial`, doubling each time, never above `maximum`."""
    if failures < 1:
        raise ValueError(f"failures counts from 1, got {failures}")
    return min(initial * 2 ** min(failures - 1, 32), maximum)


class RedisSupervisor:
    """Starts an EmbeddedRedis and restarts it, from its AOF, whenever it exits.

    `restarts` counts the restarts that succeeded, `attempts` every restart tried
    (successful or not); both only grow, for logs and tests.
    """

    def __init__(self, server: EmbeddedRedis, *, initial_delay: float = INITIAL_DELAY,
                 max_delay: float = MAX_DELAY, stable_seconds: float = STABLE_SECONDS,
                 start_timeout: float = 10.0) -> None:
        if not 0 < initial_delay <= max_delay:
            raise ValueError(f"need 0 < initial_delay <= max_delay, got {initial_delay!r} and {max_delay!r}")
        if stable_seconds <= 0 or start_timeout <= 0:
            raise ValueError("stable_seconds and start_timeout must be positive")
        self.server = server
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.stable_seconds = stable_seconds
        self.start_timeout = start_timeout
        self.restarts = 0
        self.attempts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # one of: a restart, a stop
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The server's URL; the same across restarts."""
        return self.server.url

    @property
    def watching(self) -> bool:
        """True from `start()` until `stop()` has returned."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> str:
        """Start the server (raises EmbeddedRedisError if it cannot) and the watcher; returns the URL.

        Call it from the main thread (see `control.embedded_redis`)."""
        if self._stopping.is_set():
            raise RuntimeError("a RedisSupervisor is not reusable after stop()")
        url = self.server.start(self.start_timeout)
        self._thread = threading.Thread(target=self._watch, name="redis-supervisor", daemon=True)
        self._thread.start()
        return url

    def stop(self, timeout: float = 10.0) -> None:
        """Stop watching, then stop the server; no restart happens after this. Idempotent."""
        self._stopping.set()
        with self._lock:
            self.server.stop(timeout)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _watch(self) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            while self.server.running:
                if self._stopping.wait(POLL_INTERVAL):
                    return
            if self._stopping.is_set():
                return
            failures = 0 if time.monotonic() - started >= self.stable_seconds else failures
            failures += 1
            log.error("the embedded Redis exited (code %s); restarting it from its append-only file%s",
                      self.server.exit_code, self.server.log_tail())
            while not self._restart(restart_delay(failures, self.initial_delay, self.max_delay)):
                if self._stopping.is_set():
                    return
                failures += 1

    def _restart(self, delay: float) -> bool:
        """Wait `delay` seconds, then start the server; False if it did not start (logged) or we stop."""
        if self._stopping.wait(delay):
            return False
        with self._lock:
            if self._stopping.is_set():
                return False
            self.attempts += 1
            try:
                self.server.start(self.start_timeout)
            except (EmbeddedRedisError, OSError) as exc:
                log.error("the embedded Redis did not restart (attempt %d; retrying, at most %gs apart): %s",
                          self.attempts, self.max_delay, exc)
                return False
        self.restarts += 1
        log.warning("the embedded Redis restarted (pid %s, restart %d)", self.server.pid, self.restarts)
        return True


def resolve_redis(data_dir: Path, redis_url: str | None,
                  maxmemory: int = DEFAULT_MAXMEMORY) -> tuple[str, RedisSupervisor | None]:
    """The Redis URL poolmta should use, and the supervisor of the Redis it started for it, if any.

    With a `redis_url`, returns it unchanged and None: nothing is started or
    supervised (an external Redis is not ours). Without one (None or empty),
    starts an EmbeddedRedis for `data_dir` (capped at `maxmemory` bytes) under a
    RedisSupervisor and returns its
    URL and the supervisor; the caller stops the supervisor on shutdown (an atexit
    hook stops the server otherwise). Call it from the main thread. Raises
    EmbeddedRedisError when the embedded server cannot start.
    """
    if redis_url:
        return redis_url, None
    supervisor = RedisSupervisor(EmbeddedRedis(Path(data_dir), maxmemory=maxmemory))
    return supervisor.start(), supervisor
