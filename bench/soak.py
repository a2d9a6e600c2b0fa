"""The soak harness (issue 14): does Redis memory, and the data directory, stay bounded
by configuration while a million messages go through?

    python bench/soak.py --messages 1000000 --out soak-1m        # ~30-60 min on 2 cores
    python bench/soak.py --messages 30000 --events-max 5000 --out soak-check   # the plateau, quickly

The whole stack as `bench/postfix_compare.py` stands it up (`compare_stack.Poolmta`:
embedded Redis and control plane in this process, a data plane of 2 workers, one
Pool of three IPs, its Bridge trusting 127.0.0.0/24), with the default
configuration unless an option says otherwise. Postfix's C `smtp-source` pushes N
messages as fast as the stack takes them over C reused connections (`-d`), and
Postfix's C `smtp-sink` is the destination, so neither the load nor the sink is
Python (benchmark machines only: `compare_stack.INSTALL_HINT`).

Every `--interval` seconds (and once before the first message: the baseline, taken
once the stack is up, provisioned and its Redis footprint settled) a sample:

* messages accepted (smtp-source's counter) and relayed (smtp-sink's);
* Redis: used memory, RSS, DBSIZE, the AOF files' bytes on disk, rewrites so far;
* the data directory's bytes on disk by top-level entry (redis/, spool/,
  stats-journal/, logs/, the SQLite files...);
* RSS of each child of the data plane's supervisor (multiprocessing's resource
  tracker, the workers), of redis-server and of this process (the control plane);
* StatsService.GetPoolStats `sent` and `delivered` of the pool.

Each sample is appended to `<out>/samples.jsonl` as it is taken (read it while the
run goes: `python bench/soak.py --report <out>`); at the end, once the sink has every
accepted message and the stats say so too, a last sample, `<out>/summary.json`, a
table on stdout and `<out>/soak.png` (matplotlib, the `bench` extra): memory and
data-directory growth against messages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # bench/ is a directory of scripts, not a package
from compare_stack import SINK_DOMAIN, CSink, Poolmta, find_tool, tree_pids

PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1e6
MILESTONE = 100_000  # the table's rows: the first sample at or past each multiple
STATUS_MODE = "_status"  # argv[1] of the lookup client's process
OLD_MARGIN = 20_000  # events: about a minute of trimming at full load


def disk_bytes(path: Path) -> int:
    """Bytes on disk (allocated blocks) of `path`, a file or a whole tree."""
    total = 0
    try:
        stat = path.lstat()
    except OSError:
        return 0
    total += stat.st_blocks * 512
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_blocks * 512
                except OSError:
                    continue  # removed meanwhile (spool files come and go)
    return total


def data_dir_sizes(data_dir: Path) -> dict[str, int]:
    """Bytes on disk of each top-level entry of the data directory."""
    return {entry.name: disk_bytes(entry) for entry in sorted(data_dir.iterdir())}


def rss_mb(pid: int | None) -> float:
    """Resident memory of one process in MB; 0 when it is gone."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / MB
    except (OSError, IndexError, ValueError, TypeError):
        return 0.0


class Source:
    """Postfix's `smtp-source`, its running counter (`-c`) read as it prints."""

    def __init__(self, address: tuple[str, int], messages: int, sessions: int, size: int):
        self.args = ["-c", "-d", "-s", str(sessions), "-m", str(messages), "-l", str(size), "-N",
                     "-f", load.SENDER, "-t", f"user@{SINK_DOMAIN}", "-M", "source.bench.example",
                     f"{address[0]}:{address[1]}"]
        self.count = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr = b""

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            find_tool("smtp-source"), *self.args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while chunk := await self.proc.stdout.read(65536):
            found = re.findall(rb"\d+", chunk)
            if found:
                self.count = int(found[-1])

    async def wait(self) -> int:
        """smtp-source's exit code, once it ended (its stderr kept in `stderr`)."""
        assert self.proc is not None
        self.stderr = await self.proc.stderr.read()
        code = await self.proc.wait()
        await self._reader
        return code

    def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


