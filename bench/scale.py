"""Scale bench for incremental routing (issue 14): what one routing change costs at
1k, 10k (and 50k) pools on one MTA server, old way against new way, in one run.

    .venv/bin/python -m bench.scale [--sizes 1000,10000] [--changes 30]

For each size it registers a server through a real control plane (embedded Redis,
real gRPC), writes the pools straight into SQLite (`tests/scale_support.add_pools`:
10 IPs and 1 Bridge per pool, accounts of 10 pools), starts two in-process workers
(`SnapshotLoader`, as the data plane runs them) and then measures:

* CreatePool p50 / p99: the RPC, its publication included, timed at the client;
* change -> every worker acked p50 / p99: from the RPC's start until both workers
  serve the version it published;
* control-plane CPU per change (process CPU time of the publisher's preparation,
  median of CPU_SAMPLES one-pool changes written straight into SQLite):
  old = the whole server built set-based from SQLite, diffed against the published
  routing, the delta encoded (the publisher before routing touches); new =
  `routing_changes.read_change` (the touches, the touched entries by id, the delta
  against the remembered routing) + encoding the delta + applying it to the
  remembered routing;
* bytes published per change: old = the whole snapshot; new = the delta;
* worker CPU per change: full = decode the whole snapshot + build `Routing`;
  rebuild = apply the delta + `Routing` from the previous one (`follow_deltas`, the
  thread path of large changes); in place = what a worker does with a one-pool
  change (`advance_in_place`, proportional to the delta);
* worker RSS: a fresh process that imports the worker (`dataplane.worker`) and builds
  the routing of the server from the full snapshot's bytes as the loader does (the
  bytes handed over, dropped once decoded): its peak (VmHWM) and its steady size
  (VmRSS once built, after a collection), and the imports' own share.

It prints a Markdown table (bench/SCALE.md holds the last one).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import redis.asyncio as aioredis

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.contract import routing_delta, snapshot
from control.embedded_redis import EmbeddedRedis
from control.routing_changes import ServerRouting, read_change
from control.server import ControlPlane
from control.snapshot_builder import build_in, build_snapshot
from control.store import Store
from dataplane.routing import Routing
from dataplane.snapshot_loader import (
    SnapshotLoader,
    advance_in_place,
    advances_in_place,
    build_routing,
    follow_deltas,
)
from tests.control_support import Client, start_config
from tests.scale_support import add_pools

CPU_SAMPLES = 7

# VmHWM, not ru_maxrss: Linux carries the maxrss of the process that spawned the
# probe across the exec (here the bench, with its control plane and workers), which
# made this column the bench's own size.
_RSS_PROBE = """
import gc, sys
import dataplane.worker
from dataplane.snapshot_loader import build_routing
def status(field):
    return int(dict(line.split(':', 1) for line in open('/proc/self/status'))[field].split()[0]) // 1024
imports = status('VmRSS')
routing = build_routing([open(sys.argv[1], 'rb').read()])
gc.collect()
print(status('VmHWM'), status('VmRSS'), imports)
"""


def _cpu(fn, *args):
    start = time.process_time()
    result = fn(*args)
    return time.process_time() - start, result


def _p50(values: list[float]) -> float:
    return statistics.median(values)


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def control_cpu_per_change(store: Store, sid: int) -> tuple[float, float, snapshot.Snapshot, snapshot.Snapshot, bytes]:
    """(old, new) median CPU seconds to prepare the publication of a one-pool change,
    the routing before and after the last change, and the last delta's bytes."""
    with store.read() as s:
        base, through = build_in(s, sid), s.last_routing_touch(sid)
    remembered = ServerRouting(base, through)
    old, new = [], []
    for n in range(CPU_SAMPLES):
        with store.write() as s:  # a change straight into SQLite: one pool's feed type
            s.set_pool_feed_type(base.pools[(n * 7919) % len(base.pools)].smtp_id, f"changed{n}")
            s.bump_routing_version(sid)
        cpu, after = _cpu(build_snapshot, store, sid)
        diff_cpu, _ = _cpu(lambda: routing_delta.encode_delta(routing_delta.diff(base, after)))  # noqa: B023
        old.append(cpu + diff_cpu)
        start = time.process_time()
        change = read_change(store, remembered)
        delta_bytes = routing_delta.encode_delta(change.delta)
        remembered.apply(change.delta, change.touched_through)
        new.append(time.process_time() - start)
        before, base = base, after
    return statistics.median(old), statistics.median(new), before, base, delta_bytes


def worker_rss_mb(snap: snapshot.Snapshot, workdir: Path) -> tuple[int, int, int]:
    """(peak, steady, imports) RSS in MB of a fresh worker process holding `snap`'s routing."""
    path = workdir / "snapshot.bin"
    path.write_bytes(snapshot.encode(snap))
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(path)], check=True, capture_output=True, text=True)
    peak, steady, imports = (int(n) for n in out.stdout.split())
    return peak, steady, imports


