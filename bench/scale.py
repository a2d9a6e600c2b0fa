"""Scale bench for incremental routing (issue 14): what one routing change costs at
100, 1k and 5k pools on one MTA server, old way against new way, in one run.

    .venv/bin/python -m bench.scale [--sizes 100,1000,5000] [--changes 15]

For each size it registers a server through a real control plane (embedded Redis,
real gRPC), writes the pools straight into SQLite (`tests/scale_support.add_pools`:
10 IPs and 1 Bridge per pool, accounts of 10 pools), starts two in-process workers
(`SnapshotLoader`, as the data plane runs them) and then measures:

* CreatePool p50: the RPC, its publication included, timed at the client;
* change -> every worker acked p50: from the RPC's start until both workers serve
  the version it published;
* control-plane CPU per change (process CPU time, nothing else running):
  old = the per-object build the publisher did before (one query per pool, IP list
  and Bridge; `Store.pools_on_server` etc., still in the store) + encoding the whole
  snapshot; new = the set-based build + diff + encoding the delta;
* bytes published per change: old = the whole snapshot; new = the delta;
* worker rebuild CPU per change: old = decode the whole snapshot + build `Routing`;
  new = apply the delta + `Routing` from the previous one;
* worker RSS: a fresh process holding the routing of the server (ru_maxrss).

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
from control.server import ControlPlane
from control.snapshot_builder import build_snapshot
from control.store import Store
from dataplane.routing import Routing
from dataplane.snapshot_loader import SnapshotLoader, build_routing, follow_deltas
from tests.control_support import Client, start_config
from tests.scale_support import add_pools

_RSS_PROBE = """
import resource, sys
from dataplane.snapshot_loader import build_routing
routing = build_routing(open(sys.argv[1], 'rb').read())
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def old_build(store: Store, server_id: int) -> snapshot.Snapshot:
    """The snapshot as the publisher built it before issue 14: a query per pool, IP list and Bridge."""
    with store.read() as s:
        server = s.server(server_id)
        pools = tuple(
            snapshot.PoolRoute(
                smtp_id=p.smtp_id, user_id=p.user_id or 0, internal_name=p.internal_name, feed_type=p.feed_type,
                headers=p.headers, shared=p.is_shared, bounce_domain=p.bounce_domain,
                signing_domain=p.signing_domain, feedback_signing_domain=p.feedback_signing_domain,
                ips=tuple(snapshot.IpRoute(ip.address, ip.weight, ip.state, ip.hostname)
                          for ip in s.ips_in_pool(p.smtp_id)))
            for p in s.pools_on_server(server_id))
        bridges = tuple(
            snapshot.BridgeRoute(
                bridge_id=r["bridge_id"], user_id=r["user_id"], name=r["name"], username=r["username"],
                secret_hash=r["secret_hash"], smtp_id=r["smtp_id"], feed_type=r["feed_type"],
                trusted_networks=s.bridge_networks(r["bridge_id"]), send_dsns=bool(r["send_dsns"]))
            for r in s.route_bridges(server_id))
        return snapshot.Snapshot(server_id=server_id, version=server.routing_version, hostname=server.hostname,
                                 zone=server.zone, pools=pools, bridges=bridges)


def _cpu(fn, *args):
    start = time.process_time()
    result = fn(*args)
    return time.process_time() - start, result


def _p50(values: list[float]) -> float:
    return statistics.median(values)


def worker_rss_mb(snap: snapshot.Snapshot, workdir: Path) -> int:
    """The peak RSS (MB) of a fresh process holding `snap`'s routing."""
    path = workdir / "snapshot.bin"
    path.write_bytes(snapshot.encode(snap))
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(path)], check=True, capture_output=True, text=True)
    return int(out.stdout.strip())


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
            old_cpu, old_snap = _cpu(old_build, store, sid)
            old_encode_cpu, old_bytes = _cpu(snapshot.encode, old_snap)
            base = build_snapshot(store, sid)
            with store.write() as s:  # one more change, straight into SQLite: a pool's feed type
                s.set_pool_feed_type(base.pools[-1].smtp_id, "changed")
                s.bump_routing_version(sid)
            new_cpu, new_snap = _cpu(build_snapshot, store, sid)
            delta_cpu, delta_bytes = _cpu(lambda: routing_delta.encode_delta(routing_delta.diff(base, new_snap)))
        finally:
            store.close()
        delta = routing_delta.decode_delta(delta_bytes)
        routing = Routing(base)
        old_worker_cpu, _ = _cpu(build_routing, old_bytes)
        new_worker_cpu, _ = _cpu(follow_deltas, routing, (delta,), None)
        return {
            "pools": size, "ips": size * 10,
            "create_p50_ms": _p50(rpc) * 1000, "acked_p50_ms": _p50(acked) * 1000,
            "old_cpu_ms": (old_cpu + old_encode_cpu) * 1000, "new_cpu_ms": (new_cpu + delta_cpu) * 1000,
            "old_bytes": len(old_bytes), "new_bytes": len(delta_bytes),
            "old_worker_ms": old_worker_cpu * 1000, "new_worker_ms": new_worker_cpu * 1000,
            "worker_rss_mb": worker_rss_mb(new_snap, workdir),
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
        "| pools / IPs | CreatePool p50 | change → all workers acked p50 | control CPU per change old → new "
        "| bytes per change old → new | worker rebuild per change old → new | worker RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['pools']:,} / {r['ips']:,} | {r['create_p50_ms']:.1f} ms | {r['acked_p50_ms']:.1f} ms "
            f"| {r['old_cpu_ms']:.1f} → {r['new_cpu_ms']:.1f} ms ({r['old_cpu_ms'] / r['new_cpu_ms']:.1f}×) "
            f"| {r['old_bytes']:,} → {r['new_bytes']:,} B ({r['old_bytes'] / r['new_bytes']:.0f}×) "
            f"| {r['old_worker_ms']:.1f} → {r['new_worker_ms']:.2f} ms | {r['worker_rss_mb']} MB |")
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
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--changes", type=int, default=15)
    args = parser.parse_args()
    asyncio.run(main([int(s) for s in args.sizes.split(",")], args.changes))
