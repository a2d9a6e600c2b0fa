"""The standard gRPC surface (health, reflection) and the store's own invariants."""

import sqlite3

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from control import models
from control.store import MIGRATIONS, Store

SERVICES = {f"poolmta.v1.{name}" for name in (
    "AccountService", "MtaServerService", "PoolService", "IpService", "BridgeService", "StatsService")}


async def test_health_reports_serving_for_every_service(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ("", *SERVICES):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_six_services_and_health(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for reply in stub.ServerReflectionInfo(requests()):
        names = {s.name for s in reply.list_services_response.service}
        break
    assert SERVICES <= names and "grpc.health.v1.Health" in names


async def test_health_goes_not_serving_on_stop(tmp_path, redis_url):
    from control.server import ControlPlane
    from tests.control_support import start_config

    cp = ControlPlane(start_config(tmp_path / "cp", redis_url))
    await cp.start()
    ch = grpc.aio.insecure_channel(cp.grpc_address)
    stub = health_pb2_grpc.HealthStub(ch)
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    await cp.stop(1)
    statuses = []
    try:
        while (msg := await watch.read()) is not grpc.aio.EOF:
            statuses.append(msg.status)
    except grpc.aio.AioRpcError:
        pass
    await ch.close()
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses


def test_schema_is_created_versioned_and_reopened_idempotently(tmp_path):
    store = Store.open(tmp_path / "db.sqlite")
    assert store.schema_version() == len(MIGRATIONS)
    store.close()
    store = Store.open(tmp_path / "db.sqlite")
    assert store.schema_version() == len(MIGRATIONS)
    mode = store._conn.execute("PRAGMA journal_mode").fetchone()[0]
    fks = store._conn.execute("PRAGMA foreign_keys").fetchone()[0]
    assert (mode, fks) == ("wal", 1)
    store.close()


def test_a_newer_schema_is_refused(tmp_path):
    Store.open(tmp_path / "db.sqlite").close()
    conn = sqlite3.connect(tmp_path / "db.sqlite")
    conn.execute("UPDATE schema_version SET version = 999")
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this poolmta"):
        Store.open(tmp_path / "db.sqlite")


def test_the_database_itself_holds_the_invariants(tmp_path):
    store = Store.open(tmp_path / "db.sqlite")
    with store.write() as s:
        user = s.insert_account("acme", "PRO")
        us, eu = s.insert_server("us.example", "US-1"), s.insert_server("eu.example", "EU-1")
        a = s.insert_pool(user_id=user, server_id=us, label="a", tag="a", feed_type="", is_default=True)
        b = s.insert_pool(user_id=user, server_id=eu, label="b", tag="b", feed_type="", is_default=False)
        s.insert_ip(address="127.0.0.2", user_id=user, server_id=us, smtp_id=a, weight=1, hostname="h")
    violations = {
        "an IP in a pool on another server": lambda s: s.move_ip("127.0.0.2", b),
        "the same address twice": lambda s: s.insert_ip(
            address="127.0.0.2", user_id=user, server_id=us, smtp_id=a, weight=1, hostname="h"),
        "two default pools": lambda s: s._conn.execute("UPDATE pools SET is_default = 1 WHERE smtp_id = ?", (b,)),
        "a duplicate label": lambda s: s.insert_pool(
            user_id=user, server_id=us, label="a", tag="x", feed_type="", is_default=False),
        "deleting a pool with IPs": lambda s: s.delete_pool(a),
        "a weight out of range": lambda s: s.set_ip_weight("127.0.0.2", 5000),
    }
    for what, change in violations.items():
        with pytest.raises(sqlite3.IntegrityError):
            with store.write() as s:
                change(s)
        assert store.ip("127.0.0.2").smtp_id == a, what
    store.close()


def test_internal_name_pattern():
    assert models.internal_pool_name("acme-promo", 7, 3, 42) == "acme-promo-7-3-pool-42"

