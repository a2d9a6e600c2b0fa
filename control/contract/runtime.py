"""The process and task conventions both planes' processes share.

A process of the control plane (`poolmta up`, `poolmta control`, the demo) and one
of the data plane (`python -m dataplane` and its workers) agree on these without
importing each other:

* where the data directory is by default, and where the embedded Redis of a data
  directory listens: a data plane started on its own finds the Redis that
  `poolmta up` / `poolmta control` runs for the same directory;
* the SMTP Bridge's default address, and the ready lines the data plane and the
  sink print once they serve, which `poolmta up` and the demo wait for;
* a child process dies with the thread that started it (Linux PR_SET_PDEATHSIG),
  so no crash of a parent leaves a server running;
* a background loop that retries on errors still stops when its task is cancelled.

Like the rest of `control.contract`, this module imports nothing else of `control`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# Linux sun_path is 108 bytes including the terminating NUL; macOS/BSD 104.
SUN_PATH_MAX = 107 if sys.platform.startswith("linux") else 103

# Where the embedded Redis's socket goes when `<data_dir>/redis/redis.sock` is too long.
SHORT_SOCKET_ROOT = Path("/tmp")

_PR_SET_PDEATHSIG = 1


# -- the data directory and its embedded Redis ------------------------------------


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """The data directory when none is given: `$XDG_DATA_HOME/poolmta`, else
    `~/.local/share/poolmta` (`environ` is the environment the caller was started with)."""
    base = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "poolmta"


def embedded_redis_socket(data_dir: Path) -> Path:
    """The unix socket the embedded Redis of `data_dir` listens on.

    `<data_dir>/redis/redis.sock`; when that path is longer than a unix socket
    allows (107 bytes on Linux), `/tmp/poolmta-redis-<uid>-<hash>/redis.sock`
    instead, the directory named after a hash of `<data_dir>/redis`. A relative
    `data_dir` is taken from the current directory.
    """
    redis_dir = Path(data_dir).absolute() / "redis"
    path = redis_dir / "redis.sock"
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        return path
    digest = hashlib.sha256(os.fsencode(redis_dir)).hexdigest()[:16]
    return SHORT_SOCKET_ROOT / f"poolmta-redis-{os.getuid()}-{digest}" / "redis.sock"


def embedded_redis_url(data_dir: Path) -> str:
    """The URL of the embedded Redis of `data_dir` (`unix://…/redis.sock`); it answers
    only while a poolmta process runs that Redis."""
    return f"unix://{embedded_redis_socket(data_dir)}"


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    """True when the Redis at `url` answers PING within `timeout` seconds; never raises."""
    import redis

    from .redis_client import sync_redis_client

    try:
        client = sync_redis_client(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    except (redis.RedisError, OSError, ValueError):
        return False
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


# -- default addresses and ready lines ---------------------------------------------

# ARCHITECTURE.md, "Runtime defaults": everything binds 127.0.0.1; the SMTP Bridge 2525.
DEFAULT_SMTP_PORT = 2525
DEFAULT_SMTP_LISTEN = f"127.0.0.1:{DEFAULT_SMTP_PORT}"

# The inbound listener (bounces and feedback reports): 2526 on loopback; port 25 on a real MX.
DEFAULT_INBOUND_PORT = 2526
DEFAULT_INBOUND_LISTEN = f"127.0.0.1:{DEFAULT_INBOUND_PORT}"

# Prometheus metrics: the control plane's (`poolmta control` / `up --metrics-listen`)
# and the data plane's (`poolmta dataplane --metrics-listen`), on loopback.
DEFAULT_CONTROL_METRICS_LISTEN = "127.0.0.1:9124"
DEFAULT_DATAPLANE_METRICS_LISTEN = "127.0.0.1:9125"

# What the data plane prints on stdout once every worker serves, e.g.
#   dataplane ready server_id=1 smtp=127.0.0.1:2525 workers=2 snapshot=7 inbound=127.0.0.1:2526 metrics=127.0.0.1:9125 http=127.0.0.1:8025
# (snapshot=none before the first snapshot; no inbound= with the inbound listener off,
# no metrics= with the metrics not served);
# a line holding DATAPLANE_READY is that line.
DATAPLANE_READY = "dataplane ready"
DATAPLANE_READY_LINE = DATAPLANE_READY + " server_id={server_id} smtp={smtp} workers={workers} snapshot={snapshot}"
DATAPLANE_READY_INBOUND = " inbound={inbound}"
# Appended when the data plane serves its metrics (`metrics=127.0.0.1:9125`).
DATAPLANE_READY_METRICS = " metrics={metrics}"
# With the REST Bridge on (`--http-listen`, not `none`): where it listens.
DATAPLANE_READY_HTTP = " http={http}"

# The REST Bridge, /healthz and /readyz (ARCHITECTURE.md, "Runtime defaults"): 8025 on loopback.
DEFAULT_HTTP_PORT = 8025
DEFAULT_HTTP_LISTEN = f"127.0.0.1:{DEFAULT_HTTP_PORT}"

# What the sink prints once it listens: SINK_READY and its addresses, comma-separated
# (`sink ready listen=127.0.0.1:2626`).
SINK_READY = "sink ready listen="


def _ready_line_value(line: str, name: str) -> str | None:
    return next((word.split("=", 1)[1] for word in line.split() if word.startswith(name + "=")), None)


def ready_line_smtp(line: str) -> str | None:
    """The SMTP Bridge address (`HOST:PORT`) a data plane's ready line names, or None."""
    return _ready_line_value(line, "smtp")


