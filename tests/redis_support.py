"""A supervised embedded Redis for the tests (`supervised` fixture, a plugin in
tests/conftest.py's `pytest_plugins`) and the helpers that break it on purpose."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from control.embedded_redis import EmbeddedRedis
from control.redis_supervisor import RedisSupervisor
from tests.support import free_port

# A file Redis cannot load: every restart attempt exits at once.
CORRUPT_AOF = b"this is not an append-only file\r\n"


def aof_path(server: EmbeddedRedis) -> Path:
    """Where `server` keeps its append-only file."""
    return server.redis_dir / "appendonly.aof"


def replace_file(path: Path, content: bytes) -> None:
    """Give `path` new content under a new inode: a running Redis keeps appending to the old one."""
    tmp = path.with_suffix(".test-tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)


def crash_into_a_loop(supervisor: RedisSupervisor) -> bytes:
    """Corrupt the AOF and SIGKILL Redis, so every restart fails; returns the good AOF."""
    good = aof_path(supervisor.server).read_bytes()
    replace_file(aof_path(supervisor.server), CORRUPT_AOF)
    os.kill(supervisor.server.pid, signal.SIGKILL)
    return good


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[RedisSupervisor]:
    """A supervised embedded Redis on a free TCP port (the same across restarts)."""
    supervisor = RedisSupervisor(EmbeddedRedis(tmp_path / "data", port=free_port()))
    supervisor.start()
    try:
        yield supervisor
    finally:
        supervisor.stop()