async def measure(size: int, changes: int, workdir: Path, redis_url: str) -> dict[str, float]:
    """Every number of one row of the table, at `size` pools."""
    flush = aioredis.Redis.from_url(redis_url)
    await flush.flushall()  # each size is a new platform: no version of the previous one may linger
    await flush.aclose()
    cfg = start_config(workdir / f"cp{size}", redis_url)
    cp = ControlPlane(cfg)
    await cp.start()
    channel = grpc.aio.insecure_channel(cp.grpc_address)
    admin = Client(channel, cp.admin_token_path.read_text().strip())
    workers: list[SnapshotLoader] = []
    try:
        server = await admin.servers.RegisterMtaServer(
            pb.RegisterMtaServerRequest(hostname=f"mta{size}.example.net", zone="US-1"))
        sid = server.server_id
        add_pools(str(cfg.db_path), sid, size - 1)
        account = await admin.accounts.CreateAccount(pb.CreateAccountRequest(name=f"bench{size}", tier=pb.PRO))
        client = Client(channel, account.token)
        await cp._publisher.sync()
        workers = [SnapshotLoader(aioredis.Redis.from_url(redis_url), sid, f"bench-w{n}", heartbeat_interval=0.05)
                   for n in range(2)]
        for worker in workers:
            await worker.start()
        rpc, acked = [], []
        for n in range(changes):
            start = time.perf_counter()
            await client.pools.CreatePool(pb.CreatePoolRequest(label=f"bench-{n}", server_id=sid))
            rpc.append(time.perf_counter() - start)
            version = await cp._publisher.published_version(sid)
            while not all(w.version >= version for w in workers):
                await asyncio.sleep(0.001)
            acked.append(time.perf_counter() - start)
        store = Store.open(cfg.db_path)
        try:
            old_cpu, new_cpu, base, new_snap, delta_bytes = control_cpu_per_change(store, sid)
        finally:
            store.close()
        old_bytes = snapshot.encode(new_snap)
        delta = routing_delta.decode_delta(delta_bytes)
        routing = Routing(base)
        old_worker_cpu, _ = _cpu(build_routing, old_bytes)
        new_worker_cpu, _ = _cpu(follow_deltas, routing, (delta,), None)
        assert advances_in_place((delta,))
        in_place_cpu, _ = _cpu(advance_in_place, Routing(base), (delta,))
        return {
            "pools": size, "ips": size * 10,
            "create_p50_ms": _p50(rpc) * 1000, "create_p99_ms": _p99(rpc) * 1000,
            "acked_p50_ms": _p50(acked) * 1000, "acked_p99_ms": _p99(acked) * 1000,
            "old_cpu_ms": old_cpu * 1000, "new_cpu_ms": new_cpu * 1000,
            "old_bytes": len(old_bytes), "new_bytes": len(delta_bytes),
            "old_worker_ms": old_worker_cpu * 1000, "new_worker_ms": new_worker_cpu * 1000,
            "in_place_worker_ms": in_place_cpu * 1000,
            "worker_rss_mb": worker_rss_mb(new_snap, workdir),  # (peak, steady, imports)
        }
    finally:
        for worker in workers:
            await worker.stop()
            await worker._redis.aclose()
        await channel.close()
        await cp.stop(0)


def table(rows: list[dict[str, float]]) -> str:
    """The rows as the Markdown table of bench/SCALE.md."""
    lines = [
        ("| pools / IPs | CreatePool p50 / p99 | change → all workers acked p50 / p99 "
         "| control CPU per change old → new | bytes per change full → delta | worker CPU per change full → rebuild → in place "
         "| worker RSS peak / steady (imports) |"),
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['pools']:,} / {r['ips']:,} | {r['create_p50_ms']:.1f} / {r['create_p99_ms']:.1f} ms "
            f"| {r['acked_p50_ms']:.1f} / {r['acked_p99_ms']:.1f} ms "
            f"| {r['old_cpu_ms']:.1f} → {r['new_cpu_ms']:.1f} ms ({r['old_cpu_ms'] / r['new_cpu_ms']:.1f}×) "
            f"| {r['old_bytes']:,} → {r['new_bytes']:,} B ({r['old_bytes'] / r['new_bytes']:.0f}×) "
            f"| {r['old_worker_ms']:.1f} → {r['new_worker_ms']:.2f} → {r['in_place_worker_ms']:.2f} ms "
            "| {} / {} MB ({} MB) |".format(*r['worker_rss_mb']))
    return "\n".join(lines)


async def main(sizes: list[int], changes: int) -> None:
    """Measure every size against one embedded Redis and print the table."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        redis_server = EmbeddedRedis(workdir / "redis")
        redis_server.start()
        try:
            rows = []
            for size in sizes:
                rows.append(await measure(size, changes, workdir, redis_server.url))
                print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
            print(table(rows))
        finally:
            redis_server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--changes", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(main([int(s) for s in args.sizes.split(",")], args.changes))
