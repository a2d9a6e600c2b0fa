"""Issue 11 item 9: the data directory is 0700 and every state or secret file 0600,
whatever the umask, and a looser mode found on start is tightened."""

import os
import stat
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
import redis

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.embedded_redis import EmbeddedRedis
from control.server import ControlPlane
from dataplane.tls import ensure_self_signed
from tests.control_support import Client, start_config


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_private(root: Path) -> None:
    assert mode(root) == 0o700, root
    for path in root.rglob("*"):
        if path.is_socket():
            continue
        assert mode(path) == (0o700 if path.is_dir() else 0o600), f"{path}: {mode(path):04o}"


async def _use_control_plane(data_dir: Path, redis_url: str, account: str) -> None:
    cp = ControlPlane(start_config(data_dir, redis_url))
    await cp.start()
    try:
        async with grpc.aio.insecure_channel(cp.grpc_address) as channel:
            admin = Client(channel, cp.admin_token_path.read_text().strip())
            await admin.accounts.CreateAccount(pb.CreateAccountRequest(name=account, tier=pb.PRO))
        names = {p.name for p in data_dir.iterdir()}
        assert {"poolmta.db", "poolmta.db-wal", "poolmta.db-shm", "admin.token"} <= names
        assert_private(data_dir)
    finally:
        await cp.stop(0)


@pytest.mark.parametrize("mask", [0o022, 0o000])
async def test_control_plane_files_are_private_whatever_the_umask(tmp_path, redis_url, mask):
    data_dir = tmp_path / "control"
    with umask(mask):
        await _use_control_plane(data_dir, redis_url, "acme")
        # Looser modes left by an earlier version or an operator are tightened on start.
        os.chmod(data_dir, 0o755)
        os.chmod(data_dir / "poolmta.db", 0o644)
        os.chmod(data_dir / "admin.token", 0o644)
        await _use_control_plane(data_dir, redis_url, "globex")


@pytest.mark.parametrize("mask", [0o022, 0o000])
def test_embedded_redis_and_tls_key_are_private_whatever_the_umask(tmp_path, mask):
    with umask(mask):
        with EmbeddedRedis(tmp_path / "data") as server:
            client = redis.Redis.from_url(server.url)
            client.set("k", "v")
            client.close()
            assert_private(server.redis_dir)
        cert, key = ensure_self_signed(tmp_path / "data" / "tls", "mta1.example.net")
        assert mode(key) == 0o600 and mode(key.parent) == 0o700
        os.chmod(key, 0o644)
        ensure_self_signed(tmp_path / "data" / "tls", "mta1.example.net")
        assert mode(key) == 0o600
