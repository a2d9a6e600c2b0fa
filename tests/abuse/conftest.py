"""Fixtures of the abuse suite (`tests/abuse/`): targets that live for a whole test
module, because a fuzz test sends all its examples to the same server (what one
example leaves behind is part of what the next one attacks).

* `fuzz_bridge`: a real data plane (one worker, `--no-delivery`) serving a snapshot
  with an AUTH Bridge and a Bridge trusting `TRUSTED_NETWORK`, on the session Redis.
* `fuzz_control`: a real control plane in its own thread (`tests/cli`'s
  ThreadedControlPlane), for synchronous gRPC clients.

Every test here is marked `abuse` in its module; those that start processes are
`slow` too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis

from tests.abuse.abuse_support import (
    AUTH_BLOCK_AFTER,
    AUTH_SECRET,
    AUTH_USERNAME,
    TRUSTED_NETWORK,
    TRUSTED_USERNAME,
    ErrorLog,
    FuzzBridge,
)
from tests.cli.cli_support import ThreadedControlPlane, control_config
from tests.dataplane_support import (
    Dataplane,
    make_bridge,
    make_pool,
    make_snapshot,
    publish,
)


@pytest.fixture(scope="module")
def fuzz_bridge(redis_server, tmp_path_factory) -> Iterator[FuzzBridge]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    pool = make_pool(1, [("192.0.2.10", 1), ("192.0.2.11", 2)])
    bridges = [
        make_bridge(1, 1, AUTH_SECRET, username=AUTH_USERNAME),
        make_bridge(2, 1, "trusted-secret-unused", username=TRUSTED_USERNAME, trusted=(TRUSTED_NETWORK,)),
    ]
    publish(client, make_snapshot(1, 1, [pool], bridges))
    plane = Dataplane(
        tmp_path_factory.mktemp("fuzz-dp"), redis_server.url, 1, workers=1,
        args=("--max-message-size", "32K", "--max-recipients", "20",
              "--auth-delay-after", "1000", "--auth-block-after", str(AUTH_BLOCK_AFTER)),
    )
    try:
        plane.start()
        yield FuzzBridge(plane, client)
    finally:
        try:
            plane.stop()
        finally:
            plane.kill()
            client.close()


@pytest.fixture(scope="module")
def fuzz_control(redis_server, tmp_path_factory) -> Iterator[ThreadedControlPlane]:
    """A control plane of its own (a fresh database) on the session Redis, emptied first."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    plane = ThreadedControlPlane(control_config(tmp_path_factory.mktemp("fuzz-cp") / "data", redis_server.url))
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="module")
def error_log() -> Iterator[ErrorLog]:
    """Every ERROR the in-process servers log while the module runs (root logger)."""
    handler = ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
