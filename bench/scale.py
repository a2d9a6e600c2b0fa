"""Scale bench (issue 14): what a routing change costs and how the control plane
answers at 1k, 10k and 50k pools on one MTA server, in one run:

    .venv/bin/python -m bench.scale --json-out results.json   # the tables (bench/SCALE.md)
    .venv/bin/python -m bench.scale_plot results.json          # bench/scale_*.png

Options: --sizes 1000,10000,50000, --samples 200 (CreatePool and ProvisionIp RPCs
timed, each), --rate 50 and --storm-seconds 20 (the write storm).

Each size runs in a process of its own with an embedded Redis of its own. It
registers a server through a real control plane (real gRPC), writes the pools
straight into SQLite (`tests/scale_support.add_pools`: 10 IPs and 1 Bridge per
pool, accounts of 10 pools), and starts two data-plane workers (`SnapshotLoader`)
and the clients in other processes (`bench/scale_procs.py`), so the control
plane's process runs the control plane only. It measures:

* CreatePool and ProvisionIp p50 / p99: --samples of each, one at a time, timed at
  the client (the reply comes after the change is committed and published);
* change -> every worker acked p50 / p99: from the RPC's start until both workers
  serve the version it published (the workers report when, on the machine's
  monotonic clock);
* a read's p50 / p99 during a write storm: GetPool, ListPools (first page) and
  GetPoolStats back to back from another account and channel, while one account
  makes CreatePool / ProvisionIp / SetPoolHeaders at --rate per second (open loop)
  for --storm-seconds; and the storm's writes' p99;
* Redis memory for routing after the changes (every write above is one, about
  1,400): MEMORY USAGE of the server's full-snapshot hash, change log and `current`,
  against one full snapshot's bytes;
* control-plane RSS (VmRSS) and peak (VmHWM) of the process that ran the control
  plane, read right after the storm: the control plane with its start-up build of
  the server, plus this module's orchestration (no client, worker or Redis);
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
  (VmRSS once built, after a collection), and the imports' own share;
* the load average when the row was done (the machine is shared: latencies move
  with it, CPU times and bytes do not).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import redis.asyncio as aioredis

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.contract import rediskeys, routing_delta, snapshot
from control.config import ControlConfig
from control.embedded_redis import EmbeddedRedis
from control.routing_changes import ServerRouting, read_change
from control.server import ControlPlane
from control.snapshot_builder import build_in, build_snapshot
from control.store import Store
from dataplane.routing import Routing
from dataplane.snapshot_loader import (
    advance_in_place,
    advances_in_place,
    build_routing,
    follow_deltas,
)
from tests.control_support import Client
from tests.scale_support import add_pools

CPU_SAMPLES = 7
_ROOT = Path(__file__).resolve().parent.parent

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


def _status_mb(field: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM) of this process, in MB."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status[field].split()[0]) // 1024


def _acked(acks_path: Path, samples: list[list]) -> list[float]:
    """For each write sample [rpc, start, seconds, version]: seconds from its start
    until every worker served its version (from the workers' report)."""
    served: dict[str, list[tuple[int, float]]] = {}
    for line in acks_path.read_text().splitlines():
        worker, version, at = line.split()
        served.setdefault(worker, []).append((int(version), float(at)))
    return [max(min(at for v, at in versions if v >= version) for versions in served.values()) - start
            for _, start, _, version in samples]


async def _run(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.scale_procs", *args, cwd=_ROOT)
    if await proc.wait():
        raise RuntimeError(f"bench.scale_procs {args[0]} failed ({proc.returncode})")


async def routing_memory(redis_url: str, sid: int) -> int:
    """Bytes Redis holds for the server's routing: full snapshots (hash and data keys),
    change log, `current`."""
    redis = aioredis.Redis.from_url(redis_url)
    try:
        fulls = [int(v) for v in await redis.hkeys(rediskeys.snapshot_full_key(sid))]
        keys = (rediskeys.snapshot_full_key(sid), rediskeys.snapshot_changes_key(sid),
                rediskeys.snapshot_current_key(sid), *(rediskeys.snapshot_full_data_key(sid, v) for v in fulls))
        return sum([await redis.memory_usage(key, samples=0) or 0 for key in keys])
    finally:
        await redis.aclose()


async def measure(size: int, samples: int, rate: float, storm_seconds: float, workdir: Path,
                  redis_url: str) -> dict[str, float]:
    """Every number of one row of the table, at `size` pools."""
    # The production intervals (not the tests' shorter ones): the background loops
    # run as often as they would on a real control plane.
    cfg = ControlConfig(data_dir=workdir / f"cp{size}", redis_url=redis_url, grpc_listen="127.0.0.1:0")
    cp = ControlPlane(cfg)
    await cp.start()
    channel = grpc.aio.insecure_channel(cp.grpc_address)
    admin = Client(channel, cp.admin_token_path.read_text().strip())
    workers = None
    try:
        server = await admin.servers.RegisterMtaServer(
            pb.RegisterMtaServerRequest(hostname=f"mta{size}.example.net", zone="US-1"))
        sid = server.server_id
        add_pools(str(cfg.db_path), sid, size - 1)
        tokens = [(await admin.accounts.CreateAccount(pb.CreateAccountRequest(name=f"{who}{size}", tier=pb.PRO))).token
                  for who in ("bench", "writer", "reader")]
        await cp._publisher.sync()
        first = await cp._publisher.published_version(sid)
        acks_path = workdir / f"acks{size}"
        acks_path.touch()
        workers = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.scale_procs", "workers", redis_url, str(sid), str(acks_path), cwd=_ROOT)
        while len({line.split()[0] for line in acks_path.read_text().splitlines()}) < 2:
            await asyncio.sleep(0.1)
        writes_path = workdir / f"writes{size}.json"
        await _run("writes", cp.grpc_address, tokens[0], redis_url, str(sid), str(samples), str(writes_path))
        write_samples = json.loads(writes_path.read_text())
        storm_path = workdir / f"storm{size}.json"
        await _run("storm", cp.grpc_address, tokens[1], tokens[2], str(sid), str(rate), str(storm_seconds),
                   str(storm_path))
        storm = json.loads(storm_path.read_text())
        control_rss_mb, control_hwm_mb = _status_mb("VmRSS"), _status_mb("VmHWM")
        await cp._publisher.catch_up()
        changes = await cp._publisher.published_version(sid) - first
        redis_routing = await routing_memory(redis_url, sid)
        full_bytes = len(snapshot.encode(cp._publisher.routing(sid)))
        acked = _acked(acks_path, write_samples)
        rpc = {name: [sec for kind, _, sec, _ in write_samples if kind == name]
               for name in ("CreatePool", "ProvisionIp")}
        reads = [sec for secs in storm["reads"].values() for sec in secs]
        storm_writes = [sec for secs in storm["writes"].values() for sec in secs]
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
            "pools": size, "ips": size * 10, "samples": samples,
            "create_p50_ms": _p50(rpc["CreatePool"]) * 1000, "create_p99_ms": _p99(rpc["CreatePool"]) * 1000,
            "provision_p50_ms": _p50(rpc["ProvisionIp"]) * 1000, "provision_p99_ms": _p99(rpc["ProvisionIp"]) * 1000,
            "acked_p50_ms": _p50(acked) * 1000, "acked_p99_ms": _p99(acked) * 1000,
            "storm_writes": len(storm_writes), "storm_seconds": storm_seconds, "storm_reads": len(reads),
            "storm_read_p50_ms": _p50(reads) * 1000, "storm_read_p99_ms": _p99(reads) * 1000,
            "storm_write_p99_ms": _p99(storm_writes) * 1000,
            "storm_read_p99_by_rpc_ms": {name: _p99(secs) * 1000 for name, secs in storm["reads"].items()},
            "changes": changes, "redis_routing_bytes": redis_routing, "full_snapshot_bytes": full_bytes,
            "control_rss_mb": control_rss_mb, "control_hwm_mb": control_hwm_mb,
            "old_cpu_ms": old_cpu * 1000, "new_cpu_ms": new_cpu * 1000,
            "old_bytes": len(old_bytes), "new_bytes": len(delta_bytes),
            "old_worker_ms": old_worker_cpu * 1000, "new_worker_ms": new_worker_cpu * 1000,
            "in_place_worker_ms": in_place_cpu * 1000,
            **dict(zip(("worker_rss_mb", "worker_steady_mb", "worker_imports_mb"), worker_rss_mb(new_snap, workdir),
                       strict=True)),
            "load_average": os.getloadavg()[0],
        }
    finally:
        if workers is not None:
            workers.send_signal(signal.SIGTERM)
            await workers.wait()
        await channel.close()
        await cp.stop(0)


def table(rows: list[dict[str, float]]) -> str:
    """The rows as the Markdown tables of bench/SCALE.md: latency and memory, then
    what a change costs."""
    lines = [
        ("| pools / IPs | CreatePool p50 / p99 | ProvisionIp p50 / p99 | change → all workers acked p50 / p99 "
         "| read p50 / p99 during write storm (write p99) | Redis routing after changes: bytes (× one full) "
         "| control RSS / peak | worker RSS peak / steady (imports) |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['pools']:,} / {r['ips']:,} | {r['create_p50_ms']:.1f} / {r['create_p99_ms']:.1f} ms "
            f"| {r['provision_p50_ms']:.1f} / {r['provision_p99_ms']:.1f} ms "
            f"| {r['acked_p50_ms']:.1f} / {r['acked_p99_ms']:.1f} ms "
            f"| {r['storm_read_p50_ms']:.1f} / {r['storm_read_p99_ms']:.1f} ms "
            f"({r['storm_writes'] / r['storm_seconds']:.0f} writes/s: {r['storm_write_p99_ms']:.1f} ms) "
            f"| {r['redis_routing_bytes']:,} B after {r['changes']:,} "
            f"({r['redis_routing_bytes'] / r['full_snapshot_bytes']:.2f}×) "
            f"| {r['control_rss_mb']} / {r['control_hwm_mb']} MB "
            f"| {r['worker_rss_mb']} / {r['worker_steady_mb']} MB ({r['worker_imports_mb']} MB) |")
    lines += [
        "",
        ("| pools / IPs | control CPU per change old → new | bytes per change full → delta "
         "| worker CPU per change full → rebuild → in place | load average |"),
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['pools']:,} / {r['ips']:,} "
            f"| {r['old_cpu_ms']:.1f} → {r['new_cpu_ms']:.1f} ms ({r['old_cpu_ms'] / r['new_cpu_ms']:.1f}×) "
            f"| {r['old_bytes']:,} → {r['new_bytes']:,} B ({r['old_bytes'] / r['new_bytes']:.0f}×) "
            f"| {r['old_worker_ms']:.1f} → {r['new_worker_ms']:.2f} → {r['in_place_worker_ms']:.2f} ms "
            f"| {r['load_average']:.1f} |")
    return "\n".join(lines)


async def one_size(size: int, args: argparse.Namespace) -> dict[str, float]:
    """One row, against an embedded Redis of its own."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        redis_server = EmbeddedRedis(workdir / "redis")
        redis_server.start()
        try:
            return await measure(size, args.samples, args.rate, args.storm_seconds, workdir, redis_server.url)
        finally:
            redis_server.stop()


def main(args: argparse.Namespace) -> None:
    """Measure each size in a process of its own (so the control plane's RSS is that
    size's alone), print the tables, and write the rows to --json-out."""
    if args.one_size:
        print(json.dumps(asyncio.run(one_size(args.one_size, args))))
        return
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        out = subprocess.run(
            [sys.executable, "-m", "bench.scale", "--one-size", str(size), "--samples", str(args.samples),
             "--rate", str(args.rate), "--storm-seconds", str(args.storm_seconds)],
            cwd=_ROOT, check=True, stdout=subprocess.PIPE, text=True)
        rows.append(json.loads(out.stdout.splitlines()[-1]))
        print(table(rows[-1:]), file=sys.stderr, flush=True)
    print(table(rows))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--samples", type=int, default=200, help="CreatePool and ProvisionIp RPCs timed, each")
    parser.add_argument("--rate", type=float, default=50.0, help="writes per second of the storm")
    parser.add_argument("--storm-seconds", type=float, default=20.0)
    parser.add_argument("--json-out", help="also write the rows here (bench/scale_plot.py draws them)")
    parser.add_argument("--one-size", type=int, default=0, help=argparse.SUPPRESS)
    main(parser.parse_args())