class Sampler:
    """The figures of one sample of a running `Poolmta` (see the module docstring)."""

    def __init__(self, server: Poolmta, source: Source, sink: CSink):
        import redis

        self.server, self.source, self.sink = server, source, sink
        stack = server.stack
        self.data_dir = stack.data_dir
        self.redis_dir = stack.redis.redis_dir
        self.redis = redis.Redis.from_url(stack.redis.url)
        self.smtp_id = server.tenant.pools[0].pool.smtp_id
        self.started = time.time()

    async def stats(self) -> dict:
        """The pool's `sent` and `delivered` as StatsService answers them."""
        import grpc

        from control._pb.poolmta.v1 import poolmta_pb2 as pb
        from control.cli.demo.provision import Api

        async with grpc.aio.insecure_channel(self.server.grpc_address) as channel:
            reply = await Api(channel, self.server.tenant.token)(
                "stats", "GetPoolStats", pb.GetPoolStatsRequest(smtp_id=self.smtp_id))
        return {"sent": reply.sent, "delivered": reply.delivered}

    def _redis(self) -> dict:
        memory, persistence = self.redis.info("memory"), self.redis.info("persistence")
        return {"redis_used": memory["used_memory"], "redis_rss": memory["used_memory_rss"],
                "dbsize": self.redis.dbsize(),
                "aof_bytes": sum(disk_bytes(p) for p in self.redis_dir.glob("*.aof*")),
                "aof_base_bytes": persistence.get("aof_base_size", 0),  # its size after the last rewrite
                "aof_rewriting": persistence.get("aof_rewrite_in_progress", 0)}

    def _processes(self) -> dict:
        stack = self.server.stack
        workers = [pid for pid in tree_pids([stack.dataplane.pid]) if pid != stack.dataplane.pid]
        return {"workers_rss_mb": [round(rss_mb(pid), 1) for pid in sorted(workers)],
                "redis_rss_mb": round(rss_mb(stack.redis.pid), 1), "control_rss_mb": round(rss_mb(os.getpid()), 1)}

    async def take(self) -> dict:
        figures = await asyncio.to_thread(lambda: {**self._redis(), **self._processes(),
                                                    "data_dir": data_dir_sizes(self.data_dir)})
        return {"t": round(time.time() - self.started, 1), "accepted": self.source.count, "relayed": self.sink.count,
                **figures, **await self.stats()}


