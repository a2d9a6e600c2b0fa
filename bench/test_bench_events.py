"""Benchmark GetMessageStatus's read of a message's delivery events (issue 14: p99 <= 10 ms
for recent messages) with a full event log resident.

Against the embedded Redis (unix socket, `appendfsync always`, as `poolmta up` runs
it), the server's event log is filled with POOLMTA_BENCH_EVENTS events (default
1,000,000; 20,000 in the suite's smoke run; 200,000 is the default `--events-max`),
one per message with its Message-ID index entry, as the data plane writes them
(`DeliveryEvent.encode`), over 7 days of the writer's clock in 1,024 batches
through the stats batch script: the stream holds them all and the index has its
~1,000 time buckets (the worst case for a read, which looks at each bucket after
the message's acceptance).

- `message events`: `event_log.message_events` of a random message among the newest
  10 % (ids as the spool makes them, acceptance time first; one script and one
  LRANGE for the lists of before, pipelined): variant `log`; of a random message of
  all those resident, the oldest looking at every bucket: variant `log-any`;
- the baseline `list`: one LRANGE of a message's own list, what the read was before
  the event log (one key per message, unbounded);
- `GetMessageStatus`: the RPC over real gRPC, a control plane started on the filled
  Redis (the account of the events owning a pool on their server), 1,000 calls,
  half for recent messages and half for any resident one.

The p50 / p99 of 2,000 single reads (time.perf_counter, not pytest-benchmark's
rounds) and Redis's used memory per event (its index entries included) are printed
and kept in extra_info.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from pathlib import Path

import grpc
import pytest
import redis
import redis.asyncio as aioredis

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.contract import event_log, rediskeys
from control.contract.delivery_event import DeliveryEvent
from control.embedded_redis import EmbeddedRedis
from control.server import ControlPlane
from dataplane.stats_script import _APPLY_BATCH, counts_script_input
from tests.control_support import Client, start_config

SERVER = 1
USER = 3  # the account of every event (the RPC variant creates accounts up to it)
MEASURED_EVENTS = int(os.environ.get("POOLMTA_BENCH_EVENTS", "1000000"))
SMOKE_EVENTS = 20_000  # the suite's smoke run (--benchmark-disable) checks the reads, quickly
BATCHES = 1024  # one a time bucket at a week's retention
WEEK = 7 * 86400


def _event(message_id: str, ts_ms: int) -> bytes:
    return DeliveryEvent(ts_ms=ts_ms, message_id=message_id, user_id=USER, bridge_id=12, rcpt="someone@example.net",
                         outcome="delivered", smtp_id=7, pool="promo-3-1-pool-7", ip="192.0.2.1",
                         reply="250 2.0.0 Ok: queued as 4F2A1", attempt=1, final=True, rcpt_index=0,
                         dkim="d=example.com s=pm2026111").encode()


def _legacy_event(message_id: str) -> str:
    """An event as the per-message lists of before the event log hold it (JSON)."""
    return json.dumps({"ts_ms": 1, "message_id": message_id, "rcpt": "someone@example.net",
                       "outcome": "delivered"}, separators=(",", ":"))


def _message_id(n: int, at: float) -> str:
    """An id as the spool makes them: the acceptance time in ms, then a nonce and a counter."""
    return f"{int(at * 1000):012x}{n:014x}"


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    events_total = MEASURED_EVENTS if request.config.getoption("benchmark_enable") else SMOKE_EVENTS
    server = EmbeddedRedis(Path(tmp_path_factory.mktemp("bench-events")))
    server.start()
    client = redis.Redis.from_url(server.url)
    baseline = client.info("memory")["used_memory"]
    script = client.register_script(_APPLY_BATCH)
    client.config_set("appendfsync", "no")  # the fill is not what is measured: no fsync per batch
    retention = event_log.EventRetention(WEEK, events_total)
    start = time.time() - WEEK
    recent, resident = [], []
    for batch in range(BATCHES):
        now = start + WEEK * batch / BATCHES
        ids = [_message_id(n, now - 1) for n in range(batch * events_total // BATCHES,
                                                        (batch + 1) * events_total // BATCHES)]
        events = [(message_id, _event(message_id, int(now * 1000))) for message_id in ids]
        index = [(rediskeys.message_index_field(f"{message_id}@bench.example"), message_id) for message_id in ids]
        if batch >= BATCHES * 9 // 10:
            recent += ids
        resident += ids
        keys, args = counts_script_input(SERVER, "bench", (), now, journal_seq=batch + 1, events=events,
                                         index=index, retention=retention)
        script(keys=keys, args=args)
    used = client.info("memory")["used_memory"] - baseline
    client.config_set("appendfsync", "always")
    while client.info("persistence")["aof_rewrite_in_progress"]:
        time.sleep(0.1)  # the automatic AOF rewrite the fill set off: not part of a read
    client.rpush(rediskeys.message_events_key("legacy"), _legacy_event("legacy"))
    yield server, used, {"log": recent, "log-any": resident}, events_total
    client.close()
    server.stop()


@pytest.mark.timeout(1800)  # filling a million events takes minutes on a busy machine
@pytest.mark.parametrize("variant", ["log", "log-any", "list"])
def test_message_events_read(benchmark, measure, filled, variant):
    server, used, messages, events_total = filled
    benchmark.group = f"message events, {events_total} resident"
    benchmark.extra_info["variant"] = variant
    loop = asyncio.new_event_loop()
    reader = aioredis.Redis.from_url(server.url)
    rng = random.Random(14)

    async def log_read() -> list:
        return await event_log.message_events(reader, [SERVER], rng.choice(messages[variant]))

    async def list_read() -> list:
        return await reader.lrange(rediskeys.message_events_key("legacy"), 0, -1)

    read = list_read if variant == "list" else log_read
    try:
        assert len(measure(lambda: loop.run_until_complete(read()))) == 1
        if benchmark.disabled:
            return
        times = []
        for _ in range(2000):
            began = time.perf_counter()
            loop.run_until_complete(read())
            times.append(time.perf_counter() - began)
        p50, p99 = _percentiles(times)
        benchmark.extra_info.update(p50_ms=round(p50, 3), p99_ms=round(p99, 3),
                                    bytes_per_event=round(used / events_total))
        print(f"\n{variant}: {events_total} events resident, {used / 1024**2:.0f} MB "
              f"({used / events_total:.0f} B/event); "
              f"read p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    finally:
        loop.run_until_complete(reader.aclose())
        loop.close()


def _percentiles(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000


@pytest.mark.timeout(1800)
def test_get_message_status_rpc(benchmark, measure, filled, tmp_path):
    server, _, messages, events_total = filled
    benchmark.group = f"message events, {events_total} resident"
    benchmark.extra_info["variant"] = "GetMessageStatus RPC"
    loop = asyncio.new_event_loop()
    rng = random.Random(14)
    control = ControlPlane(start_config(tmp_path / "control", server.url))

    async def tenant(channel) -> Client:
        admin = Client(channel, control.admin_token_path.read_text().strip())
        mta = await admin.servers.RegisterMtaServer(pb.RegisterMtaServerRequest(hostname="mta1.example.net",
                                                                                zone="US-1"))
        assert mta.server_id == SERVER
        for n in range(USER):
            reply = await admin.accounts.CreateAccount(pb.CreateAccountRequest(name=f"a{n}", tier=pb.PRO))
            if reply.account.user_id == USER:
                break
        assert reply.account.user_id == USER
        client = Client(channel, reply.token)
        await client.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=SERVER))
        return client

    async def call(client: Client, kind: str) -> float:
        message_id = rng.choice(messages["log" if kind == "recent" else "log-any"])
        began = time.perf_counter()
        status = await client.stats.GetMessageStatus(pb.GetMessageStatusRequest(message_id=message_id))
        assert len(status.events) == 1
        return time.perf_counter() - began

    async def connect() -> grpc.aio.Channel:  # a channel belongs to the loop it is made in
        await control.start()
        return grpc.aio.insecure_channel(control.grpc_address)

    channel = loop.run_until_complete(connect())
    try:
        client = loop.run_until_complete(tenant(channel))
        measure(lambda: loop.run_until_complete(call(client, "recent")))
        if benchmark.disabled:
            return
        times: dict[str, list[float]] = {"recent": [], "any": []}
        for k in range(1000):
            kind = "recent" if k % 2 else "any"
            times[kind].append(loop.run_until_complete(call(client, kind)))
    finally:
        loop.run_until_complete(channel.close())
        loop.run_until_complete(control.stop(0))
        loop.close()
    for kind, kept in times.items():
        p50, p99 = _percentiles(kept)
        benchmark.extra_info.update({f"{kind}_p50_ms": round(p50, 3), f"{kind}_p99_ms": round(p99, 3)})
        print(f"\nGetMessageStatus ({kind} message): {events_total} events resident; "
              f"p50 {p50:.3f} ms, p99 {p99:.3f} ms over {len(kept)} calls")