def ready_line_inbound(line: str) -> str | None:
    """The inbound listener's address (`HOST:PORT`) a data plane's ready line names,
    or None (the listener is off)."""
    return _ready_line_value(line, "inbound")


def ready_line_metrics(line: str) -> str | None:
    """The address (`HOST:PORT`) a data plane's ready line says its metrics are served
    on, or None (not served)."""
    return _ready_line_value(line, "metrics")


def ready_line_http(line: str) -> str | None:
    """The REST Bridge's address (`HOST:PORT`) a data plane's ready line names, or None
    (it is off)."""
    return _ready_line_value(line, "http")


# -- processes and tasks -------------------------------------------------------------


def die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A function to run in a child of `parent_pid`, first thing: from then on the
    child gets SIGTERM when the thread that started it dies (even by SIGKILL), and if
    the parent already died before that took effect, the child exits at once (code 1).

    Pass it as `preexec_fn` to subprocess, or call it at the top of a
    multiprocessing target. None where there is no such thing (not Linux).
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    # Looked up here, in the parent: a preexec_fn runs between fork and exec, where
    # loading a library could deadlock on a lock another thread held at the fork.
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


# Run by a fresh interpreter between this process and a child program: it asks for
# PR_SET_PDEATHSIG, leaves if the parent is already gone, then becomes the program
# (exec keeps the pid, and the death signal survives exec).
_EXEC_DYING_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    f"ctypes.CDLL(None, use_errno=True).prctl({_PR_SET_PDEATHSIG}, signal.SIGTERM, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def argv_dying_with_parent(argv: Sequence[str]) -> list[str]:
    """The command line that runs `argv` (same pid, same program once started) so that
    it gets SIGTERM when the thread starting it dies, even by SIGKILL, and exits at
    once (code 1) if this process died before that took effect. `argv` itself where
    there is no such thing (not Linux).

    Use it instead of `die_with_parent` as a `preexec_fn` in a process with threads
    (gRPC's, a watcher's): a preexec_fn runs Python in the forked copy of such a
    process, which can crash there (a segfault was seen, in the Redis supervisor's
    restart), while this prelude is a new interpreter of its own."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-I", "-S", "-c", _EXEC_DYING_WITH_PARENT, str(os.getpid()), *argv]


def reraise_if_cancelling() -> None:
    """Call inside an `except` block of a retry loop: when the running task is being
    cancelled, raise CancelledError instead of retrying.

    redis-py can surface a cancellation that lands mid-read as ConnectionError; a
    loop that retries on Redis errors would otherwise swallow the cancellation and
    keep its process from ever stopping."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def pause(seconds: float) -> None:
    """Wait `seconds` between two rounds of a background loop; raise CancelledError
    instead when the running task was cancelled and the cancellation got lost.

    A library call can swallow a cancellation and return normally (redis-py 8's
    pipeline `execute` was seen doing so, once in a few hundred stops): the task
    stays "cancelling" but its loop would run on, and whoever awaits it (a worker's
    stop, a test's teardown) would wait forever. Every loop that runs until
    cancelled pauses with this, so such a stop ends at its next round."""
    reraise_if_cancelling()
    await asyncio.sleep(seconds)
