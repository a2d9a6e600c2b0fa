"""Latencies of poolmta's control loop (issue 12), as p50 / p99 over N samples:

* stats visible: a delivery outcome (Postfix's `smtp-sink` counting the message) ->
  the Pool's `delivered` count showing it in StatsService.GetPoolStats (goal <= 1 s);
* snapshot acked: a routing change published (SetBridgeSendDsns answered) -> every
  data-plane worker serving the new version in GetRoutingStatus (goal <= 250 ms).

    python bench/control_loop.py [--samples 50] [--json FILE]

The stack is `bench/compare_stack.py`'s, as `bench/postfix_compare.py` runs it (2
workers, one Pool, a Bridge trusting loopback, delivering to smtp-sink on
127.0.0.1:2727), one message at a time. Both
sides are polled every POLL_SECONDS, so each figure is exact to about that much.
Needs smtp-sink: `DEBIAN_FRONTEND=noninteractive apt-get install -y postfix`
(benchmark machines only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # noqa: E402  (bench/ is a directory of scripts, not a package)
import compare_stack as compare  # noqa: E402

POLL_SECONDS = 0.005
STATS_GOAL_MS = 1000
ACK_GOAL_MS = 250


async def _until(check, timeout: float = 30.0) -> float:
    """Poll `check()` (a coroutine function) until it is true; the wall time it was."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("the control loop did not show the change within 30 s")
        await asyncio.sleep(POLL_SECONDS)
    return time.time()


async def stats_visible(pool: compare.Poolmta, sink: compare.CSink, api, samples: int) -> list[float]:
    """Seconds from the sink counting a message to GetPoolStats counting it delivered."""
    from control._pb.poolmta.v1 import poolmta_pb2 as pb

    request = pb.GetPoolStatsRequest(smtp_id=pool.tenant.pools[0].pool.smtp_id)
    one = load.Workload(1, 2000, 1, 1, 30.0, recipient_domain=compare.SINK_DOMAIN)
    latencies = []
    for _ in range(samples):
        delivered = (await api("stats", "GetPoolStats", request)).delivered
        before = sink.count
        sent = await load.drive(*pool.address, "", "", one)
        if sent["accepted"] != 1:
            raise RuntimeError(f"the message was not accepted: {sent['errors']}")
        if await sink.wait_for(before + 1, 30.0) is None:
            raise RuntimeError("the message did not reach the sink within 30 s")
        outcome = sink.changed_at

        async def counted() -> bool:
            return (await api("stats", "GetPoolStats", request)).delivered > delivered

        latencies.append(await _until(counted) - outcome)
    return latencies


async def snapshot_acked(pool: compare.Poolmta, admin, api, samples: int) -> list[float]:
    """Seconds from SetBridgeSendDsns being called to every worker serving the version it published."""
    from control._pb.poolmta.v1 import poolmta_pb2 as pb

    server_id = pool.tenant.server.server_id
    status_request = pb.GetRoutingStatusRequest(server_id=server_id)
    bridge = pool.tenant.pools[0].bridge
    send_dsns = bridge.send_dsns
    latencies = []
    for _ in range(samples):
        version = (await admin("servers", "GetRoutingStatus", status_request)).routing_version
        send_dsns = not send_dsns
        started = time.time()
        await api("bridges", "SetBridgeSendDsns", pb.SetBridgeSendDsnsRequest(bridge_id=bridge.bridge_id,
                                                                              send_dsns=send_dsns))

        async def acked() -> bool:
            status = await admin("servers", "GetRoutingStatus", status_request)
            return (status.routing_version > version and len(status.workers) >= pool.workers
                    and all(w.version >= status.routing_version for w in status.workers))

        latencies.append(await _until(acked) - started)
    return latencies


def summary(name: str, seconds: list[float], goal_ms: float) -> dict:
    """p50 / p99 / max in ms, and whether p99 meets the goal."""
    p99 = load._percentile(seconds, 99) * 1000
    return {"latency": name, "samples": len(seconds), "p50_ms": round(load._percentile(seconds, 50) * 1000, 1),
            "p99_ms": round(p99, 1), "max_ms": round(max(seconds) * 1000, 1), "goal_ms": goal_ms,
            "met": p99 <= goal_ms}


async def run(samples: int, workers: int) -> list[dict]:
    """Both latencies on one stack."""
    import grpc

    from control.cli.demo.provision import Api

    async with compare.CSink() as sink:
        async with compare.Poolmta(workers, 2, "auto") as pool:
            async with grpc.aio.insecure_channel(pool.grpc_address) as channel:
                api, admin = Api(channel, pool.tenant.token), Api(channel, pool.admin_token)
                stats = await stats_visible(pool, sink, api, samples)
                acks = await snapshot_acked(pool, admin, api, samples)
    return [summary("delivery outcome -> count visible in StatsService", stats, STATS_GOAL_MS),
            summary("snapshot publish -> every worker acked", acks, ACK_GOAL_MS)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/control_loop.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=50, help="samples of each latency (default 50)")
    p.add_argument("--workers", type=int, default=2, help="data-plane workers (default 2)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    try:
        results = asyncio.run(run(args.samples, args.workers))
    except compare.ToolMissing as exc:
        print(f"control_loop: {exc}", file=sys.stderr)
        return 2
    print("| latency | samples | p50 ms | p99 ms | max ms | goal (p99) |")
    print("|---|---:|---:|---:|---:|---|")
    for r in results:
        verdict = "met" if r["met"] else "missed"
        print(f"| {r['latency']} | {r['samples']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} | "
              f"<= {r['goal_ms']} ms: {verdict} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