async def status_lookups(server: Poolmta, sampler: Sampler, n: int) -> dict:
    """p50 / p99 ms of `n` StatsService.GetMessageStatus calls over one gRPC channel,
    half for random messages among the newest 2,000 events of the server's event log,
    half among its oldest 2,000 but the first OLD_MARGIN (the reads that look at the
    most index buckets; the margin: under load the oldest are being trimmed), and
    as many GetPool calls between them: the floor of an account's RPC on this stack
    (`floor`). The client runs in a child process, so its CPU is not the control
    plane's."""
    from control.contract import rediskeys
    from control.contract.delivery_event import decode_list

    stream = rediskeys.event_stream_key(server.tenant.server.server_id)

    def ids(entries) -> list[str]:
        return [event.message_id for event in decode_list(fields[b"e"] for _, fields in entries)]

    spec = json.dumps({"address": server.grpc_address, "token": server.tenant.token, "n": n,
                       "smtp_id": server.tenant.pools[0].pool.smtp_id,
                       "recent": ids(sampler.redis.xrevrange(stream, count=2000)),
                       "old": ids(sampler.redis.xrange(stream, count=OLD_MARGIN + 2000)[OLD_MARGIN:])})
    proc = await asyncio.create_subprocess_exec(sys.executable, __file__, STATUS_MODE, spec,
                                                stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        return {"error": f"the lookup client exited with code {proc.returncode}"}
    return {kind: {"p50_ms": round(load._percentile(t, 50) * 1000, 2),
                   "p99_ms": round(load._percentile(t, 99) * 1000, 2), "lookups": len(t)}
            for kind, t in json.loads(out).items()}


async def time_lookups(spec: dict) -> dict[str, list[float]]:
    """The lookup client (its own process): seconds of each GetMessageStatus call."""
    import random

    import grpc

    from control._pb.poolmta.v1 import poolmta_pb2 as pb
    from control.cli.demo import DemoError
    from control.cli.demo.provision import Api

    rng, times, missing = random.Random(14), {"recent": [], "old": [], "floor": []}, 0
    async with grpc.aio.insecure_channel(spec["address"]) as channel:
        api = Api(channel, spec["token"])
        for k in range(spec["n"]):
            kind = "recent" if k % 2 else "old"
            request = pb.GetMessageStatusRequest(message_id=rng.choice(spec[kind]))
            began = time.perf_counter()
            try:
                status = await api("stats", "GetMessageStatus", request)
            except DemoError:  # NOT_FOUND: trimmed meanwhile (said on stderr, not timed)
                missing += 1
                continue
            times[kind].append(time.perf_counter() - began)
            assert status.events, "a message of the event log has no events"
            began = time.perf_counter()
            await api("pools", "GetPool", pb.GetPoolRequest(smtp_id=spec["smtp_id"]))
            times["floor"].append(time.perf_counter() - began)
    if missing:
        print(f"GetMessageStatus: {missing} of {spec['n']} messages had no events left (trimmed)", file=sys.stderr)
    return times


async def settle(sampler: Sampler, timeout: float = 30.0) -> dict:
    """A sample once the stats flushes stop changing the key count (checked every 2 s)."""
    last = await sampler.take()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(2.0)
        now = await sampler.take()
        if now["dbsize"] == last["dbsize"]:
            return now
        last = now
    return last


async def soak(args: argparse.Namespace) -> dict:
    """Run the soak; the summary (baseline, samples, final, exactness) as a dict."""
    if args.events_max:
        os.environ["POOLMTA_EVENTS_MAX"] = str(args.events_max)  # the data plane reads it at start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples_path = out / "samples.jsonl"
    samples_path.write_text("")
    async with CSink() as sink, Poolmta(args.workers, args.sessions, "asyncio") as server:
        source = Source(server.address, args.messages, args.sessions, load.parse_size(args.size))
        sampler = Sampler(server, source, sink)
        baseline = await settle(sampler)
        samples = [{**baseline, "baseline": True}]
        _append(samples_path, samples[-1])
        print(f"data dir {sampler.data_dir}; samples in {samples_path}", flush=True)
        await source.start()
        waiting = asyncio.create_task(source.wait())
        deadline = time.monotonic() + args.timeout
        lookups = {}
        try:
            while time.monotonic() < deadline:
                done, _ = await asyncio.wait({waiting}, timeout=args.interval)
                if done:
                    await asyncio.sleep(args.interval / 5)  # the rest of the run: relaying and counting
                if args.status_at and "under load" not in lookups and source.count >= args.status_at:
                    lookups["under load"] = await status_lookups(server, sampler, args.status_lookups)
                    print(f"GetMessageStatus at {source.count:,} accepted, under load: {lookups['under load']}")
                sample = await sampler.take()
                samples.append(sample)
                _append(samples_path, sample)
                print(_line(sample, baseline), flush=True)
                if done and sample["relayed"] >= source.count and sample["delivered"] >= source.count:
                    break
        finally:
            source.stop()
        code = await waiting
        final = {**await settle(sampler), "final": True}
        samples.append(final)
        _append(samples_path, final)
        lookups["after the run"] = await status_lookups(server, sampler, args.status_lookups)
    summary = {"messages": args.messages, "size": args.size, "sessions": args.sessions,
               "events_max": args.events_max or "default", "smtp_source_exit": code,
               "smtp_source_stderr": source.stderr.decode(errors="replace")[-500:],
               "exact": final["relayed"] == final["accepted"] == final["sent"] == final["delivered"],
               "get_message_status": lookups,
               "baseline": baseline, "final": final}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _append(path: Path, sample: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(sample) + "\n")


def _line(sample: dict, baseline: dict) -> str:
    return (f"t={sample['t']:>7.0f}s accepted {sample['accepted']:>9,} relayed {sample['relayed']:>9,} "
            f"redis +{(sample['redis_used'] - baseline['redis_used']) / MB:6.1f} MB keys {sample['dbsize']:>6,} "
            f"aof {sample['aof_bytes'] / MB:6.1f} MB data dir "
            f"+{(sum(sample['data_dir'].values()) - sum(baseline['data_dir'].values())) / MB:6.1f} MB")


def milestones(samples: list[dict]) -> list[dict]:
    """The first sample at or past each multiple of MILESTONE accepted, and the last."""
    rows, next_at = [], MILESTONE
    for sample in samples:
        if sample.get("baseline"):
            continue
        if sample["accepted"] >= next_at:
            rows.append(sample)
            next_at = (sample["accepted"] // MILESTONE + 1) * MILESTONE
    if samples and samples[-1] not in rows:
        rows.append(samples[-1])
    return rows


def _rewrites(samples: list[dict]) -> dict[int, int]:
    """AOF rewrites seen by each sample (by id()): the times the AOF shrank since the
    one before (Redis 6.2's INFO does not count them)."""
    seen, counts = 0, {}
    for before, sample in zip([None, *samples], samples):
        if before is not None and sample["aof_bytes"] < before["aof_bytes"]:
            seen += 1
        counts[id(sample)] = seen
    return counts


def render(samples: list[dict]) -> str:
    """The milestone table, growth against the baseline."""
    base = samples[0]
    dirs = sorted({name for s in samples for name, size in s["data_dir"].items() if size >= MB})
    head = ["accepted", "relayed", "sent", "delivered", "Redis used +MB", "DBSIZE", "AOF MB", "rewrites",
            "data dir +MB", *[f"{d} MB" for d in dirs], "data plane's children RSS MB", "Redis RSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    rewrites = _rewrites(samples)
    for s in milestones(samples):
        cells = [f"{s['accepted']:,}", f"{s['relayed']:,}", f"{s['sent']:,}", f"{s['delivered']:,}",
                 f"{(s['redis_used'] - base['redis_used']) / MB:.1f}", f"{s['dbsize']:,}",
                 f"{s['aof_bytes'] / MB:.1f}", str(rewrites[id(s)]),
                 f"{(sum(s['data_dir'].values()) - sum(base['data_dir'].values())) / MB:.1f}",
                 *[f"{s['data_dir'].get(d, 0) / MB:.1f}" for d in dirs],
                 " / ".join(f"{r:.0f}" for r in s["workers_rss_mb"]), f"{s['redis_rss_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(samples: list[dict], path: Path) -> None:
    """Memory and data-directory growth against messages accepted, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base, run = samples[0], [s for s in samples if not s.get("baseline")]
    x = [s["accepted"] / 1000 for s in run]
    fig, (memory, disk) = plt.subplots(2, 1, figsize=(9, 8), sharex=True)
    memory.plot(x, [(s["redis_used"] - base["redis_used"]) / MB for s in run], label="Redis used memory (+)")
    memory.plot(x, [s["redis_rss_mb"] for s in run], label="Redis RSS")
    for n in range(max(len(s["workers_rss_mb"]) for s in run)):
        memory.plot(x, [s["workers_rss_mb"][n] if n < len(s["workers_rss_mb"]) else None for s in run],
                    label=f"data plane's child {n + 1} RSS")
    memory.axhline(100, color="grey", linestyle=":", label="goal: Redis +100 MB")
    memory.set_ylabel("MB")
    memory.legend(fontsize=8)
    memory.set_title("poolmta soak: memory and data directory against messages (issue 14)")
    for name in sorted({d for s in run for d, size in s["data_dir"].items() if size >= MB}):
        disk.plot(x, [s["data_dir"].get(name, 0) / MB for s in run], label=name)
    disk.plot(x, [(sum(s["data_dir"].values()) - sum(base["data_dir"].values())) / MB for s in run],
              label="data dir growth", color="black", linestyle="--")
    disk.set_ylabel("MB on disk")
    disk.set_xlabel("messages accepted (thousands)")
    disk.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def read_samples(out: Path) -> list[dict]:
    """The samples written so far (a run still going included)."""
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines() if line.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--size", default="1K", help="message size (smtp-source -l), e.g. 1K, 5K")
    parser.add_argument("--sessions", type=int, default=20, help="concurrent reused connections")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--events-max", type=int, default=0, help="the data plane's --events-max (default: its own)")
    parser.add_argument("--status-lookups", type=int, default=1000,
                        help="GetMessageStatus calls timed after the run (and at --status-at)")
    parser.add_argument("--status-at", type=int, default=250_000,
                        help="also time them under load once this many messages were accepted (0: never)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--timeout", type=float, default=4 * 3600.0)
    parser.add_argument("--out", default="soak-out", help="directory of samples.jsonl, summary.json, soak.png")
    parser.add_argument("--report", metavar="OUT", help="only print the table (and plot) of OUT's samples so far")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [STATUS_MODE]:
        json.dump(asyncio.run(time_lookups(json.loads(argv[1]))), sys.stdout)
        return 0
    args = build_parser().parse_args(argv)
    if args.report:
        samples = read_samples(Path(args.report))
        print(render(samples))
        plot(samples, Path(args.report) / "soak.png")
        return 0
    summary = asyncio.run(soak(args))
    samples = read_samples(Path(args.out))
    print(render(samples))
    print(f"exact (relayed = accepted = sent = delivered): {summary['exact']}; smtp-source exit "
          f"{summary['smtp_source_exit']}")
    for when, figures in summary["get_message_status"].items():
        print(f"GetMessageStatus {when}: {figures}")
    plot(samples, Path(args.out) / "soak.png")
    return 0 if summary["exact"] and summary["smtp_source_exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
