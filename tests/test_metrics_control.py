"""The control plane's Prometheus metrics, scraped from a real ControlPlane on
`metrics_listen` after real RPCs and parsed with prometheus-client's parser: RPCs by
service, method and status code, their latency histogram, snapshot publications and
the version published per MTA server, and the health it reports."""

from __future__ import annotations

import json
import logging
import sys

import grpc
import pytest

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.contract.log_format import JsonFormatter
from control.server import ControlPlane
from tests.control_support import Client, current_snapshot, expect_error, start_config
from tests.support import eventually, scrape_metrics


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


async def test_rpcs_publications_and_health_are_counted_and_served(tmp_path, redis_url):
    cp = ControlPlane(start_config(tmp_path / "control", redis_url, metrics_listen="127.0.0.1:0"))
    await cp.start()
    try:
        assert cp.metrics_address.startswith("127.0.0.1:")
        async with grpc.aio.insecure_channel(cp.grpc_address) as channel:
            admin = Client(channel, cp.admin_token_path.read_text().strip())
            server = await admin.servers.RegisterMtaServer(
                pb.RegisterMtaServerRequest(hostname="mta1.example.net", zone="US-1"))
            account = await admin.accounts.CreateAccount(pb.CreateAccountRequest(name="acme", tier=pb.PRO))
            acme = Client(channel, account.token)
            await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=server.server_id))
            await expect_error(acme.pools.CreatePool(pb.CreatePoolRequest(label="bad label!",
                                                                          server_id=server.server_id)),
                               grpc.StatusCode.INVALID_ARGUMENT)
            await expect_error(acme.pools.GetPool(pb.GetPoolRequest(smtp_id=999)), grpc.StatusCode.NOT_FOUND)
            await expect_error(Client(channel, "not-a-token").pools.ListPools(pb.ListPoolsRequest()),
                               grpc.StatusCode.UNAUTHENTICATED)
        version = current_snapshot(redis_url, server.server_id).version

        async def published() -> bool:
            found = scrape_metrics(cp.metrics_address)
            return value(found, "poolmta_control_snapshot_version", server_id=str(server.server_id)) == version

        await eventually(published, timeout=10)
        samples = scrape_metrics(cp.metrics_address)
    finally:
        await cp.stop(0)

    rpcs = "poolmta_control_rpcs_total"
    assert value(samples, rpcs, service="MtaServerService", method="RegisterMtaServer", code="OK") == 1
    assert value(samples, rpcs, service="AccountService", method="CreateAccount", code="OK") == 1
    assert value(samples, rpcs, service="PoolService", method="CreatePool", code="OK") == 1
    assert value(samples, rpcs, service="PoolService", method="CreatePool", code="INVALID_ARGUMENT") == 1
    assert value(samples, rpcs, service="PoolService", method="GetPool", code="NOT_FOUND") == 1
    assert value(samples, rpcs, service="PoolService", method="ListPools", code="UNAUTHENTICATED") == 1
    assert value(samples, "poolmta_control_rpc_duration_seconds_count", service="PoolService",
                 method="CreatePool") == 2
    assert value(samples, "poolmta_control_snapshot_publishes_total", server_id=str(server.server_id)) >= 2
    assert value(samples, "poolmta_control_health_serving") == 1
    assert "process_cpu_seconds_total" in samples


def test_a_json_log_line_is_one_object_with_the_event_fields():
    record = logging.LogRecord("poolmta.x", logging.ERROR, __file__, 1, "bad %s\nthing", ("news",), None)
    record.message_id = "01ab"
    try:
        raise ValueError("why")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = JsonFormatter({"role": "control", "pid": 7}).format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["level"] == "error" and parsed["logger"] == "poolmta.x" and parsed["msg"] == "bad news\nthing"
    assert parsed["role"] == "control" and parsed["pid"] == 7 and parsed["message_id"] == "01ab"
    assert parsed["ts"].endswith("Z") and "ValueError: why" in parsed["exc"]


@pytest.mark.parametrize("listen", ["nohostport", "127.0.0.1:99999"])
def test_a_bad_metrics_address_is_refused(tmp_path, listen):
    with pytest.raises(ValueError, match="metrics_listen must be host:port"):
        start_config(tmp_path, "redis://x", metrics_listen=listen)
