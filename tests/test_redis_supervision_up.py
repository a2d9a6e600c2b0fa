"""`poolmta up` with a data plane: kill -9 its embedded Redis and everything comes
back without an operator (issue 11 item 5): Redis is restarted from its AOF,
health returns to SERVING, and the data plane loads and acks the next snapshot."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.stale_redis import read_pid
from tests.cli.cli_support import start_up, stop_process
from tests.control_support import Client
from tests.support import eventually, process_gone, wait_until
from tests.test_redis_supervision_control import health_becomes

pytestmark = pytest.mark.slow


async def acked(admin: Client, version: int) -> bool:
    """True once every live worker of MTA server 1 serves routing `version`."""
    status = await admin.servers.GetRoutingStatus(pb.GetRoutingStatusRequest(server_id=1))
    return bool(status.workers) and all(w.version == version for w in status.workers)


async def test_up_restarts_a_killed_redis_and_the_data_plane_follows_again(tmp_path: Path):
    data_dir = tmp_path / "up"
    proc, lines, errors = start_up(data_dir, "--smtp-listen", "127.0.0.1:0", "--workers", "1")
    try:
        first_redis = int(lines.until(r"\(embedded, pid (\d+)\)").group(1))
        address = lines.until(r"listening on (\S+)").group(1)
        lines.until(r"poolmta: data plane ready", timeout=60)
        async with grpc.aio.insecure_channel(address) as channel:
            admin = Client(channel, (data_dir / "admin.token").read_text().strip())
            await admin.servers.RegisterMtaServer(pb.RegisterMtaServerRequest(hostname="mta1.example.net",
                                                                              zone="US-1"))
            account = await admin.accounts.CreateAccount(pb.CreateAccountRequest(name="acme", tier=pb.PRO))
            acme = Client(channel, account.token)
            await acme.pools.CreatePool(pb.CreatePoolRequest(label="before", server_id=1))
            before = (await admin.servers.GetRoutingStatus(pb.GetRoutingStatusRequest(server_id=1))).routing_version
            await eventually(lambda: acked(admin, before), timeout=30)

            os.kill(first_redis, signal.SIGKILL)
            pidfile = data_dir / "redis" / "redis.pid"
            assert wait_until(lambda: read_pid(pidfile) not in (None, first_redis), timeout=30)
            second_redis = read_pid(pidfile)
            await health_becomes(channel, health_pb2.HealthCheckResponse.SERVING, timeout=30)

            await acme.pools.CreatePool(pb.CreatePoolRequest(label="after", server_id=1))
            after = (await admin.servers.GetRoutingStatus(pb.GetRoutingStatusRequest(server_id=1))).routing_version
            assert after > before
            await eventually(lambda: acked(admin, after), timeout=30)

        proc.send_signal(signal.SIGTERM)
        lines.until(r"poolmta: stopped", timeout=60)
        assert proc.wait(timeout=30) == 0
    finally:
        stop_process(proc)
    err = errors.rest()
    assert "Traceback" not in err
    assert "the embedded Redis exited (code -9)" in err
    assert wait_until(lambda: process_gone(second_redis), timeout=10), f"redis-server {second_redis} left running"
