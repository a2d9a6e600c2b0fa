"""Delivery backlog memory: does a worker's RSS follow its backlog? One data-plane
worker takes N messages while its destination accepts connections and never
answers, then the destination comes up and the backlog drains; the worker's RSS
before, at its peak and after the drain, with the payload budget at its default
(`--delivery-payload-memory`, 32M) and effectively unbounded (64G), in one run.

    python bench/backlog_memory.py --messages 50000            # ~10 min on 2 cores
    python bench/backlog_memory.py --messages 5000 --modes default   # a quick look

The stack of `bench/soak.py` (`compare_stack.Poolmta`: embedded Redis and control
plane in this process, one Pool of three IPs, its Bridge trusting 127.0.0.0/24),
with one worker. Postfix's C `smtp-source` pushes N 1 KB messages (benchmark
machines only: `compare_stack.INSTALL_HINT`). The destination first is a listener
of this process on the sink's address that takes connections and never says a
word: every job waits in the worker (the connections it may open hang on the
greeting). Once every message is accepted, the listener goes, its connections are
closed (the jobs waiting for them are deferred), Postfix's C `smtp-sink` takes its
place, and the retries (the stack's `--retry-schedule 0.5s,1s,2s`) drain the backlog.

RSS (`/proc/<pid>/statm`) of the worker is sampled every `--interval` seconds:
before the first message (the stack up and provisioned), its highest sample, and
after the drain (the sink has every message, then `--settle` seconds). The table
goes to stdout and `<out>/backlog_memory.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # bench/ is a directory of scripts, not a package
from compare_stack import SINK_HOST, SINK_PORT, CSink, Poolmta, tree_pids
from soak import Source, rss_mb

MODES = {"default": None, "unbounded": "64G"}  # --delivery-payload-memory (None: the default)


class SilentDestination:
    """A listener on the sink's address that takes connections and never answers:
    a destination that hangs every transaction (until `close`)."""

    def __init__(self) -> None:
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> SilentDestination:
        self._server = await asyncio.start_server(self._hold, SINK_HOST, SINK_PORT, reuse_address=True)
        return self

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await reader.read()  # until the client gives up or we close it
        finally:
            self._writers.discard(writer)
            writer.close()

    async def close(self) -> None:
        """Stop listening and drop every connection held (their transactions fail)."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def __aexit__(self, *exc_info) -> None:
        await self.close()


def worker_pid(server: Poolmta) -> int:
    """The data plane's one worker (not the supervisor, not multiprocessing's tracker)."""
    supervisor = server.stack.dataplane.pid
    for pid in tree_pids([supervisor]):
        if pid != supervisor and b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise RuntimeError("the data plane has no worker")


async def run_mode(mode: str, args: argparse.Namespace) -> dict:
    """One stack with the payload budget of `mode`: RSS before, at peak, after the drain."""
    budget = MODES[mode]
    os.environ.pop("POOLMTA_DELIVERY_PAYLOAD_MEMORY", None)
    if budget is not None:
        os.environ["POOLMTA_DELIVERY_PAYLOAD_MEMORY"] = budget  # the data plane reads it at start
    started = time.monotonic()
    async with SilentDestination() as silent, Poolmta(1, args.sessions, "asyncio") as server:
        pid = worker_pid(server)
        await asyncio.sleep(args.settle)
        before = rss_mb(pid)
        peak = before
        source = Source(server.address, args.messages, args.sessions, load.parse_size(args.size))
        await source.start()
        waiting = asyncio.create_task(source.wait())
        while not waiting.done():
            await asyncio.wait({waiting}, timeout=args.interval)
            peak = max(peak, rss_mb(pid))
            print(f"  {mode}: accepted {source.count:,}, worker RSS {rss_mb(pid):.0f} MB", flush=True)
        code = await waiting
        at_backlog = rss_mb(pid)
        peak = max(peak, at_backlog)
        await silent.close()
        async with CSink() as sink:
            while sink.count < args.messages:
                await asyncio.sleep(args.interval)
                peak = max(peak, rss_mb(pid))
                print(f"  {mode}: relayed {sink.count:,}, worker RSS {rss_mb(pid):.0f} MB", flush=True)
            drained_s = time.monotonic() - started
            await asyncio.sleep(args.settle)
            after = rss_mb(pid)
    return {"mode": mode, "budget": budget or "default (32M)", "messages": args.messages, "size": args.size,
            "smtp_source_exit": code, "rss_before_mb": round(before, 1), "rss_with_backlog_mb": round(at_backlog, 1),
            "rss_peak_mb": round(peak, 1), "rss_after_drain_mb": round(after, 1),
            "peak_bytes_per_message": round((peak - before) * 1e6 / args.messages),
            "seconds": round(drained_s)}


def render(rows: list[dict]) -> str:
    """The table of LOAD.md's "Delivery backlog memory"."""
    head = ["payload budget", "messages", "RSS before MB", "RSS with the backlog MB", "peak MB",
            "after the drain MB", "peak growth per message"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        lines.append(f"| {r['budget']} | {r['messages']:,} | {r['rss_before_mb']:.0f} | {r['rss_with_backlog_mb']:.0f} "
                     f"| {r['rss_peak_mb']:.0f} | {r['rss_after_drain_mb']:.0f} | "
                     f"{r['peak_bytes_per_message']:,} B |")
    if len(rows) == 2 and rows[0]["rss_peak_mb"] > rows[0]["rss_before_mb"]:
        growth = [r["rss_peak_mb"] - r["rss_before_mb"] for r in rows]
        lines.append(f"\npeak growth, {rows[1]['budget']} / {rows[0]['budget']}: {growth[1] / growth[0]:.2f}x")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for mode in args.modes.split(","):
        rows.append(await run_mode(mode, args))
        (out / "backlog_memory.json").write_text(json.dumps(rows, indent=1))
    print(render(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--size", default="1K", help="message size (smtp-source -l; default 1K)")
    parser.add_argument("--sessions", type=int, default=20, help="smtp-source's concurrent sessions")
    parser.add_argument("--modes", default="default,unbounded", help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between RSS samples")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before 'before' and 'after'")
    parser.add_argument("--out", default="backlog-memory")
    asyncio.run(main(parser.parse_args()))
