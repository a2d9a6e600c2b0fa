"""`poolmta dataplane`, `poolmta sink`, `poolmta report parse` and `poolmta verp`: the
data plane, the sink, the report parser and the data plane's VERP key tool as
programs of their own, `python -m dataplane ARGS...`, `python -m dataplane.sink
ARGS...`, `python -m dataplane.reports parse ...` and `python -m
dataplane.verp_admin ARGS...` (the control plane never imports the data plane).

Each replaces this process with that program, with one exception. The data plane
needs a Redis: the one a URL names, else the embedded Redis of its data directory,
which it joins when `poolmta up` or `poolmta control` runs it but never starts
itself (`dataplane` imports nothing of the control plane). So when no URL is given
and that Redis does not answer, `poolmta dataplane` starts it, runs the data plane
as its child, and stops both on SIGINT / SIGTERM (the data plane first, then
Redis); it then exits with the data plane's exit code.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from ..contract.runtime import embedded_redis_url, redis_answers
from ..embedded_redis import EmbeddedRedis, EmbeddedRedisError
from ..redis_supervisor import RedisSupervisor
from .children import DATAPLANE_STOP_SECONDS, exit_code, start_child, stop_child
from .client import CliError


def run_dataplane(args: list[str], data_dir: Path, data_dir_given: bool, redis_url: str | None,
                  out: IO[str]) -> int:
    """Run `python -m dataplane [global options] ARGS...`: in place of this process
    (it returns only when the exec fails, raising OSError), or, when the data plane
    would find no Redis, as a child of this process next to the embedded Redis it
    starts for it (returning the data plane's exit code).

    `data_dir` / `redis_url` are the global options (flag or environment; the data
    directory is the default one unless `data_dir_given`); the same options in ARGS win.
    """
    forwarded_dir = data_dir if data_dir_given else None
    if "-h" in args or "--help" in args or redis_url or _option_in(args, "--redis-url"):
        return exec_dataplane(args, forwarded_dir, redis_url)
    named = _option_in(args, "--data-dir")
    data_dir = Path(named).expanduser().absolute() if named else data_dir.absolute()
    if redis_answers(embedded_redis_url(data_dir)):
        return exec_dataplane(args, forwarded_dir, None)  # it joins that Redis itself
    return _run_with_embedded_redis(args, data_dir, out)


def exec_dataplane(args: list[str], data_dir: Path | None, redis_url: str | None) -> int:
    """Replace this process with `python -m dataplane [global options] ARGS...`.

    The global --data-dir / --redis-url go first, so the same options in ARGS win.
    """
    return _exec([sys.executable, "-m", "dataplane", *_forwarded(data_dir, redis_url), *args])


def exec_sink(args: list[str]) -> int:
    """Replace this process with `python -m dataplane.sink ARGS...` (`poolmta sink`)."""
    return _exec([sys.executable, "-m", "dataplane.sink", *args])


def exec_report_parser(files: list[str], as_json: bool) -> int:
    """Replace this process with `python -m dataplane.reports parse FILE... [--json]`
    (`poolmta report parse`): the parser is the data plane's, and `control` never
    imports `dataplane`."""
    return _exec([sys.executable, "-m", "dataplane.reports", "parse", *(["--json"] if as_json else []), "--", *files])


def exec_verp(args: list[str], data_dir: Path | None, json: bool) -> int:
    """Replace this process with `python -m dataplane.verp_admin [--data-dir DIR] [--json]
    ARGS...` (`poolmta verp`), the global options first (the same ones in ARGS win)."""
    forwarded = [*_forwarded(data_dir, None), *(["--json"] if json else [])]
    return _exec([sys.executable, "-m", "dataplane.verp_admin", *forwarded, *args])


def _exec(argv: list[str]) -> int:
    sys.stdout.flush()  # exec drops whatever our buffers still hold
    sys.stderr.flush()
    os.execv(argv[0], argv)
    return 1  # not reached: execv does not return


def _forwarded(data_dir: Path | None, redis_url: str | None) -> list[str]:
    forwarded: list[str] = []
    if data_dir is not None:
        forwarded += ["--data-dir", str(data_dir)]
    if redis_url:
        forwarded += ["--redis-url", redis_url]
    return forwarded


def _option_in(args: Sequence[str], option: str) -> str | None:
    """The value ARGS give `option` (`--option VALUE` or `--option=VALUE`; the last
    one wins, as in argparse), else None."""
    value = None
    for i, word in enumerate(args):
        if word == option and i + 1 < len(args):
            value = args[i + 1]
        elif word.startswith(option + "="):
            value = word.partition("=")[2]
    return value


def _run_with_embedded_redis(args: list[str], data_dir: Path, out: IO[str]) -> int:
    # Started from the main thread: PDEATHSIG follows the thread that forks Redis.
    # Supervised: restarted from its AOF if it dies, for as long as we run.
    redis = RedisSupervisor(EmbeddedRedis(data_dir))
    try:
        url = redis.start()
    except EmbeddedRedisError as exc:
        raise CliError(f"the embedded Redis did not start: {exc}") from None
    try:
        _say(out, f"embedded Redis {url} (pid {redis.server.pid}) started for the data plane; "
                  "Ctrl-C or SIGTERM stops both")
        argv = [sys.executable, "-m", "dataplane", *_forwarded(data_dir, url), *args]
        return asyncio.run(_run_until_signalled(argv, out))
    finally:
        redis.stop()


async def _run_until_signalled(argv: list[str], out: IO[str]) -> int:
    """Run the data plane, its output ours, until it exits or we get SIGINT / SIGTERM."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    proc = await start_child(argv, stdout=None, stderr=None)
    _say(out, f"data plane starting (pid {proc.pid})")
    waits = {asyncio.create_task(stopping.wait()), asyncio.create_task(proc.wait())}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
        await stop_child(proc, DATAPLANE_STOP_SECONDS, "poolmta: the data plane")
    return exit_code(proc.returncode)


def _say(out: IO[str], message: str) -> None:
    out.write(f"poolmta: {message}\n")
    out.flush()
